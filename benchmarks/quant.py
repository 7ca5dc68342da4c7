"""Hierarchy-aware mixed-precision quantization vs uniform quantization at the same average bit width, on the MFM
(SynthMed-VQA accuracy) and on SmolLM2-135M (held-out bits per byte), and real int8 decoding of SmolLM2.

In one run:

- SmolLM2-135M-Instruct (``ann.models.smollm2``), bits per byte and perplexity on ``ann.train.code.EvalProtocol``'s
  held-out files: fp32; uniform b-bit weights (group-wise symmetric, group 128) for every b of the profile;
  mixed precision at each average bit width of the profile, allocated by the hierarchy-aware ILP from KL
  sensitivities measured on calibration text (the protocol's validation files), along ``quant.mixed``'s penalty
  path validated on held-out calibration tokens; the flat per-layer ILP at the same budget, for the search cost;
  and a mixed configuration under the decoding energy of uniform 4-bit on the simulated accelerator
  (``neurohw.accel.budget``, ``default`` preset), with every configuration's energy per decoding step. Weights
  only (activations in float): 8-bit activations are the int8 path's business below.
- Real int8 decoding of SmolLM2: greedy tokens per second of fp32; of ours (``quant.int8``) in both modes,
  weight-only int8 (W8A16: bf16 activations, ``aten._weight_int8pack_mm``) and W8A8 (``torch._int_mm``, per-token
  activation scales, SmoothQuant with alpha chosen on calibration text), each with q/k/v and gate/up fused into
  one GEMM; and of PyTorch's dynamic quantization (``quant.qmodules.int8_dynamic``): the models stepped in turn,
  token by token, median step time; with the bits per byte of each. The speed target is scored on W8A16, the
  path to decode with on a CPU (one decoding token makes op dispatch the cost, and it has a third of W8A8's ops).
- The MFM (``ann.models.mfm``, small in the quick profile, large in the full one, as ``benchmarks.models``' full
  profile trains it, read from its cache or trained here: 1.5 min for the small one on 2 cores): SynthMed-VQA
  test accuracy (a 4000-image test split, 12000 questions) of fp32, uniform and mixed configurations,
  sensitivities measured on the answer-slot logits of validation images, the penalty path validated on as many
  other validation images.
- Memory of every configuration: in RAM (parameters + buffers) and on disk (``quant.save_quantized``).

Targets: at every average bit width of the profile that a uniform width matches, mixed precision is closer to
fp32 than uniform (MFM accuracy, SmolLM2 bits per byte; on the MFM only where uniform loses more than two standard
errors of the test accuracy, since nothing can be shown closer to fp32 than noise: ``mfm_resolution``); int8 decoding >= 1.8x fp32's tokens per second with at
most 2 % higher perplexity. Writes ``quant.json``, ``quant.md`` and ``quant_pareto.png`` (average bits vs metric).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import Target, add_cache_dir_arg, add_common_args, format_table, format_targets, machine_info, save_figure, versions, write_results


@dataclass(frozen=True)
class Profile:
    eval_bytes: int  # held-out bytes for SmolLM2's bits per byte
    calib_tokens: int
    calib_batches: int
    choices: tuple[int, ...]  # widths the allocator chooses from
    uniform_bits: tuple[int, ...]
    avg_bits: tuple[float, ...]  # budgets of the mixed configurations
    decode_tokens: int
    mfm_size: str
    mfm_calib_images: int  # and as many held-out validation images
    mfm_test_images: int
    val_tokens: int  # SmolLM2 held-out calibration tokens that validate the penalty path


PROFILES = {
    "quick": Profile(eval_bytes=16_000, calib_tokens=64, calib_batches=1, choices=(2, 3, 4, 8), uniform_bits=(2, 3, 4, 8),
                     avg_bits=(3.0, 4.0), decode_tokens=64, mfm_size="small", mfm_calib_images=32, mfm_test_images=4000, val_tokens=512),
    "full": Profile(eval_bytes=100_000, calib_tokens=256, calib_batches=4, choices=(2, 3, 4, 5, 6, 8),
                    uniform_bits=(2, 3, 4, 5, 6, 8), avg_bits=(2.5, 3.0, 3.5, 4.0, 4.5, 5.0), decode_tokens=128,
                    mfm_size="large", mfm_calib_images=64, mfm_test_images=4000, val_tokens=1024),
}
GROUP = 128
ALPHAS = (0.5, 0.65, 0.8)


def _spec(bits: int):
    from quant.quantizer import QuantSpec

    return QuantSpec(bits=bits, granularity="group", group_size=GROUP)


def _fq(w: torch.Tensor, bits: int) -> torch.Tensor:
    from quant.quantizer import fake_quant

    return w if bits >= 16 else fake_quant(w, _spec(bits))


def _memory(qmodel) -> dict:
    from quant.model_io import model_memory

    return {"ram_bytes": model_memory(qmodel)["total"]}


def _disk_bytes(qmodel, config) -> int:
    from quant.model_io import save_quantized

    with tempfile.TemporaryDirectory() as d:
        save_quantized(qmodel, config, d)
        return sum(p.stat().st_size for p in Path(d).iterdir() if p.is_file())


ENERGY_NAME = "mixed, decode energy of uniform 4-bit"


def _variants(model, root, sens, validate, profile: Profile, log, *, energy=None) -> dict:
    """name -> (bit config, allocation info or None). ``energy``: ``(node, bits) -> joules`` of one decoding step
    on the accelerator (``neurohw.accel.budget``); adds a configuration under uniform 4-bit's energy."""
    from quant.allocate import Budget
    from quant.mixed import uniform_config

    out = {f"uniform {b}-bit": (uniform_config(model, root, _spec(b)), None) for b in profile.uniform_bits}
    runs = [(f"mixed {avg:g}-bit" + (" (flat ILP)" if flat else ""), Budget(avg_bits=avg), flat)
            for avg in profile.avg_bits for flat in ((False, True) if avg == profile.avg_bits[-1] else (False,))]
    if energy is not None:
        runs.append((ENERGY_NAME, Budget(limit=energy(root, 4), cost_fn=energy), False))
    for name, budget, flat in runs:
        out[name] = allocate_mixed(model, root, sens, validate, profile.choices, budget, log, name=name, flat=flat)
    return out


