"""benchmarks.fusion: the core runs on a tiny MFM and real SynthMed prompts, and yields rows, targets and a plot."""

import json

import pytest
import torch

from ann.models.mfm import MFMSpec, build_mfm
from ann.models.mfm_tokenizer import build_vqa_tokenizer
from benchmarks.fusion import plot, run_stages, table, vqa_inputs


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: one thread is fastest and immune to a loaded machine
    yield
    torch.set_num_threads(before)


def test_fusion_core_on_a_tiny_mfm(tmp_path, one_thread):
    torch.manual_seed(0)
    tok = build_vqa_tokenizer()
    spec = MFMSpec(image_size=64, patch_size=16, merge_factor=2, vision_hidden=16, vision_layers=1, vision_heads=2,
                   text_hidden=16, text_layers=1, text_heads=2, text_kv_heads=1, mlp_ratio=2)
    model = build_mfm(spec, vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    inputs, info = vqa_inputs(model, tok, 2)
    assert info["prompts"] == inputs["input_ids"].shape[0] >= 2 and inputs["pixel_values"].shape[1:] == (1, 64, 64)
    res = run_stages(model, tok, inputs, repeats=1, gen_repeats=1, gen_tokens=2, compile_row=False, log=lambda m: None)
    targets = res.pop("_targets")
    names = [r["stage"] for r in res["rows"]]
    assert names == ["eager", "unfused", "sdpa", "merge-qkv", "bias-act", "fold-norm", "pack"]
    assert [t["name"] for t in res["targets"]] == ["fused_speedup", "fused_max_abs_diff"]
    final = res["rows"][-1]
    assert res["targets"][0]["measured"] == final["speedup"] > 0
    assert res["targets"][1]["measured"] == final["max_abs_diff"] and res["targets"][1]["met"] is (final["max_abs_diff"] <= 1e-4)
    assert all(r["tokens_identical"] and r["answers_identical"] for r in res["rows"])
    for r in res["rows"]:
        a = r["accel"]
        assert a["untraced"] == [] and a["layer_by_layer"]["dram_bytes"] > 0 and a["fused"]["cycles"] > 0
    assert res["rows"][0]["accel"]["primary"] == "layer_by_layer" and final["accel"]["primary"] == "fused"
    json.dumps(res)  # JSON-ready
    assert "pack" in table(res) and len(targets) == 2
    assert plot(res, tmp_path / "fusion.png").stat().st_size > 0
