r"""The spike-driven transformer block shared by the spiking ViT and the spiking LM.

Dimension letters: T timesteps, B batch, N tokens, D width, h heads, d = D / h.

    s = LIF(u);  q, k, v = LIF(BN(s W_q)), LIF(BN(s W_k)), LIF(BN(s W_v))             (binary, (T, B, h, N, d))
    attention without softmax (spike-driven self-attention), on spike counts:
        bidirectional:  a = q (k^T v) * scale           (linear order, O(N d^2): k^T v is d x d)
        causal:         a = ((q k^T) * M) v * scale,    M[n, m] = 1 if m <= n  (quadratic order, O(N^2 d): the mask
                                                        has to act on q k^T)
    u = u + BN(LIF_a(a) W_o)                             LIF_a: threshold ``attn_threshold`` (counts are large)
    u = u + BN(LIF(BN(LIF(u) W_1)) W_2)                  MLP of width ``mlp_ratio`` D

The residuals are a membrane shortcut (real values; every sublayer starts with a neuron, so every matrix
product takes spikes). References: Zhou et al., "Spikformer", ICLR 2023; Yao et al., "Spike-driven Transformer
V2", ICLR 2024.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from snn.neurons import Engine, NeuronSpec, build_neuron

__all__ = ["SeqBN", "SpikeDrivenBlock", "SpikeKVCache"]


@dataclass
class SpikeKVCache:
    """The key / value spikes of every causal block of a decoder for the ``length`` positions run so far:
    ``blocks[i]`` holds block i's ``{"k", "v"}``, each (T, B, h, length, d), binary. A neuron's membrane runs over
    the T timesteps of its own position only, so a new position needs nothing else of the earlier ones
    (:meth:`snn.models.SpikingLM.forward`, :meth:`snn.models.SpikingMFM.decode`)."""

    blocks: list[dict] = field(default_factory=list)
    length: int = 0

    def spike_count(self) -> int:
        """Stored key / value spikes (entries, 0 or 1 each: one bit apiece), over the batch."""
        return sum(t.numel() for b in self.blocks for t in b.values())


class SeqBN(nn.Module):
    """BatchNorm over the last dim of a (T, B, ..., D) tensor (statistics over everything else)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(x.reshape(-1, x.shape[-1])).view_as(x)


class SpikeDrivenBlock(nn.Module):
    """One block of the module docstring; ``(T, B, N, D) -> (T, B, N, D)``."""

    def __init__(self, *, dim: int, heads: int, mlp_ratio: int, neuron: NeuronSpec, attn_threshold: float,
                 engine: Engine, causal: bool) -> None:
        super().__init__()
        make = lambda spec=neuron: build_neuron(spec, engine=engine)  # noqa: E731
        self.heads, self.scale, self.causal = heads, 1.0 / math.sqrt(dim // heads), causal
        self.in_lif, self.mlp_lif, self.hid_lif = make(), make(), make()
        self.qkv, self.qkv_bn = nn.Linear(dim, 3 * dim, bias=False), SeqBN(3 * dim)
        self.q_lif, self.k_lif, self.v_lif = make(), make(), make()
        self.attn_lif = make(replace(neuron, v_threshold=attn_threshold, v_reset=0.0))
        self.proj, self.proj_bn = nn.Linear(dim, dim), SeqBN(dim)
        self.fc1, self.fc1_bn = nn.Linear(dim, mlp_ratio * dim), SeqBN(mlp_ratio * dim)
        self.fc2, self.fc2_bn = nn.Linear(mlp_ratio * dim, dim), SeqBN(dim)

    def forward(self, u: torch.Tensor, cache: dict | None = None) -> torch.Tensor:  # (T, B, N, D) -> (T, B, N, D)
        """``cache`` (causal blocks only): the key / value spikes of the positions before ``u``'s, as ``{"k", "v"}``
        tensors (T, B, h, P, d) (an empty dict: none yet); ``u``'s own are appended to it. Every neuron's state runs
        over the T timesteps of one position only, so ``u`` may hold just the new positions: the output equals the
        last N positions of a forward over all P + N (:meth:`snn.models.SpikingLM.forward`)."""
        T, B, N, D = u.shape
        h, d = self.heads, D // self.heads
        q, k, v = self.qkv_bn(self.qkv(self.in_lif(u))).chunk(3, dim=-1)  # 3 x (T, B, N, D)
        q, k, v = (lif(x).view(T, B, N, h, d).transpose(2, 3) for lif, x in ((self.q_lif, q), (self.k_lif, k), (self.v_lif, v)))
        if cache is not None:
            if not self.causal:
                raise ValueError("SpikeDrivenBlock: a key/value cache needs a causal block (causal=True)")
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=3), torch.cat([cache["v"], v], dim=3)
            cache["k"], cache["v"] = k, v
        if self.causal:
            past = k.shape[3] - N  # cached positions: query n sees keys m <= past + n
            mask = torch.ones(N, past + N, dtype=torch.bool, device=u.device).tril(diagonal=past)
            scores = (q @ k.transpose(-2, -1)).masked_fill(~mask, 0.0)  # (T, B, h, N, d) x (T, B, h, d, P+N) -> (T, B, h, N, P+N)
            a = scores @ v  # (T, B, h, N, P+N) x (T, B, h, P+N, d) -> (T, B, h, N, d)
        else:
            a = q @ (k.transpose(-2, -1) @ v)  # (T, B, h, N, d) x ((T, B, h, d, N) x (T, B, h, N, d)) -> (T, B, h, N, d)
        a = self.attn_lif((a * self.scale).transpose(2, 3).reshape(T, B, N, D))
        u = u + self.proj_bn(self.proj(a))
        return u + self.fc2_bn(self.fc2(self.hid_lif(self.fc1_bn(self.fc1(self.mlp_lif(u))))))