def allocate_mixed(model, root, sens, validate, choices: tuple[int, ...], budget, log, *, name: str,
                   flat: bool = False, progress: bool = True) -> tuple[dict, dict]:
    """One mixed-precision configuration of ``model`` under ``budget`` (:func:`quant.mixed.mixed_config` on the KL
    sensitivities ``sens``, its penalty path validated by ``validate``; group-wise weights, :data:`GROUP`):
    ``(bit config, allocation info)``. ``progress``: count the sensitivity evaluations on stderr (an hour on
    SmolLM2 at one thread)."""
    from quant.mixed import mixed_config

    log(f"  allocating {name}")
    cfg, alloc, cands = mixed_config(model, root, sens.fn("kl"), choices, budget, _spec, flat=flat, validate=validate,
                                     progress=progress)
    info = {"average_bits": alloc.average_bits, "evaluations": alloc.cost.evaluations,
            "sensitivity_seconds": alloc.cost.sensitivity_seconds, "solve_seconds": alloc.cost.solve_seconds,
            "ilp_variables": alloc.cost.ilp_variables,
            "widths": {b: sum(1 for s in cfg.values() if s.bits == b) for b in choices},
            "penalty_path": [asdict(c) for c in cands]}
    chosen = next(c for c in cands if c.chosen)
    log(f"  {name}: penalty t={chosen.penalty:g} chosen, validation KL "
        + ", ".join(f"{c.penalty:g}:{c.validation:.4g}" for c in cands))
    return cfg, info


def _avg_bits(root, config) -> float:
    from quant.hierarchy import Level

    total = bits = 0
    for node in root.at_level(Level.SUBLAYER):
        b = config[node.modules[0]].bits
        total += node.params
        bits += node.params * b
    return bits / total


# --------------------------------------------------------------------------------------------------- SmolLM2
def lm_calibration(tok, profile: Profile) -> tuple[list[dict], list[dict]]:
    """``(batches, held_out)`` of a causal LM with tokenizer ``tok`` for :func:`allocate_mixed`: ``calib_batches``
    batches of ``calib_tokens`` tokens of the stdlib corpus' validation files (the sensitivities' calibration data),
    then the next ``val_tokens`` tokens (held out from the sensitivities: they validate the penalty path)."""
    from ann.train.code import held_out_files

    calib_text = "\n".join(f.text for f in held_out_files(40_000, split="val"))
    ids = tok(calib_text, return_tensors="pt").input_ids[0]
    n = profile.calib_tokens
    batches = [{"input_ids": ids[i * n:(i + 1) * n][None], "attention_mask": torch.ones(1, n, dtype=torch.long)}
               for i in range(profile.calib_batches)]
    start = n * profile.calib_batches  # held out from the sensitivities: validates the penalty path
    held_out = [{"input_ids": ids[start:start + profile.val_tokens][None]}]
    if held_out[0]["input_ids"].shape[1] < profile.val_tokens:
        raise RuntimeError(f"calibration text too short: {len(ids)} tokens for {start} + {profile.val_tokens}")
    return batches, held_out


