"""Bit configurations for :func:`quant.model_io.quantize_model`: uniform, or mixed precision from a sensitivity
table and the hierarchy-aware (or flat) ILP of :mod:`quant.allocate`, at module granularity.

The search stops at the sublayer level (one width per weight matrix), since a :class:`quant.qmodules.QuantLinear`
holds one width; channel-group sensitivities and allocations exist in :mod:`quant.allocate` but are not executed
per group. Weights tied across modules (an embedding and its ``lm_head``) get one width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from quant.allocate import Allocation, Budget, flat_allocate, hierarchical_allocate
from quant.hierarchy import Level, Node
from quant.model_io import tied_weight_groups
from quant.quantizer import QuantSpec

__all__ = ["uniform_config", "mixed_config", "SEARCH_LEVELS"]

SEARCH_LEVELS = ("modality", "block", "sublayer")


def _tie(model: nn.Module, config: dict[str, QuantSpec]) -> dict[str, QuantSpec]:
    for group in tied_weight_groups(model):
        specs = [config[n] for n in group if n in config]
        if specs:
            for n in group:
                config[n] = specs[0]
    return config


def uniform_config(model: nn.Module, root: Node, spec: QuantSpec) -> dict[str, QuantSpec]:
    """Every weight matrix of the hierarchy ``root`` at ``spec``."""
    return _tie(model, {m: spec for node in root.at_level(Level.SUBLAYER) for m in node.modules})


def mixed_config(model: nn.Module, root: Node, score: Callable[[Node, int], float], choices: Sequence[int],
                 budget: Budget, spec: Callable[[int], QuantSpec], *, flat: bool = False) -> tuple[dict[str, QuantSpec], Allocation]:
    """Allocate widths from ``choices`` under ``budget`` (``score(node, bits)``: a sensitivity, e.g.
    ``Sensitivity.fn("kl")``), hierarchy-aware unless ``flat``; ``spec(bits)`` makes each module's QuantSpec."""
    alloc = (flat_allocate(root, score, choices, budget) if flat else
             hierarchical_allocate(root, score, choices, budget, levels=SEARCH_LEVELS))
    config = {}
    for node in root.at_level(Level.SUBLAYER):
        bits = alloc.bits[node.leaves()[0].name]  # the search stops at sublayers: their leaves agree
        for m in node.modules:
            config[m] = spec(bits)
    return _tie(model, config), alloc
