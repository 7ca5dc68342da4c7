"""neurohw.rtl: the generated systolic array, simulated with Icarus Verilog, equals the integer reference bit for bit
and takes exactly the cycles of neurohw.accel.gemm's model; configurations it cannot generate are refused."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from neurohw.accel import PRESETS
from neurohw.accel.gemm import compute_cycles
from neurohw.rtl import RtlConfig, RtlConfigError, SimulatorMissing, from_accelerator, reference_tile, run_gemm, run_tile

needs_iverilog = pytest.mark.skipif(shutil.which("iverilog") is None,
                                    reason="Icarus Verilog is not installed (make setup installs it: scripts/setup-tools.sh)")


def _operands(rng, cfg: RtlConfig, m: int, k: int, n: int):
    lo_a, hi_a = -(1 << (cfg.a_bits - 1)), (1 << (cfg.a_bits - 1)) - 1
    lo_b, hi_b = -(1 << (cfg.b_bits - 1)), (1 << (cfg.b_bits - 1)) - 1
    a = rng.integers(lo_a, hi_a + 1, (m, k))
    b = rng.integers(lo_b, hi_b + 1, (k, n))
    a[0, 0], b[0, 0] = lo_a, lo_b  # the extremes are always in
    return a, b


@needs_iverilog
@pytest.mark.parametrize("rows, cols, k", [(1, 1, 3), (2, 3, 5), (4, 4, 8), (8, 4, 17)])
def test_a_tile_is_bit_exact_and_takes_the_cycle_models_cycles(rows, cols, k):
    cfg = RtlConfig(rows=rows, cols=cols)
    a, b = _operands(np.random.default_rng(rows * 100 + cols), cfg, rows, k, cols)
    for mult, shift in ((1, 1), (3, 6), (-7, 10)):  # saturating, rounding, negative scale
        run = run_tile(cfg, a, b, mult=mult, shift=shift)
        np.testing.assert_array_equal(run.out, reference_tile(cfg, a, b, mult=mult, shift=shift))
        assert run.cycles == cfg.fold_cycles(k) == compute_cycles(rows, cols, k, rows, cols, "os", False)


@needs_iverilog
def test_a_gemm_of_several_folds_matches_the_model_without_fold_overlap():
    cfg = RtlConfig(rows=4, cols=4)
    a, b = _operands(np.random.default_rng(1), cfg, 10, 12, 7)
    run = run_gemm(cfg, a, b, mult=5, shift=8)
    np.testing.assert_array_equal(run.out, reference_tile(cfg, a, b, mult=5, shift=8))
    assert len(run.tile_cycles) == 3 * 2 and run.cycles == compute_cycles(10, 7, 12, 4, 4, "os", False)


@needs_iverilog
@pytest.mark.parametrize("rows, cols, m, k, n", [(2, 3, 5, 2, 3), (4, 4, 10, 12, 7), (3, 2, 7, 8, 5)])
def test_weight_stationary_folds_carry_partial_sums_and_match_the_model(rows, cols, m, k, n):
    cfg = RtlConfig(rows=rows, cols=cols, dataflow="ws")
    a, b = _operands(np.random.default_rng(m * k * n), cfg, m, k, n)
    run = run_gemm(cfg, a, b, mult=3, shift=8)
    np.testing.assert_array_equal(run.out, reference_tile(cfg, a, b, mult=3, shift=8))
    folds = -(-k // rows) * -(-n // cols)
    assert run.tile_cycles == (cfg.fold_cycles(m),) * folds
    assert run.cycles == compute_cycles(m, n, k, rows, cols, "ws", False)


@needs_iverilog
def test_narrow_widths_and_a_wrapping_accumulator():
    cfg = RtlConfig(rows=3, cols=2, a_bits=4, b_bits=4, acc_bits=8, out_bits=8)
    a = np.full((3, 9), -8)
    b = np.full((9, 2), -8)  # 9 * 64 = 576 wraps in 8 bits
    run = run_tile(cfg, a, b, mult=1, shift=1)
    ref = reference_tile(cfg, a, b, mult=1, shift=1)
    np.testing.assert_array_equal(run.out, ref)
    assert ref[0, 0] == (64 + 1) >> 1  # 576 wraps to 64 in 8 bits (without the wrap: 288, saturated to 127)


def test_configurations_it_cannot_generate_are_refused_by_name():
    for kwargs, name in (({"dataflow": "is"}, "dataflow"), ({"rows": 0}, "rows"), ({"cols": 65}, "cols"),
                         ({"a_bits": 1}, "a_bits"), ({"acc_bits": 12}, "acc_bits"), ({"out_bits": 17}, "out_bits")):
        with pytest.raises(RtlConfigError, match=f"RtlConfig.{name}="):
            RtlConfig(**kwargs)
    cfg = from_accelerator(PRESETS["default"])
    assert (cfg.rows, cfg.cols, cfg.acc_bits) == (PRESETS["default"].rows, PRESETS["default"].cols, PRESETS["default"].acc_bits)
    with pytest.raises(ValueError, match="8-bit signed range"):
        reference_tile(RtlConfig(), np.full((4, 2), 200), np.zeros((2, 4), dtype=int), mult=1, shift=1)


def test_a_missing_simulator_says_how_set_up_installs_it(monkeypatch):
    import neurohw.rtl.sim as sim

    monkeypatch.setattr(sim.shutil, "which", lambda name: None)
    with pytest.raises(SimulatorMissing, match="make setup"):
        run_tile(RtlConfig(rows=1, cols=1), np.ones((1, 2), dtype=int), np.ones((2, 1), dtype=int))


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys is not installed (make setup installs it)")
@pytest.mark.parametrize("dataflow", ["os", "ws"])
def test_yosys_counts_one_multiplier_per_pe_plus_the_requantizers(dataflow):
    from neurohw.rtl.synth import yosys_stat

    s = yosys_stat(RtlConfig(rows=2, cols=3, dataflow=dataflow))
    assert s["multipliers_by_width"] == {"$mul_16": 6, "$mul_64": 3}  # 8 x 8 -> 16-bit products; 32 x 32-bit requant
    assert s["flipflop_bits"] >= 6 * 32  # at least the accumulators / partial sums


def test_missing_yosys_says_how_set_up_installs_it(monkeypatch):
    import neurohw.rtl.synth as synth

    monkeypatch.setattr(synth.shutil, "which", lambda name: None)
    with pytest.raises(synth.YosysMissing, match="make setup"):
        synth.yosys_stat(RtlConfig(rows=1, cols=1))
