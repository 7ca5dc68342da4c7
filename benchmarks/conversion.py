"""ANN -> SNN conversion at low timesteps: ours vs SpikingJelly's ann2snn on the same trained ANNs.

Models, each trained here (cached under ``--cache-dir``, keyed by a hash of its config and code):

- digits: a ReLU MLP, a ReLU CNN (2 convolutions) and a deeper VGG-style CNN (6 convolutions), each fine-tuned
  with QCFS activations (``quant.qcfs``, L = 8 levels), and a spike-friendly ViT (``ann.models.sfvit``) trained with
  QCFS from the start;
- SynthMed-VQA: a spike-friendly ViT (4 blocks; of depths 2, 4 and 6 at width 64, 4 has the best validation
  accuracy) that reads the image patches and the question's words and classifies the answer, trained with QCFS
  from the start.

For each model, in one run: the ANN's test accuracy; our conversion (``conversion.convert_sequential`` /
``conversion.convert_transformer``) at every T up to ``T_max`` (one run gives the read-out after every step);
SpikingJelly's ``ann2snn`` rate-coding converter with robust norm (99.9th percentile) on the same weights
(``conversion.peer``) at the same T; ablations (threshold balancing of the ReLU CNN before QCFS by max,
percentile and per-channel percentile; binary instead of multi-level neurons in the ViTs); per-layer firing rates
and synaptic operations at T = 8. Targets per model: within 1 point of the ANN at T = 32 and within 3 points at
T = 8. The target "at least 5 points above SpikingJelly at T = 8" is checked on each task's designated model
(:data:`PEER_TARGET_MODELS`: the digits deep CNN, where SpikingJelly spikes every layer, as in the ResNet-18
example of the issue, and the SynthMed ViT): on the shallow models SpikingJelly itself stays within a few points
of the ANN at T = 8, so no converter can be 5 points above it; their margins are reported
(``spikingjelly_margins``: ours - SpikingJelly, ANN - SpikingJelly) but not scored. In the ViTs SpikingJelly
converts only the MLP's ReLUs and leaves LayerNorm, softmax attention and the residual stream analog, a hybrid
that is far closer to the ANN than a fully spiking network. Writes ``conversion.json``, ``conversion.md`` and
``conversion_accuracy_vs_T.png``.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (Stopwatch, Target, add_common_args, format_table, format_targets, machine_info, save_figure,
                               versions, write_results)
from benchmarks.models import code_fingerprint

# the code a trained ANN here depends on (its hash is part of every cache key)
CODE_PATHS = ("ann/models", "tasks/classifier.py", "quant/qcfs.py", "tasks/digits.py", "tasks/synthmed.py")
LEVELS = 8  # QCFS quantization levels of every ANN
PEER_TARGET_MODELS = {"digits": "deep_cnn", "synthmed": "vit"}  # where ">= 5 points above SpikingJelly" is scored


@dataclass(frozen=True)
class Profile:
    t_max: int
    digits_epochs: dict
    vqa_images: tuple[int, int, int]  # train, val, test images (3 questions each)
    vqa_epochs: int
    vqa_model: dict


PROFILES = {
    "quick": Profile(t_max=32, digits_epochs={"mlp": (30, 10), "cnn": (10, 5), "deep_cnn": (15, 5), "vit": 30}, vqa_images=(2000, 200, 600),
                     vqa_epochs=10, vqa_model={"dim": 64, "depth": 4}),
    "full": Profile(t_max=64, digits_epochs={"mlp": (60, 20), "cnn": (30, 10), "deep_cnn": (30, 10), "vit": 60}, vqa_images=(4000, 500, 1000),
                    vqa_epochs=30, vqa_model={"dim": 96, "depth": 4}),
}


def _cached_train(name: str, key: dict, build: Callable[[], torch.nn.Module], train: Callable[[torch.nn.Module], dict],
                  cache_dir: Path, log: Callable[[str], None]) -> tuple[torch.nn.Module, dict]:
    """Build the model; load its weights from the cache if this exact config and code trained it before, else train."""
    from tasks.io import atomic_write_json, load_tensors, read_json, save_tensors

    digest = hashlib.sha256(json.dumps({**key, "code": code_fingerprint(CODE_PATHS), "torch": torch.__version__}, sort_keys=True).encode()).hexdigest()[:12]
    path = cache_dir / f"{name}-{digest}"
    model = build()
    if (path / "info.json").exists():
        try:
            model.load_state_dict(load_tensors(path / "model.safetensors"))
            info = read_json(path / "info.json")
            log(f"{name}: loaded cached ANN {path}")
            return model.eval(), info | {"cached": True}
        except (OSError, ValueError, RuntimeError) as e:
            warnings.warn(f"{name}: cached checkpoint unusable, retraining: {e}", stacklevel=1)
            model = build()
    log(f"{name}: training the ANN")
    with Stopwatch() as sw:
        info = train(model)
    info = {**info, "train_seconds": sw.seconds, "key": key}
    save_tensors(path / "model.safetensors", {k: v.contiguous() for k, v in model.state_dict().items()})
    atomic_write_json(path / "info.json", info)
    return model.eval(), info | {"cached": False}


def _acc_curve(prefix: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Accuracy after every step from ``(T, B, C)`` read-outs."""
    return [float(v) for v in (prefix.argmax(-1) == y).float().mean(-1)]


