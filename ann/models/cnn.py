"""A ReLU CNN (VGG-style stages) for small images, built to convert to a spiking network (``conversion.threshold``).

Layers (``self.net``, an ``nn.Sequential``; B batch, C_s the last width of stage s, S image side, n stages):

    x (B, S S) -> (B, 1, S, S) -> per stage s: [Conv3x3 -> BatchNorm -> ReLU] x len(stages[s]) -> AvgPool 2x2
      -> (B, C_n, S / 2^n, S / 2^n) -> Flatten -> Linear -> ReLU -> Linear -> logits (B, n_classes)

Average (not max) pooling, because the average of spike trains is the spike train of the average.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["CNNConfig", "ReLUCNN"]


@dataclass(frozen=True)
class CNNConfig:
    """Attributes:
    side: input images are ``side x side`` (8 for digits), flattened row-major; divisible by 2^len(stages).
    stages: conv widths per stage; each stage ends with a 2x2 average pooling. ``((16, 32),)`` is two convolutions
        and one pooling; ``((32, 32, 32), (64, 64, 64))`` a deeper, VGG-like network.
    hidden: width of the fully connected hidden layer.
    n_classes: number of output logits.
    """

    side: int = 8
    stages: tuple[tuple[int, ...], ...] = ((16, 32),)
    hidden: int = 128
    n_classes: int = 10

    def __post_init__(self) -> None:
        stages = tuple(tuple(int(c) for c in st) for st in self.stages)
        if not stages or any(not st or min(st) < 1 for st in stages):
            raise ValueError(f"CNNConfig.stages={self.stages} must be non-empty stages of positive widths, e.g. ((16, 32),)")
        if self.side < 2 or self.side % 2 ** len(stages):
            raise ValueError(f"CNNConfig.side={self.side} must be divisible by 2^{len(stages)} (one 2x2 pooling per stage)")
        if self.hidden < 1 or self.n_classes < 2:
            raise ValueError(f"CNNConfig: hidden={self.hidden} must be >= 1 and n_classes={self.n_classes} >= 2")
        object.__setattr__(self, "stages", stages)

    def to_dict(self) -> dict:
        return {**asdict(self), "stages": [list(st) for st in self.stages]}


class ReLUCNN(nn.Module):
    """``x: (B, side * side) -> logits: (B, n_classes)``; the layers are ``self.net``."""

    def __init__(self, *, config: CNNConfig = CNNConfig()) -> None:
        super().__init__()
        self.config = config
        s = config.side
        layers: list[nn.Module] = [nn.Unflatten(1, (1, s, s))]
        c_in = 1
        for stage in config.stages:
            for c_out in stage:
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
                c_in = c_out
            layers.append(nn.AvgPool2d(2))
        side = s // 2 ** len(config.stages)
        layers += [nn.Flatten(), nn.Linear(c_in * side * side, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.n_classes)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.side
        if x.dim() != 2 or x.shape[1] != s * s:
            raise ValueError(f"ReLUCNN expects input of shape (B, {s * s}) (flattened {s}x{s} images), got {tuple(x.shape)}")
        return self.net(x)
