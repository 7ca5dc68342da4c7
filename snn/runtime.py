"""Running multi-step spiking networks: direct (analog) input encoding over T timesteps and rate read-out.

Dimension letters: T timesteps, B batch, F features, C classes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["DirectEncodingSNN", "TimeFolded", "running_mean"]


def running_mean(out: torch.Tensor) -> torch.Tensor:
    """``(T, ...) -> (T, ...)``: row ``t - 1`` is the mean of the first ``t`` rows (the read-out after ``t`` steps)."""
    t = torch.arange(1, out.shape[0] + 1, dtype=out.dtype).view(-1, *([1] * (out.dim() - 1)))
    return out.cumsum(0) / t


class DirectEncodingSNN(nn.Module):
    """Wrap a multi-step spiking network (SpikingJelly ``step_mode='m'``: inputs ``(T, B, ...)``).

    Direct encoding: the static input ``x`` is presented as the same input current at every timestep,
    ``x_seq[t] = x`` for ``t = 0..T-1``. Read-out: the mean over time of the last layer's output,

        logits = (1/T) * sum_t net(x_seq)[t]

    which, for a converted ANN whose last layer has no neuron, estimates the ANN logits.
    Neuron states are reset before and after every forward pass, so calls are independent.
    """

    def __init__(self, *, net: nn.Module, timesteps: int) -> None:
        super().__init__()
        if not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"DirectEncodingSNN: timesteps={timesteps!r} must be an int >= 1")
        self.net = net
        self.timesteps = timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).mean(dim=0)  # (T, B, C) -> (B, C)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """The output at every step, ``(T, B, C)``."""
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        x_seq = x.unsqueeze(0).expand(self.timesteps, *x.shape)  # (B, ...) -> (T, B, ...)
        out = self.net(x_seq)  # (T, B, C)
        functional.reset_net(self.net)
        return out

    def prefix_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Read-out after every ``t = 1..T``, ``(T, B, C)``: row ``t - 1`` is what the network run for ``t`` steps
        returns (every layer is causal in time), so one run gives the accuracy-vs-T curve."""
        return running_mean(self.run(x))


class TimeFolded(nn.Module):
    """Apply a per-sample layer (e.g. ``nn.Conv2d``) to a multi-step tensor (T, B, ...) by folding T into the batch."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x.flatten(0, 1))  # (T, B, ...) -> (T B, ...)
        return y.view(*x.shape[:2], *y.shape[1:])  # (T B, ...) -> (T, B, ...)
