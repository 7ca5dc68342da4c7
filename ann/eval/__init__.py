"""Evaluation of ANN-track models (held-out language modelling: bits per byte)."""

from ann.eval.lm import BpbResult, bits_per_byte, score_windows

__all__ = ["BpbResult", "bits_per_byte", "score_windows"]
