r"""Latency and energy budgets for :mod:`quant`'s bit allocation: the accelerator's cost of a hierarchy node at
``b``-bit weights, as the additive ``Budget(limit=..., cost_fn=...)`` of :mod:`quant.allocate` takes.

Every sublayer (a weight matrix of ``rows x k`` weights, read by ``tokens`` tokens) is one GEMM
``C[tokens, rows] = A[tokens, k] @ W^T`` mapped by :func:`neurohw.accel.gemm.map_gemm` with ``act_bits``
activations and ``b``-bit weights (stored packed, computed on the ``mac_bits`` multipliers):

    cost(sublayer, b) = cycles / clock        (metric "latency", seconds)
                      = energy_pj * 1e-12     (metric "energy", joules, data movement included)
    cost(node, b)     = sum of its sublayers' costs                    (modality, block: additive by construction)
    cost(group, b)    = rows_group / rows_sublayer * cost(sublayer, b) (channel groups: a row share)

Narrower weights always save the energy of moving them; whether they save time depends on the mapping: one
decoding token (``tokens = 1``) uses a single row of an output-stationary array, which is then compute-bound
(the ``default`` preset), so a latency budget constrains nothing there and the energy budget is the useful one.
An embedding's table is costed as the GEMM of its tied ``lm_head`` (the one that reads every row).
"""

from __future__ import annotations

from collections.abc import Callable

from neurohw.accel.config import AcceleratorConfig
from neurohw.accel.gemm import map_gemm
from quant.hierarchy import Level, Node

__all__ = ["allocation_cost_fn", "METRICS"]

METRICS = ("latency", "energy")


def allocation_cost_fn(cfg: AcceleratorConfig, root: Node, *, tokens: int = 1, act_bits: int = 8,
                       metric: str = "latency") -> Callable[[Node, int], float]:
    """``(node, bits) -> cost`` of the module docstring on ``cfg`` (e.g. ``PRESETS["default"]``) for the nodes of
    the hierarchy ``root`` (:func:`quant.hierarchy.build_hierarchy`)."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}; choose one of {METRICS}")
    if not (isinstance(tokens, int) and tokens >= 1):
        raise ValueError(f"tokens={tokens!r}: the tokens each weight matrix reads per step, a positive int")
    parent = {g: s for s in root.at_level(Level.SUBLAYER) for g in s.children}

    def rows(node: Node) -> int:
        return node.weight.rows[1] - node.weight.rows[0]

    def gemm(node: Node, bits: int) -> float:
        g = map_gemm(cfg, tokens, rows(node), node.params // rows(node), a_bits=act_bits, b_bits=bits)
        return g.cycles / (cfg.clock_mhz * 1e6) if metric == "latency" else g.energy_pj * 1e-12

    def cost(node: Node, bits: int) -> float:
        if node.level is Level.SUBLAYER:
            return gemm(node, bits)
        if node.level is Level.GROUP:
            if node not in parent:
                raise ValueError(f"{node.key} is not a group of this hierarchy's sublayers")
            return rows(node) / rows(parent[node]) * gemm(parent[node], bits)
        return sum(gemm(s, bits) for s in node.at_level(Level.SUBLAYER))

    return cost
