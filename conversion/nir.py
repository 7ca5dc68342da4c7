r"""Converted SNNs as plain IF networks and NIR graphs, for neuromorphic targets (``neurohw.lava``).

A converted MLP (:func:`conversion.convert_sequential` with ``ConversionConfig(soft_reset=False,
half_threshold_init=False)``: binary neurons, reset to 0, membranes started at 0) has IF neurons with thresholds
``theta_l`` (per layer or per feature) that emit spike *values* ``theta_l``. Dividing each neuron's charge by its
threshold gives the same network with unit thresholds and 0/1 spikes (hard-reset IF dynamics are invariant to
that scaling):

    W'_l = diag(1 / theta_l) W_l diag(theta_{l-1}),   b'_l = b_l / theta_l,   threshold 1
    (theta_{-1} = 1: the analog input; the read-out layer keeps its scale: W'_L = W_L diag(theta_{L-1}), b'_L = b_L)

which :func:`snn.nir.export_nir` writes as ``Affine -> IF`` nodes. NIR (and Loihi's LIF) has no reset by
subtraction and no initial membrane, so soft-reset or half-threshold-initialised conversions are refused, as is
anything but Linear layers (convolutions with batch norm and pooling would need folding; not done).
"""

from __future__ import annotations

import torch
from torch import nn

from snn.multilevel import MultiLevelIF
from snn.neurons import NeuronSpec, build_neuron
from snn.runtime import DirectEncodingSNN, TimeFolded

__all__ = ["to_unit_threshold_if", "converted_to_nir"]

_SKIP = (nn.Identity, nn.Dropout, nn.Flatten)


def _inner(m: nn.Module) -> nn.Module:
    return m.inner if isinstance(m, TimeFolded) else m


@torch.no_grad()
def to_unit_threshold_if(snn: DirectEncodingSNN) -> nn.Sequential:
    """The converted MLP ``snn`` as ``nn.Sequential`` of multi-step ``Linear`` and unit-threshold IF neurons
    (SpikingJelly engine) computing the same outputs; every layer it cannot express is listed in one ValueError."""
    layers = [_inner(m) for m in snn.net]
    problems = []
    for i, m in enumerate(layers):
        if isinstance(m, MultiLevelIF):
            s = m.spec
            if s.levels != 1 or s.signed:
                problems.append(f"layer {i}: multi-level / signed neurons (levels={s.levels}, signed={s.signed}) are not IF neurons")
            if s.soft_reset:
                problems.append(f"layer {i}: reset by subtraction; convert with ConversionConfig(soft_reset=False)")
            if s.half_init:
                problems.append(f"layer {i}: membrane started at theta / 2; convert with "
                                "ConversionConfig(half_threshold_init=False)")
        elif not isinstance(m, (nn.Linear,) + _SKIP):
            problems.append(f"layer {i}: {type(m).__name__} (only Linear layers and IF neurons are exported)")
    if problems:
        raise ValueError("cannot express the converted SNN as IF neurons for NIR:\n  " + "\n  ".join(problems))
    out: list[nn.Module] = []
    prev_theta = None  # thresholds of the neurons feeding the next Linear
    pending: nn.Linear | None = None
    for m in layers:
        if isinstance(m, _SKIP):
            continue
        if isinstance(m, nn.Linear):
            lin = nn.Linear(m.in_features, m.out_features)
            lin.weight.copy_(m.weight * (prev_theta[None, :] if prev_theta is not None else 1.0))
            lin.bias.copy_(m.bias if m.bias is not None else torch.zeros(m.out_features))
            out.append(lin)
            pending = lin
        else:  # MultiLevelIF after `pending`
            theta = m.theta.expand(pending.out_features) if m.theta.dim() == 0 else m.theta
            pending.weight.div_(theta[:, None])
            pending.bias.div_(theta)
            out.append(build_neuron(NeuronSpec(kind="if", v_threshold=1.0, v_reset=0.0)))
            prev_theta = theta.clone()
    return nn.Sequential(*out).eval()


def converted_to_nir(snn: DirectEncodingSNN, *, input_shape: tuple[int, ...]):
    """A NIR graph (``Affine -> IF -> ... -> Affine``) of a converted MLP; see the module docstring."""
    from snn.nir import export_nir

    return export_nir(to_unit_threshold_if(snn), input_shape=input_shape)
