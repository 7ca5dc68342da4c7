"""Spiking models: the spike-driven vision transformer (:mod:`snn.models.spikformer`), the spiking decoder
language model (:mod:`snn.models.spiking_lm`), both built from one spike-driven block (:mod:`snn.models.blocks`),
and the spiking MFM that joins them for visual question answering (:mod:`snn.models.spiking_mfm`)."""

from snn.models.spikformer import Spikformer, SpikformerConfig
from snn.models.blocks import SpikeKVCache
from snn.models.spiking_lm import SpikingLM, SpikingLMConfig
from snn.models.spiking_mfm import SpikingMFM, SpikingMFMConfig

__all__ = ["Spikformer", "SpikformerConfig", "SpikingLM", "SpikeKVCache", "SpikingLMConfig", "SpikingMFM", "SpikingMFMConfig"]
