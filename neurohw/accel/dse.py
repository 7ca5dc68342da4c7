r"""Design-space exploration: the best :class:`AcceleratorConfig` for one workload under area and power budgets.

Strategies, all at the same evaluation budget ``n_evals`` (= calls of the cost function on distinct designs;
a design proposed twice is answered from the cache and costs nothing): expert presets (:func:`run_presets`),
random search (:func:`run_random`, the sanity baseline), TPE search with optuna (:func:`run_optuna`) and the
LLM-aided proposer (:func:`neurohw.accel.llm.run_llm`). :func:`compare_strategies` puts them in one table.

Figures of one design ``cfg`` (area: the model and its sources in :mod:`neurohw.accel.space`):

    latency_s, energy_j = cost_fn(cfg)                                         (one inference of the workload)
    power_w   = energy_j / latency_s                                (average dynamic power while it runs)
    objective = energy_j * latency_s                               (energy-delay product, J*s; lower wins)
    feasible  <=> area_mm2(cfg) <= budget.area_mm2 and power_w <= budget.power_w
    violation = max(area / budget.area_mm2, power_w / budget.power_w)          (<= 1 exactly when feasible)

Leakage is not modelled: power is dynamic only (no sourced leakage figure is used), so it is a lower bound of
the real average power. An infeasible design is kept in the record (feasible=False) and never chosen as best;
when nothing fits, the result names the least-violating design instead.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from neurohw.accel.config import PRESETS, AcceleratorConfig
from neurohw.accel.gemm import map_gemm
from neurohw.io import atomic_write_json
from neurohw.accel.space import Budget, DesignSpace, area_mm2

__all__ = ["CostFn", "area_mm2", "Budget", "DesignSpace", "Trial", "SearchResult", "evaluate", "gemm_cost_fn",
           "run_presets", "run_random", "run_optuna", "compare_strategies", "format_table", "add_dse_subcommand",
           "run_dse_command"]

CostFn = Callable[[AcceleratorConfig], tuple[float, float]]
"""``cfg -> (latency_s, energy_j)`` of one inference of the target workload on ``cfg``."""


@dataclass(frozen=True, kw_only=True)
class Trial:
    """One evaluated design. Metrics are None when the cost function failed (``error`` says why)."""

    config: dict
    latency_s: float | None
    energy_j: float | None
    area_mm2: float | None
    power_w: float | None
    feasible: bool
    objective: float | None
    violation: float | None
    error: str | None = None
    source: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def evaluate(cfg: AcceleratorConfig, cost_fn: CostFn, budget: Budget, *, source: str = "") -> Trial:
    """One call of ``cost_fn`` and the figures of the module docstring; a ValueError from it is recorded."""
    area = area_mm2(cfg)["total"]
    try:
        latency, energy = (float(x) for x in cost_fn(cfg))
        if not (latency > 0 and energy > 0 and math.isfinite(latency) and math.isfinite(energy)):
            raise ValueError(f"cost_fn returned latency_s={latency!r}, energy_j={energy!r}: "
                             "both must be finite and > 0")
    except ValueError as e:
        return Trial(config=cfg.to_dict(), latency_s=None, energy_j=None, area_mm2=area, power_w=None, feasible=False,
                     objective=None, violation=None, error=str(e), source=source)
    power = energy / latency
    violation = max(area / budget.area_mm2, power / budget.power_w)
    return Trial(config=cfg.to_dict(), latency_s=latency, energy_j=energy, area_mm2=area, power_w=power,
                 feasible=violation <= 1.0, objective=energy * latency, violation=violation, source=source)


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """What one strategy found. ``evals``: cost_fn calls; ``proposals``: designs proposed (incl. invalid and
    duplicate ones); ``closest``: the least-violating design when ``best`` is None; ``details``: per-strategy
    extras (the LLM loop's counts and per-round log)."""

    strategy: str
    trials: tuple[Trial, ...]
    best: Trial | None
    closest: Trial | None
    evals: int
    proposals: int
    invalid: int
    duplicates: int
    wall_s: float
    note: str
    details: dict = field(default_factory=dict)

    def to_dict(self, *, with_trials: bool = True) -> dict:
        d = {k: getattr(self, k) for k in ("strategy", "evals", "proposals", "invalid", "duplicates", "wall_s", "note")}
        d["best"] = self.best.to_dict() if self.best else None
        d["closest"] = self.closest.to_dict() if self.closest else None
        d["details"] = self.details
        if with_trials:
            d["trials"] = [t.to_dict() for t in self.trials]
        return d


def _best(trials: Sequence[Trial]) -> Trial | None:
    """The feasible trial with the lowest objective (None when nothing fits the budget)."""
    ok = [t for t in trials if t.feasible]
    return min(ok, key=lambda t: t.objective) if ok else None


class Ledger:
    """The designs one search evaluated: counts cost_fn calls, serves repeated designs from its cache."""

    def __init__(self, space: DesignSpace, cost_fn: CostFn, budget: Budget) -> None:
        self.space, self.cost_fn, self.budget = space, cost_fn, budget
        self.trials: list[Trial] = []
        self.seen: dict[tuple, Trial] = {}
        self.proposals = self.invalid = self.duplicates = 0

    def submit(self, values: Mapping[str, Any], source: str) -> tuple[str, Trial | None, str | None]:
        """``("new" | "duplicate", trial, None)`` or ``("invalid", None, reason)``."""
        self.proposals += 1
        try:
            cfg, key = self.space.to_config(values), self.space.key(values)
        except ValueError as e:
            self.invalid += 1
            return "invalid", None, str(e)
        if key in self.seen:
            self.duplicates += 1
            return "duplicate", self.seen[key], None
        trial = evaluate(cfg, self.cost_fn, self.budget, source=source)
        self.trials.append(trial)
        self.seen[key] = trial
        return "new", trial, None

    def best(self) -> Trial | None:
        return _best(self.trials)

    def result(self, strategy: str, t0: float, *, proposals: int | None = None, invalid: int | None = None,
               duplicates: int | None = None, details: dict | None = None) -> SearchResult:
        """The :class:`SearchResult`; a strategy that counts proposals itself (the LLM loop) passes its counts."""
        return _result(strategy, self.trials, t0, proposals=self.proposals if proposals is None else proposals,
                       invalid=self.invalid if invalid is None else invalid,
                       duplicates=self.duplicates if duplicates is None else duplicates, details=details or {})


def _result(strategy: str, trials: Sequence[Trial], t0: float, *, proposals: int, invalid: int, duplicates: int,
            details: dict) -> SearchResult:
    ok = [t for t in trials if t.feasible]
    best = _best(trials)
    measured = [t for t in trials if t.violation is not None]
    closest = None if best or not measured else min(measured, key=lambda t: t.violation)
    if best:
        note = f"best of {len(ok)} feasible / {len(trials)} evaluated designs"
    elif closest:
        note = (f"no evaluated design meets the budget; closest (least violating, {closest.violation:.3g}x "
                "the budget): "
                f"area {closest.area_mm2:.3g} mm^2, power {closest.power_w:.3g} W, config {json.dumps(closest.config)}")
    else:
        note = "no design could be evaluated"
    return SearchResult(strategy=strategy, trials=tuple(trials), best=best, closest=closest, evals=len(trials),
                        proposals=proposals, invalid=invalid, duplicates=duplicates, wall_s=time.perf_counter() - t0,
                        note=note, details=details)


def _max_proposals(n_evals: int) -> int:
    if not (isinstance(n_evals, int) and not isinstance(n_evals, bool) and n_evals >= 1):
        raise ValueError(f"n_evals={n_evals!r} is invalid: use an int >= 1")
    return 50 * n_evals + 100  # termination guard when most proposals are invalid or repeated


def run_presets(cost_fn: CostFn, budget: Budget, *, presets: Mapping[str, AcceleratorConfig] = PRESETS,
                n_evals: int | None = None) -> SearchResult:
    """Evaluate the expert presets; with ``n_evals`` larger than their number, shrink each over-budget preset
    (halve rows, cols, the three buffers and the DRAM width; down to 8 x 8) until it fits or evals run out."""
    t0 = time.perf_counter()
    trials: list[Trial] = []
    limit = len(presets) if n_evals is None else n_evals
    for name, cfg in presets.items():
        if len(trials) >= limit:
            break
        trials.append(evaluate(cfg, cost_fn, budget, source=f"preset:{name}"))
        while not trials[-1].feasible and len(trials) < limit and min(cfg.rows, cfg.cols) >= 16:
            cfg = replace(cfg, rows=cfg.rows // 2, cols=cfg.cols // 2, ifmap_sram_kb=cfg.ifmap_sram_kb / 2,
                          weight_sram_kb=cfg.weight_sram_kb / 2, ofmap_sram_kb=cfg.ofmap_sram_kb / 2,
                          dram_bytes_per_cycle=cfg.dram_bytes_per_cycle / 2)
            trials.append(evaluate(cfg, cost_fn, budget, source=f"preset:{name}/shrunk"))
    return _result("presets", trials, t0, proposals=len(trials), invalid=0, duplicates=0, details={})


def run_random(space: DesignSpace, cost_fn: CostFn, budget: Budget, *, n_evals: int, seed: int = 0) -> SearchResult:
    """Uniform random designs until ``n_evals`` distinct valid ones are evaluated (the sanity baseline)."""
    t0, cap = time.perf_counter(), _max_proposals(n_evals)
    rng, ledger = random.Random(seed), Ledger(space, cost_fn, budget)
    while len(ledger.trials) < min(n_evals, space.size) and ledger.proposals < cap:
        ledger.submit(space.sample(rng), "random")
    return ledger.result("random", t0)


def run_optuna(space: DesignSpace, cost_fn: CostFn, budget: Budget, *, n_evals: int, seed: int = 0) -> SearchResult:
    """optuna's TPE sampler (seeded) over the categorical choices, minimising the EDP with the budget as
    constraints (``Trial.set_constraint``: relative excess of area and power, > 0 = infeasible; a design the
    config rejects or the cost function cannot evaluate gets ``valid`` = 1). A repeated design is told its
    cached value and costs no evaluation. optuna's INFO logging is silenced for the call and restored after."""
    try:
        import optuna
    except ImportError as e:  # pragma: no cover (a declared dependency)
        raise ImportError("run_optuna needs optuna: `.venv/bin/python -m pip install optuna`") from e
    t0, cap = time.perf_counter(), _max_proposals(n_evals)
    ledger = Ledger(space, cost_fn, budget)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
        while len(ledger.trials) < min(n_evals, space.size) and ledger.proposals < cap:
            ot = study.ask()
            values = {k: ot.suggest_categorical(k, list(c)) for k, c in space.choices.items()}
            _, trial, _ = ledger.submit(values, "tpe")
            measured = trial is not None and trial.objective is not None
            ot.set_constraint("valid", 0.0 if measured else 1.0)
            ot.set_constraint("area", trial.area_mm2 / budget.area_mm2 - 1.0 if measured else 0.0)
            ot.set_constraint("power", trial.power_w / budget.power_w - 1.0 if measured else 0.0)
            study.tell(ot, trial.objective if measured else math.inf)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return ledger.result("optuna", t0)


def gemm_cost_fn(shapes: Sequence[tuple[int, int, int]]) -> CostFn:
    """A cost function made of GEMMs ``(m, n, k)`` run one after another (tests, demos):
    latency = sum(cycles) / clock, energy = sum(energy_pj) * 1e-12."""
    shapes = tuple(shapes)

    def cost(cfg: AcceleratorConfig) -> tuple[float, float]:
        rs = [map_gemm(cfg, m, n, k) for m, n, k in shapes]
        return sum(r.cycles for r in rs) / (cfg.clock_mhz * 1e6), sum(r.energy_pj for r in rs) * 1e-12
    return cost


# Strategy runners with one signature: (space, cost_fn, budget, *, n_evals, seed, client, max_retries, progress)
# (only the LLM loop is slow enough to use the client, the retries and a progress bar).
def _presets(space, cost_fn, budget, *, n_evals, seed, client, max_retries, progress=False) -> SearchResult:
    return run_presets(cost_fn, budget, n_evals=n_evals)


def _random(space, cost_fn, budget, *, n_evals, seed, client, max_retries, progress=False) -> SearchResult:
    return run_random(space, cost_fn, budget, n_evals=n_evals, seed=seed)


def _optuna(space, cost_fn, budget, *, n_evals, seed, client, max_retries, progress=False) -> SearchResult:
    return run_optuna(space, cost_fn, budget, n_evals=n_evals, seed=seed)


def _llm(space, cost_fn, budget, *, n_evals, seed, client, max_retries, progress=False) -> SearchResult:
    from neurohw.accel.llm import run_llm

    if client is None:
        raise ValueError("strategy 'llm' needs a client: pass client=OpenAIClient(...) or HFLocalClient(...)")
    return run_llm(space, cost_fn, budget, client, n_evals=n_evals, max_retries=max_retries, seed=seed, progress=progress)


STRATEGIES: Mapping[str, Callable[..., SearchResult]] = MappingProxyType(
    {"presets": _presets, "random": _random, "optuna": _optuna, "llm": _llm})


def compare_strategies(space: DesignSpace, cost_fn: CostFn, budget: Budget, *, n_evals: int, seed: int = 0,
                       client: Any = None, max_retries: int = 3,
                       strategies: Sequence[str] = ("presets", "random", "optuna", "llm"), progress: bool = False) -> dict:
    """Run ``strategies`` at the same ``n_evals`` and return a JSON-serializable report: one ``rows`` entry per
    strategy, the full ``results``, and ``llm_vs_search`` (LLM best EDP / optuna and random best EDP, computed)."""
    unknown = [s for s in strategies if s not in STRATEGIES]
    if unknown:
        raise ValueError(f"unknown strategies {unknown}: use some of {list(STRATEGIES)}")
    results = {s: STRATEGIES[s](space, cost_fn, budget, n_evals=n_evals, seed=seed, client=client,
                                max_retries=max_retries, progress=progress) for s in strategies}
    rows = []
    for s, r in results.items():
        b = r.best
        rows.append({"strategy": s, "evals": r.evals, "proposals": r.proposals, "invalid_proposals": r.invalid,
                     "duplicates": r.duplicates, "fallbacks": r.details.get("fallbacks"),
                     "llm_designs": r.details.get("accepted_from_llm"), "feasible_found": b is not None,
                     "best_objective_edp_js": b and b.objective, "best_latency_s": b and b.latency_s,
                     "best_energy_j": b and b.energy_j, "best_area_mm2": b and b.area_mm2,
                     "best_power_w": b and b.power_w,
                     "best_config": b and space_values(space, b), "wall_s": r.wall_s, "note": r.note})
    edp = {s: r.best.objective for s, r in results.items() if r.best}
    versus = {}
    if "llm" in results:
        for other in ("optuna", "random", "presets"):
            if other in results:
                versus[f"llm_over_{other}"] = edp["llm"] / edp[other] if "llm" in edp and other in edp else None
        versus["llm_is_best"] = bool(edp) and min(edp, key=edp.get) == "llm"
    return {"objective": "energy-delay product (J*s), lower is better", "budget": asdict(budget), "n_evals": n_evals,
            "seed": seed, "space": {k: list(v) for k, v in space.choices.items()}, "fixed": dict(space.fixed),
            "rows": rows, "llm_vs_search": versus, "results": {s: r.to_dict() for s, r in results.items()}}


def space_values(space: DesignSpace, trial: Trial) -> dict:
    """The searchable fields of ``trial`` (all fields when it is not a point of ``space``, e.g. a preset)."""
    try:
        return space.values_of(trial.config)
    except ValueError:
        return dict(trial.config)


def format_table(report: Mapping[str, Any]) -> str:
    """The ``rows`` of a :func:`compare_strategies` report as a Markdown table."""
    cols = [("strategy", "strategy"), ("evals", "evals"), ("invalid", "invalid_proposals"), ("fallbacks", "fallbacks"),
            ("best EDP (J*s)", "best_objective_edp_js"), ("latency (s)", "best_latency_s"), ("energy (J)", "best_energy_j"),
            ("area (mm^2)", "best_area_mm2"), ("power (W)", "best_power_w")]

    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(h for h, _ in cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[k]) for _, k in cols) + " |" for r in report["rows"]]
    return "\n".join(lines)


