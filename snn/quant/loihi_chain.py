r"""A float spiking chain in Loihi fixed point: the scale of every layer and its integer parameters
(:class:`~snn.quant.loihi.IntLayer`, run by :func:`~snn.quant.loihi.simulate_chain`).

Quantization from float (:func:`quantize_chain`; the float layer, one timestep, :class:`FloatLayer`):

    v <- v (1 - leak) + W s + b,   spike when v >= theta, then v <- 0

Each layer gets a scale ``k`` (membrane units per float unit) and weight exponent ``e``:

    w = q round(k W / (q 2^(e + A)))   (q = 2^(9 - weight_bits): even 8-bit codes, coarser for fewer bits)
    vth = round(k theta / 2^P),   bias_mant 2^bias_exp = round(k b),   dv = round(2^D leak),   du = 2^D - 1

``k`` is the largest scale that keeps every quantity in range whatever the spikes (``x_max`` the largest input:
``input_levels`` for the graded first layer, whose ``W`` is divided by ``input_scale``; 1 for spikes):

    k max_j sum_i |W_ji| x_max <= 2^(S-2)         (u = a << A never needs its correction)
    k max |b| <= bias_mant_max 2^bias_exp_max
    k theta / 2^P <= 2^(S-1-P) / threshold_headroom   (v has that many thresholds of room below 0)
    read-out: k T (max_j sum_i |W_ji| x_max + max |b|) <= 2^(S-1) - 2^P   (never saturates, never fires)
    k <= w_max 2^(e + A) / max |W|     (w_max = 256 - q; conv: e = 0)

with ``e`` the smallest exponent for which the weight range is not the binding limit. This is the rule of the
Lava exporter (``neurohw.lava.export``), restated here; a layer left with fewer than 4 bits of weights or
threshold is refused, naming the layer and the binding limit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from snn.quant.loihi import LOIHI, ConvGeometry, IntLayer, LoihiFormat, SynapseKind, _int

__all__ = ["FloatLayer", "LoihiChain", "quantize_chain", "float_layers_from_model", "MIN_BITS"]

MIN_BITS = 4  # a quantized layer keeps at least this many bits of weights and of threshold

@dataclass(frozen=True, eq=False)
class FloatLayer:
    """One float synapse + neuron layer, one timestep: ``v <- v (1 - leak) + W s + b``, spike at ``v >= theta``,
    reset to 0 (the input gain of the neuron, e.g. ``1 / tau`` of a ``decay_input`` LIF, is already in ``W, b``).

    Attributes:
        name, kind, in_shape, out_shape, conv: as in :class:`IntLayer`.
        weight: float ``(out, in)`` or ``(out, in / groups, kH, kW)``; bias: broadcast to ``out_shape``.
        leak: ``1 / tau`` per step, in ``[0, 1)`` (0: integrate-and-fire).
        theta: threshold ``> 0``; ``math.inf`` marks an integrator read-out layer.
    """

    name: str
    kind: SynapseKind
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray
    leak: float
    theta: float
    conv: ConvGeometry | None = None

    def __post_init__(self) -> None:
        o = f"layer {self.name!r}"
        try:
            object.__setattr__(self, "kind", SynapseKind(self.kind))
        except ValueError:
            raise ValueError(f"{o}: kind={self.kind!r}; use 'dense' or 'conv'") from None
        object.__setattr__(self, "in_shape", tuple(int(v) for v in self.in_shape))
        object.__setattr__(self, "out_shape", tuple(int(v) for v in self.out_shape))
        w = np.asarray(self.weight, dtype=np.float64)
        if not np.all(np.isfinite(w)):
            raise ValueError(f"{o}: weight has non-finite values")
        try:
            b = np.broadcast_to(np.asarray(self.bias, dtype=np.float64), self.out_shape).copy()
        except ValueError:
            raise ValueError(f"{o}: bias of shape {np.shape(self.bias)} does not broadcast to "
                             f"{self.out_shape}") from None
        if not np.all(np.isfinite(b)):
            raise ValueError(f"{o}: bias has non-finite values")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        if not 0.0 <= self.leak < 1.0:
            raise ValueError(f"{o}: leak={self.leak} must be in [0, 1) (1 / tau per step, tau > 1; 0 for IF)")
        if not self.theta > 0:
            raise ValueError(f"{o}: theta={self.theta} must be > 0 (math.inf for a read-out layer)")
        # The shape rules are IntLayer's: check them on a zero integer twin.
        IntLayer(name=self.name, kind=self.kind, in_shape=self.in_shape, out_shape=self.out_shape,
                 weight=torch.zeros(w.shape, dtype=torch.int64), weight_exp=0, bias_mant=0, bias_exp=0, du=0, dv=0,
                 vth=0, conv=self.conv)

    @property
    def readout(self) -> bool:
        return math.isinf(self.theta)


@dataclass(frozen=True, eq=False)
class LoihiChain:
    """A quantized chain: integer layers, the input scale and each layer's scale.

    Attributes:
        layers: the :class:`IntLayer` chain (run it with :func:`simulate_chain`).
        input_scale: graded input ``x_int = round(x input_scale)`` (:meth:`quantize_input`).
        scales: per layer, ``k``: ``v_int ~ k v_float`` (``w 2^(e + A) ~ k W``, ``vth 2^P ~ k theta``).
        binding: per layer, the limit that set ``k`` (module docstring).
    """

    layers: tuple[IntLayer, ...]
    input_scale: float
    scales: tuple[float, ...]
    binding: tuple[str, ...]

    def quantize_input(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Float inputs (any leading dims) -> int64 graded spikes ``clip(round(x input_scale), 0, input_max)``."""
        hi = self.layers[0].fmt.input_max
        x = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, torch.Tensor) else x.double())
        return torch.round(x * self.input_scale).clamp(0, hi).to(torch.int64)


