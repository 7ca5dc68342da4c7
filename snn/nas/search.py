r"""Memory-aware multi-objective search with optuna: accuracy up, memory and energy down, memory under a hard budget.

Objectives of a trial (candidate genotype g of :mod:`snn.nas.space`):

    maximize  a(g) = validation accuracy after short training (:func:`snn.nas.evaluate.evaluate_candidate`)
    minimize  m(g) = weights + membrane state, bytes (:func:`snn.quant.memory.spiking_memory`)
    minimize  e(g) = energy of one inference from the caller's ``energy_fn`` (e.g. pJ from the accelerator model
                     of :mod:`neurohw.accel`, which ``snn`` may not import; ``benchmarks.nas`` passes one)
              (without an energy function the study has the first two objectives only)
    subject to m(g) <= budget  (hard: m is measured before training; a candidate over budget is never trained,
                                it is recorded as a PRUNED trial with its memory and the optuna constraint
                                m(g) - budget > 0, which the TPE sampler uses to steer away from it)

Before any training, :meth:`SearchSpace.smallest` finds the least-memory point of the space; if even that is
over budget, :class:`InfeasibleBudgetError` names the budget and that closest candidate.

Storage and workers: the study lives in an optuna RDB storage (``sqlite:///<out>/nas.db`` by default; a
``postgresql://`` or ``mysql://`` URL is passed to optuna unchanged, for workers on many machines). Every call
of :func:`run_search` is a worker: it runs trials until the study holds ``n_trials`` COMPLETE trials (counted
study-wide, so an interrupted search resumes where it stopped and completed trials are never redone), however
many workers share the study. A trial that finds that earlier trials (complete or still running) already make
up the target stops at once as ``surplus``; a genotype that an earlier trial already completed is not trained
again (``duplicate``). A worker killed mid-trial leaves a RUNNING trial, which optuna's heartbeat marks FAIL
after ``grace_s`` seconds, and a rerun then completes the target. Each worker seeds its sampler with
``seed + 7919 n`` (n: trials already in the study), so a resumed search does not replay the draws of the first
run; give workers that start together different seeds.
"""

from __future__ import annotations

import enum
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

from snn.nas.evaluate import EnergyFn, FastEvalConfig, TaskData, evaluate_candidate, memory_of
from snn.nas.space import Genotype, SearchSpace, build

__all__ = ["InfeasibleBudgetError", "SamplerKind", "SAMPLERS", "SearchConfig", "StudySettings", "TrialRecord",
           "SearchResult", "default_storage", "open_storage", "open_study", "run_search", "load_result",
           "stored_settings"]

_SETTINGS_KEY = "neuromfm_nas_settings"


class InfeasibleBudgetError(ValueError):
    """No candidate of the space fits the memory budget; carries the closest candidate (least memory) found."""

    def __init__(self, *, budget_bytes: float, closest: Genotype, closest_bytes: float, where: str) -> None:
        self.budget_bytes, self.closest, self.closest_bytes = budget_bytes, closest, closest_bytes
        super().__init__(
            f"no candidate fits the memory budget of {budget_bytes:,.0f} bytes; the closest candidate ({where}) is "
            f"[{closest.describe()}] at {closest_bytes:,.0f} bytes ({closest_bytes / budget_bytes:.2f}x the budget): "
            f"raise the budget to at least {closest_bytes:,.0f} bytes or add smaller choices to the search space "
            "(dim, mlp_ratio, 'skip' cells)")


class SamplerKind(str, enum.Enum):
    TPE = "tpe"
    NSGA2 = "nsga2"
    RANDOM = "random"


def _tpe(seed: int, n_startup: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, constant_liar=True)


def _nsga2(seed: int, n_startup: int):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(2, n_startup))


