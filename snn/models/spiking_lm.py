r"""A spiking decoder language model (spike-driven transformer blocks with causal, softmax-free attention).

Dimension letters: T timesteps, B batch, N sequence length, D width, h heads, d = D / h, V vocabulary.

    tokens (B, N) -> embedding (B, N, D) + learned positions -> direct encoding over T -> u (T, B, N, D)
    L causal spike-driven blocks (:mod:`snn.models.blocks`: membrane shortcut, attention ((q k^T) * M) v on
    spikes without softmax, M the causal mask, spiking MLP)
    head: LIF(u) W_out -> logits (T, B, N, V), averaged over T.

In the spirit of SpikeGPT (R.-J. Zhu et al., TMLR 2024) and the spike-driven transformer (M. Yao et al., NeurIPS
2023); the vocabulary is the caller's (e.g. 256 for a byte-level model, whose cross-entropy in bits is directly
bits per byte). Causality is exact: logits at position n depend on tokens 0..n only (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from snn.models.blocks import SpikeDrivenBlock
from snn.neurons import Engine, NeuronSpec, build_neuron

__all__ = ["SpikingLMConfig", "SpikingLM"]


@dataclass(frozen=True, kw_only=True)
class SpikingLMConfig:
    """Sizes of the spiking LM; validated at construction (errors name the field)."""

    vocab_size: int = 256
    max_positions: int = 256
    dim: int = 128
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    timesteps: int = 4
    neuron: NeuronSpec = NeuronSpec(kind="lif", tau=2.0, v_reset=0.0, detach_reset=True)
    attn_threshold: float = 1.0
    engine: Engine = Engine.FUSED

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"SpikingLMConfig.{field}={getattr(self, field)!r} is invalid: {fix}")

        for f in ("vocab_size", "max_positions", "dim", "depth", "heads", "mlp_ratio", "timesteps"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) >= 1, f, "use an int >= 1")
        need(self.dim % self.heads == 0, "heads", f"must divide dim={self.dim}")
        need(self.attn_threshold > 0, "attn_threshold", "use a number > 0")
        object.__setattr__(self, "engine", Engine(self.engine))


class SpikingLM(nn.Module):
    """The spiking decoder of the module docstring: ``forward(tokens (B, N)) -> logits (B, N, V)``."""

    def __init__(self, config: SpikingLMConfig | None = None) -> None:
        super().__init__()
        cfg = self.config = config or SpikingLMConfig()
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.pos = nn.Parameter(torch.zeros(cfg.max_positions, cfg.dim))
        self.blocks = nn.ModuleList(
            SpikeDrivenBlock(dim=cfg.dim, heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, neuron=cfg.neuron,
                             attn_threshold=cfg.attn_threshold, engine=cfg.engine, causal=True) for _ in range(cfg.depth))
        self.head_lif = build_neuron(cfg.neuron, engine=cfg.engine)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"SpikingLM: expected integer tokens (B, N), got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[1] > cfg.max_positions:
            raise ValueError(f"SpikingLM: sequence length {tokens.shape[1]} exceeds max_positions={cfg.max_positions}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            raise ValueError(f"SpikingLM: token ids must lie in [0, {cfg.vocab_size})")
        from spikingjelly.activation_based import functional

        functional.reset_net(self)  # every call starts at rest
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]  # (B, N, D)
        u = x.unsqueeze(0).expand(cfg.timesteps, *x.shape)  # direct encoding: (B, N, D) -> (T, B, N, D)
        for block in self.blocks:
            u = block(u)
        return self.head(self.head_lif(u)).mean(dim=0)  # (T, B, N, V) -> (B, N, V)
