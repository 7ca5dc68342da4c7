"""``python -m benchmarks.snn [--profile quick|full] [--out DIR]``: the spiking transformers (issue [S]).

Writes ``results/snn.json`` (+ ``snn.md``):

- the spike-driven ViT (:class:`snn.models.Spikformer`) trained on digits with surrogate-gradient BPTT and direct
  encoding (:func:`tasks.classifier.train_classifier`, best validation epoch), its test accuracy, and its
  accounting on the test split from :mod:`neurohw.workload`: per-layer firing rates, synaptic operations, neuron
  updates and membrane-state memory;
- training throughput of the same architecture, as samples per second over identical steps in this run: ours
  (multi-step) on each neuron engine (this project's ``fused`` engine, SpikingJelly, snnTorch) and the peer written
  the way snnTorch is used (:mod:`benchmarks.snntorch_spikformer`: the whole network stepped over time), with
  the ratios to the peer (the issue's target: ours at least 2x);
- the byte-level spiking LM (:class:`snn.models.SpikingLM`) and a Llama-style ANN LM of about the same size, trained
  with the same steps on the standard-library train split and scored in bits per byte on held-out test files
  (:func:`ann.eval.lm.bits_per_byte`, whole files);
- the spiking MFM (:class:`snn.models.SpikingMFM`, ``python -m snn.train synthmed``) on SynthMed-VQA, trained plainly
  and distilled from the ANN MFM (:func:`ann.train.vqa.answer_slot_logits`), vs the ANN MFM of about the same size
  (``mfm-small``, cached like :mod:`benchmarks.models`), all with the same steps, data and recipe; test accuracy
  and spike accounting. Quick trains every MFM for benchmarks.models' quick budget (300 steps), full for its
  full one (the small MFM's 3000 steps; the large teacher's 4800 + 1500).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from benchmarks.common import Stopwatch, Target, add_cache_dir_arg, add_common_args, format_table, format_targets, machine_info, versions, write_results

__all__ = ["main"]

# profile -> (training epochs of the digits ViT, timed steps per engine)
PROFILE = {"quick": (30, 10), "full": (60, 30)}
# profile -> (LM training steps, held-out bytes scored); both LMs get the same steps, batch and windows
LM_PROFILE = {"quick": (300, 100_000), "full": (1500, 200_000)}
LM_BATCH, LM_SEQ = 16, 256
MFM_RECIPE = "spiking_distilled"  # the spiking MFM the target judges (decided before the benchmark runs; see run_mfm)

def build_variant(name: str, timesteps: int):
    """The digits spiking ViT as ``ours-<engine>`` (:class:`snn.models.Spikformer` on that neuron engine) or as
    ``snntorch-peer`` (the same architecture written the snnTorch way, :mod:`benchmarks.snntorch_spikformer`)."""
    from benchmarks.snntorch_spikformer import SnnTorchSpikformer
    from snn.models import Spikformer, SpikformerConfig

    if name == "snntorch-peer":
        return SnnTorchSpikformer(SpikformerConfig(timesteps=timesteps))
    return Spikformer(SpikformerConfig(engine=name.removeprefix("ours-"), timesteps=timesteps))


VARIANTS = ("ours-fused", "ours-spikingjelly", "ours-snntorch", "snntorch-peer")


def train_step_seconds(variants, x: torch.Tensor, y: torch.Tensor, *, steps: int, seed: int, timesteps: int
                       ) -> dict[str, float]:
    """Median wall time of one training step (forward, backward, AdamW) of each digits spiking ViT variant.

    The variants take turns, one step each per round (after 2 warm-up rounds), so that a slow spell of the
    machine falls on all of them alike and the ratios stay fair."""
    models, opts, times = {}, {}, {v: [] for v in variants}
    for v in variants:
        torch.manual_seed(seed)
        models[v] = build_variant(v, timesteps)
        opts[v] = torch.optim.AdamW(models[v].parameters(), lr=1e-3)
    for i in range(steps + 2):
        for v in variants:
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(models[v](x), y)
            opts[v].zero_grad(set_to_none=True)
            loss.backward()
            opts[v].step()
            if i >= 2:
                times[v].append(time.perf_counter() - t0)
    return {v: statistics.median(t) for v, t in times.items()}


class _ByteTokenizer:
    """UTF-8 bytes as tokens (vocabulary 256, no BOS), in the calling convention of ann.eval.lm.bits_per_byte."""

    bos_token_id = None

    def __call__(self, texts, add_special_tokens: bool = False) -> dict:
        return {"input_ids": [list(t.encode("utf-8")) for t in texts]}


class _LogitsOf(torch.nn.Module):
    """``model(input_ids=..., attention_mask=...).logits`` for a model that maps tokens (B, N) to logits; right
    padding is harmless for a causal model (no position sees a later one). It takes ``inner``'s training mode, so
    that :func:`ann.eval.lm.bits_per_byte`, which restores the mode it found, leaves ``inner`` as it was."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.train(inner.training)

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


