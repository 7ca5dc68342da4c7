"""``python -m ann.finetune smollm2-code --out DIR``: adapt SmolLM2-135M-Instruct to Python stdlib code with LoRA.

Base: :func:`ann.models.smollm2.load_smollm2` (frozen). Adapters (:mod:`ann.finetune.lora`) on every attention
and MLP projection of its 30 decoder layers. Data: the same token blocks as the code LMs
(:func:`ann.train.code.stdlib_token_stream` of the ``"train"`` split, ``[BOS] + file + [EOS]`` per file, cut into
``--seq-len`` blocks), same sampling (:func:`ann.train.code.block_batch_fn`) and objective (mean next-token
cross-entropy). Reported: held-out bits per byte before and after (:class:`ann.train.code.EvalProtocol` on
``--eval-bytes`` of ``"test"`` files, the same files for both), the trainable-parameter fraction, the largest
logit difference between the merged and the unmerged model on one held-out block, and times.

Writes ``DIR/adapter`` (peft ``save_pretrained``: ``adapter_config.json`` + ``adapter_model.safetensors``, a few
MB), ``DIR/metrics.json``, ``DIR/checkpoint`` (resume state) and, with ``--save-merged``, ``DIR/model`` (the merged
model as an ordinary HF folder with the tokenizer, 540 MB in float32).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

import torch

from ann.checkpoint import save_pretrained_atomic
from ann.finetune.lora import LoraSettings, add_lora, default_targets, merge_lora, trainable_fraction
from ann.models.smollm2 import load_smollm2
from ann.train.code import EvalProtocol, block_batch_fn, held_out_files, lm_loss, make_blocks, stdlib_token_stream
from tasks.dist import init_distributed
from tasks.training import LoopConfig, train_loop
from tasks.code import CodeCorpusConfig
from tasks.io import atomic_write_json

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True, help="output folder (adapter/, metrics.json, checkpoint/)")
    p.add_argument("--steps", type=int, default=60, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of the adapters")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank r")
    p.add_argument("--alpha", type=float, default=16.0, help="LoRA alpha (update scale alpha / r)")
    p.add_argument("--dropout", type=float, default=0.0, help="LoRA dropout")
    p.add_argument("--batch-size", type=int, default=2, help="global batch, in blocks")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per training block")
    p.add_argument("--eval-bytes", type=int, default=50_000, help="held-out test bytes for bpb (before and after)")
    p.add_argument("--eval-context", type=int, default=EvalProtocol.context, help="bpb window (tokens)")
    p.add_argument("--eval-stride", type=int, default=EvalProtocol.stride, help="bpb window step (tokens)")
    p.add_argument("--checkpoint-every", type=int, default=20, help="checkpoint every N steps")
    p.add_argument("--corpus-root", default=None, help="read this folder instead of the stdlib (CodeCorpusConfig.root)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache root (default $NEUROMFM_CACHE or .cache/neuromfm)")
    p.add_argument("--save-merged", action="store_true", help="also write the merged model to DIR/model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start over even if DIR/checkpoint exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _load_base(cache_dir, progress: bool):
    """The frozen base model and its tokenizer (a seam: tests substitute a tiny model here)."""
    return load_smollm2(cache_dir=cache_dir, progress=progress)


def run(args: argparse.Namespace) -> dict:
    info = init_distributed()
    t0 = time.perf_counter()
    progress = not args.quiet
    model, tok = _load_base(args.cache_dir, progress)
    corpus = CodeCorpusConfig(root=None if args.corpus_root is None else str(args.corpus_root))
    protocol = EvalProtocol(eval_bytes=args.eval_bytes, context=args.eval_context, stride=args.eval_stride)
    blocks = make_blocks(stdlib_token_stream("train", tok, cache_dir=args.cache_dir, config=corpus,
                                             progress=progress), args.seq_len)
    before, t_before = {}, 0.0
    if info.is_main:
        t = time.perf_counter()
        before = protocol.evaluate(model, tok, config=corpus, progress=progress)
        t_before = time.perf_counter() - t

    settings = LoraSettings(rank=args.rank, alpha=args.alpha, dropout=args.dropout)
    peft_model = add_lora(model, settings)
    trainable, total, fraction = trainable_fraction(peft_model)
    loop = LoopConfig(steps=args.steps, lr=args.lr, warmup_steps=min(10, args.steps // 10), weight_decay=0.0,
                      checkpoint_every=args.checkpoint_every, seed=args.seed)
    result = train_loop(peft_model, batch_fn=block_batch_fn(blocks, batch_size=args.batch_size, seed=args.seed),
                        loss_fn=lm_loss, config=loop, out_dir=args.out, resume=not args.no_resume,
                        progress=progress, desc="lora-smollm2-code")
    metrics: dict = {}
    if info.is_main:
        t = time.perf_counter()
        after = protocol.evaluate(peft_model, tok, config=corpus, progress=progress)
        t_after = time.perf_counter() - t
        save_pretrained_atomic(peft_model, args.out / "adapter")
        probe_file = held_out_files(protocol.eval_bytes, config=corpus)[0]
        probe = tok(probe_file.text, add_special_tokens=False, return_tensors="pt")["input_ids"][:, :args.seq_len]
        with torch.no_grad():
            unmerged = peft_model(input_ids=probe).logits
            merged_model = merge_lora(peft_model)
            merged = merged_model(input_ids=probe).logits
        if args.save_merged:
            save_pretrained_atomic(merged_model, args.out / "model", tokenizer=tok)
        metrics = {
            "task": "smollm2-code (LoRA on stdlib code)",
            "lora": {**dataclasses.asdict(settings), "target_modules": list(default_targets(merged_model))},
            "trainable_params": trainable, "total_params": total, "trainable_fraction": fraction,
            "train_blocks": int(blocks.shape[0]), "seq_len": args.seq_len, "batch_size": args.batch_size,
            "tokens_seen": args.steps * args.batch_size * args.seq_len, "loop": dataclasses.asdict(loop),
            "eval_protocol": dataclasses.asdict(protocol),
            "test_before": before, "test_after": after,
            "bits_per_byte_before": before["bits_per_byte"], "bits_per_byte_after": after["bits_per_byte"],
            "merged_minus_unmerged_max_abs_logit": float((merged - unmerged).abs().max()),
            "train_seconds": result.train_seconds, "eval_seconds_before": t_before, "eval_seconds_after": t_after,
            "wall_seconds": time.perf_counter() - t0, "resumed_from_step": result.start_step,
            "first_loss": result.losses[0][1] if result.losses else None,
            "final_loss": result.losses[-1][1] if result.losses else None,
            "world_size": info.world_size, "torch_threads": torch.get_num_threads(),
        }
        atomic_write_json(args.out / "metrics.json", metrics)
    return metrics
