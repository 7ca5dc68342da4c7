r"""Loihi fixed point for spiking chains: the formats and a bit-accurate integer simulator.

The SNN track's own statement of the arithmetic of Lava's bit-accurate Loihi models (lava-nc 0.10.0:
``PyLifModelBitAcc``, ``PyDenseModelBitAcc``, ``PyConvModelFixed``), so that :mod:`snn.quant` can run a
feed-forward chain at Loihi precision. The deployment target (``neurohw.lava``) states the same dynamics for its
own simulator; ``tests/snn/test_quant_loihi.py`` checks that both agree bit for bit.

Symbols (format fields of :class:`LoihiFormat`, defaults of :data:`LOIHI` in brackets): ``S`` state bits [24],
``A`` activation shift [6], ``D`` decay bits [12], ``P`` threshold shift [6], ``R`` register bits [32] (the numpy
int32 in which Lava does the arithmetic). A chain has ``L`` layers; layer ``l`` is a synapse (dense or conv)
followed by Loihi LIF neurons. Per timestep ``t = 0 .. T-1`` (``s_{-1}(t) = x(t)``, the unsigned graded input of
``input_bits`` bits; 0/1 spikes everywhere else):

    a_l(t) = 0                                                   t = 0 (every synapse delays by one step)
    a_l(t) = reg(shift(reg(W_l s_{l-1}(t-1)), weight_exp_l))     dense, t >= 1
             shift(y, e) = y << e (e >= 0), y >> -e (arithmetic, towards -inf) (e < 0)
    a_l(t) = wrapS(W_l * s_{l-1}(t-1))                           conv, t >= 1 (weight_exp_l = 0)
    y_l(t) = reg( reg(decay(u_l(t-1), 2^D - (du_l + 1))) + reg(a_l(t) << A) )
    u_l(t) = y - 2^S  if y > 2^(S-1);   y + 2^S  if y <= -2^(S-1);   y otherwise     (ONE correction, no modulo)
    v_l(t) = clip( reg(reg(decay(v_l(t-1), 2^D - dv_l)) + u_l(t) + (bias_mant_l << bias_exp_l)),
                   -(2^(S-1) - 1), 2^(S-1) - 1 )
    s_l(t) = [v_l(t) > vth_l << P];   v_l(t) <- 0 where s_l(t)                        (hard reset, u kept)

    decay(y, m) = sign(y) ((|y| m) >> D)      (exact, in 64 bits)
    reg(y)      = two's-complement wrap of y into R bits (numpy int32 overflow)
    wrapS(y)    = ((y + 2^(S-1)) mod 2^S) - 2^(S-1)

So ``u`` leaves the S-bit range (and ``v`` saturates) once ``|a << A|`` is large: the correction is applied once
and ``a << A`` itself wraps in R bits (a graded first layer gets there easily). A read-out layer (``readout``) is
an integrator whose final ``v`` is the output; its ``vth`` is the largest mantissa, and it still fires (and resets)
if ``v`` ever exceeds ``vth << P``, as on Loihi. ``du = 2^D - 1`` keeps no synaptic current (``u = a << A``),
``dv = 0`` is integrate-and-fire.

Ranges (Loihi): weights 8-bit: a matrix with both signs holds even values in ``[-256, 254]`` (Lava drops the lowest
bit of mixed-sign weights), a single-sign matrix ``[0, 255]`` or ``[-255, 0]``; ``weight_exp`` in ``[-8, 7]``;
``du``, ``dv`` 12-bit unsigned; ``vth`` 17-bit unsigned; ``bias_mant`` 13-bit signed; ``bias_exp`` 3-bit unsigned;
graded input 8-bit unsigned. Layouts are torch's: ``(C, H, W)`` activations, ``(out, in)`` dense and
``(out, in / groups, kH, kW)`` conv weights, spikes flattened in that order.

Reference: Davies et al., "Loihi: a neuromorphic
manycore processor with on-chip learning", IEEE Micro 2018; lava-nc 0.10.0 ``lava/proc/{lif,dense,conv}``.

The quantizer from a float chain to these integers is :mod:`snn.quant.loihi_chain`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LoihiFormat", "LOIHI", "SynapseKind", "ConvGeometry", "IntLayer", "ChainRun", "lif_step", "simulate_chain"]

def _int(name: str, value, lo: int | None = None, hi: int | None = None, *, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{owner}: {name}={value!r} must be an int")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{owner}: {name}={value} is outside [{lo}, {hi}]")
    return int(value)


def _tensor(a) -> torch.Tensor:
    return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


@dataclass(frozen=True)
class LoihiFormat:
    """Bit widths of Loihi's fixed-point neuron and synapse (module docstring for the arithmetic).

    Attributes:
        weight_bits: synaptic weight width (8); mixed-sign matrices use even values (the lowest bit is dropped).
        weight_exp_min, weight_exp_max: range of the shared weight exponent ([-8, 7]).
        state_bits: width S of the current ``u`` and membrane ``v`` (24, signed).
        act_shift: A, the left shift of the synaptic input into ``u`` (6).
        vth_bits: width of the unsigned threshold mantissa (17); the threshold is ``vth << vth_shift``.
        vth_shift: P (6).
        decay_bits: D, the width of the unsigned decays ``du``, ``dv`` (12; decay factors ``m / 2^D``).
        bias_mant_bits: width of the signed bias mantissa (13); ``bias_exp_bits`` of its unsigned exponent (3).
        input_bits: width of the unsigned graded input spikes (8).
        register_bits: R, the width of the registers the arithmetic wraps in (32: Lava's numpy int32).
    """

    weight_bits: int = 8
    weight_exp_min: int = -8
    weight_exp_max: int = 7
    state_bits: int = 24
    act_shift: int = 6
    vth_bits: int = 17
    vth_shift: int = 6
    decay_bits: int = 12
    bias_mant_bits: int = 13
    bias_exp_bits: int = 3
    input_bits: int = 8
    register_bits: int = 32

    def __post_init__(self) -> None:
        o = "LoihiFormat"
        _int("weight_bits", self.weight_bits, 2, 16, owner=o)
        _int("weight_exp_min", self.weight_exp_min, -31, 0, owner=o)
        _int("weight_exp_max", self.weight_exp_max, 0, 31, owner=o)
        _int("state_bits", self.state_bits, 8, 48, owner=o)
        for f in ("act_shift", "vth_shift"):
            _int(f, getattr(self, f), 0, self.state_bits - 2, owner=o)
        _int("vth_bits", self.vth_bits, 1, self.state_bits - 1 - self.vth_shift, owner=o)
        _int("decay_bits", self.decay_bits, 1, 16, owner=o)
        _int("bias_mant_bits", self.bias_mant_bits, 2, self.state_bits, owner=o)
        _int("bias_exp_bits", self.bias_exp_bits, 0, 5, owner=o)
        _int("input_bits", self.input_bits, 1, 16, owner=o)
        _int("register_bits", self.register_bits, self.state_bits + 2, 62 - self.decay_bits, owner=o)

    @property
    def weight_mixed(self) -> tuple[int, int]:
        """Range of a weight matrix with both signs (even values only)."""
        return -(2 ** self.weight_bits), 2 ** self.weight_bits - 2

    @property
    def weight_single(self) -> int:
        """Largest ``|w|`` of a single-sign matrix."""
        return 2 ** self.weight_bits - 1

    @property
    def decay_max(self) -> int:
        return 2 ** self.decay_bits - 1

    @property
    def vth_max(self) -> int:
        return 2 ** self.vth_bits - 1

    @property
    def bias_mant_range(self) -> tuple[int, int]:
        return -(2 ** (self.bias_mant_bits - 1)), 2 ** (self.bias_mant_bits - 1) - 1

    @property
    def bias_exp_max(self) -> int:
        return 2 ** self.bias_exp_bits - 1

    @property
    def uv_max(self) -> int:
        """``|v| <= 2^(S-1) - 1``."""
        return 2 ** (self.state_bits - 1) - 1

    @property
    def input_max(self) -> int:
        return 2 ** self.input_bits - 1


LOIHI = LoihiFormat()


class SynapseKind(enum.Enum):
    DENSE = "dense"
    CONV = "conv"


def _pair(v) -> tuple[int, int]:
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in t):
        raise ValueError(f"ConvGeometry: {v!r} must be an int or a pair of ints")
    return int(t[0]), int(t[1])


@dataclass(frozen=True)
class ConvGeometry:
    """2-d convolution geometry (torch semantics, zero padding); ints or ``(h, w)`` pairs."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        for f, lo in (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
            p = _pair(getattr(self, f))
            if min(p) < lo:
                raise ValueError(f"ConvGeometry: {f}={p} must be >= {lo}")
            object.__setattr__(self, f, p)
        _int("groups", self.groups, 1, None, owner="ConvGeometry")

    def out_hw(self, h: int, w: int) -> tuple[int, int]:
        """``floor((n + 2 p - d (k - 1) - 1) / s) + 1`` per dimension."""
        return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1 for n, k, s, p, d in
                     zip((h, w), self.kernel, self.stride, self.padding, self.dilation))


