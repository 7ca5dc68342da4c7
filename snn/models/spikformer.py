r"""A spike-driven vision transformer (Spikformer / Spike-driven Transformer v2 style) for small images.

Dimension letters: T timesteps, B batch, C channels, H x W image, N tokens, D embedding width, h heads,
d = D / h head width, K classes.

Data flow (all layers multi-step: every tensor carries T first):

    x (B, C, H, W) -> direct encoding, repeated over T -> (T, B, C, H, W)
    patch embedding: Conv3x3 + BN -> LIF -> Conv(p x p, stride p) + BN -> tokens u (T, B, N, D), N = (H/p)(W/p),
                     plus a learned position embedding (``conv_stem=False``: Conv(p x p, stride p) + BN straight
                     on the pixels, ViT style, for larger images where a full-resolution stem costs too much)
    L bidirectional spike-driven blocks (:mod:`snn.models.blocks`: membrane shortcut, attention q (k^T v) on
    spikes without softmax, spiking MLP)
    head: mean over tokens of LIF(u) -> Linear -> logits (T, B, K); the prediction averages them over T.
    (``num_classes=0``: no head; :meth:`Spikformer.encode` gives the tokens u, e.g. for the spiking MFM's tower.)

References: Z. Zhou et al., "Spikformer: When spiking neural network meets transformer", ICLR 2023 (SSA without
softmax, BN after every linear layer); M. Yao et al., "Spike-driven Transformer V2", ICLR 2024 (membrane
shortcut, neurons before every product).

The neurons come from :func:`snn.neurons.build_neuron`, so the same architecture runs on SpikingJelly (default)
or snnTorch (``engine="snntorch"``) neurons, or this project's ``fused`` engine.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from snn.models.blocks import SpikeDrivenBlock
from snn.neurons import Engine, NeuronSpec, build_neuron, check_time_layout

__all__ = ["SpikformerConfig", "Spikformer"]


@dataclass(frozen=True, kw_only=True)
class SpikformerConfig:
    """Sizes of the spiking ViT; validated at construction (errors name the field)."""

    image_size: int = 8
    channels: int = 1
    patch_size: int = 2
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    num_classes: int = 10
    timesteps: int = 4
    conv_stem: bool = True
    neuron: NeuronSpec = NeuronSpec(kind="lif", tau=2.0, v_reset=0.0, detach_reset=True)
    attn_threshold: float = 0.5
    engine: Engine = Engine.SPIKINGJELLY

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"SpikformerConfig.{field}={getattr(self, field)!r} is invalid: {fix}")

        for f in ("image_size", "channels", "patch_size", "dim", "depth", "heads", "mlp_ratio", "timesteps"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "use an int >= 1")
        need(isinstance(self.num_classes, int) and self.num_classes >= 0, "num_classes",
             "use an int >= 1 (or 0 for an encoder without a head)")
        need(self.image_size % self.patch_size == 0, "patch_size", f"must divide image_size={self.image_size}")
        need(self.dim % self.heads == 0, "heads", f"must divide dim={self.dim}")
        need(self.attn_threshold > 0, "attn_threshold", "use a number > 0")
        object.__setattr__(self, "engine", Engine(self.engine))

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class Spikformer(nn.Module):
    """The spiking ViT of the module docstring; ``forward`` takes images (B, C, H, W) and returns logits (B, K)."""

    def __init__(self, config: SpikformerConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SpikformerConfig()
        D = cfg.dim
        if cfg.conv_stem:
            self.stem = nn.Conv2d(cfg.channels, D, 3, padding=1, bias=False)
            self.stem_bn = nn.BatchNorm2d(D)
            self.stem_lif = build_neuron(cfg.neuron, engine=cfg.engine)
        self.patch = nn.Conv2d(D if cfg.conv_stem else cfg.channels, D, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.patch_bn = nn.BatchNorm2d(D)
        self.pos = nn.Parameter(torch.zeros(1, 1, cfg.tokens, D))
        self.blocks = nn.ModuleList(
            SpikeDrivenBlock(dim=D, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, neuron=cfg.neuron,
                             attn_threshold=cfg.attn_threshold, engine=cfg.engine, causal=False) for _ in range(cfg.depth))
        if cfg.num_classes:
            self.head_lif = build_neuron(cfg.neuron, engine=cfg.engine)
            self.head = nn.Linear(D, cfg.num_classes)

    def encode(self, x_seq: torch.Tensor) -> torch.Tensor:
        """(T, B, C, H, W) input currents -> token membranes u (T, B, N, D) after the last block."""
        cfg = self.config
        check_time_layout(x_seq, "Spikformer")
        if x_seq.dim() != 5 or tuple(x_seq.shape[2:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"Spikformer: expected (T, B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(x_seq.shape)}")
        from spikingjelly.activation_based import functional

        functional.reset_net(self)  # SpikingJelly neurons keep state between calls; every call starts at rest
        T, B = x_seq.shape[:2]
        z = x_seq.flatten(0, 1)  # (T B, C, H, W)
        if cfg.conv_stem:
            z = self.stem_bn(self.stem(z))  # (T B, D, H, W)
            z = self.stem_lif(z.view(T, B, *z.shape[1:])).flatten(0, 1)
        z = self.patch_bn(self.patch(z))  # (T B, D, H/p, W/p)
        u = z.flatten(2).transpose(1, 2).reshape(T, B, cfg.tokens, cfg.dim) + self.pos  # (T, B, N, D)
        for block in self.blocks:
            u = block(u)
        return u

    def forward_sequence(self, x_seq: torch.Tensor) -> torch.Tensor:
        """(T, B, C, H, W) input currents -> (T, B, K) logits per timestep."""
        if not self.config.num_classes:
            raise ValueError("Spikformer: num_classes=0 builds an encoder without a head; call encode() instead")
        return self.head(self.head_lif(self.encode(x_seq)).mean(dim=2))  # (T, B, N, D) -> (T, B, D) -> (T, B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) (or flat (B, C*H*W)) -> logits (B, K), averaged over ``config.timesteps``."""
        cfg = self.config
        if x.dim() == 2 and x.shape[1] == cfg.channels * cfg.image_size ** 2:
            x = x.view(-1, cfg.channels, cfg.image_size, cfg.image_size)
        if x.dim() != 4:
            raise ValueError(f"Spikformer: expected images (B, {cfg.channels}, {cfg.image_size}, {cfg.image_size}) "
                             f"or flat (B, {cfg.channels * cfg.image_size ** 2}), got {tuple(x.shape)}")
        x_seq = x.unsqueeze(0).expand(cfg.timesteps, *x.shape)  # direct encoding: (B, ...) -> (T, B, ...)
        return self.forward_sequence(x_seq).mean(dim=0)
