"""neurohw.rtl.vector: the integer softmax / GELU / LayerNorm units, simulated with Icarus Verilog under cocotb test
benches, equal their integer reference bit for bit and take the stated cycles; the reference approximates the float
functions; what cannot be generated or run is refused by name."""

from __future__ import annotations

import importlib.util
import math
import shutil

import numpy as np
import pytest

from neurohw.rtl import RtlConfigError, SimulatorMissing
from neurohw.rtl.vector import (ROW_OVERHEAD, VectorConfig, gelu_constants, gelu_int, layernorm_constants,
                                layernorm_int, model_cycles, mult_shift, rtl_cycles, softmax_constants, softmax_int)

needs_cocotb = pytest.mark.skipif(shutil.which("iverilog") is None or importlib.util.find_spec("cocotb") is None,
                                  reason="Icarus Verilog or cocotb is missing (make setup installs both)")


def _rows(rng, rows, n, lo=-32768, hi=32767):
    x = rng.integers(lo, hi + 1, (rows, n))
    x[0, 0], x[0, -1] = lo, hi  # the extremes are always in
    x[-1, :] = 7  # a constant row
    return x


@needs_cocotb
def test_the_three_units_are_bit_exact_and_take_the_stated_cycles():
    from neurohw.rtl.vector_sim import run_vector

    rng = np.random.default_rng(0)
    cfg = VectorConfig(lanes=3)  # 5 rows: the last group is partial
    n, rows = 10, 5
    gamma, beta = rng.normal(1, 0.3, n), rng.normal(0, 0.5, n)
    cases = {"softmax": (softmax_constants(1 / 256), softmax_int),
             "gelu": (gelu_constants(1 / 1024, out_scale=32 / 127), gelu_int),
             "layernorm": (layernorm_constants(gamma, beta, 1 / 64, out_scale=4 / 127), layernorm_int)}
    for unit, (k, ref) in cases.items():
        x = _rows(rng, rows, n)
        run = run_vector(unit, cfg, x, k)
        np.testing.assert_array_equal(run.out, ref(x, k, cfg), err_msg=unit)
        assert len(run.group_cycles) == 2 and len(set(run.group_cycles)) == 1, unit  # lanes in lockstep
        assert run.cycles == rtl_cycles(unit, n, rows, cfg.lanes), unit
        # the model counts the passes; with full groups it differs by exactly the per-row overhead
        assert rtl_cycles(unit, n, 6, 3) - model_cycles(unit, n, 6, 3) == 2 * ROW_OVERHEAD[unit]


def test_the_reference_approximates_the_float_functions():
    rng = np.random.default_rng(1)
    cfg = VectorConfig(lanes=1)
    s = 1 / 256
    x = rng.integers(-3000, 3000, (16, 64))
    xf = x * s
    sm = np.exp(xf - xf.max(1, keepdims=True))
    sm /= sm.sum(1, keepdims=True)
    assert np.abs(softmax_int(x, softmax_constants(s), cfg) / 256 - sm).max() <= 2 / 256

    from scipy.special import erf

    k = gelu_constants(s, out_scale=12 / 127)
    g = 0.5 * xf * (1 + erf(xf / math.sqrt(2)))
    assert np.abs(gelu_int(x, k, cfg) * k.out_scale - g).max() <= 1.0 * k.out_scale

    gamma, beta = rng.normal(1, 0.2, 64), rng.normal(0, 0.3, 64)
    k = layernorm_constants(gamma, beta, s, out_scale=5 / 127)
    mu, var = xf.mean(1, keepdims=True), xf.var(1, keepdims=True)
    ln = np.clip(gamma * (xf - mu) / np.sqrt(var + 1e-5) + beta, -128 * k.out_scale, 127 * k.out_scale)
    assert np.abs(layernorm_int(x, k, cfg) * k.out_scale - ln).max() <= 1.0 * k.out_scale


def test_mult_shift_is_the_most_precise_32_bit_ratio():
    for ratio in (3e-7, -0.0123, 0.75, 1.0, 700.0):
        m, sh = mult_shift(ratio)
        assert abs(m) < 2 ** 31 and 1 <= sh <= 62
        assert abs(m / 2 ** sh - ratio) <= abs(ratio) * 2 ** -29
    with pytest.raises(ValueError, match="too large"):
        mult_shift(2.0 ** 40)


def test_what_cannot_be_generated_or_run_is_refused_by_name():
    with pytest.raises(RtlConfigError, match="lanes"):
        VectorConfig(lanes=0)
    with pytest.raises(RtlConfigError, match="in_bits"):
        VectorConfig(in_bits=32)
    with pytest.raises(ValueError, match=r"2\^-10, 1/4"):
        softmax_constants(1.0)
    cfg = VectorConfig(n_bits=3)
    with pytest.raises(ValueError, match="1..8"):
        softmax_int(np.zeros((1, 9), dtype=np.int64), softmax_constants(1 / 16), cfg)
    with pytest.raises(ValueError, match="16-bit signed"):
        gelu_int(np.full((1, 2), 40000), gelu_constants(1 / 16, 1 / 16), VectorConfig())
    with pytest.raises(ValueError, match="columns"):
        layernorm_int(np.zeros((1, 3), dtype=np.int64), layernorm_constants([1, 1], [0, 0], 1 / 16, 1 / 16), VectorConfig())
    from neurohw.rtl.vector import vector_sources

    with pytest.raises(RtlConfigError, match="unit='relu'"):
        vector_sources("relu", VectorConfig(), "/tmp/unused")


def test_a_missing_cocotb_says_how_set_up_installs_it(monkeypatch):
    import builtins

    from neurohw.rtl import vector_sim

    real = builtins.__import__

    def no_cocotb(name, *a, **kw):
        if name.startswith("cocotb_tools"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_cocotb)
    with pytest.raises(SimulatorMissing, match="make setup"):
        vector_sim._runner()


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys is not installed (make setup installs it)")
def test_yosys_counts_the_units_multipliers_and_dividers():
    from neurohw.rtl.synth import yosys_stat_vector

    st = yosys_stat_vector("softmax", VectorConfig(lanes=2))
    # per lane: x - m is an adder; i-exp's z q_ln2 and t^2, the normalization e * factor; the divisions z and factor
    assert st["multipliers"] == 2 * 3 and st["dividers"] >= 2 * 2
    assert st["flipflop_bits"] > 0
