"""snn.neurons: the engines against the functional core, gradients, Brian2 cross-validation, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from spikingjelly.activation_based import functional

from neurohw.workload import OpKind, trace
from snn.neurons import Engine, NeuronKind, NeuronSpec, build_neuron, neuron_multistep

SPECS = [NeuronSpec(kind=k, tau=2.5, v_reset=r, decay_input=d)
         for k, r, d in itertools.product(NeuronKind, (0.0, None), (True, False))]


def _run(spec: NeuronSpec, engine: Engine, x: torch.Tensor) -> torch.Tensor:
    node = build_neuron(spec, engine=engine)
    functional.reset_net(node)
    return node(x)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind.value}-{'hard' if s.v_reset is not None else 'soft'}-{s.decay_input}")
def test_both_engines_equal_the_functional_core(spec):
    torch.manual_seed(0)
    x = torch.rand(24, 3, 5) * 1.5  # large enough to make IF / soft-reset membranes cross twice
    ref, _ = neuron_multistep(spec, x)
    assert 0.02 < float(ref.mean()) < 0.98  # the check is not vacuous
    for engine in Engine:
        assert torch.equal(_run(spec, engine, x), ref), engine  # exact: same float operations


GRAD_SPECS = [NeuronSpec(kind=k, tau=2.0, v_reset=r, detach_reset=d)
              for k, r, d in itertools.product(NeuronKind, (0.0, None), (False, True))]


@pytest.mark.parametrize("spec", GRAD_SPECS, ids=lambda s: f"{s.kind.value}-{'hard' if s.v_reset is not None else 'soft'}-detach{s.detach_reset}")
def test_engines_agree_on_surrogate_gradients(spec):
    torch.manual_seed(0)
    x0 = torch.rand(16, 4, 6) * 1.2
    grads, w_grads = {}, {}
    for engine in Engine:
        node = build_neuron(spec, engine=engine)
        functional.reset_net(node)
        x = x0.clone().requires_grad_(True)
        (node(x) * torch.linspace(0, 1, 6)).sum().backward()
        grads[engine] = x.grad
        if spec.kind is NeuronKind.PLIF and engine is not Engine.SNNTORCH:  # snnTorch learns beta, not w
            w_grads[engine] = node.w.grad
    # same ATan surrogate and the same reset path; float rounding of (1 - beta) vs 1/tau only
    for engine in (Engine.SNNTORCH, Engine.FUSED):
        torch.testing.assert_close(grads[engine], grads[Engine.SPIKINGJELLY], rtol=1e-5, atol=1e-6)
    if w_grads:
        torch.testing.assert_close(w_grads[Engine.FUSED], w_grads[Engine.SPIKINGJELLY], rtol=1e-5, atol=1e-6)
    assert float(grads[Engine.SPIKINGJELLY].abs().sum()) > 0


@pytest.mark.parametrize("spec", [*SPECS, *GRAD_SPECS], ids=lambda s: f"{s.kind.value}-{s.v_reset}-{s.decay_input}-{s.detach_reset}")
def test_the_compiled_kernel_equals_the_torch_path_of_the_fused_engine(spec, monkeypatch):
    import snn.neurons as neurons
    from snn import _kernel

    if _kernel.kernel() is None:
        pytest.skip("no C compiler: the fused engine runs its torch path only")
    torch.manual_seed(0)
    base = torch.rand(6, 40, 3000) * 1.2  # 40 000 elements per step and layout: split over threads
    layouts = {"contiguous": lambda b: b[..., :1000].contiguous(), "chunk of the last dim": lambda b: b[..., 1000:2000],
               "expanded over T": lambda b: b[:1, :, :1000].expand(6, -1, -1),
               "transposed": lambda b: b[..., :1000].transpose(1, 2)}
    for layout, view in layouts.items():
        out = {}
        for use in (True, False):
            monkeypatch.setattr(neurons, "_kernel_ok", lambda x, use=use: use)
            node = build_neuron(spec, engine=Engine.FUSED)
            leaf = base.clone().requires_grad_(True)
            x = view(leaf)
            s = node(x)
            (s * torch.linspace(0, 1, s.shape[-1])).sum().backward()
            out[use] = (s, leaf.grad, getattr(node, "w", None) is not None and node.w.grad)
        assert torch.equal(out[True][0], out[False][0]), layout  # bit-identical spikes
        torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-6, msg=layout)
        if spec.kind is NeuronKind.PLIF:
            torch.testing.assert_close(out[True][2], out[False][2], rtol=1e-4, atol=1e-4, msg=layout)


def _brian2_spike_steps(kind: str, current: np.ndarray, *, tau: float, v_th: float) -> list[int]:
    """Spike steps of one Brian2 neuron driven by ``current`` (one value per 1 ms step), Euler, reset to 0."""
    import brian2 as b2

    b2.prefs.codegen.target = "numpy"  # no compiler needed
    b2.start_scope()
    b2.defaultclock.dt = 1 * b2.ms
    I = b2.TimedArray(current, dt=1 * b2.ms)  # noqa: N806 (Brian2 names the input in its equations)
    eqs = "dv/dt = I(t) / ms : 1" if kind == "if" else "dv/dt = (-v + I(t)) / tau : 1"
    g = b2.NeuronGroup(1, eqs, threshold=f"v >= {v_th}", reset="v = 0", method="euler",
                       namespace={"I": I, "tau": tau * b2.ms})
    mon = b2.SpikeMonitor(g)
    b2.run(len(current) * b2.ms)
    return [int(round(float(t / b2.ms))) for t in mon.t]


@pytest.mark.parametrize("kind", ["if", "lif"])
@pytest.mark.parametrize("drive", ["constant", "random"])
def test_discrete_dynamics_match_brian2(kind, drive):
    T, tau, v_th = 200, 4.0, 1.0
    rng = np.random.default_rng(0)
    current = np.full(T, 0.3 if kind == "if" else 1.6) if drive == "constant" else rng.uniform(0, 0.6 if kind == "if" else 3.0, T)
    spec = NeuronSpec(kind=kind, tau=tau, v_threshold=v_th, v_reset=0.0, decay_input=True)
    spikes, _ = neuron_multistep(spec, torch.tensor(current, dtype=torch.float64).view(T, 1))
    ours = torch.nonzero(spikes.view(-1)).view(-1).tolist()
    theirs = _brian2_spike_steps(kind, current, tau=tau, v_th=v_th)
    assert len(ours) >= 10 and len(ours) == len(theirs)
    assert max(abs(a - b) for a, b in zip(ours, theirs)) <= 1  # spike times within one step


def test_neurons_are_counted_by_the_workload_tracer_on_both_engines():
    torch.manual_seed(0)
    x = torch.rand(8, 2, 10) * 3
    for engine in Engine:
        node = build_neuron(NeuronSpec(), engine=engine)
        functional.reset_net(node)
        w = trace(node, x, timesteps=8)
        functional.reset_net(node)
        (op,) = w.ops
        assert op.spikes > 0
        # trace divides by the leading dimension (here T, as for a raw multi-step module): 8 * 2 * 10 / 8 updates
        assert op.kind is OpKind.NEURON and op.elements == 2 * 10 and op.spikes == float(node(x).sum()) / 8


def test_bad_specs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="NeuronSpec.tau=1"):
        NeuronSpec(tau=1)
    with pytest.raises(ValueError, match="NeuronSpec.v_reset=2.0"):
        NeuronSpec(v_reset=2.0)
    with pytest.raises(ValueError, match="NeuronSpec.kind='adex'"):
        NeuronSpec(kind="adex")
    with pytest.raises(ValueError, match="unknown neuron engine 'norse'"):
        build_neuron(engine="norse")
    with pytest.raises(ValueError, match="resets to 0 only"):
        build_neuron(NeuronSpec(v_reset=-0.5), engine="snntorch")
    with pytest.raises(ValueError, match=r"multi-step input \(T, B, \.\.\.\)"):
        build_neuron(engine="snntorch")(torch.rand(5))
    with pytest.raises(ValueError, match=r"multi-step input"):
        neuron_multistep(NeuronSpec(), torch.rand(5))


def test_without_a_compiler_the_fused_engine_warns_and_runs_its_torch_path(monkeypatch, tmp_path):
    from snn import _kernel

    monkeypatch.setenv("NEUROMFM_KERNEL_DIR", str(tmp_path))  # nothing compiled there yet
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    _kernel.kernel.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="kernel is unavailable"):
            assert _kernel.kernel() is None
        spec = NeuronSpec(kind="lif", tau=2.0)
        x = torch.rand(8, 3, 5) * 1.5
        assert torch.equal(_run(spec, Engine.FUSED, x), neuron_multistep(spec, x)[0])
    finally:
        _kernel.kernel.cache_clear()
