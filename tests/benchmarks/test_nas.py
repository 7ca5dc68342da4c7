"""benchmarks.nas end to end with a tiny profile (the real profiles train for 30 / 60 epochs and search 24 / 60 trials)."""

from __future__ import annotations

import json

import benchmarks.nas as bn


def test_nas_benchmark_writes_the_comparison_correlation_plot_and_targets(tmp_path, monkeypatch):
    tiny = {"epochs": 1, "trials": 3, "fast_epochs": 1, "sample": 3, "top": 1, "seeds": 2, "train_samples": 96}
    monkeypatch.setattr(bn, "PROFILE", {"quick": tiny, "full": tiny})
    out = bn.main(["--out", str(tmp_path), "--quiet"])
    saved = json.loads((tmp_path / "nas.json").read_text())
    assert (tmp_path / "nas.md").exists() and (tmp_path / "nas.png").stat().st_size > 0
    hand, sel = saved["hand_designed"], saved["selected"]
    assert saved["budget_bytes"] == hand["memory"]["total_bytes"] > 0
    assert sel["memory"]["total_bytes"] <= saved["budget_bytes"]  # the hard constraint
    assert len(hand["runs"]) == len(sel["runs"]) == 2 and [r["seed"] for r in sel["runs"]] == [0, 1]
    assert hand["energy_pj"] > 0 and sel["energy_pj"] > 0
    assert hand["search_trial"] == 0 and hand["fast_val_accuracy"] is not None  # enqueued and scored like a candidate
    search = saved["search"]
    assert search["counts"]["COMPLETE"] == 3
    assert all(t["memory_bytes"] <= saved["budget_bytes"] for t in search["trials"] if t["state"] == "COMPLETE")
    rc = saved["rank_correlation"]
    assert rc["n"] == 3 and {r["trial"] for r in rc["sample"]} >= {sel["trial"]}
    assert rc["spearman_fast_vs_full"] is None or -1 <= rc["spearman_fast_vs_full"] <= 1
    targets = {t["name"]: t for t in saved["targets"]}
    assert set(targets) == {"nas_wall_minutes", "nas_best_within_budget", "nas_best_accuracy_minus_hand_designed"}
    assert targets["nas_best_within_budget"]["met"] is True
    gap = sel["test_accuracy_mean"] - hand["test_accuracy_mean"]
    assert targets["nas_best_accuracy_minus_hand_designed"]["measured"] == gap
    assert targets["nas_best_accuracy_minus_hand_designed"]["met"] == (gap >= 0)
    assert out["meta"]["benchmark"] == "nas"
