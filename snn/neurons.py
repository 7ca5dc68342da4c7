r"""Spiking neurons: one typed spec, one functional core, and engines that implement it.

Discrete dynamics of one timestep (the convention of SpikingJelly; Fang et al., "SpikingJelly", Science Advances
2023), for input current X[t], membrane potential V[t], threshold V_th, reset potential V_r:

    charge   IF:                      H[t] = V[t-1] + X[t]
             LIF, decay_input=True:   H[t] = V[t-1] + (X[t] - (V[t-1] - V_r)) / tau
             LIF, decay_input=False:  H[t] = V[t-1] - (V[t-1] - V_r) / tau + X[t]
             PLIF: as LIF with a learned 1 / tau = sigmoid(w) (Fang et al., ICCV 2021), w initialized from tau
    fire                              S[t] = Heaviside(H[t] - V_th)          (1 when H >= V_th)
    reset    hard (v_reset=V_r):      V[t] = H[t] (1 - S[t]) + V_r S[t]
             soft (v_reset=None):     V[t] = H[t] - V_th S[t]               (V_r = 0 in the charge equation)

with V[-1] = V_r (0 for soft reset). Training uses the ATan surrogate gradient
dS/dH = (alpha / 2) / (1 + (pi / 2 * alpha * (H - V_th))^2).

:func:`neuron_step` / :func:`neuron_multistep` are the functional core (pure torch, the reference); the engines
build ``nn.Module`` neurons that take ``(T, B, ...)`` sequences and return spike sequences of the same shape:

- ``spikingjelly`` (default): SpikingJelly's ``IFNode`` / ``LIFNode`` / ``ParametricLIFNode`` in multi-step mode;
- ``snntorch``: snnTorch's ``Leaky`` (beta = 1 - 1/tau; the input is scaled by 1/tau when ``decay_input``),
  stepped over T, with the reset above applied in the step that fires;
- ``fused``: this project's own, :class:`FusedNeuron`: the sequence as one autograd node with a hand-written
  backward pass through time (fewer graph nodes per training step).

Both are recognized by :mod:`neurohw.workload` as neuron layers (SpikingJelly ``BaseNode``, snnTorch
``SpikingNeuron``), so spikes and updates are counted the same way whichever engine runs.

Known engine difference: snnTorch fires when H > V_th, SpikingJelly when H >= V_th (only exact equality differs).
"""

from __future__ import annotations

import enum
import functools
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from snn import _kernel

__all__ = ["NeuronKind", "Engine", "NeuronSpec", "charge", "neuron_step", "neuron_multistep", "build_neuron", "ENGINES",
           "check_time_layout", "FusedNeuron"]


class NeuronKind(str, enum.Enum):
    IF = "if"
    LIF = "lif"
    PLIF = "plif"


class Engine(str, enum.Enum):
    SPIKINGJELLY = "spikingjelly"
    SNNTORCH = "snntorch"
    FUSED = "fused"


@dataclass(frozen=True, kw_only=True)
class NeuronSpec:
    """Parameters of one neuron layer (units: potentials are dimensionless, ``tau`` is in timesteps).

    Attributes:
        kind: IF, LIF or PLIF (learned tau, initialized at ``tau``).
        tau: membrane time constant (> 1 timestep; unused by IF).
        v_threshold: firing threshold V_th (> 0).
        v_reset: hard-reset potential V_r (< V_th), or None for a soft reset (subtract V_th).
        decay_input: LIF/PLIF: the input is also divided by tau (SpikingJelly's default).
        surrogate_alpha: sharpness of the ATan surrogate gradient (> 0).
        detach_reset: no gradient through the reset (a common training simplification).
    """

    kind: NeuronKind = NeuronKind.LIF
    tau: float = 2.0
    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    surrogate_alpha: float = 2.0
    detach_reset: bool = False

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", NeuronKind(self.kind))
        except ValueError:
            raise ValueError(f"NeuronSpec.kind={self.kind!r} is invalid: use one of {[k.value for k in NeuronKind]}") from None

        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"NeuronSpec.{field}={getattr(self, field)!r} is invalid: {fix}")

        real = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
        need(real(self.tau) and self.tau > 1, "tau", "use a number > 1 (timesteps)")
        need(real(self.v_threshold) and self.v_threshold > 0, "v_threshold", "use a number > 0")
        need(self.v_reset is None or (real(self.v_reset) and self.v_reset < self.v_threshold), "v_reset",
             "use None (soft reset) or a number below v_threshold")
        need(real(self.surrogate_alpha) and self.surrogate_alpha > 0, "surrogate_alpha", "use a number > 0")

    @property
    def rest(self) -> float:
        """V_r of the charge equation and the initial potential (0 for a soft reset)."""
        return 0.0 if self.v_reset is None else float(self.v_reset)


