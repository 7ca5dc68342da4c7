"""Whole-workload mapping (neurohw.accel.model): each op kind against its formula, fusion, attention IO, CLI."""

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from neurohw.accel import AcceleratorConfig, map_gemm
from neurohw.accel.__main__ import main
from neurohw.accel.attention import AttentionMode, attention_traffic, flash_blocks
from neurohw.accel.model import map_op, map_workload
from neurohw.accel.units import UNITS
from neurohw.constants import ARITH_PJ
from neurohw.workload import Numeric, Op, OpKind, Workload, trace

CFG = AcceleratorConfig(rows=16, cols=16, dataflow="os")


def _int8(w: Workload) -> Workload:
    return w.with_precision(numeric=Numeric.INT, weight_bits=8, act_bits=8)


def test_gemm_op_costs_its_repeats_of_map_gemm():
    op = Op("fc", OpKind.GEMM, "Linear", "linear", timesteps=3, m=10, k=20, n=30, macs=3 * 10 * 20 * 30,
            numeric=Numeric.INT, weight_bits=8, act_bits=8)
    c, g = map_op(CFG, op), map_gemm(CFG, 10, 30, 20)
    assert c.repeats == 3 and c.cycles == 3 * g.cycles and c.macs == op.macs
    assert c.dram_read_bytes == 3 * sum(g.dram_reads.values()) and c.energy_pj["compute"] == pytest.approx(3 * g.energy_breakdown_pj["mac"])


def test_fusion_skips_exactly_the_intermediate_round_trip():
    torch.manual_seed(0)
    w = _int8(trace(nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.Linear(64, 8)), torch.randn(4, 10, 16)))
    fused, unfused = map_workload(CFG, w, fuse=True), map_workload(CFG, w, fuse=False)
    inter = 10 * 64  # elements of the fc1 -> GELU tensor per inference, at 8 bits
    assert unfused.dram_bytes - fused.dram_bytes == 2 * inter  # fc1's write and GELU's read
    assert fused.ops[1].dram_read_bytes == 0 and fused.ops[0].dram_write_bytes == 0
    assert fused.energy_pj["compute"] == unfused.energy_pj["compute"]


def test_weights_stay_on_chip_when_the_whole_model_fits_the_weight_buffer():
    torch.manual_seed(0)
    w = _int8(trace(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)), torch.randn(2, 64)))
    fits, streams = map_workload(CFG, w), map_workload(replace(CFG, weight_sram_kb=4.0), w)  # 4.7 KB of weights
    assert fits.weights_resident and not streams.weights_resident
    assert fits.ops[0].dram_read_bytes == 64  # only the input row
    assert streams.ops[0].dram_read_bytes == 64 + 64 * 64 and streams.ops[2].dram_read_bytes == 64 + 64 * 10


def test_vector_units_follow_their_op_counts():
    op = Op("sm", OpKind.SOFTMAX, "softmax", "softmax", elements=1000, in_elements=1000, numeric=Numeric.INT,
            weight_bits=8, act_bits=8)
    c, spec = map_op(CFG, op), UNITS["softmax"]
    assert c.compute_cycles == spec.passes * math.ceil(1000 / CFG.cols)
    assert c.energy_pj["compute"] == pytest.approx(1000 * (spec.mults * ARITH_PJ[("int", 32, "mult")].value_pj
                                                           + spec.adds * ARITH_PJ[("int", 32, "add")].value_pj))
    assert c.dram_read_bytes == 1000 and c.dram_write_bytes == 1000
    with pytest.raises(ValueError, match="no vector unit for function 'erfinv'"):
        map_op(CFG, replace(op, kind=OpKind.ELEMENTWISE, function="erfinv"))


def test_attention_io_follows_the_naive_and_tiled_formulas():
    lq = lkv = 1024
    d, a, s, M = 64, 8, 32, 16384
    naive = attention_traffic(lq, lkv, d, mode=AttentionMode.NAIVE, sram_elements=M, act_bits=a, score_bits=s)
    assert naive.read_bits == (lq + 2 * lkv) * d * a + lq * lkv * (s + a)
    assert naive.write_bits == lq * lkv * (s + a) + lq * d * a
    br, bc = flash_blocks(d, M)
    assert (br, bc) == (min(math.ceil(M / (4 * d)), d), math.ceil(M / (4 * d)))
    flash = attention_traffic(lq, lkv, d, mode=AttentionMode.FLASH, sram_elements=M, act_bits=a, score_bits=s)
    assert flash.read_bits == lq * d * a + math.ceil(lq / br) * 2 * lkv * d * a and flash.write_bits == lq * d * a
    assert flash.read_bits + flash.write_bits < (naive.read_bits + naive.write_bits) / 4
    # Theta(N^2 d^2 / M): with B_r < d, doubling the SRAM halves the K / V streaming
    kv = lambda m: attention_traffic(lq, lkv, d, mode="flash", sram_elements=m, act_bits=a, score_bits=s).read_bits - lq * d * a
    assert kv(2 * 4096) == pytest.approx(kv(4096) / 2)
    # everything fits on chip: each of Q, K, V read once
    small = attention_traffic(16, 16, d, mode="flash", sram_elements=M, act_bits=a, score_bits=s)
    assert small.read_bits == 3 * 16 * d * a and small.query_blocks == 1


