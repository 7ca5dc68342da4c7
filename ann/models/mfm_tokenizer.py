"""The MFM's word-level tokenizer for SynthMed-VQA, a real HF fast tokenizer saved with the model.

Vocabulary: ``<pad> <bos> <eos> <unk> <image>``, then every question word, then every answer word not already
there (multi-word answers such as "upper left" are two tokens). Prompt and target of one sample::

    <bos> <image> x V  question words  |  answer words <eos>
    '-------------- prompt -------------' '--- target ----'

(``V``: the model's visual-token count; the prompt is left-padded with ``<pad>`` to a common length.)
"""

from __future__ import annotations

from functools import lru_cache

from tasks.synthmed import ANSWER_VOCAB, QUESTION_VOCAB

__all__ = ["SPECIAL_TOKENS", "IMAGE_TOKEN", "vqa_vocab", "build_vqa_tokenizer"]

IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>", IMAGE_TOKEN)


@lru_cache(maxsize=1)
def vqa_vocab() -> tuple[str, ...]:
    words = [w for w in QUESTION_VOCAB if w not in SPECIAL_TOKENS]
    for answer in ANSWER_VOCAB:
        words += [w for w in answer.split() if w not in words]
    return SPECIAL_TOKENS + tuple(words)


def build_vqa_tokenizer():
    """A :class:`transformers.PreTrainedTokenizerFast` (WordLevel, whitespace pre-tokenizer) over :func:`vqa_vocab`."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(vqa_vocab())}
    core = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="<unk>", extra_special_tokens={"image_token": IMAGE_TOKEN},
                                   padding_side="left")
