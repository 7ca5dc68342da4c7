"""Contract: neurohw.accel.attention's flash traffic formulas == what ann.fusion.attention's tiled loop loads.

The tiled loop runs for real (small tensors, one head) with the block sizes of ``flash_blocks(d, M)`` and a
``TiledIO`` recorder with the same on-chip capacity M; its counted reads / writes / rescale multiplies must equal
``attention_traffic(..., mode=FLASH)``. Two known differences are pinned down here rather than hidden:
- ``AttentionTraffic.query_blocks`` is the number of times K and V are streamed (1 when Q, K, V, O fit on chip),
  while the loop still walks ceil(L_q / B_r) query blocks (over K/V that stay on chip);
- the formula ignores causal masking, whose skipped blocks the loop does not load (it reads less).
"""

import math

import pytest
import torch

from ann.fusion.attention import TiledIO, tiled_attention
from neurohw.accel.attention import AttentionMode, attention_traffic, flash_blocks

A_BITS, S_BITS = 8, 32

# (L_q, L_kv, d, M): streaming cases with blocks dividing / not dividing L, B_c = B_r and B_c > B_r = d, tiny M
# (B_c = 1), L_q != L_kv, and cases where everything fits on chip ((2 L_q + 2 L_kv) d <= M), incl. the boundary.
CASES = [
    (48, 48, 8, 256),
    (50, 50, 8, 256),
    (37, 70, 16, 1000),
    (70, 37, 16, 1000),
    (40, 40, 4, 300),
    (12, 12, 8, 10),
    (100, 100, 8, 2000),
    (30, 30, 8, 2000),
    (20, 60, 4, 640),  # (2*20 + 2*60) * 4 = 640: exactly fits
    (20, 61, 4, 640),  # one element over
]


def _run(lq, lkv, d, m, causal=False):
    br, bc = flash_blocks(d, m)
    q, k, v = torch.randn(1, 1, lq, d), torch.randn(1, 1, lkv, d), torch.randn(1, 1, lkv, d)
    io = TiledIO(sram_elements=m)
    tiled_attention(q, k, v, causal=causal, block_q=br, block_kv=bc, io=io)
    return io, (br, bc)


@pytest.mark.parametrize("lq,lkv,d,m", CASES)
def test_flash_formula_equals_the_tiled_loop(lq, lkv, d, m):
    io, (br, bc) = _run(lq, lkv, d, m)
    t = attention_traffic(lq, lkv, d, mode=AttentionMode.FLASH, sram_elements=m, act_bits=A_BITS, score_bits=S_BITS)
    assert io.read_bits(A_BITS) == t.read_bits
    assert io.write_bits(A_BITS) == t.write_bits
    assert io.rescale_mults == t.rescale_mults
    assert io.tiles == io.query_blocks * t.kv_blocks and io.skipped_tiles == 0
    assert io.query_blocks == math.ceil(lq / br)
    assert io.k_read == io.v_read == t.query_blocks * lkv * d  # neurohw's query_blocks: passes over K and V
    fits = (2 * lq + 2 * lkv) * d <= m
    assert (t.query_blocks == 1) if fits else (t.query_blocks == io.query_blocks)


def test_write_output_false_drops_only_the_output_write():
    io, _ = _run(50, 50, 8, 256)
    t = attention_traffic(50, 50, 8, mode="flash", sram_elements=256, act_bits=A_BITS, score_bits=S_BITS,
                          write_output=False)
    assert t.write_bits == 0 and t.read_bits == io.read_bits(A_BITS)


@pytest.mark.parametrize("lq,lkv,d,m", [(64, 64, 8, 256), (32, 96, 8, 256), (50, 50, 8, 256)])
def test_causal_loop_reads_less_than_the_formula_charges(lq, lkv, d, m):
    """Known gap: the formula has no causal term; the loop skips the K/V blocks after the diagonal."""
    io, _ = _run(lq, lkv, d, m, causal=True)
    t = attention_traffic(lq, lkv, d, mode="flash", sram_elements=m, act_bits=A_BITS, score_bits=S_BITS)
    assert io.skipped_tiles > 0
    assert io.read_bits(A_BITS) < t.read_bits and io.rescale_mults < t.rescale_mults
    assert io.write_bits(A_BITS) == t.write_bits
