"""Reference ANN models."""

from ann.models.cnn import CNNConfig, ReLUCNN
from ann.models.mlp import MLPConfig, ReLUMLP

__all__ = ["CNNConfig", "ReLUCNN", "MLPConfig", "ReLUMLP"]
