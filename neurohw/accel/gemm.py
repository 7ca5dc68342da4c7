r"""Cycles, memory traffic and energy of one GEMM ``C[M, N] = A[M, K] @ B[K, N]`` on an R x C systolic array.

Mapping (the SCALE-Sim convention: Samajdar et al., "A systematic methodology for characterizing scalability
of DNN accelerators using SCALE-Sim", ISPASS 2020). Each dataflow puts two GEMM dimensions on the array
(S_r on its rows, S_c on its columns) and streams the third over time (T):

    dataflow                 S_r   S_c   T     stationary in the PEs
    os  output stationary    M     N     K     C (accumulators)
    ws  weight stationary    K     N     M     B
    is  input stationary     K     M     N     A

Folds: F = F_r * F_c with F_r = ceil(S_r / R), F_c = ceil(S_c / C).

Cycles of one fold: the stationary tile is loaded (or, for os, the results drained) in R cycles, operands are
skewed across the array in R + C - 2 cycles, and T elements stream through, so (SCALE-Sim's closed form)

    tau_fold = 2R + C + T - 2
    compute cycles, folds run one after another:   F * (2R + C + T - 2)
    compute cycles, ``overlap_folds``:             (2R + C + T - 2) + (F - 1) * max(T, R)

With overlap, fold f+1's tile load / drain runs under fold f's streaming, so each further fold costs its T
streaming cycles, but never less than the R cycles its tile takes to load.

SRAM traffic in elements (each operand read from its own buffer; edge folds count only real elements):

    os:  A reads M K F_c   B reads K N F_r   C writes M N
    ws:  A reads M K F_c   B reads K N       C writes M N F_r, C reads M N (F_r - 1)  (partial sums)
    is:  A reads M K       B reads K N F_c   C writes M N F_r, C reads M N (F_r - 1)

plus the A and B buffer writes that fill them from DRAM (the DRAM reads below, in elements).

DRAM traffic in bytes, with the buffers used as blocking tiles (U_A, U_B: usable bytes of the input and
weight buffers, half of each when double-buffered; S_A = M K a, S_B = K N b the operand sizes):

- if A or B fits its buffer, the fitting one stays resident and the other streams through once:
  S_A + S_B;
- else the cheaper of two loop orders: keep M_b = floor(U_A / (K a)) rows of A resident and stream B
  ceil(M / M_b) times (S_A + ceil(M / M_b) S_B), or keep N_b = floor(U_B / (K b)) columns of B resident and
  stream A ceil(N / N_b) times (ceil(N / N_b) S_A + S_B);
- if not even one row of A or one column of B fits (M_b = N_b = 0), every SRAM re-read goes to DRAM
  (S x reads / elements).

Outputs are written once at ``out_bits`` (row folds innermost for ws / is, so a column strip's partial sums
stay on chip when the output buffer holds them); partial sums of a strip (T x C at ``acc_bits``) that do not
fit spill: M N (F_r - 1) writes and reads at ``acc_bits``.

    memory cycles = DRAM bytes / dram_bytes_per_cycle
    cycles = max(compute, memory) with double buffering, compute + memory without

Energy (pJ): MACs * (E_mult(mac_bits) + E_add(acc_bits)) + sum over buffers (bits accessed * E_sram(capacity)
/ 64) + DRAM bits * E_dram / 64, with E_sram interpolated log-log between Horowitz's 8 KB / 32 KB / 1 MB
points (extrapolated with the end slopes) and on-chip energies scaled to the configured node
(:mod:`neurohw.constants`). Not modelled: PE-to-PE register forwarding and control; stated, not hidden.

Utilization = MACs / (R * C * cycles).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import asdict, dataclass

from neurohw.accel.config import AcceleratorConfig, Dataflow
from neurohw.constants import ARITH_PJ, DRAM_PJ_PER_64B, SRAM_LEVELS, TECH_REF_NODE_NM, TECH_REF_VDD

__all__ = ["GemmResult", "map_gemm", "fold_dims", "compute_cycles", "sram_pj_per_64b", "tech_scale"]


@dataclass(frozen=True)
class GemmResult:
    """Per-GEMM figures; traffic dicts are keyed by operand ``a``, ``b``, ``c`` (elements for SRAM, bytes for DRAM)."""

    m: int
    n: int
    k: int
    dataflow: str
    folds: int
    compute_cycles: int
    memory_cycles: float
    cycles: float
    bound: str
    macs: int
    sram_reads: dict
    sram_writes: dict
    dram_reads: dict
    dram_writes: dict
    energy_pj: float
    energy_breakdown_pj: dict
    utilization: float

    def to_dict(self) -> dict:
        return asdict(self)


def fold_dims(m: int, n: int, k: int, rows: int, cols: int, dataflow: Dataflow) -> tuple[int, int, int, int, int]:
    """``(S_r, S_c, T, F_r, F_c)`` of the mapping table in the module docstring."""
    sr, sc, t = {Dataflow.OS: (m, n, k), Dataflow.WS: (k, n, m), Dataflow.IS: (k, m, n)}[Dataflow(dataflow)]
    return sr, sc, t, math.ceil(sr / rows), math.ceil(sc / cols)


def compute_cycles(m: int, n: int, k: int, rows: int, cols: int, dataflow: Dataflow, overlap: bool) -> int:
    """Compute cycles of the closed form in the module docstring."""
    _, _, t, fr, fc = fold_dims(m, n, k, rows, cols, dataflow)
    folds = fr * fc
    one = 2 * rows + cols + t - 2
    return one + (folds - 1) * max(t, rows) if overlap else folds * one


def tech_scale(cfg: AcceleratorConfig) -> float:
    """On-chip energy factor (node / 45 nm) * (V / 0.9 V)^2 (:mod:`neurohw.constants`)."""
    return (cfg.node_nm / TECH_REF_NODE_NM) * (cfg.vdd / TECH_REF_VDD) ** 2


def sram_pj_per_64b(capacity_bytes: float) -> float:
    """Energy of one 64-bit SRAM access at 45 nm, log-log interpolated in Horowitz's capacity points."""
    xs = [math.log(c) for c, _ in SRAM_LEVELS]
    ys = [math.log(e.value_pj) for _, e in SRAM_LEVELS]
    x = math.log(capacity_bytes)
    i = min(max(bisect.bisect_right(xs, x) - 1, 0), len(xs) - 2)  # segment of x; the end segments extrapolate
    slope = (ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i])
    return math.exp(ys[i] + slope * (x - xs[i]))


