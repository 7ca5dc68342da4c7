"""A small ReLU CNN for 8x8 digits, built to convert to a spiking network (``conversion.threshold``).

Layers (``self.net``, an ``nn.Sequential``; B batch, C channels):

    x (B, 64) -> (B, 1, 8, 8) -> [Conv3x3 -> BatchNorm -> ReLU] x 2 -> AvgPool 2x2 -> (B, C2, 4, 4)
      -> Flatten -> Linear -> ReLU -> Linear -> logits (B, n_classes)

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
    side: input images are ``side x side`` (8 for digits), flattened row-major; must be even.
    channels: output channels of the two convolutions.
    hidden: width of the fully connected hidden layer.
    n_classes: number of output logits.
    """

    side: int = 8
    channels: tuple[int, int] = (16, 32)
    hidden: int = 128
    n_classes: int = 10

    def __post_init__(self) -> None:
        if self.side < 2 or self.side % 2:
            raise ValueError(f"CNNConfig.side={self.side} must be an even number >= 2 (the 2x2 pooling halves it)")
        if len(self.channels) != 2 or any(int(c) < 1 for c in self.channels):
            raise ValueError(f"CNNConfig.channels={self.channels} must be two positive widths, e.g. (16, 32)")
        if self.hidden < 1 or self.n_classes < 2:
            raise ValueError(f"CNNConfig: hidden={self.hidden} must be >= 1 and n_classes={self.n_classes} >= 2")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}


class ReLUCNN(nn.Module):
    """``x: (B, side * side) -> logits: (B, n_classes)``; the layers are ``self.net``."""

    def __init__(self, *, config: CNNConfig = CNNConfig()) -> None:
        super().__init__()
        self.config = config
        c1, c2 = config.channels
        s = config.side
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, s, s)),
            nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(),
            nn.AvgPool2d(2), nn.Flatten(),
            nn.Linear(c2 * (s // 2) ** 2, config.hidden), nn.ReLU(),
            nn.Linear(config.hidden, config.n_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.config.side
        if x.dim() != 2 or x.shape[1] != s * s:
            raise ValueError(f"ReLUCNN expects input of shape (B, {s * s}) (flattened {s}x{s} images), got {tuple(x.shape)}")
        return self.net(x)
