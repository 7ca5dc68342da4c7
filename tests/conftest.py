"""Fixtures shared by every test folder."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


def _byte_tokenizer() -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 3..258), <unk>=0, <bos>=1, <eos>=2 (SmolLM2's special-token ids): a stand-in
    for SmolLM2's tokenizer in tests that must not build the real one."""
    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2}
    for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[c] = i + 3
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<eos>")


@pytest.fixture(scope="session")
def make_byte_tokenizer():
    """The builder of the byte-level stand-in tokenizer (usable from fixtures of any scope)."""
    return _byte_tokenizer


@pytest.fixture
def one_thread():
    """Tiny models: one torch thread is fastest, and immune to OpenMP stalls when other jobs load the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