def stdlib_train_bytes() -> torch.Tensor:
    """The standard-library corpus' train split as one uint8 tensor of UTF-8 bytes (the byte LMs' training data)."""
    from tasks.code import join_code_files, load_stdlib_corpus

    return torch.tensor(list(join_code_files(load_stdlib_corpus("train")).encode("utf-8")), dtype=torch.uint8)


def train_and_score_lm(model: torch.nn.Module, train: torch.Tensor, held_out: list[str], *, steps: int, seed: int,
                       log, name: str) -> dict:
    """:func:`train_byte_lm`, then held-out bits per byte (ann.eval.lm.bits_per_byte: whole files, windows of
    2 * LM_SEQ bytes, stride 1.5 * LM_SEQ)."""
    from ann.eval.lm import bits_per_byte

    train_s = train_byte_lm(model, train, steps=steps, seed=seed, log=log, name=name)
    res = bits_per_byte(_LogitsOf(model), _ByteTokenizer(), held_out, context=2 * LM_SEQ, stride=3 * LM_SEQ // 2,
                        batch_size=4, progress=False)
    return {"params": sum(p.numel() for p in model.parameters()), "train_seconds": train_s, "steps": steps,
            **res.to_dict()}


def train_byte_lm(model: torch.nn.Module, train: torch.Tensor, *, steps: int, seed: int, log, name: str) -> float:
    """Next-byte training of ``model`` (tokens (B, N) -> logits (B, N, 256)) on ``steps`` batches of LM_BATCH random
    windows of LM_SEQ + 1 bytes of ``train`` (AdamW, one-cycle cosine to lr 2e-3); returns the training seconds."""
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
    return time.perf_counter() - t0


def run_lm(profile: str, seed: int, log) -> dict:
    """The byte-level spiking LM vs a same-size ANN LM, same data, steps and held-out files."""
    from ann.train.code import held_out_files
    from snn.models import SpikingLM, SpikingLMConfig

    steps, eval_bytes = LM_PROFILE[profile]
    train = stdlib_train_bytes()
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


def mfm_argv(size: str, profile: str) -> list[str]:
    """The ANN MFM's training arguments: exactly :mod:`benchmarks.models`' (same cache folder, trained once)."""
    from benchmarks.models import ENTRIES

    return ENTRIES[f"mfm-{size}"].argv(profile, {})


def spiking_mfm_argv(small: dict, seed: int) -> list[str]:
    """``python -m snn.train synthmed`` arguments that copy the ANN MFM run whose metrics are ``small`` (its steps,
    batch, data splits, questions per image and answer-probe weight), with ``seed``."""
    data = small["data"]
    return ["--steps", str(small["loop"]["steps"]), "--images-per-batch", str(small["images_per_batch"]),
            "--n-train", str(data["n_train"]), "--n-val", str(data["n_val"]), "--n-test", str(data["n_test"]),
            "--questions-per-image", str(small["train_questions_per_image"]), "--aux-weight", str(small["aux_weight"]),
            "--data-seed", str(data["seed"]), "--eval-every", "0", "--seed", str(seed), "--quiet"]


