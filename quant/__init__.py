"""Quantization: uniform quantizers and post-training quantization (more in issue [Q])."""

from quant.ptq import ActivationFakeQuant, ptq_sequential
from quant.uniform import dequantize, fake_quantize, qmax, quantize, scale_for

__all__ = ["ActivationFakeQuant", "ptq_sequential", "dequantize", "fake_quantize", "qmax", "quantize", "scale_for"]
