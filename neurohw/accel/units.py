r"""Integer vector units beside the MAC array: softmax, GELU, LayerNorm and the other elementwise functions.

In the spirit of SwiftTron (Marchisio et al., "SwiftTron: An efficient hardware accelerator for quantized
transformers", IJCNN 2023), the non-linear functions run on integer-only units using I-BERT's
approximations (S. Kim et al., "I-BERT: Integer-only BERT quantization", ICML 2021), with 32-bit integer
arithmetic (I-BERT's width for these functions):

- i-exp: exp(x) = 2^(-z) L(p), z = floor(-x / ln 2), p = x + z ln 2, L(p) = a (p + b)^2 + c:
  3 multiplies (z ln 2, the square, a *) and 4 adds / shifts (p, p + b, + c, the shift by z);
- softmax: max (1 compare), x - max (1 add), i-exp, running sum (1 add), one integer division per row and a
  multiply by the reciprocal per element: 4 multiplies, 7 adds, 3 passes over the row (max, exp + sum,
  normalize);
- i-GELU: x / 2 (1 + i-erf(x / sqrt 2)), i-erf(x) = sign(x) [a (min(|x|, -b) + b)^2 + 1]: 4 multiplies
  (scale, square, a *, x *) and 5 adds (abs, clip, + b, + 1, sign), 1 pass;
- LayerNorm: mean (1 add), x - mean (1 add), square (1 mult) and sum (1 add), an integer square root per row
  (I-BERT: Newton iterations; per row, not per element), normalize (1 mult), affine (1 mult, 1 add):
  3 multiplies, 4 adds, 2 passes; RMSNorm drops the mean: 3 multiplies, 1 add, 2 passes;
- SiLU / sigmoid / tanh: i-exp plus a reciprocal multiply and an add: 4 multiplies, 5 adds, 1 pass;
- ReLU (1 compare), add (1 add), mul (1 mult), div (1 mult by a reciprocal), requantization (1 mult, 1 add):
  1 pass.

A unit has ``lanes`` = the array's column count C (one lane per column, as SwiftTron places its units at the
array's outputs); each lane takes one element per pass per cycle, fully pipelined:

    cycles = passes * ceil(elements / lanes)
    energy = elements * (mults * E_mult(32) + adds * E_add(32))             (Horowitz, :mod:`neurohw.constants`)

The operation counts per element are this module's reading of I-BERT's algorithms (each approximation's
number of integer operations), not measured hardware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from neurohw.constants import ARITH_PJ

__all__ = ["UnitSpec", "UNITS", "unit_for", "unit_cycles", "unit_energy_pj", "UNIT_BITS"]

UNIT_BITS = 32  # integer width of the non-linear units (I-BERT)


@dataclass(frozen=True)
class UnitSpec:
    """Integer operations per element and passes over the data of one function."""

    mults: int
    adds: int
    passes: int = 1


# function name (the IR's ``Op.function``) -> its unit; one registration per function
UNITS: dict[str, UnitSpec] = {
    "softmax": UnitSpec(mults=4, adds=7, passes=3),
    "gelu": UnitSpec(mults=4, adds=5),
    "layernorm": UnitSpec(mults=3, adds=4, passes=2),
    "groupnorm": UnitSpec(mults=3, adds=4, passes=2),
    "rmsnorm": UnitSpec(mults=3, adds=1, passes=2),
    "silu": UnitSpec(mults=4, adds=5),
    "swish": UnitSpec(mults=4, adds=5),
    "sigmoid": UnitSpec(mults=4, adds=5),
    "tanh": UnitSpec(mults=4, adds=5),
    "exp": UnitSpec(mults=3, adds=4),
    "relu": UnitSpec(mults=0, adds=1),
    "hardtanh": UnitSpec(mults=0, adds=2),
    "add": UnitSpec(mults=0, adds=1),
    "mul": UnitSpec(mults=1, adds=0),
    "div": UnitSpec(mults=1, adds=0),
    "requant": UnitSpec(mults=1, adds=1),
}


def unit_for(function: str, *, op_name: str = "") -> UnitSpec:
    """The unit that computes ``function``; an unknown function is an error (never silently free)."""
    try:
        return UNITS[function]
    except KeyError:
        raise ValueError(f"op {op_name!r}: no vector unit for function {function!r}; known: {sorted(UNITS)} "
                         "(register one in neurohw.accel.units.UNITS)") from None


def unit_cycles(spec: UnitSpec, elements: float, lanes: int) -> float:
    return spec.passes * math.ceil(elements / lanes)


def unit_energy_pj(spec: UnitSpec, elements: float, scale: float) -> float:
    """Arithmetic energy at 45 nm times ``scale`` (the technology factor of :func:`neurohw.accel.gemm.tech_scale`)."""
    e = spec.mults * ARITH_PJ[("int", UNIT_BITS, "mult")].value_pj + spec.adds * ARITH_PJ[("int", UNIT_BITS, "add")].value_pj
    return elements * e * scale
