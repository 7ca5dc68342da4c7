"""Shared fixtures of the ann tests."""

import pytest
from transformers import PreTrainedTokenizerFast


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every ann test runs on one thread (tests/conftest.py)."""


@pytest.fixture
def byte_tok(make_byte_tokenizer) -> PreTrainedTokenizerFast:
    """The byte-level stand-in for SmolLM2's tokenizer (tests/conftest.py)."""
    return make_byte_tokenizer()
