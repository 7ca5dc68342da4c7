"""The LLaVA-style MFM: construction from config, token merging, save/load, VQA encoding and objective."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoTokenizer, LlavaForConditionalGeneration

from ann.models.mfm import MFM_PRESETS, MFMConfig, MFMSpec, MergeProjector, build_mfm
from ann.models.mfm_tokenizer import IMAGE_TOKEN, build_vqa_tokenizer
from ann.train.vqa import (VQAObjective, encode_vqa, evaluate_mfm, evaluate_probe, image_features, predict_answers,
                           vqa_batch_fn)
from tasks.synthmed import ANSWER_VOCAB, VQA_VOCAB, SynthMedConfig, load_synthmed


@pytest.fixture(scope="module")
def tok():
    return build_vqa_tokenizer()


def _build(tok, spec=MFM_PRESETS["small"], seed=0):
    return build_mfm(spec, vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     seed=seed)


@pytest.fixture(scope="module")
def split():
    return load_synthmed("val", SynthMedConfig(n_train=8, n_val=8, n_test=8, seed=3))


def test_presets_are_one_family_small_below_large(tok):
    small, large = _build(tok, MFM_PRESETS["small"]), _build(tok, MFM_PRESETS["large"])
    assert isinstance(large, LlavaForConditionalGeneration)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small) * 5 < n(large)
    assert small.config.text_config.vocab_size == large.config.text_config.vocab_size == len(VQA_VOCAB)
    assert large.num_visual_tokens == (64 // 8 // 2) ** 2
    fine = _build(tok, MFM_PRESETS["small-fine"])  # the cascade's cheap tier: small towers, the large one's grid
    assert fine.num_visual_tokens == large.num_visual_tokens and n(fine) * 5 < n(large)


@pytest.mark.parametrize("change, field", [
    ({"image_size": 60}, "image_size"),  # 60 is not a multiple of the patch size 8
    ({"merge_factor": 3}, "merge_factor"),  # the 8 x 8 patch grid does not split into 3 x 3 blocks
    ({"text_kv_heads": 3}, "text_kv_heads"),
    ({"patch_size": 0}, "patch_size"),
])
def test_spec_that_does_not_fit_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"MFMSpec.{field}"):
        dataclasses.replace(MFM_PRESETS["large"], **change)


def test_config_loaded_from_json_is_validated_too(tok):
    cfg = _build(tok).config.to_dict()
    cfg["vision_config"]["image_size"] = 60
    with pytest.raises(ValueError, match="image_size=60 is not divisible"):
        MFMConfig(**{k: v for k, v in cfg.items() if k not in ("model_type", "transformers_version")})


def test_merge_projector_concatenates_k_by_k_blocks(tok):
    cfg = _build(tok, dataclasses.replace(MFM_PRESETS["large"], vision_hidden=8, vision_heads=2)).config
    proj = MergeProjector(cfg)
    n, D = 8, 8
    x = torch.arange(n * n, dtype=torch.float32).repeat_interleave(D).reshape(1, n * n, D)  # patch id in every feature
    merged = proj.merge(x)  # (1, 16, 4 * D)
    assert merged.shape == (1, 16, 4 * D)
    # merged token (i, j) = patches (2i + a, 2j + b), a, b in {0, 1}, row-major
    i, j = 1, 2
    expect = [(2 * i + a) * n + (2 * j + b) for a in range(2) for b in range(2)]
    assert merged[0, i * 4 + j, ::D].tolist() == expect


def test_save_load_roundtrip_through_auto_classes(tok, tmp_path):
    model = _build(tok, MFM_PRESETS["large"])
    model.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = AutoModelForImageTextToText.from_pretrained(tmp_path)
    tok2 = AutoTokenizer.from_pretrained(tmp_path)
    V = model.num_visual_tokens
    ids = torch.tensor([[tok.bos_token_id] + [tok.convert_tokens_to_ids(IMAGE_TOKEN)] * V
                        + tok2("how many lesions are there ?", add_special_tokens=False)["input_ids"]])
    px = torch.rand(1, 1, 64, 64)
    torch.testing.assert_close(again(input_ids=ids, pixel_values=px).logits,
                               model(input_ids=ids, pixel_values=px).logits, atol=0, rtol=0)


def test_vqa_encoding_puts_labels_on_the_answer_only(tok, split):
    model = _build(tok)
    data = encode_vqa(split, tok, model.num_visual_tokens)
    assert data.by_image.shape == (len(split.images), split.config.questions_per_image)
    for n in range(len(split)):
        target = data.labels[n][data.labels[n] != -100].tolist()
        assert tok.decode(target[:-1]) == ANSWER_VOCAB[int(split.answer_ids[n])]
        assert target[-1] == tok.eos_token_id
        prompt = data.prompt_ids[n][data.prompt_mask[n] == 1].tolist()
        full = data.input_ids[n][data.attention_mask[n] == 1].tolist()
        assert full == prompt + target
        assert prompt.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == model.num_visual_tokens


def test_objective_matches_hf_forward_with_pixel_values(tok, split):
    """Our image-feature reuse must compute what LLaVA's own forward computes from pixels."""
    model = _build(tok)
    data = encode_vqa(split, tok, model.num_visual_tokens)
    b = vqa_batch_fn(data, images_per_batch=2, seed=0)(0, 0, 1)
    loss = VQAObjective(model)(**b)
    n = b["input_ids"].shape[0]
    mask = b["attention_mask"]
    out = model(input_ids=b["input_ids"], pixel_values=b["pixel_values"][b["image_index"]], attention_mask=mask,
                position_ids=(mask.cumsum(-1) - 1).clamp_min(0))
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].flatten(0, 1), b["labels"][:, 1:].flatten(),
                                            ignore_index=-100, reduction="sum") / n
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=1e-5)


