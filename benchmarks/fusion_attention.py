"""Long-sequence attention on the CPU: naive vs tiled (FlashAttention-2 in torch) vs SDPA, time and peak memory.

``python -m benchmarks.fusion_attention [--profile quick|full] [--out DIR]`` writes ``DIR/fusion_attention.json``
and ``.png``; :func:`long_sequence_comparison` is also called by :mod:`benchmarks.fusion` (its ``"attention"``).

One layer-like shape per sequence length L: B = 1, h = 8 heads, d = 64, fp32, self-attention without a mask.
For each L:
- time: median seconds of each implementation, called in turn (interleaved, after one warm-up call each) so
  that all three see the same drift of a shared CPU;
- peak memory: each (implementation, L) runs in a fresh Python process, which allocates Q, K, V, warms the
  implementation up on a tiny input, then reads its resident set (VmRSS), resets the kernel's high-water mark
  (``/proc/self/clear_refs`` = 5), runs once and reads the high-water mark again (VmHWM, what
  ``getrusage().ru_maxrss`` reports). Peak extra = VmHWM after - VmRSS before: every page the call touched
  at its peak, output O (B h L d * 4 bytes) included, counted by the kernel rather than by torch's allocator;
  where the reset is not allowed, the figure is marked as not exact (a lower bound if the pre-run peak was higher);
- accuracy: max |O - O_naive| (or vs SDPA where naive is skipped);
- the accelerator model's prediction: DRAM bytes of this attention op (INT8 activations, ``acc_bits`` scores)
  on ``neurohw.accel.PRESETS["default"]``, naive vs flash (``neurohw.accel.map_op``, as for traced models).
Naive is skipped where its scores and probabilities alone (2 B h L^2 * 4 bytes) would exceed 8 GiB.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ann.fusion.attention import IMPLEMENTATIONS, AttentionImpl, tiled_attention
from benchmarks.common import (Stopwatch, add_common_args, format_table, interleaved_medians, machine_info, save_figure,
                               versions, write_results)

__all__ = ["LENGTHS", "long_sequence_comparison", "predicted_dram_bytes", "peak_memory", "main"]

LENGTHS = {"quick": (512, 1024, 2048, 4096), "full": (512, 1024, 2048, 4096, 8192, 16384)}
ROUNDS = {"quick": 3, "full": 5}
NAIVE_LIMIT_BYTES = 8 * 2**30
BLOCK_Q, BLOCK_KV = 256, 512  # tiled_attention's block sizes here (its defaults), stated in the output
_ROOT = Path(__file__).resolve().parents[1]
_IMPLS = (AttentionImpl.NAIVE, AttentionImpl.TILED, AttentionImpl.SDPA)


def _fn(impl: AttentionImpl | str) -> Callable[..., torch.Tensor]:
    impl = AttentionImpl(impl)
    if impl is AttentionImpl.TILED:
        return functools.partial(tiled_attention, block_q=BLOCK_Q, block_kv=BLOCK_KV)
    return IMPLEMENTATIONS[impl]


def naive_score_bytes(batch: int, heads: int, length: int, itemsize: int = 4) -> int:
    """Bytes of S and P of naive attention (both B h L^2)."""
    return 2 * batch * heads * length * length * itemsize


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _probe(impl: str, length: int, heads: int, head_dim: int, threads: int, seed: int) -> dict:
    """Run in a fresh process by :func:`peak_memory` (module docstring)."""
    torch.set_num_threads(threads)
    fn = _fn(impl)
    with torch.no_grad():
        tiny = torch.randn(1, heads, 64, head_dim)
        fn(tiny, tiny, tiny)  # load kernels, thread pools, lazy imports
        g = torch.Generator().manual_seed(seed)
        q, k, v = (torch.randn(1, heads, length, head_dim, generator=g) for _ in range(3))
        del tiny
        gc.collect()
        rss0 = _status_kib("VmRSS")
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            reset = True
        except OSError:
            reset = False
        hwm0 = _status_kib("VmHWM")
        t0 = time.perf_counter()
        out = fn(q, k, v)
        seconds = time.perf_counter() - t0
        hwm1 = _status_kib("VmHWM")
    return {"rss_before_kib": rss0, "hwm_before_kib": hwm0, "hwm_after_kib": hwm1, "peak_reset": reset,
            "exact": reset or hwm1 > hwm0, "peak_extra_bytes": max(0, hwm1 - rss0) * 1024,
            "output_bytes": out.numel() * out.element_size(), "seconds_single_run": seconds}


def peak_memory(impl: AttentionImpl | str, length: int, *, heads: int, head_dim: int, threads: int, seed: int = 0,
                timeout_s: float = 600.0) -> dict:
    """Peak extra resident memory of one call, measured in a fresh process (module docstring)."""
    code = ("import json, sys; from benchmarks.fusion_attention import _probe; "
            "print(json.dumps(_probe(sys.argv[1], *map(int, sys.argv[2:]))))")
    args = [sys.executable, "-c", code, AttentionImpl(impl).value, str(length), str(heads), str(head_dim), str(threads),
            str(seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(_ROOT), os.environ.get("PYTHONPATH")) if p)}
    try:
        r = subprocess.run(args, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"memory probe {impl} L={length} ran over {timeout_s:.0f} s") from None
    if r.returncode != 0:
        raise RuntimeError(f"memory probe {impl} L={length} failed (exit {r.returncode}): {r.stderr.strip()[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def predicted_dram_bytes(length: int, *, heads: int, head_dim: int) -> dict:
    """DRAM bytes (read + write) of one self-attention op on the default accelerator preset, naive vs flash."""
    from neurohw.accel import PRESETS
    from neurohw.accel.model import map_op
    from neurohw.workload.ir import Numeric, Op, OpKind

    op = Op("attention", OpKind.ATTENTION, "sdpa", "sdpa", m=length, k=head_dim, n=length, heads=heads,
            kv_heads=heads, q_len=length, kv_len=length, head_dim=head_dim,
            macs=2.0 * heads * length * length * head_dim, elements=float(heads * length * length), calls=1,
            numeric=Numeric.INT, weight_bits=8, act_bits=8)
    out = {}
    for mode in ("naive", "flash"):
        c = map_op(PRESETS["default"], op, attention=mode)
        out[mode] = c.dram_read_bytes + c.dram_write_bytes
    out["naive_over_flash"] = out["naive"] / out["flash"]
    return out


def _conclusion(rows: list[dict]) -> str:
    def ratio(a, b) -> str:
        return f"{a / b:.2f}x" if a is not None and b else "n/a"

    full = [r for r in rows if r["naive"]["seconds"] is not None]
    parts = []
    if full:
        r = full[-1]
        n, t, s = r["naive"], r["tiled"], r["sdpa"]
        nb, tb, sb = n["peak_extra_bytes"], t["peak_extra_bytes"], s["peak_extra_bytes"]
        parts.append(f"At L={r['length']}, naive attention needed {nb / 2**20:.1f} MiB of extra memory, tiled "
                     f"{tb / 2**20:.1f} MiB (naive/tiled {ratio(nb, tb)}) and SDPA {sb / 2**20:.1f} MiB (naive/SDPA "
                     f"{ratio(nb, sb)}); tiled took {ratio(t['seconds'], n['seconds'])} and SDPA "
                     f"{ratio(s['seconds'], n['seconds'])} naive's time.")
    skipped = [r["length"] for r in rows if r["naive"]["seconds"] is None]
    if skipped:
        parts.append(f"Naive was skipped at L={', '.join(map(str, skipped))} (scores + probabilities > "
                     f"{NAIVE_LIMIT_BYTES / 2**30:g} GiB).")
    last = rows[-1]
    if not full or full[-1] is not last:
        parts.append(f"At L={last['length']}, tiled needed {last['tiled']['peak_extra_bytes'] / 2**20:.1f} MiB and "
                     f"{last['tiled']['seconds']:.2f} s, SDPA {last['sdpa']['peak_extra_bytes'] / 2**20:.1f} MiB and "
                     f"{last['sdpa']['seconds']:.2f} s.")
    parts.append(f"The accelerator model (default preset, INT8) predicts naive attention moves "
                 f"{last['predicted_dram_bytes']['naive_over_flash']:.1f}x the DRAM bytes of flash at "
                 f"L={last['length']}.")
    return " ".join(parts)


def long_sequence_comparison(profile: str, log: Callable[[str], None], *, lengths: Sequence[int] | None = None,
                             heads: int = 8, head_dim: int = 64, threads: int | None = None, seed: int = 0,
                             rounds: int | None = None) -> dict:
    """The comparison of the module docstring; returns ``{"rows", "conclusion", "setup"}`` (JSON-ready)."""
    if profile not in LENGTHS:
        raise ValueError(f"profile must be one of {tuple(LENGTHS)}, got {profile!r}")
    lengths = tuple(lengths) if lengths is not None else LENGTHS[profile]
    rounds = rounds if rounds is not None else ROUNDS[profile]
    threads = threads if threads is not None else torch.get_num_threads()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows = []
    try:
        for length in lengths:
            g = torch.Generator().manual_seed(seed)
            q, k, v = (torch.randn(1, heads, length, head_dim, generator=g) for _ in range(3))
            impls = [i for i in _IMPLS
                     if i is not AttentionImpl.NAIVE or naive_score_bytes(1, heads, length) <= NAIVE_LIMIT_BYTES]
            fns = {i.value: (lambda f=_fn(i): f(q, k, v)) for i in impls}
            with torch.no_grad():
                secs, outs = interleaved_medians(fns, rounds)
            ref = outs.get("naive")
            row: dict = {"length": length}
            for i in _IMPLS:
                name = i.value
                if name not in fns:
                    row[name] = {"seconds": None, "peak_extra_bytes": None, "skipped": "scores > 8 GiB"}
                    continue
                mem = peak_memory(i, length, heads=heads, head_dim=head_dim, threads=threads, seed=seed)
                other = ref if ref is not None else outs["sdpa"]
                row[name] = {"seconds": secs[name], "peak_extra_bytes": mem["peak_extra_bytes"],
                             "memory_exact": mem["exact"], "output_bytes": mem["output_bytes"],
                             "max_abs_diff": float((outs[name] - other).abs().max()),
                             "diff_against": "naive" if ref is not None else "sdpa"}
            row["naive_score_bytes"] = naive_score_bytes(1, heads, length)
            row["predicted_dram_bytes"] = predicted_dram_bytes(length, heads=heads, head_dim=head_dim)
            rows.append(row)
            del q, k, v, outs, ref
            gc.collect()
            log(f"L={length}: " + ", ".join(
                f"{i.value} {row[i.value]['seconds']:.3f} s / {row[i.value]['peak_extra_bytes'] / 2**20:.1f} MiB"
                for i in _IMPLS if row[i.value]["seconds"] is not None))
    finally:
        torch.set_num_threads(prev_threads)
    return {"rows": rows, "conclusion": _conclusion(rows),
            "setup": {"batch": 1, "heads": heads, "head_dim": head_dim, "dtype": "float32", "causal": False,
                      "threads": threads, "rounds": rounds, "seed": seed, "block_q": BLOCK_Q, "block_kv": BLOCK_KV,
                      "naive_limit_bytes": NAIVE_LIMIT_BYTES, "accelerator_preset": "default",
                      "accelerator_bits": {"act": 8, "score": "acc_bits of the preset"},
                      "time": "median of interleaved calls after one warm-up each",
                      "memory": "fresh process per (impl, L): VmHWM after the call - VmRSS before it (output "
                                "included), high-water mark reset through /proc/self/clear_refs"}}


def table(result: dict) -> str:
    rows = []
    for r in result["rows"]:
        cells = [r["length"]]
        for i in _IMPLS:
            x = r[i.value]
            cells += [x["seconds"], None if x["peak_extra_bytes"] is None else x["peak_extra_bytes"] / 2**20]
        p = r["predicted_dram_bytes"]
        cells += [r["tiled"]["max_abs_diff"], p["naive"] / 2**20, p["flash"] / 2**20]
        rows.append(cells)
    return format_table(["L", "naive s", "naive MiB", "tiled s", "tiled MiB", "sdpa s", "sdpa MiB", "tiled |diff|",
                         "accel naive DRAM MiB", "accel flash DRAM MiB"], rows)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ls = [r["length"] for r in result["rows"]]
    for i in _IMPLS:
        pts = [(r["length"], r[i.value]) for r in result["rows"] if r[i.value]["seconds"] is not None]
        axes[0].plot([p[0] for p in pts], [p[1]["seconds"] for p in pts], "o-", label=i.value)
        axes[1].plot([p[0] for p in pts], [p[1]["peak_extra_bytes"] / 2**20 for p in pts], "o-", label=i.value)
    for mode in ("naive", "flash"):
        axes[2].plot(ls, [r["predicted_dram_bytes"][mode] / 2**20 for r in result["rows"]], "o-", label=mode)
    titles = ("CPU time per call (s)", "peak extra memory (MiB)", "accelerator model: DRAM MiB (default, INT8)")
    for ax, t in zip(axes, titles):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length L")
        ax.set_title(t, fontsize=9)
        ax.legend(fontsize=8)
    s = result["setup"]
    fig.suptitle(f"attention, B=1, h={s['heads']}, d={s['head_dim']}, fp32, {s['threads']} thread(s)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fusion_attention", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current setting)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[fusion_attention] {m}", file=sys.stderr, flush=True))
    with Stopwatch() as sw:
        result = long_sequence_comparison(args.profile, log, threads=args.threads, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(result, args.out / "fusion_attention.png")
    text = table(result)
    payload = {**result, "targets": [],
               "targets_note": "issue 11's targets are scored by benchmarks.fusion, which embeds this result",
               "meta": {"benchmark": "fusion_attention", "profile": args.profile, "seed": args.seed,
                        "wall_time_s": sw.seconds, "machine": machine_info(), "versions": versions()}}
    write_results(args.out, "fusion_attention", payload,
                  markdown=f"# fusion_attention ({args.profile})\n\n{format_table(*_md(result), markdown=True)}"
                           f"\n\n{result['conclusion']}\n")
    print(text)
    print(result["conclusion"])
    return payload


def _md(result: dict) -> tuple[list[str], list[list]]:
    headers = ["L", "impl", "seconds", "peak extra MiB", "max abs diff"]
    rows = [[r["length"], i.value, r[i.value]["seconds"],
             None if r[i.value]["peak_extra_bytes"] is None else r[i.value]["peak_extra_bytes"] / 2**20,
             r[i.value].get("max_abs_diff")] for r in result["rows"] for i in _IMPLS]
    return headers, rows


if __name__ == "__main__":
    main()
