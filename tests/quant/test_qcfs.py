import pytest
import torch
from torch import nn

from quant.qcfs import QCFS, replace_relu_with_qcfs
from snn.multilevel import MultiLevelIF


def test_qcfs_is_the_quantization_clip_floor_shift_formula_with_a_trainable_scale():
    q = QCFS(levels=4, init_scale=2.0)
    x = torch.tensor([-1.0, 0.0, 0.2, 0.26, 0.9, 1.9, 2.5], requires_grad=True)
    y = q(x)
    expected = 2.0 * torch.clamp(torch.floor(x.detach() * 4 / 2.0 + 0.5) / 4, 0, 1)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-5)
    y.sum().backward()
    assert q.scale.grad is not None and q.scale.grad != 0  # lambda is trained
    assert x.grad[2] == 1.0 and x.grad[0] == 0.0 and x.grad[-1] == 0.0  # straight-through inside the clip only


@pytest.mark.parametrize("L", [2, 8])
def test_an_if_neuron_at_t_equal_l_reproduces_qcfs_exactly(L):
    """The reason QCFS exists: IF with theta = lambda, soft reset, v0 = theta / 2, over T = L steps of a constant
    input, averages to the QCFS output."""
    q = QCFS(levels=L, init_scale=1.5)
    x = torch.linspace(-0.5, 2.0, 997)
    x = x[((x * L / 1.5 + 0.5) - torch.round(x * L / 1.5 + 0.5)).abs() > 1e-4]  # away from float ties
    snn = MultiLevelIF(theta=q.threshold)(x.expand(L, -1).contiguous()).mean(0)
    torch.testing.assert_close(snn, q(x).detach(), rtol=0, atol=1e-5)


def test_replace_relu_calibrates_lambda_and_refuses_models_without_relu_modules():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    x = torch.randn(256, 4)
    a1 = net[:2](x).detach()
    names = replace_relu_with_qcfs(net, levels=8, x_calib=x, percentile=99.0)
    assert names == ["1", "3"] and all(isinstance(net[i], QCFS) for i in (1, 3))
    assert net[1].threshold == pytest.approx(float(torch.quantile(a1.flatten(), 0.99)), rel=1e-4)
    with pytest.raises(ValueError, match="no nn.ReLU modules"):
        replace_relu_with_qcfs(nn.Sequential(nn.Linear(2, 2), nn.GELU()), levels=4)
    with pytest.raises(ValueError, match="levels=0"):
        QCFS(levels=0)