def check_time_layout(x_seq: torch.Tensor, where: str) -> None:
    """Multi-step layers take ``(T, B, ...)``: at least 2 dimensions and T >= 1."""
    if not isinstance(x_seq, torch.Tensor) or x_seq.dim() < 2 or x_seq.shape[0] < 1:
        shape = tuple(x_seq.shape) if isinstance(x_seq, torch.Tensor) else type(x_seq).__name__
        raise ValueError(f"{where}: expected a multi-step input (T, B, ...) with T >= 1, got {shape}; "
                         "stack timesteps first (x.unsqueeze(0).expand(T, ...) for direct encoding)")


def charge(spec: NeuronSpec, x: torch.Tensor, v: torch.Tensor, k: torch.Tensor | float) -> torch.Tensor:
    """The charge ``H[t]`` of the module docstring from ``X[t]`` and ``V[t-1]``, with ``k = 1/tau`` (unused by IF)."""
    if spec.kind is NeuronKind.IF:
        return v + x
    vr = spec.rest
    if spec.decay_input:
        return v + (x - (v - vr)) * k
    return v - (v - vr) * k + x


def neuron_step(spec: NeuronSpec, x: torch.Tensor, v: torch.Tensor, *, inv_tau: torch.Tensor | float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One timestep of the dynamics in the module docstring: ``(S[t], V[t])`` from ``X[t]`` and ``V[t-1]``.

    ``inv_tau``: 1/tau (PLIF passes its learned ``sigmoid(w)``); default ``1 / spec.tau``. The spike uses a
    plain Heaviside (this is the reference for the engines' forward pass, not a training path).
    """
    vr = spec.rest
    h = charge(spec, x, v, 1.0 / spec.tau if inv_tau is None else inv_tau)
    s = (h >= spec.v_threshold).to(h.dtype)
    v_next = h * (1 - s) + vr * s if spec.v_reset is not None else h - spec.v_threshold * s
    return s, v_next


def neuron_multistep(spec: NeuronSpec, x_seq: torch.Tensor, v0: torch.Tensor | None = None,
                     *, inv_tau: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(spikes (T, B, ...), V[T-1])`` for an input sequence ``x_seq`` (T, B, ...) from ``V[-1] = v0``."""
    check_time_layout(x_seq, "neuron_multistep")
    v = torch.full_like(x_seq[0], spec.rest) if v0 is None else v0
    out = []
    for x in x_seq:
        s, v = neuron_step(spec, x, v, inv_tau=inv_tau)
        out.append(s)
    return torch.stack(out), v


# --------------------------------------------------------------------------------------------- engines
def _spikingjelly(spec: NeuronSpec) -> nn.Module:
    from spikingjelly.activation_based import neuron, surrogate

    common = dict(v_threshold=spec.v_threshold, v_reset=spec.v_reset, detach_reset=spec.detach_reset,
                  surrogate_function=surrogate.ATan(alpha=spec.surrogate_alpha), step_mode="m")
    if spec.kind is NeuronKind.IF:
        return neuron.IFNode(**common)
    if spec.kind is NeuronKind.LIF:
        return neuron.LIFNode(tau=spec.tau, decay_input=spec.decay_input, **common)
    return neuron.ParametricLIFNode(init_tau=spec.tau, decay_input=spec.decay_input, **common)


@functools.cache
def _snntorch_class() -> type:
    import snntorch
    from snntorch import surrogate

    class SnnTorchMultiStep(snntorch.Leaky):
        """snnTorch ``Leaky`` stepped over the leading time dimension: ``(T, B, ...) -> (T, B, ...)`` spikes.

        snnTorch computes the leaky integration (beta = 1 - 1/tau, learned for PLIF) and the surrogate spike; the
        input is scaled by 1 - beta when ``decay_input``, and the reset of the equations in :mod:`snn.neurons`
        (hard to 0 or soft, detached if ``detach_reset``) is applied in the step that fires (snnTorch's own reset,
        which is delayed to the next step, is off). The membrane starts at 0 on every call.
        """

        def __init__(self, spec: NeuronSpec) -> None:
            if spec.v_reset not in (None, 0.0):
                raise ValueError(f"engine 'snntorch' resets to 0 only; NeuronSpec.v_reset={spec.v_reset} needs "
                                 "engine 'spikingjelly'")
            beta = 1.0 if spec.kind is NeuronKind.IF else 1.0 - 1.0 / spec.tau
            super().__init__(beta=beta, threshold=spec.v_threshold, spike_grad=surrogate.atan(alpha=spec.surrogate_alpha),
                             learn_beta=spec.kind is NeuronKind.PLIF, reset_mechanism="none")
            self.spec = spec

        def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # (T, B, ...) -> (T, B, ...)
            check_time_layout(x_seq, type(self).__name__)
            spec = self.spec
            scale = (1.0 - self.beta.clamp(0, 1)) if spec.kind is not NeuronKind.IF and spec.decay_input else 1.0
            mem = torch.zeros_like(x_seq[0])
            out = []
            for x in x_seq:
                spk, mem = super().forward(x * scale, mem)  # H[t] = beta V[t-1] + scale X[t]; S[t] = spike(H - V_th)
                r = spk.detach() if spec.detach_reset else spk
                mem = mem - spec.v_threshold * r if spec.v_reset is None else mem * (1 - r)
                out.append(spk)
            return torch.stack(out)

    return SnnTorchMultiStep


def _snntorch(spec: NeuronSpec) -> nn.Module:
    return _snntorch_class()(spec)


def _kernel_ok(x: torch.Tensor) -> bool:
    """The compiled kernel (:mod:`snn._kernel`) takes float32 CPU tensors; anything else runs the torch path."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() > 0 and _kernel.kernel() is not None


def _kernel_coefficients(k: torch.Tensor, spec: NeuronSpec) -> tuple[float, float, float]:
    """(a, b, c) of H[t] = (X[t] b + c) + V[t-1] a, each rounded in float32 exactly as the torch path rounds it."""
    if spec.kind is NeuronKind.IF:
        return 1.0, 1.0, 0.0
    k = k.detach().float()
    return float(1 - k), (float(k) if spec.decay_input else 1.0), float(k * spec.rest)


class _FusedBPTT(torch.autograd.Function):
    """The whole sequence of the equations in the module docstring as one autograd node (hand-written BPTT).

    With a = 1 - k, b = k (decay_input) or 1, c = k V_r for LIF (a = b = 1, c = 0 for IF): H[t] = a V[t-1] + b X[t] + c.
    Backward, from dS[t] (the loss's gradient) and dV[t] (from later steps), with g[t] = surrogate'(H[t] - V_th):

        dH[t]   = dS[t] g[t] + dV[t] dV[t]/dH[t]
                  hard: dV/dH = (1 - S[t]) + (V_r - H[t]) g[t]   soft: dV/dH = 1 - V_th g[t]   (no g term if detached)
        dX[t]   = b dH[t],   dV[t-1] = a dH[t]
        dk      = sum_t dH[t] (X[t] - (V[t-1] - V_r))  (decay_input)  or  -sum_t dH[t] (V[t-1] - V_r)
    """

    @staticmethod
    def forward(ctx, x_seq: torch.Tensor, k: torch.Tensor, spec: NeuronSpec) -> torch.Tensor:
        vr, th = spec.rest, spec.v_threshold
        lif = spec.kind is not NeuronKind.IF
        ctx.spec, ctx.kernel = spec, _kernel_ok(x_seq)
        if ctx.kernel:  # the same arithmetic in one compiled pass (snn._kernel); bit-identical spikes
            a, b, c = _kernel_coefficients(k, spec)
            ctx.save_for_backward(x_seq, k)  # the backward pass recomputes the charges from the input
            return _kernel.fused_forward(x_seq, a, b, c, th, vr, spec.v_reset is not None)
        a = 1 - k if lif else 1.0
        # the input part of the charge for all timesteps at once: H[t] = a V[t-1] + drive[t]
        drive = (x_seq * k + k * vr if spec.decay_input else x_seq + k * vr) if lif else x_seq
        hs = torch.empty_like(x_seq)
        vs = torch.empty_like(x_seq)  # V[t-1], the membrane before step t
        v = torch.full_like(x_seq[0], vr)
        for t in range(x_seq.shape[0]):
            vs[t] = v
            h = drive[t] + v * a if lif else drive[t] + v
            hs[t] = h
            fired = h >= th
            v = h.masked_fill(fired, vr) if spec.v_reset is not None else h - th * fired.to(h.dtype)
        spikes = (hs >= th).to(x_seq.dtype)
        ctx.save_for_backward(x_seq, k, hs, vs, spikes)
        return spikes

    @staticmethod
    def backward(ctx, grad_s: torch.Tensor):
        spec = ctx.spec
        vr, th, alpha = spec.rest, spec.v_threshold, spec.surrogate_alpha
        lif = spec.kind is not NeuronKind.IF
        if ctx.kernel:
            x, k = ctx.saved_tensors
            a, b, c = _kernel_coefficients(k, spec)
            need_k = lif and k.requires_grad
            grad_x, grad_k = _kernel.fused_backward(grad_s, x, a, b, c, th, vr, alpha, spec.v_reset is not None,
                                                    spec.detach_reset, need_k, spec.decay_input)
            return grad_x, (torch.tensor(grad_k, dtype=k.dtype) if need_k else None), None
        x_seq, k, hs, vs, spikes = ctx.saved_tensors
        a = 1 - k if lif else 1.0
        b = k if lif and spec.decay_input else 1.0
        g = (alpha / 2) / (1 + (math.pi / 2 * alpha * (hs - th)) ** 2)  # ATan surrogate, all timesteps at once
        if spec.v_reset is not None:
            dvdh = (1 - spikes) if spec.detach_reset else (1 - spikes) + (vr - hs) * g
        else:
            dvdh = torch.ones_like(hs) if spec.detach_reset else 1 - th * g
        dh = grad_s * g  # the direct part; the recurrence below adds dV[t] dV[t]/dH[t]
        dv = torch.zeros_like(x_seq[0])
        for t in range(x_seq.shape[0] - 1, -1, -1):
            dh[t] += dv * dvdh[t]
            dv = dh[t] * a
        grad_x = dh * b
        grad_k = None
        if lif and k.requires_grad:
            drive = (x_seq - (vs - vr)) if spec.decay_input else -(vs - vr)
            grad_k = (dh * drive).sum()
        return grad_x, grad_k, None


class FusedNeuron(nn.Module):
    """This project's own engine: the equations run as one autograd node per layer (:class:`_FusedBPTT`), so a
    training step builds T times fewer graph nodes than a step-by-step engine. PLIF learns
    ``w`` with 1/tau = sigmoid(w). Carries the ``is_spiking_neuron`` marker that :mod:`neurohw.workload` looks for.
    """

    is_spiking_neuron = True

    def __init__(self, spec: NeuronSpec) -> None:
        super().__init__()
        self.spec = spec
        if spec.kind is NeuronKind.PLIF:
            self.w = nn.Parameter(torch.tensor(-math.log(spec.tau - 1.0)))  # sigmoid(w) = 1 / tau
        else:
            self.register_buffer("k", torch.tensor(1.0 / spec.tau), persistent=False)

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # (T, B, ...) -> (T, B, ...)
        check_time_layout(x_seq, type(self).__name__)
        k = torch.sigmoid(self.w) if self.spec.kind is NeuronKind.PLIF else self.k.to(x_seq.dtype)
        return _FusedBPTT.apply(x_seq, k, self.spec)


# engine -> builder; one registration per engine
ENGINES: dict[Engine, Callable[[NeuronSpec], nn.Module]] = {Engine.SPIKINGJELLY: _spikingjelly, Engine.SNNTORCH: _snntorch,
                                                             Engine.FUSED: FusedNeuron}


def build_neuron(spec: NeuronSpec | None = None, *, engine: Engine | str = Engine.SPIKINGJELLY) -> nn.Module:
    """A multi-step neuron layer for ``spec`` on ``engine`` (``(T, B, ...) -> (T, B, ...)`` spikes).

    SpikingJelly nodes keep their state between calls: reset them with
    ``spikingjelly.activation_based.functional.reset_net`` (the snnTorch engine restarts from V_r every call).
    """
    spec = spec or NeuronSpec()
    try:
        builder = ENGINES[Engine(engine)]
    except ValueError:
        raise ValueError(f"unknown neuron engine {engine!r}; known: {[e.value for e in Engine]}") from None
    return builder(spec)
