"""``python -m snn.train synthmed --out DIR``: train the spiking MFM on SynthMed-VQA with surrogate-gradient BPTT.

Direct encoding (the analog image drives the first layer at every timestep), the ATan surrogate of the neurons
(:mod:`snn.neurons`), back-propagation through the T timesteps, and the shared training loop
(:func:`tasks.training.train_loop`: AdamW, warmup + cosine, checkpoints and exact resume). Runs unchanged under
``torchrun --nproc_per_node N -m snn.train synthmed ...`` (DDP, gloo), like the ANN entry points.

Distillation: ``--teacher-logits FILE`` (safetensors with ``teacher_logits`` (N, R, W): an ANN MFM's logits for
every target slot of the same training split, e.g. from :func:`ann.train.vqa.answer_slot_logits`) and
``--distill-weight alpha`` mix the KL term of :mod:`snn.vqa` into the loss.

Writes ``DIR/model`` (:func:`snn.checkpoint.save_model`), ``DIR/metrics.json`` and ``DIR/checkpoint``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from snn.checkpoint import config_dict, save_model
from snn.models import SpikingMFM, SpikingMFMConfig
from snn.neurons import Engine
from snn.vqa import SpikingVQAObjective, encode_spiking_vqa, evaluate_spiking_mfm, spiking_vqa_batch_fn
from tasks.dist import init_distributed
from tasks.io import atomic_write_json, load_tensors
from tasks.synthmed import SynthMedConfig, load_synthmed
from tasks.training import LoopConfig, train_loop

__all__ = ["add_arguments", "run", "main"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = SpikingMFMConfig()
    p.add_argument("--out", type=Path, required=True, help="output folder (model/, metrics.json, checkpoint/)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps")
    # measured (1500 steps, 4000 images, test 500 images): lr 1e-3 0.540, 2e-3 0.572, 3e-3 0.591; ANN mfm-small 0.585
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (AdamW, warmup + cosine)")
    p.add_argument("--images-per-batch", type=int, default=32, help="global batch, in images (x questions each)")
    p.add_argument("--n-train", type=int, default=8000, help="training images")
    p.add_argument("--n-val", type=int, default=300, help="validation images (evaluated during training)")
    p.add_argument("--n-test", type=int, default=1000, help="test images (evaluated at the end)")
    p.add_argument("--questions-per-image", type=int, default=3, help="questions per training image (1..8)")
    p.add_argument("--timesteps", type=int, default=d.timesteps, help="T, timesteps per input (>= 1)")
    p.add_argument("--engine", choices=[e.value for e in Engine], default=d.engine.value, help="neuron engine")
    p.add_argument("--dim", type=int, default=d.text_dim, help="width of both towers")
    p.add_argument("--depth", type=int, default=d.text_depth, help="blocks in each tower")
    p.add_argument("--aux-weight", type=float, default=1.0, help="weight of the training-only answer probe (0: off)")
    p.add_argument("--teacher-logits", type=Path, default=None,
                   help="safetensors file with 'teacher_logits' (N, R, W) of an ANN teacher on the same training split")
    # measured with the large ANN MFM as teacher (1500 steps, 4000 images, test 500 images, lr 2e-3): plain 0.572,
    # alpha 0.5 0.579, alpha 0.8 0.587
    p.add_argument("--distill-weight", type=float, default=0.8, help="alpha of the distillation term (with --teacher-logits)")
    p.add_argument("--temperature", type=float, default=2.0, help="distillation temperature tau")
    p.add_argument("--eval-every", type=int, default=1000, help="validate every N steps (0: at the end)")
    p.add_argument("--checkpoint-every", type=int, default=500, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0, help="SynthMed generator seed")
    p.add_argument("--no-resume", action="store_true", help="start over even if DIR/checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> dict:
    info = init_distributed()
    t0 = time.perf_counter()
    if args.timesteps < 1:
        raise ValueError(f"--timesteps {args.timesteps}: use an int >= 1")
    data = SynthMedConfig(n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, seed=args.data_seed)
    train_split = load_synthmed("train", dataclasses.replace(data, questions_per_image=args.questions_per_image))
    train, val_split = encode_spiking_vqa(train_split), load_synthmed("val", data)
    val = encode_spiking_vqa(val_split)
    teacher = None
    if args.teacher_logits is not None:
        tensors = load_tensors(args.teacher_logits, what="teacher logits")
        if "teacher_logits" not in tensors:
            raise ValueError(f"{args.teacher_logits} has no 'teacher_logits' tensor (found {sorted(tensors)})")
        teacher = tensors["teacher_logits"].float()
    torch.manual_seed(args.seed)
    cfg = SpikingMFMConfig(timesteps=args.timesteps, engine=args.engine, vision_dim=args.dim, text_dim=args.dim,
                           vision_depth=args.depth, text_depth=args.depth)
    model = SpikingMFM(cfg)
    objective = SpikingVQAObjective(model, aux_weight=args.aux_weight,
                                    distill_weight=args.distill_weight if teacher is not None else 0.0,
                                    temperature=args.temperature)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=min(100, args.steps // 10), weight_decay=0.01,
                      eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed)
    result = train_loop(objective, batch_fn=spiking_vqa_batch_fn(train, images_per_batch=args.images_per_batch,
                                                                 seed=args.seed, teacher_logits=teacher),
                        loss_fn=lambda m, b: m(**b), config=loop, out_dir=args.out,
                        evaluate=lambda obj: evaluate_spiking_mfm(obj.mfm, val, val_split),
                        resume=not args.no_resume, progress=not args.quiet, desc="spiking-mfm")
    metrics: dict = {}
    if info.is_main:
        test_split = load_synthmed("test", data)
        test = evaluate_spiking_mfm(model, encode_spiking_vqa(test_split), test_split)
        save_model(model, args.out / "model")
        metrics = {"task": "synthmed-vqa", "model": "SpikingMFM", "config": config_dict(cfg),
                   "params": sum(p.numel() for p in model.parameters()), "data": dataclasses.asdict(data),
                   "train_questions_per_image": args.questions_per_image, "aux_weight": args.aux_weight,
                   "distilled": teacher is not None, "distill_weight": objective.distill_weight,
                   "temperature": args.temperature, "loop": dataclasses.asdict(loop),
                   "images_per_batch": args.images_per_batch, "world_size": info.world_size,
                   "train_seconds": result.train_seconds, "wall_seconds": time.perf_counter() - t0,
                   "resumed_from_step": result.start_step, "final_loss": result.losses[-1][1] if result.losses else None,
                   "val": result.final_eval, "val_history": result.evals, "test": test,
                   "torch_threads": torch.get_num_threads()}
        atomic_write_json(args.out / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m snn.train", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="task", required=True)
    add_arguments(sub.add_parser("synthmed", help="the spiking MFM on SynthMed-VQA", description=__doc__))
    args = p.parse_args(argv)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
