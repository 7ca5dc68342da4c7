r"""NIR export and import (Neuromorphic Intermediate Representation, Pedersen et al., Nature Communications 2024).

Supported layers, in a feed-forward chain (``nn.Sequential``) of multi-step layers:

    nn.Linear          <-> nir.Affine (with bias) / nir.Linear (without)
    nn.Conv2d          <-> nir.Conv2d
    nn.Flatten         <-> nir.Flatten
    (per-sample layers may be wrapped in ``snn.runtime.TimeFolded``)
    LIF / PLIF neuron  <-> nir.LIF     (PLIF exports its current tau)
    IF neuron          <-> nir.IF

Neurons are recognized on every engine of :mod:`snn.neurons` (SpikingJelly nodes, the snnTorch wrapper and
``FusedNeuron``). NIR's neurons are continuous-time; one timestep of ours is ``dt`` seconds of theirs. Our LIF
(hard reset to V_r, see :mod:`snn.neurons`) is the forward-Euler step of

    tau dv/dt = (v_leak - v) + r I,   with tau = tau_steps * dt, v_leak = V_r, v_reset = V_r,
    r = 1 when the input is divided by tau (``decay_input``), r = tau_steps otherwise;

and IF is ``dv/dt = r I / dt`` with r = 1. NIR has no reset-by-subtraction, so soft-reset neurons cannot be
exported. Anything else (BatchNorm, attention, pooling, ...) is refused before any work starts, with every
unsupported layer named.

``dt`` defaults to 1e-4 s, the value snnTorch's NIR import assumes, so graphs written here load into snnTorch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from snn.neurons import Engine, NeuronKind, NeuronSpec, build_neuron
from snn.runtime import TimeFolded

__all__ = ["export_nir", "import_nir", "neuron_spec_of"]

DT = 1e-4


def neuron_spec_of(module: nn.Module) -> NeuronSpec | None:
    """The :class:`NeuronSpec` of a neuron layer on any engine, or None when ``module`` is not a neuron."""
    if isinstance(getattr(module, "spec", None), NeuronSpec):  # our fused engine and the snnTorch wrapper
        spec = module.spec
        if spec.kind is NeuronKind.PLIF:
            w = module.w if hasattr(module, "w") else None
            tau = 1.0 / float(torch.sigmoid(w.detach())) if w is not None else 1.0 / (1.0 - float(module.beta.detach().clamp(0, 1)))
            return NeuronSpec(kind="lif", tau=tau, v_threshold=spec.v_threshold, v_reset=spec.v_reset,
                              decay_input=spec.decay_input)
        return spec
    try:
        from spikingjelly.activation_based import neuron
    except ImportError:  # pragma: no cover (a declared dependency)
        return None
    common = dict(v_threshold=float(module.v_threshold), v_reset=None if module.v_reset is None else float(module.v_reset)) \
        if isinstance(module, neuron.BaseNode) else {}
    if isinstance(module, neuron.ParametricLIFNode):
        return NeuronSpec(kind="lif", tau=1.0 / float(torch.sigmoid(module.w.detach())), decay_input=module.decay_input, **common)
    if isinstance(module, neuron.LIFNode):
        return NeuronSpec(kind="lif", tau=float(module.tau), decay_input=module.decay_input, **common)
    if isinstance(module, neuron.IFNode):
        return NeuronSpec(kind="if", **common)
    return None


def _node(name: str, module: nn.Module, shape: tuple[int, ...], dt: float):
    """``(nir node, output shape)`` of one layer, or ``(None, reason)``."""
    import nir

    if isinstance(module, TimeFolded):  # a per-sample layer applied to every step (e.g. a Conv2d)
        module = module.inner

    if isinstance(module, nn.Linear):
        w = module.weight.detach().numpy()
        node = nir.Affine(w, module.bias.detach().numpy()) if module.bias is not None else nir.Linear(w)
        return node, (*shape[:-1], module.out_features)
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None, f"padding {module.padding!r} / mode {module.padding_mode!r} (NIR takes explicit zero padding)"
        bias = module.bias.detach().numpy() if module.bias is not None else np.zeros(module.out_channels, dtype=np.float32)
        node = nir.Conv2d(input_shape=tuple(shape[-2:]), weight=module.weight.detach().numpy(), stride=module.stride,
                          padding=module.padding, dilation=module.dilation, groups=module.groups, bias=bias)
        with torch.no_grad():
            out = module(torch.zeros(1, *shape)).shape[1:]
        return node, tuple(out)
    if isinstance(module, nn.Flatten):
        if module.start_dim != 1:
            return None, f"start_dim={module.start_dim} (only per-sample flattening, start_dim=1, is exported)"
        return nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0), (int(np.prod(shape)),)
    spec = neuron_spec_of(module)
    if spec is None:
        return None, f"{type(module).__name__} has no NIR equivalent"
    if spec.v_reset is None:
        return None, "soft reset (subtract the threshold) has no NIR equivalent; use v_reset=0.0"
    n = shape
    full = lambda v: np.full(n, v, dtype=np.float32)  # noqa: E731
    if spec.kind is NeuronKind.IF:
        return nir.IF(r=full(1.0), v_threshold=full(spec.v_threshold), v_reset=full(spec.v_reset)), shape
    r = 1.0 if spec.decay_input else spec.tau
    return nir.LIF(tau=full(spec.tau * dt), r=full(r), v_leak=full(spec.v_reset), v_threshold=full(spec.v_threshold),
                   v_reset=full(spec.v_reset)), shape


def export_nir(model: nn.Sequential, *, input_shape: tuple[int, ...], dt: float = DT):
    """A ``nir.NIRGraph`` of ``model`` (a chain of the supported layers) for per-sample inputs of ``input_shape``.

    Raises ValueError listing every unsupported layer (name, type and reason) before anything is built.
    """
    import nir

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"export_nir takes an nn.Sequential chain of layers, got {type(model).__name__}")
    nodes, problems, shape = {}, [], tuple(input_shape)
    for name, module in model.named_children():
        node, out = _node(name, module, shape, dt)
        if node is None:
            problems.append(f"layer {name!r} ({type(module).__name__}): {out}")
            continue
        nodes[f"l{name}"], shape = node, out
    if problems:
        raise ValueError("cannot export to NIR:\n  " + "\n  ".join(problems))
    return nir.NIRGraph.from_list(*nodes.values())


def _chain(graph) -> list:
    """The graph's nodes from input to output; a graph that is not a simple chain is an error."""
    import nir

    succ = {}
    for a, b in graph.edges:
        if a in succ:
            raise ValueError(f"NIR node {a!r} has several successors: only feed-forward chains are imported")
        succ[a] = b
    starts = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    if len(starts) != 1:
        raise ValueError(f"the NIR graph needs exactly one Input node, found {len(starts)}")
    order, cur = [], starts[0]
    while cur in succ:
        cur = succ[cur]
        order.append((cur, graph.nodes[cur]))
    return [(k, v) for k, v in order if not isinstance(v, nir.Output)]