def _quantize_layer(L: FloatLayer, x_max: float, timesteps: int, weight_bits: int, headroom: float,
                    f: LoihiFormat) -> tuple[IntLayer, float, str]:
    o = f"layer {L.name!r}"
    w, b = L.weight, L.bias
    m = float(np.abs(w).max()) if w.size else 0.0
    if m == 0.0:
        raise ValueError(f"{o}: all weights are zero; drop the layer or give it weights")
    q = 2 ** (f.weight_bits + 1 - weight_bits)  # grid of the even codes; 2 at full width
    w_max = 2 ** f.weight_bits - q
    rowsum = float(np.abs(w).reshape(w.shape[0], -1).sum(1).max()) * x_max  # per neuron (conv: per out channel)
    bmax = float(np.abs(b).max()) if b.size else 0.0
    half = 2 ** (f.state_bits - 1)
    caps = {f"|u| <= 2^{f.state_bits - 2} (no wrap)": half / 2 / rowsum,
            "bias mantissa/exponent": f.bias_mant_range[1] * 2 ** f.bias_exp_max / bmax if bmax else math.inf}
    if L.readout:
        caps["read-out v never saturates over T steps"] = (half - 2 ** f.vth_shift) / (timesteps * (rowsum + bmax))
    else:
        caps[f"threshold headroom {headroom:g}"] = half / headroom / L.theta
    k_cap = min(caps.values())
    exps = [0] if L.kind is SynapseKind.CONV else list(range(f.weight_exp_min, f.weight_exp_max + 1))
    scale = lambda e: w_max * 2.0 ** (e + f.act_shift) / m  # noqa: E731  (the k that fills the weight range)
    e = next((e for e in exps if scale(e) >= k_cap), exps[-1])
    k = min(k_cap, scale(e))
    binding = min(caps, key=caps.get) if k == k_cap else f"weight range ({weight_bits} bits)"
    w_int = (np.rint(k * w / 2.0 ** (e + f.act_shift) / q) * q).astype(np.int64)
    vth = f.vth_max if L.readout else int(round(k * L.theta / 2 ** f.vth_shift))
    kb = k * b
    lo, hi = f.bias_mant_range
    bexp = next((be for be in range(f.bias_exp_max + 1) if np.abs(np.rint(kb / 2 ** be)).max(initial=0) <= hi), None)
    if bexp is None:  # unreachable through the bias cap; kept for a clear message should rounding ever bite
        raise ValueError(f"{o}: bias overflows the {f.bias_mant_bits}-bit mantissa with exponent {f.bias_exp_max}")
    b_int = np.rint(kb / 2 ** bexp).astype(np.int64)
    bits_w = math.log2(max(1, int(np.abs(w_int).max())))
    if bits_w < MIN_BITS or (not L.readout and vth < 2 ** MIN_BITS):
        raise ValueError(f"{o}: the limit '{binding}' leaves {bits_w:.1f} bits of weights and vth={vth} (need >= "
                         f"{MIN_BITS} bits each); rescale the layer (smaller fan-in x weights or a larger threshold) "
                         "or use fewer timesteps for a read-out layer")
    layer = IntLayer(name=L.name, kind=L.kind, in_shape=L.in_shape, out_shape=L.out_shape,
                     weight=torch.from_numpy(w_int), weight_exp=e, bias_mant=torch.from_numpy(b_int), bias_exp=bexp,
                     du=f.decay_max, dv=int(round(2 ** f.decay_bits * L.leak)), vth=vth, readout=L.readout,
                     conv=L.conv, fmt=f)
    return layer, k, binding


