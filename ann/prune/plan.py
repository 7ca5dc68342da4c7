r"""How much to cut, and where: one call that prunes a Llama decoder to a parameter ratio.

``prune_llama(model, ratio, blocks=K, criterion=..., run=...)``:

1. drops the ``K`` blocks of least block influence (``1 - cos(x_in, x_out)`` on the calibration run);
2. removes the same number ``c`` of MLP channels from every remaining layer, the ``c`` least important of each
   layer by ``criterion`` (magnitude, Wanda or Taylor; :mod:`ann.prune.importance`), with

       c = ceil(need / (L * 3 * hidden)),   need = ratio * P_0 - (P_0 - P_after_blocks)

   (``P``: all parameters, embeddings included; an MLP channel holds ``3 * hidden`` weights: a row of gate and
   up, a column of down). Every layer keeps the same count because a HF config holds one intermediate size;
   which channels go is per layer.

Everything is checked before the model is touched; the model is pruned in place and returned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ann.finetune.lora import trainable_fraction
from ann.prune.importance import CRITERIA, block_influence, input_norms
from ann.prune.surgery import check_llama, drop_blocks, mlp_channel_slices, prune_mlp_channels

__all__ = ["prune_llama", "count_params"]


def count_params(model: nn.Module) -> int:
    """Distinct parameters (tied weights once)."""
    return trainable_fraction(model)[1]


def prune_llama(model: nn.Module, ratio: float, *, run: Callable[[nn.Module], object], blocks: int = 0,
                criterion: str = "wanda", loss: Callable[[nn.Module], torch.Tensor] | None = None) -> dict:
    """Prune ``model`` in place to about ``ratio`` fewer parameters (module docstring); ``run(model)`` feeds it
    calibration data (forward only); ``loss(model)``: a scalar calibration loss, needed by ``taylor``. Returns
    what was removed."""
    check_llama(model)
    if not (isinstance(ratio, (int, float)) and 0.0 <= ratio < 1.0):
        raise ValueError(f"ratio={ratio!r}: the fraction of parameters to remove must be in [0, 1)")
    n_layers = len(model.model.layers)
    if not (isinstance(blocks, int) and 0 <= blocks < n_layers):
        raise ValueError(f"blocks={blocks!r}: remove 0 to {n_layers - 1} of the {n_layers} blocks (at least one must stay)")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}; choose one of {sorted(CRITERIA)}")
    if criterion == "taylor" and loss is None:
        raise ValueError("criterion='taylor' needs loss=(model -> scalar calibration loss) for its gradients")
    p0 = count_params(model)
    hidden, inter = model.config.hidden_size, model.config.intermediate_size
    per_layer_mlp = 3 * hidden * inter
    block_params = count_params(model.model.layers[0])
    need = ratio * p0 - blocks * block_params
    per_channel = (n_layers - blocks) * 3 * hidden
    c = max(0, math.ceil(need / per_channel))
    if c >= inter:
        most = (blocks * block_params + (n_layers - blocks) * (per_layer_mlp - 3 * hidden)) / p0
        raise ValueError(f"ratio={ratio}: with {blocks} blocks dropped, MLP channels can remove at most {most:.3f} of "
                         f"the parameters (one channel per layer must stay); lower the ratio or drop more blocks")

    dropped: list[int] = []
    if blocks:
        bi = block_influence(model.model.layers, model, run)
        dropped = sorted(sorted(range(n_layers), key=bi.__getitem__)[:blocks])
        drop_blocks(model, dropped)
    if c:
        layers = model.model.layers
        norms = {}
        if criterion == "wanda":
            norms = input_norms(model, run, [l for layer in layers for l in (layer.mlp.gate_proj, layer.mlp.down_proj)])
            for layer in layers:
                norms[layer.mlp.up_proj] = norms[layer.mlp.gate_proj]  # one input
        elif criterion == "taylor":
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss(model).backward()
        crit = CRITERIA[criterion]
        keep = []
        for layer in layers:
            scores = torch.tensor([crit(mlp_channel_slices(layer, torch.tensor([j])), input_norms=norms)
                                   for j in range(inter)])
            keep.append(sorted(torch.topk(scores, inter - c).indices.tolist()))
        prune_mlp_channels(model, keep)
        model.zero_grad(set_to_none=True)
    return {"ratio_target": ratio, "ratio": 1 - count_params(model) / p0, "dropped_blocks": dropped,
            "mlp_channels_removed_per_layer": c, "criterion": criterion, "params_before": p0,
            "params_after": count_params(model)}
