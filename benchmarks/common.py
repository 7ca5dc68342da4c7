"""What every benchmark shares: CLI options, machine/version metadata, targets, tables and result files."""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tasks.io import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = ["PROFILES", "add_common_args", "machine_info", "versions", "Target", "format_table", "format_targets", "write_results", "save_figure", "Stopwatch", "interleaved_medians"]

PROFILES = ("quick", "full")


def add_common_args(parser: argparse.ArgumentParser, *, default_seed: int = 0) -> None:
    """``--profile quick|full``, ``--out DIR`` and ``--seed`` (the options every benchmark takes)."""
    parser.add_argument("--profile", choices=PROFILES, default="quick", help="quick: about 10 minutes or less on 2 cores; full: every setting")
    parser.add_argument("--out", type=Path, default=Path("results"), help="folder for the JSON/Markdown/PNG results (default: results/)")
    parser.add_argument("--seed", type=int, default=default_seed, help=f"random seed (default {default_seed})")


MODELS_CACHE = Path(".cache/neuromfm/models")
"""Where benchmarks.models caches trained models (one folder per model, keyed by its arguments and code)."""


def add_cache_dir_arg(parser: argparse.ArgumentParser, what: str) -> None:
    """``--cache-dir`` (default :data:`MODELS_CACHE`); ``what``: what the benchmark keeps there, for the help."""
    parser.add_argument("--cache-dir", type=Path, default=MODELS_CACHE, help=what)


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
    }


def versions(*packages: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for p in ("neuromfm", "torch", "numpy", *packages):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            out[p] = None
    return out


@dataclass(frozen=True)
class Target:
    """One target the issue names, judged from what the run measured."""

    name: str
    measured: float
    goal: str
    met: bool
    profile_only: str | None = None  # "full" when only the full profile checks it

    def to_dict(self) -> dict:
        d = {"name": self.name, "measured": self.measured, "goal": self.goal, "met": bool(self.met)}
        if self.profile_only:
            d["profile_only"] = self.profile_only
        return d


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) >= 1e4 or abs(v) < 1e-3:
            return f"{v:.3g}"
        return f"{v:.4g}"
    return str(v)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, markdown: bool = False) -> str:
    """A plain-text (aligned) or Markdown table."""
    cells = [[_fmt(v) for v in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    return "\n".join([line, sep, *body])


def format_targets(targets: Sequence[Target], *, markdown: bool = False) -> str:
    """One line per target: what was measured, the goal, and whether it was met."""
    if markdown:
        return "\n".join(f"- target `{t.name}`: measured {t.measured:.4g}, goal {t.goal}: {'met' if t.met else 'NOT met'}" for t in targets)
    return "\n".join(f"target {t.name}: measured {t.measured:.4g}, goal {t.goal} -> {'met' if t.met else 'NOT MET'}" for t in targets)


def write_results(out_dir: Path, name: str, payload: dict, *, markdown: str | None = None) -> Path:
    """Write ``out_dir/<name>.json`` (and ``<name>.md``) atomically; returns the JSON path."""
    path = atomic_write_json(Path(out_dir) / f"{name}.json", payload)
    if markdown is not None:
        atomic_write_text(Path(out_dir) / f"{name}.md", markdown)
    return path


def save_figure(fig, path: Path, *, dpi: int = 120) -> Path:
    """Write a matplotlib figure as PNG atomically (rendered in memory, then one atomic write) and close it."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


class Stopwatch:
    """``with Stopwatch() as sw: ...``; ``sw.seconds`` afterwards."""

    def __enter__(self) -> "Stopwatch":
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


def interleaved_medians(fns: dict, repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds per callable over ``repeats`` rounds, after one warm-up call each, and each one's warm-up
    output. Every round calls all of them, starting at a rotating position, so all see the same drift of a shared
    machine."""
    import statistics

    outs = {k: f() for k, f in fns.items()}
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}, outs
