"""``python -m benchmarks.rtl [--profile quick|full] [--out DIR]``: the accelerator as RTL (issue [V]).

Writes ``results/rtl.json`` (+ ``rtl.md``). For every configuration (array sizes x dataflows os / ws, INT8 operands,
32-bit accumulators, INT8 requantized outputs) the generated Verilog (:mod:`neurohw.rtl`) is simulated with Icarus
Verilog on GEMMs of several shapes (single folds, several folds, edge folds with zero padding; operands drawn at
random over the whole INT8 range, extremes included) and compared with

1. the integer reference (:func:`neurohw.rtl.reference_tile`): bit for bit, and
2. the cycle model of issue [H] (:func:`neurohw.accel.gemm.compute_cycles`, folds one after another): cycle for cycle.

Also per configuration: resource counts read off the generated structure (:func:`neurohw.rtl.generate.resources`)
and yosys' word-level statistics of the elaborated RTL (:func:`neurohw.rtl.synth.yosys_stat`: multipliers, flip-flop
bits, cells), compile and simulation wall time. The LLM-aided path (:func:`run_dse_loop`, ``--no-llm`` leaves it out): the DSE of
issue [H] with SmolLM2-135M-Instruct proposes a design, which is generated and simulated the same way; the report
says how many of the evaluated designs came from the LLM and whether the chosen one verified. Quick: arrays 4x4, 8x8,
16x16; full adds 32x32 (the ``default`` preset's array) and a non-square 8x16.

The vector units (:mod:`neurohw.rtl.vector`: I-BERT's integer softmax, GELU and LayerNorm) run under cocotb test
benches on rows shaped like the MFM's (:data:`VECTOR_SHAPES`; GELU, elementwise, streams the tensor split evenly
over the lanes), with 4 and 8 lanes (full: also 16), against their
integer reference (bit for bit), their stated cycles (cycle for cycle; the gap to the cycle model's pass count is
reported), and the float functions (error in output steps).
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
LLM_EVALS = {"quick": 6, "full": 12}  # designs the LLM-aided DSE evaluates before its best one becomes RTL
# the vector units: lanes per profile, and (rows, n) of the MFM's functions: softmax over 17 keys for 4 heads x 17
# queries, GELU over the 384-wide MLP of 17 tokens, LayerNorm over 96 features of 17 tokens
VECTOR_LANES = {"quick": (4, 8), "full": (4, 8, 16)}
VECTOR_SHAPES = {"softmax": (68, 17), "gelu": (17, 384), "layernorm": (17, 96)}


def verify(cfg, rng, log) -> tuple[list[dict], dict]:
    """Simulate every GEMM of :data:`SHAPES` on ``cfg``; the per-GEMM rows and the configuration's summary."""
    from neurohw.accel.gemm import compute_cycles
    from neurohw.rtl import reference_tile, run_gemm
    from neurohw.rtl.generate import resources

    runs = []
    for (M, K, N) in SHAPES:
        a = rng.integers(-128, 128, (M, K))
        b = rng.integers(-128, 128, (K, N))
        a[0, 0] = b[0, 0] = -128
        t0 = time.perf_counter()
        run = run_gemm(cfg, a, b, mult=MULT, shift=SHIFT)
        secs = time.perf_counter() - t0
        ref = reference_tile(cfg, a, b, mult=MULT, shift=SHIFT)
        model = compute_cycles(M, N, K, cfg.rows, cfg.cols, cfg.dataflow, False)
        r = {"array": f"{cfg.rows}x{cfg.cols}", "dataflow": cfg.dataflow, "M": M, "K": K, "N": N,
             "folds": len(run.tile_cycles), "bit_exact": bool(np.array_equal(run.out, ref)), "rtl_cycles": run.cycles,
             "model_cycles": model, "cycles_agree": run.cycles == model, "sim_seconds": secs}
        runs.append(r)
        log(f"{r['array']} {cfg.dataflow} ({M}, {K}, {N}): exact {r['bit_exact']}, cycles {run.cycles} vs model {model}, "
            f"{secs:.2f} s")
    return runs, {"rows": cfg.rows, "cols": cfg.cols, "dataflow": cfg.dataflow, "resources": resources(cfg),
                  "yosys": _yosys(cfg, log),
                  "all_bit_exact": all(r["bit_exact"] for r in runs), "all_cycles_agree": all(r["cycles_agree"] for r in runs)}


