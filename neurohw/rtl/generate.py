r"""Verilog for an accelerator configuration: the INT systolic MAC array with its dataflow, accumulators and
requantization (``systolic_os.v`` / ``systolic_ws.v`` with the shared skew lines and requantizer of ``common.v``,
parameterized), instantiated with the widths of one
:class:`RtlConfig` in a top module ``accel_top``.

Supported (anything else is refused with the parameter named, :class:`RtlConfigError`):

- dataflow ``os`` (output stationary: ``2R + C + K - 2`` cycles a fold) and ``ws`` (weight stationary, partial sums
  accumulated over K folds through the row-0 input: ``2R + C + M - 2`` cycles a fold), the timing of
  :mod:`neurohw.accel.gemm`; ``is`` is not generated;
- ``rows``, ``cols`` in 1..64; operand widths ``a_bits``, ``b_bits`` in 2..16; ``acc_bits`` in
  ``a_bits + b_bits .. 48``; ``out_bits`` in 2..16; ``k_bits`` (width of the K counter) in 4..24.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["RtlConfig", "RtlConfigError", "from_accelerator", "verilog_sources", "resources", "SUPPORTED_DATAFLOWS"]

SUPPORTED_DATAFLOWS = ("os", "ws")
_HERE = Path(__file__).parent


class RtlConfigError(ValueError):
    """A configuration the generator cannot produce; the message names the parameter."""


@dataclass(frozen=True)
class RtlConfig:
    """One array to generate (see the module docstring for the ranges)."""

    rows: int = 4
    cols: int = 4
    dataflow: str = "os"
    a_bits: int = 8
    b_bits: int = 8
    acc_bits: int = 32
    out_bits: int = 8
    k_bits: int = 16

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise RtlConfigError(f"RtlConfig.{name}={getattr(self, name)!r} cannot be generated: {fix}")

        isint = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        need(self.dataflow in SUPPORTED_DATAFLOWS, "dataflow", f"the generator supports {SUPPORTED_DATAFLOWS}")
        for f in ("rows", "cols"):
            need(isint(getattr(self, f)) and 1 <= getattr(self, f) <= 64, f, "use an int in 1..64")
        for f in ("a_bits", "b_bits", "out_bits"):
            need(isint(getattr(self, f)) and 2 <= getattr(self, f) <= 16, f, "use an int in 2..16")
        need(isint(self.acc_bits) and self.a_bits + self.b_bits <= self.acc_bits <= 48, "acc_bits",
             f"use an int in {self.a_bits + self.b_bits}..48 (at least a_bits + b_bits)")
        need(isint(self.k_bits) and 4 <= self.k_bits <= 24, "k_bits", "use an int in 4..24")

    def fold_cycles(self, t: int) -> int:
        """Cycles of one fold with ``t`` streamed elements (K for os, M for ws): what the RTL takes from start to done."""
        return 2 * self.rows + self.cols + t - 2


def resources(cfg: RtlConfig) -> dict[str, int]:
    """Resource counts of the generated array read off its structure (no synthesis tool): multipliers (one per PE),
    register bits (PE operand / accumulator registers, skew chains, weights for ws) and requantization units."""
    R, C, A, B, S = cfg.rows, cfg.cols, cfg.a_bits, cfg.b_bits, cfg.acc_bits
    skew_a = R * (R - 1) // 2 * A
    if cfg.dataflow == "os":
        skew_b = C * (C - 1) // 2 * B
        pe = R * C * (A + B + S)  # a and b pass-through registers, the accumulator
        requant = C  # one row per cycle
        out = C * cfg.out_bits
    else:
        skew_b = 0
        pe = R * C * (A + S + B)  # a pass-through, partial-sum register, stationary weight
        requant = C  # one per column, at the bottom
        out = C * (S + cfg.out_bits)
    return {"multipliers": R * C, "adders": R * C, "register_bits": pe + skew_a + skew_b + out,
            "pe_register_bits": pe, "skew_register_bits": skew_a + skew_b, "requant_units": requant}


def from_accelerator(cfg, *, a_bits: int = 8, b_bits: int = 8, out_bits: int = 8) -> RtlConfig:
    """The :class:`RtlConfig` of a :class:`neurohw.accel.AcceleratorConfig` (its array, dataflow, accumulators)."""
    return RtlConfig(rows=cfg.rows, cols=cfg.cols, dataflow=getattr(cfg.dataflow, "value", cfg.dataflow), a_bits=a_bits,
                     b_bits=b_bits, acc_bits=cfg.acc_bits, out_bits=out_bits)


def verilog_sources(cfg: RtlConfig, out_dir: str | Path) -> list[Path]:
    """Write the array of ``cfg.dataflow`` and a top module ``accel_top`` with ``cfg``'s parameters to ``out_dir``;
    returns the files, in compile order."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    common, core = out / "common.v", out / f"systolic_{cfg.dataflow}.v"
    for f in (common, core):
        f.write_text((_HERE / f.name).read_text())
    params = (f"#(.R({cfg.rows}), .C({cfg.cols}), .AW({cfg.a_bits}), .BW({cfg.b_bits}), .ACCW({cfg.acc_bits}), "
              f".OW({cfg.out_bits}), .KW({cfg.k_bits}))")
    R, C, KW = cfg.rows, cfg.cols, cfg.k_bits
    if cfg.dataflow == "os":
        ports = f"""input wire clk, input wire rst, input wire start, input wire [{KW - 1}:0] k_len,
    input wire signed [31:0] mult, input wire [5:0] shift,
    input wire [{R * cfg.a_bits - 1}:0] a_col, input wire [{C * cfg.b_bits - 1}:0] b_row,
    output wire [{KW - 1}:0] feed_index, output wire feed_valid, output wire busy, output wire done,
    output wire out_valid, output wire [15:0] out_index, output wire [{C * cfg.out_bits - 1}:0] out_row"""
        names = ("clk", "rst", "start", "k_len", "mult", "shift", "a_col", "b_row", "feed_index", "feed_valid", "busy",
                 "done", "out_valid", "out_index", "out_row")
    else:
        ports = f"""input wire clk, input wire rst, input wire start, input wire [{KW - 1}:0] m_len, input wire last_fold,
    input wire signed [31:0] mult, input wire [5:0] shift,
    input wire [{C * cfg.b_bits - 1}:0] w_row, input wire [{R * cfg.a_bits - 1}:0] a_row,
    input wire [{C * cfg.acc_bits - 1}:0] p_row,
    output wire [{KW - 1}:0] load_index, output wire loading, output wire [{KW - 1}:0] feed_index, output wire feed_valid,
    output wire [{KW + 1}:0] stream_index, output wire busy, output wire done, output wire [{C - 1}:0] out_valid,
    output wire [{C * cfg.acc_bits - 1}:0] out_acc, output wire [{C * cfg.out_bits - 1}:0] out_q"""
        names = ("clk", "rst", "start", "m_len", "last_fold", "mult", "shift", "w_row", "a_row", "p_row", "load_index",
                 "loading", "feed_index", "feed_valid", "stream_index", "busy", "done", "out_valid", "out_acc", "out_q")
    conns = ", ".join(f".{n}({n})" for n in names)
    top = out / "accel_top.v"
    top.write_text(f"""// Generated by neurohw.rtl.generate for {cfg}
module accel_top (
    {ports}
);
    systolic_{cfg.dataflow} {params} array ({conns});
endmodule
""")
    return [common, core, top]
