"""The code rows of benchmarks.compare (benchmarks/compare/code.py), on tiny budgets and models.

SmolLM2 is replaced by a tiny random Llama with a byte-level tokenizer (the real one takes minutes per row on 2
cores), and the training stream of the stdlib corpus by a few files; every other step (mixed-precision allocation,
pruning + recovery, speculative decoding, the byte-level spiking LM, its tiered quantization, the accelerator
traces) runs for real. The code LMs trained here (``code/ann-code-lm-*``) need SmolLM2's real tokenizer and the
whole corpus tokenized, so they are left out; they go through the same ``_lm_row`` as the SmolLM2 rows.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import benchmarks.prune as bp
import benchmarks.quant as bq
import benchmarks.snn_quant as bsq
import benchmarks.speculative as bs
from benchmarks import compare
from benchmarks.compare import code

ROWS = ["code/ann-smollm2", "code/ann-byte-lm", "code/ann-byte-lm-mixed", "code/ann-smollm2-mixed", "code/ann-smollm2-pruned",
        "code/ann-smollm2-pruned-mixed", "code/ann-smollm2-speculative", "code/snn-trained", "code/snn-quant"]


def tiny_llama(seed: int = 0, layers: int = 3) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=259, hidden_size=64, intermediate_size=128, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=1,
                      eos_token_id=2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every test here runs on one thread (tests/conftest.py)."""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, make_byte_tokenizer):
    """Tiny budgets for every recipe the code rows borrow, the tiny Llama as "SmolLM2", a small token stream."""
    from ann.train.code import encode_files, held_out_files

    mp = pytest.MonkeyPatch()
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # (module scope: runs before the per-test fixture)
    mp.setitem(code.PROFILES, "quick", code.CodeProfile(eval_bytes=2500, lm_steps=3, prompt_bytes=48, new_bytes=16,
                                                        prune_vocab="full", draft="prompt-lookup+draft-lm"))
    mp.setitem(bq.PROFILES, "quick", dataclasses.replace(bq.PROFILES["quick"], calib_tokens=32, val_tokens=64,
                                                         choices=(2, 4, 8)))
    mp.setitem(bp.PROFILES, "quick", dataclasses.replace(bp.PROFILES["quick"], lm_calib_blocks=2, lm_recover_steps=2,
                                                         lm_eval_bytes=2500))
    mp.setattr(bsq, "LM_VAL_WINDOWS", 2)
    mp.setattr(bsq, "LADDERS", {"weight_ladder": (8, 4), "membrane_ladder": (16, 8)})
    mp.setattr(code, "_load_smollm2", lambda: (tiny_llama(), make_byte_tokenizer()))
    mp.setattr(bs, "load_draft_lm", lambda tok, cache_dir, log: (tiny_llama(seed=1, layers=1), {}))
    stream = encode_files(held_out_files(12_000, split="val"), make_byte_tokenizer())
    mp.setattr("ann.train.code.stdlib_token_stream", lambda split, tok, **kw: stream)
    out, cache = tmp_path_factory.mktemp("out"), tmp_path_factory.mktemp("cache")
    only = [a for r in ROWS for a in ("--only", r)]
    payload = compare.main(["ann", "snn", *only, "--out", str(out), "--cache-dir", str(cache), "--quiet"])
    yield {"payload": payload, "rows": {r["id"]: r for r in payload["rows"]}, "out": out, "cache": cache}
    mp.undo()
    torch.set_num_threads(before)


def test_the_code_lm_rows_exist_and_every_selected_row_ran(tiny):
    ids = [r.id for r in compare.ROWS if r.task == "code"]
    assert set(ids) == {*ROWS, "code/ann-code-lm-small", "code/ann-code-lm-tiny"}
    assert [r["id"] for r in tiny["payload"]["rows"]] == [i for i in ids if i in ROWS]


def test_schema_and_ranges(tiny):
    for r in tiny["payload"]["rows"]:
        assert r["error"] is None, (r["id"], r["error"])
        assert r["task"] == "code" and r["metric"] == code.METRIC and r["higher_is_better"] is False
        assert 0 < r["quality"] < 9.5, r  # bits per byte: a random byte model is near 8
        m, a = r["memory_bytes"], r["accel"]
        assert m["weights"] > 0 and m["state"] > 0 and m["total"] == pytest.approx(m["weights"] + m["state"])
        assert r["cpu_ms_per_sample"] > 0 and a["cycles"] > 0 and a["latency_ms"] > 0
        e = a["energy_uj"]
        assert e["total"] == pytest.approx(e["compute"] + e["data_movement"]) and e["compute"] > 0
        assert r["reproduce"].endswith(f"--only {r['id']}")
        assert ("target passes" if "speculative" in r["id"] else "decode:") in r["notes"]
    assert (tiny["out"] / "compare.md").is_file() and (tiny["out"] / "compare.png").is_file()


