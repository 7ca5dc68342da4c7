"""``python -m benchmarks.accel [--profile quick|full] [--out DIR]``: the simulated accelerator on reference models.

Writes ``results/accel.json`` (+ ``accel.md`` and PNGs):

- the reference workloads, traced in this run at INT8 (weights and activations): ViT-B/16 forward (224 x 224),
  SmolLM2-135M greedy decoding (16-token prompt + 128 new tokens, KV cache), SmolLM2-135M prefill of a long
  prompt (where attention's IO matters), and the project's large MFM answering one SynthMed-VQA question
  (one forward pass over the image tokens and the question);
- each mapped on the expert presets (edge / default / server): cycles, latency, DRAM traffic, energy split into
  compute and data movement (SRAM, DRAM), utilization;
- ablations on the default preset: naive vs flash attention, fusion off vs on;
- the mapping wall time of a whole ViT-B/16 forward and of the 128-token SmolLM2 decode (target: <= 1 s each,
  measured with the GEMM cache cleared, median of 3);
- design-space exploration for ViT-B/16 under an area and a power budget: expert presets, optuna, random and
  the LLM-aided loop (SmolLM2-135M-Instruct, offline) at the same number of evaluations
  (:mod:`neurohw.accel.dse`, :mod:`neurohw.accel.llm`);
- plots: per-layer cycles of ViT-B/16 by op kind, energy breakdown per workload and preset, DSE trials.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from benchmarks.common import (Stopwatch, Target, add_common_args, format_table, format_targets, machine_info, save_figure,
                               versions, write_results)

__all__ = ["main"]

COLUMNS = ["workload", "preset", "cycles", "latency ms", "DRAM MB", "E total uJ", "E compute uJ", "E SRAM uJ",
           "E DRAM uJ", "data movement %", "utilization"]


def trace_workloads(profile: str, log) -> dict:
    """name -> INT8 workload IR, traced in this run."""
    import torch

    from neurohw.workload import Numeric, trace
    from neurohw.workload.reference import build_reference, trace_decode

    int8 = dict(numeric=Numeric.INT, weight_bits=8, act_bits=8)
    out = {}
    log("tracing ViT-B/16")
    out["vit-b16"] = trace(build_reference("vit-b16"), torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)),
                           name="vit-b16", state_bits=8, **int8)
    smol = build_reference("smollm2-135m")
    log("tracing SmolLM2-135M decode (16 + 128 tokens)")
    out["smollm2-decode-128"] = trace_decode(smol, prompt_len=16, new_tokens=128, name="smollm2-135m decode 16+128", **int8)
    long = 1024 if profile == "full" else 512
    log(f"tracing SmolLM2-135M prefill of {long} tokens")
    ids = torch.randint(3, 49152, (1, long), generator=torch.Generator().manual_seed(0))
    out[f"smollm2-prefill-{long}"] = trace(smol, {"input_ids": ids, "logits_to_keep": 1}, name=f"smollm2-135m prefill {long}",
                                           state_bits=8, **int8)
    out["mfm-large-vqa"] = _trace_mfm(int8)
    log("digits: ANN MLP (cached or trained) and its converted SNN at T=8")
    out.update(_trace_digits(profile, log))
    return out


def _trace_digits(profile: str, log) -> dict:
    """The digits MLP at INT8 and its converted SNN (T=8, 16-bit membranes), traced on the test split: the SNN's
    synaptic ops, spikes and firing rates are the measured ones, so the event-driven mode skips real zeros."""
    from benchmarks.compare import PROFILES, _digits_ann
    from conversion import ConversionConfig, convert_sequential
    from neurohw.workload import Numeric, trace

    ns = argparse.Namespace(seed=0, checkpoint=None, cache_dir=Path(".cache/neuromfm/checkpoints"))
    model, splits, _ = _digits_ann(ns, PROFILES[profile], log)
    x = splits["test"].x
    snn = convert_sequential(model, splits["train"].x, timesteps=8, config=ConversionConfig())
    return {"digits-mlp": trace(model, x, name="digits MLP int8", numeric=Numeric.INT, weight_bits=8, act_bits=8, state_bits=8),
            "digits-snn-T8": trace(snn, x, name="digits converted SNN T=8", timesteps=8, numeric=Numeric.INT, weight_bits=8,
                                   act_bits=8, state_bits=16)}


def _trace_mfm(int8: dict):
    import torch

    from ann.models.mfm import MFM_PRESETS, build_mfm
    from ann.models.mfm_tokenizer import build_vqa_tokenizer
    from neurohw.workload import trace

    tok = build_vqa_tokenizer()
    spec = MFM_PRESETS["large"]
    mfm = build_mfm(spec, vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                    pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    q = tok("what is the modality of this scan?", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([[tok.bos_token_id] + [tok.convert_tokens_to_ids("<image>")] * mfm.num_visual_tokens + q])
    px = torch.rand(1, spec.num_channels, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(0))
    return trace(mfm, {"input_ids": ids, "pixel_values": px}, name="mfm-large vqa forward", state_bits=8, **int8)


def run_dse(workload, profile: str, seed: int, log, llm: bool) -> dict:
    """Presets, random, optuna and the LLM-aided loop (SmolLM2-135M-Instruct, offline) at equal evaluation budgets
    on ``workload``; random and optuna are repeated over 5 seeds (they are cheap) to show their spread."""
    from neurohw.accel.dse import Budget, DesignSpace, compare_strategies
    from neurohw.accel.model import workload_cost_fn

    n_evals, retries = (12, 1) if profile == "quick" else (30, 3)
    budget = Budget(area_mm2=20.0, power_w=5.0)
    space, cost = DesignSpace(), workload_cost_fn(workload)
    client, strategies = None, ("presets", "random", "optuna")
    if llm:
        from ann.models.smollm2 import load_smollm2
        from neurohw.accel.llm import HFLocalClient

        model, tok = load_smollm2(progress=True)
        client = HFLocalClient(model=model, tokenizer=tok, max_new_tokens=96, temperature=0.7, seed=seed, prefill="{")
        strategies += ("llm",)
    log(f"DSE on {workload.model}: {', '.join(strategies)} at {n_evals} evaluations each")
    report = compare_strategies(space, cost, budget, n_evals=n_evals, seed=seed, client=client, max_retries=retries,
                                strategies=strategies, progress=True)
    spread = {}
    for s in ("random", "optuna"):
        bests = []
        for extra in range(seed + 1, seed + 5):
            r = compare_strategies(space, cost, budget, n_evals=n_evals, seed=extra, strategies=(s,))["rows"][0]
            bests.append(r["best_objective_edp_js"])
        first = next(r["best_objective_edp_js"] for r in report["rows"] if r["strategy"] == s)
        found = [b for b in [first, *bests] if b is not None]
        spread[s] = {"seeds": list(range(seed, seed + 5)), "best_edp_per_seed": [first, *bests],
                     "median_best_edp": statistics.median(found) if found else None, "feasible_runs": len(found)}
    report["seed_spread"] = spread
    report["workload"] = workload.model
    return report


def dse_table(report: dict) -> str:
    from neurohw.accel.dse import format_table as dse_format

    lines = [dse_format(report), ""]
    for s, sp in report["seed_spread"].items():
        lines.append(f"- {s}: best EDP over seeds {sp['seeds']}: " + ", ".join("-" if b is None else f"{b:.3g}" for b in sp["best_edp_per_seed"])
                     + (f" (median {sp['median_best_edp']:.3g})" if sp["median_best_edp"] is not None else ""))
    llm = report["results"].get("llm")
    if llm:
        d = llm["details"]
        lines.append(f"- llm ({d.get('client')}): {d.get('llm_calls')} calls, valid-reply rate {d.get('valid_reply_rate')}, designs from the LLM "
                     f"{d.get('accepted_from_llm')} of {llm['evals']} evaluations, fallbacks {d.get('fallbacks')}")
    return "\n".join(lines)


def plot_dse(report: dict, path: Path) -> None:
    """Every evaluated design: area vs energy-delay product, by strategy (hollow: over a budget)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (name, res), marker in zip(report["results"].items(), "sovD^"):
        pts = [t for t in res["trials"] if t.get("objective") is not None]
        for feasible in (True, False):
            sel = [t for t in pts if t["feasible"] is feasible]
            if sel:
                ax.scatter([t["area_mm2"] for t in sel], [t["objective"] for t in sel], marker=marker,
                           label=name if feasible else None, facecolors=None if feasible else "none",
                           edgecolors=f"C{list(report['results']).index(name)}", c=None if not feasible else f"C{list(report['results']).index(name)}")
    ax.axvline(report["budget"]["area_mm2"], color="grey", linestyle="--", linewidth=1, label="area budget")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("area (mm^2, 45 nm)")
    ax.set_ylabel("energy-delay product (J s), lower is better")
    ax.set_title(f"DSE for {report['workload']}: {report['n_evals']} evaluations per strategy (hollow: over budget)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def summary_row(name: str, preset: str, s: dict) -> list:
    e = s["energy_pj"]
    return [name, preset, s["cycles"], s["latency_s"] * 1e3, s["dram_bytes"] / 1e6, e["total"] / 1e6, e["compute"] / 1e6,
            e["sram"] / 1e6, e["dram"] / 1e6, 100 * e["data_movement"] / e["total"], s["utilization"]]


def mapping_seconds(cfg, workload, repeats: int = 3) -> float:
    """Median wall time of one :func:`map_workload` with the per-GEMM cache cleared."""
    from neurohw.accel import map_gemm, map_workload

    times = []
    for _ in range(repeats):
        map_gemm.cache_clear()
        t0 = time.perf_counter()
        map_workload(cfg, workload)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def plot_layers(cost, path: Path) -> None:
    """Cycles per transformer block of ViT-B/16, stacked by op kind."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks: dict[str, dict[str, float]] = {}
    for o in cost.ops:
        m = re.search(r"layers?\.(\d+)\.", o.name)
        block = f"block {int(m.group(1))}" if m else ("embeddings" if "embed" in o.name else "head")
        blocks.setdefault(block, {})
        blocks[block][o.kind] = blocks[block].get(o.kind, 0.0) + o.cycles
    kinds = sorted({k for b in blocks.values() for k in b})
    fig, ax = plt.subplots(figsize=(11, 4))
    bottom = [0.0] * len(blocks)
    for kind in kinds:
        vals = [b.get(kind, 0.0) / 1e6 for b in blocks.values()]
        ax.bar(list(blocks), vals, bottom=bottom, label=kind)
        bottom = [x + v for x, v in zip(bottom, vals)]
    ax.set_ylabel("cycles (millions)")
    ax.set_title(f"{cost.model} on the default preset: cycles per block by op kind ({cost.attention} attention, fusion on)")
    ax.tick_params(axis="x", labelrotation=45)
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def plot_energy(rows: list[list], path: Path) -> None:
    """Energy breakdown (compute / SRAM / DRAM) of every workload on every preset, as shares with totals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{r[0]} / {r[1]}" for r in rows]
    fig, ax = plt.subplots(figsize=(max(8, len(rows) * 0.7), 6))
    bottom = [0.0] * len(rows)
    for i, part in ((6, "compute"), (7, "SRAM"), (8, "DRAM")):
        share = [100 * r[i] / r[5] for r in rows]
        ax.bar(labels, share, bottom=bottom, label=part)
        bottom = [b + s for b, s in zip(bottom, share)]
    for x, r in enumerate(rows):
        ax.annotate(f"{r[5] / 1e3:.3g} mJ", (x, 102), ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_ylim(0, 125)
    ax.set_ylabel("share of energy per inference (%)")
    ax.set_title("energy breakdown: compute vs data movement")
    ax.tick_params(axis="x", labelsize=7, labelrotation=60)
    ax.legend(loc="lower right", framealpha=0.9)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.accel", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--no-llm", dest="llm", action="store_false",
                   help="leave the LLM-aided DSE out (it runs SmolLM2-135M on the CPU: minutes)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[accel] {m}", file=sys.stderr, flush=True))

    from neurohw.accel import PRESETS, map_workload
    from neurohw.accel.model import energy_table

    with Stopwatch() as sw:
        workloads = trace_workloads(args.profile, log)
        rows, results = [], {}
        for name, w in workloads.items():
            for preset, cfg in PRESETS.items():
                cost = map_workload(cfg, w)
                results[f"{name}/{preset}"] = cost.summary()
                rows.append(summary_row(name, preset, cost.summary()))
        ablation = []
        for name, w in workloads.items():
            for attention in ("naive", "flash"):
                for fuse in (False, True):
                    s = map_workload(PRESETS["default"], w, attention=attention, fuse=fuse).summary()
                    ablation.append({"workload": name, "attention": attention, "fuse": fuse, "cycles": s["cycles"],
                                     "dram_bytes": s["dram_bytes"], "energy_pj": s["energy_pj"]["total"]})
        timing = {"vit-b16": mapping_seconds(PRESETS["default"], workloads["vit-b16"]),
                  "smollm2-decode-128": mapping_seconds(PRESETS["default"], workloads["smollm2-decode-128"])}
        vit_cost = map_workload(PRESETS["default"], workloads["vit-b16"])
        plot_layers(vit_cost, args.out / "accel_layers.png")
        plot_energy(rows, args.out / "accel_energy.png")
        dse = run_dse(workloads["vit-b16"], args.profile, args.seed, log, args.llm)
        plot_dse(dse, args.out / "accel_dse.png")

    targets = [Target(f"mapping_wall_s_{k}", v, "<= 1.0 s", v <= 1.0) for k, v in timing.items()]
    long = next(k for k in workloads if k.startswith("smollm2-prefill"))
    by = {(a["workload"], a["attention"], a["fuse"]): a for a in ablation}
    ratio = by[(long, "naive", True)]["dram_bytes"] / by[(long, "flash", True)]["dram_bytes"]
    targets.append(Target(f"flash_vs_naive_dram_ratio_{long}", ratio, "> 1 (tiled attention moves less)", ratio > 1))
    fuse_ratio = by[("vit-b16", "flash", False)]["dram_bytes"] / by[("vit-b16", "flash", True)]["dram_bytes"]
    targets.append(Target("unfused_vs_fused_dram_ratio_vit-b16", fuse_ratio, "> 1 (fusion skips round trips)", fuse_ratio > 1))

    payload = {"workloads": {k: {"ops": len(w.ops), "macs": w.macs, "params": w.params, "untraced": list(w.untraced)}
                             for k, w in workloads.items()},
               "presets": {k: c.to_dict() for k, c in PRESETS.items()},
               "energy_table": energy_table(PRESETS["default"]),
               "results": results, "ablation": ablation, "mapping_wall_s": timing, "dse": dse,
               "per_op_vit_b16_default": [o.to_dict() for o in vit_cost.ops],
               "targets": [t.to_dict() for t in targets],
               "meta": {"benchmark": "accel", "profile": args.profile, "seed": args.seed, "wall_time_s": sw.seconds,
                        "machine": machine_info(), "versions": versions("transformers", "optuna")}}
    abl_rows = [[a["workload"], a["attention"], a["fuse"], a["cycles"], a["dram_bytes"] / 1e6, a["energy_pj"] / 1e6] for a in ablation]
    abl_cols = ["workload", "attention", "fuse", "cycles", "DRAM MB", "E total uJ"]
    md = ("# neuromfm accelerator\n\n## Reference workloads on the expert presets (INT8)\n\n" + format_table(COLUMNS, rows, markdown=True)
          + "\n\n## Ablation on the default preset\n\n" + format_table(abl_cols, abl_rows, markdown=True)
          + f"\n\n## Design-space exploration for {dse['workload']} (area <= {dse['budget']['area_mm2']} mm^2, "
          f"power <= {dse['budget']['power_w']} W, {dse['n_evals']} evaluations each, seed {args.seed})\n\n"
          + dse_table(dse) + "\n\n" + format_targets(targets, markdown=True) + "\n")
    path = write_results(args.out, "accel", payload, markdown=md)
    print(format_table(COLUMNS, rows))
    print(format_table(abl_cols, abl_rows))
    print(dse_table(dse))
    print(format_targets(targets))
    print(f"wrote {path} in {sw.seconds:.1f} s")
    return payload


if __name__ == "__main__":
    main()
