"""neurohw.workload.trace on fused modules: oneDNN linear + post-op calls, merged projections, tied packed heads."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neurohw.accel import PRESETS, map_workload
from neurohw.workload import Numeric, OpKind, trace

onednn = pytest.mark.skipif(not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")),
                            reason="this torch build has no oneDNN")


class _Packed(nn.Module):
    """What a pre-packed linear (+ activation) module does: one ``_linear_pointwise`` call on a reordered weight."""

    def __init__(self, lin: nn.Linear, attr: str = "none") -> None:
        super().__init__()
        self.weight, self.bias, self.attr = lin.weight, lin.bias, attr

    def forward(self, x):
        packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 8)
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]).contiguous(), packed, self.bias, self.attr, [], "none")
        return y.reshape(*x.shape[:-1], -1)


def _mlp(fc1, fc2):
    return nn.Sequential(fc1, fc2)


@onednn
def test_linear_pointwise_is_a_gemm_plus_a_fused_activation():
    torch.manual_seed(0)
    l1, l2 = nn.Linear(8, 16), nn.Linear(16, 4)
    x = torch.randn(3, 5, 8)
    plain = trace(nn.Sequential(l1, nn.GELU(), l2), x)
    fused = trace(_mlp(_Packed(l1, "gelu"), _Packed(l2)), x)
    assert fused.untraced == ()
    kinds = [(op.kind, op.function) for op in fused.ops]
    assert kinds == [(OpKind.GEMM, "linear"), (OpKind.ELEMENTWISE, "gelu"), (OpKind.GEMM, "linear")]
    # same GEMM shapes, MACs and parameters as the unfused model
    assert [(op.m, op.k, op.n) for op in fused.ops if op.kind is OpKind.GEMM] == [(5, 8, 16), (5, 16, 4)]
    assert fused.macs == plain.macs and fused.params == plain.params
    gemm, act = fused.ops[0], fused.ops[1]
    assert act.fused_in_elements == act.in_elements == 5 * 16 and gemm.output_on_chip  # consumed on chip
    assert act.fused_in_elements == plain.ops[1].fused_in_elements


@onednn
def test_swish_is_silu_and_binary_post_op_reads_its_second_operand():
    torch.manual_seed(0)
    lin = nn.Linear(6, 6)
    w = trace(_Packed(lin, "swish"), torch.randn(2, 6))
    assert [op.function for op in w.ops] == ["linear", "silu"]

    class Binary(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = lin.weight, lin.bias

        def forward(self, x):
            packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach(), 8)
            return torch.ops.mkldnn._linear_pointwise.binary(x, x, packed, self.bias, "add")

    x = torch.randn(2, 6)
    assert torch.allclose(Binary()(x), F.linear(x, lin.weight, lin.bias) + x, atol=1e-6)
    w = trace(Binary(), x)
    gemm, add = w.ops
    assert (gemm.kind, add.kind, add.function) == (OpKind.GEMM, OpKind.ELEMENTWISE, "add")
    assert add.in_elements == 2 * 6 and add.fused_in_elements == 6  # the GEMM's output on chip, x from memory


def test_merged_qkv_is_one_wider_gemm_with_the_same_macs_and_params():
    torch.manual_seed(0)
    q, k, v = nn.Linear(12, 12), nn.Linear(12, 4), nn.Linear(12, 4)
    qkv = nn.Linear(12, 20)
    x = torch.randn(2, 7, 12)

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = q, k, v

        def forward(self, x):
            return self.q(x).sum() + self.k(x).sum() + self.v(x).sum()

    class Merged(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = qkv

        def forward(self, x):
            a, b, c = self.qkv(x).split((12, 4, 4), -1)
            return a.sum() + b.sum() + c.sum()

    ws, wm = trace(Split(), x), trace(Merged(), x)
    gs = [op for op in ws.ops if op.kind is OpKind.GEMM]
    gm = [op for op in wm.ops if op.kind is OpKind.GEMM]
    assert len(gs) == 3 and len(gm) == 1 and (gm[0].m, gm[0].k, gm[0].n) == (7, 12, 20)
    assert ws.macs == wm.macs and ws.params == wm.params
    # the accelerator reads the input once instead of three times
    cfg = PRESETS["default"]
    split_cost = map_workload(cfg, ws.with_precision(numeric=Numeric.INT, weight_bits=8, act_bits=8), fuse=True)
    merged_cost = map_workload(cfg, wm.with_precision(numeric=Numeric.INT, weight_bits=8, act_bits=8), fuse=True)
    assert merged_cost.dram_bytes < split_cost.dram_bytes


@onednn
def test_packed_head_tied_to_the_embedding_adds_no_parameters_and_is_not_untraced():
    emb = nn.Embedding(11, 6)
    head = nn.Linear(6, 11, bias=False)
    head.weight = emb.weight

    class LM(nn.Module):
        def __init__(self, h):
            super().__init__()
            self.emb, self.head = emb, h

        def forward(self, ids):
            return self.head(self.emb(ids))

    ids = torch.randint(0, 11, (2, 3))
    plain, packed = trace(LM(head), ids), trace(LM(_Packed(head)), ids)
    assert packed.params == plain.params == 66 and packed.macs == plain.macs
    assert packed.untraced == ()


def test_leaf_with_parameters_that_nothing_accounts_for_is_still_untraced():
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x.sum(-1, keepdim=True) * 0 + x  # no recorded GEMM charges self.w

    w = trace(nn.Sequential(nn.Linear(3, 3), Opaque()), torch.randn(2, 3))
    assert w.untraced == ("1 (Opaque)",)
