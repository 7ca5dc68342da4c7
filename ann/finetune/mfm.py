"""``python -m ann.finetune mfm-shift --base DIR --out DIR``: adapt a trained MFM to shifted scans with LoRA.

The base MFM was trained on SynthMed-VQA's default acquisition (noise, speckle and texture std 0.05). The
target domain is a noisier scanner with coarser tissue texture (``--noise-std``/``--texture-std``/``--speckle-std``,
default 0.15 each, three times the source): same anatomy and questions, a shifted image distribution.
Only low-rank adapters on the attention and MLP projections of both towers and on the projector are trained;
they are merged into the weights at the end, so the adapted model is an ordinary MFM folder.

Reports, on the shifted test split: accuracy before and after adaptation, the accuracy after merging (must
equal the unmerged one), the source-domain test accuracy after adaptation (forgetting), and the trainable
parameter fraction.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from ann.checkpoint import save_pretrained_atomic
from ann.finetune.lora import LoraSettings, add_lora, merge_lora, trainable_fraction
from ann.models.hf import ModelFamily, load_pretrained
from tasks.dist import init_distributed
from tasks.training import LoopConfig, train_loop
from ann.train.vqa import VQAObjective, answer_accuracy, encode_vqa, evaluate_mfm, predict_answers, vqa_batch_fn
from tasks.io import atomic_write_json
from tasks.synthmed import SynthMedConfig, load_synthmed

__all__ = ["add_arguments", "run", "MFM_LORA_TARGETS"]

# Attention and MLP projections of both towers (transformers 5 names the ViT's q/k/v/o_proj and fc1/fc2, the
# Llama's q/k/v/o_proj and gate/up/down_proj) and the two projector layers; the tied embeddings stay frozen.
MFM_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "fc1", "fc2",
                    "linear_1", "linear_2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", type=Path, required=True, help="trained MFM folder (python -m ann.train synthmed ... /model)")
    p.add_argument("--out", type=Path, required=True, help="output folder (model/, metrics.json, checkpoint/)")
    p.add_argument("--noise-std", type=float, default=0.15, help="target-domain scan noise")
    p.add_argument("--speckle-std", type=float, default=0.15, help="target-domain speckle")
    p.add_argument("--texture-std", type=float, default=0.15, help="target-domain tissue texture")
    p.add_argument("--n-train", type=int, default=2000, help="target-domain training images")
    p.add_argument("--n-test", type=int, default=1000, help="test images (both domains)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (update scale alpha / r)")
    p.add_argument("--images-per-batch", type=int, default=32)
    p.add_argument("--checkpoint-every", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=1, help="SynthMed seed of the target domain")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--quiet", action="store_true")


def run(args: argparse.Namespace) -> dict:
    info = init_distributed()
    t0 = time.perf_counter()
    loaded = load_pretrained(args.base)
    if loaded.family is not ModelFamily.LLAVA or not hasattr(loaded.model, "num_visual_tokens"):
        raise ValueError(f"--base {args.base} is a {loaded.family.name} model; mfm-shift needs an MFM trained by "
                         "`python -m ann.train synthmed`")
    model, tok = loaded.model, loaded.tokenizer_or_processor
    V = model.num_visual_tokens
    shifted = SynthMedConfig(n_train=args.n_train, n_val=50, n_test=args.n_test, noise_std=args.noise_std,
                             speckle_std=args.speckle_std, texture_std=args.texture_std, seed=args.data_seed)
    source = SynthMedConfig(n_train=50, n_val=50, n_test=args.n_test, seed=args.data_seed)
    tgt_test_split, src_test_split = load_synthmed("test", shifted), load_synthmed("test", source)
    tgt_test, src_test = encode_vqa(tgt_test_split, tok, V), encode_vqa(src_test_split, tok, V)
    before = evaluate_mfm(model, tok, tgt_test, tgt_test_split) if info.is_main else {}
    source_before = evaluate_mfm(model, tok, src_test, src_test_split) if info.is_main else {}

    settings = LoraSettings(rank=args.rank, alpha=args.alpha, dropout=0.0, target_modules=MFM_LORA_TARGETS)
    peft_model = add_lora(model, settings)
    trainable, total, fraction = trainable_fraction(peft_model)
    train = encode_vqa(load_synthmed("train", shifted), tok, V)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=min(30, args.steps // 10),
                      checkpoint_every=args.checkpoint_every, seed=args.seed)
    # peft injects the adapters into ``model`` in place, so the VQA objective runs the adapted model.
    result = train_loop(VQAObjective(model), batch_fn=vqa_batch_fn(train, images_per_batch=args.images_per_batch,
                                                                   seed=args.seed),
                        loss_fn=lambda m, b: m(**b), config=loop, out_dir=args.out, resume=not args.no_resume,
                        progress=not args.quiet, desc="lora-mfm")
    metrics: dict = {}
    if info.is_main:
        unmerged = predict_answers(model, tok, tgt_test)
        after = answer_accuracy(unmerged, tgt_test, tgt_test_split)
        merged_model = merge_lora(peft_model)
        merged = predict_answers(merged_model, tok, tgt_test)
        source_after = evaluate_mfm(merged_model, tok, src_test, src_test_split)
        save_pretrained_atomic(merged_model, args.out / "model", tokenizer=tok)
        metrics = {
            "task": "synthmed-vqa domain shift (LoRA)", "base": str(args.base),
            "shift": {"noise_std": args.noise_std, "speckle_std": args.speckle_std, "texture_std": args.texture_std},
            "lora": {"rank": args.rank, "alpha": args.alpha, "targets": list(MFM_LORA_TARGETS)},
            "trainable_params": trainable, "total_params": total, "trainable_fraction": fraction,
            "shifted_test_before": before, "shifted_test_after": after,
            "source_test_before": source_before, "source_test_after": source_after,
            "merged_equals_unmerged_fraction": float(np.mean([a == b for a, b in zip(unmerged, merged)])),
            "train_seconds": result.train_seconds, "wall_seconds": time.perf_counter() - t0,
            "steps": args.steps, "world_size": info.world_size, "resumed_from_step": result.start_step,
        }
        atomic_write_json(args.out / "metrics.json", metrics)
    return metrics