def import_nir(graph, *, dt: float = DT, engine: Engine | str = Engine.SPIKINGJELLY) -> nn.Sequential:
    """An ``nn.Sequential`` of multi-step layers (neurons on ``engine``) from a NIR chain (see the module docstring)."""
    import nir

    layers, problems = [], []
    for name, node in _chain(graph):
        if isinstance(node, (nir.Affine, nir.Linear)):
            w = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
            lin = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine))
            with torch.no_grad():
                lin.weight.copy_(w)
                if isinstance(node, nir.Affine):
                    lin.bias.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
            layers.append(lin)
        elif isinstance(node, nir.Conv2d):
            w = torch.as_tensor(np.asarray(node.weight), dtype=torch.float32)
            conv = nn.Conv2d(w.shape[1] * node.groups, w.shape[0], tuple(w.shape[-2:]), stride=node.stride,
                             padding=node.padding, dilation=node.dilation, groups=node.groups)
            with torch.no_grad():
                conv.weight.copy_(w)
                conv.bias.copy_(torch.as_tensor(np.asarray(node.bias), dtype=torch.float32))
            layers.append(TimeFolded(conv))
        elif isinstance(node, nir.Flatten):
            layers.append(nn.Flatten(start_dim=2))  # (T, B, ...) -> (T, B, F)
        elif isinstance(node, (nir.LIF, nir.IF)):
            try:
                layers.append(build_neuron(_spec_from_nir(node, dt), engine=engine))
            except ValueError as e:
                problems.append(f"node {name!r} ({type(node).__name__}): {e}")
        else:
            problems.append(f"node {name!r} ({type(node).__name__}): not supported by import_nir")
    if problems:
        raise ValueError("cannot import the NIR graph:\n  " + "\n  ".join(problems))
    return nn.Sequential(*layers)


def _single(values, what: str) -> float:
    u = np.unique(np.asarray(values, dtype=np.float64))
    if u.size != 1:
        raise ValueError(f"{what} differs between neurons ({u[:4]}...): one value per layer is supported")
    return float(u[0])


def _spec_from_nir(node, dt: float) -> NeuronSpec:
    import nir

    v_th = _single(node.v_threshold, "v_threshold")
    v_reset = _single(node.v_reset, "v_reset") if node.v_reset is not None else 0.0
    if isinstance(node, nir.IF):
        if not np.isclose(_single(node.r, "r"), 1.0):
            raise ValueError("IF with r != 1 is not supported")
        return NeuronSpec(kind="if", v_threshold=v_th, v_reset=v_reset)
    tau = _single(node.tau, "tau") / dt
    r, v_leak = _single(node.r, "r"), _single(node.v_leak, "v_leak")
    if not np.isclose(v_leak, v_reset):
        raise ValueError(f"v_leak={v_leak} differs from v_reset={v_reset}: our LIF leaks towards its reset potential")
    if np.isclose(r, 1.0):
        return NeuronSpec(kind="lif", tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=True)
    if np.isclose(r, tau):
        return NeuronSpec(kind="lif", tau=tau, v_threshold=v_th, v_reset=v_reset, decay_input=False)
    raise ValueError(f"r={r} is neither 1 (input divided by tau) nor tau={tau} (input not divided)")
