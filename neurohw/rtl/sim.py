r"""Simulating the generated array with Icarus Verilog, and the integer reference it must equal bit for bit.

Reference of one tile (``A`` (R, K) and ``B`` (K, C) signed integers of ``a_bits`` / ``b_bits``):

    acc[i, j] = wrap_acc( sum_k A[i, k] B[k, j] )                      (two's complement, ``acc_bits``)
    y[i, j]   = clamp((acc[i, j] * mult + 2^(shift-1)) >> shift, -2^(out_bits-1), 2^(out_bits-1) - 1)

(``>>`` arithmetic, rounding towards -inf after adding half: round half up). A GEMM ``(M, K) @ (K, N)`` runs as
``ceil(M / R) ceil(N / C)`` tiles one after another (zero padded at the edges), which is the fold loop of
:mod:`neurohw.accel.gemm` without ``overlap_folds``: its cycles must equal
``compute_cycles(M, N, K, R, C, "os", overlap=False)``.

The test bench drives ``a_col`` / ``b_row`` from memories loaded with ``$readmemh``, counts the clock edges at which
``busy`` is high, and prints the rows the array emits. ``iverilog`` compiles once per configuration (cached by a
hash of the sources); a missing simulator raises :class:`SimulatorMissing` saying how set-up installs it.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurohw.rtl.generate import RtlConfig, verilog_sources
from neurohw.rtl.vector import requant

__all__ = ["SimulatorMissing", "TileRun", "WsFoldRun", "GemmRun", "reference_tile", "run_tile", "run_ws_fold", "run_gemm"]

_CACHE = Path(tempfile.gettempdir()) / "neuromfm-rtl"


class SimulatorMissing(RuntimeError):
    """Icarus Verilog (``iverilog`` / ``vvp``) is not on PATH."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SimulatorMissing(f"{name} (Icarus Verilog) is not installed: `make setup` installs it "
                               "(scripts/setup.sh runs `apt-get install -y iverilog`), or install Debian's iverilog yourself")
    return path


def _testbench(cfg: RtlConfig, k_max: int) -> str:
    R, C = cfg.rows, cfg.cols
    return f"""`timescale 1ns/1ps
module tb;
    reg clk = 0, rst = 1, start = 0;
    reg [{cfg.k_bits - 1}:0] k_len;
    reg signed [31:0] mult;
    reg [5:0] shift;
    reg [{cfg.a_bits - 1}:0] amem [0:{R * k_max - 1}];
    reg [{cfg.b_bits - 1}:0] bmem [0:{k_max * C - 1}];
    wire [{cfg.k_bits - 1}:0] feed_index;
    wire feed_valid, busy, done, out_valid;
    wire [15:0] out_index;
    wire [{C * cfg.out_bits - 1}:0] out_row;
    reg [{R * cfg.a_bits - 1}:0] a_col;
    reg [{C * cfg.b_bits - 1}:0] b_row;
    integer i, cycles, fd, r;
    reg [1023:0] afile, bfile;
    always @(*) begin
        for (i = 0; i < {R}; i = i + 1) a_col[i*{cfg.a_bits} +: {cfg.a_bits}] = amem[i * k_len + feed_index];
        for (i = 0; i < {C}; i = i + 1) b_row[i*{cfg.b_bits} +: {cfg.b_bits}] = bmem[feed_index * {C} + i];
    end
    accel_top dut(.clk(clk), .rst(rst), .start(start), .k_len(k_len), .mult(mult), .shift(shift), .a_col(a_col),
                  .b_row(b_row), .feed_index(feed_index), .feed_valid(feed_valid), .busy(busy), .done(done),
                  .out_valid(out_valid), .out_index(out_index), .out_row(out_row));
    always #1 clk = ~clk;
    always @(posedge clk) begin
        if (busy) cycles = cycles + 1;
        if (out_valid) begin
            $write("ROW %0d", out_index);
            for (r = 0; r < {C}; r = r + 1) $write(" %0d", $signed(out_row[r*{cfg.out_bits} +: {cfg.out_bits}]));
            $write("\\n");
        end
    end
    initial begin
        if (!$value$plusargs("A=%s", afile) || !$value$plusargs("B=%s", bfile) || !$value$plusargs("K=%d", k_len)
            || !$value$plusargs("MULT=%d", mult) || !$value$plusargs("SHIFT=%d", shift)) begin
            $display("ERROR missing plusargs"); $finish;
        end
        $readmemh(afile, amem);
        $readmemh(bfile, bmem);
        cycles = 0;
        repeat ({R + C + 2}) @(negedge clk);  // flush the skew chains and operand registers with zeros
        rst = 0;
        @(negedge clk) start = 1;
        @(negedge clk) start = 0;
        @(posedge done);
        @(posedge clk);  // the last row is printed at the edge after it was registered
        @(negedge clk);
        $display("CYCLES %0d", cycles);
        $finish;
    end
endmodule
"""


