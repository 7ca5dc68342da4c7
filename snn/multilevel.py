r"""Multi-level, optionally signed integrate-and-fire neurons: the neurons of ANN -> SNN conversion.

One timestep, for input current ``x[t]``, membrane ``v``, threshold ``theta`` (a scalar or one value per channel)
and at most ``levels`` spikes per step of each sign:

    charge   h[t] = v[t-1] + x[t]
    fire     k[t] = clamp(floor(h[t] / theta), k_min, levels)      k_min = -levels if signed else 0
    reset    soft: v[t] = h[t] - k[t] theta        hard: v[t] = 0 where k[t] != 0, else h[t]
    output   s[t] = k[t] theta

with ``v[-1] = theta / 2`` (``half_init``; rounds instead of floors the rate, Rueckauer et al. 2017) or 0.

``levels = 1, signed = False`` is the classic binary IF neuron with reset by subtraction (SpikingJelly's
``IFNode(v_reset=None)`` with ``v`` started at ``theta / 2``). ``levels > 1`` is a multi-level (graded / burst)
neuron that sends up to ``levels`` spikes in one step, and ``signed`` adds negative spikes (inhibitory output of
the same neuron), for signals that binary spikes cannot carry at low ``T`` (residual streams, attention
products; Wang et al., "Towards High-performance Spiking Transformers from ANN to SNN Conversion", ACM MM 2024,
multi-threshold neurons; You et al., "SpikeZIP-TF", ICML 2024, signed spikes). With constant input ``x`` and
soft reset, the output averaged over ``T`` steps is ``theta / T * clamp(floor(T x / theta + 1/2), T k_min,
T levels)``: ``x`` quantized to steps of ``theta / T`` and clipped to ``[k_min theta, levels theta]``.

The output is the spike *value* ``k theta`` so that the next layer keeps the ANN's weights. A step with
``k != 0`` is one spike event (a graded spike carries ``|k|`` as its payload); :mod:`neurohw.workload` counts
events (``s != 0``).

Symbols: ``x`` input current, ``h`` charged membrane, ``v`` membrane after reset, ``k`` signed spike count,
``theta`` threshold, ``s`` output, ``T`` timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from snn import _kernel
from snn.neurons import check_time_layout

__all__ = ["MultiLevelSpec", "multilevel_if", "MultiLevelIF"]


@dataclass(frozen=True)
class MultiLevelSpec:
    """Parameters of a :class:`MultiLevelIF` neuron (thresholds are per layer, see the module).

    Attributes:
        levels: most spikes of one sign per step (>= 1); 1 is a binary neuron.
        signed: allow negative spikes (``k >= -levels``); else ``k >= 0``.
        soft_reset: reset by subtraction (keeps the residual charge); else to 0.
        half_init: start the membrane at ``theta / 2`` (rounding); else at 0 (flooring).
    """

    levels: int = 1
    signed: bool = False
    soft_reset: bool = True
    half_init: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.levels, int) or isinstance(self.levels, bool) or self.levels < 1:
            raise ValueError(f"MultiLevelSpec.levels={self.levels!r} must be an int >= 1 (1: binary spikes)")


def multilevel_if(x_seq: torch.Tensor, theta: torch.Tensor, spec: MultiLevelSpec, *, use_kernel: bool = True) -> torch.Tensor:
    """Signed spike counts ``k`` (same shape as ``x_seq``: (T, B, ...)) of the neurons above; ``theta`` broadcasts
    against one step ``x_seq[t]`` and must be > 0. Runs the compiled kernel (:mod:`snn._kernel`, one pass over
    memory) on float32 CPU tensors when a C compiler is available, else the torch loop (bit-identical)."""
    if not bool((theta > 0).all()):
        raise ValueError(f"multilevel_if: every threshold must be > 0, got min {float(theta.min())}")
    k_min = -spec.levels if spec.signed else 0
    theta = theta.to(x_seq.dtype)
    inv = 1.0 / theta
    v0 = theta / 2 if spec.half_init else torch.zeros_like(theta)
    if use_kernel and x_seq.dtype == torch.float32 and x_seq.device.type == "cpu" and _kernel.kernel() is not None:
        return _kernel.multilevel_forward(x_seq, theta, inv, v0, k_min, spec.levels, spec.soft_reset)
    x_seq = x_seq.contiguous()
    v = v0.expand_as(x_seq[0]).contiguous().clone()
    out = torch.empty_like(x_seq)
    for t in range(x_seq.shape[0]):
        v.add_(x_seq[t])  # charge: v now holds h[t]
        k = out[t]
        torch.mul(v, inv, out=k)
        k.floor_().clamp_(k_min, spec.levels)
        if spec.soft_reset:
            v.sub_(k * theta)  # two roundings, as in the kernel (no fused multiply-add)
        else:
            v.masked_fill_(k != 0, 0.0)
    return out


class MultiLevelIF(nn.Module):
    """Module shell of :func:`multilevel_if`: ``(T, B, ...) -> (T, B, ...)`` spike values ``k theta``.

    ``theta``: a positive scalar, or one threshold per channel with ``channel_dim`` the channel axis of one
    step's input (e.g. 1 for ``(B, C, H, W)``, -1 for ``(B, N, D)``). Stateless between calls (every call
    starts from ``v[-1]``), so it needs no reset.
    """

    is_spiking_neuron = True  # neurohw.workload counts this module as a neuron layer

    def __init__(self, *, theta: torch.Tensor | float, spec: MultiLevelSpec = MultiLevelSpec(), channel_dim: int = -1) -> None:
        super().__init__()
        theta = torch.as_tensor(theta, dtype=torch.float32).detach().clone()
        if theta.dim() > 1 or not bool(torch.isfinite(theta).all()) or not bool((theta > 0).all()):
            raise ValueError(f"MultiLevelIF: theta must be a finite positive scalar or 1-D tensor, got {theta}")
        self.register_buffer("theta", theta)
        self.spec = spec
        self.channel_dim = channel_dim

    def _theta_for(self, step: torch.Tensor) -> torch.Tensor:
        if self.theta.dim() == 0:
            return self.theta
        dim = self.channel_dim % step.dim()
        if step.shape[dim] != self.theta.numel():
            raise ValueError(f"MultiLevelIF: {self.theta.numel()} per-channel thresholds but input dim {dim} of one step "
                             f"{tuple(step.shape)} has {step.shape[dim]} channels")
        shape = [1] * step.dim()
        shape[dim] = -1
        return self.theta.view(shape)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        check_time_layout(x_seq, type(self).__name__)
        theta = self._theta_for(x_seq[0])
        return multilevel_if(x_seq, theta, self.spec) * theta

    def extra_repr(self) -> str:
        s = self.spec
        return (f"theta={'per-channel' if self.theta.dim() else float(self.theta)}, levels={s.levels}, signed={s.signed}, "
                f"soft_reset={s.soft_reset}, half_init={s.half_init}")
