r"""Bit configurations for :func:`quant.model_io.quantize_model`: uniform, or mixed precision from a sensitivity
table and the hierarchy-aware (or flat) ILP of :mod:`quant.allocate`, at module granularity.

**Why a validated path, not one ILP.** The ILP sums per-node scores, each measured with only that node
quantized. At moderate budgets (4 bits on SmolLM2) the sum predicts well; at 2-3-bit budgets the errors of many
narrowed layers compound and the unconstrained optimum can be worse than uniform (measured on SmolLM2 at 3 bits:
57 sublayers at 2 bits, held-out bits per byte 4.22 vs uniform's 3.84). So :func:`mixed_config` solves a short
path of ILPs that trust the additive model less and less, with the penalised score

    s_t(n, b) = s(n, b) + t * rho * params_n * max(0, b_ref - b),      t in penalties

``b_ref``: the widest choice whose uniform configuration fits the budget (the trust region's centre); ``rho``:
the mean score per narrowed parameter-bit of the first search level one step below it, ``sum_f [s(f, b_lo) -
s(f, b_ref)] / sum_f params_f (b_ref - b_lo)`` with ``b_lo`` the next narrower choice, which makes ``t``
unitless. ``t = 0`` is the plain ILP; large ``t`` narrows a
layer below ``b_ref`` only where that buys a large gain elsewhere, so the solution stays near uniform. Each
candidate is then scored by ``validate(config)`` (the whole model quantized, e.g. :func:`kl_validator` on
held-out calibration data) and the lowest wins. Every candidate meets the budget; the path reuses the
(memoised) sensitivities, so it costs ILP solves and one validation forward per candidate, no new sensitivities
beyond the nodes a different frontier refines into.

The search stops at the sublayer level (one width per weight matrix), since a :class:`quant.qmodules.QuantLinear`
holds one width; channel-group sensitivities and allocations exist in :mod:`quant.allocate` but are not executed
per group. Weights tied across modules (an embedding and its ``lm_head``) get one width.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from quant.allocate import Allocation, Budget, flat_allocate, hierarchical_allocate
from quant.hierarchy import Level, Node
from quant.model_io import quantize_model, tied_weight_groups
from quant.quantizer import QuantSpec
from quant.sensitivity import Forward, hf_logits, output_distance, reference_outputs

__all__ = ["uniform_config", "mixed_config", "kl_validator", "Candidate", "SEARCH_LEVELS", "PENALTIES"]

SEARCH_LEVELS = ("modality", "block", "sublayer")
PENALTIES = (0.0, 0.0625, 0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # geometric: the useful t differs by model


@dataclass(frozen=True)
class Candidate:
    """One ILP of the penalty path: its ``penalty`` t, ``average_bits``, summed unpenalised ``objective``,
    ``validation`` loss (None without a validator), ``widths`` (sublayers per bit width) and ``chosen``."""

    penalty: float
    average_bits: float
    objective: float
    validation: float | None
    widths: dict[int, int]
    chosen: bool = False


def _tie(model: nn.Module, config: dict[str, QuantSpec]) -> dict[str, QuantSpec]:
    for group in tied_weight_groups(model):
        specs = [config[n] for n in group if n in config]
        if specs:
            for n in group:
                config[n] = specs[0]
    return config


def uniform_config(model: nn.Module, root: Node, spec: QuantSpec) -> dict[str, QuantSpec]:
    """Every weight matrix of the hierarchy ``root`` at ``spec``."""
    return _tie(model, {m: spec for node in root.at_level(Level.SUBLAYER) for m in node.modules})


def kl_validator(model: nn.Module, batches: Sequence[Any], *, forward: Forward = hf_logits,
                 act_bits: int | None = None) -> Callable[[dict[str, QuantSpec]], float]:
    """``config -> mean KL(p_fp || p_q)`` of the whole model quantized by ``config`` on ``batches`` (hold them
    out from the sensitivity batches); the float outputs are computed once."""
    if len(batches) == 0:
        raise ValueError("kl_validator: batches is empty; pass at least one held-out calibration batch")
    ref = reference_outputs(model, batches, forward=forward)

    def validate(config: dict[str, QuantSpec]) -> float:
        qm = quantize_model(model, config, act_bits=act_bits)
        return output_distance(qm, batches, ref, forward=forward)

    return validate


def _config(model: nn.Module, root: Node, alloc: Allocation, spec: Callable[[int], QuantSpec]) -> dict[str, QuantSpec]:
    config = {}
    for node in root.at_level(Level.SUBLAYER):
        bits = alloc.bits[node.leaves()[0].name]  # the search stops at sublayers: their leaves agree
        for m in node.modules:
            config[m] = spec(bits)
    return _tie(model, config)


def mixed_config(model: nn.Module, root: Node, score: Callable[[Node, int], float], choices: Sequence[int],
                 budget: Budget, spec: Callable[[int], QuantSpec], *, flat: bool = False,
                 validate: Callable[[dict[str, QuantSpec]], float] | None = None,
                 penalties: Sequence[float] = PENALTIES,
                 progress: bool = False) -> tuple[dict[str, QuantSpec], Allocation, list[Candidate]]:
    """Allocate widths from ``choices`` under ``budget`` (``score(node, bits)``: a sensitivity, e.g.
    ``Sensitivity.fn("kl")``), hierarchy-aware unless ``flat``; ``spec(bits)`` makes each module's QuantSpec.
    With ``validate``, the penalty path of the module docstring picks the configuration; without it, the plain
    ILP (t = 0). Returns ``(config, allocation, candidates)``; the allocation's search cost counts the distinct
    sensitivity evaluations of the whole path and the seconds they took. ``progress``: a tqdm counter of those
    evaluations on stderr (their number depends on how deep the search refines, so it has no total)."""
    from tqdm import tqdm

    choices = sorted(set(choices))
    penalties = sorted(set(penalties)) if validate is not None else [0.0]
    if not penalties or penalties[0] < 0:
        raise ValueError(f"penalties={list(penalties)}: give one or more values >= 0 (0 is the plain ILP)")
    first = root.at_level(Level.SUBLAYER if flat else SEARCH_LEVELS[0]) or [root]
    total = budget.total(root)
    fits = [b for b in choices if sum(budget.cost(n, b) for n in first) <= total]
    b_ref = fits[-1] if fits else choices[0]
    b_lo = max((b for b in choices if b < b_ref), default=b_ref)
    seen: set[tuple[Node, int]] = set()
    bar = tqdm(desc="sensitivities", unit="eval", disable=not progress, file=sys.stderr)
    seconds = 0.0

    def counted(node: Node, bits: int) -> float:
        nonlocal seconds
        if (node, bits) in seen:
            return score(node, bits)
        t0 = time.perf_counter()
        value = score(node, bits)
        seconds += time.perf_counter() - t0
        seen.add((node, bits))
        bar.update()
        return value

    rho = 0.0
    if b_ref > b_lo and penalties[-1] > 0:
        rho = sum(counted(f, b_lo) - counted(f, b_ref) for f in first) / sum(f.params * (b_ref - b_lo) for f in first)
    runs = []
    for t in penalties:
        fn = (lambda n, b, t=t: counted(n, b) + t * rho * n.params * max(0, b_ref - b)) if t else counted
        alloc = (flat_allocate(root, fn, choices, budget) if flat else
                 hierarchical_allocate(root, fn, choices, budget, levels=SEARCH_LEVELS))
        config = _config(model, root, alloc, spec)
        if runs and config == runs[-1][1]:  # the same configuration as the previous t: nothing new to validate
            runs.append((t, config, alloc, runs[-1][3]))
            continue
        runs.append((t, config, alloc, validate(config) if validate is not None else None))
    best = min(range(len(runs)), key=lambda i: (runs[i][3] if runs[i][3] is not None else 0.0, i))
    candidates = [Candidate(t, a.average_bits, sum(counted(n, b) for n, b in _frontier(root, a)), v,
                            {b: sum(1 for n in root.at_level(Level.SUBLAYER) if a.bits[n.leaves()[0].name] == b)
                             for b in choices}, i == best)
                  for i, (t, _, a, v) in enumerate(runs)]
    _, config, alloc, _ = runs[best]
    bar.close()
    alloc.cost.evaluations, alloc.cost.sensitivity_seconds = len(seen), seconds
    return config, alloc, candidates


def _frontier(root: Node, alloc: Allocation) -> list[tuple[Node, int]]:
    keys = {n.key: n for n in root.walk()}
    return [(keys[k], b) for k, b in alloc.decided.items()]
