"""A small ReLU multilayer perceptron: the reference ANN of the digits vertical slice.

Layers: ``Linear(in, h_1) -> ReLU -> ... -> Linear(h_L, n_classes)``; no normalisation or dropout, so that
threshold-balanced conversion to integrate-and-fire neurons applies exactly (``conversion.threshold``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["MLPConfig", "ReLUMLP"]


@dataclass(frozen=True)
class MLPConfig:
    """Shape of a :class:`ReLUMLP`.

    Attributes:
        in_features: input width (64 for 8x8 digits).
        hidden: widths of the hidden ReLU layers, at least one.
        n_classes: number of output logits.
    """

    in_features: int = 64
    hidden: tuple[int, ...] = (256, 256)
    n_classes: int = 10

    def __post_init__(self) -> None:
        if self.in_features < 1:
            raise ValueError(f"MLPConfig.in_features={self.in_features} must be >= 1")
        if len(self.hidden) < 1 or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"MLPConfig.hidden={self.hidden} must be a non-empty tuple of positive widths, e.g. (256, 256)")
        if self.n_classes < 2:
            raise ValueError(f"MLPConfig.n_classes={self.n_classes} must be >= 2")
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))

    def to_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, d: dict) -> "MLPConfig":
        unknown = set(d) - {"in_features", "hidden", "n_classes"}
        if unknown:
            raise ValueError(f"MLPConfig: unknown keys {sorted(unknown)}")
        return cls(**{**d, "hidden": tuple(d.get("hidden", cls.hidden))})


class ReLUMLP(nn.Module):
    """``x: (B, in_features) -> logits: (B, n_classes)``; the layers are ``self.net`` (an ``nn.Sequential``)."""

    def __init__(self, *, config: MLPConfig) -> None:
        super().__init__()
        self.config = config
        widths = (config.in_features, *config.hidden)
        layers: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(w_in, w_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], config.n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.config.in_features:
            raise ValueError(
                f"ReLUMLP expects input of shape (B, {self.config.in_features}), got {tuple(x.shape)}"
            )
        return self.net(x)
