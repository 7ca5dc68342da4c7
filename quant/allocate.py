r"""Bit allocation under an additive budget: one ILP, flat per layer, or hierarchy-aware.

**ILP** (:func:`ilp_allocate`). Binary ``x[i, b]`` = item ``i`` gets ``b`` bits:

    minimize  sum_{i,b} score(i, b) x[i, b]
    s.t.      sum_b x[i, b] = 1                         (one width per item)
              sum_{i,b} cost(i, b) x[i, b] <= budget    (cost(i, b) = size(i) * b: bits of storage)

solved by CBC (pulp). Any additive cost works (latency, energy per module as numbers) through ``cost``.

**Hierarchy-aware** (:func:`hierarchical_allocate`). The ILP is solved on a *frontier* (a cut of the tree),
starting with every node of ``levels[0]``; then, level by level, a frontier node ``n`` is replaced by its
children ``C`` (nodes of the next level below it) and the ILP re-solved with the whole budget, but only if

1. *stake*: ``stake(n) >= min_stake * mean_{m in frontier} stake(m)``, ``stake(n) = s(n, b_lo) - s(n, b_hi)``
   with ``b_lo``, ``b_hi`` the narrowest and widest widths ``n`` may take (see below): how much the objective
   can move by this node at all. Otherwise no child of ``n`` is ever scored: this is where an insensitive
   modality or block saves its whole subtree's evaluations; and
2. *heterogeneity*: the children's per-parameter scores ``d_c(b) = s(c, b) / params_c`` differ enough,
   relative to the node's own ``d_n(b) = s(n, b) / params_n``, over the widths the children may take:

       spread(n) = max_b (max_c d_c(b) - min_c d_c(b)) / d_n(b)   (over b with d_n(b) > 0)
       refine if spread(n) >= refine_threshold

   Homogeneous children would get (nearly) the node's own width anyway, so the node stays one unit and
   its grandchildren are never scored.

*Coarse decisions bound the fine ones*: the children of a node decided at ``b`` choose only among ``b`` and its
neighbours in ``choices`` (one step narrower, one wider), so they are scored at those widths alone, and the
previous stage's solution (every child at ``b``) stays feasible: a stage never does worse than the one before on
its own objective. (With widths 2, 3, 4, 8 that is three of four scores per child; with 2..8 three of six.)

Only nodes of the level just refined into are considered at the next stage: a node kept coarse stays
final. A node with a single child covering the same weights passes its scores down without evaluations.
Every stage's ILP carries the whole budget over a cut of the tree, so the final configuration meets it.
:func:`flat_allocate` scores every node of one level (sublayers: the per-layer ILP) and solves once, for
the search-cost comparison. Average bits = ``sum(params * bits) / sum(params)``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from quant.hierarchy import Level, Node

__all__ = [
    "BudgetError", "Budget", "StageCost", "SearchCost", "Allocation", "ilp_allocate", "hierarchical_allocate",
    "flat_allocate", "average_bits", "SUPPORTED_BITS",
]

SUPPORTED_BITS: tuple[int, ...] = tuple(range(2, 17))  # what quant.uniform quantizes (16: kept in float)
SensitivityFn = Callable[[Node, int], float]


class BudgetError(ValueError):
    """The budget is below the cheapest configuration. ``minimum``: the least budget reachable with the
    given choices; ``smallest_bits``: the width that reaches it; ``unsupported``: narrower widths that the
    quantizer cannot provide."""

    def __init__(self, budget: float, minimum: float, smallest_bits: int, supported: Sequence[int]) -> None:
        self.budget, self.minimum, self.smallest_bits = budget, minimum, smallest_bits
        narrower = [b for b in supported if b < smallest_bits]
        self.unsupported = tuple(b for b in range(1, smallest_bits) if b not in supported)
        hint = (f"add a narrower supported width ({narrower}) to choices or raise the budget" if narrower
                else f"raise the budget; widths {list(self.unsupported)} are not supported by the quantizer")
        super().__init__(f"budget {budget:.6g} is below the minimum reachable budget {minimum:.6g} "
                         f"(every item at its smallest width, {smallest_bits} bits); {hint}")


def _check_choices(choices: Iterable[int], supported: Sequence[int]) -> list[int]:
    choices = sorted(set(choices))
    bad = [b for b in choices if not isinstance(b, int) or b not in supported]
    if not choices or bad:
        raise ValueError(f"unsupported bit widths {bad} in choices={choices}; supported: {list(supported)}")
    return choices


def ilp_allocate(items: Sequence[Hashable], choices: Sequence[int], score: Callable[[Hashable, int], float],
                 size: Callable[[Hashable], float], budget: float, *,
                 cost: Callable[[Hashable, int], float] | None = None, time_limit_s: float = 30.0,
                 supported_bits: Sequence[int] = SUPPORTED_BITS) -> dict[Hashable, int]:
    """Optimal ``{item: bits}`` of the ILP in the module docstring. ``cost(item, b)`` defaults to
    ``size(item) * b`` (``budget`` then in bits). ``score`` may return ``math.inf`` for a width an item
    does not support. Raises :class:`BudgetError` when ``budget`` is below the cheapest configuration."""
    import pulp  # third-party; imported here so that the rest of quant does not need it

    items, choices = list(items), _check_choices(choices, supported_bits)
    if not items:
        return {}
    cost_fn = cost or (lambda i, b: size(i) * b)
    table = {(k, b): float(score(i, b)) for k, i in enumerate(items) for b in choices}  # one call per entry
    opts = {i: [b for b in choices if math.isfinite(table[k, b])] for k, i in enumerate(items)}
    if missing := [i for i, o in opts.items() if not o]:
        raise ValueError(f"items {missing[:5]} have no width with a finite score among choices={choices}")
    minimum = sum(min(cost_fn(i, b) for b in opts[i]) for i in items)
    if budget < minimum * (1 - 1e-12):
        raise BudgetError(budget, minimum, choices[0], supported_bits)
    # Normalised coefficients keep CBC's tolerances meaningful for budgets of billions of bits.
    s_scale = max((abs(table[k, b]) for k, i in enumerate(items) for b in opts[i]), default=1.0) or 1.0
    c_scale = abs(budget) or 1.0

    def solve(limit: float) -> dict[Hashable, int]:
        prob = pulp.LpProblem("bit_allocation", pulp.LpMinimize)
        x = {(k, b): prob.add_variable(f"x_{k}_{b}", cat="Binary") for k, i in enumerate(items) for b in opts[i]}
        prob += pulp.lpSum(table[k, b] / s_scale * x[k, b] for k, i in enumerate(items) for b in opts[i])
        for k, i in enumerate(items):
            prob += pulp.lpSum(x[k, b] for b in opts[i]) == 1
        prob += pulp.lpSum(cost_fn(i, b) / c_scale * x[k, b] for k, i in enumerate(items) for b in opts[i]) \
            <= limit / c_scale
        with warnings.catch_warnings():
            # PuLP 3.3 deprecates its bundled CBC in favour of a separately installed one (COIN_CMD); the
            # bundled binary is the one these machines have, so keep it without repeating the notice.
            warnings.simplefilter("ignore", DeprecationWarning)
            prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit_s))
        if pulp.LpStatus[prob.status] != "Optimal":
            raise RuntimeError(f"CBC returned status {pulp.LpStatus[prob.status]!r} (time_limit_s={time_limit_s})")
        return {i: max(opts[i], key=lambda b: x[k, b].value() or 0.0) for k, i in enumerate(items)}

    out = solve(budget)
    used = sum(cost_fn(i, b) for i, b in out.items())
    if used > budget:  # CBC's feasibility tolerance let it through: tighten by the excess once
        out = solve(budget - (used - budget))
    return out


@dataclass(frozen=True)
class Budget:
    """Exactly one of: ``avg_bits`` (bits per weight), ``bytes`` (weight storage), or ``limit`` with
    ``cost_fn(node, bits)``, an additive cost (latency, energy, ...) that must satisfy
    ``cost(node) = sum of cost(child)`` over the tree."""

    avg_bits: float | None = None
    bytes: float | None = None
    limit: float | None = None
    cost_fn: Callable[[Node, int], float] | None = None

    def __post_init__(self) -> None:
        given = [n for n in ("avg_bits", "bytes", "limit") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError(f"Budget needs exactly one of avg_bits, bytes, limit; got {given or 'none'}")
        if getattr(self, given[0]) <= 0:
            raise ValueError(f"Budget.{given[0]} must be > 0")
        if (self.limit is None) != (self.cost_fn is None):
            raise ValueError("Budget.limit and Budget.cost_fn go together: set both or neither")

    def total(self, root: Node) -> float:
        if self.avg_bits is not None:
            return self.avg_bits * root.params
        if self.bytes is not None:
            return self.bytes * 8
        return float(self.limit)

    def cost(self, node: Node, bits: int) -> float:
        return self.cost_fn(node, bits) if self.cost_fn is not None else node.params * bits


@dataclass(frozen=True)
class StageCost:
    level: str
    frontier: int  # ILP items
    evaluations: int  # new sensitivity evaluations in this stage
    ilp_variables: int
    solve_seconds: float
    refined: int = 0  # nodes of the previous frontier replaced by their children
    skipped_low_stake: int = 0
    skipped_homogeneous: int = 0


@dataclass
class SearchCost:
    stages: list[StageCost] = field(default_factory=list)
    evaluations: int = 0  # distinct (node, bits) sensitivity calls
    sensitivity_seconds: float = 0.0
    solve_seconds: float = 0.0
    ilp_variables: int = 0


@dataclass(frozen=True)
class Allocation:
    """``bits``: leaf name -> width for every leaf of the tree; ``decided``: the final frontier
    (node key -> width); ``total_cost`` in the budget's units; ``objective``: summed frontier scores."""

    bits: dict[str, int]
    decided: dict[str, int]
    average_bits: float
    total_cost: float
    objective: float
    cost: SearchCost

    def per_module(self, root: Node) -> dict[str, list[tuple[int, int, int]]]:
        """``param name -> [(row0, row1, bits), ...]`` over output rows."""
        out: dict[str, list[tuple[int, int, int]]] = {}
        for leaf in root.leaves():
            out.setdefault(leaf.weight.param, []).append((*leaf.weight.rows, self.bits[leaf.name]))
        return out