@dataclass(frozen=True, eq=False)
class IntLayer:
    """One synapse + Loihi LIF population in integers, validated against ``fmt`` at construction.

    Attributes:
        name: used in every error message.
        kind: :class:`SynapseKind` (or ``"dense"`` / ``"conv"``).
        in_shape, out_shape: per-sample shapes, ``(n,)`` or ``(C, H, W)``.
        weight: int64 tensor, ``(out, in)`` (dense) or ``(out, in / groups, kH, kW)`` (conv).
        weight_exp: shared weight exponent (0 for conv: Lava's fixed-point Conv ignores it).
        bias_mant: per-neuron bias mantissa (broadcast to ``out_shape``); ``bias_exp`` its shared exponent.
        du, dv: current and voltage decays (``2^D - 1`` / 0: no current memory / no leak).
        vth: threshold mantissa; the threshold is ``vth << P``.
        readout: integrator read-out (last layer only; ``vth`` must be ``fmt.vth_max``).
        conv: the geometry of a conv layer.
        fmt: the bit widths this layer is held to (default :data:`LOIHI`).
    """

    name: str
    kind: SynapseKind
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: torch.Tensor
    weight_exp: int
    bias_mant: torch.Tensor
    bias_exp: int
    du: int
    dv: int
    vth: int
    readout: bool = False
    conv: ConvGeometry | None = None
    fmt: LoihiFormat = LOIHI

    def __post_init__(self) -> None:
        o = f"layer {self.name!r}"
        try:
            kind = SynapseKind(self.kind)
        except ValueError:
            raise ValueError(f"{o}: kind={self.kind!r}; use 'dense' or 'conv'") from None
        set_ = lambda f, v: object.__setattr__(self, f, v)  # noqa: E731
        set_("kind", kind)
        set_("in_shape", tuple(int(v) for v in self.in_shape))
        set_("out_shape", tuple(int(v) for v in self.out_shape))
        w = _tensor(self.weight)
        if w.is_floating_point() or w.is_complex() or w.dtype == torch.bool:
            raise ValueError(f"{o}: weight has dtype {w.dtype}; give integer weights (quantize_chain makes them)")
        set_("weight", w.to(torch.int64))
        b = _tensor(self.bias_mant)
        if b.is_floating_point():
            raise ValueError(f"{o}: bias_mant has dtype {b.dtype}; give integer mantissas")
        try:
            set_("bias_mant", torch.broadcast_to(b.to(torch.int64), self.out_shape).clone())
        except RuntimeError:
            raise ValueError(f"{o}: bias_mant of shape {tuple(b.shape)} does not broadcast to out_shape "
                             f"{self.out_shape}") from None
        self._check_shapes(o)
        self._check_ranges(o)

    def _check_shapes(self, o: str) -> None:
        w = self.weight
        if self.kind is SynapseKind.DENSE:
            if self.conv is not None:
                raise ValueError(f"{o}: a dense layer takes no conv geometry; set conv=None")
            if w.dim() != 2 or w.shape[1] != math.prod(self.in_shape) or w.shape[0] != math.prod(self.out_shape):
                raise ValueError(f"{o}: weight shape {tuple(w.shape)} does not map in_shape {self.in_shape} to "
                                 f"out_shape {self.out_shape}; dense weights are (out, in)")
            return
        g = self.conv
        if g is None:
            raise ValueError(f"{o}: a conv layer needs conv=ConvGeometry(...)")
        if len(self.in_shape) != 3 or w.dim() != 4:
            raise ValueError(f"{o}: conv needs in_shape (C, H, W) and weight (out, in / groups, kH, kW); got "
                             f"{self.in_shape} and {tuple(w.shape)}")
        c, h, wd = self.in_shape
        if c % g.groups or w.shape[0] % g.groups or w.shape[1] != c // g.groups or tuple(w.shape[2:]) != g.kernel:
            raise ValueError(f"{o}: weight shape {tuple(w.shape)} does not fit in_shape {self.in_shape} with "
                             f"kernel {g.kernel} and groups {g.groups}")
        expect = (int(w.shape[0]), *g.out_hw(h, wd))
        if self.out_shape != expect:
            raise ValueError(f"{o}: out_shape {self.out_shape}; the geometry gives {expect}")

    def _check_ranges(self, o: str) -> None:
        f, w = self.fmt, self.weight
        if w.numel() and int(w.min()) < 0 < int(w.max()):
            lo, hi = f.weight_mixed
            if int(w.min()) < lo or int(w.max()) > hi or bool((w % 2 != 0).any()):
                raise ValueError(f"{o}: weight has both signs, values in [{int(w.min())}, {int(w.max())}]; mixed-sign "
                                 f"{f.weight_bits}-bit weights must be even and in [{lo}, {hi}] (Lava drops their "
                                 "lowest bit); requantize the layer")
        elif w.numel() and int(w.abs().max()) > f.weight_single:
            raise ValueError(f"{o}: weight has |values| up to {int(w.abs().max())}; single-sign {f.weight_bits}-bit "
                             f"weights are in [0, {f.weight_single}] or [-{f.weight_single}, 0]")
        _int("weight_exp", self.weight_exp, f.weight_exp_min, f.weight_exp_max, owner=o)
        if self.kind is SynapseKind.CONV and self.weight_exp != 0:
            raise ValueError(f"{o}: weight_exp={self.weight_exp} on a conv layer; Lava's fixed-point Conv ignores it, "
                             "use 0 and fold the scale into the weights")
        lo, hi = f.bias_mant_range
        if self.bias_mant.numel() and (int(self.bias_mant.min()) < lo or int(self.bias_mant.max()) > hi):
            raise ValueError(f"{o}: bias_mant in [{int(self.bias_mant.min())}, {int(self.bias_mant.max())}] is outside "
                             f"[{lo}, {hi}] ({f.bias_mant_bits}-bit signed); raise bias_exp")
        _int("bias_exp", self.bias_exp, 0, f.bias_exp_max, owner=o)
        _int("du", self.du, 0, f.decay_max, owner=o)
        _int("dv", self.dv, 0, f.decay_max, owner=o)
        _int("vth", self.vth, 0, f.vth_max, owner=o)
        if self.readout and self.vth != f.vth_max:
            raise ValueError(f"{o}: vth={self.vth} on a read-out layer; use vth={f.vth_max} (the maximum) so that "
                             "it integrates instead of firing")

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    def synapse(self, s: torch.Tensor) -> torch.Tensor:
        """``a`` of the module docstring for inputs ``s`` ``(B, *in_shape)`` (int64) -> ``(B, n_out)`` int64."""
        f = self.fmt
        B = s.shape[0]
        if self.kind is SynapseKind.DENSE:
            y = s.reshape(B, -1) @ self.weight.T  # (B, in) x (in, out) -> (B, out), exact in int64
            y = _reg(y, f)
            e = self.weight_exp
            return _reg(y << e, f) if e >= 0 else y >> -e
        g = self.conv
        y = F.conv2d(s.reshape(B, *self.in_shape), self.weight, stride=g.stride, padding=g.padding,
                     dilation=g.dilation, groups=g.groups)  # (B, C, H, W) -> (B, out, H', W'), exact in int64
        half = 2 ** (f.state_bits - 1)
        return torch.remainder(y.reshape(B, -1) + half, 2 * half) - half  # wrapS


