"""Post-training quantization of ``nn.Sequential`` Linear/ReLU networks to W``b``A``b`` (fake-quant).

Weights: symmetric, per output channel (``axis=0`` of ``Linear.weight``); biases stay in higher precision
(they are added to the int32 accumulator in integer kernels). Activations: per-tensor, with the scale
calibrated once as ``max`` over calibration data; the network input and every ReLU output are unsigned.
The maths is in :mod:`quant.uniform`.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quant.uniform import fake_quantize, scale_for

__all__ = ["ActivationFakeQuant", "ptq_sequential"]


class ActivationFakeQuant(nn.Module):
    """Per-tensor activation fake-quant with a fixed (calibrated) scale."""

    def __init__(self, *, bits: int, signed: bool, scale: torch.Tensor) -> None:
        super().__init__()
        self.bits, self.signed = bits, signed
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, bits=self.bits, signed=self.signed, scale=self.scale)


@torch.no_grad()
def ptq_sequential(seq: nn.Sequential, x_calib: torch.Tensor, *, weight_bits: int = 8, act_bits: int = 8) -> nn.Sequential:
    """A quantized copy of ``seq`` (made of Linear and ReLU layers; the original is not changed)."""
    bad = [f"{n} ({type(m).__name__})" for n, m in seq.named_children() if not isinstance(m, (nn.Linear, nn.ReLU))]
    if bad:
        raise ValueError(f"ptq_sequential supports Linear and ReLU layers only; unsupported: {', '.join(bad)}")
    signed_in = bool((x_calib < 0).any())
    layers: list[nn.Module] = [ActivationFakeQuant(bits=act_bits, signed=signed_in, scale=scale_for(x_calib, bits=act_bits, signed=signed_in))]
    h = x_calib
    for m in seq:
        h = m(h)
        if isinstance(m, nn.Linear):
            q = copy.deepcopy(m)
            q.weight.copy_(fake_quantize(m.weight, bits=weight_bits, axis=0))
            layers.append(q)
        else:
            layers += [copy.deepcopy(m), ActivationFakeQuant(bits=act_bits, signed=False, scale=scale_for(h, bits=act_bits, signed=False))]
    return nn.Sequential(*layers).eval()
