"""snn.nir: export -> import round trips (ours, through a file, and into snnTorch), and refused layers."""

from __future__ import annotations

import contextlib
import io

import nir
import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional
from torch import nn

from snn.neurons import Engine, NeuronSpec, build_neuron
from snn.nir import export_nir, import_nir
from snn.runtime import TimeFolded


def _excitatory(net: nn.Module) -> nn.Module:
    """Positive weights, so that every layer of these small random nets fires (the checks are not vacuous)."""
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                m.weight.uniform_(0.0, 0.5)
    return net


def _run(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    functional.reset_net(net)
    return net(x)


def _mlp(engine: Engine) -> nn.Sequential:
    torch.manual_seed(0)
    return _excitatory(nn.Sequential(nn.Linear(6, 12), build_neuron(NeuronSpec(kind="lif", tau=2.0), engine=engine),
                         nn.Linear(12, 8, bias=False), build_neuron(NeuronSpec(kind="plif", tau=3.0, decay_input=False), engine=engine),
                         nn.Linear(8, 4), build_neuron(NeuronSpec(kind="if", v_threshold=0.7), engine=engine)))


@pytest.mark.parametrize("engine", list(Engine), ids=lambda e: e.value)
def test_export_import_round_trip_gives_the_same_spikes(engine, tmp_path):
    net = _mlp(engine)
    x = torch.rand(12, 5, 6) * 3  # (T, B, F)
    graph = export_nir(net, input_shape=(6,))
    assert [type(n).__name__ for n in graph.nodes.values()] == ["Input", "Affine", "LIF", "Linear", "LIF", "Affine", "IF", "Output"]
    nir.write(tmp_path / "net.nir", graph)
    back = import_nir(nir.read(tmp_path / "net.nir"), engine=Engine.SPIKINGJELLY)
    ref = _run(net, x)
    assert ref.sum() > 0 and torch.equal(_run(back, x), ref)


def test_conv_flatten_round_trip():
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 4, 3, stride=2, padding=1)
    net = _excitatory(nn.Sequential(TimeFolded(conv), build_neuron(NeuronSpec()), nn.Flatten(start_dim=2),
                                    nn.Linear(4 * 4 * 4, 5), build_neuron(NeuronSpec())))
    plain = nn.Sequential(conv, net[1], nn.Flatten(), net[3], net[4])  # the exporter sees per-sample layers
    graph = export_nir(plain, input_shape=(2, 8, 8))
    back = import_nir(graph)
    x = torch.rand(6, 3, 2, 8, 8) * 4
    ref = _run(net, x)
    assert ref.sum() > 0 and torch.equal(_run(back, x), ref)


def test_snntorch_imports_our_graph_to_the_same_spikes():
    from snntorch.import_nir import import_from_nir

    torch.manual_seed(0)
    net = _excitatory(nn.Sequential(nn.Linear(6, 12), build_neuron(NeuronSpec(kind="lif", tau=2.0)), nn.Linear(12, 4),
                                    build_neuron(NeuronSpec(kind="lif", tau=4.0))))
    # (snnTorch 1.0.0 imports NIR's IF as a leaky neuron with beta = 0.9, so IF is checked against our importer only)
    x = torch.rand(10, 3, 6) * 3
    with contextlib.redirect_stdout(io.StringIO()):  # snnTorch prints its threshold rescaling
        theirs = import_from_nir(export_nir(net, input_shape=(6,)))
    state, out = None, []
    for t in range(len(x)):
        o, state = theirs(x[t], state)
        out.append(o[0] if isinstance(o, tuple) else o)
    ref = _run(net, x)
    assert ref.sum() > 0 and torch.equal(torch.stack(out), ref)


def test_unsupported_layers_are_named_before_any_work():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), build_neuron(NeuronSpec(v_reset=None)), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"(?s)layer '1' \(BatchNorm1d\).*layer '2' .*soft reset"):
        export_nir(net, input_shape=(4,))
    with pytest.raises(ValueError, match="nn.Sequential"):
        export_nir(nn.Linear(4, 4), input_shape=(4,))
    one = lambda v: np.array([v])  # noqa: E731
    lif = nir.LIF(tau=one(2e-4), r=one(1.0), v_leak=one(0.5), v_threshold=one(1.0), v_reset=one(0.0))
    with pytest.raises(ValueError, match="v_leak=0.5 differs from v_reset=0.0"):
        import_nir(nir.NIRGraph.from_list(lif))
