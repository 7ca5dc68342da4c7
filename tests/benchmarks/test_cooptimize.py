"""benchmarks.cooptimize end to end on a tiny untrained MFM and a tiny space: JSON, plot, targets, fine-tune cache,
and an infeasible budget named with the cheapest configuration."""

import json

import pytest
import torch

import benchmarks.cooptimize as bco
from ann.checkpoint import save_pretrained_atomic
from ann.models.mfm import MFMSpec, build_mfm
from ann.models.mfm_tokenizer import IMAGE_TOKEN, build_vqa_tokenizer

TINY = dict(geometries=[(64, 8, 2), (32, 8, 2)], vit_keeps=(1.0, 0.5), vit_layers=(0,), llm_keeps=(1.0,),
            question_tokens=(None, 5), steps=1, n_train=32, n_val=4, n_test=4, repeats=1)


@pytest.fixture
def tiny_mfm(tmp_path):
    tok = build_vqa_tokenizer()
    spec = MFMSpec(vision_hidden=16, vision_layers=1, vision_heads=2, text_hidden=16, text_layers=2, text_heads=2,
                   text_kv_heads=1, mlp_ratio=2, patch_size=8, merge_factor=2)
    mfm = build_mfm(spec, vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    save_pretrained_atomic(mfm, tmp_path / "mfm", tokenizer=tok)
    return tmp_path / "mfm"


def test_cooptimize_end_to_end(tiny_mfm, tmp_path, monkeypatch):
    monkeypatch.setitem(bco.PROFILE_SPACES, "quick", TINY)
    torch.set_num_threads(1)
    argv = ["--mfm", str(tiny_mfm), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), "--quiet"]
    r = bco.main(argv)
    assert r["space"]["points"] == 2 * 2 * 2 == len(r["rows"])
    saved = json.loads((tmp_path / "out" / "cooptimize.json").read_text())  # strict JSON
    assert saved["default"]["label"] == "S64/P8/k2" and (tmp_path / "out" / "cooptimize.png").stat().st_size > 0
    assert {t["name"] for t in saved["targets"]} == {"accel_latency_reduction", "test_accuracy_lost"}
    cheaper = [x for x in r["rows"] if x["image_size"] == 32]
    assert all(x["accel_latency_us"] < r["default"]["accel_latency_us"] for x in cheaper)
    assert r["chosen"]["accel_latency_us"] <= r["budget"]["accel_latency_us"]
    t = {x["name"]: x for x in r["targets"]}
    ratio = r["default"]["accel_latency_us"] / r["chosen"]["accel_latency_us"]
    assert t["accel_latency_reduction"]["measured"] == pytest.approx(ratio) and t["accel_latency_reduction"]["met"] == (ratio >= 2)
    assert len(list((tmp_path / "cache" / "cooptimize").iterdir())) == 4  # one per (geometry, ViT pruning)
    assert len(r["finetune"]["per_variant"]) == 4

    r2 = bco.main(argv[:-1] + ["--quiet", "--budget-latency-us", "0.001", "--out", str(tmp_path / "out2")])
    assert r2["chosen"] is None and "cheapest found is S32/P8/k2" in r2["infeasible"]
    assert not any(x["met"] for x in r2["targets"])
