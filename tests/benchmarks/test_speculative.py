"""Pieces of benchmarks.speculative that run without SmolLM2 (the benchmark itself takes about 15 minutes)."""

import benchmarks.speculative as bs


def _method(tps, identical=True, a=None):
    r = {"tokens_per_second": tps, "speedup": tps / 10.0, "identical": identical, "seconds": 1.0, "tokens": tps}
    if a is not None:
        r.update(acceptance_rate=a, mean_draft_length=4.0, cost_ratio=0.01, predicted_speedup=2.0, tokens_per_round=2.5)
    return r


def _results(ours=25.0, hf=20.0, identical=True):
    return {"prompts": 2, "new_tokens": 8, "methods": {
        "plain/hf": _method(10.0), "plain/ours": _method(10.5),
        "prompt-lookup/ours-k6": _method(ours, identical, a=0.7), "prompt-lookup/ours-adaptive": _method(ours - 1, True, a=0.7),
        "prompt-lookup/hf-default": _method(hf), "prompt-lookup/hf-k6": _method(hf - 2),
        "layer-skip-12/ours-k6": _method(12.0, True, a=0.5), "layer-skip-12/hf-default": _method(30.0)}}


def test_targets_take_our_fastest_identical_method_against_hf_with_the_same_draft(tmp_path):
    t = {x.name: x for x in bs._targets(_results())}
    assert t["speculative_speedup_vs_plain"].met and t["speculative_speedup_vs_plain"].measured == 2.5
    assert "prompt-lookup/ours-k6" in t["speculative_speedup_vs_plain"].goal
    assert t["speculative_speedup_vs_hf_assisted"].measured == 25.0 / 20.0  # the faster HF setting of the same draft
    t = {x.name: x for x in bs._targets(_results(ours=40.0, identical=False))}
    # the fastest method changed the tokens, so it does not count: the adaptive one (39 tok/s, identical) does
    assert "ours-adaptive" in t["speculative_speedup_vs_plain"].goal and t["speculative_speedup_vs_plain"].measured == 3.9
    t = {x.name: x for x in bs._targets(_results(ours=15.0, hf=20.0))}
    assert not t["speculative_speedup_vs_plain"].met and not t["speculative_speedup_vs_hf_assisted"].met
    assert bs._plot(_results(), tmp_path / "s.png").is_file()
