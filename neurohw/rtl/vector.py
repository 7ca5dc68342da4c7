r"""The integer softmax, GELU and LayerNorm units as RTL (``vector_units.v``): configuration, constants, the integer
reference the simulation must equal bit for bit, and the Verilog top of a unit of ``lanes`` lanes.

The algorithms are I-BERT's integer-only approximations (S. Kim et al., "I-BERT: Integer-only BERT quantization",
ICML 2021), the functions :mod:`neurohw.accel.units` prices. An input ``x`` is a signed ``in_bits`` integer with
real value ``x S``.

**i-exp** (for ``q <= 0``): ``exp(p) ~ a (p + b)^2 + c`` on ``(-ln 2, 0]`` with ``a = 0.3585, b = 1.353,
c = 0.344``, and ``exp(q S) = 2^-z exp(r S)``:

    q_ln2 = floor(ln 2 / S),  q_b = floor(b / S),  q_c = floor(c / (a S^2))
    z = floor(-q / q_ln2),  r = q + z q_ln2,  L = (r + q_b)^2 + q_c,  e = floor(L / 2^z)      (0 when z > 31)

so ``e a S^2 ~ exp(q S)``.

**softmax** of a row (``n`` elements): ``m = max x``, ``e_j = i-exp(x_j - m)``, ``s = sum e_j``,
``f = floor(2^48 / s)`` (the one division of the row), ``out_j = min(floor(e_j f / 2^(48 - out_bits)),
2^out_bits - 1)``: unsigned, ``out_j / 2^out_bits ~ softmax(x S)_j``.

**i-GELU**: ``gelu(x) = x/2 (1 + erf(x / sqrt 2))``, ``erf(u) ~ sign(u) [a (min(|u|, -b) + b)^2 + 1]`` with
``a = -0.2888, b = -1.769``; with ``S_e = S / sqrt 2`` (the scale of ``x`` read as ``x / sqrt 2``):

    q_b = floor(b / S_e),  q_c = floor(1 / (a S_e^2)),  E = sign(x) ((min(|x|, -q_b) + q_b)^2 + q_c)
    erf = floor(E / 2^k)    (scale a S_e^2 2^k; k keeps about 14 bits),  one = floor(1 / (a S_e^2 2^k))
    y = x (erf + one)       (scale S a S_e^2 2^k / 2),  out = requant(y)

**LayerNorm** of a row with per-column ``gamma``, ``beta``: ``s1 = sum x``, ``s2 = sum x^2``,
``mean = trunc(s1 / n)``, ``var = s2 - 2 mean s1 + n mean^2 + eps_int`` (``= sum (x - mean)^2 + eps_int`` exactly,
``eps_int = round(n eps / S^2)``), ``std = isqrt(var)``, ``f = floor(2^40 / std)``,
``h_j = floor((x_j - mean) f / 2^24)`` (``h / 2^16 ~ (x - mean) / std``, and ``(x - mu) / sigma = sqrt(n) h / 2^16``),
``out_j = requant(h_j gamma_int_j + beta_int_j)`` with ``gamma_int = round(gamma / s_g)``,
``s_g = max|gamma| / 32767``, ``beta_int = round(beta / s_acc)``, ``s_acc = s_g sqrt(n) / 2^16``.

``requant(v) = clamp(floor((v mult + 2^(shift-1)) / 2^shift), -2^(out_bits-1), 2^(out_bits-1) - 1)``, the array's
requantizer (``common.v``), with ``mult / 2^shift`` the ratio of the scales (:func:`mult_shift`).

Scales: the input scale ``S`` must lie in ``[2^-10, 1/4]`` (finer overflows the 16-bit constants, coarser leaves
i-exp fewer than 2 steps per ln 2); rows hold 1..2^n_bits elements.

Cycles (one row per lane, the lanes in lockstep): softmax ``3n + 1`` (three passes over the row, one for the
division), GELU ``n``, LayerNorm ``2n + 3`` (two passes; mean / variance, square root, division). The cycle model
(:func:`neurohw.accel.units.unit_cycles`) counts the passes, ``passes * ceil(elements / lanes)``; the per-row cycles
it leaves out are :data:`ROW_OVERHEAD`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["UNITS_RTL", "ROW_OVERHEAD", "VectorConfig", "SoftmaxConstants", "GeluConstants", "LayerNormConstants",
           "mult_shift", "requant", "softmax_constants", "gelu_constants", "layernorm_constants", "i_exp",
           "softmax_int", "gelu_int", "layernorm_int", "rtl_cycles", "model_cycles", "vector_sources"]

UNITS_RTL = ("softmax", "gelu", "layernorm")
PASSES = {"softmax": 3, "gelu": 1, "layernorm": 2}
ROW_OVERHEAD = {"softmax": 1, "gelu": 0, "layernorm": 3}
EXP_ABC = (0.3585, 1.353, 0.344)
ERF_AB = (-0.2888, -1.769)
SOFTMAX_FB = 48
LN_FB, LN_NB = 40, 16
SCALE_RANGE = (2.0 ** -10, 0.25)
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class VectorConfig:
    """A unit of ``lanes`` lanes (one row each, in lockstep), ``in_bits`` signed inputs, ``out_bits`` outputs,
    rows of up to ``2^n_bits`` elements."""

    lanes: int = 4
    in_bits: int = 16
    out_bits: int = 8
    n_bits: int = 12

    def __post_init__(self) -> None:
        from neurohw.rtl.generate import RtlConfigError

        checks = (("lanes", 1, 64), ("in_bits", 4, 16), ("out_bits", 2, 16), ("n_bits", 2, 12))
        for name, lo, hi in checks:
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi):
                raise RtlConfigError(f"VectorConfig.{name}={v!r} cannot be generated: use an int in {lo}..{hi}")


def _check_scale(s: float, what: str = "scale") -> float:
    s = float(s)
    if not (SCALE_RANGE[0] <= s <= SCALE_RANGE[1]):
        raise ValueError(f"{what}={s!r}: the units take input scales in [2^-10, 1/4]; rescale the input "
                         "(e.g. requantize it to a coarser or finer grid) first")
    return s


def mult_shift(ratio: float) -> tuple[int, int]:
    """``(mult, shift)`` with ``mult / 2^shift ~ ratio``, ``|mult| < 2^31`` and ``1 <= shift <= 62``, the most precise."""
    if not math.isfinite(ratio) or ratio == 0:
        raise ValueError(f"requantization ratio {ratio!r}: needs a finite non-zero scale ratio")
    shift = min(62, 30 - math.floor(math.log2(abs(ratio))))
    if shift < 1:
        raise ValueError(f"requantization ratio {ratio!r} is too large for a 32-bit multiplier (at most 2^30): "
                         "use a coarser output scale")
    mult = round(ratio * 2.0 ** shift)
    if abs(mult) >= 2 ** 31:
        shift, mult = shift - 1, round(ratio * 2.0 ** (shift - 1))
    return int(mult), int(shift)


def requant(v, mult: int, shift: int, out_bits: int) -> np.ndarray:
    """The requantizer of ``common.v`` on integer arrays (exact: Python integers inside), int64 out."""
    v = np.asarray(v, dtype=object)  # Python ints: the product needs up to 96 bits in general
    lo, hi = -(1 << (out_bits - 1)), (1 << (out_bits - 1)) - 1
    y = (v * mult + (1 << (shift - 1))) >> shift
    return np.clip(y, lo, hi).astype(np.int64)


@dataclass(frozen=True)
class SoftmaxConstants:
    q_ln2: int
    q_b: int
    q_c: int
    scale: float

    def ports(self) -> dict[str, int]:
        return {"q_ln2": self.q_ln2, "q_b": self.q_b, "q_c": self.q_c}


@dataclass(frozen=True)
class GeluConstants:
    q_b: int
    q_c: int
    erf_shift: int
    one: int
    mult: int
    shift: int
    scale: float
    out_scale: float

    def ports(self) -> dict[str, int]:
        return {"q_b": self.q_b, "q_c": self.q_c, "erf_shift": self.erf_shift, "one": self.one, "mult": self.mult,
                "shift": self.shift}


@dataclass(frozen=True)
class LayerNormConstants:
    gamma: np.ndarray = field(repr=False)  # (n,) int16
    beta: np.ndarray = field(repr=False)  # (n,) int48
    eps: int
    mult: int
    shift: int
    scale: float
    out_scale: float

    def ports(self) -> dict[str, int]:
        return {"eps": self.eps, "mult": self.mult, "shift": self.shift}


def softmax_constants(scale: float) -> SoftmaxConstants:
    s = _check_scale(scale)
    a, b, c = EXP_ABC
    return SoftmaxConstants(q_ln2=math.floor(math.log(2) / s), q_b=math.floor(b / s), q_c=math.floor(c / (a * s * s)),
                            scale=s)


def gelu_constants(scale: float, out_scale: float, out_bits: int = 8) -> GeluConstants:
    s = _check_scale(scale)
    a, b = ERF_AB
    se = s / math.sqrt(2.0)
    q_b, q_c = math.floor(b / se), math.floor(1.0 / (a * se * se))
    k = max(0, (-q_c).bit_length() - 14)
    erf_scale = a * se * se * 2.0 ** k
    mult, shift = mult_shift(s * erf_scale / 2.0 / out_scale)
    return GeluConstants(q_b=q_b, q_c=q_c, erf_shift=k, one=math.floor(1.0 / erf_scale), mult=mult, shift=shift,
                         scale=s, out_scale=float(out_scale))


def layernorm_constants(gamma, beta, scale: float, out_scale: float, *, eps: float = 1e-5) -> LayerNormConstants:
    """Constants of a LayerNorm over rows of ``len(gamma)`` elements with input scale ``scale``."""
    s = _check_scale(scale)
    gamma = np.asarray(gamma, dtype=np.float64).reshape(-1)
    beta = np.asarray(beta, dtype=np.float64).reshape(-1)
    if gamma.shape != beta.shape:
        raise ValueError(f"gamma {gamma.shape} and beta {beta.shape} must have one entry per column")
    n = gamma.size
    s_g = float(np.abs(gamma).max()) / 32767 or 1.0
    s_acc = s_g * math.sqrt(n) / 2 ** LN_NB
    g_int = np.round(gamma / s_g).astype(np.int64)
    b_int = np.round(beta / s_acc).astype(np.int64)
    if np.abs(b_int).max(initial=0) >= 2 ** 47:
        raise ValueError(f"beta is too large against gamma (|beta| / max|gamma| up to {np.abs(beta).max() / (s_g * 32767):.3g}): "
                         "the 48-bit beta register overflows")
    eps_int = round(n * eps / (s * s))
    if not 0 <= eps_int < 2 ** 32:
        raise ValueError(f"eps={eps!r} at scale {s!r} gives eps_int={eps_int}, outside the 32-bit register")
    mult, shift = mult_shift(s_acc / out_scale)
    return LayerNormConstants(gamma=g_int, beta=b_int, eps=eps_int, mult=mult, shift=shift, scale=s,
                              out_scale=float(out_scale))


def _check_rows(x, cfg: VectorConfig) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.dtype.kind not in "iu":
        raise ValueError(f"the units take a 2-D integer array of rows, got {x.dtype} {x.shape}")
    lo, hi = -(1 << (cfg.in_bits - 1)), (1 << (cfg.in_bits - 1)) - 1
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(f"inputs outside the {cfg.in_bits}-bit signed range [{lo}, {hi}]")
    if not 1 <= x.shape[1] <= 2 ** cfg.n_bits:
        raise ValueError(f"rows of {x.shape[1]} elements: the unit takes 1..{2 ** cfg.n_bits} (n_bits={cfg.n_bits})")
    return x.astype(np.int64)


def i_exp(q: np.ndarray, k: SoftmaxConstants) -> np.ndarray:
    """``e`` of the module docstring for ``q <= 0`` (int64)."""
    q = np.asarray(q, dtype=np.int64)
    z = (-q) // k.q_ln2
    r = q + z * k.q_ln2
    t = r + k.q_b
    L = (t * t + k.q_c) & 0xFFFFFFFF
    return np.where(z > 31, 0, L >> np.minimum(z, 31))


def softmax_int(x, k: SoftmaxConstants, cfg: VectorConfig) -> np.ndarray:
    """The softmax unit's output for rows ``x`` (rows, n): unsigned ``out_bits`` integers."""
    x = _check_rows(x, cfg)
    e = i_exp(x - x.max(axis=1, keepdims=True), k)
    f = (1 << SOFTMAX_FB) // e.sum(axis=1, keepdims=True)
    out = [[int(v) * int(fr[0]) >> (SOFTMAX_FB - cfg.out_bits) for v in row] for row, fr in zip(e, f)]
    return np.minimum(np.array(out, dtype=np.int64).reshape(x.shape), (1 << cfg.out_bits) - 1)


