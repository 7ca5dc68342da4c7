r"""A spiking network in Loihi fixed point: the one description that the exporter writes, the torch simulator
(:mod:`neurohw.lava.sim`) and the Lava sidecar (:mod:`neurohw.lava.sidecar`) run, and the resource mapping
(:mod:`neurohw.lava.mapping`) places on cores.

The network is a chain of ``L`` layers. Layer ``l`` is a synapse (``dense`` or ``conv``) followed by a population
of Loihi LIF neurons (Lava's ``LIF`` process, bit-accurate model ``PyLifModelBitAcc``). All quantities are
integers. Per timestep ``t`` (``t = 0 .. T-1``; ``s_{-1}(t) = x(t)`` is the input, an unsigned integer "graded
spike" of ``input_bits`` bits, 0/1 spikes everywhere else):

    a_l(t)  = 0                                                          t = 0  (each synapse delays one step)
    a_l(t)  = i32( shift(i32(W_l s_{l-1}(t-1)), weight_exp_l) )          dense, t >= 1
              shift(y, e) = y << e (e >= 0) or y >> -e (arithmetic, rounds towards -inf)
    a_l(t)  = wrap24(W_l * s_{l-1}(t-1))                                 conv, t >= 1 (weight_exp must be 0: Lava's
              fixed-point Conv ignores it; the sum is WRAPPED, not clamped, into [-2^23, 2^23))
    y_l(t)  = i32( decay(u_l(t-1), 4096 - (du_l + 1)) + i32(a_l(t) << 6) )
    u_l(t)  = y_l(t) - 2^24 if y_l(t) > 2^23;  y_l(t) + 2^24 if y_l(t) <= -2^23;  y_l(t) otherwise
    v_l(t)  = clip( decay(v_l(t-1), 4096 - dv_l) + u_l(t) + (bias_mant_l << bias_exp_l), -2^23 + 1, 2^23 - 1 )
    s_l(t)  = v_l(t) > (vth_l << 6);   v_l(t) = 0 where s_l(t)         (hard reset)

with ``decay(y, m) = sign(y) * ((|y| * m) >> 12)`` (exact, in 64 bits), ``i32`` numpy's int32 arithmetic (two's
complement wrap modulo 2^32), ``wrap24(y) = ((y + 2^23) mod 2^24) - 2^23``, exactly as lava-nc 0.10.0's
``PyLifModelBitAcc``, ``PyDenseModelBitAcc`` and ``PyConvModelFixed`` compute them (checked bit for bit, spikes
and ``v``, against Lava runs of random dense/conv chains and of overflowing layers; hand-computed cases in
``tests/neurohw/lava/test_sidecar.py``). Notes, all measured on Lava, not just read off its source:

* ``u`` gets ONE conditional +-2^24 correction, not a modulo: it stays in ``(-2^23, 2^23]`` only while
  ``|a_l(t)| <= 2^18``; beyond that (easily reached by a graded first layer: 784 inputs x 255 x 254 > 2^25, where
  ``a << 6`` also wraps in int32) ``u`` leaves 24 bits, is kept as it is (int32) and decays from there, and ``v``
  saturates. A simulator must reproduce these int32 steps, not a 24-bit modulo.
* ``W s`` itself never wraps in practice (it would need a fan-in of ~32768 8-bit graded inputs).
* No 16-bit limit anywhere on ``a``: LIF's ``a_in`` is typed int16 but numpy promotes it to the int32 message,
  and Dense's ``a_out`` precision 16 is not enforced. ``v``'s int32 sum cannot overflow (``|u| < 2^31 - 2^24``).
* ``num_message_bits`` only switches graded (``> 0``: the payload is used as it is, not cut to that many bits) and
  binary (``0``: any non-zero input counts 1).
* Dense weights are first clipped and cut as Lava does: mixed signs (the sign mode of the whole matrix)
  ``clip(w, -256, 255)`` then ``(w >> 1) << 1`` (so -3 -> -4, 255 -> 254); excitatory ``[0, 255]``; inhibitory
  ``[-255, 0]``. Conv weights are used exactly as given (no clipping, no bit dropped).
* ``du = 4095`` makes ``u`` the input of this step only (no synaptic current memory), ``dv = 0`` an
  integrate-and-fire neuron.
* A layer with ``readout=True`` is an integrator read-out (its final ``v`` is the network's output, as a
  classifier's logits) with ``vth`` at its 17-bit maximum, so it fires only when ``v > (2^17 - 1) << 6 = 8388544``,
  i.e. within 63 of the ``v`` ceiling ``2^23 - 1``; it does fire and reset there (in Lava too), so a simulator
  must apply the same threshold rule to it.

Parameter ranges (Loihi): weights 8-bit (a layer with weights of both signs: even values in ``[-256, 254]``,
since Lava's Dense drops the lowest bit of mixed-sign weights; single sign: ``[0, 255]`` or ``[-255, 0]``; conv
weights are held to the same rule so that they fit Loihi's synapses), ``weight_exp`` in ``[-8, 7]``, ``du, dv``
12-bit unsigned, ``vth`` 17-bit unsigned, ``bias_mant`` 13-bit signed, ``bias_exp`` 3-bit unsigned, ``u, v`` 24-bit.
The graded input is unsigned ``input_bits``-bit.

Layouts are torch's: inputs and conv activations ``(C, H, W)``, conv weights ``(out, in, kH, kW)``, dense
weights ``(out, in)``; spikes of a layer are reported flattened in that order.

Files (``save`` / ``load``; versioned, no pickle): ``network.json`` (everything but arrays) and
``weights.npz`` (``l{i}.weight``, ``l{i}.bias_mant``; int32).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from neurohw.io import atomic_write_json

__all__ = ["FORMAT", "VERSION", "LIMITS", "ConvGeometry", "LoihiLayer", "LoihiNetwork"]

FORMAT = "neuromfm-loihi-network"
VERSION = 1

# Ranges of the fixed-point parameters (inclusive), from lava-nc 0.10.0's bit-accurate process models.
LIMITS = {
    "weight_mixed": (-256, 254),
    "weight_exp": (-8, 7),
    "du": (0, 4095),
    "dv": (0, 4095),
    "vth": (0, 2 ** 17 - 1),
    "bias_mant": (-(2 ** 12), 2 ** 12 - 1),
    "bias_exp": (0, 7),
}
UV_MAX = 2 ** 23 - 1  # |u|, |v| < 2^23 (24-bit signed state)


@dataclass(frozen=True)
class ConvGeometry:
    """2-d convolution geometry (torch semantics, zero padding)."""

    kernel: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        for f in ("kernel", "stride", "padding", "dilation"):
            object.__setattr__(self, f, tuple(int(v) for v in getattr(self, f)))


@dataclass
class LoihiLayer:
    """One synapse + LIF population. Arrays are int32 numpy; see the module docstring for the maths.

    Attributes:
        name: the layer's name (from the source network), used in every message and report.
        kind: ``"dense"`` or ``"conv"``.
        in_shape, out_shape: per-sample shapes, ``(n,)`` or ``(C, H, W)``.
        weight: ``(out, in)`` or ``(out, in / groups, kH, kW)`` 8-bit mantissas.
        weight_exp: shared weight exponent (0 for conv).
        bias_mant: per-neuron bias mantissa, ``out_shape`` (13-bit signed); ``bias_exp`` its shared exponent.
        du, dv: current and voltage decays (12-bit; 4095 / 0 = integrate-and-fire without current memory).
        vth: threshold mantissa (the threshold is ``vth << 6``).
        readout: never fires; its final ``v`` is the output.
        conv: geometry of a conv layer.
    """

    name: str
    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    weight: np.ndarray
    weight_exp: int
    bias_mant: np.ndarray
    bias_exp: int
    du: int
    dv: int
    vth: int
    readout: bool = False
    conv: ConvGeometry | None = None

    def __post_init__(self) -> None:
        self.in_shape, self.out_shape = tuple(int(v) for v in self.in_shape), tuple(int(v) for v in self.out_shape)
        self.weight = np.asarray(self.weight, dtype=np.int32)
        self.bias_mant = np.broadcast_to(np.asarray(self.bias_mant, dtype=np.int32), self.out_shape).copy()
        if self.kind not in ("dense", "conv"):
            raise ValueError(f"layer {self.name!r}: kind={self.kind!r}; use 'dense' or 'conv'")
        if (self.kind == "conv") != (self.conv is not None):
            raise ValueError(f"layer {self.name!r}: a conv layer needs its ConvGeometry, a dense layer none")

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    @property
    def n_out(self) -> int:
        return math.prod(self.out_shape)

    @property
    def fan_in(self) -> int:
        """Synapses into one neuron: ``in`` (dense) or ``in / groups * kH * kW`` (conv; border neurons have fewer)."""
        return int(math.prod(self.weight.shape[1:]))

    def violations(self) -> list[str]:
        """Every parameter outside its Loihi range, as ``"field: value outside [lo, hi]"``; empty when valid."""
        out = []

        def check(what: str, values, key: str) -> None:
            lo, hi = LIMITS[key]
            v = np.asarray(values)
            if v.size and (v.min() < lo or v.max() > hi):
                out.append(f"{what}: values in [{v.min()}, {v.max()}] outside [{lo}, {hi}] ({key})")

        w = self.weight
        if w.size and w.min() < 0 < w.max():
            check("weight", w, "weight_mixed")
            if np.any(w % 2):
                out.append("weight: mixed-sign 8-bit weights must be even (Lava drops their lowest bit)")
        elif w.size and np.abs(w).max() > 255:
            out.append(f"weight: |values| up to {np.abs(w).max()} outside [0, 255] (single-sign 8-bit weights)")
        check("weight_exp", self.weight_exp, "weight_exp")
        if self.kind == "conv" and self.weight_exp != 0:
            out.append(f"weight_exp: {self.weight_exp} on a conv layer (Lava's fixed-point Conv ignores it; use 0)")
        for f in ("du", "dv", "vth", "bias_exp"):
            check(f, getattr(self, f), f)
        check("bias_mant", self.bias_mant, "bias_mant")
        if self.readout and self.vth != LIMITS["vth"][1]:
            out.append(f"vth: {self.vth} on a read-out layer (use the maximum, {LIMITS['vth'][1]}, so it does not fire)")
        return out

    def meta(self) -> dict:
        """Everything but the arrays, JSON-able."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("weight", "bias_mant", "conv")}
        d["conv"] = asdict(self.conv) if self.conv else None
        return d


