"""Shared fixtures of the ann tests."""

import pytest
import torch
from transformers import PreTrainedTokenizerFast


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is fastest, and immune to OpenMP stalls when other jobs load the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def byte_tok(make_byte_tokenizer) -> PreTrainedTokenizerFast:
    """The byte-level stand-in for SmolLM2's tokenizer (tests/conftest.py)."""
    return make_byte_tokenizer()
