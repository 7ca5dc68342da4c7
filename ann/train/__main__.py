"""``python -m ann.train TASK ...``: training entry points (each also runs under ``torchrun`` with DDP).

Tasks: ``synthmed`` (the MFM on SynthMed-VQA), ``code-lm`` (a small Llama on the standard-library corpus with
SmolLM2's tokenizer). ``python -m ann.train TASK --help`` lists each one's options.
"""

from __future__ import annotations

import sys

from ann.cli import run_subcommands

# One line per entry point: subcommand -> module with add_arguments(parser) and run(args) -> dict.
ENTRY_POINTS = {"synthmed": "ann.train.synthmed", "code-lm": "ann.train.code"}


def main(argv: list[str] | None = None) -> int:
    return run_subcommands(prog="python -m ann.train", doc=__doc__, entry_points=ENTRY_POINTS, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
