r"""How fast: a latency model of a prunable model's calibration forward, fitted on this machine.

Parameters are not time. Embedding rows cost no FLOPs, attention scores cost FLOPs but have no parameters, and a
CPU forward may pay a fixed cost per block (kernel dispatch, norms, residual adds) and a fixed cost per call. The
model

    T(m) = alpha * F(m) + beta * N(m) + gamma

with ``F`` the forward's FLOPs (``torch.utils.flop_counter``; matmuls and CPU SDPA attention) on the calibration
input and ``N`` the number of blocks over all towers, is fitted exactly through three measured points (interleaved
medians): the model itself, a copy with every second block of its largest tower dropped, and a copy with half the
MLP channels of every tower cut (then ``alpha = dT_mlp / dF_mlp``, ``beta = (dT_blocks - alpha dF_blocks) / dN``,
``beta`` clamped at 0, and ``gamma`` makes ``T(model)`` the measured time; if the narrower model does not time
faster, e.g. a model too small to resolve, ``T = F * T_model / F_model``). :func:`ann.prune.plan.prune` uses it to
rank moves by modelled time saved when given a ``speedup`` target; the real speed-up is always measured separately.
Measured on SmolLM2-135M (4 x 256 tokens, 2-core CPU, three fits): ``beta`` 0 to 1e-4 s, ``gamma`` 0.05-0.41 s of
about 2.2 s, i.e. time follows FLOPs with a per-call constant; the fit is noisy on a box whose speed drifts.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from ann.prune.surgery import drop_blocks, prune_mlp_channels, towers

__all__ = ["LatencyModel", "fit_latency", "forward_flops", "count_blocks", "interleaved_seconds"]


def _cpu_sdpa_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)  # PyTorch counts the CUDA SDPA kernels, not the CPU one


_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


def forward_flops(model: nn.Module, run: Callable[[nn.Module], object]) -> tuple[int, object]:
    """FLOPs of ``run(model)`` (no grad) and its output."""
    counter = FlopCounterMode(display=False, custom_mapping=_CUSTOM)
    with torch.no_grad(), counter:
        out = run(model)
    return counter.get_total_flops(), out


def count_blocks(model: nn.Module) -> int:
    return sum(len(t.layers) for t in towers(model))


@dataclass
class LatencyModel:
    """``seconds = alpha * flops + beta * blocks + gamma`` (module docstring); ``measured``: the three fitting points."""

    alpha: float
    beta: float
    gamma: float
    measured: dict

    def __call__(self, flops: float, blocks: int) -> float:
        return self.alpha * flops + self.beta * blocks + self.gamma

    def summary(self) -> dict:
        return asdict(self)


def interleaved_seconds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Median seconds of each callable, called in turn ``rounds`` times after one warm-up call each (in turn, because
    a CPU's speed drifts: every variant sees the same drift)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f()
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def fit_latency(model: nn.Module, run: Callable[[nn.Module], object], *, rounds: int = 3) -> LatencyModel:
    """Fit :class:`LatencyModel` for ``run(model)`` on this machine (three variants, ``rounds`` interleaved timings
    each; ``model`` itself is not changed)."""
    ts = towers(model)
    main = max(range(len(ts)), key=lambda i: sum(p.numel() for p in ts[i].layers.parameters()))
    fewer_blocks = copy.deepcopy(model)
    t = towers(fewer_blocks)[main]
    if len(t.layers) >= 2:
        drop_blocks(t, list(range(1, len(t.layers), 2)))
    narrower = copy.deepcopy(model)
    for t in towers(narrower):
        if t.intermediate >= 2:
            prune_mlp_channels(t, [list(range(t.intermediate // 2))] * len(t.layers))
    variants = {"model": model, "fewer_blocks": fewer_blocks, "narrower_mlp": narrower}
    secs = interleaved_seconds({k: (lambda m=m: run(m)) for k, m in variants.items()}, rounds)
    pts = {k: {"seconds": secs[k], "flops": forward_flops(m, run)[0], "blocks": count_blocks(m)} for k, m in variants.items()}
    m0, b, n = pts["model"], pts["fewer_blocks"], pts["narrower_mlp"]
    df, dn = m0["flops"] - n["flops"], m0["blocks"] - b["blocks"]
    alpha = (m0["seconds"] - n["seconds"]) / df if df > 0 else 0.0
    if alpha <= 0:  # too small or too noisy to resolve: time proportional to FLOPs
        return LatencyModel(m0["seconds"] / max(m0["flops"], 1), 0.0, 0.0,
                            {**pts, "fallback": "the narrower model did not time faster; seconds = FLOPs x T/F"})
    beta = max(0.0, ((m0["seconds"] - b["seconds"]) - alpha * (m0["flops"] - b["flops"])) / dn) if dn > 0 else 0.0
    gamma = m0["seconds"] - alpha * m0["flops"] - beta * m0["blocks"]
    return LatencyModel(alpha, beta, gamma, pts)
