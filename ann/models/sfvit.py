r"""A spike-friendly vision transformer (image classifier, or image + question -> answer for VQA).

Built to be converted to a spiking network (``conversion.transformer``): ReLU in the MLP (QCFS-trainable, no
GELU), separate q / k / v projections (one neuron layer each), softmax attention and pre-norm LayerNorm, which
the converter handles by expectation compensation. Dimension letters: B batch, N tokens, D width, H heads,
hd = D / H head width, P patch side, S image side, L question length.

    x (B, C S S [+ L])  --unpack-->  pixels (B, C, S, S), question ids (B, L)
    tokens = [cls ; text_embed(ids) ; patch_embed(patches)] + pos                     (B, N, D), N = 1 + L + (S/P)^2
    block:  x = x + proj(attn(ln1(x)))     attn = softmax(q k^T / sqrt(hd)) v  per head
            x = x + fc2(relu(fc1(ln2(x))))
    logits = head(norm(x)[:, 0])

The input is ONE packed float tensor (pixels flattened, then the question's token ids as floats; ids are small
integers, exact in float32), so that single-input tools (``tasks.classifier``, FX-based converters) work on
the VQA model unchanged. :meth:`SpikeFriendlyViT.pack` builds it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.fx._symbolic_trace import is_fx_symbolic_tracing

__all__ = ["SFViTConfig", "SpikeFriendlyViT", "SFBlock"]


@dataclass(frozen=True)
class SFViTConfig:
    """Attributes:
    image_size, patch_size, channels: S, P (S divisible by P) and C of the input images.
    dim, depth, heads, mlp_ratio: D (divisible by H), blocks, H, MLP hidden = mlp_ratio * D.
    num_classes: output logits (answers for VQA).
    text_vocab, text_len: question vocabulary and length L; 0 for an image-only classifier.
    image_mean, image_std: pixels are normalized ``(x - image_mean) / image_std`` before the patch embedding (a
        from-scratch ViT on SynthMed stays at the question-only prior without it; see ``ann.models.mfm``).
    """

    image_size: int = 8
    patch_size: int = 2
    channels: int = 1
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: int = 2
    num_classes: int = 10
    text_vocab: int = 0
    text_len: int = 0
    image_mean: float = 0.0
    image_std: float = 1.0

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"SFViTConfig.{field}={getattr(self, field)!r} is invalid: {fix}")

        need(self.patch_size >= 1 and self.image_size % self.patch_size == 0, "patch_size", "must divide image_size")
        need(self.channels >= 1, "channels", "use >= 1")
        need(self.heads >= 1 and self.dim % self.heads == 0, "dim", "must be a positive multiple of heads")
        need(self.depth >= 1, "depth", "use >= 1 blocks")
        need(self.mlp_ratio >= 1, "mlp_ratio", "use >= 1")
        need(self.num_classes >= 2, "num_classes", "use >= 2")
        need((self.text_vocab == 0) == (self.text_len == 0), "text_len", "set text_vocab and text_len both > 0 (VQA) or both 0")
        need(self.image_std > 0, "image_std", "use a positive float (the pixel standard deviation)")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def num_tokens(self) -> int:
        return 1 + self.text_len + self.num_patches

    @property
    def pixels(self) -> int:
        return self.channels * self.image_size ** 2

    def to_dict(self) -> dict:
        return asdict(self)


class SFBlock(nn.Module):
    """Pre-norm transformer block with separate q / k / v projections and a ReLU MLP."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def split(self, t: torch.Tensor) -> torch.Tensor:
        """``(..., N, D) -> (..., H, N, hd)``."""
        return t.unflatten(-1, (self.heads, -1)).transpose(-3, -2)

    @staticmethod
    def merge(t: torch.Tensor) -> torch.Tensor:
        """``(..., H, N, hd) -> (..., N, D)``."""
        return t.transpose(-3, -2).flatten(-2)

    def attention_probs(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T / sqrt(hd))``: (..., N, D) x 2 -> (..., H, N, N)."""
        qh, kh = self.split(q), self.split(k)
        return torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(qh.shape[-1]), dim=-1)  # (.., H, N, hd) x (.., H, hd, N)

    def context(self, a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``a v`` merged over heads: (..., H, N, N) x (..., N, D) -> (..., N, D)."""
        return self.merge(a @ self.split(v))  # (.., H, N, N) x (.., H, N, hd) -> (.., H, N, hd)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``softmax(q k^T / sqrt(hd)) v`` per head, merged: (..., N, D) x 3 -> (..., N, D)."""
        return self.context(self.attention_probs(q, k), v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        x = x + self.proj(self.attention(self.q(h), self.k(h), self.v(h)))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class SpikeFriendlyViT(nn.Module):
    """``x: (B, C S S + L) packed -> logits (B, num_classes)``; see the module docstring."""

    def __init__(self, *, config: SFViTConfig = SFViTConfig()) -> None:
        super().__init__()
        c = config
        self.config = c
        self.patch_embed = nn.Linear(c.channels * c.patch_size ** 2, c.dim)
        self.text_embed = nn.Embedding(c.text_vocab, c.dim) if c.text_vocab else None
        self.cls = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos = nn.Parameter(torch.randn(1, c.num_tokens, c.dim) * 0.02)
        self.blocks = nn.ModuleList(SFBlock(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.dim)
        self.head = nn.Linear(c.dim, c.num_classes)

    @staticmethod
    def pack(pixels: torch.Tensor, question_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, S, S)`` pixels [+ ``(B, L)`` ids] -> the packed ``(B, C S S [+ L])`` float input."""
        flat = pixels.flatten(1).float()
        return flat if question_ids is None else torch.cat([flat, question_ids.float()], dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Packed input -> token embeddings ``(B, N, D)`` (the analog input currents of the converted SNN)."""
        c = self.config
        if not is_fx_symbolic_tracing() and (x.dim() != 2 or x.shape[1] != c.pixels + c.text_len):
            raise ValueError(f"SpikeFriendlyViT expects a packed input (B, {c.pixels + c.text_len}) = pixels "
                             f"{c.channels}x{c.image_size}x{c.image_size} flattened" + (f" + {c.text_len} question ids" if c.text_len else "")
                             + f" (SpikeFriendlyViT.pack builds it), got {tuple(x.shape)}")
        g, p = c.image_size // c.patch_size, c.patch_size
        pix = (x[:, : c.pixels] - c.image_mean) / c.image_std
        pix = pix.reshape(-1, c.channels, g, p, g, p)  # (B, C, g, P, g, P)
        patches = pix.permute(0, 2, 4, 1, 3, 5).reshape(-1, g * g, c.channels * p * p)  # (B, g g, C P P)
        parts = [self.cls.expand(patches.shape[0], -1, -1)]
        if self.text_embed is not None:
            parts.append(self.text_embed(x[:, c.pixels:].long()))  # (B, L, D)
        parts.append(self.patch_embed(patches))  # (B, g g, D)
        return torch.cat(parts, dim=1) + self.pos  # (B, N, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        for blk in self.blocks:
            h = blk(h)
        return self.head(self.norm(h)[:, 0])  # (B, N, D) -> (B, D) -> (B, num_classes)