def average_bits(root: Node, bits: Mapping[str, int]) -> float:
    """``sum(params * bits) / sum(params)`` over the leaves of ``root`` (``bits`` keyed by leaf name)."""
    return sum(leaf.params * bits[leaf.name] for leaf in root.leaves()) / root.params


class _Scorer:
    """Memoises the sensitivity callable, counts evaluations and time; single-child nodes reuse scores."""

    def __init__(self, fn: SensitivityFn) -> None:
        self.fn, self.memo, self.alias = fn, {}, {}
        self.evaluations, self.seconds = 0, 0.0

    def __call__(self, node: Node, bits: int) -> float:
        node = self.alias.get(node, node)
        if (node, bits) not in self.memo:
            t0 = time.perf_counter()
            self.memo[node, bits] = float(self.fn(node, bits))
            self.seconds += time.perf_counter() - t0
            self.evaluations += 1
        return self.memo[node, bits]


def _solve(frontier: list[Node], choices: list[int], scorer: _Scorer, budget: Budget, total: float,
           time_limit_s: float, allowed: Mapping[Node, Sequence[int]] | None = None) -> tuple[dict[Node, int], float]:
    """The ILP over ``frontier``; ``allowed[n]``: the widths node ``n`` may take (others are never scored)."""
    t0 = time.perf_counter()
    allowed = allowed or {}
    score = lambda n, b: scorer(n, b) if b in allowed.get(n, choices) else math.inf  # noqa: E731
    sol = ilp_allocate(frontier, choices, score, lambda n: n.params, total, cost=budget.cost,
                       time_limit_s=time_limit_s)
    return sol, time.perf_counter() - t0


