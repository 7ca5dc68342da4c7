r"""DRAM traffic of one attention head, naive vs tiled (flash-style), from the IO-complexity analysis.

One head computes O = softmax(Q K^T / sqrt(d)) V with Q (L_q x d), K and V (L_kv x d). Symbols: d head
dimension, M on-chip SRAM capacity in elements available to the attention tiles, a activation bits, s score
(accumulator) bits. Reference: T. Dao et al., "FlashAttention: Fast and memory-efficient exact attention with
IO-awareness", NeurIPS 2022 (Theorem 2: standard attention needs Theta(N d + N^2) DRAM accesses, the tiled
algorithm Theta(N^2 d^2 / M)); loop order of FlashAttention-2 (Dao, ICLR 2024: Q blocks outside, so each O
block is written once).

Naive (each intermediate materialized in DRAM):

    reads  = (L_q + 2 L_kv) d a  +  L_q L_kv s  +  L_q L_kv a       (Q, K, V; S read by the softmax; P read by P V)
    writes = L_q L_kv s  +  L_q L_kv a  +  L_q d a                   (S, P, O)

Tiled: block sizes B_c = ceil(M / 4d), B_r = min(B_c, d) (Algorithm 1); T_r = ceil(L_q / B_r) query blocks,
T_c = ceil(L_kv / B_c) key/value blocks. K and V are streamed once per query block, unless Q, K, V and O fit
on chip together ((2 L_q + 2 L_kv) d <= M), when everything is read once:

    reads  = L_q d a + T_r * 2 L_kv d a                              (T_r := 1 when everything fits)
    writes = L_q d a

The online softmax rescales the running output once per key/value block: L_q d T_c extra multiplies
(charged to the vector unit by :mod:`neurohw.accel.model`).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

__all__ = ["AttentionMode", "AttentionTraffic", "attention_traffic", "flash_blocks"]


class AttentionMode(str, enum.Enum):
    NAIVE = "naive"
    FLASH = "flash"


@dataclass(frozen=True)
class AttentionTraffic:
    """DRAM traffic of one head in bits, and the online-softmax rescale multiplies (0 for naive)."""

    read_bits: float
    write_bits: float
    rescale_mults: float
    query_blocks: int
    kv_blocks: int


def flash_blocks(d: int, sram_elements: float) -> tuple[int, int]:
    """``(B_r, B_c)`` of FlashAttention's Algorithm 1."""
    bc = max(1, math.ceil(sram_elements / (4 * d)))
    return min(bc, d), bc


def attention_traffic(lq: int, lkv: int, d: int, *, mode: AttentionMode, sram_elements: float, act_bits: int,
                      score_bits: int, write_output: bool = True) -> AttentionTraffic:
    """Per-head DRAM traffic by the formulas in the module docstring (``write_output=False``: O stays on chip)."""
    out = lq * d * act_bits if write_output else 0.0
    if AttentionMode(mode) is AttentionMode.NAIVE:
        reads = (lq + 2 * lkv) * d * act_bits + lq * lkv * (score_bits + act_bits)
        writes = lq * lkv * (score_bits + act_bits) + out
        return AttentionTraffic(reads, writes, 0.0, 1, 1)
    br, bc = flash_blocks(d, sram_elements)
    tr = 1 if (2 * lq + 2 * lkv) * d <= sram_elements else math.ceil(lq / br)
    tc = math.ceil(lkv / bc)
    reads = lq * d * act_bits + tr * 2 * lkv * d * act_bits
    return AttentionTraffic(reads, out, float(lq * d * tc), tr, tc)
