"""One training loop for every entry point of both tracks (ANN and SNN): AdamW, warmup + cosine, DDP, checkpoints,
resume.

The data side is a pure function ``batch_fn(step, rank, world_size) -> batch`` (this rank's share of the
global batch of ``step``), and dropout is re-seeded from ``(seed, step, rank)`` at every step. So a run's
trajectory depends only on the configuration: resuming from a checkpoint continues exactly where the
interrupted run was, and N DDP processes with equal shards follow the single-process run up to float
summation order.

Learning rate at step s (0-based), with W = ``warmup_steps``, S = ``steps``, eta = ``lr``::

    eta_s = eta * (s + 1) / W                                         s < W   (linear warmup)
    eta_s = eta * (0.1 + 0.9 * 0.5 * (1 + cos(pi * (s - W) / (S - W))))  s >= W (cosine to 10 % of eta)

With ``restart_at = R > 0`` the run is two stages (e.g. vision pre-training, then the full task) and the
schedule above runs twice: over steps [0, R) with S = R, and over [R, S) with s and S shifted by R.

Checkpoint layout (``out_dir/checkpoint``; written to a temp folder, then renamed, so a crash mid-write
leaves the previous checkpoint intact): ``model.safetensors`` (trainable parameters and buffers: a LoRA run
stores only its adapters), ``optimizer.safetensors`` (AdamW moments), ``trainer_state.json`` (step, loss and
evaluation history, the config it was made with).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from tasks.dist import DistInfo, all_reduce_mean, barrier, init_distributed
from tasks.io import atomic_write_json, load_tensors, read_json, save_tensors

__all__ = ["LoopConfig", "LoopResult", "train_loop", "load_checkpoint_step", "CHECKPOINT_DIR"]

CHECKPOINT_DIR = "checkpoint"
_STATE_VERSION = 1


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings.

    Attributes:
        steps: optimizer steps in total (a resumed run counts the steps already done).
        lr: peak learning rate (AdamW).
        warmup_steps: linear warmup steps (< steps).
        weight_decay: AdamW decoupled weight decay, applied to matrices only (not to biases, norms, embeddings' 1-D params).
        grad_clip: max global gradient L2 norm; None disables clipping.
        eval_every: evaluate every this many steps (0: only at the end).
        checkpoint_every: checkpoint every this many steps (0: only at the end).
        seed: seeds dropout, step by step.
        betas: AdamW betas.
        restart_at: step at which warmup + cosine start again (0: one schedule over the whole run).
    """

    steps: int
    lr: float
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    eval_every: int = 0
    checkpoint_every: int = 0
    seed: int = 0
    betas: tuple[float, float] = (0.9, 0.95)
    restart_at: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"LoopConfig.{name}={getattr(self, name)!r} is invalid: {fix}")

        need(isinstance(self.steps, int) and self.steps >= 1, "steps", "use a positive int")
        need(isinstance(self.lr, (int, float)) and 0 < self.lr < 1, "lr", "use a float in (0, 1)")
        need(isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps < self.steps, "warmup_steps",
             "use an int in [0, steps)")
        need(isinstance(self.restart_at, int) and (self.restart_at == 0 or
             self.warmup_steps < self.restart_at < self.steps - self.warmup_steps), "restart_at",
             "use 0 (no restart) or an int with warmup_steps < restart_at < steps - warmup_steps")
        need(self.weight_decay >= 0, "weight_decay", "use a float >= 0")
        need(self.grad_clip is None or self.grad_clip > 0, "grad_clip", "use a float > 0 or None")
        need(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every", "use an int >= 0")
        need(isinstance(self.checkpoint_every, int) and self.checkpoint_every >= 0, "checkpoint_every", "use an int >= 0")

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based ``step`` (formula in the module docstring)."""
        start, end = (0, self.steps) if self.restart_at == 0 else \
            ((0, self.restart_at) if step < self.restart_at else (self.restart_at, self.steps))
        step -= start
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, end - start - self.warmup_steps)
        return self.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * (step - self.warmup_steps) / span)))


@dataclass
class LoopResult:
    """What a run did. ``losses``: (step, mean loss over ranks); ``evals``: (step, metrics) at each evaluation."""

    start_step: int
    steps: int
    world_size: int
    train_seconds: float
    losses: list[tuple[int, float]] = field(default_factory=list)
    evals: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    @property
    def final_eval(self) -> dict[str, float]:
        return self.evals[-1][1] if self.evals else {}


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: tied parameters share storage, which safetensors refuses; a checkpoint is small anyway.
    # Non-persistent buffers (e.g. HF's rotary inv_freq) are rebuilt by the model and must not be saved.
    persistent = set(model.state_dict())
    state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().clone() for n, b in model.named_buffers() if b is not None and n in persistent})
    return state


def _optimizer_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    if not decay and not no_decay:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _save_checkpoint(directory: Path, model: nn.Module, opt: torch.optim.Optimizer, state: dict) -> None:
    final = directory / CHECKPOINT_DIR
    tmp = directory / f".{CHECKPOINT_DIR}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_tensors(tmp / "model.safetensors", _trainable_state(model))
    osd = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, s in osd["state"].items() for k, v in s.items() if torch.is_tensor(v)}
    save_tensors(tmp / "optimizer.safetensors", tensors)
    groups = [{k: v for k, v in g.items()} for g in osd["param_groups"]]
    atomic_write_json(tmp / "trainer_state.json", {**state, "param_groups": groups})
    old = directory / f".{CHECKPOINT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_dir(directory: Path) -> Path | None:
    for d in (directory / CHECKPOINT_DIR, directory / f".{CHECKPOINT_DIR}.old"):  # .old: crash between renames
        if (d / "trainer_state.json").is_file():
            return d
    return None


def load_checkpoint_step(directory: str | os.PathLike) -> int | None:
    """Step of the checkpoint in ``directory`` (None if there is none)."""
    d = _checkpoint_dir(Path(directory))
    return None if d is None else int(read_json(d / "trainer_state.json", what="trainer state")["step"])


def _load_checkpoint(d: Path, model: nn.Module, opt: torch.optim.Optimizer, config: LoopConfig) -> dict:
    state = read_json(d / "trainer_state.json", what="trainer state")
    if state.get("version") != _STATE_VERSION:
        raise ValueError(f"{d / 'trainer_state.json'} has version {state.get('version')!r}, expected "
                         f"{_STATE_VERSION}: delete {d} to start over")
    saved = state.get("config", {})
    for key in ("lr", "warmup_steps", "weight_decay", "seed"):
        if key in saved and saved[key] != getattr(config, key):
            raise ValueError(f"checkpoint {d} was made with {key}={saved[key]!r} but this run has "
                             f"{key}={getattr(config, key)!r}: use the same setting to resume, or a new --out")
    weights = load_tensors(d / "model.safetensors", what="checkpoint weights")
    missing, unexpected = model.load_state_dict(weights, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or (set(missing) & trainable):
        raise ValueError(f"checkpoint {d} does not match the model (missing trainable: "
                         f"{sorted(set(missing) & trainable)[:5]}, unexpected: {unexpected[:5]}); "
                         "resume with the same model configuration, or a new --out")
    tensors = load_tensors(d / "optimizer.safetensors", what="optimizer state")
    per: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, name = key.split(".", 1)
        per.setdefault(int(i), {})[name] = v
    opt.load_state_dict({"state": per, "param_groups": state["param_groups"]})
    return state


def train_loop(model: nn.Module, *, batch_fn: Callable[[int, int, int], Any],
               loss_fn: Callable[[nn.Module, Any], torch.Tensor], config: LoopConfig,
               out_dir: str | os.PathLike | None, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
               resume: bool = True, progress: bool = True, desc: str = "train",
               find_unused_parameters: bool = False) -> LoopResult:
    """Train ``model`` in place for ``config.steps`` optimizer steps.

    Args:
        batch_fn: ``(step, rank, world_size) -> batch``, this rank's share of step ``step``'s global batch
            (see :func:`tasks.dist.shard`); must depend on nothing else.
        loss_fn: ``(model, batch) -> scalar`` mean loss; ``model`` is the DDP wrapper when distributed.
        out_dir: checkpoints go to ``out_dir/checkpoint`` (None: no checkpoints, no resume).
        evaluate: ``model -> {metric: value}``, run on rank 0 every ``eval_every`` steps and at the end.
        resume: continue from ``out_dir/checkpoint`` when there is one.
        find_unused_parameters: tell DDP that some steps leave parameters without a gradient (a stage that
            trains only part of the model); costs an extra graph traversal per step.
    """
    info: DistInfo = init_distributed()
    directory = Path(out_dir) if out_dir is not None else None
    opt = torch.optim.AdamW(_optimizer_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    result = LoopResult(start_step=0, steps=config.steps, world_size=info.world_size, train_seconds=0.0)
    ckpt = _checkpoint_dir(directory) if (directory is not None and resume) else None
    if ckpt is not None:
        state = _load_checkpoint(ckpt, model, opt, config)
        result.start_step = int(state["step"])
        result.losses = [tuple(x) for x in state.get("losses", [])]
        result.evals = [(int(s), dict(m)) for s, m in state.get("evals", [])]
        result.train_seconds = float(state.get("train_seconds", 0.0))
    wrapped: nn.Module = model
    if info.world_size > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused_parameters)
    model.train()

    def snapshot(step: int) -> None:
        if directory is not None and info.is_main:
            _save_checkpoint(directory, model, opt, {
                "version": _STATE_VERSION, "step": step, "config": asdict(config), "losses": result.losses,
                "evals": result.evals, "train_seconds": result.train_seconds, "world_size": info.world_size})
        barrier()

    def run_eval(step: int) -> None:
        if evaluate is not None and info.is_main:
            model.eval()
            with torch.no_grad():
                metrics = {k: float(v) for k, v in evaluate(model).items()}
            model.train()
            result.evals.append((step, metrics))
            bar.set_postfix({**{k: f"{v:.4g}" for k, v in metrics.items()}})
        barrier()

    bar = tqdm(total=config.steps, initial=result.start_step, desc=desc, disable=not (progress and info.is_main),
               leave=False, dynamic_ncols=True)
    try:
        for step in range(result.start_step, config.steps):
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = config.lr_at(step)
            torch.manual_seed(config.seed * 1_000_003 + step * 1009 + info.rank)  # dropout of this step
            batch = batch_fn(step, info.rank, info.world_size)
            loss = loss_fn(wrapped, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}: lower LoopConfig.lr "
                                         f"(now {config.lr}) or raise warmup_steps")
            loss.backward()
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            mean_loss = float(all_reduce_mean(loss.detach()))
            result.losses.append((step + 1, mean_loss))
            result.train_seconds += time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
            done = step + 1
            if config.eval_every and done % config.eval_every == 0 and done < config.steps:
                run_eval(done)
            if config.checkpoint_every and done % config.checkpoint_every == 0 and done < config.steps:
                snapshot(done)
        if not result.evals or result.evals[-1][0] != config.steps:
            run_eval(config.steps)
        if ckpt is None or result.start_step < config.steps:
            snapshot(config.steps)
    finally:
        bar.close()
    model.eval()
    return result