def teacher_logits_file(teacher_dir: Path, small: dict, path: Path) -> Path:
    """Write the answer logits (:func:`ann.train.vqa.answer_slot_logits`) of the ANN MFM saved in ``teacher_dir`` on
    the spiking students' training split (the split :func:`spiking_mfm_argv` gives ``snn.train``) to ``path``
    (safetensors, ``teacher_logits``); returns ``path``."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    import ann.models.mfm  # noqa: F401  (registers the MFM with the Auto classes)
    from ann.train.vqa import answer_slot_logits, encode_vqa
    from tasks.io import save_tensors
    from tasks.synthmed import SynthMedConfig, load_synthmed

    data = small["data"]
    teacher = AutoModelForImageTextToText.from_pretrained(teacher_dir)
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    # the same generator arguments as snn.train's training split
    split = load_synthmed("train", SynthMedConfig(n_train=data["n_train"], n_val=data["n_val"], n_test=data["n_test"],
                                                  seed=data["seed"], questions_per_image=small["train_questions_per_image"]))
    save_tensors(path, {"teacher_logits": answer_slot_logits(teacher, encode_vqa(split, tok, teacher.num_visual_tokens))})
    return path


def train_spiking_mfm(argv: list[str], out: Path) -> dict:
    """``python -m snn.train synthmed ARGV --no-resume --out OUT`` in this process; returns its metrics."""
    from snn import train as snn_train

    parser = argparse.ArgumentParser()
    snn_train.add_arguments(parser)
    return snn_train.run(parser.parse_args([*argv, "--no-resume", "--out", str(out)]))


def run_mfm(profile: str, seed: int, cache_dir: Path, work: Path, log) -> dict:
    """The spiking MFM on SynthMed-VQA, trained plainly and distilled from the large ANN MFM, vs the ANN MFM of about
    the same size (``mfm-small``); the spiking runs copy the small ANN MFM's steps, batch, data and answer probe."""
    from benchmarks.models import run_entry
    from snn.checkpoint import load_model

    ann = {}
    for size in ("small", "large"):
        folder, metrics, cached = run_entry(f"mfm-{size}", "ann.train.synthmed", mfm_argv(size, profile), cache_dir, log)
        ann[size] = (folder, metrics)
        log(f"ANN MFM ({size}): test accuracy {metrics['test']['accuracy']:.3f}{' (cached)' if cached else ''}")
    small = ann["small"][1]
    data = small["data"]
    common = spiking_mfm_argv(small, seed)
    teacher_file = teacher_logits_file(ann["large"][0] / "model", small, work / "teacher_logits.safetensors")

    runs = {}
    for name, extra in (("spiking", []), ("spiking_distilled", ["--teacher-logits", str(teacher_file)])):
        log(f"{name} MFM: {small['loop']['steps']} steps on {data['n_train']} images")
        out = work / name
        runs[name] = train_spiking_mfm([*common, *extra], out)
        runs[name]["accounting"] = _mfm_accounting(load_model(out / "model"), seed)
        log(f"{name} MFM: test accuracy {runs[name]['test']['accuracy']:.3f}")
    keep = ("params", "test", "train_seconds", "spec")
    return {"ann": {k: small[k] for k in keep}, "ann_teacher": {k: ann["large"][1][k] for k in keep}, **runs,
            "protocol": f"{small['loop']['steps']} steps of {small['images_per_batch']} images x "
                        f"{small['train_questions_per_image']} questions on {data['n_train']} training images, each "
                        f"model at its own measured default learning rate (ANN {small['loop']['lr']}, spiking "
                        f"{runs['spiking']['loop']['lr']}), answer probe weight {small['aux_weight']}; distillation "
                        f"from the large ANN MFM; test {data['n_test']} images x 3 questions, exact-match greedy answers"}


def _mfm_accounting(model, seed: int) -> dict:
    """Spike accounting of one (image, question) pass, teacher-forced, averaged over 64 test images."""
    from snn.vqa import encode_spiking_vqa
    from tasks.synthmed import SynthMedConfig, load_synthmed

    d = encode_spiking_vqa(load_synthmed("test", SynthMedConfig(n_train=8, n_val=8, n_test=64, seed=seed)))
    first = torch.from_numpy(d.by_image[:, 0])  # one question per image: one inference per image
    return accounting(model, {"images": d.images, "image_index": torch.arange(len(first)), "tokens": d.tokens[first]},
                      name="spiking MFM")


