"""``python -m ann.finetune TASK ...``: fine-tuning entry points (each also runs under ``torchrun`` with DDP).

Tasks: ``smollm2-code`` (LoRA on SmolLM2-135M-Instruct with the standard-library code corpus), ``mfm-shift``
(LoRA adaptation of a trained MFM to shifted SynthMed scans).
``python -m ann.finetune TASK --help`` lists each one's options.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# One line per entry point: subcommand -> module with add_arguments(parser) and run(args) -> dict.
ENTRY_POINTS = {"smollm2-code": "ann.finetune.code", "mfm-shift": "ann.finetune.mfm"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ann.finetune", description=__doc__,
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
        print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
