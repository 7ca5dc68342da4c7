r"""Scores the searches of :mod:`snn.quant.search` maximize, for the tasks of the command line and the benchmark.

- ``digits``: classification accuracy of a spiking classifier (e.g. :class:`snn.models.Spikformer`) on a split of
  :mod:`tasks.digits`;
- ``bytes``: minus bits per byte of a byte-level spiking LM (:class:`snn.models.SpikingLM`, vocabulary 256) on
  fixed windows of the standard-library corpus (:mod:`tasks.code`):

      score = -(1 / (W N)) sum_{w, n} log2 p(x_{w, n+1} | x_{w, <= n})     (W windows of N + 1 bytes)

  (higher is better, as the searches want).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["digits_accuracy", "byte_windows", "neg_bits_per_byte", "TASKS"]


def digits_accuracy(split: str, *, seed: int = 0) -> tuple[Callable[[nn.Module], float], torch.Tensor]:
    """``(evaluate, images)``: accuracy on the digits ``split`` and that split's images (for calibration)."""
    from tasks.classifier import evaluate
    from tasks.digits import DigitsConfig, load_digits_split

    data = load_digits_split(split, DigitsConfig(seed=seed))
    return (lambda m: evaluate(m, data.x, data.y)), data.x


def byte_windows(split: str, *, n: int, seq: int, seed: int = 0) -> torch.Tensor:
    """``n`` random windows of ``seq + 1`` bytes (int64, (n, seq + 1)) of the standard library's ``split``."""
    from tasks.code import join_code_files, load_stdlib_corpus

    data = torch.tensor(list(join_code_files(load_stdlib_corpus(split)).encode("utf-8")), dtype=torch.uint8)
    if len(data) <= seq + 1:
        raise ValueError(f"the {split!r} split has {len(data)} bytes, fewer than a window of {seq + 1}")
    starts = torch.randint(0, len(data) - seq - 1, (n,), generator=torch.Generator().manual_seed(seed))
    return torch.stack([data[i: i + seq + 1] for i in starts.tolist()]).long()


@torch.no_grad()
def neg_bits_per_byte(model: nn.Module, windows: torch.Tensor) -> float:
    """Minus the bits per byte of ``model`` (tokens (B, N) -> logits (B, N, 256)) on ``windows`` (module docstring)."""
    logits = model(windows[:, :-1])
    ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), windows[:, 1:].reshape(-1))
    return -float(ce) / math.log(2)


TASKS = ("digits", "bytes")