def _testbench_ws(cfg: RtlConfig, m_max: int) -> str:
    R, C, ACC = cfg.rows, cfg.cols, cfg.acc_bits
    return f"""`timescale 1ns/1ps
module tb;
    reg clk = 0, rst = 1, start = 0, last_fold;
    reg [{cfg.k_bits - 1}:0] m_len;
    reg signed [31:0] mult;
    reg [5:0] shift;
    reg [{cfg.a_bits - 1}:0] amem [0:{m_max * R - 1}];
    reg [{cfg.b_bits - 1}:0] wmem [0:{R * C - 1}];
    reg [{ACC - 1}:0] pmem [0:{m_max * C - 1}];
    wire [{cfg.k_bits - 1}:0] load_index, feed_index;
    wire [{cfg.k_bits + 1}:0] stream_index;
    wire loading, feed_valid, busy, done;
    wire [{C - 1}:0] out_valid;
    wire [{C * ACC - 1}:0] out_acc;
    wire [{C * cfg.out_bits - 1}:0] out_q;
    reg [{C * cfg.b_bits - 1}:0] w_row;
    reg [{R * cfg.a_bits - 1}:0] a_row;
    reg [{C * ACC - 1}:0] p_row;
    integer i, cycles, r, m, fin;
    integer got [0:{C - 1}];
    reg [1023:0] afile, wfile, pfile;
    always @(*) begin
        for (i = 0; i < {C}; i = i + 1) w_row[i*{cfg.b_bits} +: {cfg.b_bits}] = wmem[load_index * {C} + i];
        for (i = 0; i < {R}; i = i + 1) a_row[i*{cfg.a_bits} +: {cfg.a_bits}] = amem[feed_index * {R} + i];
        for (i = 0; i < {C}; i = i + 1) begin
            m = stream_index - i;
            p_row[i*{ACC} +: {ACC}] = (m >= 0 && m < m_len) ? pmem[m * {C} + i] : {ACC}'d0;
        end
    end
    accel_top dut(.clk(clk), .rst(rst), .start(start), .m_len(m_len), .last_fold(last_fold), .mult(mult), .shift(shift),
                  .w_row(w_row), .a_row(a_row), .p_row(p_row), .load_index(load_index), .loading(loading),
                  .feed_index(feed_index), .feed_valid(feed_valid), .stream_index(stream_index), .busy(busy),
                  .done(done), .out_valid(out_valid), .out_acc(out_acc), .out_q(out_q));
    always #1 clk = ~clk;
    always @(posedge clk) begin
        if (busy) cycles = cycles + 1;
        for (r = 0; r < {C}; r = r + 1) if (out_valid[r]) begin
            $display("OUT %0d %0d %0d %0d", got[r], r, $signed(out_acc[r*{ACC} +: {ACC}]),
                     $signed(out_q[r*{cfg.out_bits} +: {cfg.out_bits}]));
            got[r] = got[r] + 1;
        end
    end
    initial begin
        if (!$value$plusargs("A=%s", afile) || !$value$plusargs("W=%s", wfile) || !$value$plusargs("P=%s", pfile)
            || !$value$plusargs("M=%d", m_len) || !$value$plusargs("MULT=%d", mult) || !$value$plusargs("SHIFT=%d", shift)
            || !$value$plusargs("FINAL=%d", fin)) begin
            $display("ERROR missing plusargs"); $finish;
        end
        last_fold = fin;
        $readmemh(afile, amem);
        $readmemh(wfile, wmem);
        $readmemh(pfile, pmem);
        cycles = 0;
        for (r = 0; r < {C}; r = r + 1) got[r] = 0;
        repeat ({R + C + 2}) @(negedge clk);  // flush the skew chains and operand registers with zeros
        rst = 0;
        @(negedge clk) start = 1;
        @(negedge clk) start = 0;
        @(posedge done);
        @(posedge clk);  // the last outputs are printed at the edge after they were registered
        @(negedge clk);
        $display("CYCLES %0d", cycles);
        $finish;
    end
endmodule
"""


