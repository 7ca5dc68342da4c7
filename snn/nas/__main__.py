"""``python -m snn.nas {search,create,worker,report}``: memory-aware spiking NAS on the digits task (:mod:`snn.nas`).

Examples::

    # one machine: search 40 candidates under the memory of the hand-designed spiking ViT (sqlite:///results/nas-study/nas.db)
    python -m snn.nas search --budget-bytes spikformer --trials 40
    # many processes / machines on one study: create it once, then start workers anywhere that reaches the storage
    python -m snn.nas create --storage postgresql://user:pw@host/nas --study s1 --budget-bytes 300000
    python -m snn.nas worker --storage postgresql://user:pw@host/nas --study s1 --trials 100 --seed 1 --threads 1
    python -m snn.nas report --storage postgresql://user:pw@host/nas --study s1 --json pareto.json

An interrupted ``search`` or ``worker`` resumes when run again with the same storage and study: ``--trials`` is the
number of COMPLETE trials the study must reach, whoever ran them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

__all__ = ["main", "load_callable"]


def load_callable(spec: str):
    """``"package.module:function"`` -> the function (how a user plugs an energy model into the CLI)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--energy-fn {spec!r}: use MODULE:FUNCTION, e.g. mypackage.energy:energy_pj")
    fn = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"--energy-fn {spec!r} is not callable")
    return fn


def _budget(text: str) -> float | str:
    if text == "spikformer":
        return text
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: use a number of bytes or 'spikformer'") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the budget must be > 0 bytes")
    return v


def _add_storage(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument("--storage", required=required, default=None,
                   help="optuna RDB URL: sqlite:///path/nas.db (default: sqlite:///<out>/nas.db), or a postgresql:// / "
                        "mysql:// URL for workers on several machines (passed to optuna unchanged)")
    p.add_argument("--study", default="neuromfm-nas", help="study name in the storage (default neuromfm-nas)")


def _add_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("results/nas-study"), help="folder of the default SQLite storage")
    p.add_argument("--budget-bytes", type=_budget, required=True,
                   help="hard memory budget (fp32 weights + membrane state, bytes), or 'spikformer' for the memory of "
                        "the hand-designed spiking ViT (snn.models.Spikformer defaults)")
    p.add_argument("--space", type=Path, default=None, help="JSON file of a SearchSpace (SearchSpace.to_dict); default: the built-in space")
    p.add_argument("--epochs", type=int, default=3, help="short-training epochs per candidate (default 3)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--train-seed", type=int, default=0, help="seed of every candidate's initialization and shuffling")
    p.add_argument("--data-seed", type=int, default=0, help="digits split seed")
    p.add_argument("--train-samples", type=int, default=None, help="use only the first N training images (default all)")
    p.add_argument("--val-samples", type=int, default=None, help="use only the first N validation images (default all)")
    p.add_argument("--energy-fn", default=None, metavar="MODULE:FUNCTION",
                   help="third objective: a function (model, images) -> energy of one inference; without it the "
                        "study has two objectives (accuracy, memory)")


def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trials", type=int, required=True, help="COMPLETE trials the study must hold when this worker stops")
    p.add_argument("--seed", type=int, default=0, help="sampler seed; give workers started together different seeds")
    p.add_argument("--sampler", choices=["tpe", "nsga2", "random"], default="tpe")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads of this worker (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _settings(args):
    from snn.nas.evaluate import FastEvalConfig, digits_task, memory_of
    from snn.nas.search import StudySettings
    from snn.nas.space import SearchSpace, build, spikformer_genotype

    space = SearchSpace.from_dict(json.loads(args.space.read_text())) if args.space else SearchSpace()
    budget = args.budget_bytes
    if budget == "spikformer":
        from snn.models import SpikformerConfig

        budget = memory_of(build(spikformer_genotype(SpikformerConfig()), space), space).total_bytes
    data = digits_task(seed=args.data_seed, train_samples=args.train_samples, val_samples=args.val_samples)
    fast = FastEvalConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.train_seed)
    return StudySettings(space=space, budget_bytes=float(budget), fast=fast, data=data.source,
                         energy=args.energy_fn), data


def _config(args, budget: float):
    from snn.nas.search import SearchConfig, default_storage

    return SearchConfig(budget_bytes=budget, n_trials=getattr(args, "trials", 1),
                        storage=args.storage or default_storage(args.out), study_name=args.study,
                        sampler=getattr(args, "sampler", "tpe"), seed=getattr(args, "seed", 0))


def _run(settings, data, config, args, *, create: bool) -> dict:
    import torch

    from snn.nas.search import run_search

    if args.threads:
        torch.set_num_threads(args.threads)
    energy_fn = load_callable(settings.energy) if settings.energy else None
    result = run_search(settings.space, data, config=config, fast=settings.fast, energy_fn=energy_fn,
                        energy_name=settings.energy, create=create, progress=not args.quiet)
    _print(result)
    return result.to_dict()


def _print(result) -> None:
    counts = result.to_dict()["counts"]
    print(f"study {result.study_name}: {counts}; budget {result.budget_bytes:,.0f} bytes")
    for t in sorted(result.pareto(), key=lambda t: t.memory_bytes):
        energy = f", energy {t.energy:.4g}" if t.energy is not None else ""
        print(f"  pareto #{t.number}: val acc {t.val_accuracy:.3f}, {t.memory_bytes:,.0f} B{energy}  [{t.genotype.describe()}]")


def main(argv: list[str] | None = None):
    p = argparse.ArgumentParser(prog="python -m snn.nas", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("search", help="create the study (or resume it) and run trials in this process")
    _add_storage(s, required=False)
    _add_settings(s)
    _add_run(s)
    c = sub.add_parser("create", help="create the study with its settings and run nothing (before starting workers)")
    _add_storage(c, required=False)
    _add_settings(c)
    w = sub.add_parser("worker", help="join an existing study (its stored settings) and run trials until it is complete")
    _add_storage(w, required=True)
    _add_run(w)
    w.add_argument("--energy-fn", default=None, metavar="MODULE:FUNCTION",
                   help="default: the one the study was created with (it must be importable here)")
    r = sub.add_parser("report", help="print the Pareto front of a study; --json writes all trials")
    _add_storage(r, required=True)
    r.add_argument("--json", type=Path, default=None, help="write the whole result (settings, trials, Pareto front) here")
    args = p.parse_args(argv)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from snn.nas.search import load_result, open_study, stored_settings

    if args.cmd in ("search", "create"):
        settings, data = _settings(args)
        config = _config(args, settings.budget_bytes)
        if args.cmd == "create":
            open_study(config, settings, create=True)
            print(f"created study {config.study_name} in {config.storage} (budget {settings.budget_bytes:,.0f} bytes)")
            return settings.to_dict()
        return _run(settings, data, config, args, create=True)
    if args.cmd == "worker":
        from snn.nas.evaluate import task_from_source

        settings = stored_settings(args.storage, args.study)
        if args.energy_fn and args.energy_fn != settings.energy:
            p.error(f"--energy-fn {args.energy_fn} differs from the study's {settings.energy}")
        return _run(settings, task_from_source(settings.data), _config(args, settings.budget_bytes), args, create=False)
    result = load_result(args.storage, args.study)
    _print(result)
    if args.json:
        from tasks.io import atomic_write_json

        atomic_write_json(args.json, result.to_dict())
    return result.to_dict()


if __name__ == "__main__":
    main(sys.argv[1:])
