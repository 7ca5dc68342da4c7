"""ann.fusion.attention: tiled == naive == SDPA, causal alignment, GQA, dtypes, and input errors."""

import math

import pytest
import torch

from ann.fusion.attention import (IMPLEMENTATIONS, AttentionImpl, TiledIO, naive_attention, sdpa_attention,
                                  tiled_attention)

# (B, h, h_kv, L_q, L_kv, d, d_v): blocks of 5 x 7 below divide none of the lengths
SHAPES = [
    (2, 4, 4, 37, 37, 16, 16),
    (1, 6, 2, 13, 50, 8, 8),  # GQA 3:1, L_q < L_kv (a continued prompt)
    (1, 4, 1, 29, 29, 8, 12),  # multi-query, d_v != d
    (2, 2, 2, 64, 64, 32, 32),  # blocks dividing L
    (1, 2, 2, 1, 33, 16, 16),  # one decoding step
]

# fp32: every implementation sums the same products in another order; outputs are convex combinations of V
# rows (|O| ~ 1), so float32 rounding stays ~1e-6. bf16: compared with a float64 reference instead, at about two
# bf16 ulps of |O| ~ 1 (eps 2^-8 = 0.0039): inputs are rounded the same way, the kernels round S, P or O once.
ATOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _qkv(b, h, hk, lq, lk, d, dv, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, length, w, generator=g) for n, length, w in ((h, lq, d), (hk, lk, d), (hk, lk, dv)))
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _reference(q, k, v, causal, scale=None):
    """float64 textbook attention with an explicit, bottom-right-aligned causal mask."""
    q, k, v = q.double(), k.double(), v.double()
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = q @ k.transpose(-2, -1) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if causal:
        lq, lk = q.shape[2], k.shape[2]
        keep = torch.arange(lk)[None, :] <= torch.arange(lq)[:, None] + (lk - lq)
        s = s.masked_fill(~keep, float("-inf"))
    return s.softmax(-1) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_tiled_naive_and_sdpa_agree(shape, causal, dtype):
    q, k, v = _qkv(*shape, dtype)
    ref = _reference(q, k, v, causal)
    outs = {"naive": naive_attention(q, k, v, causal=causal), "sdpa": sdpa_attention(q, k, v, causal=causal),
            "tiled": tiled_attention(q, k, v, causal=causal, block_q=5, block_kv=7),
            "tiled_one_block": tiled_attention(q, k, v, causal=causal, block_q=1000, block_kv=1000)}
    for name, o in outs.items():
        assert o.shape == ref.shape and o.dtype == dtype, name
        assert torch.allclose(o.double(), ref, atol=ATOL[dtype], rtol=0), (name, (o.double() - ref).abs().max())
    if dtype is torch.float32:
        assert torch.allclose(outs["tiled"], outs["naive"], atol=ATOL[dtype], rtol=0)
        assert torch.allclose(outs["tiled"], outs["sdpa"], atol=ATOL[dtype], rtol=0)


def test_causal_is_sdpa_is_causal_for_equal_lengths_and_bottom_right_otherwise():
    q, k, v = _qkv(1, 2, 2, 9, 9, 8, 8, torch.float32)
    sd = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(tiled_attention(q, k, v, causal=True, block_q=4, block_kv=3), sd, atol=1e-5, rtol=0)
    q, k, v = _qkv(1, 2, 2, 3, 9, 8, 8, torch.float32)
    last = tiled_attention(q, k, v, causal=True, block_q=2, block_kv=4)[:, :, -1]
    full = naive_attention(q, k, v, causal=False)[:, :, -1]
    assert torch.allclose(last, full, atol=1e-5, rtol=0)  # the last query sees every key


def test_scale_and_registry():
    q, k, v = _qkv(1, 2, 2, 11, 11, 8, 8, torch.float32)
    ref = _reference(q, k, v, False, scale=0.3)
    for impl in AttentionImpl:
        o = IMPLEMENTATIONS[impl](q, k, v, scale=0.3)
        assert torch.allclose(o.double(), ref, atol=1e-5, rtol=0), impl