def quantize_chain(layers: Sequence[FloatLayer], *, timesteps: int, input_max: float = 1.0,
                   input_levels: int | None = None, weight_bits: int | Sequence[int] | None = None,
                   threshold_headroom: float = 8.0, fmt: LoihiFormat = LOIHI) -> LoihiChain:
    """Per-layer Loihi integers for a float chain (scale rule in the module docstring).

    Args:
        layers: the float chain; only the last may be a read-out (``theta = inf``).
        timesteps: steps the chain will run (bounds a read-out layer's integration).
        input_max: the largest float input; inputs become ``x_int = round(x input_levels / input_max)``.
        input_levels: graded levels used, ``<= fmt.input_max`` (default all); fewer leave more range to weights.
        weight_bits: per layer (or one for all) weight precision in ``[2, fmt.weight_bits]`` (default full).
        threshold_headroom: thresholds of room below 0 that ``v`` keeps before it saturates (>= 1).
        fmt: the fixed-point formats.
    """
    if not layers:
        raise ValueError("quantize_chain: layers is empty; give at least one FloatLayer")
    if any(L.readout for L in layers[:-1]):
        raise ValueError("quantize_chain: only the last layer can be a read-out (theta = inf)")
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"quantize_chain: timesteps={timesteps!r} must be an int >= 1")
    if not input_max > 0:
        raise ValueError(f"quantize_chain: input_max={input_max} must be > 0 (inputs are unsigned graded spikes)")
    levels = fmt.input_max if input_levels is None else input_levels
    _int("input_levels", levels, 1, fmt.input_max, owner="quantize_chain")
    if not threshold_headroom >= 1:
        raise ValueError(f"quantize_chain: threshold_headroom={threshold_headroom} must be >= 1")
    bits = [fmt.weight_bits] * len(layers) if weight_bits is None else (
        [weight_bits] * len(layers) if isinstance(weight_bits, int) else list(weight_bits))
    if len(bits) != len(layers):
        raise ValueError(f"quantize_chain: weight_bits has {len(bits)} entries for {len(layers)} layers")
    for L, wb in zip(layers, bits):
        _int("weight_bits", wb, 2, fmt.weight_bits, owner=f"layer {L.name!r}")
    input_scale = levels / input_max
    out, scales, binding = [], [], []
    for i, L in enumerate(layers):
        if i == 0:  # W x = (W / input_scale) x_int: the first layer sees graded integers up to `levels`
            L = FloatLayer(name=L.name, kind=L.kind, in_shape=L.in_shape, out_shape=L.out_shape,
                           weight=L.weight / input_scale, bias=L.bias, leak=L.leak, theta=L.theta, conv=L.conv)
        x_max = float(levels) if i == 0 else 1.0
        layer, k, why = _quantize_layer(L, x_max, timesteps, bits[i], threshold_headroom, fmt)
        out.append(layer)
        scales.append(k)
        binding.append(why)
    return LoihiChain(layers=tuple(out), input_scale=input_scale, scales=tuple(scales), binding=tuple(binding))