def _neighbours(choices: list[int], b: int) -> list[int]:
    """``b`` and the next narrower and wider widths of ``choices``."""
    i = choices.index(b)
    return choices[max(0, i - 1): i + 2]


def _finish(root: Node, sol: Mapping[Node, int], scorer: _Scorer, budget: Budget, cost: SearchCost) -> Allocation:
    bits = {leaf.name: b for n, b in sol.items() for leaf in n.leaves()}
    cost.evaluations, cost.sensitivity_seconds = scorer.evaluations, scorer.seconds
    return Allocation(bits=bits, decided={n.key: b for n, b in sol.items()}, average_bits=average_bits(root, bits),
                      total_cost=sum(budget.cost(n, b) for n, b in sol.items()),
                      objective=sum(scorer(n, b) for n, b in sol.items()), cost=cost)


def _below(node: Node, level: Level) -> list[Node]:
    return [d for c in node.children for d in c.at_level(level)]


def hierarchical_allocate(root: Node, sensitivity_fn: SensitivityFn, choices: Sequence[int], budget: Budget, *,
                          levels: Sequence[Level | str] = ("modality", "block", "sublayer", "group"),
                          refine_threshold: float = 0.5, min_stake: float = 0.1,
                          time_limit_s: float = 30.0) -> Allocation:
    """Coarse-to-fine ILP over the hierarchy (criterion in the module docstring)."""
    levels = [Level(lv) for lv in levels]
    if not levels:
        raise ValueError("levels must name at least one level, e.g. ('modality', 'block', 'sublayer')")
    choices = _check_choices(choices, SUPPORTED_BITS)
    total, scorer, cost = budget.total(root), _Scorer(sensitivity_fn), SearchCost()

    frontier = root.at_level(levels[0])
    n_eval = scorer.evaluations
    sol, secs = _solve(frontier, choices, scorer, budget, total, time_limit_s)
    cost.stages.append(StageCost(levels[0].value, len(frontier), scorer.evaluations - n_eval,
                                 sum(len(choices) for _ in frontier), secs))
    allowed: dict[Node, list[int]] = {}  # widths a refined node's children may take (absent: every choice)
    for prev, level in zip(levels, levels[1:]):
        n_eval = scorer.evaluations
        stake = {n: max(0.0, scorer(n, min(w)) - scorer(n, max(w))) for n in frontier
                 for w in [allowed.get(n, choices)]}
        mean_stake = sum(stake.values()) / len(frontier)
        new, refined, low, homog = [], 0, 0, 0
        for n in frontier:
            kids = _below(n, level) if n.level is prev else []  # a node kept coarse earlier stays final
            if not kids:
                new.append(n)
                continue
            if len(kids) == 1 and kids[0].params == n.params:  # same weights: pass the scores down
                scorer.alias[kids[0]] = scorer.alias.get(n, n)
                if n in allowed:
                    allowed[kids[0]] = allowed[n]
                new.append(kids[0])
                continue
            if stake[n] < min_stake * mean_stake or mean_stake == 0.0:
                new.append(n)
                low += 1
                continue
            widths = _neighbours(choices, sol[n])
            spread = 0.0
            for b in widths:
                d_n = scorer(n, b) / n.params
                if d_n > 0:
                    d = [scorer(c, b) / c.params for c in kids]
                    spread = max(spread, (max(d) - min(d)) / d_n)
            if spread >= refine_threshold:
                new.extend(kids)
                allowed.update({c: widths for c in kids})
                refined += 1
            else:
                new.append(n)
                homog += 1
        frontier = new
        sol, secs = _solve(frontier, choices, scorer, budget, total, time_limit_s, allowed)
        cost.stages.append(StageCost(level.value, len(frontier), scorer.evaluations - n_eval,
                                     sum(len(allowed.get(n, choices)) for n in frontier), secs, refined, low, homog))
    cost.solve_seconds = sum(s.solve_seconds for s in cost.stages)
    cost.ilp_variables = sum(s.ilp_variables for s in cost.stages)
    return _finish(root, sol, scorer, budget, cost)


def flat_allocate(root: Node, sensitivity_fn: SensitivityFn, choices: Sequence[int], budget: Budget, *,
                  level: Level | str = "sublayer", time_limit_s: float = 30.0) -> Allocation:
    """One ILP over every node of ``level`` (default: the per-layer ILP), each scored at every width."""
    level = Level(level)
    choices = _check_choices(choices, SUPPORTED_BITS)
    scorer, cost = _Scorer(sensitivity_fn), SearchCost()
    items = root.at_level(level)
    if not items:
        raise ValueError(f"the hierarchy has no {level.value!r} nodes")
    sol, secs = _solve(items, choices, scorer, budget, budget.total(root), time_limit_s)
    cost.stages.append(StageCost(level.value, len(items), scorer.evaluations, len(items) * len(choices), secs))
    cost.solve_seconds, cost.ilp_variables = secs, len(items) * len(choices)
    return _finish(root, sol, scorer, budget, cost)
