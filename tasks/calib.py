"""Calibration text of the text tasks, for tools that may not import ``tasks`` (``quant``'s CLI runs this module in
a separate process: ``python -m tasks.calib NAME [--max-bytes N]`` writes the text to stdout).

Names (:data:`TEXT_TASKS`):

- ``stdlib``: the standard-library code corpus, its ``val`` split (never the test split, so calibrating on it
  does not touch what code models are evaluated on), files joined with their path headers;
- ``humaneval``: the HumanEval prompts (signatures and docstrings; no solutions or tests).
"""

from __future__ import annotations

import argparse
import sys

from tasks.code import join_code_files, load_humaneval, load_stdlib_corpus

__all__ = ["TEXT_TASKS", "calibration_text"]

TEXT_TASKS = ("stdlib", "humaneval")


def calibration_text(name: str, *, max_bytes: int = 200_000) -> str:
    """At most ``max_bytes`` UTF-8 bytes of the task's calibration text (cut at a character boundary)."""
    if name not in TEXT_TASKS:
        raise ValueError(f"unknown text task {name!r}; choose one of {TEXT_TASKS}")
    if not (isinstance(max_bytes, int) and max_bytes > 0):
        raise ValueError(f"max_bytes={max_bytes!r} must be a positive int")
    if name == "stdlib":
        text = join_code_files(load_stdlib_corpus("val"))
    else:
        text = "\n".join(p.prompt for p in load_humaneval())
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.calib", description=__doc__.split("\n\n")[0])
    p.add_argument("name", help=f"one of {', '.join(TEXT_TASKS)}")
    p.add_argument("--max-bytes", type=int, default=200_000, help="cap on the UTF-8 bytes written (default 200000)")
    args = p.parse_args(argv)
    try:
        text = calibration_text(args.name, max_bytes=args.max_bytes)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
