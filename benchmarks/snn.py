"""``python -m benchmarks.snn [--profile quick|full] [--out DIR]``: the spiking transformers (issue [S]).

Writes ``results/snn.json`` (+ ``snn.md``). So far (the issue is in progress; the rows it names that are not built
yet are listed under ``pending``):

- the spike-driven ViT (:class:`snn.models.Spikformer`) trained on digits with surrogate-gradient BPTT and direct
  encoding (:func:`ann.train.classifier.train_classifier`, best validation epoch), its test accuracy, and its
  accounting on the test split from :mod:`neurohw.workload`: per-layer firing rates, synaptic operations, neuron
  updates and membrane-state memory;
- the byte-level spiking LM (:class:`snn.models.SpikingLM`) and a Llama-style ANN LM of about the same size, trained
  with the same steps on the standard-library train split and scored in bits per byte on held-out test files
  (:func:`ann.eval.lm.bits_per_byte`, whole files);
- training throughput of the same architecture, as samples per second over identical steps in this run: ours
  (multi-step) on each neuron engine (this project's ``fused`` engine, SpikingJelly, snnTorch) and the peer written
  the way snnTorch is used (:mod:`benchmarks.snntorch_spikformer`: the whole network stepped over time), with
  the ratios to the peer (the issue's target: ours at least 2x).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
import types

import torch

from benchmarks.common import Stopwatch, Target, add_common_args, format_table, format_targets, machine_info, versions, write_results

__all__ = ["main"]

# profile -> (training epochs of the digits ViT, timed steps per engine)
PROFILE = {"quick": (30, 10), "full": (60, 30)}
# profile -> (LM training steps, held-out bytes scored); both LMs get the same steps, batch and windows
LM_PROFILE = {"quick": (300, 100_000), "full": (1500, 200_000)}
LM_BATCH, LM_SEQ = 16, 256

PENDING = ["spiking MFM on SynthMed-VQA (vs the ANN MFM)",
           "DDP training under torchrun", "distillation from the ANN teacher", "NIR export / import"]


def build_variant(name: str, timesteps: int):
    """The digits spiking ViT as ``ours-<engine>`` (:class:`snn.models.Spikformer` on that neuron engine) or as
    ``snntorch-peer`` (the same architecture written the snnTorch way, :mod:`benchmarks.snntorch_spikformer`)."""
    from benchmarks.snntorch_spikformer import SnnTorchSpikformer
    from snn.models import Spikformer, SpikformerConfig

    if name == "snntorch-peer":
        return SnnTorchSpikformer(SpikformerConfig(timesteps=timesteps))
    return Spikformer(SpikformerConfig(engine=name.removeprefix("ours-"), timesteps=timesteps))


VARIANTS = ("ours-fused", "ours-spikingjelly", "ours-snntorch", "snntorch-peer")


def train_step_seconds(variant: str, x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int, timesteps: int) -> float:
    """Median wall time of one training step (forward, backward, AdamW) of the digits spiking ViT ``variant``."""
    torch.manual_seed(seed)
    model = build_variant(variant, timesteps)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 2):  # 2 warm-up steps
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256, no BOS), in the calling convention of ann.eval.lm.bits_per_byte."""

    bos_token_id = None

    def __call__(self, texts, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [list(t.encode("utf-8")) for t in texts]}


class _LogitsOf(torch.nn.Module):
    """``model(input_ids=..., attention_mask=...).logits`` for a model that maps tokens (B, N) to logits; right
    padding is harmless for a causal model (no position sees a later one)."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return types.SimpleNamespace(logits=self.inner(input_ids))


def _ann_byte_lm(params_target: int, seq: int) -> torch.nn.Module:
    """A Llama-style byte-level ANN LM (2 layers, MLP 2x) whose width gives the parameter count closest to
    ``params_target`` (the same-size baseline)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(hidden: int) -> torch.nn.Module:
        return LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=hidden, intermediate_size=2 * hidden,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                            max_position_embeddings=2 * seq, tie_word_embeddings=False))

    with torch.device("meta"):  # shapes only: no memory, no initialization
        sizes = {h: sum(p.numel() for p in build(h).parameters()) for h in range(32, 257, 16)}
    model = build(min(sizes, key=lambda h: abs(sizes[h] - params_target)))

    class Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lm = model

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.lm(input_ids=tokens).logits

    return Tokens()


