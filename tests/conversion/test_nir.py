"""Converted MLPs as unit-threshold IF networks and NIR graphs (for neurohw.lava)."""

import pytest
import torch
from spikingjelly.activation_based import functional
from torch import nn

from conversion import ConversionConfig, convert_sequential
from conversion.nir import converted_to_nir, to_unit_threshold_if

HARD = ConversionConfig(soft_reset=False, half_threshold_init=False)


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("per_channel", [False, True])
def test_unit_threshold_network_computes_the_converted_output(per_channel):
    x = torch.rand(64, 12)
    snn = convert_sequential(_mlp(), x, timesteps=10, config=ConversionConfig(soft_reset=False, half_threshold_init=False,
                                                                               per_channel=per_channel))
    ref = snn(x)
    seq = to_unit_threshold_if(snn)
    functional.reset_net(seq)
    with torch.no_grad():
        ours = seq(x[None].expand(10, -1, -1)).mean(0)
    assert torch.allclose(ours, ref, atol=1e-4)
    assert (ref.std(0) > 0).all()  # not a silent network


def test_converted_mlp_exports_to_nir_and_deploys():
    from neurohw.lava.deploy import deploy, evaluate

    x = torch.rand(200, 12)
    snn = convert_sequential(_mlp(), x, timesteps=8, config=HARD)
    graph = converted_to_nir(snn, input_shape=(12,))
    assert [type(n).__name__ for n in graph.nodes.values()].count("IF") == 2
    dep = deploy(graph, timesteps=8)
    ev = evaluate(dep, x.numpy(), snn(x).argmax(1).numpy())
    assert ev["accuracy_float"] == 1.0 and ev["accuracy_deployed"] > 0.9


def test_refuses_what_nir_and_loihi_cannot_express():
    x = torch.rand(32, 12)
    with pytest.raises(ValueError) as e:
        to_unit_threshold_if(convert_sequential(_mlp(), x, timesteps=4))  # default: soft reset, half init
    assert "soft_reset=False" in str(e.value) and "half_threshold_init=False" in str(e.value)
    cnn = nn.Sequential(nn.Unflatten(1, (1, 4, 3)), nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(24, 3))
    with pytest.raises(ValueError, match="Conv2d"):
        to_unit_threshold_if(convert_sequential(cnn, x, timesteps=4, config=HARD))