def _smollm2(profile: Profile, log) -> dict:
    from ann.models.smollm2 import load_smollm2
    from ann.train.code import EvalProtocol
    from quant.hierarchy import build_hierarchy
    from neurohw.accel import PRESETS
    from neurohw.accel.budget import allocation_cost_fn
    from quant.hierarchy import Level
    from quant.mixed import kl_validator
    from quant.model_io import quantize_model
    from quant.sensitivity import Sensitivity

    model, tok = load_smollm2()
    model.eval()
    protocol = EvalProtocol(eval_bytes=profile.eval_bytes)
    batches, held_out = lm_calibration(tok, profile)

    def bpb(m) -> dict:
        with torch.no_grad():
            r = protocol.evaluate(m, tok, progress=False)
        return {"bits_per_byte": r["bits_per_byte"], "perplexity": r["perplexity"]}

    res: dict = {"fp32": {**bpb(model), "average_bits": 32.0, "ram_bytes": sum(p.numel() * 4 for p in model.parameters())}}
    log(f"smollm2 fp32: {res['fp32']}")
    root = build_hierarchy(model)
    sens = Sensitivity(model, root, batches, fake_quant=_fq)
    t0 = time.perf_counter()
    energy = allocation_cost_fn(PRESETS["default"], root, tokens=1, metric="energy")
    variants = _variants(model, root, sens, kl_validator(model, held_out), profile, log, energy=energy)
    res["sensitivity"] = {"seconds": time.perf_counter() - t0, "evaluations": dict(sens.cost.evaluations)}
    for name, (cfg, info) in variants.items():
        qm = quantize_model(model, cfg, act_bits=None)
        r = {**bpb(qm), "average_bits": _avg_bits(root, cfg), **_memory(qm), "disk_bytes": _disk_bytes(qm, cfg),
             "decode_energy_uj": 1e6 * sum(energy(n, cfg[n.modules[0]].bits) for n in root.at_level(Level.SUBLAYER))}
        if info:
            r["allocation"] = info
        res[name] = r
        log(f"smollm2 {name}: bpb {r['bits_per_byte']:.4f}, avg bits {r['average_bits']:.3f}")
        del qm
    res["int8"] = _int8(model, tok, batches, bpb, profile, log)
    return res


def _decode_seconds(models: dict, ids: torch.Tensor | dict[str, torch.Tensor], n: int) -> dict[str, list[float]]:
    """Seconds per greedy decoding step of each model, the models stepped in turn token by token, so that every
    one sees the same moments of the machine (its speed drifts by tens of percent over seconds on a shared box).
    ``ids``: the prompt, or one per model (models with different vocabularies)."""
    state, out = {}, {k: [] for k in models}
    with torch.no_grad():
        for k, m in models.items():
            o = m(ids[k] if isinstance(ids, dict) else ids, use_cache=True)
            state[k] = (o.past_key_values, o.logits[:, -1:].argmax(-1))
        for _ in range(n):
            for k, m in models.items():
                past, nxt = state[k]
                t0 = time.perf_counter()
                o = m(nxt, past_key_values=past, use_cache=True)
                state[k] = (o.past_key_values, o.logits[:, -1:].argmax(-1))
                out[k].append(time.perf_counter() - t0)
    return out


INT8_W8A8, INT8_W8A16 = "ours int8 W8A8 (SmoothQuant, fused)", "ours int8 weight-only W8A16 (fused)"


