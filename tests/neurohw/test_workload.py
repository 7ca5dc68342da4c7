import json

import pytest
import torch
from spikingjelly.activation_based import layer, neuron
from torch import nn

from neurohw.workload import Numeric, OpKind, Workload, trace


def test_ann_mlp_macs_params_and_elementwise():
    net = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 5))
    w = trace(net, torch.randn(7, 10), name="mlp")
    gemms = [op for op in w.ops if op.kind is OpKind.GEMM]
    assert [(op.m, op.k, op.n) for op in gemms] == [(1, 10, 20), (1, 20, 5)]
    assert w.macs == 10 * 20 + 20 * 5
    assert w.params == sum(p.numel() for p in net.parameters())
    assert [op.kind for op in w.ops] == [OpKind.GEMM, OpKind.ELEMENTWISE, OpKind.GEMM]
    assert w.sops == 0 and w.firing_rate is None and w.timesteps == 1


def test_token_rows_count_per_inference():
    w = trace(nn.Linear(8, 4), torch.randn(3, 5, 8))  # 3 sequences of 5 tokens
    assert w.ops[0].m == 5 and w.macs == 5 * 8 * 4


def test_synaptic_ops_equal_spike_count_times_fan_out():
    T, B = 4, 3
    lin = nn.Linear(6, 9)
    spikes = (torch.rand(T, B, 6) < 0.3).float()
    w = trace(lin, spikes, timesteps=T)
    # trace divides by the batch of its input, which for a raw module is the leading (time) dim;
    # so build the expectation the same way: per "inference" = per leading-dim element
    op = w.ops[0]
    assert op.kind is OpKind.SYNAPTIC
    assert op.sops == pytest.approx(float(spikes.sum()) * 9 / T)
    assert op.input_density == pytest.approx(float(spikes.mean()))


class _Direct(nn.Module):
    """Direct encoding wrapper: (B, F) -> (T, B, F) -> net -> mean over T."""

    def __init__(self, net, T):
        super().__init__()
        self.net, self.T = net, T

    def forward(self, x):
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        return self.net(x.unsqueeze(0).expand(self.T, *x.shape)).mean(0)


def test_spiking_mlp_neurons_sops_and_time_constant_encoder():
    torch.manual_seed(0)
    T, B = 5, 4
    net = nn.Sequential(nn.Linear(6, 12), neuron.IFNode(step_mode="m"), nn.Linear(12, 3))
    net[0].weight.data.abs_()  # make the hidden layer fire
    spikes = []
    net[1].register_forward_hook(lambda m, i, o: spikes.append(o))
    x = torch.rand(B, 6)
    w = trace(_Direct(net, T), x, timesteps=T)
    enc, neu, out = w.ops
    assert enc.kind is OpKind.GEMM and enc.macs == 6 * 12  # constant input over T: computed once
    assert neu.kind is OpKind.NEURON and neu.neurons == 12 and neu.elements == 12 * T
    s = spikes[-1]
    assert neu.spikes == pytest.approx(float(s.sum()) / B)
    assert w.firing_rate == pytest.approx(float(s.mean()))
    assert out.kind is OpKind.SYNAPTIC and out.sops == pytest.approx(float(s.sum()) * 3 / B)
    assert out.bias_adds == T * 3  # the bias current is added at every timestep


def test_conv_sops_are_exact():
    torch.manual_seed(0)
    T, B = 3, 2
    conv = layer.Conv2d(2, 4, 3, stride=2, padding=1, step_mode="m")
    x = (torch.rand(T, B, 2, 7, 7) < 0.2).float()
    w = trace(conv, x, timesteps=T)
    # brute force: every (spike, output position whose receptive field holds it, output channel)
    xp = nn.functional.pad(x.flatten(0, 1), (1, 1, 1, 1))
    count = 0.0
    for i in range(4):
        for j in range(4):
            count += float(xp[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].sum()) * 4
    assert w.ops[0].sops == pytest.approx(count / T)  # leading dim T is the traced "batch"


def test_json_round_trip_and_precision_override():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    w = trace(net, torch.randn(2, 4))
    back = Workload.from_dict(json.loads(json.dumps(w.to_dict())))
    assert back == w
    q = w.with_precision(numeric=Numeric.INT, weight_bits=8, act_bits=8)
    assert all(op.weight_bits == 8 and op.numeric is Numeric.INT for op in q.ops) and q.macs == w.macs
    with pytest.raises(ValueError, match="IR version"):
        Workload.from_dict({**w.to_dict(), "ir_version": 99})


def test_untraced_modules_are_listed_and_bad_input_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    w = trace(net, torch.randn(2, 4))
    assert w.untraced == ("1 (LayerNorm)",)
    with pytest.raises(ValueError, match="timesteps=0"):
        trace(net, torch.randn(2, 4), timesteps=0)
    with pytest.raises(ValueError, match="non-empty batch"):
        trace(net, torch.randn(0, 4))