def _reg(y: torch.Tensor, f: LoihiFormat) -> torch.Tensor:
    """Two's-complement wrap of int64 ``y`` into ``f.register_bits`` bits."""
    half = 2 ** (f.register_bits - 1)
    return torch.bitwise_and(y + half, 2 * half - 1) - half


def _decay(y: torch.Tensor, m: int, f: LoihiFormat) -> torch.Tensor:
    """``sign(y) ((|y| m) >> D)``, exact in int64."""
    return torch.sign(y) * ((y.abs() * m) >> f.decay_bits)


def lif_step(layer: IntLayer, u: torch.Tensor, v: torch.Tensor, a: torch.Tensor,
             bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One timestep of Loihi's LIF (module docstring): ``(u, v, s)`` from the previous ``u, v`` and input ``a``.

    The inner ``reg`` calls mirror Lava's int32 steps one for one; wrapping is compatible with addition, so only
    the outer one of each sum changes a value (and the tests cannot tell the inner ones from none).
    """
    f = layer.fmt
    half = 2 ** (f.state_bits - 1)
    y = _reg(_reg(_decay(u, 2 ** f.decay_bits - (layer.du + 1), f), f) + _reg(a << f.act_shift, f), f)
    u = torch.where(y > half, y - 2 * half, torch.where(y <= -half, y + 2 * half, y))  # one correction
    v = _reg(_reg(_decay(v, 2 ** f.decay_bits - layer.dv, f), f) + u + bias, f).clamp(-f.uv_max, f.uv_max)
    s = v > (layer.vth << f.vth_shift)
    return u, torch.where(s, torch.zeros_like(v), v), s


@dataclass(frozen=True, eq=False)
class ChainRun:
    """What :func:`simulate_chain` returns for ``B`` samples over ``T`` steps.

    Attributes:
        spikes: per layer, ``(T, B, n_out)`` bool spike trains.
        v: per layer, ``(B, n_out)`` int64 membrane after the last step (after any reset).
        u: per layer, ``(B, n_out)`` int64 current after the last step.
    """

    spikes: list[torch.Tensor]
    v: list[torch.Tensor]
    u: list[torch.Tensor]

    @property
    def spike_counts(self) -> list[torch.Tensor]:
        """Per layer, ``(B, n_out)`` int64 spikes over the run."""
        return [s.sum(0, dtype=torch.int64) for s in self.spikes]


def _check_chain(layers: Sequence[IntLayer]) -> None:
    if not layers:
        raise ValueError("simulate_chain: layers is empty; give at least one IntLayer")
    for i, layer in enumerate(layers):
        if not isinstance(layer, IntLayer):
            raise ValueError(f"simulate_chain: layers[{i}] is a {type(layer).__name__}; give IntLayer objects")
        if i and math.prod(layer.in_shape) != layers[i - 1].n_out:
            raise ValueError(f"layer {layer.name!r}: in_shape {layer.in_shape} does not match the previous layer's "
                             f"out_shape {layers[i - 1].out_shape}")
        if layer.readout and i != len(layers) - 1:
            raise ValueError(f"layer {layer.name!r}: readout=True; only the last layer can be a read-out")


@torch.no_grad()
def simulate_chain(layers: Sequence[IntLayer], x_int: torch.Tensor | np.ndarray, timesteps: int) -> ChainRun:
    """Run a chain of :class:`IntLayer` (module docstring, bit-accurate) on graded integer inputs ``x_int``:
    ``(B, *in_shape)`` presented at every step or ``(B, T, *in_shape)`` one frame per step, unsigned,
    ``layers[0].fmt.input_bits`` bits. All state is int64; the wraps of the format's registers are applied where
    Lava's int32 arithmetic makes them."""
    _check_chain(layers)
    if isinstance(timesteps, bool) or not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"simulate_chain: timesteps={timesteps!r} must be an int >= 1")
    x = _tensor(x_int)
    shape, hi = layers[0].in_shape, layers[0].fmt.input_max
    per_step = x.dim() == len(shape) + 2
    if tuple(x.shape[2 if per_step else 1:]) != shape or (per_step and x.shape[1] != timesteps):
        raise ValueError(f"simulate_chain: x_int has shape {tuple(x.shape)}; expected (B, *{shape}) or "
                         f"(B, {timesteps}, *{shape})")
    if x.is_floating_point() or x.dtype == torch.bool or (x.numel() and (int(x.min()) < 0 or int(x.max()) > hi)):
        raise ValueError(f"simulate_chain: x_int must be integers in [0, {hi}] (LoihiChain.quantize_input)")
    x = x.to(torch.int64)
    B = x.shape[0]
    u = [torch.zeros(B, L.n_out, dtype=torch.int64) for L in layers]
    v = [torch.zeros(B, L.n_out, dtype=torch.int64) for L in layers]
    bias = [L.bias_mant.reshape(-1) << L.bias_exp for L in layers]
    trains = [torch.zeros(timesteps, B, L.n_out, dtype=torch.bool) for L in layers]
    prev: list[torch.Tensor] | None = None  # the previous step's input and spikes: [x(t-1), s_0(t-1), ...]
    for t in range(timesteps):
        xt = x[:, t] if per_step else x
        now = [xt]
        for i, L in enumerate(layers):
            a = L.synapse(prev[i].to(torch.int64)) if prev is not None else torch.zeros_like(u[i])
            u[i], v[i], s = lif_step(L, u[i], v[i], a, bias[i])
            trains[i][t] = s
            now.append(s)
        prev = now
    return ChainRun(spikes=trains, v=v, u=u)
