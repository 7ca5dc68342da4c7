"""A causal LM together with the KV cache of exactly the tokens it has seen.

Speculative decoding feeds a model tokens that may later be rejected. :class:`CachedLM` keeps the list of
tokens whose keys and values its cache holds; :meth:`CachedLM.logits` takes the *whole* sequence wanted now,
crops the cache to the longest common prefix with what it holds (``DynamicCache.crop``), feeds only the rest,
and returns the logits of the last positions asked for. Callers never do cache bookkeeping themselves, so the
target, a model draft and plain decoding share one code path, and a rejected draft costs nothing but the crop.

Batch size 1 (speculative decoding accepts a different number of tokens per sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import DynamicCache

__all__ = ["CachedLM"]


class CachedLM:
    """``model`` (a HF causal LM, or a LLaVA-style model whose extra inputs, e.g. ``pixel_values``, go in
    ``prefill_kwargs`` and are passed only with the first tokens of a sequence) and its KV cache.

    Counters: ``forwards`` (calls of the model) and ``fed`` (tokens fed)."""

    def __init__(self, model: nn.Module, *, prefill_kwargs: dict | None = None) -> None:
        self.model = model
        self.prefill_kwargs = dict(prefill_kwargs or {})
        self.cache = DynamicCache()
        self.tokens: list[int] = []
        self.forwards = 0
        self.fed = 0

    def reset(self) -> None:
        self.cache = DynamicCache()
        self.tokens = []

    def logits(self, ids: Sequence[int], last: int = 1) -> torch.Tensor:
        """Float logits ``(last, V)`` of the last ``last`` positions of ``ids`` (row ``j`` predicts the token after
        ``ids[len(ids) - last + j]``). Feeds ``ids[common:]``, ``common`` = the common prefix with the cached
        tokens, at most ``len(ids) - last`` (those positions' logits must be computed now)."""
        n = len(ids)
        if not 1 <= last <= n:
            raise ValueError(f"last={last}: ask for the logits of 1 to len(ids)={n} positions")
        common, stop = 0, min(len(self.tokens), n - last)
        while common < stop and self.tokens[common] == ids[common]:
            common += 1
        if common == 0:
            self.reset()
        elif common < len(self.tokens):
            self.cache.crop(common - len(self.tokens))  # a negative count: remove that many positions
        new = torch.tensor([list(ids[common:])], dtype=torch.long)  # (1, n - common)
        extra = self.prefill_kwargs if common == 0 else {}
        with torch.no_grad():
            out = self.model(input_ids=new, past_key_values=self.cache, use_cache=True, logits_to_keep=last, **extra)
        self.cache = out.past_key_values
        self.tokens = list(ids)
        self.forwards += 1
        self.fed += n - common
        return out.logits[0, -last:].float()  # (last, V)