def test_answer_slot_logits_are_the_teacher_forced_predictions_of_the_targets_and_line_up_with_the_spiking_mfm(tok, split):
    from ann.train.vqa import answer_slot_logits
    from snn.vqa import IGNORE, encode_spiking_vqa  # the student's encoding of the same split (test-only import)

    model = _build(tok)
    data = encode_vqa(split, tok, model.num_visual_tokens)
    slots = answer_slot_logits(model, data, images_per_batch=3)
    student = encode_spiking_vqa(split)
    assert slots.shape == (len(split), student.target_ids.shape[1], len(tok))
    valid = student.target_ids != IGNORE
    # the same words in the same slots: the summed CE over the slots is the objective's loss
    ce = torch.nn.functional.cross_entropy(slots[valid], student.target_ids[valid], reduction="sum") / len(split)
    b = vqa_batch_fn(data, images_per_batch=len(split.images), seed=0)(0, 0, 1)
    with torch.no_grad():
        ref = VQAObjective(model.eval())(**b)
    torch.testing.assert_close(ce, ref, atol=1e-4, rtol=1e-4)
    assert bool((slots[~valid] == 0).all())


def test_answer_probe_adds_a_loss_on_every_template_and_trains_the_vision_tower(tok, split):
    model = _build(tok)
    data = encode_vqa(split, tok, model.num_visual_tokens)
    b = vqa_batch_fn(data, images_per_batch=4, seed=0)(0, 0, 1)
    assert b["all_answers"].shape == (4, len(split.all_answer_ids[0]))
    plain = VQAObjective(model)(**b)
    obj = VQAObjective(model, aux_weight=0.5)
    with_aux = obj(**b)
    # the probe's own term, recomputed: cross-entropy over applicable (image, template) pairs / (B * T)
    logits = obj.probe(torch.stack(list(model.get_image_features(pixel_values=b["pixel_values"]).pooler_output)))
    ans = b["all_answers"]
    assert logits.shape == (*ans.shape, len(ANSWER_VOCAB))
    lp = torch.log_softmax(logits, -1)
    ok = ans >= 0
    aux = -lp[ok, ans[ok]].sum() / ans.numel()
    torch.testing.assert_close(with_aux, plain + 0.5 * aux)
    with_aux.backward()
    assert obj.probe.queries.grad.abs().sum() > 0
    assert model.model.vision_tower.embeddings.patch_embeddings.projection.weight.grad.abs().sum() > 0
    assert "probe.queries" in dict(obj.named_parameters()) and not any("probe" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="all_answers"):
        obj(**{k: v for k, v in b.items() if k != "all_answers"})
    with pytest.raises(ValueError, match="aux_weight"):
        VQAObjective(model, aux_weight=-1.0)


