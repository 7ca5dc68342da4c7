r"""A spiking decoder language model (spike-driven transformer blocks with causal, softmax-free attention).

Dimension letters: T timesteps, B batch, N sequence length, D width, h heads, d = D / h, V vocabulary.

    tokens (B, N) -> embedding (B, N, D) + learned positions -> direct encoding over T -> u (T, B, N, D)
    L causal spike-driven blocks (:mod:`snn.models.blocks`: membrane shortcut, attention ((q k^T) * M) v on
    spikes without softmax, M the causal mask, spiking MLP)
    head: LIF(u) W_out -> logits (T, B, N, V), averaged over T.

In the spirit of SpikeGPT (R.-J. Zhu et al., TMLR 2024) and the spike-driven transformer (M. Yao et al., NeurIPS
2023); the vocabulary is the caller's (e.g. 256 for a byte-level model, whose cross-entropy in bits is directly
bits per byte). Causality is exact: logits at position n depend on tokens 0..n only (tested).

Decoding with a cache (:class:`SpikeKVCache`, :meth:`SpikingLM.generate`): a neuron's membrane runs over the T
timesteps of its own position only, so a new position needs nothing of the earlier ones but their key and value
spikes, per block and timestep. The cache keeps those, binary: ``2 L T D`` bits per position (a float KV cache of
the same width keeps ``2 L D`` numbers). A step then costs one position's layers plus attention over the cached
positions, and its logits equal the full forward's (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from snn.models.blocks import SpikeDrivenBlock, SpikeKVCache
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

    def forward(self, tokens: torch.Tensor, cache: SpikeKVCache | None = None, logits_to_keep: int = 0) -> torch.Tensor:
        """Logits (B, N, V) of ``tokens`` (B, N); ``logits_to_keep`` > 0: of the last that many positions only (the
        head's neurons are per position, so the others are not computed). With ``cache`` (eval mode only: BatchNorm
        must use its running statistics), ``tokens`` continue the cached positions, whose key / value spikes are
        reused, and their own are added to the cache."""
        cfg = self.config
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"SpikingLM: expected integer tokens (B, N), got {tuple(tokens.shape)} {tokens.dtype}")
        past = 0 if cache is None else cache.length
        if past + tokens.shape[1] > cfg.max_positions:
            raise ValueError(f"SpikingLM: sequence length {past + tokens.shape[1]} exceeds max_positions={cfg.max_positions}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= cfg.vocab_size):
            raise ValueError(f"SpikingLM: token ids must lie in [0, {cfg.vocab_size})")
        if cache is not None and self.training:
            raise ValueError("SpikingLM: decoding with a cache needs eval mode (BatchNorm's batch statistics would mix "
                             "positions); call model.eval() first")
        from spikingjelly.activation_based import functional

        functional.reset_net(self)  # every call starts at rest
        if cache is not None and not cache.blocks:
            cache.blocks = [{} for _ in self.blocks]
        x = self.embed(tokens) + self.pos[past: past + tokens.shape[1]]  # (B, N, D)
        u = x.unsqueeze(0).expand(cfg.timesteps, *x.shape)  # direct encoding: (B, N, D) -> (T, B, N, D)
        for i, block in enumerate(self.blocks):
            u = block(u, None if cache is None else cache.blocks[i])
        if cache is not None:
            cache.length = past + tokens.shape[1]
        if logits_to_keep:
            u = u[:, :, -logits_to_keep:]
        return self.head(self.head_lif(u)).mean(dim=0)  # (T, B, N, V) -> (B, N, V)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int, cache: SpikeKVCache | None = None) -> torch.Tensor:
        """Greedy decoding with the spike cache: ``prompt`` (B, P) -> the ``max_new_tokens`` new tokens (B, n).
        The prompt runs once (prefill); every new token is one single-position step. Pass ``cache`` to inspect it
        afterwards (it ends holding P + n - 1 positions: the last token is not fed)."""
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"SpikingLM.generate: max_new_tokens={max_new_tokens!r} must be an int >= 1")
        cache = SpikeKVCache() if cache is None else cache
        if cache.length:
            raise ValueError("SpikingLM.generate: pass an empty SpikeKVCache (or none)")
        was_training = self.training
        self.eval()
        try:
            nxt = self(prompt, cache, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
            out = [nxt]
            for _ in range(max_new_tokens - 1):
                nxt = self(nxt, cache, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
        finally:
            self.train(was_training)
        return torch.cat(out, dim=1)
