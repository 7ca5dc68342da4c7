r"""The co-optimization search space, its Pareto front, and the choice under a user budget.

One :class:`InputConfig` fixes every input-side knob of the MFM at once:

- geometry: visual resolution S, patch size P (= stride), k x k token merging (:mod:`ann.cooptimize.geometry`);
- ViT token pruning: fraction ``vit_keep`` of patch tokens kept from ViT layer ``vit_layer`` on, and decoder
  visual-token pruning (FastV): fraction ``llm_keep`` kept from decoder layer ``llm_layer`` on
  (:mod:`ann.cooptimize.runner`);
- text sequence length: at most ``question_tokens`` question tokens (:mod:`ann.cooptimize.text`).

The search is exhaustive over a :class:`SearchSpace` (a few hundred points: every knob but the geometry is
training-free, and each geometry is fine-tuned once). Each point is measured (accuracy on a validation split,
CPU latency, accelerator latency and energy; the measuring is the caller's, e.g. ``benchmarks.cooptimize``), then

- :func:`pareto_front`: the points no other point beats on every objective (at least as good on all, better
  on one);
- :func:`choose`: under a :class:`Budget` (upper limits on any measured cost), the most accurate feasible
  point, ties to the cheapest; an infeasible budget raises :class:`BudgetInfeasible` naming the cheapest point
  found.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ann.cooptimize.geometry import Geometry

__all__ = ["InputConfig", "SearchSpace", "Budget", "BudgetInfeasible", "pareto_front", "choose"]


@dataclass(frozen=True)
class InputConfig:
    """One point of the space (module docstring). ``question_tokens=None``: questions are not shortened."""

    geometry: Geometry
    vit_keep: float = 1.0
    vit_layer: int = 0
    llm_keep: float = 1.0
    llm_layer: int = 1
    question_tokens: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, Geometry):
            raise TypeError(f"InputConfig.geometry must be a Geometry, not {type(self.geometry).__name__}")
        for name in ("vit_keep", "llm_keep"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0.0 < v <= 1.0):
                raise ValueError(f"InputConfig.{name}={v!r} is invalid: the fraction of tokens kept, in (0, 1]")
        for name in ("vit_layer", "llm_layer"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 0):
                raise ValueError(f"InputConfig.{name}={v!r} is invalid: a layer index >= 0")
        q = self.question_tokens
        if q is not None and not (isinstance(q, int) and q >= 1):
            raise ValueError(f"InputConfig.question_tokens={q!r} is invalid: an int >= 1, or None for whole questions")

    @property
    def label(self) -> str:
        parts = [self.geometry.label]
        if self.vit_keep < 1:
            parts.append(f"vit{self.vit_keep:g}@{self.vit_layer}")
        if self.llm_keep < 1:
            parts.append(f"fastv{self.llm_keep:g}@{self.llm_layer}")
        if self.question_tokens is not None:
            parts.append(f"q{self.question_tokens}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        g = self.geometry
        return {"label": self.label, "image_size": g.image_size, "patch_size": g.patch_size, "merge_factor": g.merge_factor,
                "visual_tokens": g.visual_tokens, "vit_keep": self.vit_keep, "vit_layer": self.vit_layer,
                "llm_keep": self.llm_keep, "llm_layer": self.llm_layer, "question_tokens": self.question_tokens}


@dataclass(frozen=True)
class SearchSpace:
    """The grid searched: every combination of the listed values (pruning layers only where pruning happens)."""

    geometries: tuple[Geometry, ...]
    vit_keeps: tuple[float, ...] = (1.0, 0.5, 0.25)
    vit_layers: tuple[int, ...] = (0, 1)
    llm_keeps: tuple[float, ...] = (1.0, 0.5)
    llm_layers: tuple[int, ...] = (1,)
    question_tokens: tuple[int | None, ...] = (None, 5)

    def __post_init__(self) -> None:
        for name in ("geometries", "vit_keeps", "vit_layers", "llm_keeps", "llm_layers", "question_tokens"):
            if not getattr(self, name):
                raise ValueError(f"SearchSpace.{name} is empty: give at least one value")
        if len(set(self.geometries)) != len(self.geometries):
            raise ValueError("SearchSpace.geometries has duplicates")

    def configs(self) -> list[InputConfig]:
        """Every point, geometry-major (so a caller can reuse one adapted model per geometry)."""
        def pruning(keeps, layers):
            return [(k, layers[0]) for k in keeps if k >= 1] + [(k, l) for k in keeps if k < 1 for l in layers]

        out = []
        for g in self.geometries:
            for (vk, vl), (lk, ll), q in itertools.product(pruning(self.vit_keeps, self.vit_layers),
                                                           pruning(self.llm_keeps, self.llm_layers), self.question_tokens):
                out.append(InputConfig(g, vit_keep=vk, vit_layer=vl, llm_keep=lk, llm_layer=ll, question_tokens=q))
        return out


@dataclass(frozen=True)
class Budget:
    """Upper limits on measured costs, by the key the measurements use (e.g. ``{"accel_latency_us": 60.0}``)."""

    limits: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.limits:
            raise ValueError("Budget.limits is empty: give at least one cost limit, e.g. {'accel_latency_us': 60.0}")
        for k, v in self.limits.items():
            if not (isinstance(v, (int, float)) and v > 0):
                raise ValueError(f"Budget.limits[{k!r}]={v!r} is invalid: a positive number")

    def fits(self, row: Mapping[str, float]) -> bool:
        missing = [k for k in self.limits if k not in row]
        if missing:
            raise KeyError(f"the budget limits {missing}, which the measurements do not have (they have {sorted(row)})")
        return all(row[k] <= v for k, v in self.limits.items())


class BudgetInfeasible(ValueError):
    """No measured point fits the budget; ``cheapest`` is the point with the lowest cost on the first limit."""

    def __init__(self, budget: Budget, cheapest: Mapping) -> None:
        self.budget, self.cheapest = budget, cheapest
        costs = ", ".join(f"{k}={cheapest[k]:.4g} (limit {v:.4g})" for k, v in budget.limits.items())
        super().__init__(f"no configuration fits the budget {dict(budget.limits)}; the cheapest found is "
                         f"{cheapest.get('label', cheapest)!s} with {costs}: raise the limits or widen the search space")


def pareto_front(rows: Sequence[Mapping[str, float]], *, maximize: Sequence[str] = (),
                 minimize: Sequence[str] = ()) -> list[int]:
    """Indices of the non-dominated rows (module docstring), in the order of ``rows``."""
    if not (maximize or minimize):
        raise ValueError("pareto_front needs at least one objective (maximize= or minimize=)")

    def key(r):
        return [r[k] for k in maximize] + [-r[k] for k in minimize]  # larger is better everywhere

    keys = [key(r) for r in rows]
    front = []
    for i, a in enumerate(keys):
        dominated = any(all(b_ >= a_ for a_, b_ in zip(a, b)) and any(b_ > a_ for a_, b_ in zip(a, b))
                        for j, b in enumerate(keys) if j != i)
        if not dominated:
            front.append(i)
    return front


def choose(rows: Sequence[Mapping], budget: Budget, *, accuracy: str = "accuracy") -> Mapping:
    """The most accurate row that fits ``budget`` (ties: lower cost on the budget's first limit)."""
    if not rows:
        raise ValueError("choose: no measured configurations")
    first = next(iter(budget.limits))
    feasible = [r for r in rows if budget.fits(r)]
    if not feasible:
        raise BudgetInfeasible(budget, min(rows, key=lambda r: r[first]))
    return max(feasible, key=lambda r: (r[accuracy], -r[first]))
