"""Task metrics."""

from __future__ import annotations

import torch

__all__ = ["accuracy"]


def accuracy(logits_or_pred: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy. ``logits_or_pred``: (N, C) scores or (N,) predicted class ids; ``labels``: (N,)."""
    pred = logits_or_pred.argmax(dim=-1) if logits_or_pred.dim() == 2 else logits_or_pred
    if pred.shape != labels.shape:
        raise ValueError(f"accuracy: predictions {tuple(pred.shape)} and labels {tuple(labels.shape)} differ in shape")
    if labels.numel() == 0:
        raise ValueError("accuracy: no samples")
    return float((pred == labels).float().mean())
