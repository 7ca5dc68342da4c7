import pytest
import torch
from torch import nn

from neurohw.constants import ARITH_PJ, SRAM_LEVELS
from neurohw.energy import estimate_energy, memory_level
from neurohw.workload import Numeric, Op, OpKind, Workload, trace


def test_gemm_energy_matches_closed_form():
    lin = nn.Linear(16, 8)
    w = trace(lin, torch.randn(1, 16))
    e = estimate_energy(w)
    macs, bias = 16 * 8, 8
    assert e.compute_uj == pytest.approx((macs * (3.7 + 0.9) + bias * 0.9) * 1e-6)
    bits = (16 * 8 + 8) * 32 + (16 + 8) * 32  # weights + bias once, input row read, output row written
    assert e.memory_level == "SRAM 8 KB"
    assert e.memory_uj == pytest.approx(bits * 10.0 / 64 * 1e-6)
    assert e.total_uj == pytest.approx(e.compute_uj + e.memory_uj)


def test_int8_is_cheaper_and_uses_int8_constants():
    lin = nn.Linear(64, 64)
    w = trace(lin, torch.randn(1, 64))
    e32 = estimate_energy(w)
    e8 = estimate_energy(w.with_precision(numeric=Numeric.INT, weight_bits=8, act_bits=8))
    assert e8.compute_uj == pytest.approx((64 * 64 * 0.23 + 64 * 0.03) * 1e-6)
    assert e8.memory_uj < e32.memory_uj / 3


def test_synaptic_and_neuron_energy_closed_form():
    ops = (
        Op(name="syn", kind=OpKind.SYNAPTIC, layer_type="Linear", timesteps=4, m=1, k=10, n=5, sops=30.0, bias_adds=20.0, params=55),
        Op(name="lif", kind=OpKind.NEURON, layer_type="IFNode", timesteps=4, elements=20.0, neurons=5, spikes=6.0),
    )
    e = estimate_energy(Workload(model="toy", timesteps=4, batch_traced=1, ops=ops))
    assert e.compute_uj == pytest.approx(((30 + 20) * 0.9 + 20 * 0.9) * 1e-6)
    bits = (30 + 20) * 32 + 10 * 4 + 20 * (2 * 32 + 1)
    assert e.memory_uj == pytest.approx(bits * 10.0 / 64 * 1e-6)


def test_memory_level_grows_with_working_set_and_unknown_format_is_named():
    assert memory_level(1)[0] == "SRAM 8 KB"
    assert memory_level(SRAM_LEVELS[-1][0])[0] == "SRAM 1024 KB"
    assert memory_level(SRAM_LEVELS[-1][0] + 1)[0] == "DRAM"
    w = trace(nn.Linear(4, 4), torch.randn(1, 4)).with_precision(numeric=Numeric.INT, weight_bits=4, act_bits=4)
    with pytest.raises(ValueError, match="no mult energy for int4"):
        estimate_energy(w)


def test_every_constant_has_a_source():
    assert all(c.source and c.value_pj > 0 for c in ARITH_PJ.values())
    assert ARITH_PJ[("float", 32, "mult")].value_pj + ARITH_PJ[("float", 32, "add")].value_pj == pytest.approx(4.6)
    assert ARITH_PJ[("int", 8, "mult")].value_pj + ARITH_PJ[("int", 8, "add")].value_pj == pytest.approx(0.23)