def test_tiled_skips_blocks_after_the_diagonal():
    q, k, v = _qkv(1, 1, 1, 16, 16, 4, 4, torch.float32)
    io = TiledIO()
    tiled_attention(q, k, v, causal=True, block_q=4, block_kv=4, io=io)
    assert io.query_blocks == 4 and io.tiles == 1 + 2 + 3 + 4 and io.skipped_tiles == 6
    io_full = TiledIO()
    tiled_attention(q, k, v, block_q=4, block_kv=4, io=io_full)
    assert io_full.tiles == 16 and io_full.k_read == 4 * 16 * 4 and io.k_read == 10 * 4 * 4


def test_gqa_does_not_copy_kv_per_query_head():
    q, k, v = _qkv(1, 8, 2, 6, 6, 4, 4, torch.float32)
    io = TiledIO()
    tiled_attention(q, k, v, block_q=3, block_kv=3, io=io)  # counts are per query head
    assert io.q_read == 6 * 4 and io.k_read == 2 * 6 * 4 and io.o_written == 6 * 4


@pytest.mark.parametrize("fn", [naive_attention, tiled_attention, sdpa_attention])
def test_bad_inputs_name_the_argument_and_the_fix(fn):
    q, k, v = _qkv(1, 4, 4, 8, 8, 8, 8, torch.float32)
    with pytest.raises(ValueError, match="q must be 4-D"):
        fn(q[0], k, v)
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        fn(q, k[:, :3], v[:, :3])
    with pytest.raises(ValueError, match="same heads and length"):
        fn(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match="share the head dim"):
        fn(q, k[..., :4], v)
    with pytest.raises(ValueError, match="batch size"):
        fn(q, torch.cat([k, k]), torch.cat([v, v]))
    with pytest.raises(TypeError, match="one dtype"):
        fn(q, k.double(), v)
    with pytest.raises(ValueError, match="L_q <= L_kv"):
        fn(q, k[:, :, :4], v[:, :, :4], causal=True)
    with pytest.raises(ValueError, match="scale must be a positive"):
        fn(q, k, v, scale=-1.0)
    with pytest.raises(ValueError, match="length 0"):
        fn(q, k[:, :, :0], v[:, :, :0])


@pytest.mark.parametrize("kw", [{"block_q": 0}, {"block_kv": -3}, {"block_q": 2.5}, {"block_kv": True}])
def test_tiled_refuses_bad_block_sizes(kw):
    q, k, v = _qkv(1, 1, 1, 4, 4, 4, 4, torch.float32)
    name = next(iter(kw))
    with pytest.raises(ValueError, match=f"{name} must be a positive int"):
        tiled_attention(q, k, v, **kw)


def test_tiled_holds_no_full_score_matrix():
    """The largest fp32 tensor the loop allocates is a (bq x bk) tile per head, not L_q x L_kv."""
    q, k, v = _qkv(1, 2, 2, 256, 256, 8, 8, torch.float32)
    seen = []

    class Spy(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                seen.append(out.numel())
            return out

    with Spy():
        tiled_attention(q, k, v, block_q=16, block_kv=32)
    biggest_tile = 2 * 16 * 32
    out_numel = 2 * 256 * 8  # the output, and the input views
    assert max(n for n in seen if n != out_numel and n != math.prod(q.shape)) <= biggest_tile


def test_tiled_gradients_match_naive():
    q, k, v = _qkv(1, 4, 2, 20, 20, 8, 8, torch.float32)
    grads = []
    for fn, kw in ((naive_attention, {}), (tiled_attention, {"block_q": 3, "block_kv": 7})):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        fn(*leaves, causal=True, **kw).square().sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)  # fp32 rounding, as in the forward comparison
