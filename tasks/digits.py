"""The ``digits`` task: scikit-learn's bundled UCI handwritten digits (real data, 1,797 8x8 greyscale images).

Splits are stratified by class and fixed by a seed: the same :class:`DigitsConfig` always gives the same
train / val / test samples on every machine. Pixels (0..16 in the source) are scaled to [0, 1].
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from enum import Enum

import numpy as np
import torch

__all__ = ["Split", "DigitsConfig", "DigitsSplit", "load_digits_split", "IMAGE_SHAPE", "N_CLASSES"]

IMAGE_SHAPE = (1, 8, 8)
N_CLASSES = 10


class Split(str, Enum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class DigitsConfig:
    """How the 1,797 digits are split.

    Attributes:
        seed: seed of the stratified shuffle.
        val_fraction: fraction of all samples in the validation split, in (0, 0.5).
        test_fraction: fraction of all samples in the test split, in (0, 0.5).
    """

    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if not 0.0 < v < 0.5:
                raise ValueError(f"DigitsConfig.{name}={v} must be in (0, 0.5); e.g. {name}=0.2")
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("DigitsConfig: val_fraction + test_fraction must leave at least 20% for training")


@dataclass(frozen=True)
class DigitsSplit:
    """One split. ``x``: (N, 64) float32 in [0, 1] (row-major 8x8 images); ``y``: (N,) int64 class labels."""

    name: str
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @property
    def images(self) -> torch.Tensor:
        """The same samples as images, (N, 1, 8, 8)."""
        return self.x.view(-1, *IMAGE_SHAPE)


@functools.lru_cache(maxsize=8)
def _split_indices(config: DigitsConfig) -> dict[Split, np.ndarray]:
    from sklearn.datasets import load_digits

    y = load_digits().target
    rng = np.random.default_rng(config.seed)
    out: dict[Split, list[int]] = {s: [] for s in Split}
    for c in range(N_CLASSES):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(len(idx) * config.val_fraction))
        n_test = int(round(len(idx) * config.test_fraction))
        out[Split.VAL] += idx[:n_val].tolist()
        out[Split.TEST] += idx[n_val : n_val + n_test].tolist()
        out[Split.TRAIN] += idx[n_val + n_test :].tolist()
    return {s: rng.permutation(np.asarray(v)) for s, v in out.items()}


def load_digits_split(split: str | Split, config: DigitsConfig = DigitsConfig()) -> DigitsSplit:
    """Load one split of digits (``"train"``, ``"val"`` or ``"test"``)."""
    try:
        split = Split(split)
    except ValueError:
        raise ValueError(f"unknown digits split {split!r}; choose one of {[s.value for s in Split]}") from None
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = _split_indices(config)[split]
    x = torch.from_numpy(d.data[idx].astype(np.float32) / 16.0)
    y = torch.from_numpy(d.target[idx].astype(np.int64))
    return DigitsSplit(name=split.value, x=x, y=y)
