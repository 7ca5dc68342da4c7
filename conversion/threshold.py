r"""Threshold-balanced ANN -> SNN conversion of ReLU MLPs to integrate-and-fire (IF) neurons.

Maths (Diehl et al. 2015; Rueckauer et al. 2017, "Conversion of continuous-valued deep networks to
efficient event-driven networks"). For the ReLU layers ``l = 1..L-1`` of the ANN,

    a_l = ReLU(W_l a_{l-1} + b_l),      a_0 = x,

let ``lambda_l`` be the activation scale of layer ``l`` measured on calibration data (``max`` or the
``p``-th percentile of ``a_l``; ``lambda_0 = 1``). The spiking network uses unit thresholds and the
balanced weights

    W~_l = W_l * lambda_{l-1} / lambda_l,   b~_l = b_l / lambda_l      (hidden layers, theta = 1)
    W~_L = W_L * lambda_{L-1},              b~_L = b_L                 (output layer, no neuron)

so that the firing rate of IF neuron ``i`` of layer ``l`` over ``T`` steps approximates
``clip(a_l[i] / lambda_l, 0, 1)``. Each IF neuron integrates ``v[t] = v[t-1] + I[t]``, spikes
``s[t] = [v[t] >= theta]`` and is soft-reset ``v[t] <- v[t] - theta * s[t]`` (reset by subtraction keeps the
residual charge, Rueckauer 2017); the initial membrane is ``v[0] = theta / 2`` when ``half_threshold_init``
(rounding instead of flooring the rate, which halves the expected quantisation error at low T). The
output layer has no neuron: its input current averaged over ``T`` estimates the ANN's logits.

Symbols: ``W_l, b_l`` weights and bias of layer ``l``; ``a_l`` ANN activation; ``lambda_l`` activation scale;
``theta`` threshold (1 after balancing); ``v`` membrane potential; ``s`` spike; ``T`` timesteps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
from torch import nn

from snn.runtime import DirectEncodingSNN

__all__ = ["NormMethod", "ConversionConfig", "UnsupportedLayerError", "check_convertible", "activation_scales", "convert_mlp"]


class NormMethod(str, Enum):
    MAX = "max"
    PERCENTILE = "percentile"


@dataclass(frozen=True)
class ConversionConfig:
    """Attributes:
    norm: how ``lambda_l`` is measured: the maximum activation, or its ``percentile`` (robust to outliers).
    percentile: percentile in (0, 100] used when ``norm == PERCENTILE`` (99.9 is Rueckauer's choice).
    soft_reset: reset by subtraction (True) or to zero (False).
    half_threshold_init: start every membrane at ``theta / 2``.
    """

    norm: NormMethod = NormMethod.PERCENTILE
    percentile: float = 99.9
    soft_reset: bool = True
    half_threshold_init: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "norm", NormMethod(self.norm))
        except ValueError:
            raise ValueError(f"ConversionConfig.norm={self.norm!r}; choose one of {[m.value for m in NormMethod]}") from None
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"ConversionConfig.percentile={self.percentile} must be in (0, 100], e.g. 99.9")


class UnsupportedLayerError(ValueError):
    """Raised before any work starts, listing every layer the converter cannot handle and why."""


_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten)


def check_convertible(seq: nn.Sequential) -> list[tuple[str, str]]:
    """Return ``[(layer name, reason), ...]`` for every layer of ``seq`` this converter cannot handle."""
    problems: list[tuple[str, str]] = []
    layers = [(n, m) for n, m in seq.named_children() if not isinstance(m, _PASS_THROUGH)]
    if not layers or not isinstance(layers[-1][1], nn.Linear):
        problems.append(("<output>", "the network must end with an nn.Linear read-out layer"))
    prev_linear = False
    for name, m in layers:
        if isinstance(m, nn.Linear):
            if prev_linear:
                problems.append((name, "two Linear layers without a ReLU between them"))
            prev_linear = True
        elif isinstance(m, nn.ReLU):
            if not prev_linear:
                problems.append((name, "ReLU not preceded by a Linear layer"))
            prev_linear = False
        else:
            problems.append((name, f"{type(m).__name__} is not supported (supported: Linear, ReLU, Identity, Dropout, Flatten)"))
            prev_linear = False  # report each problem once, not again at the next Linear
    return problems


@torch.no_grad()
def activation_scales(seq: nn.Sequential, x_calib: torch.Tensor, config: ConversionConfig) -> list[float]:
    """``lambda_l`` of every ReLU of ``seq`` on calibration inputs ``x_calib`` (N, F)."""
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: acts.append(out.flatten())) for m in seq if isinstance(m, nn.ReLU)]
    try:
        seq.eval()(x_calib)
    finally:
        for h in hooks:
            h.remove()
    scales = []
    for a in acts:
        lam = float(a.max()) if config.norm is NormMethod.MAX else float(torch.quantile(a.double(), config.percentile / 100.0))
        scales.append(lam if lam > 0 else 1.0)  # a dead layer never fires whatever its scale
    return scales


@torch.no_grad()
def convert_mlp(model: nn.Module, x_calib: torch.Tensor, *, timesteps: int, config: ConversionConfig = ConversionConfig()) -> DirectEncodingSNN:
    """Convert a ReLU MLP (``model.net`` or ``model`` itself an ``nn.Sequential``) to an IF-neuron SNN.

    Returns a :class:`~snn.runtime.DirectEncodingSNN` running for ``timesteps`` steps; change
    ``.timesteps`` to evaluate the same network at another ``T``.
    """
    from spikingjelly.activation_based import neuron

    seq = model if isinstance(model, nn.Sequential) else getattr(model, "net", None)
    if not isinstance(seq, nn.Sequential):
        raise UnsupportedLayerError(f"{type(model).__name__}: expected an nn.Sequential or a model with an nn.Sequential `.net`")
    problems = check_convertible(seq)
    if problems:
        listing = "; ".join(f"{n}: {r}" for n, r in problems)
        raise UnsupportedLayerError(f"cannot convert {type(model).__name__}: {listing}")
    scales = iter(activation_scales(seq, x_calib, config))
    layers: list[nn.Module] = []
    lam_prev = 1.0
    linears = [m for m in seq if isinstance(m, nn.Linear)]
    for m in seq:
        if isinstance(m, nn.Linear):
            lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None)
            is_out = m is linears[-1]
            lam = 1.0 if is_out else next(scales)
            lin.weight.copy_(m.weight * lam_prev / lam)
            if m.bias is not None:
                lin.bias.copy_(m.bias / lam)
            layers.append(lin)
            lam_prev = lam
        elif isinstance(m, nn.ReLU):
            node = neuron.IFNode(v_threshold=1.0, v_reset=None if config.soft_reset else 0.0, step_mode="m")
            if config.half_threshold_init:
                node.set_reset_value("v", 0.5)
            layers.append(node)
    # Linear acts on the last dim, so it runs unchanged on (T, B, F) sequences.
    return DirectEncodingSNN(net=nn.Sequential(*layers).eval(), timesteps=timesteps)
