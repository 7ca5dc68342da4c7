r"""Searching per-layer widths of a spiking model: QSViT-style guided reduction and QSLM-style tiered search.

Both work on the :class:`~snn.quant.model.Item` s of a :class:`~snn.quant.model.SpikingQuantizer` (weight tensors
and neuron membranes, each in a block), with a user ``evaluate(model) -> score`` (higher is better: accuracy, or
minus bits per byte), and :class:`Constraints`:

    feasible(c)  <=>  score(c) >= score_ref - max_drop   and   memory(c) <= budget
    objective    J(c) = (score(c) - score_ref) / |score_ref|  -  memory_weight * memory(c) / memory_ref

``score_ref`` and ``memory_ref`` are the float model's (BatchNorm folded, every weight and membrane at 32 bits);
``budget`` is ``max_memory_fraction * memory_ref`` and/or ``max_memory_bytes``. The answer is the feasible
configuration with the highest ``J``. Every distinct configuration that is built and scored counts as one
evaluation (repeats are served from a cache and not counted): the search cost both methods report.

**QSViT-style** (:func:`qsvit_search`; Putra et al., "QSViT: A Methodology for Quantizing Spiking Vision
Transformers", IJCNN 2025): a flat, per-layer method.

1. Layer-wise sensitivity: every item alone at every width of its ladder, everything else float, measured as the
   output perturbation on the calibration batch (``sum_i |ladder_i|`` evaluations)

       drop(i, b) = ||y(only i at b) - y||^2 / ||y - mean(y)||^2      (y: the float model's outputs)

   (a continuous measure: the accuracy of a single narrow item is mostly unchanged, so accuracy alone cannot rank
   the items, and its zeros do not add up when the items are combined).
2. Guided reduction: the drops are taken as additive, and for each memory target ``M`` of a grid (fractions of
   the budget) the widths come from the ILP (:func:`quant.allocate.ilp_allocate`, CBC)

       minimize  sum_i drop(i, b_i)     s.t.  sum_i size_i b_i <= M   (b_i in item i's ladder)

   so that sensitive items keep their bits and the others give them up; each joint configuration is scored and
   the best feasible one over the grid is the answer with ``evaluate``. (Per-item accuracy thresholds, ignoring how
   the items' losses add up, overshoot: measured on the digits ViT, every such joint configuration lost > 5 points.)

**QSLM-style tiered** (:func:`tiered_search`; Putra et al., "QSLM: A Performance- and Memory-aware Quantization
Framework with Tiered Search Strategy for Spike-driven Language Models", 2025): coarse decisions first, each tier
starting from the previous tier's answer.

1. Global: one width for all weights, then one for all membranes: walk down each ladder and take the narrowest
   width whose score stays within the tier's share of the allowed loss (all weights first, membranes float; then
   all membranes with weights at the chosen width). The walk ends at the second width in a row that misses (a
   score measured on a few hundred samples is not monotone in the width: one miss may be noise).
2. Block: for each block (largest memory first), all its weights one step down the ladder, then all its
   membranes; a move is kept if the score stays within the block tier's share and ``J`` improves (first
   improvement). Repeated while a pass keeps a move (at most ``max_passes``).
3. Module: the ``module_top_k`` items that would save the most memory by one step down, each taken down its
   ladder alone, one step at a time while the step is kept under the same rule with the whole allowed loss.

Each tier may spend only its share of ``max_drop`` (``drop_shares``, default 1/2, 3/4, all): a coarse tier that
took the whole loss at once would leave the finer tiers nothing to trade, and a score measured on a few hundred
samples sits on the boundary by chance (measured on the digits ViT: the narrowest uniform width within the
whole loss left the block and module tiers 1 sample from infeasible).

The tiers score ``O(|ladder| + blocks + k)`` configurations instead of ``O(items x |ladder|)``: the saving grows
with the model (more layers per block).

Constraints that no evaluated configuration meets raise :class:`ConstraintsUnsatisfiable`, which carries the
closest configuration found (least normalized violation ``max(0, drop - max_drop) / max_drop + max(0, memory -
budget) / budget``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from quant.allocate import BudgetError, ilp_allocate
from snn.quant.model import Item, SpikingPrecision, SpikingQuantizer

__all__ = ["Constraints", "Evaluated", "SearchResult", "ConstraintsUnsatisfiable", "qsvit_search", "tiered_search",
           "WEIGHT_LADDER", "MEMBRANE_LADDER"]

WEIGHT_LADDER: tuple[int, ...] = (8, 6, 5, 4, 3, 2)
MEMBRANE_LADDER: tuple[int, ...] = (16, 12, 10, 8, 6, 5, 4, 3)

Evaluate = Callable[[nn.Module], float]


@dataclass(frozen=True)
class Constraints:
    """User constraints and the objective's weight (module docstring).

    Attributes:
        max_drop: the largest score loss allowed against the float model (accuracy: 0.02 = 2 points), >= 0.
        max_memory_fraction: memory budget as a fraction of the float model's memory, in (0, 1], or None.
        max_memory_bytes: memory budget in bytes (> 0), or None. With both, the smaller budget applies.
        memory_weight: weight of memory in the objective ``J`` (>= 0).
    """

    max_drop: float = 0.02
    max_memory_fraction: float | None = 0.3
    max_memory_bytes: float | None = None
    memory_weight: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_drop) and self.max_drop >= 0):
            raise ValueError(f"Constraints.max_drop={self.max_drop!r}: use a number >= 0 (score units, e.g. 0.02)")
        if self.max_memory_fraction is not None and not 0 < self.max_memory_fraction <= 1:
            raise ValueError(f"Constraints.max_memory_fraction={self.max_memory_fraction!r}: use a fraction in (0, 1] "
                             "of the float model's memory, or None")
        if self.max_memory_bytes is not None and not self.max_memory_bytes > 0:
            raise ValueError(f"Constraints.max_memory_bytes={self.max_memory_bytes!r}: use a number of bytes > 0, or None")
        if not self.memory_weight >= 0:
            raise ValueError(f"Constraints.memory_weight={self.memory_weight!r}: use a number >= 0")

    def budget(self, memory_ref: float) -> float:
        b = [math.inf]
        if self.max_memory_fraction is not None:
            b.append(self.max_memory_fraction * memory_ref)
        if self.max_memory_bytes is not None:
            b.append(self.max_memory_bytes)
        return min(b)


@dataclass(frozen=True)
class Evaluated:
    """One scored configuration."""

    precision: SpikingPrecision
    score: float
    memory_bytes: float
    score_ok: bool
    memory_ok: bool
    objective: float
    violation: float
    stage: str

    @property
    def feasible(self) -> bool:
        return self.score_ok and self.memory_ok

    def to_dict(self) -> dict:
        return {"score": self.score, "memory_bytes": self.memory_bytes, "feasible": self.feasible,
                "score_ok": self.score_ok, "memory_ok": self.memory_ok, "objective": self.objective,
                "stage": self.stage, "precision": self.precision.to_dict()}


@dataclass
class SearchResult:
    """The answer (``best``), the reference, and the search cost (``evaluations``, per stage)."""

    method: str
    best: Evaluated
    score_ref: float
    memory_ref: float
    budget: float
    evaluations: int
    stage_evaluations: dict[str, int]
    seconds: float
    history: list[Evaluated] = field(default_factory=list)

    @property
    def memory_saved(self) -> float:
        return 1 - self.best.memory_bytes / self.memory_ref

    def to_dict(self) -> dict:
        return {"method": self.method, "best": self.best.to_dict(), "score_ref": self.score_ref,
                "memory_ref_bytes": self.memory_ref, "budget_bytes": self.budget, "memory_saved": self.memory_saved,
                "evaluations": self.evaluations, "stage_evaluations": self.stage_evaluations, "seconds": self.seconds,
                "history": [{k: v for k, v in e.to_dict().items() if k != "precision"} for e in self.history]}


class ConstraintsUnsatisfiable(ValueError):
    """No evaluated configuration meets the constraints; ``closest`` is the one that came nearest."""

    def __init__(self, constraints: Constraints, closest: Evaluated, score_ref: float, budget: float) -> None:
        self.closest = closest
        super().__init__(
            f"no configuration meets the constraints (score >= {score_ref - constraints.max_drop:.4f}, memory <= "
            f"{budget:,.0f} bytes); the closest found scores {closest.score:.4f} with {closest.memory_bytes:,.0f} "
            f"bytes ({closest.stage}). Relax max_drop or the memory budget, or allow narrower widths")


class _Scorer:
    """Builds, scores and caches configurations; counts distinct evaluations per stage."""

    def __init__(self, q: SpikingQuantizer, evaluate: Evaluate, constraints: Constraints, progress: bool, desc: str) -> None:
        self.q, self.evaluate, self.c = q, evaluate, constraints
        self.cache: dict[tuple, Evaluated] = {}
        self.history: list[Evaluated] = []
        self.stages: dict[str, int] = {}
        self.memory_ref = q.memory().total_bytes
        self.budget = constraints.budget(self.memory_ref)
        self.bar = tqdm(desc=desc, unit="cfg", disable=not progress, leave=False)
        self.score_ref = self._score(SpikingPrecision(decay_bits=None), "reference").score

    @staticmethod
    def _key(p: SpikingPrecision) -> tuple:
        return (tuple(sorted(p.weights.items())), tuple(sorted(p.membranes.items())),
                tuple(sorted(p.thresholds.items())), p.decay_bits, p.per_tensor)

    def _score(self, p: SpikingPrecision, stage: str) -> Evaluated:
        key = self._key(p)
        if key in self.cache:
            return self.cache[key]
        score = float(self.evaluate(self.q.build(p)))
        mem = self.q.memory(p).total_bytes
        ref = getattr(self, "score_ref", score)
        drop = ref - score
        j = (score - ref) / (abs(ref) or 1.0) - self.c.memory_weight * mem / self.memory_ref
        violation = (max(0.0, drop - self.c.max_drop) / max(self.c.max_drop, 1e-9)
                     + (max(0.0, mem - self.budget) / self.budget if math.isfinite(self.budget) else 0.0))
        e = Evaluated(p, score, mem, drop <= self.c.max_drop + 1e-12, mem <= self.budget, j, violation, stage)
        self.cache[key] = e
        self.history.append(e)
        self.stages[stage] = self.stages.get(stage, 0) + 1
        self.bar.update(1)
        self.bar.set_postfix(stage=stage, score=f"{score:.4f}", kB=f"{mem / 1e3:.1f}")
        return e

    def __call__(self, p: SpikingPrecision, stage: str) -> Evaluated:
        return self._score(p, stage)

    def count(self, stage: str) -> None:
        """One evaluation that is not a scored configuration (a sensitivity measurement)."""
        self.stages[stage] = self.stages.get(stage, 0) + 1
        self.bar.update(1)

    def result(self, method: str, t0: float) -> SearchResult:
        self.bar.close()
        feasible = [e for e in self.history if e.feasible]
        if not feasible:
            raise ConstraintsUnsatisfiable(self.c, min(self.history, key=lambda e: e.violation), self.score_ref, self.budget)
        best = max(feasible, key=lambda e: e.objective)
        return SearchResult(method, best, self.score_ref, self.memory_ref, self.budget, sum(self.stages.values()),
                            dict(self.stages), time.perf_counter() - t0, self.history)


def _check_ladders(weight_ladder: Sequence[int], membrane_ladder: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    w, m = tuple(sorted(set(weight_ladder), reverse=True)), tuple(sorted(set(membrane_ladder), reverse=True))
    if not w or not all(isinstance(b, int) and 2 <= b <= 16 for b in w):
        raise ValueError(f"weight_ladder={tuple(weight_ladder)}: give weight widths, ints in 2..16")
    if not m or not all(isinstance(b, int) and 2 <= b <= 32 for b in m):
        raise ValueError(f"membrane_ladder={tuple(membrane_ladder)}: give membrane widths, ints in 2..32")
    return w, m


@torch.no_grad()
def _outputs(model: nn.Module, x) -> torch.Tensor:
    return (model(**x) if isinstance(x, Mapping) else model(x)).float()


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref||^2 / ||ref - mean(ref)||^2``: the output perturbation relative to the outputs' spread."""
    return float((out - ref).pow(2).sum() / (ref - ref.mean()).pow(2).sum().clamp_min(1e-12))


