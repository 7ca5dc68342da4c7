r"""Weight quantizers at a chosen granularity: per tensor, per output channel, or per group of inputs.

A weight ``w`` is viewed as a matrix ``(R, C)``: ``R = w.shape[0]`` rows (output channels of a Linear
weight ``(out, in)``, tokens of an Embedding ``(num, dim)``) and ``C = w.numel() / R`` columns (a 1-D
tensor is one row). The columns of each row are cut into ``G = ceil(C / g)`` groups of ``g = group_size``
(the last group may be shorter); ``granularity="channel"`` is one group per row (``g = C``) and
``"tensor"`` one group for everything. Every group ``k`` gets its own scale ``s_k`` (and zero point
``z_k``). For ``b`` bits:

Symmetric (signed codes; the conventions of :mod:`quant.uniform`, which computes it)::

    q_max = 2^(b-1) - 1,     s_k = max_{i in k} |w_i| / q_max
    q_i   = clamp(round(w_i / s_k), -q_max, q_max),          w_hat_i = s_k * q_i

Asymmetric (affine over the group's ``[lo_k, hi_k] = [min w, max w]``; unsigned codes)::

    s_k = (hi_k - lo_k) / (2^b - 1),     z_k = round(-lo_k / s_k)   (an integer; it may lie outside the
                                                                     code range when 0 is not in [lo, hi])
    q_i = clamp(round(w_i / s_k) + z_k, 0, 2^b - 1),         w_hat_i = s_k * (q_i - z_k)

(With ``b = 2`` the symmetric grid has 3 levels ``{-s, 0, s}``, the affine one 4.)

Rounding to nearest bounds the error of every ``w_i`` by ``|w_i - w_hat_i| <= s_k / 2`` in both cases (for
the affine grid ``-z_k s_k`` is within ``s_k / 2`` of ``lo_k``, so the grid's ends are within ``s_k / 2`` of
``lo_k`` and ``hi_k``). Degenerate groups: an all-zero group gets ``s = 1`` (codes 0); a constant
asymmetric group ``c`` gets ``s = |c| / (2^b - 1)`` so that it is reproduced exactly.

Symbols: ``w`` real weight; ``w_hat`` dequantized weight; ``b`` bits; ``g`` group size; ``s`` scale (step);
``z`` zero point; ``q`` integer code; ``R, C, G`` rows, columns, groups per row.
Reference: Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only
Inference", CVPR 2018 (affine scheme); Frantar et al., GPTQ, ICLR 2023 (grouped weight scales).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from enum import Enum

import torch

from quant.uniform import dequantize as _dequantize_sym
from quant.uniform import quantize as _quantize_sym
from quant.uniform import scale_for

__all__ = ["Granularity", "QuantSpec", "QuantizedTensor", "WEIGHT_BITS", "quantize_tensor", "fake_quant"]

WEIGHT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
"""The supported weight bit widths."""


class Granularity(str, Enum):
    """What one scale covers. A ``str`` enum: ``Granularity.GROUP == "group"``."""

    TENSOR = "tensor"
    CHANNEL = "channel"
    GROUP = "group"


@dataclass(frozen=True)
class QuantSpec:
    """How one weight tensor is quantized (see the module docstring for the maths).

    Attributes:
        bits: code width ``b`` in bits, one of :data:`WEIGHT_BITS` (2..8).
        symmetric: signed codes with no zero point (True) or affine min/max with an integer zero point (False).
        granularity: ``"tensor"``, ``"channel"`` (one scale per row, i.e. output channel) or ``"group"``
            (``group_size`` consecutive inputs of a row, i.e. along the last dim of a Linear weight ``(out, in)``).
        group_size: inputs per group ``g`` (only used by ``"group"``); a shorter last group is allowed.
    """

    bits: int
    symmetric: bool = True
    granularity: Granularity = Granularity.CHANNEL
    group_size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in WEIGHT_BITS:
            raise ValueError(f"QuantSpec.bits={self.bits!r} is not supported; use one of {list(WEIGHT_BITS)}")
        if not isinstance(self.symmetric, bool):
            raise ValueError(f"QuantSpec.symmetric={self.symmetric!r} must be a bool (True: signed codes, "
                             "False: affine with a zero point)")
        try:
            object.__setattr__(self, "granularity", Granularity(self.granularity))
        except ValueError:
            raise ValueError(f"QuantSpec.granularity={self.granularity!r} is not supported; use one of "
                             f"{[g.value for g in Granularity]}") from None
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
            raise ValueError(f"QuantSpec.group_size={self.group_size!r} must be a positive int "
                             "(inputs per group, e.g. 32, 64 or 128)")

    def to_dict(self) -> dict:
        """A JSON-ready dict; :meth:`from_dict` inverts it."""
        return {"bits": self.bits, "symmetric": self.symmetric, "granularity": self.granularity.value,
                "group_size": self.group_size}

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"QuantSpec: unknown field(s) {unknown}; the fields are {sorted(names)}")
        return cls(**d)

    def groups(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """``(R, G, g)``: rows, groups per row and group length of the scale layout for a weight of ``shape``.
        The scale tensor has shape ``(R, G)``."""
        rows, cols = _rows_cols(shape)
        if self.granularity is Granularity.TENSOR:
            return 1, 1, rows * cols
        if self.granularity is Granularity.CHANNEL:
            return rows, 1, cols
        g = min(self.group_size, cols)
        return rows, math.ceil(cols / g), g


def _rows_cols(shape: torch.Size | tuple[int, ...]) -> tuple[int, int]:
    if len(shape) == 0:
        return 1, 1
    rows = int(shape[0]) if len(shape) > 1 else 1
    n = math.prod(int(d) for d in shape)
    if n == 0:
        raise ValueError(f"cannot quantize an empty tensor of shape {tuple(shape)}")
    return rows, n // rows


@dataclass(frozen=True)
class QuantizedTensor:
    """Integer codes with their scales: ``w_hat = scale * (codes - zero_point)`` per group.

    Attributes:
        codes: int32, ``shape``; signed in ``[-q_max, q_max]`` (symmetric) or unsigned in ``[0, 2^b - 1]``.
        scale: float32 ``(R, G)`` (see :meth:`QuantSpec.groups`).
        zero_point: int32 ``(R, G)`` for asymmetric specs, else None.
        spec: the :class:`QuantSpec` used.
        shape: the original tensor's shape.
    """

    codes: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    spec: QuantSpec
    shape: torch.Size

    @property
    def code_offset(self) -> int:
        """Added to :attr:`codes` to make them unsigned ``b``-bit integers (for packing)."""
        return code_offset(self.spec)

    def dequantize(self) -> torch.Tensor:
        """``w_hat`` (float32, :attr:`shape`)."""
        return dequantize_codes(self.codes, self.scale, self.zero_point, self.spec, self.shape)


def code_offset(spec: QuantSpec) -> int:
    """``2^(b-1)`` for symmetric specs (signed codes -> ``[1, 2^b - 1]``), 0 for asymmetric ones."""
    return 2 ** (spec.bits - 1) if spec.symmetric else 0


def _grouped(x: torch.Tensor, rows: int, groups: int, g: int) -> torch.Tensor:
    """``x`` -> ``(R, G, g)``; the last group is padded by repeating the row's last value (which changes
    no group's min, max or max-abs)."""
    x2 = x.reshape(rows, -1)  # (R, C)
    pad = groups * g - x2.shape[1]
    if pad:
        x2 = torch.cat([x2, x2[:, -1:].expand(rows, pad)], dim=1)  # (R, G*g)
    return x2.reshape(rows, groups, g)


def dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None,
                     spec: QuantSpec, shape: torch.Size) -> torch.Tensor:
    """``w_hat = s * (q - z)`` with the per-group ``(R, G)`` scales broadcast over the codes."""
    rows, groups, g = spec.groups(shape)
    n = math.prod(shape) if len(shape) else 1
    q = _grouped(codes.to(torch.int32), rows, groups, g)  # (R, G, g)
    if zero_point is not None:
        q = q - zero_point.to(torch.int32)[..., None]
    w = _dequantize_sym(q, scale.to(torch.float32)[..., None])  # (R, G, g) * (R, G, 1)
    return w.reshape(rows, groups * g)[:, : n // rows].reshape(shape)


@torch.no_grad()
def quantize_tensor(w: torch.Tensor, spec: QuantSpec) -> QuantizedTensor:
    """Quantize ``w`` (any float dtype; computed in float32) according to ``spec``."""
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"spec must be a QuantSpec, got {type(spec).__name__}")
    if not torch.is_floating_point(w):
        raise ValueError(f"quantize_tensor needs a floating-point tensor, got {w.dtype}")
    shape = w.shape
    rows, groups, g = spec.groups(shape)
    x = _grouped(w.detach().to(torch.float32), rows, groups, g)  # (R, G, g)
    if spec.symmetric:
        s = scale_for(x.reshape(rows * groups, g), bits=spec.bits, axis=0).reshape(rows, groups)  # (R, G)
        q = _quantize_sym(x, s[..., None], bits=spec.bits)  # (R, G, g)
        zero = None
    else:
        levels = 2**spec.bits - 1
        lo, hi = x.amin(dim=-1), x.amax(dim=-1)  # (R, G)
        const = torch.where(lo.abs() > 0, lo.abs() / levels, torch.ones_like(lo))
        s = torch.where(hi > lo, (hi - lo) / levels, const)
        zero = torch.round(-lo / s).to(torch.int32)
        q = torch.clamp(torch.round(x / s[..., None]) + zero[..., None], 0, levels).to(torch.int32)
    codes = q.reshape(rows, groups * g)[:, : w.numel() // rows].reshape(shape)
    return QuantizedTensor(codes=codes.contiguous(), scale=s.contiguous(), zero_point=zero, spec=spec, shape=shape)


def fake_quant(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``w_hat`` in ``w``'s dtype: quantize then dequantize (no gradient flows through it)."""
    return quantize_tensor(w, spec).dequantize().to(w.dtype)