def test_vision_pretraining_steps_train_the_vision_side_only(tok, split):
    model = _build(tok)
    data = encode_vqa(split, tok, model.num_visual_tokens)
    fn = vqa_batch_fn(data, images_per_batch=4, seed=0, vision_steps=2)
    first, third = fn(1, 0, 1), fn(2, 0, 1)
    assert set(first) == {"pixel_values", "all_answers"} and "input_ids" in third
    obj = VQAObjective(model, aux_weight=1.0)
    obj(**first).backward()
    assert model.model.multi_modal_projector.linear_1.weight.grad is not None
    assert all(p.grad is None for p in model.model.language_model.parameters())
    with pytest.raises(ValueError, match="aux_weight > 0"):
        VQAObjective(model)(**first)
    acc = evaluate_probe(obj, data)["probe_accuracy"]
    pred = obj.probe(image_features(model, data.images)).argmax(-1)
    ok = data.all_answers >= 0
    assert acc == pytest.approx(float((pred == data.all_answers)[ok].float().mean()))
    assert evaluate_probe(VQAObjective(model), data) == {}


def test_small_mfm_learns_a_tiny_split(tok):
    cfg = SynthMedConfig(n_train=16, n_val=8, n_test=8, seed=5)
    split = load_synthmed("train", cfg)
    model = _build(tok)
    data = encode_vqa(split, tok, model.num_visual_tokens)
    obj = VQAObjective(model).train()
    opt = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    batch_fn = vqa_batch_fn(data, images_per_batch=16, seed=0)
    before = evaluate_mfm(model, tok, data, split)["accuracy"]
    first = None
    for step in range(60):
        loss = obj(**batch_fn(step, 0, 1))
        first = first if first is not None else float(loss.detach())
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert float(loss.detach()) < 0.5 * first
    metrics = evaluate_mfm(model, tok, data, split)
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "accuracy_count" in metrics
    preds = predict_answers(model, tok, data)
    assert np.mean([p == a for p, a in zip(preds, data.answers)]) == pytest.approx(metrics["accuracy"])
    assert metrics["accuracy"] >= before + 0.2  # it learned (part of) 48 (image, question) pairs


def test_mfm_training_resumes_exactly_after_an_interruption(tok, split, tmp_path):
    """HF models carry non-persistent buffers (rotary inv_freq): the checkpoint must still round-trip."""
    from tasks.training import LoopConfig, train_loop

    data = encode_vqa(split, tok, _build(tok).num_visual_tokens)
    batch_fn = vqa_batch_fn(data, images_per_batch=4, seed=0)
    cfg = LoopConfig(steps=5, lr=1e-3, checkpoint_every=2)

    def run(out_dir, fn):
        model = _build(tok)
        train_loop(VQAObjective(model), batch_fn=fn, loss_fn=lambda m, b: m(**b), config=cfg, out_dir=out_dir,
                   progress=False)
        return model

    reference = run(None, batch_fn)

    def crashing(step, rank, world):
        if step == 3:
            raise KeyboardInterrupt
        return batch_fn(step, rank, world)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, crashing)
    resumed = run(tmp_path, batch_fn)
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_mfm_shift_lora_entry_point_end_to_end(tmp_path):
    import argparse
    import json

    from ann.finetune import mfm as shift
    from ann.train import synthmed

    def parse(module, argv):
        p = argparse.ArgumentParser()
        module.add_arguments(p)
        return p.parse_args(argv)

    synthmed.run(parse(synthmed, ["--size", "small", "--steps", "2", "--n-train", "8", "--n-val", "8", "--n-test", "8",
                                  "--images-per-batch", "8", "--eval-every", "0", "--quiet", "--out", str(tmp_path / "base")]))
    m = shift.run(parse(shift, ["--base", str(tmp_path / "base" / "model"), "--steps", "2", "--n-train", "8",
                                "--n-test", "8", "--images-per-batch", "8", "--quiet", "--out", str(tmp_path / "lora")]))
    assert 0 < m["trainable_fraction"] < 1 and m["merged_equals_unmerged_fraction"] == 1.0
    assert json.loads((tmp_path / "lora" / "metrics.json").read_text())["shifted_test_after"] == m["shifted_test_after"]
    again = AutoModelForImageTextToText.from_pretrained(tmp_path / "lora" / "model")  # merged: a plain MFM folder
    assert type(again).__name__ == "MFMForConditionalGeneration"


def test_vision_pretraining_without_the_probe_is_refused(tmp_path):
    import argparse

    from ann.train import synthmed

    p = argparse.ArgumentParser()
    synthmed.add_arguments(p)
    args = p.parse_args(["--size", "small", "--aux-weight", "0", "--vision-steps", "5", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="--aux-weight"):
        synthmed.run(args)
    assert not any(tmp_path.iterdir())
