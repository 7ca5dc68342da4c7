"""benchmarks.snn end to end with a one-epoch profile (the real profiles train for 30 / 60 epochs)."""

from __future__ import annotations

import json

import benchmarks.snn as bs


def test_snn_benchmark_writes_accuracy_accounting_throughput_and_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(bs, "PROFILE", {"quick": (1, 1), "full": (1, 1)})
    out = bs.main(["--out", str(tmp_path), "--quiet"])
    saved = json.loads((tmp_path / "snn.json").read_text())
    vit = saved["spiking_vit_digits"]
    assert 0.0 <= vit["test_accuracy"] <= 1.0 and vit["accounting"]["sops"] > 0 and vit["accounting"]["layers"]
    assert set(saved["throughput"]["samples_per_second"]) == {"fused", "spikingjelly", "snntorch"}
    assert {t["name"] for t in saved["targets"]} == {"spiking_vit_digits_test_accuracy", "training_throughput_ours_over_snntorch"}
    assert saved["pending"] and out["throughput"]["ratios"]["fused_over_snntorch"] > 0
