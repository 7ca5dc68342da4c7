r"""Vectorized torch simulator of a :class:`~neurohw.lava.network.LoihiNetwork`: the same integer dynamics as
Lava's bit-accurate Loihi models (see :mod:`neurohw.lava.network` for the equations), batched over samples.

Exactness: the synaptic sums ``W s`` are integers; they are computed by a float GEMM / convolution only where
every partial sum is exactly representable (``float32`` when ``max_in * sum |w| < 2^24``, else ``float64`` while
it is ``< 2^53``; larger sums are refused), then converted to ``int64`` for the shifts, decays, wraps and clips,
which follow Lava's numpy code operation by operation, including where Lava's int32 arithmetic wraps
(:func:`_i32`) and its single +-2^24 correction of ``u`` (see :mod:`neurohw.lava.network`). Spike trains
therefore equal Lava's bit for bit, overflowing layers included; the tests and ``benchmarks.lava`` check this
against the Lava sidecar.
"""

from __future__ import annotations

from dataclasses import dataclass

import math

import numpy as np
import torch
import torch.nn.functional as F

from neurohw.lava.network import UV_MAX, LoihiLayer, LoihiNetwork

__all__ = ["SimResult", "simulate"]

_WRAP = 2 ** 23  # Lava's max_uv_val


@dataclass
class SimResult:
    """Outputs of :func:`simulate` for ``B`` samples and ``T`` steps.

    Attributes:
        spike_counts: per layer, ``(B, n_out)`` int64 spikes over the run.
        v_final: ``(B, n_out)`` int64 final membrane of the last layer (the read-out of an integrator layer).
        spikes: per layer ``(T, B, n_out)`` uint8 spike trains, when recorded (``record=True``).
        input_events: ``(B, n_in)`` int64 nonzero graded inputs over the run (events into layer 0).
    """

    spike_counts: list[torch.Tensor]
    v_final: torch.Tensor
    input_events: torch.Tensor
    spikes: list[torch.Tensor] | None = None

    @property
    def output(self) -> torch.Tensor:
        """The class scores: the read-out layer's final ``v``, else the last layer's spike counts."""
        return self.v_final


def _i32(y: torch.Tensor) -> torch.Tensor:
    """int64 values wrapped as numpy's int32 arithmetic wraps them (two's complement, modulo 2^32)."""
    return torch.bitwise_and(y + 2 ** 31, 2 ** 32 - 1) - 2 ** 31


def _decay(y: torch.Tensor, d: int) -> torch.Tensor:
    """``sign(y) * ((|y| * (4096 - d)) >> 12)`` on int64 (Lava's decay)."""
    return torch.sign(y) * torch.bitwise_right_shift(y.abs() * (4096 - d), 12)


class _Synapse:
    """``W s`` of one layer as an exact integer, on batches ``(B, *in_shape)``."""

    def __init__(self, layer: LoihiLayer, max_in: int) -> None:
        self.layer = layer
        w = torch.from_numpy(layer.weight.astype(np.float64))
        bound = max_in * float(w.abs().flatten(1).sum(1).max()) if w.numel() else 0.0
        if bound >= 2 ** 53:
            raise ValueError(f"layer {layer.name!r}: synaptic sums up to {bound:.3g} are not exact in float64")
        self.dtype = torch.float32 if bound < 2 ** 24 else torch.float64
        self.w = w.to(self.dtype)
        # Fast path: when no input can make Lava's int32 / 24-bit steps wrap, they are the identity and are skipped.
        e = layer.weight_exp if layer.kind == "dense" else 0
        a_max = bound * 2.0 ** e if e > 0 else math.ceil(bound / 2.0 ** -e)
        u_max = 64 * a_max * 4096 / (layer.du + 1)  # |u| <= sum of a geometric series of |a << 6|
        self.exact_without_wraps = (bound < 2 ** 23 and u_max <= _WRAP - 1)

    def __call__(self, s: torch.Tensor) -> torch.Tensor:
        L = self.layer
        s = s.to(self.dtype).reshape(s.shape[0], *L.in_shape)
        if L.kind == "dense":
            y = s.reshape(s.shape[0], -1) @ self.w.T
        else:
            g = L.conv
            y = F.conv2d(s, self.w, stride=g.stride, padding=g.padding, dilation=g.dilation, groups=g.groups)
        y = y.reshape(s.shape[0], -1).to(torch.int64)
        e = L.weight_exp
        if self.exact_without_wraps:
            return y if L.kind == "conv" or e == 0 else (y << e if e > 0 else y >> -e)
        if L.kind == "conv":  # Lava's PyConvModelFixed wraps the sum into 24 bits
            return torch.bitwise_and(y + 2 ** 23, 2 ** 24 - 1) - 2 ** 23
        return _i32(torch.bitwise_left_shift(_i32(y), e) if e > 0 else torch.bitwise_right_shift(_i32(y), -e))


