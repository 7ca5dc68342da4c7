r"""Export a spiking network (a NIR graph) to Loihi fixed point (:class:`~neurohw.lava.network.LoihiNetwork`).

Input: a feed-forward NIR chain ``Input -> (Affine | Linear | Conv2d) [Flatten] -> (LIF | IF) -> ... ->
[(Affine | Linear) ->] Output``, as ``snn.nir.export_nir`` writes it (hard reset to 0, leak towards 0). A
trailing synapse without neurons becomes an integrator read-out layer (the classifier's logits). Per layer, in
float (one timestep = ``dt`` seconds of NIR's continuous time, ``tau_s = tau / dt`` steps):

    v <- v (1 - 1 / tau_s) + g (W s + b),   spike when v >= theta, then v <- 0,
    g = r / tau_s (LIF),  g = r (IF, no leak);   s = spikes of the previous layer, or the input x.

Fixed point. Each layer gets its own scale ``k`` (membrane units per float unit) and weight exponent ``e``:

    w = 2 round(k g W / 2^(e + 7))   (8-bit, even: mixed-sign Loihi weights),   so  w 2^(e + 6) ~ k g W
    vth = round(k theta / 64),   bias_mant 2^bias_exp = round(k g b),   dv = round(4096 / tau_s) (IF: 0),  du = 4095

The first layer's input is graded: ``x_int = round(x * input_scale)``, ``input_scale = input_levels / input_max``
(unsigned, at most ``input_bits`` bits), so its ``W`` is divided by ``input_scale``. ``k`` is the largest value
that keeps every quantity in range, whatever the spikes:

    vth <= 2^14           (v has 2^23 / 2^20 = 8 thresholds of room below 0 before it saturates)
    k g sum_i |W_ji| x_max <= 2^22  for every neuron j   (u = a << 6 never wraps, with room for rounding, so the
                                                           simulator's fast path without wraps applies)
    |k g b| <= 4095 * 2^7  (bias mantissa and exponent)
    read-out: T (k g sum_i |W_ji| x_max + |k g b_j|) < 2^23 - 2^6   (v never saturates, never fires)

and ``e`` the smallest exponent with ``254 2^(e + 6) / max |g W| >= k`` (weights use 7-8 bits; conv: ``e = 0``,
Lava's fixed-point Conv ignores the exponent, so there ``k`` is also capped by the weight range). A layer whose
threshold or weights would keep fewer than 4 bits is refused (named, with the limit). The quantization error of
each layer (relative RMS error of ``g W``, ``g b`` and ``theta`` as represented) is reported in
``network.source["quantization"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from neurohw.lava.network import LIMITS, ConvGeometry, LoihiLayer, LoihiNetwork

__all__ = ["DT", "FloatLayer", "ExportError", "float_layers", "float_reference", "quantize"]

DT = 1e-4  # seconds per timestep in NIR graphs written by snn.nir (and assumed by snnTorch's NIR import)
VTH_MAX = 2 ** 14
MIN_BITS = 4


class ExportError(ValueError):
    """A network this exporter cannot represent on Loihi; the message names the layer and the limit."""


@dataclass
class FloatLayer:
    """One synapse + neuron layer of the float network (the NIR graph's semantics, see the module docstring)."""

    name: str
    kind: str  # dense | conv
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray  # float64, g W already applied
    bias: np.ndarray  # float64 (out_shape), g b
    leak: float  # 1 / tau_s, 0 for IF
    theta: float  # firing threshold; inf for the read-out
    conv: ConvGeometry | None = None

    @property
    def readout(self) -> bool:
        return math.isinf(self.theta)


def _chain(graph) -> tuple[tuple[int, ...], list[tuple[str, object]]]:
    import nir

    succ: dict[str, str] = {}
    for a, b in graph.edges:
        if a in succ:
            raise ExportError(f"NIR node {a!r} has several successors: only feed-forward chains can be deployed")
        succ[a] = b
    starts = [k for k, v in graph.nodes.items() if isinstance(v, nir.Input)]
    if len(starts) != 1:
        raise ExportError(f"the NIR graph needs exactly one Input node, found {len(starts)}")
    shape = tuple(int(s) for s in np.asarray(graph.nodes[starts[0]].input_type["input"]).reshape(-1))
    order, cur = [], starts[0]
    while cur in succ:
        cur = succ[cur]
        order.append((cur, graph.nodes[cur]))
    return shape, [(k, v) for k, v in order if not isinstance(v, nir.Output)]


def _one(values, what: str, name: str) -> float:
    u = np.unique(np.asarray(values, dtype=np.float64))
    if u.size != 1:
        raise ExportError(f"node {name!r}: {what} differs between neurons; Loihi layers here share one value")
    return float(u[0])


def float_layers(graph, *, dt: float = DT) -> tuple[tuple[int, ...], list[FloatLayer]]:
    """``(input shape, layers)`` of a NIR chain; every unsupported node is listed in one :class:`ExportError`."""
    import nir

    shape, nodes = _chain(graph)
    layers: list[FloatLayer] = []
    problems: list[str] = []
    pending: dict | None = None  # a synapse waiting for its neurons
    cur = shape
    for name, node in nodes:
        if isinstance(node, (nir.Affine, nir.Linear, nir.Conv2d)):
            if pending is not None:
                problems.append(f"node {name!r}: two synapses in a row ({pending['name']!r} has no neurons)")
            w = np.asarray(node.weight, dtype=np.float64)
            bias = np.asarray(getattr(node, "bias", None) if getattr(node, "bias", None) is not None else 0.0, np.float64)
            if isinstance(node, nir.Conv2d):
                if len(cur) != 3:
                    problems.append(f"node {name!r}: Conv2d needs a (C, H, W) input, gets {cur}")
                    continue
                if isinstance(node.padding, str):
                    problems.append(f"node {name!r}: padding {node.padding!r}; export explicit zero padding")
                    continue
                geo = ConvGeometry(kernel=w.shape[-2:], stride=np.broadcast_to(node.stride, 2),
                                   padding=np.broadcast_to(node.padding, 2), dilation=np.broadcast_to(node.dilation, 2),
                                   groups=int(node.groups))
                import torch

                out = tuple(torch.nn.functional.conv2d(torch.zeros(1, *cur), torch.zeros(*w.shape), stride=geo.stride,
                                                       padding=geo.padding, dilation=geo.dilation, groups=geo.groups).shape[1:])
                pending = dict(name=name, kind="conv", in_shape=cur, out_shape=out, weight=w,
                               bias=np.broadcast_to(bias.reshape(-1, 1, 1), out).copy(), conv=geo)
            else:
                if math.prod(cur) != w.shape[1]:
                    problems.append(f"node {name!r}: weight takes {w.shape[1]} inputs, gets {cur}")
                    continue
                pending = dict(name=name, kind="dense", in_shape=(math.prod(cur),), out_shape=(w.shape[0],), weight=w,
                               bias=np.broadcast_to(bias, (w.shape[0],)).copy(), conv=None)
            cur = pending["out_shape"]
        elif isinstance(node, nir.Flatten):
            cur = (math.prod(cur),)
        elif isinstance(node, (nir.LIF, nir.IF)):
            if pending is None:
                problems.append(f"node {name!r}: neurons without a synapse before them")
                continue
            theta = _one(node.v_threshold, "v_threshold", name)
            v_reset = _one(node.v_reset, "v_reset", name) if getattr(node, "v_reset", None) is not None else 0.0
            if v_reset != 0.0:
                problems.append(f"node {name!r}: v_reset={v_reset}; Loihi's LIF resets to 0")
            r = _one(node.r, "r", name)
            if isinstance(node, nir.LIF):
                if _one(node.v_leak, "v_leak", name) != 0.0:
                    problems.append(f"node {name!r}: v_leak != 0; Loihi's LIF leaks towards 0")
                tau_s = _one(node.tau, "tau", name) / dt
                if tau_s <= 1:
                    problems.append(f"node {name!r}: tau = {tau_s:g} steps of dt={dt}; needs > 1 (is dt right?)")
                    continue
                leak, g = 1.0 / tau_s, r / tau_s
            else:
                leak, g = 0.0, r
            if theta <= 0:
                problems.append(f"node {name!r}: v_threshold={theta} must be > 0")
            layers.append(FloatLayer(name=pending["name"], kind=pending["kind"], in_shape=pending["in_shape"],
                                     out_shape=pending["out_shape"], weight=g * pending["weight"], bias=g * pending["bias"],
                                     leak=leak, theta=theta, conv=pending["conv"]))
            pending = None
        else:
            problems.append(f"node {name!r} ({type(node).__name__}): not supported (Affine, Linear, Conv2d, Flatten, "
                            "LIF, IF)")
    if pending is not None:  # a trailing synapse: integrator read-out
        layers.append(FloatLayer(name=pending["name"], kind=pending["kind"], in_shape=pending["in_shape"],
                                 out_shape=pending["out_shape"], weight=pending["weight"], bias=pending["bias"], leak=0.0,
                                 theta=math.inf, conv=pending["conv"]))
    if not layers and not problems:
        problems.append("the graph has no synapse")
    if problems:
        raise ExportError("cannot deploy the NIR graph to Loihi:\n  " + "\n  ".join(problems))
    return shape, layers


def float_reference(layers: list[FloatLayer], x: np.ndarray, timesteps: int) -> np.ndarray:
    """The float network's output for inputs ``x (B, *input_shape)`` presented at every step, without synaptic
    delays: the read-out's mean ``W s + b`` over ``T`` (or the last layer's spike counts)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        xs = torch.as_tensor(np.asarray(x, dtype=np.float64))
        B = xs.shape[0]
        v = [torch.zeros(B, math.prod(L.out_shape), dtype=torch.float64) for L in layers]
        out = torch.zeros_like(v[-1])
        weights = [torch.from_numpy(L.weight) for L in layers]
        biases = [torch.from_numpy(L.bias.reshape(-1)) for L in layers]
        for _ in range(timesteps):
            s = xs
            for i, L in enumerate(layers):
                w = weights[i]
                s = s.reshape(B, *L.in_shape)
                y = s.reshape(B, -1) @ w.T if L.kind == "dense" else F.conv2d(
                    s, w, stride=L.conv.stride, padding=L.conv.padding, dilation=L.conv.dilation, groups=L.conv.groups)
                y = y.reshape(B, -1) + biases[i]
                if L.readout:
                    out += y
                    break
                v[i] = v[i] * (1.0 - L.leak) + y
                s = (v[i] >= L.theta).to(torch.float64)
                v[i] = torch.where(s > 0, torch.zeros_like(v[i]), v[i])
                if i == len(layers) - 1:
                    out += s
        return (out / timesteps if layers[-1].readout else out).numpy()


def _even_round(y: np.ndarray) -> np.ndarray:
    return (2 * np.rint(y / 2)).astype(np.int64)


def _rel_err(approx: np.ndarray, exact: np.ndarray) -> float:
    n = float(np.sqrt(np.mean(exact ** 2))) if exact.size else 0.0
    return float(np.sqrt(np.mean((approx - exact) ** 2)) / n) if n > 0 else 0.0


def _quantize_layer(L: FloatLayer, x_max: float, timesteps: int) -> tuple[LoihiLayer, dict]:
    w, b = L.weight, L.bias
    m = float(np.abs(w).max()) if w.size else 0.0
    if m == 0.0:
        raise ExportError(f"layer {L.name!r}: all weights are zero")
    rowsum = float(np.abs(w).reshape(w.shape[0], -1).sum(1).max()) * x_max  # conv: per output channel = per neuron
    bmax = float(np.abs(b).max()) if b.size else 0.0
    caps = {"|u| <= 2^22 (no wrap)": 2 ** 22 / rowsum, "bias mantissa/exponent": 4095 * 2 ** 7 / bmax if bmax else math.inf}
    if L.readout:
        caps["read-out v never saturates over T steps"] = (2 ** 23 - 2 ** 6) / (timesteps * (rowsum + bmax))
    else:
        caps[f"vth <= 2^{int(math.log2(VTH_MAX))}"] = VTH_MAX * 64 / L.theta
    exps = [0] if L.kind == "conv" else list(range(LIMITS["weight_exp"][0], LIMITS["weight_exp"][1] + 1))
    k_cap = min(caps.values())
    e = next((e for e in exps if 254 * 2.0 ** (e + 6) / m >= k_cap), exps[-1])
    k = min(k_cap, 254 * 2.0 ** (e + 6) / m)
    w_int = _even_round(k * w / 2.0 ** (e + 6))
    if L.readout:
        vth = LIMITS["vth"][1]
    else:
        vth = int(round(k * L.theta / 64))
    kb = k * b
    bexp = next((be for be in range(8) if np.abs(np.rint(kb / 2 ** be)).max(initial=0) <= 4095), None)
    if bexp is None:
        raise ExportError(f"layer {L.name!r}: bias up to {bmax:.3g} overflows the 13-bit mantissa with exponent 7")
    b_int = np.rint(kb / 2 ** bexp).astype(np.int64)
    bits_w = math.log2(max(1, int(np.abs(w_int).max())))
    binding = min(caps, key=caps.get) if k == k_cap else "weight range (8 bits)"
    if bits_w < MIN_BITS or (not L.readout and vth < 2 ** MIN_BITS):
        raise ExportError(f"layer {L.name!r}: the limit '{binding}' leaves {bits_w:.1f} bits of weights and vth = {vth} "
                          f"(need >= {MIN_BITS} bits each); rescale the layer (smaller fan-in x weights, or a larger "
                          "threshold) or use fewer timesteps for a read-out layer")
    layer = LoihiLayer(name=L.name, kind=L.kind, in_shape=L.in_shape, out_shape=L.out_shape, weight=w_int.astype(np.int32),
                       weight_exp=e, bias_mant=b_int.astype(np.int32), bias_exp=bexp,
                       du=4095, dv=int(round(4096 * L.leak)), vth=vth, readout=L.readout, conv=L.conv)
    err = {"scale_k": k, "binding_limit": binding, "weight_bits_used": round(bits_w + 1, 2),
           "weight_rel_rms_error": _rel_err(w_int * 2.0 ** (e + 6) / k, w),
           "bias_rel_rms_error": _rel_err(b_int * 2.0 ** bexp / k, b),
           "threshold_rel_error": None if L.readout else abs(vth * 64 / k - L.theta) / L.theta,
           "leak_rel_error": abs(layer.dv / 4096 - L.leak) / L.leak if L.leak else 0.0}
    return layer, err


def quantize(input_shape: tuple[int, ...], layers: list[FloatLayer], *, timesteps: int, input_max: float = 1.0,
             input_levels: int | None = None, input_bits: int = 8, source: dict | None = None) -> LoihiNetwork:
    """The fixed-point network of float ``layers`` (module docstring). Inputs become graded unsigned spikes
    ``x_int = round(x input_levels / input_max)``, ``input_levels <= 2^input_bits - 1`` (default: all of them).
    Fewer levels leave more of the first layer's range to its weights; use the data's own levels where it has
    them (digits: 16)."""
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"quantize: timesteps={timesteps!r} must be an int >= 1")
    if not input_max > 0:
        raise ValueError(f"quantize: input_max={input_max} must be > 0 (inputs are unsigned graded spikes)")
    x_hi = 2 ** input_bits - 1
    levels = x_hi if input_levels is None else input_levels
    if not isinstance(levels, int) or not 1 <= levels <= x_hi:
        raise ValueError(f"quantize: input_levels={input_levels!r} must be an int in [1, {x_hi}] ({input_bits}-bit input)")
    input_scale = levels / input_max
    out, report = [], {}
    for i, L in enumerate(layers):
        if i == 0:
            L = FloatLayer(**{**L.__dict__, "weight": L.weight / input_scale})
        layer, err = _quantize_layer(L, float(levels) if i == 0 else 1.0, timesteps)
        out.append(layer)
        report[L.name] = err
    return LoihiNetwork(input_shape=input_shape, layers=out, input_bits=input_bits, input_scale=input_scale,
                        source={**(source or {}), "timesteps": timesteps, "quantization": report})