def gelu_int(x, k: GeluConstants, cfg: VectorConfig) -> np.ndarray:
    """The GELU unit's output for ``x`` (rows, n): signed ``out_bits`` integers."""
    x = _check_rows(x, cfg)
    t = np.minimum(np.abs(x), -k.q_b) + k.q_b
    erf = (np.sign(x) * (t * t + k.q_c)) >> k.erf_shift
    return requant(x * (erf + k.one), k.mult, k.shift, cfg.out_bits)


def layernorm_int(x, k: LayerNormConstants, cfg: VectorConfig) -> np.ndarray:
    """The LayerNorm unit's output for rows ``x`` (rows, n): signed ``out_bits`` integers."""
    x = _check_rows(x, cfg)
    n = x.shape[1]
    if k.gamma.size != n:
        raise ValueError(f"rows of {n} elements but constants for {k.gamma.size} columns")
    s1 = x.sum(axis=1, keepdims=True)
    s2 = (x * x).sum(axis=1, keepdims=True)
    mean = np.where(s1 >= 0, s1 // n, -((-s1) // n))
    var = s2 - 2 * mean * s1 + n * mean * mean + k.eps
    std = np.array([[math.isqrt(int(v))] for v in var[:, 0]], dtype=np.int64)
    f = np.where(std > 0, (1 << LN_FB) // np.maximum(std, 1), 0)
    h = ((x - mean) * f) >> (LN_FB - LN_NB)
    return requant(h * k.gamma[None, :] + k.beta[None, :], k.mult, k.shift, cfg.out_bits)


def rtl_cycles(unit: str, n: int, rows: int, lanes: int) -> int:
    """Busy cycles of the RTL for ``rows`` rows of ``n`` elements on ``lanes`` lanes (module docstring)."""
    return math.ceil(rows / lanes) * (PASSES[unit] * n + ROW_OVERHEAD[unit])


def model_cycles(unit: str, n: int, rows: int, lanes: int) -> int:
    """The cycle model's count for the same work: :func:`neurohw.accel.units.unit_cycles`."""
    from neurohw.accel.units import UNITS, unit_cycles

    return int(unit_cycles(UNITS[unit], rows * n, lanes))


def vector_sources(unit: str, cfg: VectorConfig, out_dir: str | Path) -> list[Path]:
    """Write ``common.v``, ``vector_units.v`` and a top ``vector_top`` of ``cfg.lanes`` lanes of ``unit``."""
    if unit not in UNITS_RTL:
        from neurohw.rtl.generate import RtlConfigError

        raise RtlConfigError(f"unit={unit!r} cannot be generated: the vector units are {UNITS_RTL}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "common.v", out / "vector_units.v"]
    for f in files:
        f.write_text((_HERE / f.name).read_text())
    L, IW, OW, NW = cfg.lanes, cfg.in_bits, cfg.out_bits, cfg.n_bits
    consts = {"softmax": ["input wire [15:0] q_ln2", "input wire [15:0] q_b", "input wire [31:0] q_c"],
              "gelu": ["input wire signed [15:0] q_b", "input wire signed [31:0] q_c", "input wire [5:0] erf_shift",
                       "input wire signed [31:0] one", "input wire signed [31:0] mult", "input wire [5:0] shift"],
              "layernorm": ["input wire [31:0] eps", "input wire signed [31:0] mult", "input wire [5:0] shift",
                            "input wire signed [15:0] gamma_in", "input wire signed [47:0] beta_in"]}[unit]
    names = [c.rsplit(" ", 1)[1] for c in consts]
    params = f"#(.IW({IW}), .NW({NW}), .{'OB' if unit == 'softmax' else 'OW'}({OW}))"
    conns = ", ".join(f".{n}({n})" for n in names)
    top = out / "vector_top.v"
    top.write_text(f"""// Generated by neurohw.rtl.vector for {unit}, {cfg}
module vector_top (
    input wire clk, input wire rst, input wire start, input wire [{NW}:0] n_len,
    {", ".join(consts)},
    input wire [{L * IW - 1}:0] x_in,
    output wire [{NW - 1}:0] rd_index, output wire busy, output wire done, output wire out_valid,
    output wire [{NW - 1}:0] out_index, output wire [{L * OW - 1}:0] out
);
    wire [{L - 1}:0] busy_l, done_l, valid_l;
    wire [{NW - 1}:0] rd_l [0:{L - 1}];
    wire [{NW - 1}:0] oi_l [0:{L - 1}];
    genvar i;
    generate
        for (i = 0; i < {L}; i = i + 1) begin : lane
            {unit}_lane {params} u(.clk(clk), .rst(rst), .start(start), .n_len(n_len), {conns},
                .x_in(x_in[i*{IW} +: {IW}]), .rd_index(rd_l[i]), .busy(busy_l[i]), .done(done_l[i]),
                .out_valid(valid_l[i]), .out_index(oi_l[i]), .out(out[i*{OW} +: {OW}]));
        end
    endgenerate
    // the lanes run in lockstep: lane 0 speaks for all
    assign rd_index = rd_l[0];
    assign busy = busy_l[0];
    assign done = done_l[0];
    assign out_valid = valid_l[0];
    assign out_index = oi_l[0];
endmodule
""")
    return [*files, top]
