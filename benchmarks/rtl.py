"""``python -m benchmarks.rtl [--profile quick|full] [--out DIR]``: the accelerator as RTL (issue [V], first part).

Writes ``results/rtl.json`` (+ ``rtl.md``). For every configuration (array sizes x dataflows os / ws, INT8 operands,
32-bit accumulators, INT8 requantized outputs) the generated Verilog (:mod:`neurohw.rtl`) is simulated with Icarus
Verilog on GEMMs of several shapes (single folds, several folds, edge folds with zero padding; operands drawn at
random over the whole INT8 range, extremes included) and compared with

1. the integer reference (:func:`neurohw.rtl.reference_tile`): bit for bit, and
2. the cycle model of issue [H] (:func:`neurohw.accel.gemm.compute_cycles`, folds one after another): cycle for cycle.

Also per configuration: resource counts read off the generated structure (:func:`neurohw.rtl.generate.resources`),
compile and simulation wall time. Quick: arrays 4x4, 8x8, 16x16; full adds 32x32 (the ``default`` preset's array) and
a non-square 8x16.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from benchmarks.common import Stopwatch, Target, add_common_args, format_table, format_targets, machine_info, versions, write_results

__all__ = ["main"]

ARRAYS = {"quick": ((4, 4), (8, 8), (16, 16)), "full": ((4, 4), (8, 8), (16, 16), (8, 16), (32, 32))}
DATAFLOWS = ("os", "ws")
# (M, K, N): one fold of a 4x4 array, several folds, and the shape of an MFM projection (17 tokens, 96 -> 96)
SHAPES = ((4, 4, 4), (10, 12, 7), (17, 96, 96))
MULT, SHIFT = 37, 14  # a requantization scale of about 37 / 2^14


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rtl", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[rtl] {m}", file=sys.stderr, flush=True))

    from neurohw.accel.gemm import compute_cycles
    from neurohw.rtl import RtlConfig, reference_tile, run_gemm
    from neurohw.rtl.generate import resources

    rng = np.random.default_rng(args.seed)
    rows, configs = [], []
    with Stopwatch() as sw:
        for (R, C) in ARRAYS[args.profile]:
            for df in DATAFLOWS:
                cfg = RtlConfig(rows=R, cols=C, dataflow=df)
                runs = []
                for (M, K, N) in SHAPES:
                    a = rng.integers(-128, 128, (M, K))
                    b = rng.integers(-128, 128, (K, N))
                    a[0, 0] = b[0, 0] = -128
                    t0 = time.perf_counter()
                    run = run_gemm(cfg, a, b, mult=MULT, shift=SHIFT)
                    secs = time.perf_counter() - t0
                    ref = reference_tile(cfg, a, b, mult=MULT, shift=SHIFT)
                    model = compute_cycles(M, N, K, R, C, df, False)
                    r = {"array": f"{R}x{C}", "dataflow": df, "M": M, "K": K, "N": N, "folds": len(run.tile_cycles),
                         "bit_exact": bool(np.array_equal(run.out, ref)), "rtl_cycles": run.cycles, "model_cycles": model,
                         "cycles_agree": run.cycles == model, "sim_seconds": secs}
                    runs.append(r)
                    rows.append(r)
                    log(f"{R}x{C} {df} ({M}, {K}, {N}): exact {r['bit_exact']}, cycles {run.cycles} vs model {model}, "
                        f"{secs:.2f} s")
                configs.append({"rows": R, "cols": C, "dataflow": df, "resources": resources(cfg),
                                "all_bit_exact": all(r["bit_exact"] for r in runs),
                                "all_cycles_agree": all(r["cycles_agree"] for r in runs)})
    sizes = {(c["rows"], c["cols"]) for c in configs if c["all_bit_exact"] and c["all_cycles_agree"]}
    flows = {c["dataflow"] for c in configs if c["all_bit_exact"] and c["all_cycles_agree"]}
    ok = all(c["all_bit_exact"] and c["all_cycles_agree"] for c in configs)
    targets = [Target("configurations_bit_exact_and_cycle_exact", float(ok), "every configuration: 1", ok),
               Target("array_sizes_verified", float(len(sizes)), ">= 3", len(sizes) >= 3),
               Target("dataflows_verified", float(len(flows)), ">= 2", len(flows) >= 2)]
    payload = {"profile": args.profile, "seed": args.seed, "requant": {"mult": MULT, "shift": SHIFT}, "runs": rows,
               "configurations": configs, "targets": [t.to_dict() for t in targets], "wall_seconds": sw.seconds,
               "machine": machine_info(), "versions": versions()}
    headers = ["array", "dataflow", "M", "K", "N", "folds", "bit exact", "RTL cycles", "model cycles", "agree", "sim s"]
    table = [[r["array"], r["dataflow"], r["M"], r["K"], r["N"], r["folds"], r["bit_exact"], r["rtl_cycles"],
              r["model_cycles"], r["cycles_agree"], r["sim_seconds"]] for r in rows]
    res_table = [[f"{c['rows']}x{c['cols']}", c["dataflow"], c["resources"]["multipliers"], c["resources"]["register_bits"],
                  c["resources"]["requant_units"]] for c in configs]
    md = ["# The accelerator as RTL (benchmarks.rtl)", "", f"Profile `{args.profile}`, {sw.seconds:.0f} s, Icarus Verilog.", "",
          format_table(headers, table, markdown=True), "", "## Resources (read off the generated structure)", "",
          format_table(["array", "dataflow", "multipliers", "register bits", "requant units"], res_table, markdown=True), "",
          "## Targets", "", format_targets(targets, markdown=True), ""]
    write_results(args.out, "rtl", payload, markdown="\n".join(md))
    if not args.quiet:
        print(format_table(headers, table))
        print(format_targets(targets))
    return payload


if __name__ == "__main__":
    main()