def add_dse_subcommand(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``dse`` to an argparse subparsers object (``python -m neurohw.accel dse ...``)."""
    p = subparsers.add_parser("dse", help="design-space exploration: presets / random / optuna / LLM, equal eval budgets")
    p.add_argument("--area-mm2", type=float, default=20.0, help="area budget (mm^2)")
    p.add_argument("--power-w", type=float, default=2.0, help="average power budget (W)")
    p.add_argument("--evals", type=int, default=30, help="cost-function evaluations per strategy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strategies", default=None,
                   help="comma list of presets,random,optuna,llm (default: all; llm only with --llm-url or --llm-dir)")
    p.add_argument("--llm-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000 (with or without /v1)")
    p.add_argument("--llm-model", default="default", help="model name sent to the endpoint")
    p.add_argument("--llm-api-key-env", help="name of the environment variable holding the endpoint's API key")
    p.add_argument("--llm-dir", help="local Hugging Face causal-LM folder (e.g. the SmolLM2 cache folder)")
    p.add_argument("--llm-max-new-tokens", type=int, default=128)
    p.add_argument("--llm-prefill", default="", help="text that starts a local model's reply, e.g. '{' (--llm-dir)")
    p.add_argument("--llm-temperature", type=float, default=0.7)
    p.add_argument("--max-retries", type=int, default=3, help="re-prompts after an invalid LLM reply")
    p.add_argument("--out", help="directory; the report goes to DIR/dse.json")
    return p


def run_dse_command(args: argparse.Namespace, *, cost_fn: CostFn) -> dict:
    """Run the ``dse`` subcommand for ``cost_fn``: prints the table, writes ``--out``/dse.json, returns the report."""
    from neurohw.accel.llm import client_from_args

    budget = Budget(area_mm2=args.area_mm2, power_w=args.power_w)
    client = client_from_args(args)
    default = ("presets", "random", "optuna") + (("llm",) if client is not None else ())
    strategies = tuple(s.strip() for s in args.strategies.split(",")) if args.strategies else default
    report = compare_strategies(DesignSpace(), cost_fn, budget, n_evals=args.evals, seed=args.seed, client=client,
                                max_retries=args.max_retries, strategies=strategies, progress=True)
    print(format_table(report))
    if args.out:
        atomic_write_json(Path(args.out) / "dse.json", report)
    return report
