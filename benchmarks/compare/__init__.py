"""``python -m benchmarks.compare ann snn``: every variant of both tracks on one yardstick, per task.

Each row (:data:`ROWS`, ids like ``digits/snn-quant``) trains or loads its model (checkpoints cached under
``--cache-dir``, keyed by a hash of their config: a changed config retrains) and is measured the same way
(:mod:`benchmarks.compare.core`): quality on the task's test split, parameters, memory (weights + state at their
widths), CPU latency, the simulated accelerator's cycles, latency and energy (compute vs data movement), Loihi
energy and time for spiking rows that deploy, firing rate and timesteps. A row that fails is reported in the table
with its error; the others stand.

Writes ``OUT/compare.json`` (rows + meta + targets), ``OUT/compare.md`` (the table, notes, errors, the commands
that reproduce each row) and two plots: ``OUT/compare.png`` (quality vs accelerator energy per task, Pareto front)
and ``OUT/compare_energy.png`` (energy per inference split into compute and data movement).
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import sys
import traceback
from pathlib import Path

import torch

from benchmarks.common import Stopwatch, Target, add_common_args, format_targets, machine_info, versions, write_results
from benchmarks.compare.core import Context, Measured, RowSpec, finish_row
from benchmarks.compare.code import ROWS as CODE_ROWS
from benchmarks.compare.digits import ROWS as DIGITS_ROWS
from benchmarks.compare.synthmed import ROWS as SYNTHMED_ROWS

__all__ = ["main", "parse_args", "ROWS", "TASKS", "TRACKS"]

TRACKS = ("ann", "snn")
ROWS: list[RowSpec] = [*DIGITS_ROWS, *SYNTHMED_ROWS, *CODE_ROWS]
TASKS = tuple(dict.fromkeys(r.task for r in ROWS))
LATENCY_REPEATS = {"quick": 3, "full": 5}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    rows = "\n".join(f"  {r.id:<24} {r.description}" for r in ROWS)
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"rows:\n{rows}\n\nexample: python -m benchmarks.compare ann snn --only 'digits/*'")
    p.add_argument("tracks", nargs="+", choices=TRACKS, metavar="TRACK", help=f"one or more of {', '.join(TRACKS)}")
    p.add_argument("--task", action="append", choices=TASKS, help="task to run (repeatable; default: all)")
    p.add_argument("--only", action="append", metavar="PATTERN",
                   help="run only the rows whose id matches this shell pattern (repeatable), e.g. 'digits/snn-*'")
    add_common_args(p)
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/neuromfm/compare"),
                   help="where trained checkpoints are cached, keyed by a hash of their config")
    p.add_argument("--quiet", action="store_true", help="no progress messages or bars")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch threads for the whole run (default: torch's); 1 keeps the CPU-latency column steadier "
                        "when other jobs share the cores")
    args = p.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads {args.threads} is invalid: use an int >= 1")
    if args.only:
        unknown = [pat for pat in args.only if not any(fnmatch.fnmatch(r.id, pat) for r in ROWS)]
        if unknown:
            p.error(f"--only {unknown[0]!r} matches no row; the rows are: {', '.join(r.id for r in ROWS)}")
    return args


def select(args: argparse.Namespace) -> list[RowSpec]:
    tasks = args.task or TASKS
    return [r for r in ROWS if r.task in tasks and r.track in args.tracks
            and (not args.only or any(fnmatch.fnmatch(r.id, pat) for pat in args.only))]


def run_rows(specs: list[RowSpec], ctx: Context) -> tuple[list[dict], list[dict]]:
    """Every row of ``specs``; a failing row becomes a row with its error (and a traceback in the second list)."""
    from tqdm import tqdm

    rows, failures = [], []
    bar = tqdm(specs, desc="compare", unit="row", disable=not ctx.progress, file=sys.stderr)
    for spec in bar:
        bar.set_postfix_str(spec.id)
        try:
            with Stopwatch() as sw:
                got = spec.build(ctx)
                done = [finish_row(m) for m in (got if isinstance(got, list) else [got])]
            for r in done:
                r.update(id=spec.id, seconds=sw.seconds / len(done))
            rows += done
        except Exception as e:  # noqa: BLE001 - one row's failure is reported, the others stand
            ctx.log(f"{spec.id} FAILED: {type(e).__name__}: {e}")
            rows.append({"id": spec.id, "task": spec.task, "track": spec.track, "variant": spec.description,
                         "error": f"{type(e).__name__}: {e}"})
            failures.append({"id": spec.id, "traceback": traceback.format_exc()})
    return rows, failures


def main(argv: list[str] | None = None) -> dict:
    from benchmarks.compare.report import markdown, plot_energy, plot_pareto, text_table

    args = parse_args(argv)
    args.tracks = tuple(dict.fromkeys(args.tracks))
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[compare] {m}", file=sys.stderr, flush=True))
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    ctx = Context(profile=args.profile, seed=args.seed, cache_dir=args.cache_dir, log=log, progress=not args.quiet,
                  latency_repeats=LATENCY_REPEATS[args.profile])
    specs = select(args)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if args.quiet:  # transformers' own bars too ("Loading weights")
        hf_logging.disable_progress_bar()
    try:
        with Stopwatch() as sw:
            rows, failures = run_rows(specs, ctx)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    targets = _targets(rows, sw.seconds, args, ctx.trained)
    cmd = "python -m benchmarks.compare " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"rows": rows,
               "meta": {"benchmark": "compare", "command": cmd, "tracks": list(args.tracks), "rows_selected": [s.id for s in specs],
                        "profile": args.profile, "seed": args.seed, "wall_time_s": sw.seconds, "failures": failures,
                        "trained_this_run": ctx.trained, "cache_dir": str(args.cache_dir),
                        "torch_threads": torch.get_num_threads(), "load_average": list(os.getloadavg()),
                        "machine": machine_info(), "versions": versions("spikingjelly", "safetensors", "transformers")},
               "targets": [t.to_dict() for t in targets]}
    path = write_results(args.out, "compare", payload, markdown=markdown(payload, targets))
    ok = [r for r in rows if not r.get("error")]
    if ok:
        plot_pareto(ok, args.out / "compare.png")
        plot_energy(ok, args.out / "compare_energy.png")
    print(text_table(rows))
    print(format_targets(targets))
    print(f"wrote {path}, {args.out / 'compare.md'}" + (f", {args.out / 'compare.png'}, {args.out / 'compare_energy.png'}" if ok else ""))
    return payload


def _targets(rows: list[dict], seconds: float, args, trained: list[str]) -> list[Target]:
    out = []
    ann = next((r for r in rows if r["id"] == "digits/ann-fp32" and not r.get("error")), None)
    if ann is not None:
        out.append(Target("digits_ann_test_accuracy", ann["quality"], ">= 0.95", ann["quality"] >= 0.95))
    failed = [r["id"] for r in rows if r.get("error")]
    out.append(Target("rows_failed", float(len(failed)), "0" + (f" (failed: {', '.join(failed)})" if failed else ""),
                      not failed))
    if args.profile == "quick" and not args.only and not args.task and not trained:
        out.append(Target("compare_wall_time_s", seconds, "<= 600 (quick profile, all rows, checkpoints cached, 2 cores)",
                          seconds <= 600))
    return out


__all__ += ["Measured", "RowSpec", "Context"]