def _yosys(cfg, log) -> dict | None:
    """yosys' word-level counts (:func:`neurohw.rtl.synth.yosys_stat`), or None without yosys (said once in the log)."""
    from neurohw.rtl.synth import YosysMissing, yosys_stat

    try:
        s = yosys_stat(cfg)
    except YosysMissing as e:
        log(str(e))
        return None
    return {k: s[k] for k in ("cells", "multipliers", "multipliers_by_width", "flipflop_bits")}


def _unit_case(unit: str, rows: int, n: int, rng):
    """Inputs drawn like the MFM's (logits N(0, 2^2), pre-activations N(0, 1.5^2), residual stream N(0.3, 2^2)) on a
    16-bit grid, the unit's constants, and the float function they approximate."""
    from scipy.special import erf

    from neurohw.rtl import vector as v

    if unit == "softmax":
        s = 1 / 1024
        x = np.clip(np.round(rng.normal(0, 2, (rows, n)) / s), -32768, 32767).astype(np.int64)
        xf = x * s
        f = np.exp(xf - xf.max(1, keepdims=True))
        return x, v.softmax_constants(s), f / f.sum(1, keepdims=True), 1 / 256
    if unit == "gelu":
        s = 1 / 1024
        x = np.clip(np.round(rng.normal(0, 1.5, (rows, n)) / s), -32768, 32767).astype(np.int64)
        xf = x * s
        f = 0.5 * xf * (1 + erf(xf / np.sqrt(2)))
        out_scale = float(np.abs(f).max()) / 127
        return x, v.gelu_constants(s, out_scale), f, out_scale
    s = 1 / 512
    x = np.clip(np.round(rng.normal(0.3, 2, (rows, n)) / s), -32768, 32767).astype(np.int64)
    gamma, beta = rng.normal(1, 0.2, n), rng.normal(0, 0.2, n)
    xf = x * s
    f = gamma * (xf - xf.mean(1, keepdims=True)) / np.sqrt(xf.var(1, keepdims=True) + 1e-5) + beta
    out_scale = float(np.abs(f).max()) / 127
    return x, v.layernorm_constants(gamma, beta, s, out_scale), f, out_scale


def verify_units(lanes: int, rng, log) -> list[dict]:
    """Simulate the softmax, GELU and LayerNorm units of ``lanes`` lanes (cocotb benches) on :data:`VECTOR_SHAPES`."""
    from neurohw.rtl import vector as v
    from neurohw.rtl.vector_sim import run_vector

    cfg = v.VectorConfig(lanes=lanes)
    out = []
    for unit, (rows, n) in VECTOR_SHAPES.items():
        x, k, f, step = _unit_case(unit, rows, n, rng)
        if unit == "gelu":  # elementwise: the tensor streams through the lanes as one flat sequence each
            x, f = x.reshape(lanes, -1), f.reshape(lanes, -1)
            rows, n = x.shape
        t0 = time.perf_counter()
        run = run_vector(unit, cfg, x, k)
        secs = time.perf_counter() - t0
        ref = {"softmax": v.softmax_int, "gelu": v.gelu_int, "layernorm": v.layernorm_int}[unit](x, k, cfg)
        got = run.out / 2 ** cfg.out_bits if unit == "softmax" else run.out * step
        r = {"unit": unit, "lanes": lanes, "rows": rows, "n": n, "bit_exact": bool(np.array_equal(run.out, ref)),
             "rtl_cycles": run.cycles, "stated_cycles": v.rtl_cycles(unit, n, rows, lanes),
             "model_cycles": v.model_cycles(unit, n, rows, lanes), "row_overhead": v.ROW_OVERHEAD[unit],
             "max_error_vs_float_steps": float(np.abs(got - f).max() / step), "sim_seconds": secs,
             "yosys": _yosys_unit(unit, cfg, log)}
        r["cycles_as_stated"] = r["rtl_cycles"] == r["stated_cycles"]
        out.append(r)
        log(f"{unit} x{lanes} ({rows} rows of {n}): exact {r['bit_exact']}, cycles {run.cycles} (stated "
            f"{r['stated_cycles']}, model {r['model_cycles']}), error {r['max_error_vs_float_steps']:.2f} steps, {secs:.1f} s")
    return out