def train_and_score_lm(model: torch.nn.Module, train: torch.Tensor, held_out: list[str], *, steps: int, seed: int,
                       log, name: str) -> dict:
    """Next-byte training on random windows of the train bytes (AdamW, cosine), then held-out bits per byte
    (ann.eval.lm.bits_per_byte: whole files, windows of 2 * LM_SEQ bytes, stride 1.5 * LM_SEQ)."""
    from ann.eval.lm import bits_per_byte

    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(train) - LM_SEQ - 1, (LM_BATCH,), generator=g)
        x = torch.stack([train[i : i + LM_SEQ + 1] for i in starts.tolist()]).long()  # (B, N + 1)
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % max(1, steps // 5) == 0:
            log(f"{name}: step {step}/{steps}, train {loss.item() / math.log(2):.3f} bits/byte")
    train_s = time.perf_counter() - t0
    res = bits_per_byte(_LogitsOf(model), _ByteTokenizer(), held_out, context=2 * LM_SEQ, stride=3 * LM_SEQ // 2,
                        batch_size=4, progress=False)
    return {"params": sum(p.numel() for p in model.parameters()), "train_seconds": train_s, "steps": steps,
            **res.to_dict()}


def run_lm(profile: str, seed: int, log) -> dict:
    """The byte-level spiking LM vs a same-size ANN LM, same data, steps and held-out files."""
    from ann.train.code import held_out_files
    from snn.models import SpikingLM, SpikingLMConfig
    from tasks.code import join_code_files, load_stdlib_corpus

    steps, eval_bytes = LM_PROFILE[profile]
    train = torch.tensor(list(join_code_files(load_stdlib_corpus("train")).encode("utf-8")), dtype=torch.uint8)
    held_out = [f.text for f in held_out_files(eval_bytes, split="test")]
    torch.manual_seed(seed)
    snn_lm = SpikingLM(SpikingLMConfig(max_positions=2 * LM_SEQ))
    snn_res = train_and_score_lm(snn_lm, train, held_out, steps=steps, seed=seed, log=log, name="spiking LM")
    torch.manual_seed(seed)
    ann_lm = _ann_byte_lm(snn_res["params"], LM_SEQ)
    ann_res = train_and_score_lm(ann_lm, train, held_out, steps=steps, seed=seed, log=log, name="ANN LM")
    return {"spiking": snn_res, "ann_same_size": ann_res, "train_bytes": len(train), "held_out_files": len(held_out),
            "protocol": f"{steps} steps of {LM_BATCH} x {LM_SEQ} random train bytes each; held-out stdlib test files, "
                        f"{eval_bytes} bytes, windows {2 * LM_SEQ} stride {3 * LM_SEQ // 2}"}


def accounting(model, x: torch.Tensor) -> dict:
    """Per-layer spike accounting on ``x`` from the workload IR (32-bit membranes)."""
    from neurohw.workload import OpKind, trace

    w = trace(model, x, name="spikformer digits", timesteps=model.config.timesteps)
    layers = [{"layer": op.name, "neurons": op.neurons, "firing_rate": op.firing_rate, "updates": op.elements,
               "membrane_bytes": op.neurons * op.state_bits / 8} for op in w.ops if op.kind is OpKind.NEURON]
    return {"firing_rate": w.firing_rate, "sops": w.sops, "macs": w.macs, "neuron_updates": w.neuron_updates,
            "membrane_bytes": sum(r["membrane_bytes"] for r in layers), "params": w.params, "layers": layers,
            "untraced": list(w.untraced)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.snn", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[snn] {m}", file=sys.stderr, flush=True))

    from ann.train.classifier import TrainConfig, evaluate, train_classifier
    from snn.models import Spikformer, SpikformerConfig
    from tasks.digits import DigitsConfig, load_digits_split

    epochs, timed_steps = PROFILE[args.profile]
    data = {s: load_digits_split(s, DigitsConfig(seed=args.seed)) for s in ("train", "val", "test")}
    with Stopwatch() as sw:
        torch.manual_seed(args.seed)
        cfg = SpikformerConfig(engine="fused")
        model = Spikformer(cfg)
        log(f"digits: training the spiking ViT ({epochs} epochs, T={cfg.timesteps}, engine {cfg.engine.value})")
        with Stopwatch() as train_sw:
            res = train_classifier(model, x_train=data["train"].x, y_train=data["train"].y, x_val=data["val"].x,
                                   y_val=data["val"].y, config=TrainConfig(epochs=epochs, lr=3e-3, weight_decay=0.01,
                                                                           seed=args.seed), progress=not args.quiet)
        test_acc = evaluate(model, data["test"].x, data["test"].y)
        acct = accounting(model, data["test"].x)
        log("training throughput per implementation")
        xb, yb = data["train"].x[:64], data["train"].y[:64]
        step_s = {v: train_step_seconds(v, xb, yb, steps=timed_steps, seed=args.seed, timesteps=cfg.timesteps)
                  for v in VARIANTS}
        log("byte-level language models: spiking vs same-size ANN")
        lm = run_lm(args.profile, args.seed, log)
    throughput = {v: 64 / s for v, s in step_s.items()}
    ratios = {f"{v}_over_snntorch-peer": throughput[v] / throughput["snntorch-peer"] for v in throughput if v != "snntorch-peer"}
    ours = ratios["ours-fused_over_snntorch-peer"]
    targets = [Target("spiking_vit_digits_test_accuracy", test_acc, ">= 0.95", test_acc >= 0.95),
               Target("training_throughput_ours_over_snntorch", ours, ">= 2.0 (same architecture, CPU)", ours >= 2.0)]
    rows = [["spiking ViT (digits)", cfg.engine.value, cfg.timesteps, test_acc, acct["params"], acct["firing_rate"],
             acct["sops"], acct["neuron_updates"], acct["membrane_bytes"], train_sw.seconds]]
    cols = ["model", "engine", "T", "test acc", "params", "firing rate", "SOPs", "neuron updates", "membrane B", "train s"]
    tp_rows = [[v, step_s[v] * 1e3, throughput[v], throughput[v] / throughput["snntorch-peer"]] for v in step_s]
    tp_cols = ["implementation", "ms / step (B=64)", "samples / s", "vs snnTorch peer"]
    payload = {"spiking_vit_digits": {"config": {**{k: v for k, v in vars(cfg).items() if k not in ("neuron", "engine")},
                                                 "neuron": vars(cfg.neuron) | {"kind": cfg.neuron.kind.value},
                                                 "engine": cfg.engine.value},
                                      "test_accuracy": test_acc, "val_accuracy": res.val_accuracy,
                                      "best_epoch": res.best_epoch, "train_seconds": train_sw.seconds, "accounting": acct},
               "throughput": {"step_seconds": step_s, "samples_per_second": throughput, "ratios": ratios,
                              "batch": 64, "timed_steps": timed_steps},
               "lm": lm, "pending": PENDING, "targets": [t.to_dict() for t in targets],
               "meta": {"benchmark": "snn", "profile": args.profile, "seed": args.seed, "wall_time_s": sw.seconds,
                        "machine": machine_info(), "versions": versions("spikingjelly", "snntorch")}}
    lm_cols = ["language model (bytes)", "params", "held-out bits/byte", "train s"]
    lm_rows = [["spiking LM", lm["spiking"]["params"], lm["spiking"]["bits_per_byte"], lm["spiking"]["train_seconds"]],
               ["ANN LM, same size", lm["ann_same_size"]["params"], lm["ann_same_size"]["bits_per_byte"],
                lm["ann_same_size"]["train_seconds"]]]
    md = ("# neuromfm spiking transformers (in progress)\n\n" + format_table(cols, rows, markdown=True)
          + "\n\n## Byte-level language models (" + lm["protocol"] + ")\n\n" + format_table(lm_cols, lm_rows, markdown=True)
          + "\n\n## Training throughput of the same architecture (ours on each neuron engine; the snnTorch-style peer)\n\n" + format_table(tp_cols, tp_rows, markdown=True)
          + "\n\nNot built yet: " + "; ".join(PENDING) + ".\n\n" + format_targets(targets, markdown=True) + "\n")
    path = write_results(args.out, "snn", payload, markdown=md)
    print(format_table(cols, rows))
    print(format_table(tp_cols, tp_rows))
    print(format_table(lm_cols, lm_rows))
    print(format_targets(targets))
    print(f"wrote {path} in {sw.seconds:.1f} s")
    return payload


if __name__ == "__main__":
    main()
