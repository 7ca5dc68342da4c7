"""The torch fixed-point simulator (bit-exact with Lava, overflow included), the NIR -> Loihi exporter, deployment
and the ``python -m neurohw.lava deploy`` CLI."""

import json
from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from torch import nn

from neurohw.lava import sidecar
from neurohw.lava.__main__ import main as cli
from neurohw.lava.deploy import check_against_lava, deploy, evaluate
from neurohw.lava.export import ExportError, float_layers, float_reference, quantize
from neurohw.lava.mapping import LOIHI1, MappingError
from neurohw.lava.network import ConvGeometry, LoihiLayer, LoihiNetwork
from neurohw.lava.sim import _Synapse, simulate

HAS_LAVA = (Path(sidecar.ROOT) / ".venv-lava" / "bin" / "python").exists()
needs_lava = pytest.mark.skipif(not HAS_LAVA, reason=".venv-lava not built (NEUROMFM_SKIP_LAVA=1 or no Python 3.10)")


def _dense(rng, name, n_in, n_out, *, wexp, du, dv, vth, hi=100, readout=False):
    w = (rng.integers(-hi, hi, (n_out, n_in)) // 2) * 2
    return LoihiLayer(name=name, kind="dense", in_shape=(n_in,), out_shape=(n_out,), weight=w, weight_exp=wexp,
                      bias_mant=rng.integers(-200, 400, n_out), bias_exp=2, du=du, dv=dv,
                      vth=2 ** 17 - 1 if readout else vth, readout=readout)


def random_networks(seed: int = 1) -> dict[str, LoihiNetwork]:
    """Dense with current and voltage decays; a layer whose sums overflow Lava's int32 steps; a strided conv."""
    rng = np.random.default_rng(seed)
    conv_w = (rng.integers(-100, 140, (4, 2, 3, 3)) // 2) * 2
    return {
        "dense": LoihiNetwork(input_shape=(20,), layers=[
            _dense(rng, "a", 20, 30, wexp=-3, du=4095, dv=0, vth=300), _dense(rng, "b", 30, 25, wexp=0, du=1000, dv=300, vth=200),
            _dense(rng, "c", 25, 5, wexp=1, du=4095, dv=0, vth=0, readout=True)]),
        "overflow": LoihiNetwork(input_shape=(64,), layers=[
            _dense(rng, "big", 64, 16, wexp=7, du=100, dv=50, vth=5000, hi=250),
            _dense(rng, "out", 16, 4, wexp=7, du=4095, dv=0, vth=0, hi=250, readout=True)]),
        "conv": LoihiNetwork(input_shape=(2, 6, 6), layers=[
            LoihiLayer(name="c1", kind="conv", in_shape=(2, 6, 6), out_shape=(4, 3, 3), weight=conv_w, weight_exp=0,
                       bias_mant=rng.integers(-100, 300, (4, 3, 3)), bias_exp=3, du=4095, dv=200, vth=400,
                       conv=ConvGeometry(kernel=(3, 3), stride=(2, 2), padding=(1, 1))),
            _dense(rng, "fc", 36, 6, wexp=-1, du=2000, dv=0, vth=100)]),
    }


@pytest.mark.lava
@needs_lava
def test_simulator_spike_trains_equal_lavas_bit_for_bit(monkeypatch):
    monkeypatch.delenv("NEUROMFM_LAVA_PYTHON", raising=False)
    rng = np.random.default_rng(0)
    nets = random_networks()
    paths = {_Synapse(layer, 255 if i == 0 else 1).exact_without_wraps for net in nets.values() for i, layer in enumerate(net.layers)}
    assert paths == {True, False}  # both the fast path and Lava's int32 wraps are compared
    for name, net in nets.items():
        assert not net.violations()
        x = rng.integers(0, 256, (3, *net.input_shape)).astype(np.int32)
        lava = sidecar.run_lava(net, x, 20, timeout_s=180)
        ours = simulate(net, x, 20, record=True)
        for layer, s_ours, s_lava in zip(net.layers, ours.spikes, lava.spikes):
            assert np.array_equal(s_ours.permute(1, 0, 2).numpy(), s_lava), (name, layer.name)
        assert np.array_equal(ours.v_final.numpy(), lava.v_final), name
        assert sum(int(s.sum()) for s in lava.spikes[:-1]) > 100, name  # the comparison is not between silent networks


def test_simulator_follows_the_hand_computed_dynamics():
    # 2 graded inputs -> 3 IF neurons (vth 50 << 6 = 3200) -> 2 read-outs; same case as test_sidecar's, by hand.
    hidden = LoihiLayer(name="hidden", kind="dense", in_shape=(2,), out_shape=(3,), weight=[[10, 0], [0, 20], [6, 6]],
                        weight_exp=0, bias_mant=0, bias_exp=0, du=4095, dv=0, vth=50)
    out = LoihiLayer(name="out", kind="dense", in_shape=(3,), out_shape=(2,), weight=[[100, 0, 50], [-20, 40, 0]],
                     weight_exp=0, bias_mant=[1, -2], bias_exp=3, du=4095, dv=0, vth=2 ** 17 - 1, readout=True)
    r = simulate(LoihiNetwork(input_shape=(2,), layers=[hidden, out]), np.array([[3, 1], [0, 0]]), 5, record=True)
    assert r.spikes[0][:, 0].tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert r.v_final.tolist() == [[9640, 1200], [40, -80]]
    assert r.input_events.tolist() == [[5, 5], [0, 0]]


def test_simulator_refuses_bad_inputs():
    net = random_networks()["dense"]
    with pytest.raises(ValueError, match="integers in"):
        simulate(net, np.full((2, 20), 0.5), 4)
    with pytest.raises(ValueError, match="integers in"):
        simulate(net, np.full((2, 20), 300), 4)
    with pytest.raises(ValueError, match="expected"):
        simulate(net, np.zeros((2, 21), dtype=np.int32), 4)
    with pytest.raises(ValueError, match="timesteps"):
        simulate(net, np.zeros((2, 20), dtype=np.int32), 0)
    net.layers[0].vth = 2 ** 20
    with pytest.raises(ValueError, match="layer 'a': vth"):
        simulate(net, np.zeros((2, 20), dtype=np.int32), 4)


# ------------------------------------------------------------------------------------------------------ export
def _lif(n, tau_s=4.0, r=1.0, theta=1.0, dt=1e-4, leak=0.0):
    f = lambda v: np.full(n, v)  # noqa: E731
    return nir.LIF(tau=f(tau_s * dt), r=f(r), v_leak=f(leak), v_threshold=f(theta), v_reset=f(0.0))


def _mlp_graph(seed=0, n_in=16, hidden=32, out=4):
    rng = np.random.default_rng(seed)
    return nir.NIRGraph.from_list(nir.Affine(rng.normal(0, 0.5, (hidden, n_in)), rng.normal(0, 0.1, hidden)), _lif(hidden),
                                  nir.Affine(rng.normal(0, 0.5, (out, hidden)), rng.normal(0, 0.1, out)))


def test_export_maps_the_float_parameters_to_loihi_fields():
    shape, layers = float_layers(_mlp_graph())
    assert shape == (16,) and [L.readout for L in layers] == [False, True]
    assert layers[0].leak == pytest.approx(0.25) and layers[0].theta == 1.0
    net = quantize(shape, layers, timesteps=12)
    hid, out = net.layers
    assert not net.violations()
    assert hid.dv == 1024 and hid.du == 4095 and out.dv == 0 and out.readout and out.vth == 2 ** 17 - 1
    assert np.all(hid.weight % 2 == 0) and np.abs(hid.weight).max() > 127  # mixed-sign 8-bit, 7-8 bits used
    q = net.source["quantization"]
    assert q["affine"]["weight_rel_rms_error"] < 0.02 and q["affine"]["threshold_rel_error"] < 1e-3
    k = q["affine"]["scale_k"]  # the stated scale: w 2^(e+6) / k approximates g W (first layer: W / input_scale)
    approx = hid.weight * 2.0 ** (hid.weight_exp + 6) / k
    assert np.allclose(approx, layers[0].weight / net.input_scale, atol=2 * 2.0 ** (hid.weight_exp + 6) / k)


def test_deployed_network_tracks_the_float_network():
    graph = _mlp_graph(seed=3)
    dep = deploy(graph, timesteps=16)
    x = np.random.default_rng(0).random((300, 16))
    ev = evaluate(dep, x, np.argmax(float_reference(dep.float_layers, x, 16), 1))
    assert ev["accuracy_float"] == 1.0 and ev["accuracy_deployed"] >= 0.9  # decisions of a random net: small margins
    assert 0 < ev["firing_rate_per_layer"]["affine"] < 1 and ev["loihi_steps"] == 18
    assert ev["energy"]["total_j"] > 0 and ev["energy"]["time_s"] > 0


def test_float_reference_is_the_snn_models_output():
    from snn.neurons import NeuronSpec, build_neuron
    from snn.nir import export_nir
    from snn.runtime import TimeFolded
    from spikingjelly.activation_based import functional

    torch.manual_seed(0)
    model = nn.Sequential(TimeFolded(nn.Conv2d(1, 4, 3, padding=1)), build_neuron(NeuronSpec(kind="lif", tau=2.0)),
                          TimeFolded(nn.Flatten()), nn.Linear(64, 5))
    x = torch.rand(7, 1, 4, 4) * 3
    with torch.no_grad():
        functional.reset_net(model)
        ours = model(x[None].expand(6, -1, -1, -1, -1)).mean(0).numpy()
    _, layers = float_layers(export_nir(model, input_shape=(1, 4, 4)))
    assert np.allclose(float_reference(layers, x.numpy(), 6), ours, atol=1e-5)


def test_export_lists_every_unsupported_node_by_name():
    g = nir.NIRGraph.from_list(nir.Affine(np.ones((3, 2)), np.zeros(3)), _lif(3, leak=0.5),
                               nir.Affine(np.ones((3, 3)), np.zeros(3)),
                               nir.CubaLIF(tau_syn=np.full(3, 2e-4), tau_mem=np.full(3, 4e-4), r=np.ones(3),
                                           v_leak=np.zeros(3), v_threshold=np.ones(3)))
    with pytest.raises(ExportError) as e:
        float_layers(g)
    assert "'lif'" in str(e.value) and "v_leak" in str(e.value) and "CubaLIF" in str(e.value)


def test_export_refuses_a_layer_it_cannot_represent():
    g = nir.NIRGraph.from_list(nir.Affine(np.ones((3, 200)) * 5, np.zeros(3)), _lif(3, theta=1e-6), nir.Affine(np.ones((2, 3)), np.zeros(2)))
    shape, layers = float_layers(g)
    with pytest.raises(ExportError, match=r"layer 'affine'.*vth = 0"):
        quantize(shape, layers, timesteps=8)


def test_deploy_refuses_a_network_that_does_not_fit():
    g = nir.NIRGraph.from_list(nir.Affine(np.ones((4, 5000)) * 0.01, np.zeros(4)), _lif(4), nir.Affine(np.ones((2, 4)), np.zeros(2)))
    with pytest.raises(MappingError, match="affine"):
        deploy(g, timesteps=4, chip=LOIHI1, input_levels=1)


# --------------------------------------------------------------------------------------------------------- CLI
@pytest.mark.lava
@needs_lava
def test_cli_deploys_evaluates_runs_lava_and_saves(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NEUROMFM_LAVA_PYTHON", raising=False)
    graph = _mlp_graph(seed=1)
    nir.write(str(tmp_path / "m.nir"), graph)
    x = np.random.default_rng(0).random((50, 16))
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(50, dtype=np.int64))
    code = cli(["deploy", str(tmp_path / "m.nir"), "--timesteps", "6", "--data", str(tmp_path / "d.npz"), "--lava", "2",
                "--save", str(tmp_path / "net"), "--report", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 0 and "cores" in out and "accuracy: deployed" in out and "bit-exact True" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lava"]["bit_exact"] and report["evaluation"]["samples"] == 50
    again = LoihiNetwork.load(tmp_path / "net")
    assert np.array_equal(again.layers[0].weight, deploy(graph, timesteps=6).network.layers[0].weight)


def test_cli_says_what_is_wrong(tmp_path, capsys):
    assert cli(["deploy", str(tmp_path / "missing.nir"), "--timesteps", "4"]) == 2
    assert "no such NIR file" in capsys.readouterr().err
    nir.write(str(tmp_path / "m.nir"), _mlp_graph())
    assert cli(["deploy", str(tmp_path / "m.nir"), "--timesteps", "4", "--lava", "2"]) == 2
    assert "--lava N needs --data" in capsys.readouterr().err
    np.savez(tmp_path / "d.npz", inputs=np.zeros((2, 16)))
    assert cli(["deploy", str(tmp_path / "m.nir"), "--timesteps", "4", "--data", str(tmp_path / "d.npz")]) == 2
    assert "no array 'x'" in capsys.readouterr().err


def test_check_against_lava_reports_a_clear_error_without_lava(tmp_path, monkeypatch):
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", str(tmp_path / "nope"))
    dep = deploy(_mlp_graph(), timesteps=4)
    with pytest.raises(sidecar.LavaSidecarError, match="make setup|NEUROMFM_LAVA_PYTHON"):
        check_against_lava(dep, np.zeros((1, 16)))
