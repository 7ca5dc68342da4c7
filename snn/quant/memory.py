r"""Memory of a spiking model, counted for real: weights and neuron state at their bit widths.

For a model with weight tensors ``W_i`` (``n_i`` elements, ``r_i`` rows) at ``b_i`` bits and neuron layers ``j``
with ``m_j`` neurons per sample at membrane width ``b_v,j`` and threshold width ``b_th,j``:

    weights = sum_i [ n_i b_i + r_i 32 ]   (quantized: packed codes + one float32 scale per row; per tensor: 1)
              + sum_i n_i 32               (float tensors: biases, norms, anything not quantized)
              + every persistent buffer at its dtype's width (e.g. BatchNorm statistics, if not folded)
    state   = sum_j [ m_j b_v,j + b_th,j ]  (membrane potentials of one sample, kept across timesteps, and one
                                             threshold register per layer; float state counts 32 bits)

``m_j`` is the size of layer ``j``'s output for one sample without the time axis (found by running the model once
on an example). Weight tensors shared by several modules are counted once. Sizes are reported in bytes (bits / 8).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from snn.quant.neuron import QuantNeuron, is_neuron

__all__ = ["MemoryReport", "spiking_memory", "neuron_sizes", "FLOAT_BITS", "SCALE_BITS"]

FLOAT_BITS = 32
SCALE_BITS = 32


@dataclass(frozen=True)
class MemoryReport:
    """Bits per item (``weights``: parameter name -> bits, ``state``: neuron layer -> bits) and totals in bytes."""

    weights: Mapping[str, float] = field(default_factory=dict)
    state: Mapping[str, float] = field(default_factory=dict)

    @property
    def weight_bytes(self) -> float:
        return sum(self.weights.values()) / 8

    @property
    def state_bytes(self) -> float:
        return sum(self.state.values()) / 8

    @property
    def total_bytes(self) -> float:
        return self.weight_bytes + self.state_bytes

    def to_dict(self) -> dict:
        return {"weight_bytes": self.weight_bytes, "state_bytes": self.state_bytes, "total_bytes": self.total_bytes}


@torch.no_grad()
def neuron_sizes(model: nn.Module, example) -> dict[str, int]:
    """Neurons per sample of every neuron layer (name -> count), from one run of ``model`` on ``example``
    (a tensor or a dict of keyword inputs with batch 1 or more; counts are per sample)."""
    sizes: dict[str, int] = {}
    batch = (example if isinstance(example, torch.Tensor) else next(iter(example.values()))).shape[0]
    hooks = []
    for name, m in model.named_modules():
        if is_neuron(m):
            def hook(mod, inp, out, name=name):
                # out (T, B, ...): the membrane holds one value per element of a timestep
                sizes[name] = sizes.get(name, 0) + out[0].numel() // batch
            hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        model(**example) if isinstance(example, Mapping) else model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return sizes


def spiking_memory(model: nn.Module, example, *, weight_bits: Mapping[str, int] | None = None,
                   per_tensor: bool = False, sizes: Mapping[str, int] | None = None) -> MemoryReport:
    """The memory of the module docstring.

    Args:
        model: a spiking model; neuron layers that are :class:`~snn.quant.neuron.QuantNeuron` count their
            membrane and threshold widths, any other neuron layer float state.
        example: one input batch (see :func:`neuron_sizes`); unused when ``sizes`` is given.
        weight_bits: parameter name -> bits for the quantized weights (absent: float32).
        per_tensor: one scale per tensor instead of one per row.
        sizes: neurons per sample per layer, if already known (:func:`neuron_sizes`).
    """
    weight_bits = dict(weight_bits or {})
    params = dict(model.named_parameters())
    unknown = sorted(set(weight_bits) - set(params))
    if unknown:
        raise KeyError(f"weight_bits names parameters the model does not have: {unknown[:5]}")
    weights: dict[str, float] = {}
    for name, p in params.items():
        b = weight_bits.get(name)
        rows = 1 if per_tensor or p.dim() < 2 else p.shape[0]
        weights[name] = p.numel() * FLOAT_BITS if b is None else p.numel() * b + rows * SCALE_BITS
    for name, t in model.state_dict(keep_vars=True).items():  # persistent buffers (parameters are counted above)
        if name not in params and not any(t is p for p in params.values()):
            weights[name] = t.numel() * t.element_size() * 8
    sizes = dict(neuron_sizes(model, example) if sizes is None else sizes)
    state: dict[str, float] = {}
    modules = dict(model.named_modules())
    for name, n in sizes.items():
        m = modules[name]
        if isinstance(m, QuantNeuron) and m.membrane_bits is not None:
            tb = m.membrane_bits - 1 if m.threshold_bits is None else m.threshold_bits
            state[name] = n * m.membrane_bits + tb
        else:
            state[name] = n * FLOAT_BITS + FLOAT_BITS
    return MemoryReport(weights=weights, state=state)