@torch.no_grad()
def simulate(net: LoihiNetwork, x: np.ndarray | torch.Tensor, timesteps: int, *, record: bool = False) -> SimResult:
    """Run ``net`` for ``timesteps`` steps on graded integer inputs ``x``: ``(B, *input_shape)`` presented at every
    step, or ``(B, T, *input_shape)`` one frame per step. See the module docstring for exactness."""
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"simulate: timesteps={timesteps!r} must be an int >= 1")
    problems = net.violations()
    if problems:
        raise ValueError("the network has parameters outside Loihi's ranges:\n  " + "\n  ".join(problems))
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    shape = net.input_shape
    per_step = x.dim() == len(shape) + 2
    if tuple(x.shape[2 if per_step else 1:]) != shape or (per_step and x.shape[1] != timesteps):
        raise ValueError(f"simulate: x has shape {tuple(x.shape)}; expected (B, {', '.join(map(str, shape))}) or "
                         f"(B, {timesteps}, {', '.join(map(str, shape))})")
    if x.is_floating_point() or (x.numel() and (int(x.min()) < 0 or int(x.max()) > 2 ** net.input_bits - 1)):
        raise ValueError(f"simulate: x must be integers in [0, {2 ** net.input_bits - 1}] (LoihiNetwork.quantize_input)")
    x = x.to(torch.int64)
    B = x.shape[0]
    x_max = int(x.max()) if x.numel() else 0  # the largest graded input bounds the first layer's sums
    syn = [_Synapse(layer, x_max if i == 0 else 1) for i, layer in enumerate(net.layers)]
    n = [layer.n_out for layer in net.layers]
    u = [torch.zeros(B, k, dtype=torch.int64) for k in n]
    v = [torch.zeros(B, k, dtype=torch.int64) for k in n]
    bias = [torch.from_numpy(layer.bias_mant.reshape(-1).astype(np.int64)) << layer.bias_exp for layer in net.layers]
    vth = [layer.vth << 6 for layer in net.layers]
    prev = [None] * len(n)  # spikes of each layer at the previous step (the next synapse's input, one step late)
    prev_x = None
    counts = [torch.zeros(B, k, dtype=torch.int64) for k in n]
    trains = [torch.zeros(timesteps, B, k, dtype=torch.uint8) for k in n] if record else None
    events = torch.zeros(B, int(np.prod(shape)), dtype=torch.int64)
    for t in range(timesteps):
        xt = x[:, t] if per_step else x
        events += (xt.reshape(B, -1) != 0).to(torch.int64)
        spikes = []
        for i, layer in enumerate(net.layers):
            src = prev_x if i == 0 else prev[i - 1]
            a = syn[i](src) if src is not None else None
            if syn[i].exact_without_wraps:  # the same steps without the (provably idle) int32 wraps and correction
                uu = _decay(u[i], layer.du + 1) if layer.du < 4095 else torch.zeros_like(u[i])
                u[i] = uu = uu + (a << 6) if a is not None else uu
                vv = (_decay(v[i], layer.dv) if layer.dv else v[i]) + uu + bias[i]
                vv = vv.clamp(-UV_MAX, UV_MAX)
            else:
                u[i], vv = _step_with_wraps(u[i], v[i], layer, a, bias[i])
            s = vv > vth[i]  # a read-out layer has the largest vth; it fires only if v saturates above it
            v[i] = torch.where(s, torch.zeros_like(vv), vv)
            counts[i] += s
            if record:
                trains[i][t] = s
            spikes.append(s)
        prev, prev_x = spikes, xt
    return SimResult(spike_counts=counts, v_final=v[-1], input_events=events, spikes=trains)


def _step_with_wraps(u: torch.Tensor, v: torch.Tensor, layer: LoihiLayer, a: torch.Tensor | None,
                     bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of a layer in Lava's int32 arithmetic: the new ``u`` and the new ``v`` before firing."""
    uu = _i32(_decay(u, layer.du + 1))
    if a is not None:
        uu = _i32(uu + _i32(torch.bitwise_left_shift(a, 6)))
    uu = torch.where(uu > _WRAP, uu - 2 * _WRAP, torch.where(uu <= -_WRAP, uu + 2 * _WRAP, uu))  # one correction
    return uu, _i32(_i32(_decay(v, layer.dv)) + uu + bias).clamp(-UV_MAX, UV_MAX)
