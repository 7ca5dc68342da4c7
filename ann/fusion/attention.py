r"""Exact attention three ways: naive (textbook), tiled (FlashAttention-2 in pure torch) and PyTorch's SDPA.

All three compute, per batch element and query head,

    O = softmax(Q K^T * scale + mask) V

with ``q`` (B, h, L_q, d), ``k`` (B, h_kv, L_kv, d), ``v`` (B, h_kv, L_kv, d_v) and ``O`` (B, h, L_q, d_v).
Dimension letters (used in every shape comment): B batch, h query heads, hk key/value heads, g = h / hk query
heads per key/value head (grouped-query attention, GQA: query head i reads key/value head i // g, as
``repeat_interleave`` and SDPA's ``enable_gqa`` do), Lq / Lk query / key lengths, d query/key head dim, dv value
head dim, bq / bk query / key block sizes. ``scale`` defaults to 1 / sqrt(d).

``causal=True`` masks key j for query i when j > i + (L_kv - L_q): the queries are the *last* L_q positions of
the key sequence (a prompt continued with a KV cache). For L_q == L_kv this is SDPA's ``is_causal``; for
L_q < L_kv SDPA's ``is_causal`` aligns the mask top-left instead, so :func:`sdpa_attention` passes
``torch.nn.attention.bias.causal_lower_right``. L_q > L_kv with ``causal`` would leave rows with no key and is
refused.

- :func:`naive_attention` materializes the scores S = Q K^T * scale and the probabilities P = softmax(S), each
  (B, h, L_q, L_kv): memory grows with L_q L_kv.
- :func:`tiled_attention` never holds more than one (bq x bk) score tile per head (the maths is in its
  docstring); memory grows with L_q d. An optional :class:`TiledIO` recorder counts what the loop loads and
  stores, element by element, as if Q, K, V, O lived in DRAM (the accelerator model's formulas in
  ``neurohw.accel.attention`` are checked against it in ``tests/neurohw/test_attention_mirror.py``).
- :func:`sdpa_attention`: ``torch.nn.functional.scaled_dot_product_attention``, the project's default (on CPU,
  PyTorch's flash kernel for fp32/bf16).

References: T. Dao, D. Y. Fu, S. Ermon, A. Rudra, C. Re, "FlashAttention: Fast and memory-efficient exact
attention with IO-awareness", NeurIPS 2022; T. Dao, "FlashAttention-2: Faster attention with better parallelism
and work partitioning", ICLR 2024 (Algorithm 1: query blocks in the outer loop).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

__all__ = ["AttentionImpl", "IMPLEMENTATIONS", "TiledIO", "naive_attention", "sdpa_attention", "tiled_attention",
           "kv_block_ranges"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float | None) -> tuple[int, float]:
    """Validate the inputs; returns ``(g, scale)`` (query heads per key/value head, the softmax scale)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (batch, heads, length, head_dim), got shape {tuple(t.shape)}; "
                             f"add the missing dims with unsqueeze or move heads before length with transpose(1, 2)")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them with .to()")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"q, k, v must share the batch size, got {q.shape[0]}, {k.shape[0]}, {v.shape[0]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same heads and length, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must share the head dim, got q {q.shape[-1]} and k {k.shape[-1]}")
    h, hk = q.shape[1], k.shape[1]
    if hk == 0 or h % hk:
        raise ValueError(f"q has {h} heads and k/v have {hk}: the query heads must be a multiple of the key/value "
                         f"heads (grouped-query attention); give k/v a head count that divides {h}")
    if k.shape[2] == 0:
        raise ValueError("k and v have length 0: attention needs at least one key/value position")
    if causal and q.shape[2] > k.shape[2]:
        raise ValueError(f"causal=True needs L_q <= L_kv (queries are the last L_q key positions), got L_q "
                         f"{q.shape[2]} > L_kv {k.shape[2]}; pass the full key/value sequence or causal=False")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    elif not (isinstance(scale, (int, float)) and not isinstance(scale, bool) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a positive finite number, got {scale!r}; leave it None for 1/sqrt(d)")
    return h // hk, float(scale)


def _causal_mask(q0: int, q1: int, k0: int, k1: int, offset: int, device: torch.device) -> torch.Tensor:
    """(q1 - q0, k1 - k0) bool, True where key j is after query i (j > i + offset): the entries to drop."""
    i = torch.arange(q0, q1, device=device).unsqueeze(1)  # (bq, 1)
    j = torch.arange(k0, k1, device=device).unsqueeze(0)  # (1, bk)
    return j > i + offset


def naive_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None) -> torch.Tensor:
    """Textbook attention (module docstring): S and P materialized, (B, h, L_q, L_kv) each.

    Scores and the output are in the input dtype; the softmax is taken in fp32 and cast back (as Hugging Face's
    eager attention does), so bf16 inputs do not round the normalizer. GQA by ``repeat_interleave`` of k/v.
    """
    g, scale = _check(q, k, v, causal, scale)
    if g > 1:
        k = k.repeat_interleave(g, dim=1)  # (B, hk, Lk, d) -> (B, h, Lk, d)
        v = v.repeat_interleave(g, dim=1)  # (B, hk, Lk, dv) -> (B, h, Lk, dv)
    s = q @ k.transpose(-2, -1)  # (B, h, Lq, d) x (B, h, d, Lk) -> (B, h, Lq, Lk)
    s.mul_(scale)
    if causal:
        lq, lk = q.shape[2], k.shape[2]
        s.masked_fill_(_causal_mask(0, lq, 0, lk, lk - lq, q.device), float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)  # (B, h, Lq, Lk)
    return p @ v  # (B, h, Lq, Lk) x (B, h, Lk, dv) -> (B, h, Lq, dv)


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                   scale: float | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with the module's causal alignment (bottom-right when L_q < L_kv)."""
    g, scale = _check(q, k, v, causal, scale)
    lq, lk = q.shape[2], k.shape[2]
    if causal and lq != lk:
        from torch.nn.attention.bias import causal_lower_right

        return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(lq, lk), scale=scale,
                                              enable_gqa=g > 1)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=g > 1)