def qsvit_search(q: SpikingQuantizer, evaluate: Evaluate, constraints: Constraints = Constraints(), *,
                 weight_ladder: Sequence[int] = WEIGHT_LADDER, membrane_ladder: Sequence[int] = MEMBRANE_LADDER,
                 fractions: Sequence[float] = (1.0, 0.85, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2), decay_bits: int | None = 12,
                 progress: bool = True) -> SearchResult:
    """Layer-wise sensitivity, then guided reduction (module docstring). ``fractions``: the memory targets of the
    guided reduction, as fractions of the budget (or of the widest configuration's memory if that is smaller)."""
    t0 = time.perf_counter()
    wl, ml = _check_ladders(weight_ladder, membrane_ladder)
    s = _Scorer(q, evaluate, constraints, progress, "qsvit")
    ladder = {"weight": wl, "membrane": ml}
    reference = _outputs(q.float_model, q.calib)
    drop: dict[Item, dict[int, float]] = {}
    for item in q.items:
        drop[item] = {}
        for b in ladder[item.kind]:
            p = SpikingPrecision(decay_bits=decay_bits).with_bits({item: b})
            drop[item][b] = _relative_error(_outputs(q.build(p), q.calib), reference)
            s.count("sensitivity")
    widest = SpikingPrecision(decay_bits=decay_bits).with_bits({i: ladder[i.kind][0] for i in q.items})
    payload = sum(i.size * ladder[i.kind][0] for i in q.items) / 8
    overhead = q.memory(widest).total_bytes - payload  # scales, biases, thresholds: about fixed
    target = min(s.budget, q.memory(widest).total_bytes)
    choices = sorted({b for lad in ladder.values() for b in lad})
    for f in fractions:
        bits_budget = 8 * (f * target - overhead)
        try:
            bits = ilp_allocate(q.items, choices, lambda i, b: drop[i][b] if b in ladder[i.kind] else math.inf,
                                lambda i: i.size, bits_budget)
        except BudgetError:
            break
        s(SpikingPrecision(decay_bits=decay_bits).with_bits(bits), "guided")
    return s.result("qsvit", t0)


