"""``python -m benchmarks.snn_quant [--profile quick|full] [--out DIR]``: quantized spiking transformers (issue [N]).

Writes ``results/snn_quant.json`` (+ ``snn_quant.md`` and ``snn_quant.png``):

- the spike-driven ViT of :mod:`benchmarks.snn` (digits, same recipe), quantized post-training with
  :mod:`snn.quant`: per-layer widths of weights and membrane potentials (thresholds on the membrane grid, 12-bit
  decays), BatchNorm folded into the synapses. Rows: fp32 as trained, fp32 folded, uniform W8/V8, Loihi widths
  (W8, 24-bit membrane, 17-bit threshold, 12-bit decay), and the answers of the QSLM-style tiered search and of
  the QSViT-style flat per-layer search (sensitivity of every layer at every width, then an ILP-guided reduction),
  both under the same constraints (at most 2 points of validation accuracy lost, memory at most 30% of the fp32
  model's, objective ``J`` of :mod:`snn.quant.search`). Memory is weights + membrane state at their widths.
  Searches score on the validation split; the answers are then measured on the test split.
- the byte-level spiking LM of :mod:`benchmarks.snn` (QSLM's setting: a spike-driven language model), trained on
  the standard library and searched the same two ways with ``score = -bits per byte`` on validation windows
  (at most 0.05 bits per byte lost, memory at most 30%); held-out test bits per byte of each answer.

Targets (issue [N]): the tiered answer saves at least 70% of the fp32 spiking ViT's memory with at most 2 points of
test accuracy lost; the tiered search evaluates at least 5x fewer configurations than the flat per-layer search,
for an equal or better result (its objective on validation at least the flat search's).
"""

from __future__ import annotations

import argparse
import sys

import torch

from benchmarks.common import (Stopwatch, Target, add_common_args, format_table, format_targets, machine_info,
                               save_figure, versions, write_results)

__all__ = ["main"]

# profile -> (digits ViT epochs, LM training steps, LM held-out test bytes, ViTs trained (seeds) for the search comparison)
PROFILE = {"quick": (30, 300, 60_000, 2), "full": (60, 1500, 200_000, 3)}
VIT_CONSTRAINTS = dict(max_drop=0.02, max_memory_fraction=0.3)
LM_CONSTRAINTS = dict(max_drop=0.05, max_memory_fraction=0.3)
LM_VAL_WINDOWS, LM_SEQ = 24, 256
CALIB = 256  # training images that calibrate the membrane ranges (and the flat search's sensitivities)
LADDERS: dict = {}  # widths the searches may use (empty: snn.quant.search's WEIGHT_LADDER / MEMBRANE_LADDER)


def _row(name: str, q, precision, *, val: float, test: float, ref_test: float, mem_ref: float, evaluations=None) -> dict:
    mem = q.memory(precision) if precision is not None else q.memory()
    return {"name": name, "val": val, "test": test, "test_lost": ref_test - test, "weight_bytes": mem.weight_bytes,
            "state_bytes": mem.state_bytes, "total_bytes": mem.total_bytes, "memory_saved": 1 - mem.total_bytes / mem_ref,
            "evaluations": evaluations, "precision": precision.to_dict() if precision is not None else None}


def _searches(q, evaluate, constraints, log, what: str) -> dict:
    from snn.quant import ConstraintsUnsatisfiable, qsvit_search, tiered_search

    out = {}
    for name, fn in (("tiered", tiered_search), ("flat", qsvit_search)):
        log(f"{what}: {name} search")
        with Stopwatch() as sw:
            try:
                out[name] = fn(q, evaluate, constraints, progress=True, **LADDERS)
            except ConstraintsUnsatisfiable as e:  # reported, not fatal: the other rows still stand
                out[name] = e
        log(f"{what}: {name} search took {sw.seconds:.1f} s")
    return out


