import pytest
import torch

from snn.multilevel import MultiLevelIF, MultiLevelSpec, multilevel_if


def test_binary_neuron_is_spikingjelly_if_with_soft_reset_and_half_threshold_start():
    from spikingjelly.activation_based import functional, neuron

    torch.manual_seed(0)
    x = torch.randn(12, 5, 7) * 0.8
    sj = neuron.IFNode(v_threshold=0.7, v_reset=None, step_mode="m")
    sj.set_reset_value("v", 0.35)
    functional.reset_net(sj)
    ours = MultiLevelIF(theta=0.7)(x)
    assert torch.equal(ours, sj(x) * 0.7)  # same spikes; ours emits the value theta


@pytest.mark.parametrize("levels,signed", [(1, False), (3, False), (1, True), (4, True)])
@pytest.mark.parametrize("T", [1, 5, 16])
def test_constant_input_gives_the_closed_form_count(levels, signed, T):
    """Soft reset, v0 = theta / 2, constant x: sum_t k = clamp(floor(T x / theta + 1/2), T k_min, T levels)."""
    theta = torch.tensor(0.5)
    x = torch.linspace(-3, 3, 601)
    x = x[((T * x / theta + 0.5) - torch.round(T * x / theta + 0.5)).abs() > 1e-3]  # away from float ties
    k = multilevel_if(x.expand(T, -1).contiguous(), theta, MultiLevelSpec(levels=levels, signed=signed))
    k_min = -levels if signed else 0
    assert k.min() >= k_min and k.max() <= levels
    expected = torch.clamp(torch.floor(T * x / theta + 0.5), T * k_min, T * levels)
    assert torch.equal(k.sum(0), expected)


def test_per_channel_thresholds_and_hard_reset():
    x = torch.full((3, 2, 3), 0.6)
    out = MultiLevelIF(theta=torch.tensor([0.5, 1.0, 2.0]), spec=MultiLevelSpec(soft_reset=False, half_init=False))(x)
    # hard reset to 0, v0 = 0: channel 0 fires every step (0.6 >= 0.5), channel 1 every 2nd, channel 2 (1.8 < 2) never
    assert out[:, 0, 0].tolist() == [0.5] * 3
    assert out[:, 0, 1].tolist() == [0.0, 1.0, 0.0]
    assert out[:, 0, 2].abs().sum() == 0


def test_bad_parameters_and_layouts_are_named():
    with pytest.raises(ValueError, match="MultiLevelSpec.levels=0"):
        MultiLevelSpec(levels=0)
    with pytest.raises(ValueError, match="theta must be a finite positive"):
        MultiLevelIF(theta=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="3 per-channel thresholds but input dim 1"):
        MultiLevelIF(theta=torch.ones(3), channel_dim=1)(torch.zeros(2, 4, 5))
    with pytest.raises(ValueError, match=r"expected a multi-step input \(T, B, ...\)"):
        MultiLevelIF(theta=1.0)(torch.zeros(5))


@pytest.mark.parametrize("spec", [MultiLevelSpec(), MultiLevelSpec(levels=4, signed=True),
                                  MultiLevelSpec(levels=2, soft_reset=False, half_init=False)])
def test_the_compiled_kernel_is_bit_identical_to_the_torch_loop(spec):
    from snn import _kernel

    if _kernel.kernel() is None:
        pytest.skip("no C compiler: the kernel is not built here")
    torch.manual_seed(0)
    x = torch.randn(9, 4, 3, 40)[:, :, 1:]  # non-contiguous
    for theta in (torch.tensor(0.3), torch.rand(40) + 0.1):
        fast = multilevel_if(x, theta, spec)
        ref = multilevel_if(x, theta, spec, use_kernel=False)
        assert torch.equal(fast, ref)
