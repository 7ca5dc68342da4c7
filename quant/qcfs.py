r"""QCFS: the quantization-clip-floor-shift activation that makes an ANN convert to an SNN at low timesteps.

Bu et al., "Optimal ANN-SNN Conversion for High-accuracy and Ultra-low-latency Spiking Neural Networks", ICLR 2022.
A ReLU is replaced during training by

    y = lambda * clamp(floor(x L / lambda + phi) / L, 0, 1),        phi = 1/2

with ``L`` quantization levels and a trained clipping scale ``lambda`` (gradient through ``floor`` by the
straight-through estimator). An integrate-and-fire neuron with threshold ``theta = lambda``, reset by subtraction
and membrane started at ``theta / 2`` fires ``clamp(floor(T x / lambda + 1/2), 0, T)`` times in ``T`` steps of a
constant input ``x``, so its mean output over ``T = L`` steps equals ``y`` exactly, and the expected conversion
error is zero for every ``T`` (the shift ``phi = 1/2`` is what makes it zero in expectation).

Symbols: ``x`` pre-activation, ``y`` output, ``L`` levels, ``lambda`` clipping scale (the neuron's threshold),
``phi`` shift, ``T`` SNN timesteps.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["QCFS", "replace_relu_with_qcfs"]


class QCFS(nn.Module):
    """``y = lambda * clamp(floor(x L / lambda + 1/2) / L, 0, 1)`` with a trained ``lambda`` (a scalar per layer)."""

    def __init__(self, *, levels: int = 8, init_scale: float = 4.0) -> None:
        super().__init__()
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise ValueError(f"QCFS: levels={levels!r} must be an int >= 1 (e.g. 8)")
        if not init_scale > 0:
            raise ValueError(f"QCFS: init_scale={init_scale} must be > 0 (the initial clipping value lambda)")
        self.levels = levels
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.scale.abs() + 1e-6  # lambda > 0 whatever the optimizer does to the raw parameter
        u = x * (self.levels / lam) + 0.5
        u = u + (torch.floor(u) - u).detach()  # floor with a straight-through gradient
        return lam * torch.clamp(u / self.levels, 0.0, 1.0)

    @property
    def threshold(self) -> float:
        """The converted neuron's threshold, ``lambda``."""
        return float(self.scale.detach().abs()) + 1e-6

    def extra_repr(self) -> str:
        return f"levels={self.levels}, lambda={self.threshold:.4g}"


@torch.no_grad()
def replace_relu_with_qcfs(model: nn.Module, *, levels: int, x_calib: torch.Tensor | dict | None = None,
                           percentile: float = 99.9) -> list[str]:
    """Replace every ``nn.ReLU`` module of ``model`` in place by a :class:`QCFS` with ``levels`` levels.

    With ``x_calib`` (a batch, or a dict of keyword inputs), each ``lambda`` starts at the ``percentile``-th
    percentile of that ReLU's output on it (so fine-tuning a trained ReLU model starts close to it); otherwise
    at 4. Returns the names of the replaced modules.
    """
    relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise ValueError(f"replace_relu_with_qcfs: {type(model).__name__} has no nn.ReLU modules to replace "
                         "(activations called functionally, e.g. F.relu, cannot be replaced)")
    scales = {n: 4.0 for n, _ in relus}
    if x_calib is not None:
        seen: dict[str, torch.Tensor] = {}
        hooks = [m.register_forward_hook(lambda _m, _i, out, n=n: seen.__setitem__(n, out.detach().flatten()))
                 for n, m in relus]
        was_training = model.training
        try:
            model.eval()
            model(**x_calib) if isinstance(x_calib, dict) else model(x_calib)
        finally:
            for h in hooks:
                h.remove()
            model.train(was_training)
        for n, a in seen.items():
            a = a[:1_000_000] if a.numel() > 1_000_000 else a
            q = float(torch.quantile(a.double(), percentile / 100.0))
            scales[n] = q if q > 0 else 1.0
    for name, _ in relus:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, QCFS(levels=levels, init_scale=scales[name]))
    return [n for n, _ in relus]
