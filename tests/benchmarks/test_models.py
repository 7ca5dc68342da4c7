"""benchmarks.models: rows from the real entry points, the hash-keyed cache, and failure isolation."""

from __future__ import annotations

import json

import pytest

import benchmarks.models as bm


def _tiny_mfm(profile, outs):
    return ["--size", "small", "--steps", "3", "--n-train", "16", "--n-val", "8", "--n-test", "8",
            "--images-per-batch", "8", "--eval-every", "0", "--quiet"]


@pytest.mark.slow
def test_rows_cache_and_a_failing_entry(tmp_path, monkeypatch):
    entries = {
        "mfm-small": bm.Entry("ann.train.synthmed", _tiny_mfm, bm._mfm_row),
        "broken": bm.Entry("ann.train.synthmed", lambda p, o: ["--size", "small", "--steps", "0", "--quiet"],
                           bm._mfm_row),
        "needs-broken": bm.Entry("ann.train.synthmed", _tiny_mfm, bm._mfm_row, needs=("broken",)),
    }
    monkeypatch.setattr(bm, "ENTRIES", entries)
    argv = ["--out", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    first = bm.main(argv)
    assert [r["model"] for r in first["rows"]] == ["mfm-small"]
    row = first["rows"][0]
    assert row["cached"] is False and row["params"] > 0 and 0.0 <= row["value"] <= 1.0
    assert row["checkpoint_bytes"] > 0 and row["train_s"] > 0
    assert "LoopConfig.steps" in first["errors"]["broken"]  # the bad setting is reported, the other rows kept
    assert "needs" in first["errors"]["needs-broken"]
    again = bm.main(argv)
    assert again["rows"][0]["cached"] is True and again["rows"][0]["value"] == row["value"]
    monkeypatch.setattr(bm, "code_fingerprint", lambda paths=bm.CODE_PATHS: "the training code changed")
    assert bm.main([*argv, "--only", "mfm-small"])["rows"][0]["cached"] is False  # changed code retrains
    saved = json.loads((tmp_path / "res" / "models.json").read_text())
    assert saved["rows"][0]["model"] == "mfm-small" and "targets" in saved


def test_targets_judge_what_was_measured():
    by = {"mfm-large": {"value": 0.9, "train_s": 800.0}, "mfm-small": {"value": 0.6, "train_s": 100.0},
          "lora-mfm-shift": {"metric": "shifted-scan accuracy (after LoRA)", "value": 0.8, "before": 0.5},
          "lora-smollm2-code": {"metric": "held-out bits/byte (after LoRA)", "value": 1.2, "before": 1.1}}
    t = {x.name: x for x in bm._targets(by, "full")}
    assert t["mfm_large_test_accuracy"].met and t["mfm_large_minus_small_accuracy"].met
    assert t["mfm_large_train_seconds"].met
    assert t["lora_mfm_shift_improves"].met and not t["lora_smollm2_code_improves"].met  # bpb must go down
