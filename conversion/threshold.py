r"""Threshold-balanced ANN -> SNN conversion of ReLU / QCFS MLPs and CNNs (an ``nn.Sequential``) to IF neurons.

Maths (Diehl et al. 2015; Rueckauer et al. 2017, "Conversion of continuous-valued deep networks to efficient
event-driven networks"; Bu et al. 2022, QCFS). For the activation layers ``l`` of the ANN,

    a_l = ReLU(z_l),     z_l = W_l a_{l-1} + b_l   (Linear, Conv2d, with BatchNorm / average pooling between)

every ReLU becomes a layer of integrate-and-fire neurons (:class:`snn.multilevel.MultiLevelIF`, binary, reset by
subtraction, membrane started at ``theta / 2``) with threshold ``theta_l = lambda_l``, the activation scale:

- a :class:`quant.qcfs.QCFS` activation brings its own trained ``lambda`` (no calibration; exact at ``T = L``);
- a ReLU's ``lambda_l`` is measured on calibration data: the ``max`` or the ``p``-th ``percentile`` (robust
  norm) of ``a_l``, for the whole layer or per channel (``per_channel``; channel = dim 1 of ``(B, C, ...)``).

Every other layer is linear and runs unchanged on every timestep (``T`` folded into the batch). A neuron emits
spike values ``theta_l`` (not 1), so the weights stay the ANN's, which is the same network as scaling
``W_l`` by ``lambda_{l-1} / lambda_l`` with unit thresholds. Direct encoding presents the input at every step;
the output layer has no neuron and its output averaged over ``T`` estimates the ANN's logits. With constant
input, neuron ``i`` fires ``clamp(floor(T z_l[i] / lambda_l + 1/2), 0, T)`` times (see :mod:`snn.multilevel`),
so its rate approximates ``clip(a_l[i] / lambda_l, 0, 1)``.

Symbols: ``W_l, b_l`` weights and bias; ``z_l`` pre-activation; ``a_l`` activation; ``lambda_l`` activation
scale = threshold ``theta_l``; ``T`` timesteps; ``L`` QCFS levels.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from quant.qcfs import QCFS
from snn.multilevel import MultiLevelIF, MultiLevelSpec
from snn.runtime import DirectEncodingSNN, TimeFolded

__all__ = ["NormMethod", "ConversionConfig", "UnsupportedLayerError", "check_convertible", "activation_scale", "activation_scales",
           "convert_sequential", "sequential_of"]


class NormMethod(str, Enum):
    MAX = "max"
    PERCENTILE = "percentile"


@dataclass(frozen=True)
class ConversionConfig:
    """Attributes:
    norm: how a ReLU's ``lambda_l`` is measured: the maximum activation, or its ``percentile`` (robust to
        outliers). QCFS activations ignore it (their ``lambda`` is trained).
    percentile: percentile in (0, 100] used when ``norm == PERCENTILE`` (99.9 is Rueckauer's choice).
    per_channel: one threshold per channel instead of one per layer.
    soft_reset: reset by subtraction (True) or to zero (False).
    half_threshold_init: start every membrane at ``theta / 2``.
    """

    norm: NormMethod = NormMethod.PERCENTILE
    percentile: float = 99.9
    per_channel: bool = False
    soft_reset: bool = True
    half_threshold_init: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "norm", NormMethod(self.norm))
        except ValueError:
            raise ValueError(f"ConversionConfig.norm={self.norm!r}; choose one of {[m.value for m in NormMethod]}") from None
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"ConversionConfig.percentile={self.percentile} must be in (0, 100], e.g. 99.9")

    @property
    def neuron_spec(self) -> MultiLevelSpec:
        return MultiLevelSpec(levels=1, signed=False, soft_reset=self.soft_reset, half_init=self.half_threshold_init)


class UnsupportedLayerError(ValueError):
    """Raised before any work starts, listing every layer the converter cannot handle and why."""


_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten, nn.Unflatten)
_LINEAR = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_ACTIVATION = (nn.ReLU, QCFS)
_OTHER_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Hardtanh, nn.ReLU6)


def _reason(m: nn.Module) -> str | None:
    if isinstance(m, _LINEAR + _ACTIVATION + _PASS_THROUGH):
        return None
    if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return f"{type(m).__name__}: the maximum of spike trains is not the spike train of the maximum; use nn.AvgPool2d"
    if isinstance(m, _OTHER_ACTIVATIONS):
        return f"{type(m).__name__} is not a ReLU: only ReLU and QCFS activations map onto IF neurons (retrain with ReLU)"
    return (f"{type(m).__name__} is not supported (supported: Linear, Conv2d, BatchNorm1d/2d, AvgPool2d, "
            "AdaptiveAvgPool2d, ReLU, QCFS, Identity, Dropout, Flatten, Unflatten; transformers: conversion.transformer)")


def check_convertible(seq: nn.Sequential) -> list[tuple[str, str]]:
    """Return ``[(layer name, reason), ...]`` for every layer of ``seq`` this converter cannot handle."""
    problems = [(n, r) for n, m in seq.named_children() if (r := _reason(m)) is not None]
    layers = [(n, m) for n, m in seq.named_children() if not isinstance(m, _PASS_THROUGH)]
    if not layers or not isinstance(layers[-1][1], nn.Linear):
        problems.append(("<output>", "the network must end with an nn.Linear read-out layer"))
    if not any(isinstance(m, _ACTIVATION) for _, m in layers):
        problems.append(("<network>", "no ReLU or QCFS activation: nothing to turn into spiking neurons"))
    return problems


def sequential_of(model: nn.Module) -> nn.Sequential:
    """``model`` itself or its ``.net``, which must be an ``nn.Sequential``."""
    seq = model if isinstance(model, nn.Sequential) else getattr(model, "net", None)
    if not isinstance(seq, nn.Sequential):
        raise UnsupportedLayerError(f"{type(model).__name__}: expected an nn.Sequential or a model with an nn.Sequential "
                                    "`.net` (transformers: conversion.transformer)")
    return seq


@torch.no_grad()
def activation_scales(seq: nn.Sequential, x_calib: torch.Tensor, config: ConversionConfig) -> list[torch.Tensor]:
    """``lambda_l`` of every ReLU / QCFS of ``seq``: a 0-d tensor, or one value per channel (dim 1 of the
    activation) when ``config.per_channel``; QCFS layers give their trained ``lambda``."""
    acts: list[torch.Tensor] = []
    relus = [m for m in seq if isinstance(m, nn.ReLU)]
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out.detach())) for m in relus]
    try:
        if relus:
            seq.eval()(x_calib)
    finally:
        for h in hooks:
            h.remove()
    it = iter(acts)
    scales = []
    for m in seq:
        if isinstance(m, QCFS):
            scales.append(torch.tensor(m.threshold))
        elif isinstance(m, nn.ReLU):
            scales.append(activation_scale(next(it), percentile=None if config.norm is NormMethod.MAX else config.percentile,
                                           channel_dim=1 if config.per_channel else None))
    return scales


def activation_scale(a: torch.Tensor, *, percentile: float | None, channel_dim: int | None) -> torch.Tensor:
    """The scale of activations ``a``: their maximum (``percentile=None``) or ``percentile``-th percentile, over
    everything (a 0-d tensor) or per channel along ``channel_dim`` (a 1-d tensor); 1 where it is not positive (a
    dead channel never fires whatever its threshold)."""
    a = a.movedim(channel_dim, 0).flatten(1) if channel_dim is not None else a.flatten()[None]  # (channels or 1, samples)
    if percentile is None:
        lam = a.amax(dim=1)
    else:
        a = a[:, :: max(1, a.shape[1] // 200_000)]  # torch.quantile's input limit; a strided sample
        lam = torch.quantile(a.double(), percentile / 100.0, dim=1).float()
    lam = torch.where(lam > 0, lam, torch.ones_like(lam))
    return lam if channel_dim is not None else lam[0]


@torch.no_grad()
def convert_sequential(model: nn.Module, x_calib: torch.Tensor, *, timesteps: int,
                       config: ConversionConfig = ConversionConfig()) -> DirectEncodingSNN:
    """Convert a ReLU / QCFS MLP or CNN (``model.net`` or ``model`` itself an ``nn.Sequential``) to IF neurons.

    Every unsupported layer is listed (name and reason) in one :class:`UnsupportedLayerError` before any work.
    Returns a :class:`~snn.runtime.DirectEncodingSNN` running for ``timesteps`` steps (change ``.timesteps`` to
    evaluate the same network at another ``T``); the ANN is not modified.
    """
    seq = sequential_of(model)
    problems = check_convertible(seq)
    if problems:
        listing = "; ".join(f"{n}: {r}" for n, r in problems)
        raise UnsupportedLayerError(f"cannot convert {type(model).__name__}: {listing}")
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"convert_sequential: timesteps={timesteps!r} must be an int >= 1")
    scales = iter(activation_scales(seq, x_calib, config))
    layers: list[nn.Module] = []
    for m in seq:
        if isinstance(m, _ACTIVATION):
            layers.append(MultiLevelIF(theta=next(scales), spec=config.neuron_spec, channel_dim=1))
        else:
            layers.append(TimeFolded(copy.deepcopy(m)))
    return DirectEncodingSNN(net=nn.Sequential(*layers).eval(), timesteps=timesteps)