@dataclass
class TiledIO:
    """What :func:`tiled_attention`'s loop moves, counted per (batch element, query head) in elements.

    Memory model: Q, K, V and O live in DRAM; a block is read when the loop slices it into a tile and O's rows are
    written once, when their query block finishes (FlashAttention-2 order). Nothing stays on chip from one query
    block to the next, except when ``sram_elements`` (on-chip capacity in elements) holds Q, K, V and O of the
    head together, ``(2 L_q + 2 L_kv) d <= sram_elements`` (d_v = d), when each element is read only once.
    Scores never leave the chip. ``rescale_mults``: multiplies of the running output by ``alpha`` (one per row
    and value column per visited tile, the first tile's included, as Algorithm 1 writes it); ``final_divides``:
    the division by ``l`` at the end of each query block.
    """

    sram_elements: float | None = None
    q_read: int = 0
    k_read: int = 0
    v_read: int = 0
    o_written: int = 0
    query_blocks: int = 0
    tiles: int = 0
    skipped_tiles: int = 0
    rescale_mults: int = 0
    final_divides: int = 0
    _resident: bool = field(default=False, repr=False)
    _loaded: set = field(default_factory=set, repr=False)

    def begin(self, lq: int, lkv: int, d: int, dv: int) -> None:
        self._resident = self.sram_elements is not None and (lq * d + lkv * (d + dv) + lq * dv) <= self.sram_elements
        self._loaded = set()

    def _read(self, what: str, start: int, stop: int, width: int) -> int:
        if self._resident:
            if (what, start) in self._loaded:
                return 0
            self._loaded.add((what, start))
        return (stop - start) * width

    def load_q(self, q0: int, q1: int, d: int) -> None:
        self.query_blocks += 1
        self.q_read += self._read("q", q0, q1, d)

    def load_kv(self, k0: int, k1: int, d: int, dv: int) -> None:
        self.tiles += 1
        self.k_read += self._read("k", k0, k1, d)
        self.v_read += self._read("v", k0, k1, dv)

    def rescale(self, rows: int, dv: int) -> None:
        self.rescale_mults += rows * dv

    def store_o(self, rows: int, dv: int) -> None:
        self.final_divides += rows * dv
        self.o_written += rows * dv

    def read_bits(self, act_bits: int) -> int:
        return (self.q_read + self.k_read + self.v_read) * act_bits

    def write_bits(self, act_bits: int) -> int:
        return self.o_written * act_bits


def kv_block_ranges(q0: int, q1: int, lkv: int, block_kv: int, *, causal: bool, offset: int
                    ) -> Iterator[tuple[int, int, bool]]:
    """``(k0, k1, partly_masked)`` of the key/value blocks that query rows [q0, q1) visit, in order. Under
    ``causal`` a block whose first key is after the block's last query (k0 > q1 - 1 + offset) is skipped."""
    for k0 in range(0, lkv, block_kv):
        k1 = min(k0 + block_kv, lkv)
        if causal and k0 > q1 - 1 + offset:
            return
        yield k0, k1, causal and k1 - 1 > q0 + offset


