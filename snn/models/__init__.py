"""Spiking models: the spike-driven vision transformer (:mod:`snn.models.spikformer`)."""

from snn.models.spikformer import Spikformer, SpikformerConfig

__all__ = ["Spikformer", "SpikformerConfig"]
