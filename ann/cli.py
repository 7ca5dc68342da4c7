"""The subcommand shell shared by ``python -m ann.train`` and ``python -m ann.finetune``."""

from __future__ import annotations

import argparse
import importlib
import json
from collections.abc import Mapping


def run_subcommands(*, prog: str, doc: str | None, entry_points: Mapping[str, str], argv: list[str] | None) -> int:
    """Parse ``argv`` as ``TASK [options]`` and run ``entry_points[TASK]``.

    Each entry point is a module with ``add_arguments(parser)`` and ``run(args) -> dict``; the scalar metrics of
    the result (and its ``test`` metrics, if any) are printed as JSON.
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    modules = {}
    for name, module in entry_points.items():
        modules[name] = importlib.import_module(module)
        p = sub.add_parser(name, help=(modules[name].__doc__ or "").strip().splitlines()[0],
                           description=modules[name].__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    metrics = modules[args.task].run(args)
    if metrics:
        summary = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
        if "test" in metrics:
            summary["test"] = metrics["test"]
        print(json.dumps(summary, indent=2))
    return 0
