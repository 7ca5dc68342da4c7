"""Quantized spiking models (issue [N]): per-layer precision of weights, membrane potentials and thresholds
(:mod:`snn.quant.neuron`, :mod:`snn.quant.model`), memory counted at those widths (:mod:`snn.quant.memory`),
QSViT-style sensitivity-guided reduction and QSLM-style tiered search (:mod:`snn.quant.search`), and Loihi's
fixed point for the feed-forward chains the Lava target runs: its formats and a bit-accurate integer simulator
(:mod:`snn.quant.loihi`) and the quantizer from a float chain (:mod:`snn.quant.loihi_chain`)."""

from snn.quant.memory import MemoryReport, neuron_sizes, spiking_memory
from snn.quant.model import LOIHI_WIDTHS, Item, SpikingPrecision, SpikingQuantizer, fold_batchnorm
from snn.quant.neuron import QuantNeuron, is_neuron, membrane_range, neuron_spec_of
from snn.quant.search import (MEMBRANE_LADDER, WEIGHT_LADDER, Constraints, ConstraintsUnsatisfiable, Evaluated,
                              SearchResult, qsvit_search, tiered_search)

__all__ = ["MemoryReport", "neuron_sizes", "spiking_memory", "QuantNeuron", "is_neuron", "membrane_range",
           "neuron_spec_of", "LOIHI_WIDTHS", "Item", "SpikingPrecision", "SpikingQuantizer", "fold_batchnorm",
           "MEMBRANE_LADDER", "WEIGHT_LADDER", "Constraints", "ConstraintsUnsatisfiable", "Evaluated", "SearchResult",
           "qsvit_search", "tiered_search"]
