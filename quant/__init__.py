"""Quantization: uniform quantizers and post-training quantization (more in issue [Q])."""

from quant.model_io import load_quantized, model_memory, quantize_model, save_quantized, tied_weight_groups
from quant.packing import pack_codes, packed_nbytes, unpack_codes
from quant.ptq import ActivationFakeQuant, ptq_sequential
from quant.qmodules import PackedWeight, QuantEmbedding, QuantLinear, int8_dynamic
from quant.quantizer import Granularity, QuantizedTensor, QuantSpec, fake_quant, quantize_tensor
from quant.uniform import dequantize, fake_quantize, qmax, quantize, scale_for

__all__ = ["ActivationFakeQuant", "ptq_sequential", "dequantize", "fake_quantize", "qmax", "quantize", "scale_for",
           "Granularity", "QuantSpec", "QuantizedTensor", "quantize_tensor", "fake_quant",
           "pack_codes", "unpack_codes", "packed_nbytes",
           "PackedWeight", "QuantLinear", "QuantEmbedding", "int8_dynamic",
           "quantize_model", "save_quantized", "load_quantized", "model_memory", "tied_weight_groups"]
