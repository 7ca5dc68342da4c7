r"""Importance of prunable structures, as small callables.

A *structure* is a set of weight slices that must go together (an MLP channel ``j``: row ``j`` of gate and up,
column ``j`` of down; a KV group: its K/V rows, its query heads' Q rows and their O columns). With ``W_s`` the
slices of structure ``s``:

- magnitude:        ``I(s) = sum_{W in s} ||W||_2^2``
- activation-aware (Wanda, Sun et al. 2024): ``I(s) = sum_{W in s} sum |W_ij| * ||X_j||_2`` with ``X_j`` the
  calibration inputs of the slice's input channel ``j`` (so a weight reading a large activation counts more);
- first-order Taylor (Molchanov et al. 2019): ``I(s) = |sum_{W in s} sum W_ij * dL/dW_ij|``, the loss change of
  zeroing ``s`` to first order;
- block influence (Men et al. 2024, ShortGPT): for a whole block, ``BI = 1 - mean_tokens cos(x_in, x_out)``:
  a block that barely rotates its residual stream can go.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

__all__ = ["Slice", "magnitude", "wanda", "taylor", "input_norms", "block_influence", "CRITERIA"]

# (linear layer, axis, index tensor): axis 0 = output rows, axis 1 = input columns of ``layer.weight``
Slice = tuple[nn.Linear, int, torch.Tensor]


def _take(w: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
    return w.index_select(axis, idx)


def magnitude(slices: Sequence[Slice], **_) -> float:
    """``sum ||W||^2`` over the structure's slices."""
    return float(sum(_take(l.weight.detach(), a, i).float().pow(2).sum() for l, a, i in slices))


def wanda(slices: Sequence[Slice], *, input_norms: dict[nn.Linear, torch.Tensor], **_) -> float:
    """``sum |W_ij| ||X_j||``; ``input_norms[layer]``: per-input-channel L2 norm of the layer's calibration inputs."""
    total = 0.0
    for l, a, i in slices:
        w = _take(l.weight.detach(), a, i).float().abs()
        n = input_norms[l].float()
        total += float((w * (n if a == 0 else n[i])[None, :]).sum())  # rows read every input; columns only theirs
    return total


def taylor(slices: Sequence[Slice], **_) -> float:
    """``|sum W * dL/dW|`` over the structure (needs ``.grad`` from a calibration backward pass)."""
    total = 0.0
    for l, a, i in slices:
        if l.weight.grad is None:
            raise ValueError("taylor: the layers have no .grad; run a calibration loss backward first")
        total += float((_take(l.weight.detach(), a, i) * _take(l.weight.grad, a, i)).sum())
    return abs(total)


CRITERIA: dict[str, Callable[..., float]] = {"magnitude": magnitude, "wanda": wanda, "taylor": taylor}


@torch.no_grad()
def input_norms(model: nn.Module, run: Callable[[nn.Module], object], layers: Iterable[nn.Linear]) -> dict[nn.Linear, torch.Tensor]:
    """Per-input-channel L2 norm of each layer's inputs over whatever ``run(model)`` feeds it (for :func:`wanda`)."""
    sq: dict[nn.Linear, torch.Tensor] = {}

    def hook(m, inp):
        x = inp[0].detach().reshape(-1, inp[0].shape[-1]).float()
        sq[m] = sq.get(m, 0) + x.pow(2).sum(0)

    handles = [l.register_forward_pre_hook(hook) for l in layers]
    try:
        run(model)
    finally:
        for h in handles:
            h.remove()
    return {m: v.sqrt() for m, v in sq.items()}


@torch.no_grad()
def block_influence(blocks: Sequence[nn.Module], model: nn.Module, run: Callable[[nn.Module], object]) -> list[float]:
    """``1 - mean cos(x_in, x_out)`` of each block over the tokens of ``run(model)`` (a block's first positional
    input and first output are the residual stream)."""
    stats = [[0.0, 0] for _ in blocks]
    inputs: dict[int, torch.Tensor] = {}

    def pre(k):
        def fn(_m, args, kwargs):
            x = args[0] if args else kwargs["hidden_states"]
            inputs[k] = x.detach()
        return fn

    def post(k):
        def fn(_m, _args, _kwargs, out):
            y = out[0] if isinstance(out, (tuple, list)) else out
            cos = torch.nn.functional.cosine_similarity(inputs[k].float(), y.detach().float(), dim=-1)
            stats[k][0] += float(cos.sum())
            stats[k][1] += cos.numel()
        return fn

    handles = []
    for k, b in enumerate(blocks):
        handles.append(b.register_forward_pre_hook(pre(k), with_kwargs=True))
        handles.append(b.register_forward_hook(post(k), with_kwargs=True))
    try:
        run(model)
    finally:
        for h in handles:
            h.remove()
    if any(n == 0 for _, n in stats):
        raise ValueError("block_influence: the calibration run never reached some blocks")
    return [1.0 - s / n for s, n in stats]
