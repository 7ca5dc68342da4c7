"""benchmarks.snn_quant end to end with a one-epoch profile, short ladders and a two-step LM."""

from __future__ import annotations

import json

import benchmarks.snn_quant as bq


def test_snn_quant_benchmark_writes_rows_searches_and_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(bq, "PROFILE", {"quick": (1, 2, 3000, 2), "full": (1, 2, 3000, 2)})
    monkeypatch.setattr(bq, "LADDERS", {"weight_ladder": (8, 4), "membrane_ladder": (16, 8)})
    monkeypatch.setattr(bq, "LM_VAL_WINDOWS", 2)
    monkeypatch.setattr(bq, "CALIB", 32)
    out = bq.main(["--out", str(tmp_path), "--quiet"])
    saved = json.loads((tmp_path / "snn_quant.json").read_text())
    assert (tmp_path / "snn_quant.md").exists() and (tmp_path / "snn_quant.png").stat().st_size > 0
    rows = {r["name"]: r for r in saved["vit"]["rows"]}
    fp32, w8 = rows["fp32 (BatchNorm folded)"], rows["uniform W8 / V8"]
    assert fp32["memory_saved"] == 0 and 0.7 < w8["memory_saved"] < 0.8  # 32 -> 8 bits, plus scales and biases
    assert rows["fp32 (as trained, BatchNorm)"]["total_bytes"] > fp32["total_bytes"]  # BatchNorm folded away
    for name in ("tiered", "flat"):  # each search either answers or reports the closest candidate
        s = saved["vit"]["searches"][name]
        assert ("best" in s and s["evaluations"] >= 1) or ("closest" in s and "error" in s)
    flat = saved["vit"]["searches"]["flat"]
    if "best" in flat:  # 12 weights x 2 widths + 16 membranes x 2 widths, plus the reference and the guided steps
        assert flat["stage_evaluations"]["sensitivity"] == 12 * 2 + 16 * 2
    assert out["lm"]["rows"][0]["test_bpb"] > 0 and saved["lm"]["items"] > 0
    assert {t["name"] for t in saved["targets"]} <= {"tiered_memory_saved_vs_fp32_spiking_vit", "tiered_test_accuracy_lost",
                                                     "flat_over_tiered_evaluations", "tiered_objective_minus_flat_objective"}
    assert len(saved["vit_other_seeds"]) == 1 and saved["vit_other_seeds"][0]["seed"] == 1
    assert all(r["flat_evaluations"] > r["tiered_evaluations"] for r in saved["search_comparison"])