def tiled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = False,
                    scale: float | None = None, block_q: int = 256, block_kv: int = 512,
                    io: TiledIO | None = None) -> torch.Tensor:
    r"""FlashAttention-2 forward in pure torch (shapes and symbols in the module docstring).

    Outer loop over query blocks Q_i = q[..., q0:q1, :] (bq rows), inner loop over key/value blocks
    K_j, V_j = k[..., k0:k1, :], v[..., k0:k1, :] (bk rows). Per query block, with running row max ``m``,
    running normalizer ``l`` and unnormalized output ``acc`` (all fp32), starting from m = -inf, l = 0, acc = 0:

        s      = (Q_i * scale) K_j^T    (+ -inf where causal drops a key)      (bq x bk per head)
        m_new  = max(m, rowmax(s))
        p      = exp(s - m_new)
        alpha  = exp(m - m_new)
        l      = alpha * l + rowsum(p)
        acc    = alpha * acc + p V_j
        m      = m_new

    and after the last block O_i = acc / l. Since every p and the old ``acc`` are measured against the same
    running max, O_i = sum_j exp(s_j - m) V_j / sum_j rowsum(exp(s_j - m)) = softmax(S_i) V exactly (up to float
    rounding). At most one (bq x bk) tile of s / p per head exists at a time. Under ``causal`` the blocks lying
    wholly after the diagonal are skipped and only tiles crossing it are masked; key 0 is visible to every
    query, so the first tile gives every row a finite ``m`` and alpha is never exp(-inf + inf).

    ``block_q`` / ``block_kv``: bq / bk (positive; the last block may be shorter). Tiles are computed in fp32
    and O is cast to the input dtype. GQA: Q is viewed as (B, hk, g, Lq, d) so the g query heads of a group
    share the K/V tile by broadcasting (no copy). Differentiable through autograd, which then keeps every tile
    for the backward pass (FlashAttention's recomputing backward is not implemented). ``io``: an optional
    :class:`TiledIO` that records the loads and stores (per batch element and query head); it does not change
    the result.
    """
    g, scale = _check(q, k, v, causal, scale)
    for name, b in (("block_q", block_q), ("block_kv", block_kv)):
        if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
            raise ValueError(f"{name} must be a positive int (rows per block), got {b!r}")
    bsz, h, lq, d = q.shape
    hk, lkv, dv = k.shape[1], k.shape[2], v.shape[-1]
    offset = lkv - lq
    qg = q.reshape(bsz, hk, g, lq, d)  # (B, h, Lq, d) -> (B, hk, g, Lq, d)
    kg = k.unsqueeze(2)  # (B, hk, Lk, d) -> (B, hk, 1, Lk, d)
    vg = v.unsqueeze(2)  # (B, hk, Lk, dv) -> (B, hk, 1, Lk, dv)
    out = torch.empty(bsz, hk, g, lq, dv, dtype=q.dtype, device=q.device)
    if io is not None:
        io.begin(lq, lkv, d, dv)
    for q0 in range(0, lq, block_q):
        q1 = min(q0 + block_q, lq)
        if io is not None:
            io.load_q(q0, q1, d)
        qi = qg[..., q0:q1, :].float() * scale  # (B, hk, g, bq, d), a new fp32 tile
        m = torch.full((bsz, hk, g, q1 - q0, 1), float("-inf"), device=q.device)
        l = torch.zeros(bsz, hk, g, q1 - q0, 1, device=q.device)
        acc = torch.zeros(bsz, hk, g, q1 - q0, dv, device=q.device)
        visited = 0
        for k0, k1, masked in kv_block_ranges(q0, q1, lkv, block_kv, causal=causal, offset=offset):
            visited += 1
            if io is not None:
                io.load_kv(k0, k1, d, dv)
            kj = kg[..., k0:k1, :].float()  # (B, hk, 1, bk, d)
            vj = vg[..., k0:k1, :].float()  # (B, hk, 1, bk, dv)
            s = qi @ kj.transpose(-2, -1)  # (B, hk, g, bq, d) x (B, hk, 1, d, bk) -> (B, hk, g, bq, bk)
            if masked:
                s.masked_fill_(_causal_mask(q0, q1, k0, k1, offset, q.device), float("-inf"))
            m_new = torch.maximum(m, s.amax(dim=-1, keepdim=True))  # (B, hk, g, bq, 1)
            # (B, hk, g, bq, bk); in place of s unless autograd records the tile
            p = torch.exp(s - m_new) if s.requires_grad else s.sub_(m_new).exp_()
            alpha = torch.exp(m - m_new)  # (B, hk, g, bq, 1)
            l = alpha * l + p.sum(dim=-1, keepdim=True)
            if io is not None:
                io.rescale(q1 - q0, dv)
            acc = alpha * acc + p @ vj  # (B, hk, g, bq, bk) x (B, hk, 1, bk, dv) -> (B, hk, g, bq, dv)
            m = m_new
            del s, p  # so the next tile is not allocated while this one is alive
        if io is not None:
            io.skipped_tiles += math.ceil(lkv / block_kv) - visited
            io.store_o(q1 - q0, dv)
        out[..., q0:q1, :] = acc / l  # (B, hk, g, bq, dv), cast to the input dtype
    return out.reshape(bsz, h, lq, dv)  # (B, hk, g, Lq, dv) -> (B, h, Lq, dv)


class AttentionImpl(str, enum.Enum):
    NAIVE = "naive"
    TILED = "tiled"
    SDPA = "sdpa"


IMPLEMENTATIONS: dict[AttentionImpl, Callable[..., torch.Tensor]] = {
    AttentionImpl.NAIVE: naive_attention,
    AttentionImpl.TILED: tiled_attention,
    AttentionImpl.SDPA: sdpa_attention,
}
"""Each implementation's function; all take ``(q, k, v, *, causal=False, scale=None)``."""