@dataclass
class LoihiNetwork:
    """A chain of :class:`LoihiLayer` fed by an unsigned graded input of ``input_bits`` bits and ``input_shape``.

    ``input_scale``: the float input equals ``x_int / input_scale`` (the exporter's quantization of the input);
    ``source``: free-form provenance (file, quantization errors), kept in ``network.json``.
    """

    input_shape: tuple[int, ...]
    layers: list[LoihiLayer]
    input_bits: int = 8
    input_scale: float = 1.0
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.input_shape = tuple(int(v) for v in self.input_shape)
        if not self.layers:
            raise ValueError("LoihiNetwork needs at least one layer")
        shape = self.input_shape
        for layer in self.layers:
            if math.prod(layer.in_shape) != math.prod(shape):
                raise ValueError(f"layer {layer.name!r}: input shape {layer.in_shape} does not match the previous "
                                 f"output {shape}")
            shape = layer.out_shape
        if any(layer.readout for layer in self.layers[:-1]):
            raise ValueError("only the last layer can be a read-out layer")

    @property
    def readout(self) -> bool:
        return self.layers[-1].readout

    def violations(self) -> list[str]:
        """``"layer NAME: problem"`` for every out-of-range parameter; empty when the network is valid."""
        return [f"layer {layer.name!r}: {p}" for layer in self.layers for p in layer.violations()]

    def quantize_input(self, x: np.ndarray) -> np.ndarray:
        """Float inputs ``(B, *input_shape)`` (or ``(B, T, *input_shape)``) -> int32 graded spikes in range."""
        hi = 2 ** self.input_bits - 1
        return np.clip(np.rint(np.asarray(x, dtype=np.float64) * self.input_scale), 0, hi).astype(np.int32)

    # ---------------------------------------------------------------------------------------------- files
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``network.json`` + ``weights.npz`` into ``directory`` (each file replaced atomically)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        arrays = {}
        for i, layer in enumerate(self.layers):
            arrays[f"l{i}.weight"] = layer.weight.astype(np.int32)
            arrays[f"l{i}.bias_mant"] = layer.bias_mant.astype(np.int32)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".weights.npz.tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, d / "weights.npz")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_write_json(d / "network.json", {
            "format": FORMAT, "version": VERSION, "input_shape": list(self.input_shape), "input_bits": self.input_bits,
            "input_scale": self.input_scale, "source": self.source, "layers": [layer.meta() for layer in self.layers]})
        return d

    @classmethod
    def load(cls, directory: str | os.PathLike) -> LoihiNetwork:
        d = Path(directory)
        meta_path = d / "network.json"
        if not meta_path.is_file() or not (d / "weights.npz").is_file():
            raise FileNotFoundError(f"{d}: not a saved LoihiNetwork (needs network.json and weights.npz; "
                                    "write one with LoihiNetwork.save or `python -m neurohw.lava deploy NIR --timesteps T --save DIR`)")
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}; this code "
                             f"reads {FORMAT!r} version {VERSION}")
        with np.load(d / "weights.npz", allow_pickle=False) as z:
            layers = []
            for i, m in enumerate(meta["layers"]):
                conv = ConvGeometry(**m.pop("conv")) if m.get("conv") else None
                m.pop("conv", None)
                layers.append(LoihiLayer(**m, conv=conv, weight=z[f"l{i}.weight"], bias_mant=z[f"l{i}.bias_mant"]))
        return cls(input_shape=tuple(meta["input_shape"]), layers=layers, input_bits=meta["input_bits"],
                   input_scale=meta["input_scale"], source=meta.get("source", {}))
