"""Pieces of benchmarks.prune that run without SmolLM2 or a trained MFM (the benchmark itself takes about an hour)."""

import torch

import benchmarks.prune as bp


def _results(mfm_acc=0.846, mfm_lat=0.10, ppl=6.0, pre=0.5, vocab_ppl=6.2):
    mfm = {"unpruned": {"params": 100, "accuracy": 0.854, "batch_seconds": 0.133}, "test_questions": 12000,
           "pruned_0.3": {"ratio": 0.3, "params": 70, "pruned_accuracy": 0.80, "accuracy": mfm_acc, "batch_seconds": mfm_lat}}
    lm = {"unpruned": {"params": 100, "perplexity": 5.85, "bits_per_byte": 0.77, "prefill_seconds": 0.7},
          "pruned_0.3": {"ratio": 0.3, "params": 70, "pruned": {"perplexity": 20.0}, "perplexity": ppl,
                         "bits_per_byte": 0.8, "prefill_seconds": pre},
          "pruned_0.3_int8": {"params": 70, "perplexity": 6.1, "bits_per_byte": 0.81, "prefill_seconds": 0.45},
          "vocab_trimmed": {"params": 87, "ratio": 0.13, "perplexity": 5.87, "bits_per_byte": 0.771, "prefill_seconds": 0.6},
          "vocab_pruned_0.3": {"ratio": 0.3, "params": 70, "pruned": {"perplexity": 9.0}, "perplexity": vocab_ppl,
                               "bits_per_byte": 0.79, "prefill_seconds": 0.45}}
    return mfm, lm


def test_targets_score_speed_and_quality_at_30_percent(tmp_path):
    mfm, lm = _results()
    t = {x.name: x for x in bp._targets(mfm, lm)}
    assert t["mfm_latency_speedup_at_30pct"].met and abs(t["mfm_latency_speedup_at_30pct"].measured - 1.33) < 1e-9
    assert t["mfm_accuracy_points_lost_after_recovery"].met  # 0.8 points
    assert t["smollm2_prefill_speedup_at_30pct"].met and t["smollm2_perplexity_increase_pct_after_recovery"].met
    assert t["smollm2_prefill_speedup_at_30pct_domain_vocab"].met  # 1.56x
    assert t["smollm2_perplexity_increase_pct_after_recovery_domain_vocab"].met  # +6.0 %
    mfm, lm = _results(mfm_acc=0.83, mfm_lat=0.11, ppl=6.5, pre=0.6, vocab_ppl=6.6)
    t = {x.name: x for x in bp._targets(mfm, lm)}
    assert [x.met for x in t.values()] == [False] * 4 + [True, False]  # 1.21x, 2.4 points, 1.17x, +11.1 %, 1.56x, +12.8 %
    assert t["smollm2_perplexity_increase_pct_after_recovery_domain_vocab"].measured > 12
    assert bp._plot(mfm, lm, tmp_path / "p.png").is_file()
    assert bp._targets({}, {}) == []  # a model left out (--only) scores nothing


def test_interleaved_seconds_times_every_callable():
    calls = []
    from ann.prune.latency import interleaved_seconds

    out = interleaved_seconds({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=3)
    assert set(out) == {"a", "b"} and all(v >= 0 for v in out.values())
    assert calls == ["a", "b"] * 4  # one warm-up each, then in turn


def test_no_image_answers_masks_the_image_token_only_while_active():
    from ann.models.mfm import MFMSpec, build_mfm
    from benchmarks.quant import no_image_answers

    spec = MFMSpec(image_size=16, patch_size=4, vision_hidden=16, vision_layers=1, vision_heads=2, text_hidden=16,
                   text_layers=1, text_heads=2, text_kv_heads=1, mlp_ratio=2)
    m = build_mfm(spec, vocab_size=20, image_token_id=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    x = torch.randn(2, 16)
    with no_image_answers(m):
        assert torch.isneginf(m.lm_head(x)[:, 3]).all() and torch.isfinite(m.lm_head(x)[:, 4]).all()
    assert torch.isfinite(m.lm_head(x)).all()


def test_only_one_model_keeps_the_other_models_results_of_the_same_profile(tmp_path, monkeypatch):
    import json

    mfm, lm = _results()
    monkeypatch.setattr(bp, "_smollm2", lambda *a: lm)
    monkeypatch.setattr(bp, "_mfm", lambda *a: mfm)
    bp.main(["--only", "smollm2", "--out", str(tmp_path)])
    first = json.loads((tmp_path / "prune.json").read_text())
    assert first["mfm"] == {} and first["smollm2"]["pruned_0.3"]["perplexity"] == 6.0
    monkeypatch.setattr(bp, "_smollm2", lambda *a: (_ for _ in ()).throw(AssertionError("must not rerun")))
    out = bp.main(["--only", "mfm", "--out", str(tmp_path)])
    assert out["smollm2"]["pruned_0.3"]["perplexity"] == 6.0 and out["mfm"]["pruned_0.3"]["accuracy"] == 0.846
    assert len(out["targets"]) == 6 and (tmp_path / "prune.png").is_file()
