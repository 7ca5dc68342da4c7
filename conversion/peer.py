"""The peer converter: SpikingJelly's ``ann2snn`` (FX graph, ``RateCodingRecipe``) on the same trained ANN.

SpikingJelly's rate-coding recipe replaces every ``nn.ReLU`` found in the FX graph by
``VoltageScaler(1 / lambda) -> IFNode(v_threshold=1, soft reset) -> VoltageScaler(lambda)``, with ``lambda`` the
robust-norm activation scale (``mode="99.9%"``) measured on calibration batches, membranes started at 0, and
Conv-BN fusion. Everything else (LayerNorm, softmax, products of activations) stays an ANN operator that is applied
to every timestep's values. The converted network is run one step at a time and its outputs are averaged, as in
SpikingJelly's own examples.

It converts ReLUs only: a QCFS-trained ANN is handed over with every :class:`quant.qcfs.QCFS` replaced by the
ReLU it was trained from (same weights), since a QCFS module left in place would be an analog quantizer, not a
neuron.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from quant.qcfs import QCFS

__all__ = ["with_relu", "spikingjelly_convert", "spikingjelly_prefix_outputs"]


def with_relu(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every QCFS activation replaced by ``nn.ReLU``."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, QCFS):
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.ReLU())
    return model


@torch.no_grad()
def spikingjelly_convert(model: nn.Module, calib_batches: list[torch.Tensor], *, mode: str = "99.9%") -> nn.Module:
    """SpikingJelly's converted SNN of ``model`` (QCFS -> ReLU first); ``calib_batches``: single-input batches.

    The recipe's calibration and ReLU -> IF replacement are SpikingJelly's; its last stage, the rewrite of the graph
    for multi-step execution, is skipped because it refuses LayerNorm, softmax and matmul (spikingjelly 2.0.0:
    "RateCodingRecipe step-mode backend does not support module node ... LayerNorm"). The network is then run one
    timestep per call, as SpikingJelly's own ann2snn examples run it. A model with an ``nn.Sequential`` ``.net``
    is converted through it (its own forward may check shapes, which FX cannot trace).
    """
    from spikingjelly.activation_based import ann2snn

    class SingleStepRateCoding(ann2snn.RateCodingRecipe):
        def replace(self, converter, fx_model):
            return self._replace_by_neurons(fx_model).to(converter.device)

    net = getattr(model, "net", None)
    model = net if isinstance(net, nn.Sequential) else model
    recipe = SingleStepRateCoding(dataloader=calib_batches, mode=mode)
    return ann2snn.FXConverter(recipe, device="cpu").convert(with_relu(model).eval()).eval()


@torch.no_grad()
def spikingjelly_prefix_outputs(snn: nn.Module, x: torch.Tensor, timesteps: int) -> torch.Tensor:
    """Read-out (mean output so far) after every step ``1..T`` for inputs ``x``: ``(T, B, C)``."""
    from spikingjelly.activation_based import functional

    functional.reset_net(snn)
    total = None
    outs = []
    for t in range(timesteps):
        y = snn(x)
        total = y if total is None else total + y
        outs.append(total / (t + 1))
    functional.reset_net(snn)
    return torch.stack(outs)