def test_compressed_rows_are_smaller_and_cheaper(tiny):
    rows = tiny["rows"]
    fp32, mixed = rows["code/ann-smollm2"], rows["code/ann-smollm2-mixed"]
    pruned, both = rows["code/ann-smollm2-pruned"], rows["code/ann-smollm2-pruned-mixed"]
    # packed 2-8-bit codes + scales against 32-bit floats; the traced shapes are the same, the weight traffic less
    assert mixed["memory_bytes"]["weights"] < fp32["memory_bytes"]["weights"] / 2
    assert mixed["params"] == fp32["params"] and mixed["accel"]["macs"] == fp32["accel"]["macs"]
    assert mixed["accel"]["energy_uj"]["data_movement"] < fp32["accel"]["energy_uj"]["data_movement"]
    assert mixed["accel"]["bits"].startswith("W") and "avg" in mixed["accel"]["bits"]
    # benchmarks.prune's target: at least 30 % of the parameters gone, and a forward with fewer MACs
    assert pruned["params"] <= 0.7 * fp32["params"] + 1 and pruned["accel"]["macs"] < fp32["accel"]["macs"]
    assert both["params"] == pruned["params"] and both["memory_bytes"]["weights"] < pruned["memory_bytes"]["weights"] / 2
    byte, byte_q = rows["code/ann-byte-lm"], rows["code/ann-byte-lm-mixed"]  # the spiking LM's compressed ANN twin
    assert byte_q["memory_bytes"]["weights"] < byte["memory_bytes"]["weights"] / 2 and byte_q["params"] == byte["params"]
    assert byte_q["accel"]["energy_uj"]["data_movement"] < byte["accel"]["energy_uj"]["data_movement"]
    snn, snn_q = rows["code/snn-trained"], rows["code/snn-quant"]
    assert snn_q["memory_bytes"]["total"] < snn["memory_bytes"]["total"]
    for r in (snn, snn_q):
        assert r["track"] == "snn" and r["timesteps"] == 4 and 0 < r["firing_rate"] < 1 and r["accel"]["sops"] > 0
        assert "not deployable" in r["loihi"]["reason"]  # the Lava target runs feed-forward chains only


def test_speculative_decoding_keeps_the_targets_quality_and_costs_both_models(tiny):
    rows = tiny["rows"]
    spec, fp32 = rows["code/ann-smollm2-speculative"], rows["code/ann-smollm2"]
    assert spec["quality"] == fp32["quality"] and "identical to plain greedy" in spec["notes"]
    draft = tiny_llama(seed=1, layers=1)
    draft_bytes = sum(p.numel() for p in draft.parameters()) * 4
    assert spec["memory_bytes"]["weights"] == pytest.approx(fp32["memory_bytes"]["weights"] + draft_bytes)
    assert "+ draft LM passes" in spec["notes"] and spec["memory_bytes"]["state"] > fp32["memory_bytes"]["state"]
    # every generated token went through the target once (accepted or its own), plus the draft's guesses
    assert spec["accel"]["macs"] > fp32["accel"]["macs"]


def test_speculative_with_prompt_lookup_costs_only_the_target(monkeypatch, tmp_path, make_byte_tokenizer):
    from benchmarks.compare.core import Context

    monkeypatch.setitem(code.PROFILES, "quick", code.CodeProfile(eval_bytes=1500, lm_steps=1, prompt_bytes=64,
                                                                 new_bytes=24))
    model = tiny_llama()
    monkeypatch.setattr(code, "_load_smollm2", lambda: (model, make_byte_tokenizer()))
    ctx = Context(profile="quick", seed=0, cache_dir=tmp_path, log=lambda m: None, progress=False, latency_repeats=1)
    m = code.smollm2_speculative(ctx)
    assert "prompt-lookup" in m.variant and "identical to plain greedy" in m.notes
    assert m.memory[0] == sum(p.numel() for p in model.parameters()) * 4  # no draft model to hold
    assert m.accel["energy_uj"]["total"] > 0 and m.accel["macs"] > 0 and m.cpu_ms > 0


def test_second_run_loads_the_cache(tiny, tmp_path):
    first = tiny["payload"]
    assert {"code-byte-lms", "code-smollm2-mixed", "code-smollm2-pruned", "code-smollm2-pruned-mixed",
            "code-snn-quant"} <= set(first["meta"]["trained_this_run"])
    again = compare.main(["ann", "snn", "--only", "code/snn-quant", "--out", str(tmp_path), "--cache-dir",
                          str(tiny["cache"]), "--quiet"])
    assert again["meta"]["trained_this_run"] == []
    assert again["rows"][0]["quality"] == pytest.approx(tiny["rows"]["code/snn-quant"]["quality"], abs=1e-9)


@pytest.mark.parametrize("field,value", [("eval_bytes", 0), ("prompt_bytes", 500), ("draft", "lookup"),
                                         ("prune_vocab", "tiny")])
def test_profile_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"CodeProfile.{field}" if field != "prompt_bytes" else "prompt_bytes"):
        dataclasses.replace(code.PROFILES["quick"], **{field: value})
