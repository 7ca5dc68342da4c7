"""neurohw.accel: the systolic GEMM model against its closed forms, a register-level simulation, and bad input."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from neurohw.accel import AcceleratorConfig, Dataflow, compute_cycles, map_gemm
from neurohw.accel.gemm import fold_dims, sram_pj_per_64b
from neurohw.constants import SRAM_LEVELS


def _simulate_os_fold(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, int]:
    """Register-level output-stationary R x C array (R = rows of a, C = columns of b), one fold.

    Rows of ``a`` enter from the left skewed by their row index, columns of ``b`` from the top skewed by
    their column index; every cycle operands move one PE right / down and each PE multiply-accumulates the
    pair it holds. Returns the result and the cycles until the last output has drained out of the array
    (R shifts down the columns after the last MAC)."""
    R, T = a.shape
    C = b.shape[1]
    acc = np.zeros((R, C), dtype=np.int64)
    a_reg = np.full((R, C), None, dtype=object)
    b_reg = np.full((R, C), None, dtype=object)
    cycle, last_mac = 0, -1
    while True:
        a_reg[:, 1:] = a_reg[:, :-1].copy()
        b_reg[1:, :] = b_reg[:-1, :].copy()
        for i in range(R):
            kk = cycle - i
            a_reg[i, 0] = int(a[i, kk]) if 0 <= kk < T else None
        for j in range(C):
            kk = cycle - j
            b_reg[0, j] = int(b[kk, j]) if 0 <= kk < T else None
        busy = False
        for i in range(R):
            for j in range(C):
                if a_reg[i, j] is not None and b_reg[i, j] is not None:
                    acc[i, j] += a_reg[i, j] * b_reg[i, j]
                    busy, last_mac = True, cycle
        if not busy and cycle > R + C + T:
            break
        cycle += 1
    return acc, last_mac + 1 + R


@pytest.mark.parametrize("R,C,T", [(1, 1, 1), (4, 4, 4), (3, 5, 7), (6, 2, 1)])
def test_register_level_os_array_matches_closed_form(R, C, T):
    rng = np.random.default_rng(R * 100 + C * 10 + T)
    a, b = rng.integers(-128, 128, (R, T)), rng.integers(-128, 128, (T, C))
    out, cycles = _simulate_os_fold(a, b)
    np.testing.assert_array_equal(out, a @ b)
    assert cycles == compute_cycles(R, C, T, R, C, Dataflow.OS, overlap=False) == 2 * R + C + T - 2


@pytest.mark.parametrize("df", list(Dataflow))
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (64, 96, 96), (17, 33, 5), (1, 576, 192), (197, 768, 768)])
@pytest.mark.parametrize("overlap", [False, True])
def test_compute_cycles_follow_the_fold_fill_drain_formulas(df, m, n, k, overlap):
    R, C = 16, 8
    sr, sc, t = {Dataflow.OS: (m, n, k), Dataflow.WS: (k, n, m), Dataflow.IS: (k, m, n)}[df]
    folds = math.ceil(sr / R) * math.ceil(sc / C)
    expect = (2 * R + C + t - 2) + (folds - 1) * max(t, R) if overlap else folds * (2 * R + C + t - 2)
    assert fold_dims(m, n, k, R, C, df)[:3] == (sr, sc, t)
    assert compute_cycles(m, n, k, R, C, df, overlap) == expect
    r = map_gemm(AcceleratorConfig(rows=R, cols=C, dataflow=df, overlap_folds=overlap), m, n, k)
    assert r.compute_cycles == expect and r.folds == folds
    assert 0 < r.utilization <= 1 and r.cycles >= r.compute_cycles


def test_sram_traffic_per_dataflow():
    m, n, k, R, C = 40, 24, 20, 8, 8
    fm, fn, fk = 5, 3, 3  # ceil(40/8), ceil(24/8), ceil(20/8)
    os_ = map_gemm(AcceleratorConfig(rows=R, cols=C, dataflow="os"), m, n, k)
    assert os_.sram_reads == {"a": m * k * fn, "b": k * n * fm, "c": 0} and os_.sram_writes["c"] == m * n
    ws = map_gemm(AcceleratorConfig(rows=R, cols=C, dataflow="ws"), m, n, k)
    assert ws.sram_reads == {"a": m * k * fn, "b": k * n, "c": m * n * (fk - 1)} and ws.sram_writes["c"] == m * n * fk
    is_ = map_gemm(AcceleratorConfig(rows=R, cols=C, dataflow="is"), m, n, k)
    assert is_.sram_reads == {"a": m * k, "b": k * n * fm, "c": m * n * (fk - 1)} and is_.sram_writes["c"] == m * n * fk


def test_dram_traffic_fetches_once_when_it_fits_and_refetches_when_not():
    big = AcceleratorConfig(rows=8, cols=8, dataflow="os")
    r = map_gemm(big, 64, 64, 64)
    assert r.dram_reads == {"a": 64 * 64, "b": 64 * 64, "c": 0.0} and r.dram_writes == {"c": 64 * 64}
    # B (4 KiB) does not fit a 1 KiB weight buffer (512 B usable), but A fits its buffer: A stays, B streams once
    one_fits = map_gemm(AcceleratorConfig(rows=8, cols=8, dataflow="os", weight_sram_kb=1.0), 64, 64, 64)
    assert one_fits.dram_reads == r.dram_reads
    # neither fits: blocks of 512 B / 64 B per row = 8 rows of A (or 8 columns of B); the other operand streams
    # ceil(64 / 8) times; with unequal buffers the cheaper loop order wins
    small = AcceleratorConfig(rows=8, cols=8, dataflow="os", weight_sram_kb=1.0, ifmap_sram_kb=2.0)
    s = map_gemm(small, 64, 64, 64)
    assert s.dram_reads["a"] == 64 * 64 and s.dram_reads["b"] == 64 * 64 * math.ceil(64 / 16)
    assert s.energy_breakdown_pj["dram"] > r.energy_breakdown_pj["dram"]
    # not even one K-long row fits: every SRAM re-read of the operand goes to DRAM
    tiny = map_gemm(AcceleratorConfig(rows=8, cols=8, dataflow="os", weight_sram_kb=1.0, ifmap_sram_kb=1.0), 64, 64, 4096)
    assert tiny.dram_reads["a"] == 64 * 4096 * math.ceil(64 / 8) and tiny.dram_reads["b"] == 4096 * 64 * math.ceil(64 / 8)
    # ws partial sums spill when a strip (M x C at 32 bits) does not fit the output buffer
    ws = map_gemm(AcceleratorConfig(rows=8, cols=8, dataflow="ws", ofmap_sram_kb=1.0), 256, 8, 64)
    assert ws.dram_reads["c"] == 256 * 8 * 7 * 4 and ws.dram_writes["c"] == 256 * 8 + 256 * 8 * 7 * 4


def test_memory_bound_and_double_buffering():
    cfg = AcceleratorConfig(rows=32, cols=32, dataflow="ws", dram_bytes_per_cycle=0.5)
    r = map_gemm(cfg, 1, 1024, 1024)  # a GEMV: 1 MiB of weights, 1 M MACs
    assert r.bound == "memory" and r.cycles == r.memory_cycles
    single = map_gemm(AcceleratorConfig(rows=32, cols=32, dataflow="ws", dram_bytes_per_cycle=0.5,
                                        weight_sram_kb=2048, double_buffer=False), 1, 1024, 1024)
    assert single.cycles == single.compute_cycles + single.memory_cycles


def test_energy_counts_data_movement_and_scales_with_the_node():
    r = map_gemm(AcceleratorConfig(), 128, 128, 128)
    e = r.energy_breakdown_pj
    assert r.energy_pj == pytest.approx(sum(e.values())) and e["sram"] > 0 and e["dram"] > 0
    assert e["mac"] == pytest.approx(128 ** 3 * (0.2 + 0.1))  # INT8 mult + INT32 add, 45 nm
    s = map_gemm(AcceleratorConfig(node_nm=22.5, vdd=0.9), 128, 128, 128).energy_breakdown_pj
    assert s["mac"] == pytest.approx(e["mac"] / 2) and s["sram"] == pytest.approx(e["sram"] / 2) and s["dram"] == e["dram"]
    for cap, const in SRAM_LEVELS:
        assert sram_pj_per_64b(cap) == pytest.approx(const.value_pj)
    assert sram_pj_per_64b(8 * 1024) < sram_pj_per_64b(100 * 1024) < sram_pj_per_64b(1024 * 1024)


@pytest.mark.parametrize("change,field", [
    ({"rows": 0}, "rows"), ({"cols": 1.5}, "cols"), ({"dataflow": "rs"}, "dataflow"), ({"mac_bits": 4}, "mac_bits"),
    ({"ifmap_sram_kb": 0.5}, "ifmap_sram_kb"), ({"ofmap_sram_kb": 1.0, "rows": 32, "cols": 32}, "ofmap_sram_kb"),
    ({"dram_bytes_per_cycle": 0}, "dram_bytes_per_cycle"),
])
def test_impossible_configs_are_refused_naming_the_field(change, field):
    with pytest.raises(ValueError, match=f"AcceleratorConfig.{field}="):
        AcceleratorConfig(**change)


def test_bad_gemm_dimensions_and_bits():
    with pytest.raises(ValueError, match="GEMM dimension k=0"):
        map_gemm(AcceleratorConfig(), 4, 4, 0)
    with pytest.raises(ValueError, match="a_bits=16"):
        map_gemm(AcceleratorConfig(), 4, 4, 4, a_bits=16)
    packed = map_gemm(AcceleratorConfig(weight_sram_kb=128.0, rows=8, cols=8), 64, 256, 256, b_bits=4)
    assert packed.dram_reads["b"] == 256 * 256 / 2  # 4-bit weights stored packed


def test_cli_prints_one_json_object():
    cmd = [sys.executable, "-m", "neurohw.accel", "gemm", "--m", "64", "--n", "96", "--k", "96", "--rows", "16",
           "--cols", "16", "--dataflow", "ws", "--overlap"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    for key in ("cycles", "sram_reads", "sram_writes", "dram_reads", "dram_writes", "energy_pj", "utilization"):
        assert key in out
    assert out["compute_cycles"] == (2 * 16 + 16 + 64 - 2) + 35 * 64 and out["config"]["overlap_folds"] is True
    bad = subprocess.run(cmd[:-1] + ["--rows", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "AcceleratorConfig.rows=0" in bad.stderr
