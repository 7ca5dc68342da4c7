"""Spiking models: the spike-driven vision transformer (:mod:`snn.models.spikformer`) and the spiking decoder
language model (:mod:`snn.models.spiking_lm`), built from one spike-driven block (:mod:`snn.models.blocks`)."""

from snn.models.spikformer import Spikformer, SpikformerConfig
from snn.models.spiking_lm import SpikingLM, SpikingLMConfig

__all__ = ["Spikformer", "SpikformerConfig", "SpikingLM", "SpikingLMConfig"]
