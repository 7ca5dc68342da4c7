"""The digits rows (8x8 handwritten digits, :mod:`tasks.digits`, test accuracy on its 359-image test split).

- ANN: the ReLU MLP in fp32, and int8 post-training quantized (W8A8);
- SNN converted: the MLP converted to integrate-and-fire neurons (:mod:`conversion`) at each T of the profile, and
  the Loihi-ready conversion (QCFS fine-tuned, hard reset, unit thresholds) deployed on simulated Loihi;
- SNN trained: the spike-driven ViT of :mod:`benchmarks.snn` (surrogate-gradient training);
- SNN quantized: that ViT after :mod:`snn.quant`'s tiered (QSLM-style) search, at most 2 points of validation
  accuracy lost and at most 30 % of its fp32 memory;
- NAS SNN: the best candidate of a memory-aware spiking NAS (:mod:`snn.nas`) under the hand-designed ViT's memory,
  trained with the ViT's recipe.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from torch import nn

from benchmarks.compare.core import Context, Measured, RowSpec, cached_dir, cpu_ms_per_sample, dense_weight_bytes

__all__ = ["ROWS", "EPOCHS"]

# profile -> epochs of the MLP, of the spiking ViT (and the NAS candidate), NAS trials and short-training epochs
EPOCHS = {"quick": {"mlp": 60, "vit": 30, "nas_trials": 16, "nas_fast": 2, "qcfs": 30},
          "full": {"mlp": 120, "vit": 60, "nas_trials": 60, "nas_fast": 4, "qcfs": 60}}
TIMESTEPS = {"quick": (8, 16, 32, 64), "full": (4, 8, 16, 32, 64, 128, 256)}
LOIHI_T, LOIHI_LEVELS = 16, 16  # the Loihi row's timesteps; digits pixels are multiples of 1/16


def _data(ctx: Context) -> dict:
    from tasks.digits import DigitsConfig, load_digits_split

    return ctx.once("digits/data", lambda: {s: load_digits_split(s, DigitsConfig(seed=ctx.seed)) for s in ("train", "val", "test")})


def _cmd(ctx: Context, row_id: str) -> str:
    return f"python -m benchmarks.compare ann snn --profile {ctx.profile} --seed {ctx.seed} --only {row_id}"


# ------------------------------------------------------------------------------------------------ ANN
def _mlp(ctx: Context):
    """The digits MLP, trained once per config (cached: safetensors + config)."""
    from ann.checkpoint import load_mlp, save_mlp
    from ann.models import MLPConfig, ReLUMLP
    from ann.train import TrainConfig, train_classifier

    def make():
        data = _data(ctx)
        train_cfg = TrainConfig(epochs=EPOCHS[ctx.profile]["mlp"], seed=ctx.seed)

        def train(folder: Path) -> None:
            torch.manual_seed(ctx.seed)
            model = ReLUMLP(config=MLPConfig())
            ctx.log(f"digits: training the MLP ({train_cfg.epochs} epochs)")
            res = train_classifier(model, x_train=data["train"].x, y_train=data["train"].y, x_val=data["val"].x,
                                   y_val=data["val"].y, config=train_cfg, progress=ctx.progress)
            save_mlp(model, folder / "mlp", extra={"train_result": {"val_accuracy": res.val_accuracy}})

        folder, _ = cached_dir(ctx, "digits-mlp", {"model": MLPConfig().to_dict(), "train": train_cfg.__dict__,
                                                   "seed": ctx.seed, "torch": torch.__version__}, train,
                               code=("ann/models/mlp.py", "tasks/classifier.py"))
        return load_mlp(folder / "mlp")[0]

    return ctx.once("digits/mlp", make)


def ann_fp32(ctx: Context) -> Measured:
    from tasks.classifier import evaluate

    model, test = _mlp(ctx), _data(ctx)["test"]
    return Measured(task="digits", track="ann", variant="MLP fp32", metric="test accuracy",
                    quality=evaluate(model, test.x, test.y), params=sum(p.numel() for p in model.parameters()),
                    memory=(dense_weight_bytes(model), 0.0),
                    cpu_ms=cpu_ms_per_sample(lambda: model(test.x), len(test.x), repeats=ctx.latency_repeats),
                    model=model, example=test.x, reproduce=_cmd(ctx, "digits/ann-fp32"))


def ann_w8a8(ctx: Context) -> Measured:
    from quant import ptq_sequential
    from tasks.classifier import evaluate

    model, data = _mlp(ctx), _data(ctx)
    test = data["test"]
    q = ptq_sequential(model.net, data["train"].x, weight_bits=8, act_bits=8)
    n = sum(p.numel() for p in model.parameters())
    rows = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    return Measured(task="digits", track="ann", variant="MLP W8A8 (int8 PTQ)", metric="test accuracy",
                    quality=evaluate(q, test.x, test.y), params=n, memory=(n + 4 * rows, 0.0),
                    cpu_ms=cpu_ms_per_sample(lambda: q(test.x), len(test.x), repeats=ctx.latency_repeats),
                    model=q, example=test.x, weight_bits=8, act_bits=8,
                    notes="per-channel int8 weights (+ a float scale per row), per-tensor uint8 activations; fake-quant "
                          "on the CPU, so CPU time is not an int8 kernel's",
                    reproduce=_cmd(ctx, "digits/ann-w8a8"))


# ------------------------------------------------------------------------------------------------ SNN converted
def snn_converted(ctx: Context) -> list[Measured]:
    from conversion import ConversionConfig, convert_sequential
    from tasks.classifier import evaluate

    model, data = _mlp(ctx), _data(ctx)
    test = data["test"]
    snn = convert_sequential(model, data["train"].x, timesteps=TIMESTEPS[ctx.profile][0], config=ConversionConfig())
    n = sum(p.numel() for p in model.parameters())
    out = []
    for T in TIMESTEPS[ctx.profile]:
        snn = copy.copy(snn)  # one object per T (sharing the layers): each row is traced later at its own T
        snn.timesteps = T
        ctx.log(f"digits: converted SNN at T={T}")
        out.append(Measured(task="digits", track="snn", variant=f"converted IF T={T}", metric="test accuracy",
                            quality=evaluate(snn, test.x, test.y), params=n, memory=(4.0 * n, None), state_bits=32,
                            cpu_ms=cpu_ms_per_sample(lambda: snn(test.x), len(test.x), repeats=ctx.latency_repeats),
                            model=snn, example=test.x, timesteps=T,
                            loihi={"reason": "not deployed: this conversion resets by subtraction, Loihi's LIF resets "
                                             "to zero; the Loihi row is the hard-reset conversion"},
                            reproduce=_cmd(ctx, "digits/snn-converted")))
    return out


class DirectEncoding(nn.Module):
    """A multi-step (T, B, ...) network run on a static input: ``x`` at every step, the mean read-out."""

    def __init__(self, net: nn.Sequential, timesteps: int):
        super().__init__()
        self.net, self.timesteps = net, timesteps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spikingjelly.activation_based import functional

        functional.reset_net(self.net)
        out = self.net(x.unsqueeze(0).expand(self.timesteps, *x.shape)).mean(0)
        functional.reset_net(self.net)
        return out


def snn_loihi(ctx: Context) -> Measured:
    """The Loihi-ready converted MLP (:func:`benchmarks.lava._converted_mlp`), deployed on simulated Loihi 2."""
    import nir

    from benchmarks.lava import _converted_mlp
    from neurohw.lava.deploy import deploy, evaluate
    from snn.nir import export_nir, import_nir

    data = _data(ctx)
    epochs = EPOCHS[ctx.profile]["qcfs"]

    def make(folder: Path) -> None:
        ctx.log(f"digits: QCFS MLP for Loihi ({epochs} epochs)")
        model, info = _converted_mlp({s: (d.x, d.y) for s, d in data.items()}, epochs, ctx.seed, not ctx.progress)
        nir.write(str(folder / "net.nir"), export_nir(model, input_shape=(64,)))
        (folder / "train.json").write_text(json.dumps(info))

    folder, _ = cached_dir(ctx, "digits-loihi-mlp", {"epochs": epochs, "seed": ctx.seed, "T": LOIHI_T}, make,
                           code=("ann/models/mlp.py", "tasks/classifier.py", "quant/qcfs.py", "conversion",
                                 "snn/nir.py"))
    graph = nir.read(str(folder / "net.nir"))
    net = DirectEncoding(import_nir(graph), LOIHI_T)
    test = data["test"]
    dep = deploy(graph, timesteps=LOIHI_T, input_levels=LOIHI_LEVELS)
    ev = evaluate(dep, test.x.numpy(), test.y.numpy())
    e = ev["energy"]
    n = sum(p.numel() for p in net.parameters())
    neurons = sum(layer.n_out for layer in dep.network.layers)
    return Measured(task="digits", track="snn", variant=f"converted IF T={LOIHI_T}, Loihi fixed point",
                    metric="test accuracy", quality=ev["accuracy_deployed"], params=n,
                    memory=(float(n), neurons * 24 / 8),  # Loihi's 8-bit weights, 24-bit membranes
                    cpu_ms=cpu_ms_per_sample(lambda: net(test.x), len(test.x), repeats=ctx.latency_repeats),
                    model=net, example=test.x, timesteps=LOIHI_T, weight_bits=8, act_bits=8,
                    firing_rate=float(sum(ev["firing_rate_per_layer"].values()) / len(ev["firing_rate_per_layer"])),
                    loihi={"energy_uj": e["total_j"] * 1e6, "dynamic_uj": e["dynamic_j"] * 1e6,
                           "time_ms": e["time_s"] * 1e3, "cores": dep.resource_map.n_cores,
                           "steps": ev["loihi_steps"], "float_accuracy": ev["accuracy_float"]},
                    notes=f"QCFS-trained MLP (256-256), hard reset, {LOIHI_LEVELS} input levels; quality is the "
                          "fixed-point network's on the Loihi simulator (neurohw.lava, bit-exact with Lava); CPU time "
                          "and the accelerator are the float network's",
                    reproduce=_cmd(ctx, "digits/snn-loihi"))


# ------------------------------------------------------------------------------------------------ SNN trained
def _vit(ctx: Context):
    """The spike-driven ViT of benchmarks.snn (the recipe of benchmarks.snn_quant), cached as safetensors."""
    from safetensors.torch import load_file, save_file

    from snn.models import Spikformer, SpikformerConfig
    from tasks.classifier import TrainConfig, train_classifier

    def make():
        data = _data(ctx)
        cfg = TrainConfig(epochs=EPOCHS[ctx.profile]["vit"], lr=3e-3, weight_decay=0.01, seed=ctx.seed)

        def train(folder: Path) -> None:
            torch.manual_seed(ctx.seed)
            model = Spikformer(SpikformerConfig(engine="fused"))
            ctx.log(f"digits: training the spiking ViT ({cfg.epochs} epochs)")
            train_classifier(model, x_train=data["train"].x, y_train=data["train"].y, x_val=data["val"].x,
                             y_val=data["val"].y, config=cfg, progress=ctx.progress)
            save_file(model.state_dict(), str(folder / "model.safetensors"))

        folder, _ = cached_dir(ctx, "digits-spikformer", {"model": SpikformerConfig(engine="fused").__dict__,
                                                          "train": cfg.__dict__, "seed": ctx.seed}, train,
                               code=("snn/models", "snn/neurons.py", "tasks/classifier.py"))
        model = Spikformer(SpikformerConfig(engine="fused"))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.eval()

    return ctx.once("digits/vit", make)


NO_LAVA = {"reason": "not deployable: the Lava target (neurohw.lava) runs feed-forward chains of Linear / Conv and "
                     "LIF layers; this network has residual branches (and, where present, spike-driven attention: "
                     "a product of two spike tensors)"}


def _spiking_row(ctx: Context, model, variant: str, row_id: str, memory, *, weight_bits=None, notes="",
                 images: bool = False) -> Measured:
    """A row of a multi-step spiking classifier; ``images``: it takes (B, 1, 8, 8) images, not flat vectors."""
    from tasks.classifier import evaluate

    test = _data(ctx)["test"]
    x = test.images if images else test.x
    T = getattr(getattr(model, "config", None), "timesteps", None) or getattr(model, "timesteps", None)
    return Measured(task="digits", track="snn", variant=variant, metric="test accuracy", quality=evaluate(model, x, test.y),
                    params=sum(p.numel() for p in model.parameters()), memory=memory,
                    cpu_ms=cpu_ms_per_sample(lambda: model(x), len(x), repeats=ctx.latency_repeats),
                    model=model, example=x, timesteps=T, weight_bits=weight_bits, notes=notes,
                    loihi=NO_LAVA, reproduce=_cmd(ctx, row_id))


def snn_trained(ctx: Context) -> Measured:
    from snn.quant import spiking_memory

    model = _vit(ctx)
    mem = spiking_memory(model, _data(ctx)["test"].x[:1])
    return _spiking_row(ctx, model, "spike-driven ViT (trained)", "digits/snn-trained", (mem.weight_bytes, mem.state_bytes),
                        notes="fp32 weights and membranes as trained (BatchNorm statistics included); the accelerator "
                              "runs it at W16A16 with 16-bit membranes, as every fp32 row")


def snn_quantized(ctx: Context) -> Measured:
    from snn.quant import Constraints, SpikingQuantizer, tiered_search
    from tasks.classifier import evaluate

    model, data = _vit(ctx), _data(ctx)
    q = SpikingQuantizer(model, data["train"].x[:256])
    res = tiered_search(q, lambda m: evaluate(m, data["val"].x, data["val"].y),
                        Constraints(max_drop=0.02, max_memory_fraction=0.3), progress=ctx.progress)
    p = res.best.precision
    qm = q.build(p)
    mem = q.memory(p)
    bits = math.ceil(8 * mem.weight_bytes / sum(t.numel() for t in qm.parameters()))
    return _spiking_row(ctx, qm, "spike-driven ViT, tiered quantization", "digits/snn-quant",
                        (mem.weight_bytes, mem.state_bytes), weight_bits=bits,
                        notes=f"snn.quant tiered search ({res.evaluations} evaluations): per-layer weight and membrane "
                              f"widths; the accelerator maps it at W{bits} (the mean stored width, rounded up)")


def snn_nas(ctx: Context) -> Measured:
    """The memory-aware NAS (snn.nas) under the hand-designed ViT's memory; the best candidate after short training
    is trained with the ViT's recipe (cached: genotype + weights)."""
    import optuna
    from safetensors.torch import load_file, save_file

    from neurohw.accel import inference_energy_pj
    from snn.nas import (FastEvalConfig, Genotype, SearchConfig, SearchSpace, build, digits_task, memory_of, run_search,
                         train_fully)
    from snn.quant import spiking_memory
    from tasks.classifier import TrainConfig

    prof = EPOCHS[ctx.profile]
    space = SearchSpace()
    recipe = TrainConfig(epochs=prof["vit"], lr=3e-3, weight_decay=0.01, seed=ctx.seed)
    budget = spiking_memory(_vit(ctx), _data(ctx)["test"].x[:1]).total_bytes

    def make(folder: Path) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        data = digits_task(seed=ctx.seed)
        ctx.log(f"digits: spiking NAS ({prof['nas_trials']} trials, budget {budget:,.0f} B)")
        result = run_search(space, data, config=SearchConfig(budget_bytes=budget, n_trials=prof["nas_trials"],
                                                             storage=f"sqlite:///{folder / 'study.db'}",
                                                             study_name="compare", seed=ctx.seed),
                            fast=FastEvalConfig(epochs=prof["nas_fast"], lr=recipe.lr, weight_decay=recipe.weight_decay,
                                                seed=ctx.seed, energy_batch=64),
                            energy_fn=inference_energy_pj, energy_name="neurohw.accel.model:inference_energy_pj",
                            progress=ctx.progress)
        best = max(result.complete(), key=lambda t: (t.val_accuracy, -t.memory_bytes))
        ctx.log(f"digits: training the NAS candidate [{best.genotype.describe()}]")
        model, _ = train_fully(best.genotype, space, data, recipe, seed=ctx.seed, progress=ctx.progress)
        save_file(model.state_dict(), str(folder / "model.safetensors"))
        (folder / "genotype.json").write_text(json.dumps({"genotype": best.genotype.to_dict(), "trial": best.number}))

    folder, _ = cached_dir(ctx, "digits-nas", {"space": space.to_dict(), "budget": budget, "recipe": recipe.__dict__,
                                               "trials": prof["nas_trials"], "fast": prof["nas_fast"],
                                               "seed": ctx.seed}, make,
                           code=("snn/nas", "snn/models", "snn/neurons.py", "snn/quant", "tasks/classifier.py"))
    g = Genotype.from_dict(json.loads((folder / "genotype.json").read_text())["genotype"])
    model = build(g, space)
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    model.eval()
    mem = memory_of(model, space)
    return _spiking_row(ctx, model, f"NAS spiking net [{g.describe()}]", "digits/snn-nas", (mem.weight_bytes, mem.state_bytes),
                        notes=f"snn.nas, {prof['nas_trials']} trials of {prof['nas_fast']}-epoch training under "
                              f"{budget:,.0f} B (the trained ViT's memory); selected on short-training validation accuracy",
                        images=True)


ROWS = [
    RowSpec("digits/ann-fp32", "digits", "ann", ann_fp32, "the ReLU MLP, fp32"),
    RowSpec("digits/ann-w8a8", "digits", "ann", ann_w8a8, "the MLP, int8 post-training quantized"),
    RowSpec("digits/snn-converted", "digits", "snn", snn_converted, "the MLP converted to IF neurons, one row per T"),
    RowSpec("digits/snn-loihi", "digits", "snn", snn_loihi, "a QCFS MLP converted for Loihi, on simulated Loihi 2"),
    RowSpec("digits/snn-trained", "digits", "snn", snn_trained, "the spike-driven ViT, surrogate-gradient trained"),
    RowSpec("digits/snn-quant", "digits", "snn", snn_quantized, "the ViT after snn.quant's tiered search"),
    RowSpec("digits/snn-nas", "digits", "snn", snn_nas, "the best candidate of snn.nas under the ViT's memory"),
]
