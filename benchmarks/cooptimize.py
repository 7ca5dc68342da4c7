"""``python -m benchmarks.cooptimize [--profile quick|full] [--out DIR]``: co-optimize the MFM's inputs.

Searches visual resolution, patch size (= stride), k x k token merging, ViT token pruning, decoder visual-token
pruning (FastV) and question length together (:mod:`ann.cooptimize`) for the trained large MFM on SynthMed-VQA:

1. the large MFM (``--mfm`` folder, else trained or read from the model cache, :mod:`benchmarks.models`);
2. every (geometry, ViT pruning) pair of the space gets the trained weights transferred
   (:func:`ann.cooptimize.adapt_geometry`) and the same short fine-tune with that pruning on (``--finetune-steps``),
   the default pair too, so that every point has had the same training (without it, pruning and new geometries
   lose 25-55 points, measured); fine-tuned models are cached under ``--cache-dir`` (keyed by inputs and code);
   decoder pruning (FastV) and question compression are applied without training;
3. every point is measured: validation answer accuracy (greedy decoding, exact match), CPU latency of one
   prefill of a batch of questions (median of repeats, this machine), and the simulated accelerator's latency
   and energy (split into compute and data movement) for one question, traced at INT8 on the ``default``
   preset (:mod:`neurohw.accel`, flash attention, fused vector ops);
4. the Pareto fronts (validation accuracy vs accelerator latency, vs accelerator energy, vs CPU latency) and the
   choice under the budget (default: half the default configuration's accelerator latency): the most accurate
   point on validation within it (:func:`ann.cooptimize.choose`); the chosen and the default point are then
   measured on the test split, which the search never saw.

Targets: the chosen configuration has >= 2x lower accelerator latency than the default one, with at most
1 point of test accuracy lost. Writes ``DIR/cooptimize.json``, ``cooptimize.md`` and ``cooptimize.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (Target, add_cache_dir_arg, add_common_args, format_table, format_targets, machine_info,
                               save_figure, versions, write_results)

__all__ = ["main", "search", "Searched", "PROFILE_SPACES"]

# geometries as (S, P, k) (the first is the trained default), ViT keeps and layers, decoder keeps, question-token caps,
# fine-tune steps per geometry, SynthMed images per split, CPU timing repeats.
PROFILE_SPACES = {
    "quick": dict(geometries=[(64, 8, 2), (32, 8, 2)], vit_keeps=(1.0, 0.5), vit_layers=(0,), llm_keeps=(1.0, 0.5),
                  question_tokens=(None, 5), steps=300, n_train=8000, n_val=300, n_test=1000, repeats=3),
    "full": dict(geometries=[(64, 8, 2), (64, 8, 4), (48, 8, 2), (32, 8, 2), (64, 16, 1), (64, 16, 2)],
                 vit_keeps=(1.0, 0.5, 0.25), vit_layers=(0,), llm_keeps=(1.0, 0.5), question_tokens=(None, 5),
                 steps=800, n_train=8000, n_val=1000, n_test=1000, repeats=5),
}
CODE_PATHS = ("ann/cooptimize", "ann/models", "ann/train/vqa.py", "tasks/synthmed.py", "tasks/training.py")
COLUMNS = ["config", "V", "val acc", "accel us", "accel uJ", "data movement %", "CPU ms", "front"]


def _log(quiet: bool):
    return (lambda msg: None) if quiet else (lambda msg: print(f"[cooptimize] {msg}", file=sys.stderr, flush=True))


def _large_mfm(args, log) -> Path:
    if args.mfm is not None:
        return Path(args.mfm)
    from benchmarks.models import ENTRIES, run_entry

    e = ENTRIES["mfm-large"]
    folder, _, _ = run_entry("mfm-large", e.module, e.argv("full", {}), args.cache_dir, log)
    return folder / "model"


def _adapted(base, base_dir: Path, geometry, vit_keep: float, vit_layer: int, train, steps: int, seed: int, cache_dir: Path,
             log, progress: bool):
    """The model for ``geometry`` fine-tuned with ViT pruning ``vit_keep`` at ``vit_layer`` (cached), and its record."""
    from transformers import AutoModelForImageTextToText

    from ann.checkpoint import save_pretrained_atomic
    from ann.cooptimize import adapt_geometry, finetune
    from benchmarks.models import code_fingerprint
    from tasks.io import atomic_write_json, read_json

    label = geometry.label + (f" vit{vit_keep:g}@{vit_layer}" if vit_keep < 1 else "")
    key = hashlib.sha256(json.dumps([str(base_dir.resolve()), label, steps, seed,
                                     code_fingerprint(CODE_PATHS)]).encode()).hexdigest()[:12]
    folder = cache_dir / "cooptimize" / f"{label.replace('/', '-').replace(' ', '-')}-{key}"
    if (folder / "finetune.json").is_file():
        log(f"{label}: cached ({folder})")
        return AutoModelForImageTextToText.from_pretrained(folder / "model").eval(), read_json(folder / "finetune.json",
                                                                                             what="fine-tune record")
    model = adapt_geometry(base, geometry)
    t0 = time.perf_counter()
    res = finetune(model, train(geometry.visual_tokens), steps=steps, seed=seed, vit_keep=vit_keep, vit_layer=vit_layer,
                   progress=progress, desc=f"adapt {label}")
    record = {"variant": label, "steps": steps, "seconds": time.perf_counter() - t0,
              "final_loss": res.losses[-1][1] if res.losses else None}
    save_pretrained_atomic(model, folder / "model")
    atomic_write_json(folder / "finetune.json", record)
    log(f"{label}: fine-tuned {steps} steps in {record['seconds']:.0f} s")
    return model, record


def _accel_cost(runner, data, n: int = 3) -> dict:
    """Accelerator figures per question of ``runner``, averaged over the first ``n`` prompts traced one by one (no
    padding), INT8 weights and activations on the default preset."""
    from neurohw.accel import PRESETS, map_workload
    from neurohw.workload import Numeric, trace

    keys = ("cycles", "latency_us", "energy_uj", "energy_compute_uj", "energy_movement_uj")
    sums = dict.fromkeys(keys, 0.0)
    for i in range(n):
        real = data.prompt_mask[i].bool()
        x = {"input_ids": data.prompt_ids[i][real][None], "pixel_values": data.images[data.image_index[i]][None]}
        c = map_workload(PRESETS["default"], trace(runner, x, name="mfm", numeric=Numeric.INT, weight_bits=8, act_bits=8,
                                                   state_bits=8))
        e = c.energy_pj
        for k, v in zip(keys, (c.cycles, c.latency_s * 1e6, c.energy_total_pj / 1e6, e["compute"] / 1e6,
                               (e["sram"] + e["dram"]) / 1e6)):
            sums[k] += v / n
    out = {f"accel_{k}": v for k, v in sums.items()}
    out["data_movement_pct"] = 100 * sums["energy_movement_uj"] / sums["energy_uj"] if sums["energy_uj"] else 0.0
    return out


def _cpu_ms(runner, data, repeats: int, images: int = 32) -> float:
    """Median wall time (ms) of one prefill (vision tower + decoder) of all questions of ``images`` images."""
    import torch

    i = data.by_image[:images].reshape(-1)
    x = {"input_ids": data.prompt_ids[i], "attention_mask": data.prompt_mask[i],
         "pixel_values": data.images[data.image_index[i]]}
    times = []
    with torch.inference_mode():
        runner(**x)  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            runner(**x)
            times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def _plot(rows: list[dict], fronts: dict, default: dict, chosen: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    for ax, (key, label) in zip(axes, [("accel_latency_us", "accelerator latency (us / question)"),
                                       ("accel_energy_uj", "accelerator energy (uJ / question)"),
                                       ("cpu_ms", "CPU prefill time (ms / 32 images)")]):
        ax.scatter([r[key] for r in rows], [r["val_accuracy"] for r in rows], s=12, c="0.7", label="searched")
        front = sorted((rows[i] for i in fronts[key]), key=lambda r: r[key])
        ax.plot([r[key] for r in front], [r["val_accuracy"] for r in front], "o-", c="C0", ms=4, label="Pareto front")
        ax.scatter([default[key]], [default["val_accuracy"]], marker="s", s=60, c="C3", label="default", zorder=3)
        if chosen is not None:
            ax.scatter([chosen[key]], [chosen["val_accuracy"]], marker="*", s=160, c="C2", label="chosen", zorder=3)
        ax.set_xlabel(label)
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle("MFM input co-optimization on SynthMed-VQA (resolution, patch, merging, token pruning, text length)")
    fig.tight_layout()
    save_figure(fig, path)


@dataclass
class Searched:
    """What :func:`search` measured: the ``space``, its ``configs`` (geometry-major) and their ``rows`` (validation
    accuracy, accelerator and CPU costs, in the order of ``configs``), the ``default`` configuration's row, the
    fine-tuned ``models`` by (geometry, ViT keep, ViT layer) and their fine-tune records (``finetunes``), the
    trained model's validation accuracy before any fine-tune (``reference``) and ``data(split, V, q)``: a split
    encoded for V visual tokens with questions cut to q tokens (memoized)."""

    space: object
    configs: list
    rows: list[dict]
    default: dict
    models: dict
    finetunes: list[dict]
    reference: float
    data: Callable

    def runner(self, config):
        """The fine-tuned model of ``config``'s geometry, run with its token pruning."""
        from ann.cooptimize import TokenPrunedMFM

        c = config
        return TokenPrunedMFM(self.models[c.geometry, c.vit_keep, c.vit_layer], vit_keep=c.vit_keep, vit_layer=c.vit_layer,
                              llm_keep=c.llm_keep, llm_layer=c.llm_layer)


