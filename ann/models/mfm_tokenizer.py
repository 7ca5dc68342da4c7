"""The MFM's word-level tokenizer for SynthMed-VQA, a real HF fast tokenizer saved with the model.

Vocabulary: ``<pad> <bos> <eos> <unk> <image>``, then every question word, then every answer word not already
there (multi-word answers such as "upper left" are two tokens). Prompt and target of one sample::

    <bos> <image> x V  question words  |  answer words <eos>
    '-------------- prompt -------------' '--- target ----'

(``V``: the model's visual-token count; the prompt is left-padded with ``<pad>`` to a common length.)
"""

from __future__ import annotations

from tasks.synthmed import VQA_IMAGE_TOKEN, VQA_SPECIAL_TOKENS, VQA_VOCAB

__all__ = ["SPECIAL_TOKENS", "IMAGE_TOKEN", "build_vqa_tokenizer"]

IMAGE_TOKEN = VQA_IMAGE_TOKEN
SPECIAL_TOKENS = VQA_SPECIAL_TOKENS


def build_vqa_tokenizer():
    """A :class:`transformers.PreTrainedTokenizerFast` (WordLevel, whitespace pre-tokenizer) over :data:`tasks.synthmed.VQA_VOCAB`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(VQA_VOCAB)}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left")