def _int8(model, tok, batches, bpb, profile: Profile, log) -> dict:
    from quant.int8 import calibrate_input_absmax, llama_smoothing_pairs, shared_input_groups, smooth, to_int8
    from quant.qmodules import int8_dynamic

    pairs = llama_smoothing_pairs(model)
    calib = batches[0]["input_ids"]
    amax = calibrate_input_absmax(model, lambda m: m(calib), [c for _, cs in pairs for c in cs])
    with torch.no_grad():
        ref = torch.log_softmax(model(calib).logits.double(), -1)
        groups = shared_input_groups(model, lambda m: m(calib))

    def calib_kl(m) -> float:
        with torch.no_grad():
            return float(torch.nn.functional.kl_div(torch.log_softmax(m(calib).logits.double(), -1), ref,
                                                    log_target=True, reduction="batchmean"))

    kls = {}
    for a in ALPHAS:
        kls[a] = calib_kl(to_int8(smooth(copy.deepcopy(model), pairs, amax, alpha=a), fuse=groups))
    alpha = min(kls, key=kls.get)
    models = {"fp32": model,
              INT8_W8A8: to_int8(smooth(copy.deepcopy(model), pairs, amax, alpha=alpha), fuse=groups),
              INT8_W8A16: to_int8(model, fuse=groups, activations="bf16"),
              "torch.ao dynamic int8": int8_dynamic(model)}
    prompt = tok("def fibonacci(n):\n    ", return_tensors="pt").input_ids
    steps = _decode_seconds(models, prompt, profile.decode_tokens)
    out = {"alpha": alpha, "calibration_kl": {str(k): v for k, v in kls.items()}, "fused_groups": len(groups),
           "timing": f"median seconds per decoding step over {profile.decode_tokens} greedy steps, the models stepped "
                     "in turn token by token (tokens_per_second = 1 / median)"}
    for k, m in models.items():
        med = sorted(steps[k])[len(steps[k]) // 2]
        out[k] = {"tokens_per_second": 1.0 / med, "step_seconds": steps[k], **bpb(m)}
        log(f"int8 {k}: {out[k]['tokens_per_second']:.1f} tok/s, bpb {out[k]['bits_per_byte']:.4f}")
    return out


# ------------------------------------------------------------------------------------------------------- MFM
def _images(data, a: int, b: int):
    """The samples of images ``a .. b-1`` of a :class:`ann.train.vqa.VQATensors`, as one (image indices from 0)."""
    import dataclasses

    import numpy as np

    idx = torch.from_numpy(data.by_image[a:b].reshape(-1))
    q, k = data.by_image.shape[1], b - a
    return dataclasses.replace(
        data, images=data.images[a:b], image_index=data.image_index[idx] - a, input_ids=data.input_ids[idx],
        attention_mask=data.attention_mask[idx], labels=data.labels[idx], prompt_ids=data.prompt_ids[idx],
        prompt_mask=data.prompt_mask[idx], by_image=np.arange(k * q).reshape(k, q),
        answers=tuple(data.answers[i] for i in idx.tolist()), all_answers=data.all_answers[a:b])


@contextlib.contextmanager
def no_image_answers(mfm):
    """While active, ``<image>`` is never a candidate answer token of ``mfm``: a damaged (quantized, pruned) model can
    emit it, and ``ann.train.vqa.predict_answers`` would then take it for an image slot and fail."""
    image_token = mfm.config.image_token_id

    def hook(_mod, _inp, out):
        out[..., image_token] = float("-inf")
        return out

    handle = mfm.lm_head.register_forward_hook(hook)
    try:
        yield mfm
    finally:
        handle.remove()


def mfm_sensitivity(model, val, calib_images: int):
    """``(hierarchy, sensitivities, validator)`` of an MFM for :func:`allocate_mixed`: KL sensitivities of the
    answer-slot logits (:func:`ann.train.vqa.answer_slot_logits`) of the first ``calib_images`` images of ``val``
    (a :class:`ann.train.vqa.VQATensors`), and a validator of the penalty path on the next ``calib_images``
    (held out from the sensitivities)."""
    from ann.train.vqa import answer_slot_logits
    from quant.hierarchy import build_hierarchy
    from quant.mixed import kl_validator
    from quant.sensitivity import Sensitivity

    k = calib_images
    if len(val.images) < 2 * k:
        raise RuntimeError(f"the MFM's validation split has {len(val.images)} images; {2 * k} needed (calibration + held out)")
    # batch 0: the sensitivities' calibration images; batch 1: held out, validates the penalty path
    parts = [_images(val, 0, k), _images(val, k, 2 * k)]

    def forward(m, batch):  # the answer-slot logits of one part's validation images
        return answer_slot_logits(m, parts[batch], images_per_batch=k)

    root = build_hierarchy(model)
    return root, Sensitivity(model, root, [0], fake_quant=_fq, forward=forward), kl_validator(model, [1], forward=forward)


def _mfm(profile: Profile, log, cache_dir: Path) -> dict:
    from ann.models.mfm import MFMForConditionalGeneration
    from ann.train.vqa import encode_vqa, evaluate_mfm
    from benchmarks.models import _mfm_argv, run_entry
    from quant.model_io import quantize_model
    from tasks.synthmed import SynthMedConfig, load_synthmed
    from transformers import AutoTokenizer

    # the MFM as benchmarks.models' full profile trains it (cached there; the quick profile's MFM barely
    # leaves the question-only prior, which would make every configuration look alike)
    folder, metrics, _ = run_entry(f"mfm-{profile.mfm_size}", "ann.train.synthmed", _mfm_argv(profile.mfm_size)("full", {}),
                                   cache_dir, log)
    model = MFMForConditionalGeneration.from_pretrained(folder / "model").eval()
    tok = AutoTokenizer.from_pretrained(folder / "model")
    cfg = SynthMedConfig(**metrics["data"])
    V = model.num_visual_tokens
    # a larger test split than training recorded (same generator, the test seed): 4-bit configurations differ from
    # fp32 by a fraction of a point, which 1000 images (3000 questions) cannot resolve
    test_split = load_synthmed("test", SynthMedConfig(**{**metrics["data"], "n_test": profile.mfm_test_images}))
    val_split = load_synthmed("val", cfg)
    test, val = encode_vqa(test_split, tok, V), encode_vqa(val_split, tok, V)

    def accuracy(m) -> float:
        with no_image_answers(m):
            return evaluate_mfm(m, tok, test, test_split)["accuracy"]

    res: dict = {"fp32": {"accuracy": accuracy(model), "average_bits": 32.0,
                          "ram_bytes": sum(p.numel() * 4 for p in model.parameters())}, "params": metrics["params"],
                 "test_questions": len(test.answers)}
    root, sens, validate = mfm_sensitivity(model, val, profile.mfm_calib_images)
    res["modalities"] = {n.name: n.params for n in root.at_level("modality")}
    t0 = time.perf_counter()
    variants = _variants(model, root, sens, validate, profile, log)
    res["sensitivity"] = {"seconds": time.perf_counter() - t0, "evaluations": dict(sens.cost.evaluations)}
    for name, (qcfg, info) in variants.items():
        qm = quantize_model(model, qcfg, act_bits=None)
        r = {"accuracy": accuracy(qm), "average_bits": _avg_bits(root, qcfg), **_memory(qm), "disk_bytes": _disk_bytes(qm, qcfg)}
        if info:
            r["allocation"] = info
        res[name] = r
        log(f"mfm {name}: accuracy {r['accuracy']:.4f}, avg bits {r['average_bits']:.3f}")
    return res


# --------------------------------------------------------------------------------------------------- report
def _two_se(mfm: dict) -> float:
    """Two standard errors of the fp32 accuracy on the test questions: a uniform configuration that loses less
    than this cannot be beaten measurably (no configuration can be shown closer to fp32 than that)."""
    p, n = mfm["fp32"]["accuracy"], mfm["test_questions"]
    return 2 * (p * (1 - p) / n) ** 0.5


def _mfm_resolution(mfm: dict, profile: Profile) -> dict:
    """Per average width: uniform's and mixed's accuracy loss against fp32 and whether the target is scored."""
    out = {}
    for avg in profile.avg_bits:
        u, m = f"uniform {int(avg)}-bit", f"mixed {avg:g}-bit"
        if int(avg) == avg and u in mfm and m in mfm:
            gap_u = mfm["fp32"]["accuracy"] - mfm[u]["accuracy"]
            out[f"{avg:g}"] = {"uniform_loss": gap_u, "mixed_loss": mfm["fp32"]["accuracy"] - mfm[m]["accuracy"],
                               "two_standard_errors": _two_se(mfm), "scored": gap_u > _two_se(mfm)}
    return out


def _targets(mfm: dict, lm: dict, profile: Profile) -> list[Target]:
    out = []
    for avg in profile.avg_bits:
        if int(avg) != avg or int(avg) not in profile.uniform_bits:
            continue
        u, m = f"uniform {int(avg)}-bit", f"mixed {avg:g}-bit"
        gap_u, gap_m = mfm["fp32"]["accuracy"] - mfm[u]["accuracy"], mfm["fp32"]["accuracy"] - mfm[m]["accuracy"]
        if gap_u > _two_se(mfm):  # else uniform is within noise of fp32: reported in mfm_resolution, not scored
            out.append(Target(f"mfm_mixed_closer_to_fp32_than_uniform_at_{avg:g}_bits", gap_u - gap_m,
                              "> 0 (accuracy points gained over uniform)", gap_m < gap_u))
        gu, gm = lm[u]["bits_per_byte"] - lm["fp32"]["bits_per_byte"], lm[m]["bits_per_byte"] - lm["fp32"]["bits_per_byte"]
        out.append(Target(f"smollm2_mixed_closer_to_fp32_than_uniform_at_{avg:g}_bits", gu - gm,
                          "> 0 (bits per byte saved over uniform)", gm < gu))
    # scored on the weight-only int8 path, the one to decode with on a CPU; W8A8's figures are in the int8 table
    i8, fp = lm["int8"], lm["int8"]["fp32"]
    speed = i8[INT8_W8A16]["tokens_per_second"] / fp["tokens_per_second"]
    ppl = i8[INT8_W8A16]["perplexity"] / fp["perplexity"] - 1
    out.append(Target("smollm2_int8_decode_speedup", speed, ">= 1.8", speed >= 1.8))
    out.append(Target("smollm2_int8_perplexity_increase", ppl, "<= 0.02", ppl <= 0.02))
    return out


def _plot(mfm: dict, lm: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (res, key, title) in zip(axes, ((mfm, "accuracy", "MFM SynthMed-VQA accuracy"),
                                            (lm, "bits_per_byte", "SmolLM2 bits per byte (lower is better)"))):
        for kind, style in (("uniform", "o--"), ("mixed", "s-")):
            pts = sorted((r["average_bits"], r[key]) for n, r in res.items()
                         if n.startswith(kind) and "flat" not in n and isinstance(r, dict) and key in r)
            if pts:
                ax.plot(*zip(*pts), style, label=kind)
        ax.axhline(res["fp32"][key], color="k", lw=0.8, label="fp32")
        ax.set_xlabel("average weight bits")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_dir_arg(p, "trained MFMs (benchmarks.models' cache)")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[quant {time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    mfm = _mfm(profile, log, args.cache_dir)
    lm = _smollm2(profile, log)
    targets = _targets(mfm, lm, profile)
    rows = []
    for model_name, res, key in (("MFM", mfm, "accuracy"), ("SmolLM2", lm, "bits_per_byte")):
        for name, r in res.items():
            if isinstance(r, dict) and key in r:
                a = r.get("allocation") or {}
                rows.append([model_name, name, r["average_bits"], r[key], r.get("ram_bytes", 0) / 2 ** 20,
                             r.get("disk_bytes", 0) / 2 ** 20, a.get("evaluations", "")])
    table = format_table(["model", "config", "avg bits", "metric", "RAM MiB", "disk MiB", "search evals"], rows)
    i8 = lm["int8"]
    fp_tps = i8["fp32"]["tokens_per_second"]
    int8_rows = [[k, v["tokens_per_second"], v["tokens_per_second"] / fp_tps, v["bits_per_byte"], v["perplexity"]]
                 for k, v in i8.items() if isinstance(v, dict) and "tokens_per_second" in v]
    int8_table = format_table(["SmolLM2 decoding", "tokens/s", "x fp32", "bits/byte", "perplexity"], int8_rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plot = _plot(mfm, lm, args.out / "quant_pareto.png")
    payload = {"benchmark": "quant", "profile": args.profile, "seed": args.seed, "profile_settings": asdict(profile),
               "group_size": GROUP, "machine": machine_info(), "versions": versions("torch", "transformers", "pulp"),
               "mfm": mfm, "smollm2": lm, "targets": [asdict(t) for t in targets], "plot": str(plot),
               "mfm_resolution": _mfm_resolution(mfm, profile),
               "wall_seconds": time.perf_counter() - t_start,
               "notes": {"metric": "MFM: exact-match answer accuracy on the SynthMed test split; SmolLM2: bits per byte of "
                                   "EvalProtocol's held-out files", "weights": "weight-only fake quantization for the "
                                   "uniform / mixed configurations (group-wise symmetric, packed in memory); activations float"}}
    md = "\n\n".join(["# benchmarks.quant", table, int8_table, format_targets(targets, markdown=True)])
    write_results(args.out, "quant", payload, markdown=md)
    print(table)
    print(int8_table)
    print(format_targets(targets))
    return json.loads(json.dumps(payload, default=str))


if __name__ == "__main__":
    main()