def _down(ladder: tuple[int, ...], b: int) -> int | None:
    lower = [x for x in ladder if x < b]
    return max(lower) if lower else None


def tiered_search(q: SpikingQuantizer, evaluate: Evaluate, constraints: Constraints = Constraints(), *,
                  weight_ladder: Sequence[int] = WEIGHT_LADDER, membrane_ladder: Sequence[int] = MEMBRANE_LADDER,
                  module_top_k: int = 8, max_passes: int = 2, drop_shares: Sequence[float] = (0.5, 0.75, 1.0),
                  decay_bits: int | None = 12, progress: bool = True) -> SearchResult:
    """Global -> block -> module (module docstring). ``drop_shares``: the share of ``max_drop`` each tier may
    spend (global, block, module)."""
    t0 = time.perf_counter()
    wl, ml = _check_ladders(weight_ladder, membrane_ladder)
    if not isinstance(module_top_k, int) or module_top_k < 0:
        raise ValueError(f"module_top_k={module_top_k!r}: use an int >= 0 (0 skips the module tier)")
    shares = tuple(drop_shares)
    if len(shares) != 3 or not all(0 <= a <= b <= 1 for a, b in zip((0.0, *shares), shares)):
        raise ValueError(f"drop_shares={shares}: give three non-decreasing shares of max_drop in [0, 1] "
                         "(global, block, module), e.g. (0.5, 0.75, 1.0)")
    s = _Scorer(q, evaluate, constraints, progress, "tiered")
    ladder = {"weight": wl, "membrane": ml}
    items = {kind: [i for i in q.items if i.kind == kind] for kind in ladder}

    def within(e: Evaluated, share: float) -> bool:
        return e.score >= s.score_ref - share * constraints.max_drop - 1e-12

    # tier 1: global
    cur = SpikingPrecision(decay_bits=decay_bits)
    for kind in ("weight", "membrane"):
        chosen, misses = None, 0
        for b in ladder[kind]:  # narrowest width within the share; a single miss may be noise, two end the walk
            if within(s(cur.with_bits({i: b for i in items[kind]}), "global"), shares[0]):
                chosen, misses = b, 0
            elif (misses := misses + 1) == 2:
                break
        cur = cur.with_bits({i: chosen if chosen is not None else ladder[kind][0] for i in items[kind]})
    best = s(cur, "global")

    def try_move(moves: dict[Item, int], stage: str, share: float) -> bool:
        nonlocal best
        if not moves:
            return False
        e = s(best.precision.with_bits(moves), stage)
        if within(e, share) and e.objective > best.objective:
            best = e
            return True
        return False

    # tier 2: blocks, largest first
    blocks = sorted(q.blocks, key=lambda b: -sum(i.size * (best.precision.bits_of(i) or 32) for i in q.items if i.block == b))
    for _ in range(max_passes):
        moved = False
        for blk in blocks:
            for kind in ("weight", "membrane"):
                moves = {i: d for i in items[kind] if i.block == blk
                         and (d := _down(ladder[kind], best.precision.bits_of(i))) is not None}
                moved |= try_move(moves, "block", shares[1])
        if not moved:
            break

    # tier 3: modules with the largest one-step saving
    def saving(i: Item) -> float:
        b = best.precision.bits_of(i)
        d = _down(ladder[i.kind], b)
        return 0.0 if d is None else i.size * (b - d)

    for item in sorted(q.items, key=saving, reverse=True)[:module_top_k]:
        while (d := _down(ladder[item.kind], best.precision.bits_of(item))) is not None:
            if not try_move({item: d}, "module", shares[2]):
                break
    return s.result("tiered", t0)