def accounting(model, x, *, name: str = "spikformer digits") -> dict:
    """Per-layer spike accounting on ``x`` (a batch, or a dict of keyword inputs) from the workload IR (32-bit
    membranes)."""
    from neurohw.workload import OpKind, trace

    w = trace(model, x, name=name, timesteps=model.config.timesteps)
    layers = [{"layer": op.name, "neurons": op.neurons, "firing_rate": op.firing_rate, "updates": op.elements,
               "membrane_bytes": op.neurons * op.state_bits / 8} for op in w.ops if op.kind is OpKind.NEURON]
    return {"firing_rate": w.firing_rate, "sops": w.sops, "macs": w.macs, "neuron_updates": w.neuron_updates,
            "membrane_bytes": sum(r["membrane_bytes"] for r in layers), "params": w.params, "layers": layers,
            "untraced": list(w.untraced)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.snn", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_dir_arg(p, "trained ANN baselines (benchmarks.models' cache: keyed by their arguments and code)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    log = (lambda _m: None) if args.quiet else (lambda m: print(f"[snn] {m}", file=sys.stderr, flush=True))

    from tasks.classifier import TrainConfig, evaluate, train_classifier
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
        step_s = train_step_seconds(VARIANTS, xb, yb, steps=timed_steps, seed=args.seed, timesteps=cfg.timesteps)
        log("byte-level language models: spiking vs same-size ANN")
        lm = run_lm(args.profile, args.seed, log)
        log("SynthMed-VQA: spiking MFM (plain and distilled) vs the ANN MFM of about the same size")
        with tempfile.TemporaryDirectory(prefix="snn-bench-") as work:
            mfm = run_mfm(args.profile, args.seed, args.cache_dir, Path(work), log)
    throughput = {v: 64 / s for v, s in step_s.items()}
    ratios = {f"{v}_over_snntorch-peer": throughput[v] / throughput["snntorch-peer"] for v in throughput if v != "snntorch-peer"}
    ours = ratios["ours-fused_over_snntorch-peer"]
    targets = [Target("spiking_vit_digits_test_accuracy", test_acc, ">= 0.95", test_acc >= 0.95),
               Target("training_throughput_ours_over_snntorch", ours, ">= 2.0 (same architecture, CPU)", ours >= 2.0)]
    ann_acc = mfm["ann"]["test"]["accuracy"]
    gap = ann_acc - mfm[MFM_RECIPE]["test"]["accuracy"]
    targets.append(Target("spiking_mfm_accuracy_gap_to_ann_mfm", gap,
                          f"<= 0.05 ({MFM_RECIPE} vs the ANN MFM of about the same size, {mfm['ann']['params']} params)",
                          gap <= 0.05))
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
               "lm": lm, "mfm": mfm, "targets": [t.to_dict() for t in targets],
               "meta": {"benchmark": "snn", "profile": args.profile, "seed": args.seed, "wall_time_s": sw.seconds,
                        "machine": machine_info(), "versions": versions("spikingjelly", "snntorch")}}
    lm_cols = ["language model (bytes)", "params", "held-out bits/byte", "train s"]
    lm_rows = [["spiking LM", lm["spiking"]["params"], lm["spiking"]["bits_per_byte"], lm["spiking"]["train_seconds"]],
               ["ANN LM, same size", lm["ann_same_size"]["params"], lm["ann_same_size"]["bits_per_byte"],
                lm["ann_same_size"]["train_seconds"]]]
    mfm_cols = ["SynthMed-VQA model", "params", "test accuracy", "firing rate", "SOPs / inference", "train s"]
    mfm_rows = [["ANN MFM (mfm-small)", mfm["ann"]["params"], ann_acc, None, None, mfm["ann"]["train_seconds"]]]
    mfm_rows += [[f"{n.replace('_', ' ')} MFM (T={r['config']['timesteps']})", r["params"], r["test"]["accuracy"],
                  r["accounting"]["firing_rate"], r["accounting"]["sops"], r["train_seconds"]]
                 for n, r in mfm.items() if n.startswith("spiking")]
    md = ("# neuromfm spiking transformers\n\n" + format_table(cols, rows, markdown=True)
          + "\n\n## SynthMed-VQA (" + mfm["protocol"] + ")\n\n" + format_table(mfm_cols, mfm_rows, markdown=True)
          + "\n\n## Byte-level language models (" + lm["protocol"] + ")\n\n" + format_table(lm_cols, lm_rows, markdown=True)
          + "\n\n## Training throughput of the same architecture (ours on each neuron engine; the snnTorch-style peer)\n\n" + format_table(tp_cols, tp_rows, markdown=True)
          + "\n\n" + format_targets(targets, markdown=True) + "\n")
    path = write_results(args.out, "snn", payload, markdown=md)
    print(format_table(cols, rows))
    print(format_table(tp_cols, tp_rows))
    print(format_table(lm_cols, lm_rows))
    print(format_table(mfm_cols, mfm_rows))
    print(format_targets(targets))
    print(f"wrote {path} in {sw.seconds:.1f} s")
    return payload


if __name__ == "__main__":
    main()
