"""``python -m benchmarks.compare ann snn``: every variant of both tracks on one yardstick.

For each task, the ANN track trains (or loads from the cache) the reference ANN, and the SNN track
converts it to integrate-and-fire neurons and runs it at several timesteps T. Every variant is evaluated
on the task's test split, traced into the workload IR (:mod:`neurohw.workload`) on that same test split
(so synaptic operations and firing rates are measured, not assumed), and costed by the energy model
(:mod:`neurohw.energy`), energy split into compute and memory access.

Writes ``OUT/compare.json`` (rows + meta + targets), ``OUT/compare.md`` and ``OUT/compare.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import (Stopwatch, Target, add_common_args, format_table, format_targets, machine_info, save_figure,
                               versions, write_results)

TRACKS = ("ann", "snn")
COLUMNS = ("track", "variant", "task", "accuracy", "params", "macs", "sops", "timesteps", "firing_rate",
           "E compute uJ", "E memory uJ", "E total uJ", "CPU ms/sample")


@dataclass(frozen=True)
class Profile:
    timesteps: tuple[int, ...]
    epochs: int
    latency_repeats: int


PROFILES = {
    "quick": Profile(timesteps=(8, 16, 32, 64), epochs=60, latency_repeats=3),
    "full": Profile(timesteps=(4, 8, 16, 32, 64, 128, 256), epochs=120, latency_repeats=5),
}


def cpu_ms_per_sample(model: torch.nn.Module, x: torch.Tensor, *, repeats: int) -> float:
    """Median wall time of one batched forward pass over ``x``, per sample, in milliseconds."""
    times = []
    with torch.no_grad():
        model(x[:8])  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2] / len(x)


def make_row(*, track: str, variant: str, task: str, accuracy: float, workload, cpu_ms: float) -> dict:
    from neurohw.energy import estimate_energy

    energy = estimate_energy(workload)
    return {
        "track": track,
        "variant": variant,
        "task": task,
        "accuracy": accuracy,
        "params": int(workload.params),
        "macs": int(round(workload.macs)),
        "sops": int(round(workload.sops)),
        "timesteps": workload.timesteps if track == "snn" else None,
        "firing_rate": workload.firing_rate,
        "energy_uj": energy.as_row(),
        "neuron_updates": int(round(workload.neuron_updates)),
        "memory_level": energy.memory_level,
        "cpu_ms_per_sample": cpu_ms,
        "workload": workload.to_dict(),
    }


# ------------------------------------------------------------------------------------------- digits
def _digits_ann(args: argparse.Namespace, profile: Profile, log: Callable[[str], None]):
    """Train the digits MLP, or load it from the cache (keyed by a hash of everything that shapes it)."""
    from ann.checkpoint import load_mlp, save_mlp
    from ann.models import MLPConfig, ReLUMLP
    from ann.train import TrainConfig, train_classifier
    from tasks.digits import DigitsConfig, load_digits_split

    data_cfg = DigitsConfig(seed=args.seed)
    model_cfg = MLPConfig()
    train_cfg = TrainConfig(epochs=profile.epochs, seed=args.seed)
    splits = {s: load_digits_split(s, data_cfg) for s in ("train", "val", "test")}
    if args.checkpoint is not None:
        model, _ = load_mlp(args.checkpoint)  # user-given: missing or corrupt is an error naming the file
        return model, splits, {"checkpoint": str(args.checkpoint)}
    key_src = json.dumps({"data": asdict(data_cfg), "model": model_cfg.to_dict(), "train": asdict(train_cfg), "torch": torch.__version__}, sort_keys=True)
    ckpt = args.cache_dir / f"digits-mlp-{hashlib.sha256(key_src.encode()).hexdigest()[:12]}"
    if (ckpt / "config.json").exists():
        try:
            model, meta = load_mlp(ckpt)
            log(f"digits: loaded cached ANN checkpoint {ckpt}")
            return model, splits, meta.get("train_result", {}) | {"checkpoint": str(ckpt), "cached": True}
        except (OSError, ValueError) as e:
            warnings.warn(f"cached checkpoint unusable, retraining: {e}", stacklevel=1)
    torch.manual_seed(args.seed)
    model = ReLUMLP(config=model_cfg)
    log(f"digits: training the ANN ({train_cfg.epochs} epochs)")
    res = train_classifier(model, x_train=splits["train"].x, y_train=splits["train"].y,
                           x_val=splits["val"].x, y_val=splits["val"].y, config=train_cfg)
    info = {"best_epoch": res.best_epoch, "val_accuracy": res.val_accuracy}
    save_mlp(model, ckpt, extra={"train_result": info, "key": json.loads(key_src)})
    return model, splits, info | {"checkpoint": str(ckpt), "cached": False}


def run_digits(args: argparse.Namespace, profile: Profile, log: Callable[[str], None]) -> tuple[list[dict], dict, list[Target]]:
    from tasks.classifier import evaluate
    from conversion import ConversionConfig, convert_sequential
    from neurohw.workload import Numeric, trace
    from quant import ptq_sequential

    model, splits, train_info = _digits_ann(args, profile, log)
    test = splits["test"]
    rows: list[dict] = []
    ann_acc = evaluate(model, test.x, test.y)
    if "ann" in args.tracks:
        rows.append(make_row(track="ann", variant="MLP fp32", task="digits", accuracy=ann_acc,
                             workload=trace(model, test.x, name="digits MLP fp32"),
                             cpu_ms=cpu_ms_per_sample(model, test.x, repeats=profile.latency_repeats)))
    meta = {"ann_training": train_info, "n_test": len(test)}
    targets = [Target(name="digits_ann_test_accuracy", measured=ann_acc, goal=">= 0.95", met=ann_acc >= 0.95)]
    if "ann" in args.tracks:
        q = ptq_sequential(model.net, splits["train"].x, weight_bits=8, act_bits=8)
        rows.append(make_row(track="ann", variant="MLP W8A8 (int8 PTQ)", task="digits", accuracy=evaluate(q, test.x, test.y),
                             workload=trace(q, test.x, name="digits MLP W8A8", numeric=Numeric.INT, weight_bits=8, act_bits=8),
                             cpu_ms=cpu_ms_per_sample(q, test.x, repeats=profile.latency_repeats)))
        meta["ann_int8"] = {"weights": "symmetric per-output-channel int8", "activations": "per-tensor uint8, max-calibrated on train",
                            "execution": "fake-quant on CPU (accuracy exact for the integer codes; CPU time is not an int8 kernel's)"}
    if "snn" in args.tracks:
        conv_cfg = ConversionConfig()
        snn = convert_sequential(model, splits["train"].x, timesteps=profile.timesteps[0], config=conv_cfg)
        meta["conversion"] = {**asdict(conv_cfg), "norm": conv_cfg.norm.value, "calibration": "digits train split"}
        for T in profile.timesteps:
            snn.timesteps = T
            log(f"digits: SNN at T={T}")
            rows.append(make_row(track="snn", variant=f"converted IF T={T}", task="digits",
                                 accuracy=evaluate(snn, test.x, test.y),
                                 workload=trace(snn, test.x, name=f"digits converted SNN T={T}", timesteps=T),
                                 cpu_ms=cpu_ms_per_sample(snn, test.x, repeats=profile.latency_repeats)))
    return rows, meta, targets


# task name -> runner(args, profile, log) -> (rows, task metadata, targets of that task)
TASKS: dict[str, Callable[[argparse.Namespace, Profile, Callable[[str], None]], tuple[list[dict], dict, list[Target]]]] = {
    "digits": run_digits,
}


# ------------------------------------------------------------------------------------------- report
def table_rows(rows: list[dict]) -> list[list[object]]:
    return [[r["track"], r["variant"], r["task"], r["accuracy"], r["params"], r["macs"], r["sops"], r["timesteps"],
             r["firing_rate"], r["energy_uj"]["compute"], r["energy_uj"]["memory"], r["energy_uj"]["total"],
             r["cpu_ms_per_sample"]] for r in rows]


def plot(rows: list[dict], path: Path) -> None:
    """Accuracy vs energy per task (left) and the compute / memory split of every variant (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for task in sorted({r["task"] for r in rows}):
        for track, marker in (("ann", "s"), ("snn", "o")):
            pts = [r for r in rows if r["task"] == task and r["track"] == track]
            if pts:
                ax1.plot([r["energy_uj"]["total"] for r in pts], [100 * r["accuracy"] for r in pts], marker=marker,
                         linestyle="-" if track == "snn" else "none", label=f"{task} {track.upper()}")
                for r in pts:
                    ax1.annotate(f"T={r['timesteps']}" if r["timesteps"] else r["variant"], (r["energy_uj"]["total"], 100 * r["accuracy"]),
                                 textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlabel("energy per inference (uJ, compute + memory)")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_title("accuracy vs energy")
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend()
    labels = [f"{r['task']}\n{r['variant']}" for r in rows]
    comp = [r["energy_uj"]["compute"] for r in rows]
    mem = [r["energy_uj"]["memory"] for r in rows]
    ax2.bar(labels, comp, label="compute")
    ax2.bar(labels, mem, bottom=comp, label="memory access")
    ax2.set_ylabel("energy per inference (uJ)")
    ax2.set_title("energy breakdown")
    ax2.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax2.legend()
    fig.tight_layout()
    save_figure(fig, path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="example: python -m benchmarks.compare ann snn --task digits --profile quick")
    p.add_argument("tracks", nargs="+", choices=TRACKS, metavar="TRACK", help=f"one or more of {', '.join(TRACKS)}")
    p.add_argument("--task", action="append", choices=sorted(TASKS), help="task to run (repeatable; default: all)")
    add_common_args(p)
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/neuromfm/checkpoints"),
                   help="where trained ANN checkpoints are cached, keyed by a hash of their config")
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="use this digits MLP checkpoint folder (model.safetensors + config.json) instead of training")
    p.add_argument("--quiet", action="store_true", help="no progress messages or bars")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.tracks = tuple(dict.fromkeys(args.tracks))
    tasks = args.task or sorted(TASKS)
    profile = PROFILES[args.profile]
    log = (lambda _msg: None) if args.quiet else (lambda msg: print(f"[compare] {msg}", file=sys.stderr, flush=True))
    torch.manual_seed(args.seed)
    rows: list[dict] = []
    task_meta: dict[str, dict] = {}
    targets: list[Target] = []
    with Stopwatch() as sw:
        for task in tasks:
            task_rows, task_meta[task], task_targets = TASKS[task](args, profile, log)
            rows += task_rows
            targets += task_targets
    targets.append(Target(name="compare_wall_time_s", measured=sw.seconds, goal="<= 600 (quick profile, 2 cores)",
                          met=sw.seconds <= 600 or args.profile != "quick"))
    from neurohw.constants import HOROWITZ_45NM_SOURCE

    payload = {
        "rows": rows,
        "meta": {
            "benchmark": "compare",
            "argv": sys.argv[1:] if argv is None else argv,
            "tracks": list(args.tracks),
            "tasks": tasks,
            "profile": args.profile,
            "seed": args.seed,
            "wall_time_s": sw.seconds,
            "machine": machine_info(),
            "versions": versions("spikingjelly", "scikit-learn", "safetensors"),
            "energy_model": {"module": "neurohw.energy", "source": HOROWITZ_45NM_SOURCE,
                             "note": "45 nm; memory access charged at the smallest SRAM holding the working set"},
            "tasks_meta": task_meta,
        },
        "targets": [t.to_dict() for t in targets],
    }
    text = format_table(COLUMNS, table_rows(rows))
    md = "# neuromfm compare\n\n" + format_table(COLUMNS, table_rows(rows), markdown=True) + "\n\n" + \
         format_targets(targets, markdown=True) + "\n"
    path = write_results(args.out, "compare", payload, markdown=md)
    if rows:
        plot(rows, args.out / "compare.png")
    print(text)
    print(format_targets(targets))
    print(f"wrote {path}, {args.out / 'compare.md'}, {args.out / 'compare.png'}")
    return payload


if __name__ == "__main__":
    main()
