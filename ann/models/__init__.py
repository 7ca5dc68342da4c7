"""Reference ANN models."""

from ann.models.mlp import MLPConfig, ReLUMLP

__all__ = ["MLPConfig", "ReLUMLP"]
