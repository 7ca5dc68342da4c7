"""benchmarks.accel end to end on small stand-in workloads (the real ones are traced by the benchmark itself)."""

from __future__ import annotations

import json

import torch
from torch import nn

import benchmarks.accel as ba
from neurohw.workload import Numeric, trace
from neurohw.workload.reference import trace_decode


def _workloads(profile, log):
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    int8 = dict(numeric=Numeric.INT, weight_bits=8, act_bits=8)
    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64, num_labels=10))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128))
    ids = torch.randint(3, 64, (1, 96))
    return {"vit-b16": trace(vit.eval(), torch.rand(1, 3, 32, 32), name="tiny vit", **int8),
            "smollm2-decode-128": trace_decode(llama.eval(), prompt_len=4, new_tokens=6, **int8),
            "smollm2-prefill-96": trace(llama, {"input_ids": ids, "logits_to_keep": 1}, name="tiny prefill", **int8),
            "mlp": trace(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(2, 8), **int8)}


def test_accel_benchmark_writes_results_targets_and_plots(tmp_path, monkeypatch):
    monkeypatch.setattr(ba, "trace_workloads", _workloads)
    out = ba.main(["--out", str(tmp_path), "--no-llm", "--quiet"])
    saved = json.loads((tmp_path / "accel.json").read_text())
    assert set(saved["results"]) == {f"{w}/{p}" for w in ("vit-b16", "smollm2-decode-128", "smollm2-prefill-96", "mlp")
                                     for p in ("edge", "default", "server")}
    r = saved["results"]["vit-b16/default"]
    assert r["energy_pj"]["total"] == r["energy_pj"]["compute"] + r["energy_pj"]["sram"] + r["energy_pj"]["dram"]
    assert {t["name"] for t in saved["targets"]} >= {"mapping_wall_s_vit-b16", "mapping_wall_s_smollm2-decode-128"}
    assert [row["strategy"] for row in saved["dse"]["rows"]] == ["presets", "random", "optuna"]
    assert saved["dse"]["rows"][2]["evals"] == 12 and len(saved["dse"]["seed_spread"]["optuna"]["best_edp_per_seed"]) == 5
    assert all((tmp_path / f"accel_{n}.png").stat().st_size > 0 for n in ("layers", "energy", "dse"))
    assert (tmp_path / "accel.md").read_text().startswith("# neuromfm accelerator") and out["energy_table"]
