"""``python -m benchmarks.nas [--profile quick|full] [--out DIR]``: memory-aware spiking NAS vs the hand-designed ViT.

Writes ``results/nas.json`` (+ ``nas.md``, ``nas.png``: the candidates' accuracy after short training vs memory,
coloured by energy, with the Pareto front and the budget). Protocol, all on the digits task (:mod:`tasks.digits`):

1. the hand-designed spiking ViT (:class:`snn.models.Spikformer` defaults, engine ``fused``) is trained with the
   recipe of :mod:`benchmarks.snn` (AdamW lr 3e-3, weight decay 0.01, best validation epoch; 30 epochs quick,
   60 full), once per seed; the memory budget is its memory (fp32 weights + membrane state,
   :func:`snn.quant.memory.spiking_memory`);
2. the search (:func:`snn.nas.run_search`: TPE, objectives validation accuracy after short training, memory and
   energy per inference from the accelerator model of issue [H] (:func:`neurohw.accel.inference_energy_pj` on the ``default`` preset: measured spike rates, INT8
   weights and activations, 16-bit membranes), memory as a hard
   constraint) runs in a fresh SQLite study under ``DIR/nas-study/`` (``--resume`` continues the last one). The
   hand-designed point of the space is enqueued first, so it is scored like every candidate;
3. a sample of the complete candidates (the most accurate after short training, the rest spread over the
   ranking) is trained with the full recipe: Spearman's rho between the fast evaluation (short-training
   accuracy; SNASNet's training-free score) and full-training validation accuracy;
4. the final candidate is the sample's best on full-training *validation* accuracy (the test split is never
   used for a choice); it is trained with the remaining seeds, and both networks are judged by their mean test
   accuracy over the same seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch

from benchmarks.common import Stopwatch, Target, add_common_args, format_table, format_targets, machine_info, save_figure, versions, write_results

__all__ = ["main", "PROFILE"]

# profile -> settings (see the module docstring); the full recipe's epochs are benchmarks.snn's
PROFILE = {
    "quick": {"epochs": 30, "trials": 24, "fast_epochs": 3, "sample": 4, "top": 2, "seeds": 1, "train_samples": None},
    "full": {"epochs": 60, "trials": 60, "fast_epochs": 4, "sample": 12, "top": 3, "seeds": 3, "train_samples": None},
}
ACCEL_PRESET = "default"  # inference_energy_pj's default preset
ENERGY_NAME = "neurohw.accel.model:inference_energy_pj"  # the energy objective; a joining worker loads it by name
ENERGY_BATCH = 64


def _mean_std(v: list[float]) -> tuple[float, float]:
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _plot(result, budget: float, hand_number: int | None, best_number: int, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = result.complete()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sc = ax.scatter([t.memory_bytes / 1024 for t in done], [t.val_accuracy for t in done],
                    c=[t.energy / 1e6 for t in done], cmap="viridis", s=28)
    fig.colorbar(sc, ax=ax, label=f"energy per inference (µJ, accelerator '{ACCEL_PRESET}')")
    front, best_acc = [], -1.0  # the accuracy-memory front of the plotted plane (the study's front also has energy)
    for t in sorted(done, key=lambda t: (t.memory_bytes, -t.val_accuracy)):
        if t.val_accuracy > best_acc:
            front.append(t)
            best_acc = t.val_accuracy
    ax.plot([t.memory_bytes / 1024 for t in front], [t.val_accuracy for t in front], "k--", lw=0.8,
            label="Pareto front (accuracy, memory)")
    over = [t.memory_bytes / 1024 for t in result.trials if t.feasible is False]
    if over:
        ax.plot(over, [0.0] * len(over), "x", color="grey", label=f"over budget, not trained ({len(over)})")
    ax.axvline(budget / 1024, color="red", lw=1, label="memory budget (hand-designed ViT)")
    for number, label, marker in ((hand_number, "hand-designed", "s"), (best_number, "selected", "*")):
        t = next((t for t in done if t.number == number), None)
        if t is not None:
            ax.plot(t.memory_bytes / 1024, t.val_accuracy, marker, ms=12, mfc="none", mec="red", label=label)
    ax.set_xlabel("memory (KiB, fp32 weights + membrane state)")
    ax.set_ylabel("validation accuracy after short training")
    ax.set_title("memory-aware spiking NAS on digits")
    ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.nas", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--resume", action="store_true", help="continue the study left in DIR/nas-study (default: start a fresh one)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's); use 1 when other jobs share the cores (measured: with "
                        "another 2-thread job on 2 cores, 2 threads train ~9x slower than 1)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[nas] {m}", file=sys.stderr, flush=True))

    import optuna

    from snn.models import Spikformer, SpikformerConfig
    from snn.nas import (FastEvalConfig, SearchConfig, SearchSpace, default_storage, digits_task, memory_of, open_storage,
                         run_search, spearman, spikformer_genotype, train_fully)
    from snn.quant.memory import spiking_memory
    from tasks.classifier import TrainConfig, evaluate, train_classifier
    from tasks.digits import DigitsConfig, load_digits_split
    from neurohw.accel import inference_energy_pj

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    prof = PROFILE[args.profile]
    seeds = [args.seed + i for i in range(prof["seeds"])]
    data = digits_task(seed=args.seed, train_samples=prof["train_samples"])
    test = load_digits_split("test", DigitsConfig(seed=args.seed))
    x_test, y_test = test.images, test.y
    recipe = TrainConfig(epochs=prof["epochs"], lr=3e-3, weight_decay=0.01, seed=args.seed)
    space = SearchSpace()
    hand_cfg = SpikformerConfig(engine="fused")
    with Stopwatch() as wall:
        # 1. the hand-designed spiking ViT, the recipe of benchmarks.snn, one run per seed
        hand = []
        for s in seeds:
            log(f"hand-designed spiking ViT, seed {s}: {recipe.epochs} epochs")
            torch.manual_seed(s)
            model = Spikformer(hand_cfg)
            with Stopwatch() as sw:
                res = train_classifier(model, x_train=data.x_train, y_train=data.y_train, x_val=data.x_val, y_val=data.y_val,
                                       config=TrainConfig(epochs=recipe.epochs, lr=recipe.lr, weight_decay=recipe.weight_decay,
                                                          seed=s), progress=not args.quiet)
            hand.append({"seed": s, "val_accuracy": res.val_accuracy, "test_accuracy": evaluate(model, x_test, y_test),
                         "train_seconds": sw.seconds})
            if s == seeds[0]:
                hand_memory = spiking_memory(model, x_test[:1])
                hand_energy = inference_energy_pj(model, x_test[:ENERGY_BATCH])
        budget = hand_memory.total_bytes
        log(f"memory budget = the hand-designed ViT's memory: {budget:,.0f} bytes")

        # 2. the search
        storage = default_storage(args.out / "nas-study")
        study_name = f"benchmark-{args.profile}-seed{args.seed}"
        rdb = open_storage(storage)  # (creates the folder of the SQLite file)
        if not args.resume and study_name in optuna.get_all_study_names(rdb):
            optuna.delete_study(study_name=study_name, storage=rdb)
        fast = FastEvalConfig(epochs=prof["fast_epochs"], lr=recipe.lr, weight_decay=recipe.weight_decay, seed=args.seed,
                              energy_batch=ENERGY_BATCH)
        hand_genotype = spikformer_genotype(hand_cfg)
        with Stopwatch() as search_sw:
            result = run_search(space, data, config=SearchConfig(budget_bytes=budget, n_trials=prof["trials"], storage=storage,
                                                                 study_name=study_name, seed=args.seed),
                                fast=fast, energy_fn=inference_energy_pj, energy_name=ENERGY_NAME,
                                enqueue=(hand_genotype,), progress=not args.quiet)
        hand_trial = next((t for t in result.complete() if t.genotype == hand_genotype), None)

        # 3. full training of a sample: rank correlation of the fast evaluation, and the candidates to choose from
        sample = result.sample_for_correlation(prof["sample"], top=prof["top"])
        full = {}
        for i, t in enumerate(sample):
            log(f"full training {i + 1}/{len(sample)}: trial {t.number} [{t.genotype.describe()}]")
            with Stopwatch() as sw:
                model, val = train_fully(t.genotype, space, data, recipe, seed=seeds[0], progress=not args.quiet)
            full[t.number] = {"model": model, "val_accuracy": val, "train_seconds": sw.seconds}
        fast_acc = [t.val_accuracy for t in sample]
        full_acc = [full[t.number]["val_accuracy"] for t in sample]
        rho_fast = spearman(fast_acc, full_acc)
        rho_score = spearman([t.score if t.score is not None else float("-inf") for t in sample], full_acc)
        done = result.complete()
        rho_score_vs_fast = spearman([t.score if t.score is not None else float("-inf") for t in done],
                                     [t.val_accuracy for t in done])

        # 4. the final candidate: best full-training validation accuracy (ties: less memory), then more seeds
        chosen = min(sample, key=lambda t: (-full[t.number]["val_accuracy"], t.memory_bytes, t.number))
        g = chosen.genotype
        best_runs = [{"seed": seeds[0], "val_accuracy": full[chosen.number]["val_accuracy"],
                      "test_accuracy": evaluate(full[chosen.number]["model"], x_test, y_test),
                      "train_seconds": full[chosen.number]["train_seconds"]}]
        best_model = full[chosen.number]["model"]
        for s in seeds[1:]:
            log(f"selected candidate, seed {s}")
            with Stopwatch() as sw:
                model, val = train_fully(g, space, data, recipe, seed=s, progress=not args.quiet)
            best_runs.append({"seed": s, "val_accuracy": val, "test_accuracy": evaluate(model, x_test, y_test),
                              "train_seconds": sw.seconds})
        best_memory = memory_of(best_model, space)
        best_energy = inference_energy_pj(best_model, x_test[:ENERGY_BATCH])

    hand_acc, hand_sd = _mean_std([r["test_accuracy"] for r in hand])
    best_acc, best_sd = _mean_std([r["test_accuracy"] for r in best_runs])
    minutes = wall.seconds / 60
    targets = [
        Target("nas_wall_minutes", minutes, "<= 30 (whole benchmark, 2 cores; the full profile is the claim)", minutes <= 30),
        Target("nas_best_within_budget", best_memory.total_bytes / budget,
               "<= 1.0 (selected model's memory / the hand-designed ViT's)", best_memory.total_bytes <= budget),
        Target("nas_best_accuracy_minus_hand_designed", best_acc - hand_acc,
               f">= 0 (mean test accuracy over seeds {seeds}, both with the same recipe)", best_acc >= hand_acc),
    ]
    counts = result.to_dict()["counts"]
    sample_rows = [{"trial": t.number, "genotype": t.genotype.to_dict(), "describe": t.genotype.describe(),
                    "memory_bytes": t.memory_bytes, "energy_pj": t.energy, "fast_val_accuracy": t.val_accuracy,
                    "training_free_score": t.score, "full_val_accuracy": full[t.number]["val_accuracy"],
                    "full_train_seconds": full[t.number]["train_seconds"]} for t in sample]
    payload = {
        "hand_designed": {"genotype": hand_genotype.to_dict(), "describe": hand_genotype.describe(), "runs": hand,
                          "test_accuracy_mean": hand_acc, "test_accuracy_std": hand_sd, "memory": hand_memory.to_dict(),
                          "energy_pj": hand_energy, "fast_val_accuracy": hand_trial.val_accuracy if hand_trial else None,
                          "search_trial": hand_trial.number if hand_trial else None},
        "selected": {"trial": chosen.number, "genotype": g.to_dict(), "describe": g.describe(), "runs": best_runs,
                     "test_accuracy_mean": best_acc, "test_accuracy_std": best_sd, "memory": best_memory.to_dict(),
                     "energy_pj": best_energy, "fast_val_accuracy": chosen.val_accuracy,
                     "params": sum(p.numel() for p in best_model.parameters())},
        "budget_bytes": budget,
        "search": {"storage": storage, "study": study_name, "trials_target": prof["trials"], "counts": counts,
                   "seconds": search_sw.seconds, "fast_eval": fast.to_dict(), "space": space.to_dict(),
                   "pareto": [t.to_dict() for t in sorted(result.pareto(), key=lambda t: t.memory_bytes)],
                   "trials": [t.to_dict() for t in result.trials]},
        "rank_correlation": {"sample": sample_rows, "n": len(sample),
                             "spearman_fast_vs_full": rho_fast, "spearman_training_free_vs_full": rho_score,
                             "spearman_training_free_vs_fast_all_trials": rho_score_vs_fast,
                             "protocol": f"{len(sample)} complete candidates (the {min(prof['top'], len(sample))} best "
                                         f"after {fast.epochs}-epoch training, the rest spread over the ranking), each "
                                         f"trained {recipe.epochs} epochs with seed {seeds[0]}; validation accuracy"},
        "recipe": {"epochs": recipe.epochs, "lr": recipe.lr, "weight_decay": recipe.weight_decay, "seeds": seeds,
                   "energy": f"neurohw.accel preset '{ACCEL_PRESET}', INT8 weights/activations, 16-bit membranes, "
                             f"{ENERGY_BATCH} test images"},
        "targets": [t.to_dict() for t in targets],
        "meta": {"benchmark": "nas", "profile": args.profile, "seed": args.seed, "wall_time_s": wall.seconds,
                 "torch_threads": torch.get_num_threads(),
                 "machine": machine_info(), "versions": versions("optuna", "spikingjelly")},
    }
    cols = ["model", "test acc (mean)", "sd", "seeds", "memory B", "energy pJ", "fast val acc"]
    rows = [["hand-designed spiking ViT", hand_acc, hand_sd, len(hand), budget, hand_energy,
             hand_trial.val_accuracy if hand_trial else None],
            [f"NAS selected (trial {chosen.number})", best_acc, best_sd, len(best_runs), best_memory.total_bytes,
             best_energy, chosen.val_accuracy]]
    rc_cols = ["trial", "genotype", "memory B", "fast val acc", "training-free score", "full val acc"]
    rc_rows = [[r["trial"], r["describe"], r["memory_bytes"], r["fast_val_accuracy"], r["training_free_score"],
                r["full_val_accuracy"]] for r in sample_rows]
    rho = (f"Spearman rho, fast (short training) vs full: {rho_fast if rho_fast is None else round(rho_fast, 3)}; "
           f"training-free score vs full: {rho_score if rho_score is None else round(rho_score, 3)} (n={len(sample)})")
    md = ("# neuromfm memory-aware spiking NAS (digits)\n\n"
          f"Selected: `{g.describe()}`; hand-designed: `{hand_genotype.describe()}`. Budget {budget:,.0f} bytes. "
          f"Search: {counts} in {search_sw.seconds:.0f} s; wall {minutes:.1f} min.\n\n"
          + format_table(cols, rows, markdown=True) + "\n\n## Fast evaluation vs full training\n\n"
          + format_table(rc_cols, rc_rows, markdown=True) + f"\n\n{rho}\n\n" + format_targets(targets, markdown=True) + "\n")
    path = write_results(args.out, "nas", payload, markdown=md)
    _plot(result, budget, hand_trial.number if hand_trial else None, chosen.number, args.out / "nas.png")
    print(format_table(cols, rows))
    print(format_table(rc_cols, rc_rows))
    print(rho)
    print(format_targets(targets))
    print(f"wrote {path} in {wall.seconds:.1f} s")
    return payload


if __name__ == "__main__":
    main()
