"""Supervised training of a classifier on tensors (digits and other small tasks); shared by both tracks."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from tasks.metrics import accuracy

__all__ = ["TrainConfig", "TrainResult", "train_classifier", "evaluate"]


@dataclass(frozen=True)
class TrainConfig:
    """Adam + cosine schedule, cross-entropy; the best epoch on validation accuracy is kept.

    Attributes:
        epochs: passes over the training set (>= 1).
        batch_size: samples per step (>= 1).
        lr: peak learning rate (> 0).
        weight_decay: decoupled weight decay (AdamW), >= 0.
        seed: seeds initialisation-independent randomness (shuffling).
    """

    epochs: int = 60
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"TrainConfig.epochs={self.epochs} must be >= 1")
        if self.batch_size < 1:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be >= 1")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr={self.lr} must be > 0")
        if self.weight_decay < 0:
            raise ValueError(f"TrainConfig.weight_decay={self.weight_decay} must be >= 0")


@dataclass(frozen=True)
class TrainResult:
    best_epoch: int
    val_accuracy: float
    history: tuple[tuple[float, float], ...]  # (train loss, val accuracy) per epoch


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024) -> float:
    """Accuracy of ``model`` on ``(x, y)`` in eval mode."""
    model.eval()
    logits = torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    return accuracy(logits, y)


def train_classifier(
    model: nn.Module,
    *,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place; at the end it holds the weights of the best validation epoch."""
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ValueError("train_classifier: inputs and labels differ in length")
    gen = torch.Generator().manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = (len(x_train) + config.batch_size - 1) // config.batch_size
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    best = (-1.0, 0, copy.deepcopy(model.state_dict()))
    history = []
    bar = tqdm(range(config.epochs), desc="train", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), config.batch_size):
            idx = perm[i : i + config.batch_size]
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        val_acc = evaluate(model, x_val, y_val)
        history.append((total / len(x_train), val_acc))
        if val_acc > best[0]:
            best = (val_acc, epoch, copy.deepcopy(model.state_dict()))
        bar.set_postfix(loss=f"{history[-1][0]:.3f}", val_acc=f"{val_acc:.3f}")
    model.load_state_dict(best[2])
    model.eval()
    return TrainResult(best_epoch=best[1], val_accuracy=best[0], history=tuple(history))
