"""Spiking networks on simulated Loihi: bit-exactness of our fixed-point simulator against Lava, its speed, and the
accuracy, resources, energy and time of the deployed networks.

Networks (each built here, seeded):

- ``digits_mlp``: 64 -> 128 LIF (tau 2) -> 10 read-out, trained on digits with surrogate-gradient BPTT at T = 8;
- ``digits_cnn``: conv 3x3 (8) -> LIF -> conv 3x3 stride 2 (16) -> LIF -> 10 read-out, trained the same way;
- ``digits_converted_mlp``: 64 -> 256 -> 256 -> 10, a ReLU MLP trained on digits, fine-tuned with QCFS (L = 8) and
  converted (``conversion``) with hard reset and membranes started at 0, the IF neurons Loihi runs, at T = 16;
- ``mixed_deep``: 64 -> 96 IF -> 64 LIF (tau 8) -> 32 LIF (tau 3) -> 10 read-out, random weights and biases (not
  trained: it exercises IF, two leak constants and biases over four layers, every hidden layer firing).

Each goes ``snn`` model -> NIR (``snn.nir.export_nir``) -> ``neurohw.lava.deploy`` (fixed point, mapping on
Loihi 2 cores). Measured in one run: every layer's spike trains and the read-out membrane of the torch simulator
vs Lava's ``Loihi2SimCfg(select_tag="fixed_pt")`` (sidecar ``.venv-lava``) on the first test samples; Lava's
timesteps per second (its ``run`` calls only, no start-up) vs the simulator's on the same samples and on the whole
test set in batches; accuracy of the deployed vs the float network on the digits test set for T = 4..32 (PNG; the float network is
the NIR graph's, which equals the ``snn`` model's output, tested);
resource map, energy and time per inference. Targets: bit-exact spike trains on all four networks; the
simulator (batched, its purpose) >= 100x Lava's timesteps per second on every network; each deployed digits SNN
within 1 point of its float SNN at its T. Writes ``lava.json``, ``lava.md`` and ``lava_accuracy_vs_T.png``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.common import (Stopwatch, Target, add_common_args, format_table, format_targets, machine_info, save_figure,
                               versions, write_results)

TRAIN_T = 8  # timesteps of the BPTT-trained SNNs (training and deployment)
CONVERTED_T = 16  # timesteps of the converted MLP
DIGITS_LEVELS = 16  # digits pixels are multiples of 1/16: 16 graded input levels represent them exactly


@dataclass(frozen=True)
class Profile:
    epochs: int
    lava_samples: int
    eval_t: tuple[int, ...]


PROFILES = {"quick": Profile(epochs=30, lava_samples=4, eval_t=(4, 8, 16, 32)),
            "full": Profile(epochs=60, lava_samples=16, eval_t=(2, 4, 8, 16, 32, 64))}


def _lif(tau: float | None = 2.0):
    from snn.neurons import NeuronSpec, build_neuron

    if tau is None:
        return build_neuron(NeuronSpec(kind="if", v_threshold=1.0, v_reset=0.0))
    return build_neuron(NeuronSpec(kind="lif", tau=tau, v_threshold=1.0, v_reset=0.0, decay_input=True))


@dataclass
class Net:
    model: nn.Sequential  # multi-step (T, B, ...) -> (T, B, ...) layers, exportable with snn.nir.export_nir
    shape: tuple[int, ...]  # per-sample input shape
    kind: str  # "bptt" (train it here), "converted" or "random"
    timesteps: int


def _networks(seed: int) -> dict[str, Net]:
    from snn.runtime import TimeFolded

    torch.manual_seed(seed)
    mlp = nn.Sequential(nn.Linear(64, 128), _lif(), nn.Linear(128, 10))
    cnn = nn.Sequential(TimeFolded(nn.Conv2d(1, 8, 3, padding=1)), _lif(), TimeFolded(nn.Conv2d(8, 16, 3, stride=2, padding=1)),
                        _lif(), TimeFolded(nn.Flatten()), nn.Linear(256, 10))
    deep = nn.Sequential(nn.Linear(64, 96), _lif(None), nn.Linear(96, 64), _lif(8.0), nn.Linear(64, 32), _lif(3.0), nn.Linear(32, 10))
    with torch.no_grad():  # gains that keep every hidden layer firing (~15-30 % of neuron-steps on digits)
        for gain, m in zip((3.0, 12.0, 8.0, 1.0), [m for m in deep if isinstance(m, nn.Linear)]):
            m.weight.mul_(gain)
            m.bias.uniform_(-0.1, 0.3).mul_(gain)
    return {"digits_mlp": Net(mlp, (64,), "bptt", TRAIN_T), "digits_cnn": Net(cnn, (1, 8, 8), "bptt", TRAIN_T),
            "digits_converted_mlp": Net(nn.Sequential(), (64,), "converted", CONVERTED_T),
            "mixed_deep": Net(deep, (64,), "random", TRAIN_T)}


def _converted_mlp(data, epochs: int, seed: int, quiet: bool) -> tuple[nn.Sequential, dict]:
    """A ReLU MLP trained on digits, fine-tuned with QCFS, converted with hard reset and membranes from 0 (what
    Loihi's LIF can run) and rewritten with unit thresholds (``conversion.nir``)."""
    from ann.models import MLPConfig, ReLUMLP
    from ann.train import TrainConfig, train_classifier
    from conversion import ConversionConfig, convert_sequential
    from conversion.nir import to_unit_threshold_if
    from quant.qcfs import replace_relu_with_qcfs

    (x, y), (xv, yv) = data["train"], data["val"]
    torch.manual_seed(seed)
    ann = ReLUMLP(config=MLPConfig(hidden=(256, 256)))
    train_classifier(ann, x_train=x, y_train=y, x_val=xv, y_val=yv, config=TrainConfig(epochs=epochs, lr=2e-3, seed=seed),
                     progress=not quiet)
    replace_relu_with_qcfs(ann, levels=8, x_calib=x)
    r = train_classifier(ann, x_train=x, y_train=y, x_val=xv, y_val=yv, config=TrainConfig(epochs=max(1, epochs // 3), lr=5e-4, seed=seed),
                         progress=not quiet)
    snn = convert_sequential(ann, x, timesteps=CONVERTED_T, config=ConversionConfig(soft_reset=False, half_threshold_init=False))
    with torch.no_grad():
        ann_acc = float((ann(data["test"][0]).argmax(1) == data["test"][1]).float().mean())
    return to_unit_threshold_if(snn), {"qcfs_val_accuracy": r.val_accuracy, "ann_test_accuracy": ann_acc}


def _forward(model: nn.Sequential, x: torch.Tensor, shape: tuple[int, ...], timesteps: int) -> torch.Tensor:
    """Direct encoding: ``x`` at every step; the mean read-out over ``T`` steps."""
    from spikingjelly.activation_based import functional

    functional.reset_net(model)
    out = model(x.reshape(1, x.shape[0], *shape).expand(timesteps, *([-1] * (len(shape) + 1))))
    functional.reset_net(model)
    return out.mean(0)


def _train(model, shape, data, epochs: int, seed: int, quiet: bool) -> dict:
    from tqdm import tqdm

    (x, y), (xv, yv) = data["train"], data["val"]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(epochs), desc="BPTT epochs", disable=quiet):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(_forward(model, x[idx], shape, TRAIN_T), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return {"val_accuracy": float((_forward(model, xv, shape, TRAIN_T).argmax(1) == yv).float().mean())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lava", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[lava {time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    import nir

    from neurohw.lava.deploy import check_against_lava, deploy, evaluate
    from snn.nir import export_nir
    from tasks.digits import load_digits_split

    data = {s: (d.x, d.y) for s in ("train", "val", "test") for d in [load_digits_split(s)]}
    x_test, y_test = data["test"][0].numpy(), data["test"][1].numpy()
    results: dict = {}
    curves: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="neuromfm-lava-"))
    for name, net in _networks(args.seed).items():
        model, shape, trained = net.model, net.shape, net.kind != "random"
        res: dict = {"input_shape": list(shape), "kind": net.kind, "timesteps": net.timesteps}
        log(f"{name}: {net.kind}" + (f", {profile.epochs} epochs" if trained else ""))
        with Stopwatch() as sw:
            if net.kind == "bptt":
                res["train"] = _train(model, shape, data, profile.epochs, args.seed, args.quiet)
            elif net.kind == "converted":
                model, res["train"] = _converted_mlp(data, profile.epochs, args.seed, args.quiet)
        if trained:
            res["train"]["seconds"] = sw.seconds
        with torch.no_grad():
            res["float_snn_accuracy"] = float((_forward(model, data["test"][0], shape, net.timesteps).argmax(1)
                                               == data["test"][1]).float().mean())
        path = tmp / f"{name}.nir"
        nir.write(str(path), export_nir(model, input_shape=shape))  # the checkpoint handed to the Lava target
        x = x_test.reshape(-1, *shape)
        dep = deploy(path, timesteps=net.timesteps, input_levels=DIGITS_LEVELS)
        res["resource_map"] = dep.resource_map.to_dict()
        res["quantization"] = dep.network.source["quantization"]
        log(f"{name}: deployed ({dep.resource_map.n_cores} cores); simulator on {len(x)} test samples")
        res["evaluation"] = evaluate(dep, x, y_test if trained else None)
        log(f"{name}: Lava on {profile.lava_samples} samples ({dep.steps} steps each)")
        res["lava"] = check_against_lava(dep, x[: profile.lava_samples])
        res["speedup_batched"] = res["evaluation"]["sim_steps_per_second"] / res["lava"]["lava_steps_per_second"]
        res["speedup_same_samples"] = res["lava"]["sim_steps_per_second"] / res["lava"]["lava_steps_per_second"]
        if trained:
            curves[name] = {"T": list(profile.eval_t), "float": [], "deployed": []}
            for t in profile.eval_t:
                ev = evaluate(deploy(path, timesteps=t, input_levels=DIGITS_LEVELS), x, y_test)
                curves[name]["float"].append(ev["accuracy_float"])
                curves[name]["deployed"].append(ev["accuracy_deployed"])
        results[name] = res

    targets = []
    for name, r in results.items():
        targets.append(Target(name=f"{name}_bit_exact_vs_lava", measured=float(r["lava"]["bit_exact"]), goal="== 1 (identical spike trains)",
                              met=bool(r["lava"]["bit_exact"])))
        targets.append(Target(name=f"{name}_sim_vs_lava_timesteps_per_s", measured=r["speedup_batched"], goal=">= 100",
                              met=r["speedup_batched"] >= 100))
        if "train" in r:
            gap = r["evaluation"]["accuracy_float"] - r["evaluation"]["accuracy_deployed"]
            targets.append(Target(name=f"{name}_float_minus_deployed_accuracy_T{r['timesteps']}", measured=gap, goal="<= 0.01",
                                  met=gap <= 0.01))

    rows = []
    for name, r in results.items():
        ev, lv, e = r["evaluation"], r["lava"], r["evaluation"]["energy"]
        rows.append([name, r["resource_map"]["n_cores"], ev.get("accuracy_float"), ev.get("accuracy_deployed"), ev["decision_agreement"],
                     lv["bit_exact"], lv["lava_spike_count"], lv["lava_steps_per_second"], ev["sim_steps_per_second"], r["speedup_batched"],
                     r["speedup_same_samples"], e["total_j"] * 1e6, e["time_s"] * 1e6])
    table = format_table(["network", "cores", "acc float", "acc Loihi", "agree", "bit-exact", "spikes compared", "Lava steps/s", "sim steps/s",
                          "speed-up", "speed-up (same samples)", "energy uJ", "time us"], rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plot = _plot(curves, args.out / "lava_accuracy_vs_T.png")
    payload = {"benchmark": "lava", "profile": args.profile, "seed": args.seed, "profile_settings": asdict(profile),
               "machine": machine_info(),
               "versions": versions("torch", "numpy", "nir", "spikingjelly"), "networks": results, "accuracy_vs_T": curves,
               "targets": [asdict(t) for t in targets], "plot": str(plot), "wall_seconds": time.perf_counter() - t_start,
               "notes": {"speed-up": "simulator timesteps/s on the whole test set (batched) / Lava's on its samples; "
                                     "'same samples' runs the simulator on exactly Lava's samples",
                         "energy": "per inference, Loihi 1 per-operation figures (Davies et al. 2018), see neurohw.lava.energy"}}
    md = "\n\n".join(["# benchmarks.lava", table, format_targets(targets, markdown=True)])
    write_results(args.out, "lava", payload, markdown=md)
    print(table)
    print(format_targets(targets))
    return payload


def _plot(curves: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, (name, c) in enumerate(curves.items()):
        ax.plot(c["T"], c["float"], "-o", color=f"C{i}", label=f"{name} float SNN")
        ax.plot(c["T"], c["deployed"], "--s", color=f"C{i}", label=f"{name} Loihi fixed point")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("timesteps T")
    ax.set_ylabel("digits test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
