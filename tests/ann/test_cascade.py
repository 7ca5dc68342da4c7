"""ann.cascade: routing and exact costs, the Pareto threshold search, MFM and code tiers end to end (tiny models)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from ann.cascade import TierRun, choose, evaluate, pareto_search, route
from ann.cascade.code import code_tier, count_passed, progsynth_task


def _tier(name, quality, score, flops, test=0.0):
    n = len(quality)
    return TierRun(name, np.asarray(quality, float), np.asarray(score, float), np.full(n, float(flops)),
                   np.full(n, flops / 100), np.full(n, float(test)), np.full(n, test / 100))


def test_routing_and_costs_follow_the_definition():
    small = _tier("s", [1, 0, 1, 0], [0.9, 0.8, 0.2, np.nan], 1, test=0.5)
    mid = _tier("m", [1, 1, 0, 0], [0.1, 0.9, 0.9, 0.9], 4, test=1)
    large = _tier("l", [1, 1, 1, 1], [np.nan] * 4, 10)
    assert route([small, mid, large], [0.85, 0.5]).tolist() == [0, 1, 1, 1]  # NaN never passes
    e = evaluate([small, mid, large], [0.85, 0.5])
    # item 0 stops at s (1 + 0.5); the others pay s with its test and m with its test (1.5 + 5)
    assert e["flops"] == pytest.approx((1.5 + 3 * 6.5) / 4)
    assert e["quality"] == pytest.approx((1 + 1 + 0 + 0) / 4) and e["stops"] == [0.25, 0.75, 0.0]
    never = evaluate([small, mid, large], [math.inf, math.inf])
    assert never["quality"] == 1.0 and never["flops"] == pytest.approx(1.5 + 5 + 10)  # the tests are paid anyway
    assert evaluate([large], [])["flops"] == 10.0  # one tier: no self-test, no threshold
    with pytest.raises(ValueError, match="thresholds"):
        route([small, large], [0.5, 0.5])
    with pytest.raises(ValueError, match="shape"):
        TierRun("bad", np.zeros(3), np.zeros(2), np.zeros(3), np.zeros(3), np.zeros(3), np.zeros(3))


def test_pareto_front_is_monotone_and_choose_takes_the_cheapest_within_the_loss():
    rng = np.random.default_rng(0)
    n = 400
    hard = rng.random(n)
    small = _tier("s", (hard < 0.5).astype(float), 1 - hard + 0.1 * rng.random(n), 1)
    large = _tier("l", (hard < 0.95).astype(float), np.full(n, np.nan), 20)
    front = pareto_search([small, large], grid=21)
    costs, quals = [p["flops"] for p in front], [p["quality"] for p in front]
    assert costs == sorted(costs) and quals == sorted(quals) and len(front) >= 3
    ref = float(large.quality.mean())
    pick = choose(front, reference_quality=ref, max_loss=0.01)
    assert pick["feasible"] and pick["quality"] >= ref - 0.01
    assert all(p["flops"] >= pick["flops"] for p in front if p["quality"] >= ref - 0.01)
    assert pick["flops"] < 0.8 * 21  # confident small answers stop early: well under always-large
    hopeless = choose(front, reference_quality=2.0, max_loss=0.0)
    assert not hopeless["feasible"] and hopeless["quality"] == max(quals)


@pytest.fixture(scope="module")
def sandbox():
    from tasks.sandbox import Sandbox, SandboxConfig

    return Sandbox(config=SandboxConfig(wall_time_s=3.0, cpu_time_s=2.0))


def test_count_passed_counts_each_assertion_and_a_hanging_program_fails_only_itself(sandbox):
    tests = ["assert f(1) == 2", "assert f(2) == 4", "assert g(0) == 0"]
    assert count_passed(sandbox, "def f(x):\n    return x + 1\n", tests) == [1, 0, 0]
    assert count_passed(sandbox, "def f(x):\n    while True:\n        pass\n", tests[:1]) == [0]
    assert count_passed(sandbox, "def f(x):\n    return 2 * x\n", tests[:2]) == [1, 1]  # the next one still runs
    assert count_passed(sandbox, "import socket\n", tests) == [0, 0, 0]


def test_code_tiers_on_generated_program_synthesis_end_to_end(sandbox):
    import transformers as T

    from ann.models.smollm2 import load_smollm2_tokenizer
    from tasks.progsynth import generate_problems

    tok = load_smollm2_tokenizer()
    cfg = T.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    model = T.LlamaForCausalLM(cfg).eval()
    problems = generate_problems(3, seed=1)
    tasks = [progsynth_task(p) for p in problems]
    tested, greedy, records = code_tier("random", model, tok, tasks, k=3, l=2, sandbox=sandbox, max_new_tokens=6,
                                        progress=False)
    assert len(tested) == len(greedy) == 3 and len(records) == 3
    assert np.all(tested.flops > greedy.flops) and np.all(greedy.flops > 0) and np.all(tested.test_flops > 0)
    assert np.all(np.isnan(greedy.score)) and np.all((tested.score >= 0) & (tested.score <= 1))
    assert all(len(r["candidates"]) == 3 for r in records)
    assert tested.quality.sum() == 0  # a random network writes no correct program
    # the greedy candidate (from the shared prompt cache) is plain greedy generate's, and its FLOPs (tokens fed x
    # per-token FLOPs) are what torch's counter finds over that generate, to the attention's share
    from ann.prune.latency import forward_flops

    ids = tok(tasks[0].prompt, return_tensors="pt")["input_ids"]
    flops, out = forward_flops(model, lambda m: m.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                                           max_new_tokens=6, pad_token_id=tok.eos_token_id,
                                                           stop_strings=["\n"], tokenizer=tok))
    plain = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).split("\n")[0]
    assert records[0]["candidates"][0] == plain
    assert greedy.flops[0] == pytest.approx(flops, rel=0.02)
    from ann.cascade.code import token_flops
    from ann.fusion import pack_linears

    packed = copy.deepcopy(model)
    pack_linears(packed)
    with pytest.raises(ValueError, match="before ann.fusion.pack_linears"):
        token_flops(packed)
    # the reference solution as a task's completion passes its shown examples and hidden tests in the sandbox
    for p, t in zip(problems, tasks):
        program = t.program(f" {p.expr}")
        assert count_passed(sandbox, program, t.shown_tests) == [1] * len(t.shown_tests)
        assert sandbox.run(program, t.hidden_tests).passed


def test_humaneval_tasks_show_the_docstring_examples_and_grade_with_check(sandbox):
    from ann.cascade.code import doctest_assertions, humaneval_task
    from tasks.code import load_humaneval

    doc = """    >>> f([1, 2])
    3
    f(4) ==> 5
    f(n) = f(n-1) + 1
    g(2) == 2
    >>> f(x)
    """
    assert doctest_assertions(doc, "f") == ("assert f([1, 2]) == 3", "assert f(4) == 5")  # no recurrence, no g, no x
    problems = load_humaneval()
    for p in (problems[0], problems[12], problems[30]):
        t = humaneval_task(p)
        assert t.shown_tests, p.task_id
        right, wrong = t.program(p.canonical_solution), t.program("    return None\n")
        assert count_passed(sandbox, right, t.shown_tests) == [1] * len(t.shown_tests)
        assert sandbox.run(right, t.hidden_tests).passed and not sandbox.run(wrong, t.hidden_tests).passed
        assert count_passed(sandbox, wrong, t.shown_tests) == [0] * len(t.shown_tests)
        assert t.parse_test(t.shown_tests[0].split("(", 1)[1]) == t.shown_tests[0]  # a test line as the model writes it
        assert t.parse_test("[1, 2") is None and "pass" in t.test_prompt


def test_mfm_tier_scores_confidence_and_consistency():
    from ann.cascade.vqa import mfm_answers, vqa_tier
    from ann.models.mfm import MFM_PRESETS, build_mfm
    from ann.models.mfm_tokenizer import IMAGE_TOKEN, build_vqa_tokenizer
    from ann.train.vqa import encode_vqa, predict_answers
    from tasks.synthmed import SynthMedConfig, load_synthmed

    tok = build_vqa_tokenizer()
    mfm = build_mfm(MFM_PRESETS["small"], vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id).eval()
    data = encode_vqa(load_synthmed("val", SynthMedConfig(n_train=8, n_val=6, n_test=8, seed=3)), tok, mfm.num_visual_tokens)
    ans = mfm_answers(mfm, tok, data, images_per_batch=4)
    assert ans.answers == predict_answers(mfm, tok, data)  # the same greedy answers as the evaluation
    assert np.all((ans.confidence >= 0) & (ans.confidence <= 1)) and np.all(ans.flops > 0)
    conf_only, _ = vqa_tier("small", mfm, tok, data, self_test="confidence")
    both, raw = vqa_tier("small", mfm, tok, data, perturb_std=0.0)
    assert np.all(raw["agree"])  # no noise: the same answers
    assert np.allclose(both.score, conf_only.score) and np.allclose(both.test_flops, both.flops)
    assert np.all(conf_only.test_flops == 0)
    with pytest.raises(ValueError, match="self_test"):
        vqa_tier("small", mfm, tok, data, self_test="vibes")