def _operand_dram_bytes(m: int, n: int, k: int, sizes: dict, usable: dict, reads: dict, elements: dict) -> dict:
    """DRAM bytes read for A and B under the blocking rules of the module docstring."""
    if sizes["a"] <= usable["a"] or sizes["b"] <= usable["b"]:
        return {"a": sizes["a"], "b": sizes["b"]}
    mb = math.floor(usable["a"] / (sizes["a"] / m))  # rows of A that fit (a row is K values)
    nb = math.floor(usable["b"] / (sizes["b"] / n))  # columns of B that fit
    options = []
    if mb >= 1:
        options.append({"a": sizes["a"], "b": math.ceil(m / mb) * sizes["b"]})
    if nb >= 1:
        options.append({"a": math.ceil(n / nb) * sizes["a"], "b": sizes["b"]})
    if not options:
        return {x: sizes[x] * reads[x] / elements[x] for x in ("a", "b")}
    return min(options, key=lambda o: o["a"] + o["b"])


def _check_dims(**dims: int) -> None:
    for name, v in dims.items():
        if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            raise ValueError(f"GEMM dimension {name}={v!r} is invalid: use a positive int")


@functools.lru_cache(maxsize=65536)
def map_gemm(cfg: AcceleratorConfig, m: int, n: int, k: int, *, a_bits: int | None = None, b_bits: int | None = None,
             out_bits: int | None = None, write_output: bool = True, b_resident: bool = False) -> GemmResult:
    """Map ``C[m, n] = A[m, k] @ B[k, n]`` onto ``cfg`` (formulas in the module docstring).

    ``a_bits``/``b_bits``: operand widths in memory (default ``cfg.mac_bits``; wider than the multipliers is an
    error, narrower ones are stored packed and computed on the full-width multipliers); ``out_bits``: width of
    the written outputs (default ``a_bits``, i.e. requantized to the activation format). ``write_output=False``:
    the outputs stay on chip for a fused consumer (no DRAM write of C; partial-sum spills still count).
    ``b_resident=True``: B (the weights) already sits in the weight buffer, loaded once for many inferences
    (see :func:`neurohw.accel.model.map_workload`): no DRAM reads or buffer fills of B, and A streams once.
    Results are cached (configs are frozen), so mapping a model with repeated shapes is fast.
    """
    _check_dims(m=m, n=n, k=k)
    a_bits = cfg.mac_bits if a_bits is None else a_bits
    b_bits = cfg.mac_bits if b_bits is None else b_bits
    out_bits = a_bits if out_bits is None else out_bits
    for name, bits in (("a_bits", a_bits), ("b_bits", b_bits)):
        if not (isinstance(bits, int) and 1 <= bits <= cfg.mac_bits):
            raise ValueError(f"{name}={bits!r} does not fit the {cfg.mac_bits}-bit multipliers: use 1..{cfg.mac_bits} "
                             "or a config with wider mac_bits")
    if not (isinstance(out_bits, int) and 1 <= out_bits <= cfg.acc_bits):
        raise ValueError(f"out_bits={out_bits!r} is invalid: use 1..acc_bits ({cfg.acc_bits})")
    df = cfg.dataflow
    sr, sc, t, fr, fc = fold_dims(m, n, k, cfg.rows, cfg.cols, df)
    cc = compute_cycles(m, n, k, cfg.rows, cfg.cols, df, cfg.overlap_folds)
    macs = m * n * k

    # how often each operand passes through the array (the SRAM table of the module docstring)
    a_passes, b_passes, c_passes = {Dataflow.OS: (fc, fr, 1), Dataflow.WS: (fc, 1, fr), Dataflow.IS: (1, fc, fr)}[df]
    reads = {"a": m * k * a_passes, "b": k * n * b_passes, "c": m * n * (c_passes - 1)}
    writes = {"c": m * n * c_passes}

    copies = 2 if cfg.double_buffer else 1
    usable = {"a": cfg.ifmap_sram_kb * 1024 / copies, "b": cfg.weight_sram_kb * 1024 / copies,
              "c": cfg.ofmap_sram_kb * 1024 / copies}
    sizes = {"a": m * k * a_bits / 8, "b": k * n * b_bits / 8}
    elements = {"a": m * k, "b": k * n}
    if b_resident:
        dram_r = {"a": sizes["a"], "b": 0.0}
    else:
        dram_r = _operand_dram_bytes(m, n, k, sizes, usable, reads, elements)
    partial_strip = t * min(cfg.cols, sc) * cfg.acc_bits / 8  # ws / is: one column strip's partial sums
    spill = df is not Dataflow.OS and fr > 1 and partial_strip > usable["c"]
    partial_bytes = m * n * (fr - 1) * cfg.acc_bits / 8 if spill else 0.0
    dram_r["c"] = partial_bytes
    dram_w = {"c": (m * n * out_bits / 8 if write_output else 0.0) + partial_bytes}
    writes["a"], writes["b"] = dram_r["a"] * 8 / a_bits, dram_r["b"] * 8 / b_bits  # buffer fills from DRAM
    dram_bytes = sum(dram_r.values()) + sum(dram_w.values())
    mem_cycles = dram_bytes / cfg.dram_bytes_per_cycle
    cycles = max(cc, mem_cycles) if cfg.double_buffer else cc + mem_cycles

    scale = tech_scale(cfg)
    e_mac = macs * (ARITH_PJ[("int", cfg.mac_bits, "mult")].value_pj + ARITH_PJ[("int", cfg.acc_bits, "add")].value_pj) * scale
    c_sram_bits = (reads["c"] + writes["c"]) * cfg.acc_bits
    e_sram = scale / 64 * ((reads["a"] + writes["a"]) * a_bits * sram_pj_per_64b(cfg.ifmap_sram_kb * 1024)
                           + (reads["b"] + writes["b"]) * b_bits * sram_pj_per_64b(cfg.weight_sram_kb * 1024)
                           + c_sram_bits * sram_pj_per_64b(cfg.ofmap_sram_kb * 1024))
    e_dram = dram_bytes * 8 * DRAM_PJ_PER_64B.value_pj / 64
    breakdown = {"mac": e_mac, "sram": e_sram, "dram": e_dram}
    return GemmResult(m=m, n=n, k=k, dataflow=df.value, folds=fr * fc, compute_cycles=cc, memory_cycles=mem_cycles,
                      cycles=cycles, bound="memory" if mem_cycles > cc else "compute", macs=macs, sram_reads=reads,
                      sram_writes=writes, dram_reads=dram_r, dram_writes=dram_w, energy_pj=sum(breakdown.values()),
                      energy_breakdown_pj=breakdown, utilization=macs / (cfg.pes * cycles))
