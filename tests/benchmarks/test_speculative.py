"""Pieces of benchmarks.speculative that run without SmolLM2 (the benchmark itself takes about 10 minutes)."""

import benchmarks.speculative as bs


def _method(kernels, draft, impl, setting, tps, identical=True, speedup=None, a=None):
    r = {"kernels": kernels, "draft": draft, "impl": impl, "setting": setting, "tokens_per_second": tps,
         "speedup": speedup if speedup is not None else tps / 10.0, "speedup_vs_stock_generate": tps / 8.0,
         "identical": identical, "identical_to_stock": identical, "seconds": 1.0, "tokens": tps}
    if a is not None:
        r.update(acceptance_rate=a, mean_draft_length=4.0, cost_ratio=0.01, predicted_speedup=2.0, tokens_per_round=2.5,
                 measured_vs_ours_plain=tps / 10.5)
    return r


def _results(ours=25.0, hf=20.0, identical=True, combined=22.0):
    rows = [_method("stock", "plain", "hf", "", 8.0, speedup=1.0), _method("packed", "plain", "hf", "", 10.0),
            _method("packed", "plain", "ours", "", 9.5),
            _method("packed", "prompt-lookup", "ours", "k6", ours, identical, a=0.7),
            _method("packed", "prompt-lookup", "ours", "adaptive", ours - 1, True, a=0.7),
            _method("packed", "prompt-lookup", "hf", "default", hf), _method("packed", "prompt-lookup", "hf", "k6", hf - 2),
            _method("packed", "prompt-lookup+draft-lm", "ours", "k6", combined, True, a=0.6),
            _method("packed", "prompt-lookup+draft-lm", "ours", "sample", 60.0, None, a=0.5),
            _method("packed", "layer-skip-12", "ours", "k6", 12.0, True, a=0.5),
            _method("packed", "layer-skip-12", "hf", "default", 30.0)]
    return {"prompts": 2, "new_tokens": 8, "methods": {bs.Method(r["kernels"], r["draft"], r["impl"], r["setting"]).key: r
                                                       for r in rows}}


def test_targets_take_our_fastest_identical_greedy_method_against_hf_with_the_same_draft(tmp_path):
    t = {x.name: x for x in bs._targets(_results())}
    assert t["speculative_speedup_vs_plain"].met and t["speculative_speedup_vs_plain"].measured == 2.5
    assert "packed prompt-lookup/ours-k6" in t["speculative_speedup_vs_plain"].goal  # sampled 60 tok/s does not count
    assert t["speculative_speedup_vs_hf_assisted"].measured == 25.0 / 20.0  # the faster HF setting of the same draft
    t = {x.name: x for x in bs._targets(_results(ours=40.0, identical=False))}
    # the fastest method changed the tokens, so it does not count: the adaptive one (39 tok/s, identical) does
    assert "ours-adaptive" in t["speculative_speedup_vs_plain"].goal and t["speculative_speedup_vs_plain"].measured == 3.9
    t = {x.name: x for x in bs._targets(_results(ours=15.0, hf=20.0, combined=16.0))}
    assert not t["speculative_speedup_vs_plain"].met and not t["speculative_speedup_vs_hf_assisted"].met
    # the combined draft wins against plain, but transformers has no such draft: the HF comparison takes our best
    # draft that transformers also has
    t = {x.name: x for x in bs._targets(_results(ours=21.0, combined=30.0))}
    assert "prompt-lookup+draft-lm" in t["speculative_speedup_vs_plain"].goal
    assert t["speculative_speedup_vs_hf_assisted"].measured == 21.0 / 20.0
    assert bs._plot(_results(), tmp_path / "s.png").is_file()


def test_method_keys_name_kernels_draft_and_setting():
    assert bs.Method("packed", "draft-lm", "hf", "k6").key == "packed draft-lm/hf-k6"
    assert bs.Method("stock", "plain", "ours", "").key == "stock plain/ours"
