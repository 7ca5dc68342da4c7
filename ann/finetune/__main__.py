"""``python -m ann.finetune TASK ...``: fine-tuning entry points (each also runs under ``torchrun`` with DDP).

Tasks: ``smollm2-code`` (LoRA on SmolLM2-135M-Instruct with the standard-library code corpus), ``mfm-shift``
(LoRA adaptation of a trained MFM to shifted SynthMed scans).
``python -m ann.finetune TASK --help`` lists each one's options.
"""

from __future__ import annotations

import sys

from ann.cli import run_subcommands

# One line per entry point: subcommand -> module with add_arguments(parser) and run(args) -> dict.
ENTRY_POINTS = {"smollm2-code": "ann.finetune.code", "mfm-shift": "ann.finetune.mfm"}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands(prog="python -m ann.finetune", doc=__doc__, entry_points=ENTRY_POINTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
