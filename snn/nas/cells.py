r"""The operations a cell of the NAS search space can pick (:mod:`snn.nas.space`), all ``(T, B, N, D) -> (T, B, N, D)``.

Dimension letters: T timesteps, B batch, N = h_g w_g tokens on an h_g x w_g grid, D width, r the MLP ratio.
Every sublayer starts with a neuron, so every weight product takes spikes, and the residuals are a membrane
shortcut (real values), as in :mod:`snn.models.blocks`:

    attn:  the spike-driven transformer block (:class:`snn.models.blocks.SpikeDrivenBlock`): spike-driven
           self-attention q (k^T v) without softmax, then the spiking MLP
    mlp:   u = u + BN(LIF(BN(LIF(u) W_1)) W_2)                        (no token mixing; W_1: D x rD)
    conv:  u = u + BN(PW(LIF(BN(DW(LIF(u))))))                         (token mixing by a depthwise 3 x 3 spiking
           then the spiking MLP above                                  convolution on the token grid, pointwise PW)

The conv cell is the spiking separable convolution of SNASNet / SpikeNAS-style spaces (Kim et al., "Neural
architecture search for spiking neural networks", ECCV 2022; Putra & Shafique, "SpikeNAS", 2024) placed on the
token grid of a spiking ViT. One builder per op in :data:`CELL_BUILDERS` (skip, the identity, has none: it adds
nothing to the network).
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from snn.models.blocks import SeqBN, SpikeDrivenBlock
from snn.neurons import Engine, NeuronSpec, build_neuron

__all__ = ["CellOp", "CellContext", "SpikingMLPBlock", "SpikingConvBlock", "CELL_BUILDERS", "build_cell"]


class CellOp(str, enum.Enum):
    ATTN = "attn"
    MLP = "mlp"
    CONV = "conv"
    SKIP = "skip"


@dataclass(frozen=True, kw_only=True)
class CellContext:
    """What every cell of one network shares: width ``dim``, token grid ``grid`` (h_g, w_g), neurons and engine."""

    dim: int
    grid: tuple[int, int]
    heads: int | None
    neuron: NeuronSpec
    attn_threshold: float
    engine: Engine


class _SpikingMLP(nn.Module):
    """``BN(LIF(BN(LIF(u) W_1)) W_2)``: the residual branch of the spiking MLP (names as in SpikeDrivenBlock)."""

    def __init__(self, ctx: CellContext, mlp_ratio: int) -> None:
        super().__init__()
        D = ctx.dim
        self.mlp_lif, self.hid_lif = build_neuron(ctx.neuron, engine=ctx.engine), build_neuron(ctx.neuron, engine=ctx.engine)
        self.fc1, self.fc1_bn = nn.Linear(D, mlp_ratio * D), SeqBN(mlp_ratio * D)
        self.fc2, self.fc2_bn = nn.Linear(mlp_ratio * D, D), SeqBN(D)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (T, B, N, D) -> (T, B, N, D)
        return self.fc2_bn(self.fc2(self.hid_lif(self.fc1_bn(self.fc1(self.mlp_lif(u))))))


class SpikingMLPBlock(nn.Module):
    """The ``mlp`` op of the module docstring."""

    def __init__(self, ctx: CellContext, mlp_ratio: int) -> None:
        super().__init__()
        self.mlp = _SpikingMLP(ctx, mlp_ratio)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (T, B, N, D) -> (T, B, N, D)
        return u + self.mlp(u)


class SpikingConvBlock(nn.Module):
    """The ``conv`` op of the module docstring: depthwise 3 x 3 + pointwise token mixing, then the spiking MLP."""

    def __init__(self, ctx: CellContext, mlp_ratio: int) -> None:
        super().__init__()
        D = ctx.dim
        self.grid = ctx.grid
        self.in_lif, self.dw_lif = build_neuron(ctx.neuron, engine=ctx.engine), build_neuron(ctx.neuron, engine=ctx.engine)
        self.dw, self.dw_bn = nn.Conv2d(D, D, 3, padding=1, groups=D, bias=False), nn.BatchNorm2d(D)
        self.pw, self.pw_bn = nn.Linear(D, D, bias=False), SeqBN(D)
        self.mlp = _SpikingMLP(ctx, mlp_ratio)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # (T, B, N, D) -> (T, B, N, D)
        T, B, N, D = u.shape
        hg, wg = self.grid
        s = self.in_lif(u).flatten(0, 1).transpose(1, 2).reshape(T * B, D, hg, wg)  # (T B, D, h_g, w_g)
        z = self.dw_bn(self.dw(s)).reshape(T, B, D, N).transpose(2, 3)  # (T, B, N, D)
        u = u + self.pw_bn(self.pw(self.dw_lif(z)))
        return u + self.mlp(u)


def _attn(ctx: CellContext, mlp_ratio: int) -> nn.Module:
    if ctx.heads is None:
        raise ValueError("an attn cell needs heads (Genotype.heads is None)")
    return SpikeDrivenBlock(dim=ctx.dim, heads=ctx.heads, mlp_ratio=mlp_ratio, neuron=ctx.neuron,
                            attn_threshold=ctx.attn_threshold, engine=ctx.engine, causal=False)


# op -> builder(ctx, mlp_ratio); one registration per op (skip is the identity and builds nothing)
CELL_BUILDERS: dict[CellOp, Callable[[CellContext, int], nn.Module]] = {
    CellOp.ATTN: _attn, CellOp.MLP: SpikingMLPBlock, CellOp.CONV: SpikingConvBlock}


def build_cell(op: CellOp | str, ctx: CellContext, mlp_ratio: int) -> nn.Module:
    """The module of one (non-skip) cell."""
    op = CellOp(op)
    if op not in CELL_BUILDERS:
        raise ValueError(f"cell op {op.value!r} builds no module (skip is the identity); known: "
                         f"{[o.value for o in CELL_BUILDERS]}")
    return CELL_BUILDERS[op](ctx, mlp_ratio)
