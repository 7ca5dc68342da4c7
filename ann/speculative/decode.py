r"""Speculative decoding: a draft guesses ``g`` tokens, the target checks them all in one forward.

One round, with ``x`` the sequence so far and ``d_1 .. d_g`` the draft's guess (:mod:`ann.speculative.drafts`)::

    L_0 .. L_g = target logits at the positions of x_last, d_1, .., d_g        (one forward of g + 1 tokens)

- greedy: ``t_i = argmax L_i``; accept ``d_1 .. d_n`` while ``d_{i+1} = t_i``, then append ``t_n`` (the
  target's own token at the first mismatch, or a bonus token when all ``g`` matched). Every appended token is
  the target's greedy choice given the tokens before it, so the output is the target's greedy decoding.
- sampling (Leviathan, Kalman & Matias 2023; Chen et al. 2023): ``p_i = softmax(L_i / T)``, ``q_i`` the
  draft's distribution for ``d_{i+1}`` (a point mass for a deterministic draft). Accept ``d_{i+1}`` with
  probability ``min(1, p_i(d_{i+1}) / q_i(d_{i+1}))``; at the first rejection append a draw from
  ``norm(max(0, p_i - q_i))`` and stop; if all are accepted append a draw from ``p_g``. Each appended token
  is then distributed exactly as ``p`` (the target's own sampling distribution).

Expected speed-up (Leviathan et al., Theorem 3.8 / Corollary): with acceptance rate ``a`` (the probability that
a guessed token is accepted), draft length ``g`` and cost ratio ``c`` (one draft step / one target step),

    E[tokens per round] = (1 - a^(g+1)) / (1 - a),     speedup = (1 - a^(g+1)) / ((1 - a) (g c + 1)).

``a`` is estimated as accepted / tested, a tested token being an accepted one or the first rejected one of a
round (tokens after a rejection are never tested). The formula assumes that verifying ``g + 1`` tokens costs
one target step; on a CPU it costs more as ``g`` grows, which :class:`DraftLength` measures.

Adaptive draft length (:class:`DraftLength`, ``adaptive=True``): before each round choose

    g* = argmax_{1 <= g <= g_max}  E[tokens per round](g; a) / (t_v(g) + g t_d)

with ``a`` an exponential moving average of the acceptance, ``t_d`` the draft's seconds per guessed token and
``t_v(g) = t_1 + g t_x`` the target's verify time, fitted by exponentially weighted least squares over the
rounds so far (``t_x = 0`` until two lengths were seen).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from ann.speculative.cache import CachedLM
from ann.speculative.drafts import Draft, Sampler

__all__ = ["expected_speedup", "DraftLength", "DecodeStats", "speculative_generate"]


def expected_speedup(a: float, g: float, c: float) -> float:
    """``(1 - a^(g+1)) / ((1 - a)(g c + 1))`` (module docstring); ``a = 1`` gives ``(g + 1) / (g c + 1)``."""
    if not 0 <= a <= 1:
        raise ValueError(f"a={a}: an acceptance rate is in [0, 1]")
    tokens = g + 1 if a >= 1 else (1 - a ** (g + 1)) / (1 - a)
    return tokens / (g * c + 1)


class DraftLength:
    """How many tokens the draft guesses next: ``k`` always, or adaptively (module docstring) up to ``k_max``."""

    def __init__(self, k: int = 4, *, adaptive: bool = False, k_max: int = 10, decay: float = 0.9) -> None:
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k={k!r}: the draft length is an integer >= 1")
        if adaptive and not k_max >= 1:
            raise ValueError(f"k_max={k_max!r}: the longest adaptive draft, an integer >= 1")
        if not 0 < decay < 1:
            raise ValueError(f"decay={decay!r}: the moving averages' decay, in (0, 1)")
        self.k, self.adaptive, self.k_max, self.decay = k, adaptive, k_max, decay
        self.a = 0.5  # acceptance estimate (prior)
        self.t_draft = 0.0  # seconds per guessed token
        self._fit = torch.zeros(5, dtype=torch.float64)  # weighted sums of 1, g, g^2, t, g t
        self._seen: set[int] = set()

    def next(self) -> int:
        if not self.adaptive or self._fit[0] == 0:
            return self.k
        s1, sg, sgg, st, sgt = self._fit.tolist()
        det = s1 * sgg - sg * sg
        slope = max(0.0, (s1 * sgt - sg * st) / det) if len(self._seen) > 1 and det > 1e-12 else 0.0
        t1 = max((st - slope * sg) / s1, 1e-9)

        def rate(g: int) -> float:
            tokens = g + 1 if self.a >= 1 else (1 - self.a ** (g + 1)) / (1 - self.a)
            return tokens / (t1 + slope * g + g * self.t_draft)

        return max(range(1, self.k_max + 1), key=rate)

    def update(self, *, guessed: int, accepted: int, tested: int, draft_seconds: float, verify_seconds: float) -> None:
        d = self.decay
        if tested:
            self.a = d * self.a + (1 - d) * accepted / tested
        if guessed:
            self.t_draft = d * self.t_draft + (1 - d) * draft_seconds / guessed if self.t_draft else draft_seconds / guessed
        g = float(guessed)
        self._fit = d * self._fit + torch.tensor([1.0, g, g * g, verify_seconds, g * verify_seconds], dtype=torch.float64)
        self._seen.add(guessed)


@dataclass
class DecodeStats:
    """What one generation did: tokens, rounds, guesses and the time each model took."""

    new_tokens: int = 0
    rounds: int = 0
    guessed: int = 0  # draft tokens proposed
    accepted: int = 0
    tested: int = 0  # accepted + first rejections
    draft_seconds: float = 0.0
    target_seconds: float = 0.0
    seconds: float = 0.0
    lengths: list[int] = field(default_factory=list)  # draft length asked for, per round

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.tested if self.tested else math.nan

    @property
    def mean_draft_length(self) -> float:
        return self.guessed / self.rounds if self.rounds else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds else math.nan

    def summary(self) -> dict:
        return {"new_tokens": self.new_tokens, "rounds": self.rounds, "guessed": self.guessed,
                "accepted": self.accepted, "tested": self.tested, "acceptance_rate": self.acceptance_rate,
                "mean_draft_length": self.mean_draft_length, "tokens_per_round": self.new_tokens / max(self.rounds, 1),
                "draft_seconds": self.draft_seconds, "target_seconds": self.target_seconds, "seconds": self.seconds,
                "tokens_per_second": self.tokens_per_second}


def _verify(logits: torch.Tensor, guess: list[int], q: torch.Tensor | None, sampler: Sampler | None) -> tuple[list[int], int]:
    """Tokens to append and how many guessed ones were accepted (module docstring); ``logits`` ``(g + 1, V)``."""
    g = len(guess)
    if sampler is None:
        best = logits.argmax(-1).tolist()  # (g + 1,)
        n = 0
        while n < g and guess[n] == best[n]:
            n += 1
        return guess[:n] + [best[n]], n
    p = sampler.probs(logits)  # (g + 1, V)
    V = p.shape[-1]
    if q is not None and q.shape[-1] != V:  # a draft LM's embedding may have more or fewer (padding) rows
        q = torch.nn.functional.pad(q, (0, V - q.shape[-1])) if q.shape[-1] < V else q[:, :V]
    for i, x in enumerate(guess):
        qx = float(q[i, x]) if q is not None and x < V else 1.0
        if x < V and sampler.uniform() * qx < float(p[i, x]):  # u < p/q without dividing by a tiny q
            continue
        resid = p[i].clone()
        if q is not None:
            resid = (resid - q[i]).clamp_min(0)
        elif x < V:
            resid[x] = 0.0
        total = float(resid.sum())
        return guess[:i] + [sampler.draw(resid / total if total > 0 else p[i])], i
    return guess + [sampler.draw(p[g])], g


def speculative_generate(target: CachedLM, draft: Draft | None, prompt: Sequence[int], *, max_new_tokens: int,
                         length: DraftLength | None = None, sampler: Sampler | None = None,
                         eos_token_id: int | None = None) -> tuple[list[int], DecodeStats]:
    """Generate up to ``max_new_tokens`` after ``prompt`` (stopping after ``eos_token_id``): greedy without
    ``sampler``, else sampled; speculative with ``draft``, plain (one target forward per token) with None.
    ``target``: a :class:`CachedLM` (what it holds of another sequence is cropped away). Returns the new tokens
    and stats."""
    if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
        raise ValueError(f"max_new_tokens={max_new_tokens!r}: generate at least one token")
    if not prompt:
        raise ValueError("prompt is empty: give at least one token (e.g. BOS)")
    length = length or DraftLength()
    stats = DecodeStats()
    ids = list(prompt)
    t_start = time.perf_counter()
    while stats.new_tokens < max_new_tokens:
        left = max_new_tokens - stats.new_tokens
        k = min(length.next(), left - 1) if draft is not None else 0
        t0 = time.perf_counter()
        prop = draft.propose(ids, k, sampler) if k > 0 else None
        t1 = time.perf_counter()
        guess = prop.tokens[:k] if prop else []
        q = prop.q[: len(guess)] if prop is not None and prop.q is not None else None
        logits = target.logits(ids + guess, len(guess) + 1)  # (g + 1, V)
        t2 = time.perf_counter()
        new, n = _verify(logits, guess, q, sampler)
        tested = n + (n < len(guess))  # the accepted guesses and the first rejected one
        if eos_token_id is not None and eos_token_id in new:
            new = new[: new.index(eos_token_id) + 1]
        ids += new
        stats.new_tokens += len(new)
        stats.rounds += 1
        stats.guessed += len(guess)
        stats.accepted += n
        stats.tested += tested
        stats.draft_seconds += t1 - t0
        stats.target_seconds += t2 - t1
        stats.lengths.append(k)
        if draft is not None:
            length.update(guessed=len(guess), accepted=n, tested=tested, draft_seconds=t1 - t0,
                          verify_seconds=t2 - t1)
        if eos_token_id is not None and new[-1] == eos_token_id:
            break
    stats.seconds = time.perf_counter() - t_start
    return ids[len(prompt):], stats
