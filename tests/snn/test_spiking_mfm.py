"""snn.models.SpikingMFM, snn.vqa and snn.train: causality, generation, engines, save/load, distillation, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from snn.checkpoint import load_model, save_model
from snn.models import SpikingMFM, SpikingMFMConfig
from snn.neurons import Engine
from snn.vqa import (EOS, IGNORE, PAD, SpikingVQAObjective, encode_spiking_vqa, predict_answers,
                     spiking_vqa_batch_fn)
from tasks.synthmed import SynthMedConfig, VQA_VOCAB, load_synthmed

REPO = Path(__file__).resolve().parents[2]
SMALL = dict(image_size=32, patch_size=8, vision_dim=16, text_dim=16, timesteps=2)
DATA = SynthMedConfig(image_size=32, n_train=16, n_val=8, n_test=8)


def _trained(steps: int = 3, **cfg) -> tuple[SpikingMFM, object]:
    torch.manual_seed(0)
    data = encode_spiking_vqa(load_synthmed("train", DATA))
    m = SpikingMFM(SpikingMFMConfig(**{**SMALL, **cfg}))
    obj = SpikingVQAObjective(m, aux_weight=1.0)
    opt = torch.optim.AdamW(obj.parameters(), lr=3e-3)
    batch = spiking_vqa_batch_fn(data, images_per_batch=8, seed=0)
    for s in range(steps):  # non-trivial weights and BN statistics
        loss = obj(**batch(s, 0, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), data


def test_words_and_target_slots_line_up():
    split = load_synthmed("train", DATA)
    d = encode_spiking_vqa(split)
    for n in range(len(split)):
        p, r = int(d.prompt_len[n]), int((d.target_ids[n] != IGNORE).sum())
        words = [VQA_VOCAB[int(i)] for i in d.tokens[n, p:p + r - 1]]
        assert " ".join(words) == d.answers[n] and int(d.tokens[n, p + r - 1]) == EOS
        assert torch.equal(d.tokens[n, p:p + r], d.target_ids[n, :r]) and bool((d.tokens[n, p + r:] == PAD).all())
        assert VQA_VOCAB[int(d.tokens[n, 0])] == "<bos>"


def test_causal_logits_and_greedy_generation_agree_with_teacher_forcing():
    m, d = _trained()
    imgs, idx = d.images[:4], torch.arange(4).repeat_interleave(d.by_image.shape[1])
    samples = torch.from_numpy(d.by_image[:4].reshape(-1))
    tokens = d.tokens[samples]
    with torch.no_grad():
        full = m(imgs, idx, tokens)
        changed = tokens.clone()
        changed[:, 10:] = 7  # a change after position 9 leaves positions 0..9 unchanged
        torch.testing.assert_close(m(imgs, idx, changed)[:, :10], full[:, :10], rtol=0, atol=0)
        Lp = int(d.prompt_len.max())
        gen = m.generate(imgs, idx, tokens[:, :Lp], d.prompt_len[samples], max_new_tokens=3, eos_id=EOS, pad_id=PAD)
        # teacher forcing on the generated words reproduces each choice
        seq = torch.cat([tokens[:, :Lp], torch.full((len(samples), 3), PAD)], 1)
        for i in range(len(samples)):
            p = int(d.prompt_len[samples[i]])
            seq[i, p:p + 3] = gen[i]
            seq[i, p + 3:] = PAD
        logits = m(imgs, idx, seq)
        for i in range(len(samples)):
            p = int(d.prompt_len[samples[i]])
            for j in range(3):
                assert int(logits[i, p - 1 + j].argmax()) == int(gen[i, j])
                if int(gen[i, j]) == EOS:
                    assert bool((gen[i, j + 1:] == PAD).all())
                    break


def test_the_same_weights_give_the_same_logits_on_every_engine_and_after_save_load(tmp_path):
    m, d = _trained()
    imgs, idx, tokens = d.images[:2], torch.tensor([0, 0, 1]), d.tokens[:3]
    with torch.no_grad():
        ref = m(imgs, idx, tokens)
        save_model(m, tmp_path / "model")
        for engine in Engine:
            other = load_model(tmp_path / "model", engine=engine)
            torch.testing.assert_close(other(imgs, idx, tokens), ref, rtol=1e-5, atol=1e-5)
    assert json.loads((tmp_path / "model" / "config.json").read_text())["model"] == "SpikingMFM"


def test_distillation_pulls_the_student_towards_the_teacher():
    _, d = _trained(steps=0)
    torch.manual_seed(1)
    # a teacher whose answer distribution depends on the slot only: something a student can fit in a few steps
    teacher = (torch.randn(d.target_ids.shape[1], len(VQA_VOCAB)) * 3).expand(len(d.answers), -1, -1).clone()
    m = SpikingMFM(SpikingMFMConfig(**SMALL))
    obj = SpikingVQAObjective(m, distill_weight=1.0, temperature=1.0)
    batch = spiking_vqa_batch_fn(d, images_per_batch=8, seed=0, teacher_logits=teacher)(0, 0, 1)
    opt = torch.optim.AdamW(obj.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = obj(**batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]  # pure KL to the teacher: it goes down
    with pytest.raises(ValueError, match="teacher_logits"):
        spiking_vqa_batch_fn(d, images_per_batch=8, seed=0, teacher_logits=teacher[:5])
    with pytest.raises(ValueError, match="teacher_logits"):
        SpikingVQAObjective(m, distill_weight=0.5)(**{k: v for k, v in batch.items() if k != "teacher_logits"})


def test_the_objective_starts_at_rest_on_every_call_on_a_stateful_engine():
    _, d = _trained(steps=0)
    torch.manual_seed(0)
    obj = SpikingVQAObjective(SpikingMFM(SpikingMFMConfig(**SMALL, engine="spikingjelly")), aux_weight=1.0).eval()
    with torch.no_grad():
        # visual currents around the threshold, different per feature (the probe's LayerNorm cancels a constant)
        obj.mfm.proj_bn.bn.bias.copy_(torch.linspace(0.8, 1.6, obj.mfm.config.text_dim))
    batch = spiking_vqa_batch_fn(d, images_per_batch=8, seed=0)(0, 0, 1)
    with torch.no_grad():
        ref = obj(**batch).item()
        vis, lif = obj.mfm.visual_tokens(batch["images"]), obj.probe_lif
        lif.reset()
        rest = lif(vis)
        lif.reset()
        lif.v = 0.9
        assert not torch.equal(lif(vis), rest)  # not vacuous: a leftover membrane changes the probe's spikes
        for lif in (obj.probe_lif, obj.mfm.proj_lif, obj.mfm.head_lif):
            lif.v = 0.9  # membranes left over from another batch (SpikingJelly keeps them between calls)
        assert obj(**batch).item() == ref


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="SpikingMFMConfig.timesteps=0"):
        SpikingMFMConfig(timesteps=0)
    with pytest.raises(ValueError, match="SpikingMFMConfig.patch_size=5"):
        SpikingMFMConfig(patch_size=5)
    with pytest.raises(ValueError, match="distill_weight"):
        SpikingVQAObjective(SpikingMFM(SpikingMFMConfig(**SMALL)), distill_weight=1.5)
    m = SpikingMFM(SpikingMFMConfig(**SMALL)).eval()
    with pytest.raises(ValueError, match=r"expected images \(M, 1, 32, 32\)"):
        m(torch.rand(2, 1, 64, 64), torch.tensor([0]), torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="exceed max_text"):
        m(torch.rand(1, 1, 32, 32), torch.tensor([0]), torch.ones(1, 99, dtype=torch.long))
    with pytest.raises(ValueError, match="image_index"):
        m(torch.rand(1, 1, 32, 32), torch.tensor([0, 0]), torch.ones(1, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="timesteps"):
        from snn.train import main
        main(["synthmed", "--out", "/nonexistent", "--timesteps", "0"])


def test_predict_answers_returns_words_of_the_vocabulary():
    m, d = _trained()
    pred = predict_answers(m, d)
    assert len(pred) == len(d.answers)
    assert all(w in VQA_VOCAB for p in pred for w in p.replace(" <no-eos>", "").split())


def _train_cli(out: Path, *, nproc: int) -> dict:
    args = ["-m", "snn.train", "synthmed", "--steps", "3", "--images-per-batch", "8", "--n-train", "16",
            "--n-val", "8", "--n-test", "8", "--dim", "16", "--timesteps", "2", "--eval-every", "0",
            "--checkpoint-every", "3", "--quiet", "--out", str(out)]
    if nproc > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + args
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_ddp_under_torchrun_trains_the_same_model(tmp_path):
    one, two = _train_cli(tmp_path / "one", nproc=1), _train_cli(tmp_path / "two", nproc=2)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    from tasks.io import load_tensors

    a, b = (load_tensors(tmp_path / n / "model" / "model.safetensors") for n in ("one", "two"))
    assert a.keys() == b.keys()
    # BatchNorm normalises with each rank's own half of the batch (PyTorch's SyncBatchNorm is GPU-only), so the
    # two runs are close, not equal; the gradient average, the sharding and the schedule are shared with the ANN
    # entry points, whose DDP run is checked for equality (tests/tasks/test_training.py).
    for k in a:
        if a[k].is_floating_point() and "running" not in k:
            torch.testing.assert_close(b[k], a[k], atol=0.02, rtol=0.05, msg=k)
    assert abs(one["final_loss"] - two["final_loss"]) < 0.1 * one["final_loss"]


def test_the_cached_decode_gives_the_full_calls_logits():
    from snn.models import SpikeKVCache

    m, data = _trained(attn_threshold=0.5)
    images, tokens = data.images[data.image_index[:3]], data.tokens[:3, :9]
    visual = m.visual_tokens(images)
    full = m.decode(visual, tokens)
    cache = SpikeKVCache()
    parts = [m.decode(visual, tokens[:, :6], cache)] + [m.decode(None, tokens[:, n:n + 1], cache) for n in range(6, 9)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == m.config.visual_tokens + 9
    torch.testing.assert_close(m.decode(visual, tokens, logits_to_keep=2), full[:, -2:], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="pass visual=None after the first call"):
        m.decode(visual, tokens[:, :1], cache)
    with pytest.raises(ValueError, match="exceed max_text"):
        m.decode(None, torch.zeros(3, m.config.max_text, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="needs eval mode"):
        m.train().decode(visual, tokens, SpikeKVCache())