def run_vit(epochs: int, seed: int, log, *, data_seed: int) -> dict:
    from snn.models import Spikformer, SpikformerConfig
    from snn.quant import LOIHI_WIDTHS, Constraints, SpikingQuantizer, spiking_memory
    from tasks.classifier import TrainConfig, evaluate, train_classifier
    from tasks.digits import DigitsConfig, load_digits_split

    data = {s: load_digits_split(s, DigitsConfig(seed=data_seed)) for s in ("train", "val", "test")}
    torch.manual_seed(seed)
    model = Spikformer(SpikformerConfig(engine="fused"))
    log(f"digits: training the spiking ViT ({epochs} epochs, seed {seed})")
    with Stopwatch() as train_sw:
        train_classifier(model, x_train=data["train"].x, y_train=data["train"].y, x_val=data["val"].x, y_val=data["val"].y,
                         config=TrainConfig(epochs=epochs, lr=3e-3, weight_decay=0.01, seed=seed), progress=True)
    q = SpikingQuantizer(model, data["train"].x[:CALIB])
    val = lambda m: evaluate(m, data["val"].x, data["val"].y)  # noqa: E731
    test = lambda m: evaluate(m, data["test"].x, data["test"].y)  # noqa: E731
    as_trained = spiking_memory(model, data["test"].x[:1]).total_bytes
    ref_test = test(model)
    mem_ref = q.memory().total_bytes
    constraints = Constraints(**VIT_CONSTRAINTS)
    found = _searches(q, val, constraints, log, "digits ViT")
    rows = [{**_row("fp32 (as trained, BatchNorm)", q, None, val=val(model), test=ref_test, ref_test=ref_test, mem_ref=mem_ref),
             "total_bytes": as_trained, "memory_saved": 1 - as_trained / mem_ref, "weight_bytes": as_trained - q.memory().state_bytes},
            _row("fp32 (BatchNorm folded)", q, None, val=val(q.float_model), test=test(q.float_model), ref_test=ref_test, mem_ref=mem_ref)]
    for name, p in (("uniform W8 / V8", q.uniform(weight_bits=8, membrane_bits=8)),
                    ("Loihi widths (W8, V24, th17, decay 12)",
                     q.uniform(weight_bits=LOIHI_WIDTHS["weight_bits"], membrane_bits=LOIHI_WIDTHS["membrane_bits"],
                               threshold_bits=LOIHI_WIDTHS["threshold_bits"], decay_bits=LOIHI_WIDTHS["decay_bits"]))):
        m = q.build(p)
        rows.append(_row(name, q, p, val=val(m), test=test(m), ref_test=ref_test, mem_ref=mem_ref))
    searches = {}
    for name, r in found.items():
        if isinstance(r, Exception):
            searches[name] = {"error": str(r), "closest": r.closest.to_dict()}
            continue
        rows.append(_row(f"{name} search", q, r.best.precision, val=r.best.score, test=test(q.build(r.best.precision)),
                         ref_test=ref_test, mem_ref=mem_ref, evaluations=r.evaluations))
        searches[name] = r.to_dict()
    return {"seed": seed, "rows": rows, "searches": searches, "constraints": VIT_CONSTRAINTS, "fp32_as_trained_bytes": as_trained,
            "fp32_folded_bytes": mem_ref, "train_seconds": train_sw.seconds, "epochs": epochs,
            "folded_batchnorms": q.folded_bn, "items": len(q.items), "blocks": q.blocks}