def _random(seed: int, n_startup: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


# sampler kind -> builder(seed, n_startup_trials); one registration per sampler
SAMPLERS: dict[SamplerKind, Callable[[int, int], object]] = {SamplerKind.TPE: _tpe, SamplerKind.NSGA2: _nsga2,
                                                             SamplerKind.RANDOM: _random}


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """How one worker searches (module docstring).

    Attributes:
        budget_bytes: the hard memory budget (bytes, > 0).
        n_trials: COMPLETE trials the study must hold when this worker stops (>= 1; study-wide).
        storage: optuna RDB URL (``sqlite:///path/nas.db``, ``postgresql://...``, ``mysql://...``).
        study_name: name of the study in the storage.
        sampler: ``tpe`` (default), ``nsga2`` or ``random``.
        seed: sampler seed (module docstring: offset by the trials already in the study).
        n_startup_trials: random trials before TPE models the results (NSGA-II: population size).
        max_attempts_per_trial: this worker gives up after ``max_attempts_per_trial * n_trials`` trials of its own
            (over-budget, duplicate and surplus trials included), so that a space mostly over budget ends.
        heartbeat_s, grace_s: optuna heartbeat interval and the silence after which a RUNNING trial is FAIL.
        poll_s: how often a worker that waits for other workers' running trials looks again.
    """

    budget_bytes: float
    n_trials: int = 40
    storage: str
    study_name: str = "neuromfm-nas"
    sampler: SamplerKind = SamplerKind.TPE
    seed: int = 0
    n_startup_trials: int = 10
    max_attempts_per_trial: int = 20
    heartbeat_s: int = 30
    grace_s: int = 120
    poll_s: float = 2.0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"SearchConfig.{name}={getattr(self, name)!r} is invalid: {fix}")

        need(isinstance(self.budget_bytes, (int, float)) and self.budget_bytes > 0, "budget_bytes", "use a number of bytes > 0")
        need(isinstance(self.n_trials, int) and self.n_trials >= 1, "n_trials", "use an int >= 1")
        need(isinstance(self.storage, str) and "://" in self.storage, "storage",
             "use an RDB URL such as sqlite:///results/nas.db or postgresql://user:pass@host/db")
        need(isinstance(self.study_name, str) and self.study_name != "", "study_name", "use a non-empty name")
        try:
            object.__setattr__(self, "sampler", SamplerKind(self.sampler))
        except ValueError:
            raise ValueError(f"SearchConfig.sampler={self.sampler!r} is invalid: use one of "
                             f"{[s.value for s in SamplerKind]}") from None
        need(isinstance(self.n_startup_trials, int) and self.n_startup_trials >= 1, "n_startup_trials", "use an int >= 1")
        need(isinstance(self.max_attempts_per_trial, int) and self.max_attempts_per_trial >= 1, "max_attempts_per_trial",
             "use an int >= 1")
        need(isinstance(self.heartbeat_s, int) and self.heartbeat_s >= 1, "heartbeat_s", "use an int >= 1 (seconds)")
        need(isinstance(self.grace_s, int) and self.grace_s > self.heartbeat_s, "grace_s",
             f"use an int > heartbeat_s={self.heartbeat_s} (seconds)")
        need(self.poll_s > 0, "poll_s", "use a number of seconds > 0")


@dataclass(frozen=True, kw_only=True)
class StudySettings:
    """What every worker of one study must agree on (stored with the study and checked when a worker joins)."""

    space: SearchSpace
    budget_bytes: float
    fast: FastEvalConfig
    data: str
    energy: str | None

    @property
    def objectives(self) -> tuple[str, ...]:
        return ("val_accuracy", "memory_bytes") + (("energy",) if self.energy else ())

    @classmethod
    def from_dict(cls, d: dict) -> "StudySettings":
        return cls(space=SearchSpace.from_dict(d["space"]), budget_bytes=float(d["budget_bytes"]),
                   fast=FastEvalConfig(**d["fast"]), data=d["data"], energy=d["energy"])

    def to_dict(self) -> dict:
        return {"space": self.space.to_dict(), "budget_bytes": float(self.budget_bytes), "fast": self.fast.to_dict(),
                "data": self.data, "energy": self.energy, "objectives": list(self.objectives)}


def default_storage(out_dir) -> str:
    """``sqlite:///<out_dir>/nas.db``."""
    return f"sqlite:///{os.path.join(os.fspath(out_dir), 'nas.db')}"


