"""ann.fusion.packed: oneDNN-packed linear layers compute what nn.Linear computes."""

import copy

import pytest
import torch
from torch import nn

from ann.fusion import PackedLinear, pack_linears, packing_available, unpack_linears

pytestmark = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Sequential(nn.Linear(32, 8, bias=False)))
    return net.eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows", [1, 3, 13])
def test_packed_net_matches_the_plain_one(dtype, rows):
    net = _net().to(dtype)
    x = torch.randn(2, rows, 16, dtype=dtype)
    ref = net(x)
    packed = copy.deepcopy(net)
    assert pack_linears(packed) == 2
    assert all(isinstance(m, PackedLinear) for m in (packed[0], packed[2][0]))
    with torch.no_grad():
        y = packed(x)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert y.shape == ref.shape and torch.allclose(y, ref, atol=tol, rtol=tol)


def test_state_dict_and_parameters_are_shared_and_in_place_changes_are_seen():
    net = _net()
    before = net.state_dict()
    w = net[0].weight
    pack_linears(net)
    assert net[0].weight is w and net.state_dict().keys() == before.keys()
    x = torch.randn(4, 16)
    with torch.no_grad():
        net(x)  # packs
        w.mul_(2.0)  # in place: the packed copy is stale and must be rebuilt
        y = net(x)
    ref = nn.functional.linear(nn.functional.gelu(nn.functional.linear(x, w, net[0].bias)), net[2][0].weight)
    assert torch.allclose(y, ref, atol=1e-5)


def test_gradients_take_the_plain_path_and_unpack_restores_nn_linear():
    net = _net()
    pack_linears(net)
    x = torch.randn(3, 16, requires_grad=True)
    net(x).sum().backward()  # training through a packed net works (plain F.linear when gradients are needed)
    assert net[0].weight.grad is not None and x.grad is not None
    w = net[0].weight
    assert unpack_linears(net) == 2
    assert type(net[0]) is nn.Linear and net[0].weight is w and net[2][0].bias is None


def test_bad_batch_hint_is_refused():
    with pytest.raises(ValueError, match="batch_hint"):
        pack_linears(_net(), batch_hint=0)
