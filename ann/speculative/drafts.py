"""Draft sources: who guesses the next tokens for the target to verify.

A draft is one small protocol, :class:`Draft`: ``propose(ids, k, sampler) -> Proposal`` (up to ``k`` tokens
that would follow ``ids``, and for sampling the distributions they were drawn from). Three sources:

- :class:`ModelDraft`: a small causal LM with the target's tokenizer (e.g. :mod:`ann.models.code_lm`, or a
  pruned / quantized variant of the target), decoding with its own KV cache (:class:`CachedLM`);
- :func:`layer_skip_draft`: self-speculation, the target itself with some blocks skipped (the blocks of least
  block influence, ``1 - cos(x_in, x_out)``, from :mod:`ann.prune`); the skipped model *shares* the target's
  weights (no second copy), only its module tree and config are new;
- :class:`PromptLookupDraft`: no model at all: the tokens that followed the latest earlier occurrence of the
  context's last n-gram (n from ``max_ngram`` down to ``min_ngram``), as in prompt-lookup decoding
  (Saxena 2023); deterministic, so its "distribution" is a point mass;
- :class:`FallbackDraft`: the first of several drafts that guesses anything (prompt lookup where the context
  repeats itself, a model draft elsewhere).

:func:`check_same_tokenizer` refuses a draft whose tokenizer does not match the target's (token ids would mean
different strings; there is no re-tokenizing mode).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ann.speculative.cache import CachedLM

__all__ = ["Proposal", "Draft", "Sampler", "ModelDraft", "PromptLookupDraft", "FallbackDraft", "layer_skip_draft",
           "check_same_tokenizer"]


@dataclass(frozen=True)
class Sampler:
    """Sampling at ``temperature`` (> 0): ``p = softmax(logits / temperature)``; draws use ``generator``."""

    temperature: float
    generator: torch.Generator

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature!r}: sampling needs a temperature > 0 (use greedy for 0)")

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def draw(self, probs: torch.Tensor) -> int:
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def uniform(self) -> float:
        return float(torch.rand((), generator=self.generator))


@dataclass(frozen=True)
class Proposal:
    """``tokens``: the guessed continuation; ``q``: ``(len(tokens), V)`` the distributions they were drawn from
    (sampling with a model draft), or None for a deterministic guess (a point mass on each token)."""

    tokens: list[int]
    q: torch.Tensor | None = None


class Draft(Protocol):
    name: str

    def propose(self, ids: Sequence[int], k: int, sampler: Sampler | None) -> Proposal: ...


class ModelDraft:
    """A small causal LM as the draft: ``k`` decoding steps from ``ids`` (greedy, or sampled with ``sampler``),
    each feeding one token into its own KV cache; rejected tokens are cropped off on the next call."""

    def __init__(self, model: nn.Module, *, name: str = "model", prefill_kwargs: dict | None = None) -> None:
        self.name = name
        self.lm = CachedLM(model.eval(), prefill_kwargs=prefill_kwargs)

    def propose(self, ids: Sequence[int], k: int, sampler: Sampler | None) -> Proposal:
        seq, qs = list(ids), []
        for _ in range(k):
            logits = self.lm.logits(seq, 1)[0]  # (V,)
            if sampler is None:
                seq.append(int(logits.argmax()))
            else:
                q = sampler.probs(logits)
                seq.append(sampler.draw(q))
                qs.append(q)
        return Proposal(seq[len(ids):], torch.stack(qs) if qs else None)


class PromptLookupDraft:
    """The tokens after the most recent earlier occurrence of the last ``n`` tokens, for the largest
    ``n`` in ``[min_ngram, max_ngram]`` that occurs; nothing when no n-gram recurs. ``limits[n]``: guess at most
    that many tokens after a match of length ``n`` (e.g. ``{1: 2}``: a lone recurring token predicts little, and a
    long guess then costs verify time for tokens that are mostly rejected)."""

    def __init__(self, *, max_ngram: int = 3, min_ngram: int = 1, limits: dict[int, int] | None = None,
                 name: str = "prompt-lookup") -> None:
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"min_ngram={min_ngram}, max_ngram={max_ngram}: need 1 <= min_ngram <= max_ngram")
        limits = dict(limits or {})
        if any(not (isinstance(v, int) and v >= 1) for v in limits.values()):
            raise ValueError(f"limits={limits}: each is the longest guess after a match of that length, an int >= 1")
        self.name, self.max_ngram, self.min_ngram, self.limits = name, max_ngram, min_ngram, limits

    def propose(self, ids: Sequence[int], k: int, sampler: Sampler | None) -> Proposal:
        ids = list(ids)
        n_ids = len(ids)
        for n in range(min(self.max_ngram, n_ids - 1), self.min_ngram - 1, -1):
            tail = ids[n_ids - n:]
            for start in range(n_ids - n - 1, -1, -1):  # latest occurrence first, never the tail itself
                if ids[start:start + n] == tail:
                    return Proposal(ids[start + n:start + n + min(k, self.limits.get(n, k))])
        return Proposal([])


class FallbackDraft:
    """The proposal of the first of ``drafts`` that guesses at least one token (e.g. prompt lookup, then a model
    where no n-gram recurs); ``used[name]`` counts the rounds each one supplied."""

    def __init__(self, *drafts: Draft, name: str | None = None) -> None:
        if not drafts:
            raise ValueError("FallbackDraft needs at least one draft")
        self.drafts = drafts
        self.name = name or "+".join(d.name for d in drafts)
        self.used = {d.name: 0 for d in drafts}

    def propose(self, ids: Sequence[int], k: int, sampler: Sampler | None) -> Proposal:
        for d in self.drafts:
            prop = d.propose(ids, k, sampler)
            if prop.tokens:
                self.used[d.name] += 1
                return prop
        return Proposal([])


def layer_skip_draft(target: nn.Module, skip: int, run: Callable[[nn.Module], object], *,
                     name: str | None = None) -> tuple[ModelDraft, list[int]]:
    """Self-speculative draft: ``target`` without its ``skip`` blocks of least influence on ``run(target)``
    (calibration forward; :func:`ann.prune.importance.block_influence`), never the first or the last block.
    The draft shares every parameter with ``target``. Returns the draft and the skipped block indices."""
    from ann.prune.importance import block_influence
    from ann.prune.surgery import drop_blocks, towers

    tower = max(towers(target), key=lambda t: len(t.layers))
    n = len(tower.layers)
    if not 0 < skip <= n - 2:
        raise ValueError(f"skip={skip}: skip 1 to {n - 2} of the {n} blocks (the first and last always stay)")
    with torch.no_grad():
        influence = block_influence(list(tower.layers), target, run)
    middle = sorted(range(1, n - 1), key=lambda i: influence[i])
    dropped = sorted(middle[:skip])
    memo = {id(p): p for p in target.parameters()}  # deepcopy the modules, share the weights
    memo.update({id(b): b for b in target.buffers()})
    view = copy.deepcopy(target, memo)
    drop_blocks(max(towers(view), key=lambda t: len(t.layers)), dropped)
    return ModelDraft(view, name=name or f"layer-skip-{skip}"), dropped


def check_same_tokenizer(target_tokenizer, draft_tokenizer) -> None:
    """Refuse a draft whose tokenizer maps any string to another id than the target's."""
    t, d = target_tokenizer.get_vocab(), draft_tokenizer.get_vocab()
    if t != d:
        only_t = len(t.keys() - d.keys())
        moved = sum(1 for s in t.keys() & d.keys() if t[s] != d[s])
        raise ValueError(f"the draft's tokenizer does not match the target's ({len(d)} vs {len(t)} tokens, "
                         f"{only_t} of the target's missing, {moved} with other ids): a draft must share the "
                         "target's tokenizer (e.g. ann.models.code_lm for SmolLM2)")