def search(base, base_dir: Path, tok, splits: dict, prof: dict, *, steps: int, seed: int, cache_dir: Path, log,
           progress: bool) -> Searched:
    """Steps 2 and 3 of the module docstring for the trained MFM ``base`` (saved in ``base_dir``) on ``splits``
    (train / val SynthMed splits) over the space of ``prof`` (a :data:`PROFILE_SPACES` entry): every (geometry, ViT
    pruning) pair fine-tuned ``steps`` steps (cached under ``cache_dir``), every point measured on validation."""
    from tqdm.auto import tqdm

    from ann.cooptimize import Geometry, InputConfig, SearchSpace, compress_questions
    from ann.train.vqa import encode_vqa, evaluate_mfm

    encoded: dict = {}

    def data(split: str, V: int, q=None):
        if (split, V, q) not in encoded:
            if (split, V, None) not in encoded:
                encoded[split, V, None] = encode_vqa(splits[split], tok, V)
            encoded[split, V, q] = compress_questions(encoded[split, V, None], tok, V, q)
        return encoded[split, V, q]

    space = SearchSpace(geometries=tuple(Geometry(*g) for g in prof["geometries"]), vit_keeps=prof["vit_keeps"],
                        vit_layers=prof["vit_layers"], llm_keeps=prof["llm_keeps"], question_tokens=prof["question_tokens"])
    configs = space.configs()
    default_config = InputConfig(space.geometries[0], vit_layer=space.vit_layers[0], llm_layer=space.llm_layers[0])
    if default_config not in configs:
        raise ValueError("the search space must contain the default configuration (keep 1.0 and whole questions)")
    reference = evaluate_mfm(base, tok, data("val", base.num_visual_tokens), splits["val"])["accuracy"]
    log(f"trained large MFM ({base_dir}): val accuracy {reference:.3f} before any fine-tune")
    models, finetunes = {}, []
    for c in configs:
        v = (c.geometry, c.vit_keep, c.vit_layer)
        if v not in models:
            models[v], rec = _adapted(base, base_dir, *v, lambda V: data("train", V), steps, seed, cache_dir, log, progress)
            finetunes.append(rec)
    found = Searched(space, configs, [], {}, models, finetunes, reference, data)
    for c in tqdm(configs, desc="measure", disable=not progress):
        runner = found.runner(c)
        d = data("val", c.geometry.visual_tokens, c.question_tokens)
        found.rows.append({**c.to_dict(), "val_accuracy": evaluate_mfm(runner, tok, d, splits["val"])["accuracy"],
                           **_accel_cost(runner, d), "cpu_ms": _cpu_ms(runner, d, prof["repeats"])})
    found.default = found.rows[configs.index(default_config)]
    return found


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cooptimize", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    add_cache_dir_arg(p, "model cache: the large MFM and the fine-tuned geometries (default .cache/neuromfm/models)")
    p.add_argument("--mfm", type=Path, default=None, help="a trained large MFM folder (HF save_pretrained); default: "
                   "train it or read it from the cache")
    p.add_argument("--finetune-steps", type=int, default=None, help="fine-tune steps per geometry (default: per profile)")
    p.add_argument("--budget-latency-ratio", type=float, default=0.5,
                   help="accelerator latency budget as a fraction of the default configuration's (default 0.5)")
    p.add_argument("--budget-latency-us", type=float, default=None,
                   help="accelerator latency budget in us per question (overrides --budget-latency-ratio)")
    p.add_argument("--budget-energy-uj", type=float, default=None, help="also an accelerator energy budget, uJ/question")
    p.add_argument("--budget-cpu-ms", type=float, default=None, help="also a CPU prefill-time budget, ms per 32 images")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    args = p.parse_args(argv)
    if not 0 < args.budget_latency_ratio:
        p.error(f"--budget-latency-ratio {args.budget_latency_ratio}: a positive fraction of the default latency")
    log = _log(args.quiet)

    import torch

    import ann.models.mfm  # noqa: F401  (registers the MFM with transformers' Auto classes)
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from ann.cooptimize import Budget, BudgetInfeasible, choose, pareto_front
    from ann.train.vqa import evaluate_mfm
    from tasks.synthmed import SynthMedConfig, load_synthmed

    prof = PROFILE_SPACES[args.profile]
    steps = args.finetune_steps if args.finetune_steps is not None else prof["steps"]
    torch.manual_seed(args.seed)
    base_dir = _large_mfm(args, log)
    base = AutoModelForImageTextToText.from_pretrained(base_dir).eval()
    tok = AutoTokenizer.from_pretrained(base_dir)
    cfg = SynthMedConfig(n_train=prof["n_train"], n_val=prof["n_val"], n_test=prof["n_test"])
    splits = {s: load_synthmed(s, cfg) for s in ("train", "val", "test")}
    t_start = time.perf_counter()
    found = search(base, base_dir, tok, splits, prof, steps=steps, seed=args.seed, cache_dir=args.cache_dir, log=log,
                   progress=not args.quiet)
    space, configs, rows, default = found.space, found.configs, found.rows, found.default
    reference, finetunes, data = found.reference, found.finetunes, found.data
    fronts = {k: pareto_front(rows, maximize=["val_accuracy"], minimize=[k])
              for k in ("accel_latency_us", "accel_energy_uj", "cpu_ms")}
    limits = {"accel_latency_us": args.budget_latency_us or args.budget_latency_ratio * default["accel_latency_us"]}
    if args.budget_energy_uj is not None:
        limits["accel_energy_uj"] = args.budget_energy_uj
    if args.budget_cpu_ms is not None:
        limits["cpu_ms"] = args.budget_cpu_ms
    budget = Budget(limits)
    chosen, infeasible = None, None
    try:
        chosen = choose(rows, budget, accuracy="val_accuracy")
    except BudgetInfeasible as e:
        infeasible = str(e)
        log(infeasible)
    test = {}
    for name, r in (("default", default), ("chosen", chosen)):
        if r is None:
            continue
        c = configs[rows.index(r)]
        test[name] = evaluate_mfm(found.runner(c), tok, data("test", c.geometry.visual_tokens, c.question_tokens),
                                  splits["test"])
        log(f"{name} {r['label']}: test accuracy {test[name]['accuracy']:.3f}")
    targets = [Target("accel_latency_reduction", 0.0, ">= 2.0x lower accelerator latency than the default (budget infeasible)", False),
               Target("test_accuracy_lost", 1.0, "<= 0.01 (1 point) of test accuracy lost (budget infeasible)", False)]
    if chosen is not None:
        ratio = default["accel_latency_us"] / chosen["accel_latency_us"]
        drop = test["default"]["accuracy"] - test["chosen"]["accuracy"]
        targets = [Target("accel_latency_reduction", ratio, ">= 2.0x lower accelerator latency than the default", ratio >= 2.0),
                   Target("test_accuracy_lost", drop, "<= 0.01 (1 point) of test accuracy lost", drop <= 0.01)]
    table_rows = sorted(rows, key=lambda r: r["accel_latency_us"])
    front_set = {i for f in fronts.values() for i in f}
    table = [[r["label"], r["visual_tokens"], r["val_accuracy"], r["accel_latency_us"], r["accel_energy_uj"],
              r["data_movement_pct"], r["cpu_ms"], "*" if rows.index(r) in front_set else ""] for r in table_rows]
    args.out.mkdir(parents=True, exist_ok=True)
    _plot(rows, fronts, default, chosen, args.out / "cooptimize.png")
    result = {
        "benchmark": "cooptimize", "profile": args.profile, "seed": args.seed, "machine": machine_info(),
        "versions": versions("transformers"), "torch_threads": torch.get_num_threads(),
        "model": str(base_dir), "reference_val_accuracy_before_finetune": reference,
        "space": {"geometries": [g.label for g in space.geometries], "vit_keeps": space.vit_keeps,
                  "vit_layers": space.vit_layers, "llm_keeps": space.llm_keeps, "llm_layers": space.llm_layers,
                  "question_tokens": space.question_tokens, "points": len(rows)},
        "finetune": {"steps": steps, "per_variant": finetunes},
        "measurement": {"accuracy": f"greedy exact-match answer accuracy, validation split ({prof['n_val']} images x 3 "
                                    "questions) for the search, test split ({prof['n_test']} x 3) for default and chosen",
                        "accelerator": "traced at INT8 (weights, activations), neurohw.accel PRESETS['default'], flash "
                                       "attention, fused vector ops; per question",
                        "cpu": f"median of {prof['repeats']} prefills of 32 images x 3 questions, this machine"},
        "rows": rows, "pareto": {k: [rows[i]["label"] for i in v] for k, v in fronts.items()},
        "default": default, "budget": dict(budget.limits), "chosen": chosen, "infeasible": infeasible, "test": test,
        "targets": [t.to_dict() for t in targets], "wall_seconds": time.perf_counter() - t_start,
    }
    summary = format_table(COLUMNS, table)
    md = ("# MFM input co-optimization\n\n" + format_table(COLUMNS, table, markdown=True) + "\n\n"
          + (f"Chosen under {dict(budget.limits)}: **{chosen['label']}**\n\n" if chosen else f"{infeasible}\n\n")
          + format_targets(targets, markdown=True) + "\n\n![](cooptimize.png)\n")
    path = write_results(args.out, "cooptimize", result, markdown=md)
    print(summary)
    print(f"default: {default['label']}; budget {dict(budget.limits)}; chosen: {chosen['label'] if chosen else infeasible}")
    for name, m in test.items():
        print(f"test accuracy {name}: {m['accuracy']:.3f}")
    print(format_targets(targets))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