def _compiled(cfg: RtlConfig, k_max: int) -> Path:
    iverilog = _tool("iverilog")
    bench = (_testbench if cfg.dataflow == "os" else _testbench_ws)(cfg, k_max)
    core = "".join((Path(__file__).parent / f).read_text() for f in ("common.v", f"systolic_{cfg.dataflow}.v"))
    key = hashlib.sha256(f"{cfg}{k_max}{core}{bench}".encode()).hexdigest()[:16]
    work = _CACHE / key
    exe = work / "sim.vvp"
    if exe.exists():
        return exe
    _CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=_CACHE))  # compiled aside, then renamed into place
    sources = verilog_sources(cfg, tmp)
    (tmp / "tb.v").write_text(bench)
    res = subprocess.run([iverilog, "-g2012", "-o", str(tmp / "sim.vvp"), *map(str, sources), str(tmp / "tb.v")],
                         capture_output=True, text=True, timeout=300)
    if res.returncode != 0:
        raise RuntimeError(f"iverilog failed for {cfg}:\n{res.stderr[-3000:]}")
    try:
        tmp.rename(work)
    except OSError:  # another process compiled the same configuration first
        shutil.rmtree(tmp, ignore_errors=True)
    return exe


def _check_operand(x: np.ndarray, bits: int, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "iu":
        raise ValueError(f"{what} must be integers, got {x.dtype}")
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if x.size and (x.min() < lo or x.max() > hi):
        raise ValueError(f"{what} has values outside the {bits}-bit signed range [{lo}, {hi}]")
    return x.astype(np.int64)


def reference_tile(cfg: RtlConfig, a: np.ndarray, b: np.ndarray, *, mult: int, shift: int) -> np.ndarray:
    """The integer result of the module docstring for ``a`` (M, K), ``b`` (K, N): (M, N) int64."""
    a = _check_operand(a, cfg.a_bits, "A")
    b = _check_operand(b, cfg.b_bits, "B")
    acc = np.array([[sum(int(a[i, k]) * int(b[k, j]) for k in range(a.shape[1])) for j in range(b.shape[1])]
                    for i in range(a.shape[0])], dtype=object).reshape(a.shape[0], b.shape[1])
    half, m = 1 << cfg.acc_bits, 1 << (cfg.acc_bits - 1)
    return requant((acc + m) % half - m, mult, shift, cfg.out_bits)  # the accumulator wraps at acc_bits


@dataclass(frozen=True)
class TileRun:
    """One simulated tile: the rows the array emitted (R, C) and the busy cycles it took."""

    out: np.ndarray
    cycles: int


def _hex(x: np.ndarray, bits: int) -> str:
    mask = (1 << bits) - 1
    return "\n".join(f"{int(v) & mask:x}" for v in x.reshape(-1)) + "\n"


def _pow2(n: int) -> int:
    """Memories are compiled for a power of two >= 16 and reused for every smaller size."""
    return 1 << max(4, math.ceil(math.log2(max(n, 1))))


def _check_run(cfg: RtlConfig, t: int, mult: int, shift: int) -> None:
    if not 1 <= t < (1 << cfg.k_bits) - cfg.rows - cfg.cols:
        raise ValueError(f"streamed length {t}: use 1 <= length < 2^k_bits - rows - cols "
                         f"({(1 << cfg.k_bits) - cfg.rows - cfg.cols})")
    if not (isinstance(shift, int) and 1 <= shift <= 62) or not (isinstance(mult, int) and -2**31 <= mult < 2**31):
        raise ValueError(f"mult={mult!r}, shift={shift!r}: use a signed 32-bit multiplier and a shift in 1..62")


def _vvp(cfg: RtlConfig, exe: Path, plusargs: list[str]) -> str:
    res = subprocess.run([_tool("vvp"), "-n", str(exe), *plusargs], capture_output=True, text=True, timeout=600)
    if res.returncode != 0 or "CYCLES" not in res.stdout:
        raise RuntimeError(f"simulation failed for {cfg}:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    return res.stdout


def _cycles(stdout: str) -> int:
    return next(int(line.split()[1]) for line in stdout.splitlines() if line.startswith("CYCLES"))


def run_tile(cfg: RtlConfig, a: np.ndarray, b: np.ndarray, *, mult: int = 1, shift: int = 1) -> TileRun:
    """Simulate one output-stationary tile: ``a`` (rows, K), ``b`` (K, cols) signed integers; its output and cycles."""
    if cfg.dataflow != "os":
        raise ValueError(f"run_tile runs an os tile; dataflow={cfg.dataflow!r} runs with run_ws_fold or run_gemm")
    a = _check_operand(a, cfg.a_bits, "A")
    b = _check_operand(b, cfg.b_bits, "B")
    if a.shape[0] != cfg.rows or b.shape[1] != cfg.cols or a.shape[1] != b.shape[0]:
        raise ValueError(f"a tile is A ({cfg.rows}, K) @ B (K, {cfg.cols}); got {a.shape} @ {b.shape}")
    k = a.shape[1]
    _check_run(cfg, k, mult, shift)
    exe = _compiled(cfg, _pow2(k))
    with tempfile.TemporaryDirectory(prefix="rtl-run-") as d:
        fa, fb = Path(d) / "a.hex", Path(d) / "b.hex"
        fa.write_text(_hex(a, cfg.a_bits))
        fb.write_text(_hex(b, cfg.b_bits))
        res = _vvp(cfg, exe, [f"+A={fa}", f"+B={fb}", f"+K={k}", f"+MULT={mult}", f"+SHIFT={shift}"])
    out = np.zeros((cfg.rows, cfg.cols), dtype=np.int64)
    for line in res.splitlines():
        parts = line.split()
        if parts and parts[0] == "ROW":
            out[int(parts[1])] = [int(v) for v in parts[2:]]
    return TileRun(out=out, cycles=_cycles(res))


@dataclass(frozen=True)
class WsFoldRun:
    """One weight-stationary fold: raw sums (M, C) (``P`` + this K slice), requantized (M, C), busy cycles."""

    acc: np.ndarray
    out: np.ndarray
    cycles: int


def run_ws_fold(cfg: RtlConfig, a: np.ndarray, w: np.ndarray, p: np.ndarray | None = None, *, final: bool = True,
                mult: int = 1, shift: int = 1) -> WsFoldRun:
    """Simulate one weight-stationary fold: ``a`` (M, rows) activations of one K slice, ``w`` (rows, cols) weights,
    ``p`` (M, cols) partial sums from the previous K fold (None: 0)."""
    if cfg.dataflow != "ws":
        raise ValueError(f"run_ws_fold needs a ws configuration, got dataflow={cfg.dataflow!r}")
    a = _check_operand(a, cfg.a_bits, "A")
    w = _check_operand(w, cfg.b_bits, "W")
    M = a.shape[0]
    p = np.zeros((M, cfg.cols), dtype=np.int64) if p is None else _check_operand(p, cfg.acc_bits, "P")
    if a.shape[1] != cfg.rows or w.shape != (cfg.rows, cfg.cols) or p.shape != (M, cfg.cols):
        raise ValueError(f"a ws fold is A (M, {cfg.rows}) with W ({cfg.rows}, {cfg.cols}) and P (M, {cfg.cols}); "
                         f"got {a.shape}, {w.shape}, {p.shape}")
    _check_run(cfg, M, mult, shift)
    exe = _compiled(cfg, _pow2(M))
    with tempfile.TemporaryDirectory(prefix="rtl-run-") as d:
        files = {k: Path(d) / f"{k}.hex" for k in "AWP"}
        files["A"].write_text(_hex(a, cfg.a_bits))
        files["W"].write_text(_hex(w, cfg.b_bits))
        files["P"].write_text(_hex(p, cfg.acc_bits))
        res = _vvp(cfg, exe, [f"+{k}={v}" for k, v in files.items()] + [f"+M={M}", f"+MULT={mult}", f"+SHIFT={shift}",
                                                                          f"+FINAL={int(final)}"])
    acc = np.zeros((M, cfg.cols), dtype=np.int64)
    out = np.zeros((M, cfg.cols), dtype=np.int64)
    for line in res.splitlines():
        parts = line.split()
        if parts and parts[0] == "OUT":
            m, j = int(parts[1]), int(parts[2])
            acc[m, j], out[m, j] = int(parts[3]), int(parts[4])
    return WsFoldRun(acc=acc, out=out, cycles=_cycles(res))


@dataclass(frozen=True)
class GemmRun:
    """A GEMM run fold by fold: the (M, N) result, the cycles of every fold and their sum."""

    out: np.ndarray
    tile_cycles: tuple[int, ...]

    @property
    def cycles(self) -> int:
        return sum(self.tile_cycles)


def run_gemm(cfg: RtlConfig, a: np.ndarray, b: np.ndarray, *, mult: int = 1, shift: int = 1) -> GemmRun:
    """``a`` (M, K) @ ``b`` (K, N) fold by fold on the array, zero padded at the edges: os folds M x N into tiles
    and streams K; ws folds K x N into weight tiles, streams M, and carries partial sums across the K folds."""
    a = _check_operand(a, cfg.a_bits, "A")
    b = _check_operand(b, cfg.b_bits, "B")
    M, K = a.shape
    N = b.shape[1]
    R, C = cfg.rows, cfg.cols
    out = np.zeros((M, N), dtype=np.int64)
    cycles = []
    if cfg.dataflow == "os":
        for i0 in range(0, M, R):
            for j0 in range(0, N, C):
                ta = np.zeros((R, K), dtype=np.int64)
                tb = np.zeros((K, C), dtype=np.int64)
                ta[: min(R, M - i0)] = a[i0: i0 + R]
                tb[:, : min(C, N - j0)] = b[:, j0: j0 + C]
                run = run_tile(cfg, ta, tb, mult=mult, shift=shift)
                out[i0: i0 + R, j0: j0 + C] = run.out[: min(R, M - i0), : min(C, N - j0)]
                cycles.append(run.cycles)
        return GemmRun(out=out, tile_cycles=tuple(cycles))
    for j0 in range(0, N, C):
        p = None
        for k0 in range(0, K, R):
            ta = np.zeros((M, R), dtype=np.int64)
            tw = np.zeros((R, C), dtype=np.int64)
            ta[:, : min(R, K - k0)] = a[:, k0: k0 + R]
            tw[: min(R, K - k0), : min(C, N - j0)] = b[k0: k0 + R, j0: j0 + C]
            run = run_ws_fold(cfg, ta, tw, p, final=k0 + R >= K, mult=mult, shift=shift)
            p = run.acc
            cycles.append(run.cycles)
        out[:, j0: j0 + C] = run.out[:, : min(C, N - j0)]
    return GemmRun(out=out, tile_cycles=tuple(cycles))