def run_lm(steps: int, test_bytes: int, seed: int, log) -> dict:
    from ann.train.code import held_out_files
    from benchmarks.snn import LM_BATCH, _ByteTokenizer, _LogitsOf, train_and_score_lm
    from ann.eval.lm import bits_per_byte
    from snn.models import SpikingLM, SpikingLMConfig
    from snn.quant import Constraints, SpikingQuantizer
    from snn.quant.evaluators import byte_windows, neg_bits_per_byte
    from tasks.code import join_code_files, load_stdlib_corpus

    train = torch.tensor(list(join_code_files(load_stdlib_corpus("train")).encode("utf-8")), dtype=torch.uint8)
    held_out = [f.text for f in held_out_files(test_bytes, split="test")]
    torch.manual_seed(seed)
    lm = SpikingLM(SpikingLMConfig(max_positions=2 * LM_SEQ))
    log(f"spiking LM: training ({steps} steps of {LM_BATCH} x {LM_SEQ} bytes)")
    trained = train_and_score_lm(lm, train, held_out, steps=steps, seed=seed, log=log, name="spiking LM")
    lm.eval()
    windows = byte_windows("val", n=LM_VAL_WINDOWS, seq=LM_SEQ, seed=seed + 1)
    score = lambda m: neg_bits_per_byte(m, windows)  # noqa: E731  (higher is better)

    def test_bpb(m) -> float:
        return bits_per_byte(_LogitsOf(m), _ByteTokenizer(), held_out, context=2 * LM_SEQ, stride=3 * LM_SEQ // 2,
                             batch_size=4, progress=False).bits_per_byte

    q = SpikingQuantizer(lm, byte_windows("train", n=8, seq=LM_SEQ, seed=seed)[:, :-1])
    mem_ref = q.memory().total_bytes
    found = _searches(q, score, Constraints(**LM_CONSTRAINTS), log, "spiking LM")
    ref_test = test_bpb(q.float_model)
    rows = [{"name": "fp32 (BatchNorm folded)", "val_bpb": -score(q.float_model), "test_bpb": ref_test,
             "total_bytes": mem_ref, "memory_saved": 0.0, "evaluations": None}]
    searches = {}
    for name, r in found.items():
        if isinstance(r, Exception):
            searches[name] = {"error": str(r), "closest": r.closest.to_dict()}
            continue
        rows.append({"name": f"{name} search", "val_bpb": -r.best.score, "test_bpb": test_bpb(q.build(r.best.precision)),
                     "total_bytes": r.best.memory_bytes, "memory_saved": r.memory_saved, "evaluations": r.evaluations})
        searches[name] = r.to_dict()
    return {"rows": rows, "searches": searches, "constraints": LM_CONSTRAINTS, "train": trained,
            "val_windows": f"{LM_VAL_WINDOWS} x {LM_SEQ} bytes of the stdlib val split", "items": len(q.items),
            "blocks": q.blocks}