def open_storage(url: str, *, heartbeat_s: int = 30, grace_s: int = 120):
    """An optuna RDB storage for ``url``; SQLite gets a 60 s lock timeout (several worker processes write to one
    file) and its folder is created. Other URLs go to optuna (SQLAlchemy) unchanged."""
    import optuna

    engine_kwargs = {}
    if url.startswith("sqlite:"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():  # the heartbeat is marked experimental in optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                          grace_period=grace_s)


def open_study(config: SearchConfig, settings: StudySettings | None, *, create: bool, sampler=None):
    """Create or load the study ``config.study_name``.

    ``create=True``: create it if absent (storing ``settings``), else load it; ``create=False``: it must exist.
    A loaded study must have been created with the same ``settings`` (None: take whatever it has)."""
    import optuna

    storage = open_storage(config.storage, heartbeat_s=config.heartbeat_s, grace_s=config.grace_s)
    exists = config.study_name in optuna.get_all_study_names(storage)
    if not exists and not create:
        raise ValueError(f"study {config.study_name!r} does not exist in {config.storage}: create it first "
                         "(`python -m snn.nas create ...` or `search`), or check --study / --storage")
    if not exists and settings is None:
        raise ValueError("open_study: a new study needs its settings")
    directions = ["maximize", "minimize"] + (["minimize"] if settings and settings.energy else [])
    if exists:
        study = optuna.load_study(study_name=config.study_name, storage=storage, sampler=sampler)
    else:
        try:
            study = optuna.create_study(study_name=config.study_name, storage=storage, sampler=sampler,
                                        directions=directions)
            study.set_user_attr(_SETTINGS_KEY, settings.to_dict())
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it a moment ago
            study = optuna.load_study(study_name=config.study_name, storage=storage, sampler=sampler)
    stored = study.user_attrs.get(_SETTINGS_KEY)
    if stored is None:  # created by another process that has not stored its settings yet
        time.sleep(config.poll_s)
        stored = optuna.load_study(study_name=config.study_name, storage=storage).user_attrs.get(_SETTINGS_KEY)
    if stored is None:
        raise ValueError(f"study {config.study_name!r} was not created by snn.nas (no settings stored); use another --study")
    if settings is not None:
        mine = settings.to_dict()
        diff = sorted(k for k in mine if mine[k] != stored.get(k))
        if diff:
            raise ValueError(f"study {config.study_name!r} was created with other settings ({', '.join(diff)} differ: "
                             f"stored {[stored.get(k) for k in diff]}, given {[mine[k] for k in diff]}); use the same "
                             "arguments as its first run, or another study name")
    return study


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trial as stored (``reason`` says why a PRUNED trial was not trained)."""

    number: int
    state: str
    genotype: Genotype | None
    memory_bytes: float | None
    feasible: bool | None
    val_accuracy: float | None
    energy: float | None
    score: float | None
    params: int | None
    train_seconds: float | None
    worker: str | None
    reason: str | None

    def to_dict(self) -> dict:
        d = dict(vars(self))
        d["genotype"] = self.genotype.to_dict() if self.genotype else None
        return d


def _dominates(a: TrialRecord, b: TrialRecord) -> bool:
    ka = (-a.val_accuracy, a.memory_bytes, a.energy if a.energy is not None else 0.0)
    kb = (-b.val_accuracy, b.memory_bytes, b.energy if b.energy is not None else 0.0)
    return all(x <= y for x, y in zip(ka, kb)) and ka != kb


@dataclass(frozen=True, kw_only=True)
class SearchResult:
    """All trials of a study and what follows from them."""

    study_name: str
    settings: dict
    trials: tuple[TrialRecord, ...]

    @property
    def budget_bytes(self) -> float:
        return float(self.settings["budget_bytes"])

    def complete(self) -> list[TrialRecord]:
        """The trained (feasible, COMPLETE) trials, by trial number."""
        return [t for t in self.trials if t.state == "COMPLETE"]

    def pareto(self) -> list[TrialRecord]:
        """The complete trials no other complete trial dominates (accuracy up, memory and energy down)."""
        done = self.complete()
        return [t for t in done if not any(_dominates(o, t) for o in done)]

    def best(self) -> TrialRecord | None:
        """The most accurate complete trial (ties: less memory, then less energy, then the earlier trial)."""
        done = self.complete()
        if not done:
            return None
        return min(done, key=lambda t: (-t.val_accuracy, t.memory_bytes, t.energy or 0.0, t.number))

    def closest_infeasible(self) -> TrialRecord | None:
        """The trial of least memory among those over budget."""
        over = [t for t in self.trials if t.feasible is False and t.memory_bytes is not None]
        return min(over, key=lambda t: t.memory_bytes) if over else None

    def sample_for_correlation(self, k: int, *, top: int) -> list[TrialRecord]:
        """``k`` complete trials for a rank correlation with full training: the ``top`` most accurate after short
        training (the candidates worth training fully anyway) and the rest evenly spread over the ranking, so
        that the sample covers good and bad candidates alike."""
        ranked = sorted(self.complete(), key=lambda t: (-t.val_accuracy, t.memory_bytes, t.number))
        if k >= len(ranked):
            return ranked
        top = min(top, k)
        rest, n = ranked[top:], k - top
        picks = [rest[round(i * (len(rest) - 1) / (n - 1))] for i in range(n)] if n > 1 else rest[-1:] if n else []
        return ranked[:top] + picks

    def to_dict(self) -> dict:
        best = self.best()
        return {"study_name": self.study_name, "settings": self.settings,
                "counts": {s: sum(t.state == s for t in self.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
                "best": best.to_dict() if best else None, "pareto": [t.number for t in self.pareto()],
                "trials": [t.to_dict() for t in self.trials]}


def _record(t) -> TrialRecord:
    a = t.user_attrs
    g = a.get("genotype")
    return TrialRecord(number=t.number, state=t.state.name, genotype=Genotype.from_dict(g) if g else None,
                       memory_bytes=a.get("memory_bytes"), feasible=a.get("feasible"), val_accuracy=a.get("val_accuracy"),
                       energy=a.get("energy"), score=a.get("score"), params=a.get("params"),
                       train_seconds=a.get("train_seconds"), worker=a.get("worker"), reason=a.get("reason"))


def _result(study) -> SearchResult:
    return SearchResult(study_name=study.study_name, settings=study.user_attrs[_SETTINGS_KEY],
                        trials=tuple(_record(t) for t in study.get_trials(deepcopy=False)))


def load_result(storage: str, study_name: str) -> SearchResult:
    """The trials of an existing study (e.g. for a report while workers still run)."""
    study = open_study(SearchConfig(budget_bytes=1.0, storage=storage, study_name=study_name), None, create=False)
    return _result(study)


def stored_settings(storage: str, study_name: str) -> StudySettings:
    """The settings an existing study was created with (what a joining worker needs)."""
    return StudySettings.from_dict(load_result(storage, study_name).settings)


def _counts(study, optuna) -> tuple[int, int]:
    """(COMPLETE trials, RUNNING trials) of the study, after failing stale ones (heartbeat)."""
    with warnings.catch_warnings():  # marked experimental in optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING))
    done = sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    return done, len(trials) - done


def run_search(space: SearchSpace, data: TaskData, *, config: SearchConfig, fast: FastEvalConfig = FastEvalConfig(),
               energy_fn: EnergyFn | None = None, energy_name: str | None = None, create: bool = True,
               enqueue: tuple[Genotype, ...] = (), progress: bool = True) -> SearchResult:
    """Run one worker of the search of the module docstring and return all trials of the study.

    Args:
        space, data: the search space and the task (train / validation images).
        config: budget, target number of COMPLETE trials, storage, sampler.
        fast: the short training that scores a candidate.
        energy_fn: the third objective (:data:`snn.nas.evaluate.EnergyFn`); None for two objectives.
        energy_name: identifies ``energy_fn`` for the study's settings (default ``module:qualname``); every worker
            of a study must use the same one.
        create: create the study if it does not exist (False: join an existing one).
        enqueue: known designs (e.g. the hand-designed network) the search evaluates first, like any candidate;
            only a study without trials enqueues them (a resumed one already has them).

    Raises:
        InfeasibleBudgetError: nothing in the space fits ``config.budget_bytes`` (found before training), or this
            worker found no feasible candidate at all before its attempts ran out.
    """
    import optuna
    import torch
    from tqdm.auto import tqdm

    if energy_fn is not None and energy_name is None:
        energy_name = f"{getattr(energy_fn, '__module__', '?')}:{getattr(energy_fn, '__qualname__', repr(energy_fn))}"
    settings = StudySettings(space=space, budget_bytes=float(config.budget_bytes), fast=fast, data=data.source,
                             energy=energy_name if energy_fn is not None else None)
    closest, closest_bytes = space.smallest(lambda g: memory_of(build(g, space), space).total_bytes)
    if closest_bytes > config.budget_bytes:
        raise InfeasibleBudgetError(budget_bytes=config.budget_bytes, closest=closest, closest_bytes=closest_bytes,
                                    where="the least-memory point of the space")
    study = open_study(config, settings, create=create)
    study.sampler = SAMPLERS[config.sampler](config.seed + 7919 * len(study.get_trials(deepcopy=False)),
                                             config.n_startup_trials)
    if enqueue and not study.get_trials(deepcopy=False):
        for g in enqueue:
            study.enqueue_trial(space.params_of(g))
    worker = f"{socket.gethostname()}:{os.getpid()}"
    budget, target = float(config.budget_bytes), config.n_trials
    live = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING)

    def objective(trial):
        g = space.suggest(trial)
        trial.set_user_attr("genotype", g.to_dict())
        trial.set_user_attr("worker", worker)
        earlier = [t for t in study.get_trials(deepcopy=False, states=live) if t.number < trial.number]
        if len(earlier) >= target:
            trial.set_user_attr("reason", "surplus")
            raise optuna.TrialPruned(f"surplus: {len(earlier)} earlier trials already make up the target")
        key = g.key()
        if any(t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("genotype") == g.to_dict() for t in earlier):
            trial.set_user_attr("reason", "duplicate")
            raise optuna.TrialPruned(f"duplicate of a completed trial: {key}")
        torch.manual_seed(fast.seed)
        mem = memory_of(build(g, space), space)
        trial.set_user_attr("memory_bytes", mem.total_bytes)
        trial.set_user_attr("feasible", mem.total_bytes <= budget)
        trial.set_constraint("memory_over_budget_bytes", mem.total_bytes - budget)
        if mem.total_bytes > budget:
            trial.set_user_attr("reason", "over memory budget")
            raise optuna.TrialPruned(f"{mem.total_bytes:.0f} bytes > budget {budget:.0f}")
        res = evaluate_candidate(g, space, data, fast, energy_fn=energy_fn, memory=mem)
        for name in ("val_accuracy", "energy", "score", "params", "train_seconds"):
            value = getattr(res, name)
            trial.set_user_attr(name, value if value is None or abs(value) != float("inf") else None)
        return (res.val_accuracy, mem.total_bytes) + ((res.energy,) if energy_fn is not None else ())

    done, running = _counts(study, optuna)
    attempts, max_attempts = 0, config.max_attempts_per_trial * target
    bar = tqdm(total=target, initial=min(done, target), desc=f"nas {config.study_name}", disable=not progress)
    try:
        while done < target and attempts < max_attempts:
            if done + running >= target:  # the rest is running on other workers: wait for them (or their failure)
                time.sleep(config.poll_s)
            else:
                study.optimize(objective, n_trials=1, catch=())
                attempts += 1
            new_done, running = _counts(study, optuna)
            bar.update(min(new_done, target) - min(done, target))
            done = new_done
    finally:
        bar.close()
    result = _result(study)
    if not result.complete():
        near = result.closest_infeasible()
        if near is not None:
            raise InfeasibleBudgetError(budget_bytes=budget, closest=near.genotype, closest_bytes=near.memory_bytes,
                                        where=f"the least-memory of {attempts} candidates tried")
    if done < target:
        warnings.warn(f"snn.nas: stopped after {attempts} attempts with {done} of {target} complete trials (most "
                      "candidates were over budget or duplicates); raise max_attempts_per_trial or the budget",
                      stacklevel=2)
    return result
