r"""Small-to-large cascades: which tier answers, what it costs, and the thresholds that trade one for the other.

Tiers ``0 .. T-1`` run cheapest first. Tier ``i < T-1`` answers an item and runs its self-test, which gives a
score ``s_i`` (higher: more sure); the item stops at the first tier with ``s_i >= theta_i``, and the last tier
always answers (it needs no self-test). For thresholds ``theta = (theta_0 .. theta_{T-2})`` and item ``x``
stopping at tier ``k(x)``::

    quality(theta) = mean_x q_{k(x)}(x),      cost(theta) = mean_x [ sum_{i < k(x)} (c_i(x) + t_i(x)) + c_{k(x)}(x) + t_{k(x)}(x) [k(x) < T-1] ]

with ``q_i(x)`` the tier's quality on ``x`` (1/0 exact match or pass), ``c_i`` its answering cost and ``t_i`` its
self-test cost (FLOPs or seconds). Every tier is run on every item once (:class:`TierRun`); any cascade is then
evaluated exactly from those records, which is what makes a search over thresholds cheap.

Threshold search (:func:`pareto_search`): each ``theta_i`` ranges over the quantiles of ``s_i`` on the
validation split (plus "never stop" ``+inf``); all combinations are evaluated and the Pareto front
(least cost for the quality) is kept. :func:`choose` takes the cheapest point of the front whose validation
quality is at least the last tier's minus ``max_loss``; the chosen thresholds are then evaluated on the test split.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["TierRun", "route", "evaluate", "pareto_search", "choose"]


@dataclass(frozen=True)
class TierRun:
    """One tier on ``n`` items (arrays of shape ``(n,)``, item order shared by all tiers of a cascade).

    ``quality``: per-item quality in [0, 1]; ``score``: the self-test score (higher: more confident; NaN when the
    tier has no self-test); ``flops`` / ``seconds``: cost of answering; ``test_flops`` / ``test_seconds``: cost of
    the self-test."""

    name: str
    quality: np.ndarray
    score: np.ndarray
    flops: np.ndarray
    seconds: np.ndarray
    test_flops: np.ndarray
    test_seconds: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.quality)
        for f in ("score", "flops", "seconds", "test_flops", "test_seconds"):
            if np.shape(getattr(self, f)) != (n,):
                raise ValueError(f"tier {self.name!r}: {f} has shape {np.shape(getattr(self, f))}, quality has ({n},); "
                                 "every array holds one value per item")

    def __len__(self) -> int:
        return len(self.quality)

    def subset(self, idx: np.ndarray) -> "TierRun":
        return TierRun(self.name, *(np.asarray(getattr(self, f))[idx] for f in
                                    ("quality", "score", "flops", "seconds", "test_flops", "test_seconds")))


def _check(tiers: Sequence[TierRun], thresholds: Sequence[float]) -> None:
    if not tiers:
        raise ValueError("a cascade needs at least one tier")
    if len({len(t) for t in tiers}) != 1:
        raise ValueError(f"tiers cover different numbers of items: {[(t.name, len(t)) for t in tiers]}")
    if len(thresholds) != len(tiers) - 1:
        raise ValueError(f"{len(tiers)} tiers take {len(tiers) - 1} thresholds (the last tier always answers), "
                         f"got {len(thresholds)}")


def route(tiers: Sequence[TierRun], thresholds: Sequence[float]) -> np.ndarray:
    """The tier each item stops at, ``(n,)`` int (module docstring); a NaN score never passes."""
    _check(tiers, thresholds)
    stop = np.full(len(tiers[0]), len(tiers) - 1)
    undecided = np.ones(len(tiers[0]), dtype=bool)
    for i, (t, th) in enumerate(zip(tiers, thresholds)):
        ok = undecided & (np.nan_to_num(t.score, nan=-np.inf) >= th)
        stop[ok] = i
        undecided &= ~ok
    return stop


def evaluate(tiers: Sequence[TierRun], thresholds: Sequence[float]) -> dict:
    """Quality, mean FLOPs and seconds per item, and the fraction of items stopping at each tier."""
    stop = route(tiers, thresholds)
    last = len(tiers) - 1
    n = len(stop)
    quality = np.choose(stop, [t.quality for t in tiers]) if n else np.zeros(0)
    cost = {}
    for unit, (c, tc) in {"flops": ("flops", "test_flops"), "seconds": ("seconds", "test_seconds")}.items():
        total = np.zeros(n)
        for i, t in enumerate(tiers):
            ran = stop >= i
            total += np.where(ran, getattr(t, c), 0.0)
            total += np.where(ran & (i < last), getattr(t, tc), 0.0)  # the last tier answers without a self-test
        cost[unit] = float(total.mean()) if n else 0.0
    return {"thresholds": [float(x) for x in thresholds], "quality": float(quality.mean()) if n else math.nan,
            **cost, "stops": [float((stop == i).mean()) for i in range(len(tiers))]}


def _candidates(score: np.ndarray, grid: int) -> list[float]:
    s = score[np.isfinite(score)]
    qs = np.unique(np.quantile(s, np.linspace(0, 1, grid))) if len(s) else np.zeros(0)
    return [*qs.tolist(), math.inf]


def pareto_search(tiers: Sequence[TierRun], *, grid: int = 41, cost: str = "flops") -> list[dict]:
    """The Pareto front (least ``cost`` for the quality, ascending cost) over threshold combinations drawn from
    each tier's score quantiles (``grid`` of them, plus never stopping)."""
    if cost not in ("flops", "seconds"):
        raise ValueError(f"cost={cost!r}: 'flops' or 'seconds'")
    if grid < 2:
        raise ValueError(f"grid={grid}: at least 2 quantiles per tier")
    points = [evaluate(tiers, th) for th in itertools.product(*(_candidates(t.score, grid) for t in tiers[:-1]))]
    points.sort(key=lambda p: (p[cost], -p["quality"]))
    front, best = [], -math.inf
    for p in points:
        if p["quality"] > best:
            front.append(p)
            best = p["quality"]
    return front


def choose(front: Sequence[dict], *, reference_quality: float, max_loss: float, cost: str = "flops") -> dict:
    """The cheapest point of ``front`` with quality >= ``reference_quality - max_loss``; when none is, the best
    quality one (and ``"feasible": False``)."""
    ok = [p for p in front if p["quality"] >= reference_quality - max_loss - 1e-12]
    if ok:
        return {**min(ok, key=lambda p: p[cost]), "feasible": True}
    return {**max(front, key=lambda p: p["quality"]), "feasible": False}