def _plot(vit: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for name, r in vit["searches"].items():
        if "history" not in r:
            continue
        hist = [h for h in r["history"] if h["stage"] not in ("sensitivity", "reference")]
        ax.scatter([h["memory_bytes"] / 1e3 for h in hist], [h["score"] for h in hist], s=14, alpha=0.6,
                   label=f"{name}: {r['evaluations']} evaluations")
    for row in vit["rows"][1:]:  # the model as trained sits next to the folded one
        ax.scatter([row["total_bytes"] / 1e3], [row["val"]], marker="*", s=90)
        ax.annotate(row["name"], (row["total_bytes"] / 1e3, row["val"]), fontsize=6, rotation=20)
    lo = min(r["val"] for r in vit["rows"]) - 0.06
    ax.set_ylim(lo, 1.0)  # configurations far below every answer (a few collapse) are left out of view
    ax.set_xscale("log")
    ax.set_xlabel("memory, weights + membrane state (kB)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Quantized spiking ViT (digits): configurations scored by each search")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.snn_quant", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--no-lm", action="store_true", help="skip the spiking LM (ViT only)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[snn_quant] {m}", file=sys.stderr, flush=True))
    epochs, lm_steps, lm_test_bytes, n_vits = PROFILE[args.profile]
    with Stopwatch() as sw:
        vits = [run_vit(epochs, args.seed + i, log, data_seed=args.seed) for i in range(n_vits)]
        lm = None if args.no_lm else run_lm(lm_steps, lm_test_bytes, args.seed, log)
    vit = vits[0]  # the table and the plot; the comparison of the searches covers every seed
    per_seed = []
    for v in vits:
        rows = {r["name"]: r for r in v["rows"]}
        t, f = v["searches"].get("tiered", {}), v["searches"].get("flat", {})
        if "best" not in t or "best" not in f:
            continue
        per_seed.append({"seed": v["seed"], "tiered_saved": rows["tiered search"]["memory_saved"],
                         "tiered_saved_vs_as_trained": 1 - rows["tiered search"]["total_bytes"] / rows["fp32 (as trained, BatchNorm)"]["total_bytes"],
                         "tiered_test_lost": rows["tiered search"]["test_lost"], "flat_saved": rows["flat search"]["memory_saved"],
                         "flat_test_lost": rows["flat search"]["test_lost"], "tiered_evaluations": t["evaluations"],
                         "flat_evaluations": f["evaluations"], "tiered_objective": t["best"]["objective"],
                         "flat_objective": f["best"]["objective"]})
    targets = []
    if per_seed:
        mean = lambda k: sum(r[k] for r in per_seed) / len(per_seed)  # noqa: E731
        saved = min(r["tiered_saved"] for r in per_seed)
        lost = max(r["tiered_test_lost"] for r in per_seed)
        ratio = mean("flat_evaluations") / mean("tiered_evaluations")
        dj = mean("tiered_objective") - mean("flat_objective")
        wins = sum(r["tiered_objective"] >= r["flat_objective"] for r in per_seed)
        n = len(per_seed)
        targets = [Target("tiered_memory_saved_vs_fp32_spiking_vit", saved, f">= 0.70 (least over {n} trained ViTs; vs fp32 "
                          f"with BatchNorm folded, {min(r['tiered_saved_vs_as_trained'] for r in per_seed):.3f} vs as trained)",
                          saved >= 0.70),
                   Target("tiered_test_accuracy_lost", lost, f"<= 0.02 (most over {n} trained ViTs)", lost <= 0.02),
                   Target("flat_over_tiered_evaluations", ratio, f">= 5 (mean evaluations over {n} ViTs)", ratio >= 5),
                   Target("tiered_objective_minus_flat_objective", dj, f">= 0 (mean J on validation over {n} ViTs: equal or "
                          f"better result; tiered at least as good on {wins} of {n})", dj >= -1e-12)]
    payload = {"profile": args.profile, "seed": args.seed, "vit": vit, "vit_other_seeds": vits[1:], "search_comparison": per_seed,
               "lm": lm, "targets": [t.to_dict() for t in targets],
               "wall_seconds": sw.seconds, "machine": machine_info(), "versions": versions("spikingjelly", "pulp"),
               "torch_threads": torch.get_num_threads()}
    headers = ["model", "val acc", "test acc", "test lost", "weights kB", "state kB", "total kB", "saved", "evaluations"]
    table = [[r["name"], r["val"], r["test"], r["test_lost"], r["weight_bytes"] / 1e3, r["state_bytes"] / 1e3,
              r["total_bytes"] / 1e3, r["memory_saved"], r["evaluations"]] for r in vit["rows"]]
    md = ["# Quantized spiking transformers (benchmarks.snn_quant)", "",
          f"Profile `{args.profile}`, {sw.seconds:.0f} s. Memory saved is against the fp32 model with BatchNorm folded.", "",
          f"## Spiking ViT on digits (training seed {vit['seed']})", "", format_table(headers, table, markdown=True), "",
          "## Tiered vs flat search over every trained ViT", "",
          format_table(["seed", "tiered saved", "tiered test lost", "tiered evals", "tiered J", "flat saved", "flat test lost",
                        "flat evals", "flat J"],
                       [[r["seed"], r["tiered_saved"], r["tiered_test_lost"], r["tiered_evaluations"], r["tiered_objective"],
                         r["flat_saved"], r["flat_test_lost"], r["flat_evaluations"], r["flat_objective"]] for r in per_seed],
                       markdown=True), ""]
    if lm is not None:
        md += ["## Spiking LM on the standard library (bytes)", "",
               format_table(["model", "val bits/byte", "test bits/byte", "total kB", "saved", "evaluations"],
                            [[r["name"], r["val_bpb"], r["test_bpb"], r["total_bytes"] / 1e3, r["memory_saved"], r["evaluations"]]
                             for r in lm["rows"]], markdown=True), ""]
    md += ["## Targets", "", format_targets(targets, markdown=True), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(vit, args.out / "snn_quant.png")
    write_results(args.out, "snn_quant", payload, markdown="\n".join(md))
    if not args.quiet:
        print(format_table(headers, table))
        print(format_table(["seed", "tiered saved", "tiered test lost", "tiered evals", "tiered J", "flat saved",
                            "flat test lost", "flat evals", "flat J"],
                           [[r["seed"], r["tiered_saved"], r["tiered_test_lost"], r["tiered_evaluations"], r["tiered_objective"],
                             r["flat_saved"], r["flat_test_lost"], r["flat_evaluations"], r["flat_objective"]] for r in per_seed]))
        if lm is not None:
            print(format_table(["model", "val bits/byte", "test bits/byte", "total kB", "saved", "evaluations"],
                               [[r["name"], r["val_bpb"], r["test_bpb"], r["total_bytes"] / 1e3, r["memory_saved"], r["evaluations"]]
                                for r in lm["rows"]]))
        print(format_targets(targets))
    return payload


if __name__ == "__main__":
    main()
