"""Quantized spiking models (issue [N]): per-layer precision of weights, membrane potentials and thresholds,
memory counted at those widths, QSViT-style sensitivity-guided reduction and QSLM-style tiered search."""

from snn.quant.memory import MemoryReport, neuron_sizes, spiking_memory
from snn.quant.neuron import QuantNeuron, is_neuron, membrane_range, neuron_spec_of

__all__ = ["MemoryReport", "neuron_sizes", "spiking_memory", "QuantNeuron", "is_neuron", "membrane_range",
           "neuron_spec_of"]