def _batched_prefix(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, batch: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([fn(x[i:i + batch]) for i in range(0, len(x), batch)], dim=1)


def _sequential_accounting(snn, x: torch.Tensor) -> dict:
    """Per-layer firing rates and SOPs of a converted MLP/CNN from the workload IR."""
    from neurohw.workload import OpKind, trace

    w = trace(snn, x, name="converted", timesteps=snn.timesteps)
    layers = [{"layer": op.name, "kind": op.kind.value, "firing_rate": op.firing_rate, "neurons": op.neurons,
               "sops": op.sops, "macs": op.macs} for op in w.ops if op.kind is OpKind.NEURON or op.sops or op.macs]
    return {"timesteps": snn.timesteps, "layers": layers, "sops": w.sops, "macs": w.macs, "firing_rate": w.firing_rate}


def _evaluate(name: str, ann, data: dict, *, t_max: int, kind: str, log, batch: int, relu_ann=None) -> dict:
    """ANN accuracy, our conversion's and SpikingJelly's accuracy for T = 1..t_max, ablations, accounting."""
    from tasks.classifier import evaluate
    from conversion import ConversionConfig, convert_sequential
    from conversion.peer import spikingjelly_convert, spikingjelly_prefix_outputs
    from conversion.transformer import TransformerConversionConfig, convert_transformer, transformer_accounting

    xc, xt, yt = data["calib"], data["x_test"], data["y_test"]
    res: dict = {"ann_accuracy": evaluate(ann, xt, yt), "curves": {}, "seconds": {}}
    convert = ((lambda m, cfg: convert_transformer(m, xc, timesteps=t_max, config=cfg)) if kind == "vit" else
               (lambda m, cfg: convert_sequential(m, xc, timesteps=t_max, config=cfg)))
    default = TransformerConversionConfig() if kind == "vit" else ConversionConfig()
    variants = {"ours": (ann, default)}
    if kind == "vit":
        variants["ours, binary signed neurons (levels=1)"] = (ann, TransformerConversionConfig(levels=1))
    if relu_ann is not None:
        res["relu_ann_accuracy"] = evaluate(relu_ann, xt, yt)
        for label, cfg in (("ReLU ANN, max norm", ConversionConfig(norm="max")),
                           ("ReLU ANN, 99.9% norm", ConversionConfig(norm="percentile")),
                           ("ReLU ANN, per-channel 99.9% norm", ConversionConfig(per_channel=True))):
            variants[label] = (relu_ann, cfg)
    for label, (model, cfg) in variants.items():
        log(f"{name}: {label}, T = 1..{t_max}")
        with Stopwatch() as sw:
            snn = convert(model, cfg)
            res["curves"][label] = _acc_curve(_batched_prefix(snn.prefix_outputs, xt, batch), yt)
        res["seconds"][label] = sw.seconds
        if label == "ours":
            snn.timesteps = 8
            n = min(len(xt), 128)
            res["accounting_T8"] = transformer_accounting(snn, xt[:n]) if kind == "vit" else _sequential_accounting(snn, xt[:n])
    log(f"{name}: SpikingJelly ann2snn (robust norm 99.9%), T = 1..{t_max}")
    with Stopwatch() as sw:
        sj = spikingjelly_convert(ann, [xc[i:i + 256] for i in range(0, len(xc), 256)], mode="99.9%")
        res["curves"]["spikingjelly ann2snn (99.9%)"] = _acc_curve(
            _batched_prefix(lambda x: spikingjelly_prefix_outputs(sj, x, t_max), xt, batch), yt)
    res["seconds"]["spikingjelly"] = sw.seconds
    return res


def _digits(profile: Profile, args, log) -> dict:
    from ann.models import CNNConfig, MLPConfig, ReLUCNN, ReLUMLP
    from ann.models.sfvit import SFViTConfig, SpikeFriendlyViT
    from ann.train import TrainConfig, train_classifier
    from quant.qcfs import replace_relu_with_qcfs
    from tasks.digits import load_digits_split

    tr, va, te = (load_digits_split(s) for s in ("train", "val", "test"))
    data = {"calib": tr.x, "x_test": te.x, "y_test": te.y}

    def fit(model, epochs: int, lr: float = 2e-3) -> dict:
        torch.manual_seed(args.seed)
        r = train_classifier(model, x_train=tr.x, y_train=tr.y, x_val=va.x, y_val=va.y,
                             config=TrainConfig(epochs=epochs, lr=lr, seed=args.seed), progress=not args.quiet)
        return {"best_epoch": r.best_epoch, "val_accuracy": r.val_accuracy}

    out = {}
    deep = CNNConfig(stages=((32, 32, 32), (64, 64, 64)))
    for name, build, cfg in (("mlp", lambda: ReLUMLP(config=MLPConfig(hidden=(256, 256))), MLPConfig(hidden=(256, 256)).to_dict()),
                             ("cnn", lambda: ReLUCNN(config=CNNConfig()), CNNConfig().to_dict()),
                             ("deep_cnn", lambda: ReLUCNN(config=deep), deep.to_dict())):
        relu_epochs, qcfs_epochs = profile.digits_epochs[name]

        def build_relu(build=build):
            torch.manual_seed(args.seed)
            return build()

        relu, relu_info = _cached_train(f"digits-{name}-relu", {"model": cfg, "epochs": relu_epochs, "seed": args.seed},
                                        build_relu, lambda m, e=relu_epochs: fit(m, e), args.cache_dir, log)

        def build_qcfs(build=build):
            m = build()
            replace_relu_with_qcfs(m, levels=LEVELS)
            return m

        def train_qcfs(m, relu=relu, e=qcfs_epochs):
            # start from the trained ReLU weights, each lambda at that ReLU's 99.9th percentile, then fine-tune
            start = copy.deepcopy(relu)
            replace_relu_with_qcfs(start, levels=LEVELS, x_calib=tr.x)
            m.load_state_dict(start.state_dict())
            return fit(m, e, lr=5e-4)

        qcfs, qcfs_info = _cached_train(f"digits-{name}-qcfs", {"model": cfg, "relu_epochs": relu_epochs, "epochs": qcfs_epochs,
                                                               "levels": LEVELS, "seed": args.seed},
                                        build_qcfs, train_qcfs, args.cache_dir, log)
        out[name] = {"train": {"relu": relu_info, "qcfs": qcfs_info},
                     **_evaluate(f"digits {name}", qcfs, data, t_max=profile.t_max, kind="seq", log=log, batch=512,
                                 relu_ann=relu)}
    vit_cfg = SFViTConfig()

    def build_vit():
        torch.manual_seed(args.seed)
        m = SpikeFriendlyViT(config=vit_cfg)
        replace_relu_with_qcfs(m, levels=LEVELS)
        return m

    vit, vit_info = _cached_train("digits-vit-qcfs", {"model": vit_cfg.to_dict(), "epochs": profile.digits_epochs["vit"],
                                                      "levels": LEVELS, "seed": args.seed},
                                  build_vit, lambda m: fit(m, profile.digits_epochs["vit"]), args.cache_dir, log)
    out["vit"] = {"train": {"qcfs": vit_info}, **_evaluate("digits vit", vit, data, t_max=profile.t_max, kind="vit", log=log, batch=128)}
    return out


def synthmed_xy(split) -> tuple[torch.Tensor, torch.Tensor]:
    """A SynthMed-VQA split as the ViT's inputs, one row per question (pixels and question word ids,
    :meth:`ann.models.sfvit.SpikeFriendlyViT.pack`), and the answer ids."""
    from ann.models.sfvit import SpikeFriendlyViT

    px = torch.from_numpy(split.sample_images(np.arange(len(split))))
    return SpikeFriendlyViT.pack(px, torch.tensor(split.question_ids)), torch.tensor(split.answer_ids)


def synthmed_vit(profile: Profile, seed: int, cache_dir: Path, log, *, quiet: bool):
    """The SynthMed-VQA spike-friendly ViT of ``profile`` (4 blocks, QCFS activations from the start), trained on its
    own splits or read from ``cache_dir``: ``(vit, train info, {split name: SynthMedSplit}, {split name: (x, y)})``."""
    from ann.models.sfvit import SFViTConfig, SpikeFriendlyViT
    from ann.train import TrainConfig, train_classifier
    from quant.qcfs import replace_relu_with_qcfs
    from tasks.synthmed import ANSWER_VOCAB, QUESTION_MAX_LEN, QUESTION_VOCAB, SynthMedConfig, load_synthmed

    n_tr, n_va, n_te = profile.vqa_images
    dcfg = SynthMedConfig(n_train=n_tr, n_val=n_va, n_test=n_te, seed=seed)
    splits = {s: load_synthmed(s, dcfg) for s in ("train", "val", "test")}
    (xtr, ytr), (xva, yva), (xte, yte) = (synthmed_xy(splits[s]) for s in ("train", "val", "test"))
    pixels = xtr[:, : dcfg.image_size ** 2]
    cfg = SFViTConfig(image_size=dcfg.image_size, patch_size=8, heads=4, mlp_ratio=2, num_classes=len(ANSWER_VOCAB),
                      text_vocab=len(QUESTION_VOCAB), text_len=QUESTION_MAX_LEN, image_mean=round(float(pixels.mean()), 4),
                      image_std=round(float(pixels.std()), 4), **profile.vqa_model)

    def build():
        torch.manual_seed(seed)
        m = SpikeFriendlyViT(config=cfg)
        replace_relu_with_qcfs(m, levels=LEVELS)
        return m

    def train(m):
        torch.manual_seed(seed)
        r = train_classifier(m, x_train=xtr, y_train=ytr, x_val=xva, y_val=yva,
                             config=TrainConfig(epochs=profile.vqa_epochs, lr=2e-3, seed=seed), progress=not quiet)
        return {"best_epoch": r.best_epoch, "val_accuracy": r.val_accuracy}

    vit, info = _cached_train("synthmed-vit-qcfs", {"model": cfg.to_dict(), "data": asdict(dcfg), "epochs": profile.vqa_epochs,
                                                    "levels": LEVELS, "seed": seed}, build, train, cache_dir, log)
    return vit, info, splits, {"train": (xtr, ytr), "val": (xva, yva), "test": (xte, yte)}


def _synthmed(profile: Profile, args, log) -> dict:
    from tasks.synthmed import blind_baseline

    vit, info, splits, xy = synthmed_vit(profile, args.seed, args.cache_dir, log, quiet=args.quiet)
    (xtr, _), (xte, yte) = xy["train"], xy["test"]
    calib = xtr[torch.randperm(len(xtr), generator=torch.Generator().manual_seed(args.seed))[:1024]]
    data = {"calib": calib, "x_test": xte, "y_test": yte}
    res = _evaluate("synthmed vit", vit, data, t_max=profile.t_max, kind="vit", log=log, batch=64)
    return {"vit": {"train": {"qcfs": info}, "blind_baseline_accuracy": blind_baseline(splits["train"], splits["test"]).accuracy,
                    "n_test_samples": len(yte), **res}}


def _targets(tasks: dict) -> list[Target]:
    targets = []
    for task, models in tasks.items():
        for name, r in models.items():
            ann, ours, sj = r["ann_accuracy"], r["curves"]["ours"], r["curves"]["spikingjelly ann2snn (99.9%)"]
            pre = f"{task}_{name}"
            if len(ours) >= 32:
                d32 = ann - ours[31]
                targets.append(Target(name=f"{pre}_ann_minus_snn_T32", measured=d32, goal="<= 0.01", met=d32 <= 0.01))
            d8 = ann - ours[7]
            targets.append(Target(name=f"{pre}_ann_minus_snn_T8", measured=d8, goal="<= 0.03", met=d8 <= 0.03))
            if PEER_TARGET_MODELS.get(task) == name:
                m8 = ours[7] - sj[7]
                targets.append(Target(name=f"{pre}_ours_minus_spikingjelly_T8", measured=m8, goal=">= 0.05", met=m8 >= 0.05))
    return targets


def _peer_margins(tasks: dict) -> dict:
    """Per model at T = 8: ours - SpikingJelly and ANN - SpikingJelly (the most any converter could gain over it)."""
    out = {}
    for task, models in tasks.items():
        for name, r in models.items():
            ann, ours, sj = r["ann_accuracy"], r["curves"]["ours"][7], r["curves"]["spikingjelly ann2snn (99.9%)"][7]
            out[f"{task}_{name}"] = {"ours_minus_spikingjelly_T8": ours - sj, "ann_minus_spikingjelly_T8": ann - sj,
                                     "scored": PEER_TARGET_MODELS.get(task) == name}
    return out


def _plot(tasks: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(t, n, r) for t, models in tasks.items() for n, r in models.items()]
    labels = list(dict.fromkeys(label for _, _, r in panels for label in r["curves"]))
    color = {label: f"C{i}" for i, label in enumerate(labels)}  # one colour per method across panels
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (task, name, r) in zip(axes[0], panels):
        for label, curve in r["curves"].items():
            ts = np.arange(1, len(curve) + 1)
            style = "-" if label == "ours" else ("--" if "spikingjelly" in label else ":")
            ax.plot(ts, curve, style, color=color[label], label=label, lw=2 if label == "ours" else 1.2)
        ax.axhline(r["ann_accuracy"], color="k", lw=0.8, label="ANN (QCFS)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("timesteps T")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{task} {name}")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.conversion", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--only", nargs="+", choices=("digits", "synthmed"), default=("digits", "synthmed"), help="tasks to run")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/neuromfm/conversion"), help="trained ANNs, keyed by config")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[conversion {time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    tasks = {}
    if "digits" in args.only:
        tasks["digits"] = _digits(profile, args, log)
    if "synthmed" in args.only:
        tasks["synthmed"] = _synthmed(profile, args, log)
    targets = _targets(tasks)
    show = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= profile.t_max]
    rows = []
    for task, models in tasks.items():
        for name, r in models.items():
            rows.append([f"{task} {name}", "ANN (QCFS)", *[r["ann_accuracy"]] * len(show)])
            for label, curve in r["curves"].items():
                rows.append([f"{task} {name}", label, *[curve[t - 1] for t in show]])
    table = format_table(["model", "method", *[f"T={t}" for t in show]], rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plot = _plot(tasks, args.out / "conversion_accuracy_vs_T.png")
    payload = {"benchmark": "conversion", "profile": args.profile, "seed": args.seed, "profile_settings": asdict(profile),
               "qcfs_levels": LEVELS, "machine": machine_info(), "versions": versions("torch", "spikingjelly", "numpy"),
               "tasks": tasks, "targets": [asdict(t) for t in targets], "spikingjelly_margins": _peer_margins(tasks),
               "plot": str(plot),
               "wall_seconds": time.perf_counter() - t0,
               "notes": {"curves": "test accuracy after T = 1..T_max steps (index T-1); ours and SpikingJelly on the same QCFS-trained "
                                   "weights (SpikingJelly gets each QCFS replaced by a ReLU; it converts ReLUs only, so in the ViTs its "
                                   "LayerNorm, softmax, q/k/v and residual stream stay analog per-step ANN operators)",
                         "accounting_T8": "ours at T=8 on up to 128 test samples, per inference"}}
    margins = format_table(["model", "ours - SpikingJelly (T=8)", "ANN - SpikingJelly (T=8)", "scored"],
                           [[k, m["ours_minus_spikingjelly_T8"], m["ann_minus_spikingjelly_T8"], m["scored"]]
                            for k, m in payload["spikingjelly_margins"].items()])
    md = "\n\n".join(["# benchmarks.conversion", table, margins, format_targets(targets, markdown=True)])
    write_results(args.out, "conversion", payload, markdown=md)
    print(table)
    print(margins)
    print(format_targets(targets))
    return payload


if __name__ == "__main__":
    main()
