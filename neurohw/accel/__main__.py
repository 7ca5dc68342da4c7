"""The accelerator's command line.

``python -m neurohw.accel gemm --m M --n N --k K --rows R --cols C --dataflow os|ws|is [--overlap]`` prints one
JSON object: cycles (compute, memory, total), SRAM reads/writes and DRAM reads/writes per operand, energy
(total and MAC / SRAM / DRAM) and utilization of one GEMM on the configured systolic array.

``python -m neurohw.accel dse CHECKPOINT_OR_NAME --area-mm2 A --power-w P --evals N [--llm-dir DIR | --llm-url URL]``
searches the design space for that workload (:mod:`neurohw.accel.dse`).

``python -m neurohw.accel model CHECKPOINT_OR_NAME`` traces a model (a reference name such as ``vit-b16`` or
``smollm2-135m``, a local HF folder, or a workload IR JSON file), maps it (:mod:`neurohw.accel.model`) and
prints the per-op table and the totals; ``--json PATH`` writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

from neurohw.accel.config import PRESETS, AcceleratorConfig, Dataflow
from neurohw.accel.gemm import map_gemm
from neurohw.io import atomic_write_json


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="expert design point to start from")
    p.add_argument("--rows", type=int, help="systolic array rows R")
    p.add_argument("--cols", type=int, help="systolic array columns C")
    p.add_argument("--dataflow", choices=[d.value for d in Dataflow], help="os, ws or is")
    p.add_argument("--overlap", action="store_true", default=None, help="pipeline consecutive folds")
    p.add_argument("--no-double-buffer", dest="double_buffer", action="store_false", default=None,
                   help="DRAM transfers do not overlap compute")
    for name in ("ifmap_sram_kb", "weight_sram_kb", "ofmap_sram_kb", "dram_bytes_per_cycle", "clock_mhz", "node_nm", "vdd"):
        p.add_argument("--" + name.replace("_", "-"), type=float, dest=name)
    p.add_argument("--mac-bits", type=int, dest="mac_bits")


def config_from_args(args: argparse.Namespace) -> AcceleratorConfig:
    """The preset with every given option replaced (validated by :class:`AcceleratorConfig`)."""
    names = {f.name for f in fields(AcceleratorConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if args.overlap is not None:
        given["overlap_folds"] = args.overlap
    return replace(PRESETS[args.preset], **given)


def load_workload(source: str, *, seq_len: int, decode: int, image_size: int | None, import_modules: tuple[str, ...],
                  bits: int):
    """A workload IR from a JSON file, or traced from a reference name / HF folder at ``bits``-bit integers."""
    from neurohw.workload import Numeric, Workload
    from neurohw.workload.reference import trace_hf

    path = Path(source)
    if path.suffix == ".json" and path.is_file():
        w = Workload.from_dict(json.loads(path.read_text()))
    else:
        w = trace_hf(source, seq_len=seq_len, decode=decode, image_size=image_size, import_modules=import_modules)
    return w.with_precision(numeric=Numeric.INT, weight_bits=bits, act_bits=bits)


def _workload_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="CHECKPOINT_OR_NAME",
                   help="reference name (vit-b16, smollm2-135m), local HF folder, or workload IR JSON file")
    p.add_argument("--seq-len", type=int, default=128, help="text tokens (the prompt when decoding; default 128)")
    p.add_argument("--decode", type=int, default=0, metavar="N", help="causal LMs: trace greedy decoding of N tokens")
    p.add_argument("--image-size", type=int, help="image side for vision models (default: the config's)")
    p.add_argument("--import", dest="import_modules", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (registers custom model types with transformers, e.g. ann.models.mfm)")
    p.add_argument("--bits", type=int, default=8, help="integer weight / activation bits of the deployment (default 8)")
    p.add_argument("--attention", choices=["flash", "naive"], default="flash", help="attention mapping (default flash)")
    p.add_argument("--no-fuse", dest="fuse", action="store_false", help="layer-by-layer baseline: no fusion")


def _load(args: argparse.Namespace):
    return load_workload(args.source, seq_len=args.seq_len, decode=args.decode, image_size=args.image_size,
                         import_modules=tuple(args.import_modules), bits=args.bits)


def format_table(cost, top: int) -> str:
    """The per-op table (the ``top`` ops by cycles, in call order; 0: all) and the totals."""
    ops = list(cost.ops)
    shown = ops if top <= 0 or top >= len(ops) else sorted(sorted(ops, key=lambda o: -o.cycles)[:top], key=ops.index)
    head = f"{'op':<48} {'kind':<11} {'unit':<20} {'cycles':>11} {'bound':>7} {'DRAM MB':>9} {'E comp uJ':>10} {'E SRAM uJ':>10} {'E DRAM uJ':>10} {'util':>5}"
    lines = [head, "-" * len(head)]
    for o in shown:
        e = o.energy_pj
        lines.append(f"{o.name[-48:]:<48} {o.kind:<11} {o.unit[:20]:<20} {o.cycles:>11.4g} {o.bound:>7} "
                     f"{(o.dram_read_bytes + o.dram_write_bytes) / 1e6:>9.3f} {e['compute'] / 1e6:>10.3f} {e['sram'] / 1e6:>10.3f} "
                     f"{e['dram'] / 1e6:>10.3f} {o.utilization:>5.2f}")
    if len(shown) < len(ops):
        lines.append(f"... {len(ops) - len(shown)} more ops (--top 0 prints all)")
    s = cost.summary()
    e = s["energy_pj"]
    lines += ["-" * len(head),
              f"{cost.model}: {s['ops']} ops, {s['cycles']:.4g} cycles = {s['latency_s'] * 1e3:.3f} ms at {cost.config.clock_mhz:g} MHz, "
              f"utilization {s['utilization']:.3f}, DRAM {s['dram_bytes'] / 1e6:.2f} MB",
              f"energy {e['total'] / 1e6:.2f} uJ = compute {e['compute'] / 1e6:.2f} + SRAM {e['sram'] / 1e6:.2f} + DRAM {e['dram'] / 1e6:.2f} "
              f"(data movement {100 * e['data_movement'] / e['total']:.1f} %); attention {cost.attention}, fusion {'on' if cost.fuse else 'off'}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m neurohw.accel", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gemm", help="one GEMM C[M,N] = A[M,K] @ B[K,N]")
    for d in ("m", "n", "k"):
        g.add_argument(f"--{d}", type=int, required=True)
    g.add_argument("--a-bits", type=int, help="bits of A in memory (default: mac bits)")
    g.add_argument("--b-bits", type=int, help="bits of B in memory (default: mac bits)")
    _config_args(g)
    mo = sub.add_parser("model", help="map a whole model: per-op table and totals")
    _workload_args(mo)
    mo.add_argument("--top", type=int, default=50, help="print the N ops with the most cycles (0: all; default 50)")
    mo.add_argument("--json", type=Path, help="write the summary and the full per-op table to this JSON file")
    _config_args(mo)
    from neurohw.accel.dse import add_dse_subcommand, run_dse_command

    _workload_args(add_dse_subcommand(sub))
    args = p.parse_args(argv)
    try:
        if args.command == "dse":
            from neurohw.accel.model import workload_cost_fn

            w = _load(args)
            return run_dse_command(args, cost_fn=workload_cost_fn(w, attention=args.attention, fuse=args.fuse))
        cfg = config_from_args(args)
        if args.command == "gemm":
            out = {"config": cfg.to_dict(), **map_gemm(cfg, args.m, args.n, args.k, a_bits=args.a_bits, b_bits=args.b_bits).to_dict()}
            print(json.dumps(out, indent=2))
            return out
        from neurohw.accel.model import map_workload

        w = _load(args)
        t0 = time.perf_counter()
        cost = map_workload(cfg, w, attention=args.attention, fuse=args.fuse)
        map_s = time.perf_counter() - t0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        p.exit(2, f"python -m neurohw.accel: error: {e}\n")
    print(format_table(cost, args.top))
    print(f"(mapped in {map_s:.3f} s)")
    out = {**cost.to_dict(), "mapping_wall_s": map_s, "untraced": list(w.untraced)}
    if args.json:
        atomic_write_json(args.json, out)
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
