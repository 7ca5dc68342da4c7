"""Training loops of the ANN track."""

from tasks.classifier import TrainConfig, TrainResult, train_classifier

__all__ = ["TrainConfig", "TrainResult", "train_classifier"]
