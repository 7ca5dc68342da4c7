r"""Spiking neurons with fixed-point state: the membrane potential, the threshold and the decay at chosen widths.

One neuron layer of :mod:`snn.neurons` (charge, fire, reset; spec ``NeuronSpec``), run with its state on a grid.
For a layer with membrane width ``b_v`` bits, threshold width ``b_th`` bits and decay width ``b_k`` bits:

    membrane grid     s_v = R / (2^(b_v - 1) - 1)          R: the calibrated range (see :func:`membrane_range`)
    state             V, H in {-2^(b_v-1) s_v, ..., (2^(b_v-1) - 1) s_v}  (signed b_v-bit codes, saturating)
    threshold         theta_hat = c s_v,  c = step * clamp(round(theta / (s_v step)), 1, 2^b_th - 1),
                      step = 2^max(0, b_v - 1 - b_th)   (an unsigned b_th-bit register that holds the top bits of
                                                         the positive membrane range, as Loihi's 17-bit ``vth``
                                                         shifted by 6 in its 24-bit membrane)
    decay             k_hat = round(k 2^b_k) / 2^b_k,      k = 1 / tau   (Loihi: 12-bit ``dv``)

Per timestep (the equations of :mod:`snn.neurons`, with the charge ``H`` rounded to the grid where the register
stores it):

    H[t] = Q(charge(X[t], V[t-1]; k_hat)),   S[t] = [H[t] >= theta_hat],   V[t] = reset(H[t], S[t])

with ``Q(h) = s_v clamp(round(h / s_v), -2^(b_v-1), 2^(b_v-1) - 1)``. The reset potential V_r is put on the grid
too. ``b_v = None`` leaves the state in float (the reference dynamics, bit for bit the engines' spikes), and the
layer then records the range of ``H`` for calibration.

Membrane range: :func:`membrane_range` takes the recorded charges. For a hard reset everything at or above the
threshold fires and resets, so the positive side only needs to reach the threshold and ``R = max(theta,
q(-min(H, 0)))``; a soft reset keeps ``H - theta`` and needs ``R = max(theta, q(|H|))``; ``q`` is the 99.99th
percentile (a few outliers saturate instead of coarsening the grid for everyone).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from snn.neurons import NeuronKind, NeuronSpec, charge, check_time_layout
from snn.nir import neuron_spec_of as nir_spec_of

__all__ = ["is_neuron", "neuron_spec_of", "QuantNeuron", "membrane_range", "RANGE_QUANTILE"]

RANGE_QUANTILE = 0.9999
_MAX_SAMPLES = 1 << 20  # charges kept per layer for the range quantile (a uniform subsample beyond)


def is_neuron(module: nn.Module) -> bool:
    """True for the neuron layers of every engine of :mod:`snn.neurons` and for :class:`QuantNeuron`."""
    return isinstance(module, QuantNeuron) or nir_spec_of(module) is not None


def neuron_spec_of(module: nn.Module) -> tuple[NeuronSpec, float]:
    """``(spec, 1/tau)`` of a neuron layer of any engine (:func:`snn.nir.neuron_spec_of`; PLIF: its learned tau,
    frozen; IF: ``1/tau = 0``, unused)."""
    if isinstance(module, QuantNeuron):
        return module.spec, module.inv_tau
    spec = nir_spec_of(module)
    if spec is None:
        raise TypeError(f"{type(module).__name__} is not a neuron layer of snn.neurons (IF, LIF or PLIF on any engine)")
    return spec, 0.0 if spec.kind is NeuronKind.IF else 1.0 / spec.tau


def membrane_range(spec: NeuronSpec, charges: torch.Tensor) -> float:
    """The range ``R`` of the membrane grid from recorded charges ``H`` (module docstring)."""
    theta = float(spec.v_threshold)
    if charges.numel() == 0:
        return theta
    mags = (-charges.clamp(max=0)) if spec.v_reset is not None else charges.abs()
    return max(theta, float(torch.quantile(mags.float(), RANGE_QUANTILE)))


class QuantNeuron(nn.Module):
    """A neuron layer with fixed-point state (module docstring): ``(T, B, ...) -> (T, B, ...)`` spikes.

    Args:
        spec: the layer's dynamics (from the float layer, :func:`neuron_spec_of`).
        inv_tau: ``1/tau`` (PLIF: the learned value; IF: unused).
        membrane_bits: ``b_v`` (2..32), or None for float state.
        threshold_bits: ``b_th`` (1..32), or None for the threshold on the membrane grid (``b_v - 1``).
        decay_bits: ``b_k`` (1..24), or None for a float decay.
        v_range: ``R`` of the membrane grid (needed with ``membrane_bits``).
        record: keep a subsample of the charges ``H`` (for :func:`membrane_range`).

    Inference only (the spikes are a plain Heaviside; no surrogate gradient).
    """

    is_spiking_neuron = True  # neurohw.workload counts it as a neuron layer

    def __init__(self, spec: NeuronSpec, *, inv_tau: float, membrane_bits: int | None = None,
                 threshold_bits: int | None = None, decay_bits: int | None = None, v_range: float | None = None,
                 record: bool = False) -> None:
        super().__init__()
        if membrane_bits is not None and not (isinstance(membrane_bits, int) and 2 <= membrane_bits <= 32):
            raise ValueError(f"membrane_bits={membrane_bits!r}: use an int in 2..32, or None for float state")
        if threshold_bits is not None and not (isinstance(threshold_bits, int) and 1 <= threshold_bits <= 32):
            raise ValueError(f"threshold_bits={threshold_bits!r}: use an int in 1..32, or None (on the membrane grid)")
        if decay_bits is not None and not (isinstance(decay_bits, int) and 1 <= decay_bits <= 24):
            raise ValueError(f"decay_bits={decay_bits!r}: use an int in 1..24, or None for a float decay")
        if membrane_bits is not None and not (v_range is not None and math.isfinite(v_range) and v_range > 0):
            raise ValueError(f"v_range={v_range!r}: a fixed-point membrane needs a calibrated range > 0 "
                             "(snn.quant.SpikingQuantizer calibrates it)")
        self.spec, self.inv_tau = spec, float(inv_tau)
        self.membrane_bits, self.threshold_bits, self.decay_bits = membrane_bits, threshold_bits, decay_bits
        self.v_range, self.record = v_range, record
        self.charges: list[torch.Tensor] = []
        self.k = (round(self.inv_tau * 2 ** decay_bits) / 2 ** decay_bits) if decay_bits is not None else self.inv_tau
        if membrane_bits is None:
            self.scale, self.threshold, self.rest = None, float(spec.v_threshold), spec.rest
        else:
            qmax = 2 ** (membrane_bits - 1) - 1
            self.scale = v_range / qmax
            tb = membrane_bits - 1 if threshold_bits is None else threshold_bits
            step = 2 ** max(0, membrane_bits - 1 - tb)
            code = step * min(max(round(spec.v_threshold / (self.scale * step)), 1), 2 ** tb - 1)
            self.threshold = min(code, qmax) * self.scale
            self.rest = round(spec.rest / self.scale) * self.scale
        self.qmin, self.qmax = (-(2 ** (membrane_bits - 1)), 2 ** (membrane_bits - 1) - 1) if membrane_bits else (0, 0)

    def extra_repr(self) -> str:
        return (f"kind={self.spec.kind.value}, membrane_bits={self.membrane_bits}, threshold_bits={self.threshold_bits}, "
                f"decay_bits={self.decay_bits}, threshold={self.threshold:.6g}")

    def _q(self, h: torch.Tensor) -> torch.Tensor:
        return (h / self.scale).round_().clamp_(self.qmin, self.qmax).mul_(self.scale)

    @torch.no_grad()
    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:  # (T, B, ...) -> (T, B, ...)
        check_time_layout(x_seq, type(self).__name__)
        spec, k, vr, th = self.spec, self.k, self.rest, self.threshold
        v = torch.full_like(x_seq[0], vr)
        out = torch.empty_like(x_seq)
        for t in range(x_seq.shape[0]):
            h = charge(spec, x_seq[t], v, k)
            if self.record:
                self._keep(h)
            if self.scale is not None:
                h = self._q(h)
            s = h >= th
            out[t] = s
            v = h.masked_fill(s, vr) if spec.v_reset is not None else h - th * s.to(h.dtype)
        return out

    def _keep(self, h: torch.Tensor) -> None:
        flat = h.detach().flatten()
        if flat.numel() > _MAX_SAMPLES // 16:
            flat = flat[torch.randint(0, flat.numel(), (_MAX_SAMPLES // 16,), generator=torch.Generator().manual_seed(len(self.charges)))]
        self.charges.append(flat)
        if sum(c.numel() for c in self.charges) > _MAX_SAMPLES:
            allc = torch.cat(self.charges)
            self.charges = [allc[torch.randperm(allc.numel(), generator=torch.Generator().manual_seed(0))[:_MAX_SAMPLES // 2]]]