def float_layers_from_model(model: nn.Sequential, *, input_shape: tuple[int, ...]) -> list[FloatLayer]:
    """The :class:`FloatLayer` chain of an snn ``nn.Sequential`` (``Linear`` / ``Conv2d`` [``Flatten``] then an
    IF / LIF / PLIF neuron with hard reset to 0, possibly ``TimeFolded``; a trailing synapse is the read-out).

    A LIF with time constant ``tau`` (steps) gives ``leak = 1 / tau`` and input gain ``g = 1 / tau`` when it
    divides its input by ``tau`` (``decay_input``), else 1; IF gives ``leak = 0``, ``g = 1`` (see
    :mod:`snn.neurons`). Every unsupported layer is named in one ValueError.
    """
    from snn.neurons import NeuronKind
    from snn.nir import neuron_spec_of
    from snn.runtime import TimeFolded

    if not isinstance(model, nn.Sequential):
        raise ValueError(f"float_layers_from_model takes an nn.Sequential, got {type(model).__name__}")
    shape, pending, out, problems = tuple(int(v) for v in input_shape), None, [], []
    for name, module in model.named_children():
        inner = module.inner if isinstance(module, TimeFolded) else module
        if isinstance(inner, (nn.Linear, nn.Conv2d)):
            if pending is not None:
                problems.append(f"layer {name!r}: two synapses in a row ({pending['name']!r} has no neurons)")
            w = inner.weight.detach().double().numpy()
            b = inner.bias.detach().double().numpy() if inner.bias is not None else np.zeros(w.shape[0])
            if isinstance(inner, nn.Conv2d):
                if inner.padding_mode != "zeros" or isinstance(inner.padding, str) or len(shape) != 3:
                    problems.append(f"layer {name!r}: Conv2d needs explicit zero padding and a (C, H, W) input")
                    continue
                geo = ConvGeometry(kernel=inner.kernel_size, stride=inner.stride, padding=inner.padding,
                                   dilation=inner.dilation, groups=inner.groups)
                out_shape = (w.shape[0], *geo.out_hw(shape[1], shape[2]))
                pending = dict(name=name, kind=SynapseKind.CONV, in_shape=shape, out_shape=out_shape, weight=w,
                               bias=b.reshape(-1, 1, 1), conv=geo)
            else:
                pending = dict(name=name, kind=SynapseKind.DENSE, in_shape=(math.prod(shape),),
                               out_shape=(w.shape[0],), weight=w, bias=b, conv=None)
            shape = pending["out_shape"]
        elif isinstance(inner, nn.Flatten):
            shape = (math.prod(shape),)
        else:
            spec = neuron_spec_of(module)
            if spec is None:
                problems.append(f"layer {name!r} ({type(inner).__name__}): not a synapse or an IF/LIF neuron")
                continue
            if pending is None:
                problems.append(f"layer {name!r}: neurons without a synapse before them")
                continue
            if spec.v_reset != 0.0:
                problems.append(f"layer {name!r}: v_reset={spec.v_reset}; Loihi's LIF resets (and leaks) to 0")
                continue
            if spec.kind is NeuronKind.IF:
                leak, g = 0.0, 1.0
            else:
                leak = 1.0 / spec.tau
                g = leak if spec.decay_input else 1.0
            out.append(FloatLayer(name=pending["name"], kind=pending["kind"], in_shape=pending["in_shape"],
                                  out_shape=pending["out_shape"], weight=g * pending["weight"],
                                  bias=g * pending["bias"], leak=leak, theta=float(spec.v_threshold),
                                  conv=pending["conv"]))
            pending = None
    if pending is not None:
        out.append(FloatLayer(name=pending["name"], kind=pending["kind"], in_shape=pending["in_shape"],
                              out_shape=pending["out_shape"], weight=pending["weight"], bias=pending["bias"], leak=0.0,
                              theta=math.inf, conv=pending["conv"]))
    if not out and not problems:
        problems.append("the model has no synapse")
    if problems:
        raise ValueError("cannot map the model to Loihi layers:\n  " + "\n  ".join(problems))
    return out
