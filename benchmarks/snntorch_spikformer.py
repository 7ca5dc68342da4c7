"""The peer for the training-throughput comparison: the digits spiking ViT written the way snnTorch is used.

snnTorch neurons are single-step modules that keep their membrane between calls (``init_hidden=True``), so a
network built on them runs the whole network once per timestep, ``for t in range(T)``, with every layer seeing
(B, ...) tensors (the snnTorch tutorials' pattern). Ours (:class:`snn.models.Spikformer`) is multi-step: the
stateless layers (convolutions, linear layers, BN) run once on all T timesteps stacked, and only the neurons loop
over time.

The architecture and parameter names are those of :class:`snn.models.Spikformer` (a state dict loads into both),
and in eval mode the two give the same logits (tested), so the comparison measures the implementation, not the
model. In training mode BN normalizes over (B, N) per timestep here and over (T, B, N) in ours, the usual
difference between single-step and multi-step code.
"""

from __future__ import annotations

import math

import snntorch
import torch
from snntorch import surrogate
from torch import nn

from snn.models import SpikformerConfig

__all__ = ["SnnTorchSpikformer"]


class _Leaky(snntorch.Leaky):
    """LIF with hard reset to 0 and the input divided by tau (``decay_input``), one timestep per call."""

    def __init__(self, tau: float, threshold: float, alpha: float) -> None:
        super().__init__(beta=1.0 - 1.0 / tau, threshold=threshold, spike_grad=surrogate.atan(alpha=alpha),
                         init_hidden=True, reset_mechanism="zero", reset_delay=False)
        self.scale = 1.0 / tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x * self.scale)


class _BN(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, N, D)
        return self.bn(x.reshape(-1, x.shape[-1])).view_as(x)


class _Block(nn.Module):
    def __init__(self, cfg: SpikformerConfig) -> None:
        super().__init__()
        D, n = cfg.dim, cfg.neuron
        lif = lambda th=n.v_threshold: _Leaky(n.tau, th, n.surrogate_alpha)  # noqa: E731
        self.heads, self.scale = cfg.heads, 1.0 / math.sqrt(D // cfg.heads)
        self.in_lif, self.mlp_lif, self.hid_lif = lif(), lif(), lif()
        self.qkv, self.qkv_bn = nn.Linear(D, 3 * D, bias=False), _BN(3 * D)
        self.q_lif, self.k_lif, self.v_lif = lif(), lif(), lif()
        self.attn_lif = lif(cfg.attn_threshold)
        self.proj, self.proj_bn = nn.Linear(D, D), _BN(D)
        self.fc1, self.fc1_bn = nn.Linear(D, cfg.mlp_ratio * D), _BN(cfg.mlp_ratio * D)
        self.fc2, self.fc2_bn = nn.Linear(cfg.mlp_ratio * D, D), _BN(D)

    def forward(self, u: torch.Tensor) -> torch.Tensor:  # one timestep: (B, N, D) -> (B, N, D)
        B, N, D = u.shape
        h, d = self.heads, D // self.heads
        q, k, v = self.qkv_bn(self.qkv(self.in_lif(u))).chunk(3, dim=-1)
        q, k, v = (lif(x).view(B, N, h, d).transpose(1, 2) for lif, x in ((self.q_lif, q), (self.k_lif, k), (self.v_lif, v)))
        a = (q @ (k.transpose(-2, -1) @ v)) * self.scale  # (B, h, N, d)
        u = u + self.proj_bn(self.proj(self.attn_lif(a.transpose(1, 2).reshape(B, N, D))))
        return u + self.fc2_bn(self.fc2(self.hid_lif(self.fc1_bn(self.fc1(self.mlp_lif(u))))))


class SnnTorchSpikformer(nn.Module):
    """:class:`snn.models.Spikformer`'s architecture on snnTorch neurons, stepped over time as a whole network."""

    def __init__(self, config: SpikformerConfig) -> None:
        super().__init__()
        if config.neuron.v_reset != 0.0 or not config.neuron.decay_input or config.neuron.kind.value != "lif":
            raise ValueError("SnnTorchSpikformer mirrors the default neuron only: LIF, hard reset to 0, decay_input")
        cfg = self.config = config
        D, n = cfg.dim, cfg.neuron
        self.stem = nn.Conv2d(cfg.channels, D, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(D)
        self.stem_lif = _Leaky(n.tau, n.v_threshold, n.surrogate_alpha)
        self.patch = nn.Conv2d(D, D, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.patch_bn = nn.BatchNorm2d(D)
        self.pos = nn.Parameter(torch.zeros(1, 1, cfg.tokens, D))
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.depth))
        self.head_lif = _Leaky(n.tau, n.v_threshold, n.surrogate_alpha)
        self.head = nn.Linear(D, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C*H*W) or (B, C, H, W) -> (B, K)
        cfg = self.config
        x = x.view(-1, cfg.channels, cfg.image_size, cfg.image_size)
        for m in self.modules():
            if isinstance(m, snntorch.Leaky):
                m.mem = torch.zeros(0)  # snnTorch re-creates the membrane at the first call's shape
        out = 0.0
        for _ in range(cfg.timesteps):  # direct encoding: the same image every timestep
            z = self.patch_bn(self.patch(self.stem_lif(self.stem_bn(self.stem(x)))))  # (B, D, H/p, W/p)
            u = z.flatten(2).transpose(1, 2) + self.pos[0]  # (B, N, D)
            for block in self.blocks:
                u = block(u)
            out = out + self.head(self.head_lif(u).mean(dim=1))
        return out / cfg.timesteps