def _yosys_unit(unit, cfg, log) -> dict | None:
    from neurohw.rtl.synth import YosysMissing, yosys_stat_vector

    try:
        s = yosys_stat_vector(unit, cfg)
    except YosysMissing as e:
        log(str(e))
        return None
    return {k: s[k] for k in ("cells", "multipliers", "multipliers_by_width", "dividers", "flipflop_bits")}


def run_dse_loop(seed: int, n_evals: int, client, rng, log) -> dict:
    """The LLM-aided path: the DSE of issue [H] (:func:`neurohw.accel.llm.run_llm`, SmolLM2-135M-Instruct offline
    unless ``client`` is given) proposes a design for the GEMMs of :data:`SHAPES` in the part of the design space the
    generator produces (arrays up to 32 x 32, dataflows os / ws, folds not overlapped: the RTL runs them one after
    another); the best design becomes RTL (:func:`neurohw.rtl.from_accelerator`) and is simulated like the sweep."""
    from neurohw.accel import AcceleratorConfig
    from neurohw.accel.dse import Budget, DesignSpace, gemm_cost_fn
    from neurohw.accel.llm import HFLocalClient, run_llm
    from neurohw.accel.space import DEFAULT_CHOICES, DEFAULT_FIXED
    from neurohw.rtl import RtlConfigError, from_accelerator

    choices = {k: v for k, v in DEFAULT_CHOICES.items() if k != "overlap_folds"}
    space = DesignSpace(choices={**choices, "rows": (4, 8, 16, 32), "cols": (4, 8, 16, 32), "dataflow": ("os", "ws")},
                        fixed={**DEFAULT_FIXED, "overlap_folds": False})
    if client is None:
        from ann.models.smollm2 import load_smollm2

        model, tok = load_smollm2(progress=False)
        client = HFLocalClient(model=model, tokenizer=tok, max_new_tokens=96, temperature=0.7, seed=seed, prefill="{")
    log(f"LLM-aided DSE: {n_evals} evaluations")
    res = run_llm(space, gemm_cost_fn([(m, n, k) for m, k, n in SHAPES]), Budget(area_mm2=20.0, power_w=5.0), client,
                  n_evals=n_evals, seed=seed, max_retries=1)
    out = {"dse": res.to_dict(with_trials=False), "n_evals": n_evals}
    if res.best is None:
        out["outcome"] = "the DSE found no design within the budget; nothing to generate"
        return out
    best = AcceleratorConfig(**res.best.config)
    out["chosen_design_source"] = res.best.source  # who proposed the design that was chosen
    try:
        cfg = from_accelerator(best)
    except RtlConfigError as e:
        out["outcome"] = f"the generator refused the chosen design: {e}"
        return out
    runs, config = verify(cfg, rng, log)
    ok = config["all_bit_exact"] and config["all_cycles_agree"]
    out.update(runs=runs, configuration=config, verified=ok,
               outcome=f"{cfg.rows}x{cfg.cols} {cfg.dataflow}: generated and simulated, "
                       f"{'bit-exact and cycle-exact' if ok else 'MISMATCH'} on {len(runs)} GEMMs")
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.rtl", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--no-llm", dest="llm", action="store_false",
                   help="leave out the LLM-aided loop (SmolLM2-135M proposes a design on the CPU: a minute or two)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[rtl] {m}", file=sys.stderr, flush=True))

    from neurohw.rtl import RtlConfig

    rng = np.random.default_rng(args.seed)
    rows, configs = [], []
    with Stopwatch() as sw:
        for (R, C) in ARRAYS[args.profile]:
            for df in DATAFLOWS:
                runs, config = verify(RtlConfig(rows=R, cols=C, dataflow=df), rng, log)
                rows += runs
                configs.append(config)
        units = [r for lanes in VECTOR_LANES[args.profile] for r in verify_units(lanes, rng, log)]
        loop = None if not args.llm else run_dse_loop(args.seed, LLM_EVALS[args.profile], None, rng, log)
    sizes = {(c["rows"], c["cols"]) for c in configs if c["all_bit_exact"] and c["all_cycles_agree"]}
    flows = {c["dataflow"] for c in configs if c["all_bit_exact"] and c["all_cycles_agree"]}
    ok = all(c["all_bit_exact"] and c["all_cycles_agree"] for c in configs)
    targets = [Target("configurations_bit_exact_and_cycle_exact", float(ok), "every configuration: 1", ok),
               Target("array_sizes_verified", float(len(sizes)), ">= 3", len(sizes) >= 3),
               Target("dataflows_verified", float(len(flows)), ">= 2", len(flows) >= 2)]
    units_ok = all(u["bit_exact"] and u["cycles_as_stated"] for u in units)
    targets.append(Target("vector_units_bit_exact_and_cycles_as_stated", float(units_ok),
                          "softmax, GELU, LayerNorm on every lane count: 1", units_ok))
    payload = {"profile": args.profile, "seed": args.seed, "requant": {"mult": MULT, "shift": SHIFT}, "runs": rows,
               "vector_units": units, "llm_loop": loop,
               "configurations": configs, "targets": [t.to_dict() for t in targets], "wall_seconds": sw.seconds,
               "machine": machine_info(), "versions": versions()}
    headers = ["array", "dataflow", "M", "K", "N", "folds", "bit exact", "RTL cycles", "model cycles", "agree", "sim s"]
    table = [[r["array"], r["dataflow"], r["M"], r["K"], r["N"], r["folds"], r["bit_exact"], r["rtl_cycles"],
              r["model_cycles"], r["cycles_agree"], r["sim_seconds"]] for r in rows]
    res_table = [[f"{c['rows']}x{c['cols']}", c["dataflow"], c["resources"]["multipliers"], c["resources"]["register_bits"],
                  c["resources"]["requant_units"], *((c["yosys"]["multipliers"], c["yosys"]["flipflop_bits"], c["yosys"]["cells"])
                                                      if c["yosys"] else ("-", "-", "-"))] for c in configs]
    md = ["# The accelerator as RTL (benchmarks.rtl)", "", f"Profile `{args.profile}`, {sw.seconds:.0f} s, Icarus Verilog.", "",
          format_table(headers, table, markdown=True), "", "## Resources (read off the generated structure)", "",
          format_table(["array", "dataflow", "PE multipliers", "register bits", "requant units", "yosys $mul cells",
                        "yosys flip-flop bits", "yosys cells"], res_table, markdown=True), "",
          "## Vector units (integer softmax / GELU / LayerNorm, cocotb benches)", "",
          "Stated cycles: softmax 3n + 1, GELU n, LayerNorm 2n + 3 per group of `lanes` rows; the cycle model of [H] "
          "counts the passes only (`passes * ceil(rows n / lanes)`). Error: against the float function, in output "
          "steps (softmax: 1/256).", "",
          format_table(["unit", "lanes", "rows x n", "bit exact", "RTL cycles", "stated", "model", "max error (steps)",
                        "yosys $mul", "yosys $div", "flip-flop bits"],
                       [[u["unit"], u["lanes"], f"{u['rows']}x{u['n']}", u["bit_exact"], u["rtl_cycles"], u["stated_cycles"],
                         u["model_cycles"], u["max_error_vs_float_steps"],
                         *((u["yosys"]["multipliers"], u["yosys"]["dividers"], u["yosys"]["flipflop_bits"]) if u["yosys"]
                           else ("-", "-", "-"))] for u in units], markdown=True), "",
          "## LLM-aided loop (DSE proposal -> RTL -> simulation)", "",
          (loop["outcome"] + (f"; DSE: {loop['dse']['details'].get('llm_calls')} LLM calls, valid-reply rate "
                              f"{loop['dse']['details'].get('valid_reply_rate')}, designs from the LLM "
                              f"{loop['dse']['details'].get('accepted_from_llm')} of {loop['dse']['evals']}, fallbacks "
                              f"{loop['dse']['details'].get('fallbacks')}") if loop else "not run (--no-llm)"), "",
          "## Targets", "", format_targets(targets, markdown=True), ""]
    write_results(args.out, "rtl", payload, markdown="\n".join(md))
    if not args.quiet:
        print(format_table(headers, table))
        print(format_targets(targets))
    return payload


if __name__ == "__main__":
    main()
