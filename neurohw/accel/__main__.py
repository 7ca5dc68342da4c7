"""``python -m neurohw.accel gemm --m M --n N --k K --rows R --cols C --dataflow os|ws|is [--overlap]``.

Prints one JSON object: cycles (compute, memory, total), SRAM reads/writes and DRAM reads/writes per operand,
energy (total and MAC / SRAM / DRAM) and utilization of one GEMM on the configured systolic array.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace

from neurohw.accel.config import PRESETS, AcceleratorConfig, Dataflow
from neurohw.accel.gemm import map_gemm


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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m neurohw.accel", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("gemm", help="one GEMM C[M,N] = A[M,K] @ B[K,N]")
    for d in ("m", "n", "k"):
        g.add_argument(f"--{d}", type=int, required=True)
    g.add_argument("--a-bits", type=int, help="bits of A in memory (default: mac bits)")
    g.add_argument("--b-bits", type=int, help="bits of B in memory (default: mac bits)")
    _config_args(g)
    args = p.parse_args(argv)
    try:
        cfg = config_from_args(args)
        out = {"config": cfg.to_dict(), **map_gemm(cfg, args.m, args.n, args.k, a_bits=args.a_bits, b_bits=args.b_bits).to_dict()}
    except ValueError as e:
        p.exit(2, f"python -m neurohw.accel: error: {e}\n")
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
