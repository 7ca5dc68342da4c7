"""benchmarks.conversion end to end with a tiny profile (the real ones train for minutes)."""

from __future__ import annotations

import json

import pytest

import benchmarks.conversion as bc


@pytest.mark.slow
def test_conversion_benchmark_writes_curves_peer_accounting_targets_and_a_plot(tmp_path, monkeypatch):
    tiny = bc.Profile(t_max=8, digits_epochs={"mlp": (1, 1), "cnn": (1, 1), "deep_cnn": (1, 1), "vit": 1}, vqa_images=(8, 4, 4), vqa_epochs=1,
                      vqa_model={"dim": 16, "depth": 1})
    monkeypatch.setattr(bc, "PROFILES", {"quick": tiny, "full": tiny})
    args = ["--out", str(tmp_path), "--quiet", "--cache-dir", str(tmp_path / "cache")]
    bc.main(args)
    saved = json.loads((tmp_path / "conversion.json").read_text())
    assert set(saved["tasks"]) == {"digits", "synthmed"} and set(saved["tasks"]["digits"]) == {"mlp", "cnn", "deep_cnn", "vit"}
    for task, models in saved["tasks"].items():
        for name, r in models.items():
            assert len(r["curves"]["ours"]) == 8 and len(r["curves"]["spikingjelly ann2snn (99.9%)"]) == 8
            assert r["accounting_T8"]["layers"] and r["accounting_T8"]["sops"] > 0
    cnn = saved["tasks"]["digits"]["cnn"]
    assert {"ReLU ANN, max norm", "ReLU ANN, 99.9% norm", "ReLU ANN, per-channel 99.9% norm"} <= set(cnn["curves"])
    assert "ours, binary signed neurons (levels=1)" in saved["tasks"]["synthmed"]["vit"]["curves"]
    names = {t["name"] for t in saved["targets"]}
    assert "synthmed_vit_ours_minus_spikingjelly_T8" in names and "digits_cnn_ann_minus_snn_T8" in names
    assert "digits_deep_cnn_ours_minus_spikingjelly_T8" in names and "digits_cnn_ours_minus_spikingjelly_T8" not in names
    margins = saved["spikingjelly_margins"]
    assert set(margins) == {f"{t}_{n}" for t, ms in saved["tasks"].items() for n in ms}
    assert margins["digits_deep_cnn"]["scored"] and not margins["digits_mlp"]["scored"]
    assert not any(n.endswith("_T32") for n in names)  # T_max = 8 cannot check T = 32
    assert (tmp_path / "conversion_accuracy_vs_T.png").stat().st_size > 0
    again = bc.main(args)  # second run: every ANN comes from the cache
    assert all(r["train"]["qcfs"]["cached"] for models in again["tasks"].values() for r in models.values())