def test_attention_op_on_the_array_and_naive_costs_more_dram():
    op = Op("att", OpKind.ATTENTION, "sdpa", "sdpa", m=512, k=64, n=512, heads=4, kv_heads=4, q_len=512, kv_len=512,
            head_dim=64, macs=2 * 4 * 512 * 512 * 64, elements=4 * 512 * 512, calls=1, numeric=Numeric.INT,
            weight_bits=8, act_bits=8)
    flash, naive = map_op(CFG, op, attention="flash"), map_op(CFG, op, attention="naive")
    qk, pv = map_gemm(CFG, 512, 512, 64), map_gemm(CFG, 512, 64, 512)
    assert flash.macs == naive.macs == 4 * (qk.macs + pv.macs)
    assert naive.dram_read_bytes + naive.dram_write_bytes > 3 * (flash.dram_read_bytes + flash.dram_write_bytes)
    assert flash.compute_cycles > 4 * (qk.compute_cycles + pv.compute_cycles)  # plus the softmax unit


def _synaptic(sops: float) -> Op:
    return Op("syn", OpKind.SYNAPTIC, "Linear", "linear", timesteps=4, m=1, k=256, n=128, sops=sops,
              numeric=Numeric.INT, weight_bits=8, act_bits=8)


def test_event_driven_mode_skips_zeros_and_only_accumulates():
    dense = 4 * 256 * 128
    full, sparse = map_op(CFG, _synaptic(dense)), map_op(CFG, _synaptic(dense * 0.1))
    assert full.dram_read_bytes == 256 * 128 + 4 * 256 / 8  # weights (fit the buffer: once) + the spike maps
    assert map_op(CFG, _synaptic(dense), weights_resident=True).dram_read_bytes == 4 * 256 / 8
    fill = 4 * math.ceil(1 / 16) * math.ceil(128 / 16) * (2 * 16 + 16 - 2)
    assert full.compute_cycles == fill + math.ceil(dense / 256)
    assert sparse.compute_cycles == fill + math.ceil(dense * 0.1 / 256)
    assert sparse.energy_pj["compute"] == pytest.approx(dense * 0.1 * ARITH_PJ[("int", 32, "add")].value_pj)
    assert sparse.sram_read_bytes < full.sram_read_bytes  # one weight fetched per event
    # an op that stands for 3 passes (e.g. 3 steps of a cached decode) fetches weights and spikes 3 times
    three = map_op(CFG, replace(_synaptic(dense), passes=3.0))
    assert three.dram_read_bytes == 3 * full.dram_read_bytes
    assert three.compute_cycles == 3 * fill + math.ceil(dense / 256)
    # a product of two spike tensors (spike-driven attention): its second operand moves at 1 bit, never resident
    spikes = replace(_synaptic(dense), function="matmul", b_binary=True)
    assert map_op(CFG, spikes, weights_resident=True).dram_read_bytes == 256 * 128 / 8 + 4 * 256 / 8


def test_neuron_state_spills_to_dram_when_it_does_not_fit():
    op = Op("lif", OpKind.NEURON, "LIFNode", "neuron", timesteps=4, neurons=1000, elements=4000, in_elements=4000,
            fused_in_elements=4000, spikes=400, numeric=Numeric.INT, weight_bits=8, act_bits=8, state_bits=16)
    on_chip = map_op(CFG, op)
    assert on_chip.dram_read_bytes == 0 and on_chip.dram_write_bytes == 4000 / 8  # only the spikes leave
    tiny = AcceleratorConfig(rows=4, cols=4, ofmap_sram_kb=1.0)
    spill = map_op(tiny, op)
    assert spill.dram_read_bytes == spill.dram_write_bytes - 4000 / 8 == 4000 * 16 / 8


def test_bad_workloads_are_refused():
    w = trace(nn.Linear(4, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="integers.*with_precision"):
        map_workload(CFG, w)
    with pytest.raises(ValueError, match="wider than the 8-bit multipliers"):
        map_workload(CFG, w.with_precision(numeric=Numeric.INT, weight_bits=16, act_bits=8))


def test_cli_model_maps_a_workload_json_and_a_local_hf_folder(tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    w = trace(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(2, 8), name="mlp")
    path = tmp_path / "w.json"
    path.write_text(json.dumps(w.to_dict()))
    out = main(["model", str(path), "--json", str(tmp_path / "o.json"), "--rows", "8", "--cols", "8"])
    assert "mlp: 3 ops" in capsys.readouterr().out
    assert json.loads((tmp_path / "o.json").read_text())["cycles"] == out["cycles"] > 0
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "llama")
    out = main(["model", str(tmp_path / "llama"), "--seq-len", "4", "--decode", "3", "--top", "5"])
    kinds = {o["kind"] for o in out["per_op"]}
    assert {"attention", "kv_write", "kv_read", "gemm", "norm", "embedding"} <= kinds
    assert "more ops (--top 0 prints all)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["model", str(tmp_path / "nothing")])
    assert e.value.code == 2
    assert "not a HF model folder" in capsys.readouterr().err
