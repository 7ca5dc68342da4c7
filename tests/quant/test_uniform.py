import pytest
import torch
from torch import nn

from quant import ActivationFakeQuant, dequantize, fake_quantize, ptq_sequential, qmax, quantize, scale_for


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [None, 0])
def test_symmetric_codes_are_in_range_and_error_is_half_a_step(bits, axis):
    torch.manual_seed(0)
    x = torch.randn(16, 32) * torch.rand(16, 1) * 5
    s = scale_for(x, bits=bits, axis=axis)
    q = quantize(x, s, bits=bits)
    assert q.dtype == torch.int32 and int(q.abs().max()) <= qmax(bits)
    err = (dequantize(q, s) - x).abs()
    assert bool((err <= s / 2 + 1e-6).all())  # round-to-nearest inside the range; 1e-6: float32 division
    assert torch.equal(fake_quantize(x, bits=bits, axis=axis), dequantize(q, s))


def test_per_channel_scales_follow_each_row():
    x = torch.tensor([[1.0, -2.0], [0.0, 0.0], [10.0, 5.0]])
    s = scale_for(x, bits=8, axis=0)
    assert s.shape == (3, 1)
    assert torch.allclose(s.flatten(), torch.tensor([2 / 127, 1.0, 10 / 127]))  # zero row: scale 1, codes 0


def test_unsigned_and_bad_bits():
    x = torch.rand(100)
    q = quantize(x, scale_for(x, bits=8, signed=False), bits=8, signed=False)
    assert int(q.min()) >= 0 and int(q.max()) == 255
    with pytest.raises(ValueError, match="non-negative"):
        scale_for(torch.tensor([-1.0]), bits=8, signed=False)
    with pytest.raises(ValueError, match="bits=1"):
        qmax(1)


def test_ptq_sequential_keeps_the_original_and_quantizes_the_copy():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(64, 8)
    ref = net(x)
    q = ptq_sequential(net, x)
    assert torch.equal(net(x), ref)
    assert sum(isinstance(m, ActivationFakeQuant) for m in q) == 2
    for lin in (q[1], q[4]):
        codes = lin.weight / scale_for(lin.weight, bits=8, axis=0)
        assert torch.allclose(codes, codes.round(), atol=1e-4)  # weights sit on the int8 grid (float division)
    assert (q(x) - ref).abs().max() < 0.05 * ref.abs().max()
    with pytest.raises(ValueError, match="1 \\(Tanh\\)"):
        ptq_sequential(nn.Sequential(nn.Linear(2, 2), nn.Tanh()), torch.rand(3, 2))
