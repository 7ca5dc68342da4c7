"""``python -m ann.train TASK ...``: training entry points (each also runs under ``torchrun`` with DDP).

Tasks: ``synthmed`` (the MFM on SynthMed-VQA), ``code-lm`` (a small Llama on the standard-library corpus with
SmolLM2's tokenizer). ``python -m ann.train TASK --help`` lists each one's options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# One line per entry point: subcommand -> module with add_arguments(parser) and run(args) -> dict.
ENTRY_POINTS = {"synthmed": "ann.train.synthmed", "code-lm": "ann.train.code"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ann.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="task", required=True, metavar="TASK")
    modules = {}
    for name, module in ENTRY_POINTS.items():
        modules[name] = importlib.import_module(module)
        p = sub.add_parser(name, help=(modules[name].__doc__ or "").strip().splitlines()[0],
                           description=modules[name].__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        modules[name].add_arguments(p)
    args = parser.parse_args(argv)
    metrics = modules[args.task].run(args)
    if metrics:
        summary = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
        print(json.dumps({**summary, "test": metrics.get("test")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
