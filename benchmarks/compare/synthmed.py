r"""The SynthMed-VQA rows (:mod:`tasks.synthmed`; quality: exact-match answer accuracy on the test split).

Every row answers the same test questions: the large MFM's own test split (its training run's data config, quick
500 images x 3 questions, full 1000 x 3), the first :attr:`Settings.test_images` images of it (None: all). Models:

- ANN: the large LLaVA-style MFM (``benchmarks.models``' ``mfm-large`` entry and arguments for the profile) and the
  small one (``mfm-small``) in fp32; hierarchy-aware mixed precision (:func:`benchmarks.quant.allocate_mixed`,
  weight-only, group-wise); structural pruning with recovery (:func:`benchmarks.prune.prune_mfm`); pruning, then
  the same mixed precision; the small-to-large cascade with self-tests (:func:`benchmarks.cascade._synthmed`);
  the co-optimized inputs (:func:`benchmarks.cooptimize.search`, then its budget rule); the spike-friendly ViT
  classifier that the converted rows start from (:func:`benchmarks.conversion.synthmed_vit`).
- SNN: that ViT converted to multi-level IF neurons (:func:`conversion.convert_transformer`) at each T of the
  profile; the spiking MFM distilled from the large MFM (``benchmarks.snn``'s recipe, :func:`benchmarks.snn.
  spiking_mfm_argv`); the spiking MFM after :mod:`snn.quant`'s tiered search.

One inference is one (image, question). The MFMs and the spiking MFM are costed on the accelerator as greedy
decoding with a cache runs (:mod:`benchmarks.compare.decode`): a prefill of ``<bos>``, the visual tokens and the
question, then one single-token step per answer token (the last predicts ``<eos>``), each call fetching what does
not stay on chip, on a few test samples of the most common (prompt, answer) lengths; the ViTs read image + question
once and classify. State memory: the MFM's key/value cache of that context, ``2 L_layers H_kv d_head n_ctx`` values
at fp32 (4 bytes); the spiking MFM's spike cache (1 bit per key / value spike) + the prefill's membranes; the
converted ViT's membranes. CPU time: greedy answers (every decoding step recomputes the prefix, as
:func:`ann.train.vqa.predict_answers` and :meth:`snn.models.SpikingMFM.generate` do) for
:attr:`Settings.latency_images` test images, median per question.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from benchmarks.compare.core import (FP_ACCEL_BITS, Context, Measured, RowSpec, cached_dir, cpu_ms_per_sample,
                                     dense_weight_bytes, mix_accel, workload_cost)
from benchmarks.compare.decode import KV_BITS

if TYPE_CHECKING:
    from benchmarks.conversion import Profile as ConversionProfile

__all__ = ["ROWS", "PROFILES", "Settings"]

METRIC = "test answer accuracy"
ACCEL_SAMPLES = 4  # test samples traced per row


@dataclass(frozen=True)
class Settings:
    """What one profile trains and measures (``*_argv``: arguments of ``python -m ann.train synthmed``).

    Attributes:
        large_argv, small_argv: the MFMs (``benchmarks.models``' entries for the profile); the spiking MFM copies the
            small one's budget (``benchmarks.snn``'s protocol).
        small_fine_argv: the cascade's cheap tier (``small-fine`` preset; its val/test splits must be the large's).
        test_images: test images every row answers (None: the whole split).
        latency_images: test images (x 3 questions) answered per CPU timing.
        quant_bits, quant_choices, quant_calib_images: average weight bits, widths and calibration images of the
            mixed-precision allocation (the same number again validates its penalty path).
        prune_ratio, prune_calib_images, prune_steps, prune_lr: the pruning search and its recovery.
        cooptimize: a :data:`benchmarks.cooptimize.PROFILE_SPACES` entry (space, fine-tune steps, its data).
        conversion: a :class:`benchmarks.conversion.Profile` (its SynthMed ViT); timesteps: T of the converted rows.
        snnq_val_images: validation images scoring each configuration of the spiking MFM's quantization search.
    """

    large_argv: tuple[str, ...]
    small_argv: tuple[str, ...]
    small_fine_argv: tuple[str, ...]
    test_images: int | None
    latency_images: int
    quant_bits: float
    quant_choices: tuple[int, ...]
    quant_calib_images: int
    prune_ratio: float
    prune_calib_images: int
    prune_steps: int
    prune_lr: float
    cooptimize: dict
    conversion: ConversionProfile
    timesteps: tuple[int, ...]
    snnq_val_images: int

    def __post_init__(self) -> None:
        for name in ("latency_images", "quant_calib_images", "prune_calib_images", "prune_steps", "snnq_val_images"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"Settings.{name}={v!r} is invalid: use an int >= 1")
        if self.test_images is not None and not (isinstance(self.test_images, int) and self.test_images >= 1):
            raise ValueError(f"Settings.test_images={self.test_images!r} is invalid: an int >= 1, or None for all")
        if not 0 < self.prune_ratio < 1:
            raise ValueError(f"Settings.prune_ratio={self.prune_ratio!r} is invalid: a fraction of the parameters in (0, 1)")
        if not self.timesteps or not all(isinstance(t, int) and t >= 1 for t in self.timesteps):
            raise ValueError(f"Settings.timesteps={self.timesteps!r} is invalid: one or more ints >= 1")


def _profiles() -> dict[str, Settings]:
    from benchmarks import conversion, cooptimize, prune, quant
    from benchmarks.cascade import SMALL_MFM_ARGV
    from benchmarks.models import ENTRIES

    out = {}
    for p in ("quick", "full"):
        large = tuple(ENTRIES["mfm-large"].argv(p, {}))
        # the quick cheap tier: the quick large MFM's data arguments and its 500 optimizer steps in all (vision + VQA)
        fine = ("--size", "small-fine", "--steps", "500", "--n-train", "2000", "--n-test", "500", "--eval-every", "0",
                "--quiet") if p == "quick" else SMALL_MFM_ARGV
        q, pr = quant.PROFILES[p], prune.PROFILES[p]
        out[p] = Settings(large_argv=large, small_argv=tuple(ENTRIES["mfm-small"].argv(p, {})), small_fine_argv=tuple(fine),
                          test_images=None, latency_images=32, quant_bits=4.0, quant_choices=q.choices,
                          quant_calib_images=q.mfm_calib_images, prune_ratio=prune.TARGET_RATIO,
                          prune_calib_images=pr.mfm_calib_images, prune_steps=pr.mfm_recover_steps, prune_lr=pr.mfm_lr,
                          cooptimize=cooptimize.PROFILE_SPACES[p], conversion=conversion.PROFILES[p],
                          timesteps=(8, 16) if p == "quick" else (4, 8, 16, 32),
                          snnq_val_images=100 if p == "quick" else 300)
    return out


PROFILES: dict[str, Settings] = _profiles()


NO_LAVA = "not deployable: the Lava target (neurohw.lava) runs feed-forward chains of Linear / Conv and LIF layers; "


def _cmd(ctx: Context, row_id: str) -> str:
    return f"python -m benchmarks.compare ann snn --profile {ctx.profile} --seed {ctx.seed} --only {row_id}"


# ------------------------------------------------------------------------------------------------ data
def _first_images(data, k: int | None):
    """The first ``k`` images of an encoded split (:class:`ann.train.vqa.VQATensors` or
    :class:`snn.vqa.SpikingVQATensors`) with their questions: samples are stored image by image, so they are the
    first ``k * q``."""
    M, q = data.by_image.shape
    k = M if k is None else min(k, M)
    if data.by_image[:k].max() >= k * q:
        raise ValueError("the split's samples are not stored image by image; cannot take its first images")
    per_image = ("images", "by_image", "all_answers")
    return dataclasses.replace(data, **{f.name: getattr(data, f.name)[:k] if f.name in per_image
                                        else getattr(data, f.name)[:k * q] for f in dataclasses.fields(data)})


def _mfm(ctx: Context, name: str) -> tuple[Path, dict]:
    """``(folder, metrics)`` of ``benchmarks.models``' entry point run with the profile's ``<name>_argv``."""
    from benchmarks.models import run_entry

    def make():
        argv = list(getattr(PROFILES[ctx.profile], f"{name.removeprefix('mfm-').replace('-', '_')}_argv"))
        folder, metrics, cached = run_entry(name, "ann.train.synthmed", argv, ctx.cache_dir, ctx.log)
        if not cached:
            ctx.trained.append(name)
        return folder, metrics

    return ctx.once(f"synthmed/{name}", make)


def _load(folder: Path):
    """An MFM saved with its tokenizer (HF ``save_pretrained`` folder), in eval mode."""
    import ann.models.mfm  # noqa: F401  (registers the MFM with transformers' Auto classes)
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    return AutoModelForImageTextToText.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def _large(ctx: Context):
    return ctx.once("synthmed/large", lambda: _load(_mfm(ctx, "mfm-large")[0] / "model"))


def _split(ctx: Context, which: str):
    """The large MFM's ``which`` split (its training run's data config)."""
    from tasks.synthmed import SynthMedConfig, load_synthmed

    return load_synthmed(which, SynthMedConfig(**_mfm(ctx, "mfm-large")[1]["data"]))


def _encoded(ctx: Context, tok, V: int, q: int | None = None):
    """The evaluated test images, tokenized for ``V`` visual tokens, questions cut to ``q`` tokens (None: whole)."""
    from ann.cooptimize import compress_questions
    from ann.train.vqa import encode_vqa

    def make():
        full = _first_images(encode_vqa(_split(ctx, "test"), tok, V), PROFILES[ctx.profile].test_images)
        return compress_questions(full, tok, V, q)

    return ctx.once(f"synthmed/test/{V}/{q}", make)


# ------------------------------------------------------------------------------------------------ ANN MFM rows
def _decode_batch(data, n: int = ACCEL_SAMPLES) -> tuple[dict, torch.Tensor]:
    """``n`` test samples of the most common (prompt, answer) lengths, unpadded, as one decode: ``(prefill, steps)``,
    the prefill's MFM inputs (``<bos>``, the visual tokens and the question) and the answer tokens fed one per
    step (all but ``<eos>``, which the last step predicts)."""
    real = data.attention_mask.sum(1)  # (N,) tokens of each left-padded row, <eos> included
    answer = (data.labels != -100).sum(1)  # (N,) answer tokens + <eos>, at the end of every row
    pair = Counter(zip(real.tolist(), answer.tolist())).most_common(1)[0][0]
    sel = torch.nonzero((real == pair[0]) & (answer == pair[1])).flatten()[:n]
    L, (m, r) = data.input_ids.shape[1], pair
    prefill = {"input_ids": data.input_ids[sel, L - m:L - r], "attention_mask": torch.ones(len(sel), m - r, dtype=torch.long),
               "pixel_values": data.images[data.image_index[sel]]}
    return prefill, data.input_ids[sel, L - r:L - 1]


def _mfm_decode_cost(model, data, name: str, weight_bits: int | None = None) -> tuple[dict, int]:
    """The accelerator columns of one question answered by a greedy cached decode (module docstring), and its
    context length; a :class:`ann.cooptimize.TokenPrunedMFM` runs its pruned prefill, its MFM the steps."""
    from ann.cooptimize import TokenPrunedMFM
    from benchmarks.compare.decode import trace_hf_decode

    prefill, steps = _decode_batch(data)
    kw: dict = {}
    base = model
    if isinstance(model, TokenPrunedMFM):
        ids = prefill["input_ids"]
        with torch.no_grad():
            feats = model.get_image_features(prefill["pixel_values"]).pooler_output
            embeds = model.get_input_embeddings()(ids).masked_scatter((ids == model.config.image_token_id)[..., None], feats)
        base, kw = model.mfm, {"prefill_runner": model,
                               "cache_prefill": {"inputs_embeds": embeds, "attention_mask": prefill["attention_mask"]}}
    w = trace_hf_decode(base, prefill, steps, name=name, weight_bits=weight_bits or FP_ACCEL_BITS, **kw)
    return workload_cost(w), prefill["input_ids"].shape[1] + steps.shape[1]


def _kv_bytes(model, context: int, *, dropped: int = 0, from_layer: int = 0) -> float:
    """fp32 key/value cache of one inference over ``context`` tokens (module docstring); ``dropped`` tokens fewer
    from decoder layer ``from_layer`` on (FastV)."""
    cfg = model.config.text_config
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    tokens = sum(context - (dropped if i >= from_layer else 0) for i in range(cfg.num_hidden_layers))
    return 2.0 * cfg.num_key_value_heads * hd * tokens * KV_BITS / 8


def _accuracy(pred: list[str], data) -> float:
    return float(np.mean([p == a for p, a in zip(pred, data.answers)]))


def _mfm_row(ctx: Context, model, tok, row_id: str, variant: str, *, weights: float, params: int | None = None,
             q: int | None = None, weight_bits: int | None = None, notes: str = "", kv: dict | None = None) -> Measured:
    """A row of an ANN MFM (or a :class:`ann.cooptimize.TokenPrunedMFM`) answering the test questions greedily."""
    from ann.train.vqa import predict_answers

    data = _encoded(ctx, tok, model.num_visual_tokens, q)
    lat = _first_images(data, PROFILES[ctx.profile].latency_images)
    accel, context = _mfm_decode_cost(model, data, variant, weight_bits)
    return Measured(task="synthmed", track="ann", variant=variant, metric=METRIC,
                    quality=_accuracy(predict_answers(model, tok, data), data),
                    params=params or sum(p.numel() for p in model.parameters()),
                    memory=(weights, _kv_bytes(model, context, **(kv or {}))),
                    cpu_ms=cpu_ms_per_sample(lambda: predict_answers(model, tok, lat, images_per_batch=len(lat.images)),
                                             len(lat.answers), repeats=ctx.latency_repeats),
                    accel=accel, weight_bits=weight_bits,
                    notes="state: the fp32 key/value cache of one question's context; " + notes,
                    reproduce=_cmd(ctx, row_id))


def ann_fp32(ctx: Context) -> Measured:
    model, tok = _large(ctx)
    return _mfm_row(ctx, model, tok, "synthmed/ann-fp32", "MFM large fp32", weights=dense_weight_bytes(model),
                    notes="benchmarks.models' mfm-large for the profile")


def ann_small(ctx: Context) -> Measured:
    model, tok = _load(_mfm(ctx, "mfm-small")[0] / "model")
    return _mfm_row(ctx, model, tok, "synthmed/ann-small", "MFM small fp32", weights=dense_weight_bytes(model),
                    notes="benchmarks.models' mfm-small for the profile")


def _pruned(ctx: Context):
    """The large MFM with ``prune_ratio`` of its parameters removed and recovered (cached HF folder)."""
    from ann.checkpoint import save_pretrained_atomic
    from ann.train.vqa import encode_vqa
    from benchmarks.prune import prune_mfm

    s = PROFILES[ctx.profile]
    model, tok = _large(ctx)
    large = _mfm(ctx, "mfm-large")[0]

    def make(folder: Path) -> None:
        train = encode_vqa(_split(ctx, "train"), tok, model.num_visual_tokens)
        m, rec = prune_mfm(model, train, s.prune_ratio, calib_images=s.prune_calib_images, recover_steps=s.prune_steps,
                           lr=s.prune_lr, seed=ctx.seed, log=ctx.log)
        save_pretrained_atomic(m, folder / "model", tokenizer=tok)
        (folder / "prune.json").write_text(json.dumps(rec, default=str))

    config = {"base": large.name, "ratio": s.prune_ratio, "calib": s.prune_calib_images, "steps": s.prune_steps,
              "lr": s.prune_lr, "seed": ctx.seed}
    folder, _ = cached_dir(ctx, "synthmed-pruned", config, make, code=("ann/prune", "ann/train/vqa.py"))
    return ctx.once("synthmed/pruned", lambda: (*_load(folder / "model"), folder.name))


def _mixed(ctx: Context, name: str, model, tok, source: str):
    """``model`` (saved as ``source``) with weights at ``quant_bits`` average bits, hierarchy-aware mixed precision
    (cached as ``name``: quant.save_quantized); returns (quantized model, allocation info)."""
    from ann.train.vqa import encode_vqa
    from benchmarks.quant import allocate_mixed, mfm_sensitivity
    from quant.allocate import Budget
    from quant.model_io import load_quantized, quantize_model, save_quantized

    s = PROFILES[ctx.profile]

    def make(folder: Path) -> None:
        val = encode_vqa(_split(ctx, "val"), tok, model.num_visual_tokens)
        root, sens, validate = mfm_sensitivity(model, val, s.quant_calib_images)
        cfg, info = allocate_mixed(model, root, sens, validate, s.quant_choices, Budget(avg_bits=s.quant_bits), ctx.log,
                                   name=f"mixed {s.quant_bits:g}-bit ({source})", progress=ctx.progress)
        save_quantized(quantize_model(model, cfg, act_bits=None), cfg, folder / "model")
        (folder / "allocation.json").write_text(json.dumps(info, default=str))

    folder, _ = cached_dir(ctx, name, {"base": source, "bits": s.quant_bits, "choices": s.quant_choices,
                                                   "calib": s.quant_calib_images}, make, code=("quant",))
    return load_quantized(folder / "model", model=model), json.loads((folder / "allocation.json").read_text())


def _quant_row(ctx: Context, qm, tok, info: dict, row_id: str, variant: str, params: int, notes: str) -> Measured:
    from quant.model_io import model_memory

    w = model_memory(qm)["total"]
    bits = math.ceil(8 * w / params)
    return _mfm_row(ctx, qm, tok, row_id, variant, weights=w, params=params, weight_bits=bits,
                    notes=f"{notes}; weight-only, {info['average_bits']:.2f} average bits over the weight matrices "
                          f"(widths {info['widths']}, group-wise scales), activations fp32; the accelerator maps it at "
                          f"W{bits}, the mean stored width of all parameters rounded up; fake-quant on the CPU")


def ann_mixed(ctx: Context) -> Measured:
    model, tok = _large(ctx)
    qm, info = _mixed(ctx, "synthmed-mixed", model, tok, _mfm(ctx, "mfm-large")[0].name)
    params = sum(p.numel() for p in model.parameters())
    return _quant_row(ctx, qm, tok, info, "synthmed/ann-mixed", f"MFM large, mixed precision {info['average_bits']:.2g}-bit",
                      params, "benchmarks.quant's hierarchy-aware allocation")


def ann_pruned(ctx: Context) -> Measured:
    m, tok, _ = _pruned(ctx)
    params = sum(p.numel() for p in m.parameters())
    ratio = 1 - params / sum(p.numel() for p in _large(ctx)[0].parameters())
    return _mfm_row(ctx, m, tok, "synthmed/ann-pruned", f"MFM large, pruned -{ratio:.0%} + recovery",
                    weights=dense_weight_bytes(m), notes=f"benchmarks.prune's search (Wanda, KL) and "
                                                         f"{PROFILES[ctx.profile].prune_steps}-step distillation")


def ann_pruned_mixed(ctx: Context) -> Measured:
    m, tok, source = _pruned(ctx)
    qm, info = _mixed(ctx, "synthmed-pruned-mixed", m, tok, source)
    return _quant_row(ctx, qm, tok, info, "synthmed/ann-pruned-mixed",
                      f"MFM large, pruned + mixed precision {info['average_bits']:.2g}-bit",
                      sum(p.numel() for p in m.parameters()), "the pruned row's model, then the mixed row's allocation")


def ann_cascade(ctx: Context) -> Measured:
    """benchmarks.cascade's SynthMed cascade; the accelerator and CPU cost are its expected cost per question."""
    from ann.train.vqa import predict_answers
    from benchmarks.cascade import _synthmed

    (small_dir, small_m), (large_dir, large_m) = _mfm(ctx, "mfm-small-fine"), _mfm(ctx, "mfm-large")
    splits = ("n_val", "n_test", "seed", "noise_std", "texture_std", "image_size")
    small_data, large_data = ({k: m["data"][k] for k in splits} for m in (small_m, large_m))
    if small_data != large_data:
        raise ValueError(f"the cascade's tiers were evaluated on different splits ({small_data} vs {large_data}): give "
                         "Settings.small_fine_argv the large MFM's data arguments")
    if PROFILES[ctx.profile].test_images is not None:
        raise ValueError("the cascade answers the whole test split: set Settings.test_images to None")
    r = _synthmed(ctx.seed, ctx.cache_dir, ctx.log, small_dir, large_dir)
    c = r["cascades"][r["best"]]
    test = c["test"]
    escalated, runs_small = test["stops"][1], 2.0 if "consistency" in r["best"] else 1.0
    tiers, cost, cpu, weights, kv = {}, [], 0.0, 0.0, 0.0
    for name, w in (("small", runs_small), ("large", escalated)):
        model, tok = _load((small_dir if name == "small" else large_dir) / "model")
        data = _encoded(ctx, tok, model.num_visual_tokens)
        lat = _first_images(data, PROFILES[ctx.profile].latency_images)
        tier_cost, context = _mfm_decode_cost(model, data, f"mfm-{name}")
        cost.append((w, tier_cost))
        answer = lambda m=model, t=tok, b=lat: predict_answers(m, t, b, images_per_batch=len(b.images))  # noqa: E731
        cpu += w * cpu_ms_per_sample(answer, len(lat.answers), repeats=ctx.latency_repeats)
        tiers[name] = sum(p.numel() for p in model.parameters())
        weights += dense_weight_bytes(model)
        kv = max(kv, _kv_bytes(model, context))
    test_kind = r["best"].split("/")[1].split(" ")[0]  # "mfm-small/<self-test> -> mfm-large"
    return Measured(task="synthmed", track="ann", variant=f"cascade small-fine -> large ({test_kind})", metric=METRIC,
                    quality=test["quality"], params=tiers["small"] + tiers["large"], memory=(weights, kv),
                    cpu_ms=cpu, accel=mix_accel(cost),
                    notes=f"benchmarks.cascade's SynthMed cascade, thresholds chosen on validation (1 point budget); "
                          f"{escalated:.1%} of test questions escalated to the large MFM; accelerator and CPU: "
                          f"{runs_small:g} x the small tier ("
                          + ("its answer, and again on a perturbed image: the consistency self-test" if runs_small == 2 else
                             "its answer; the confidence self-test comes with it")
                          + f") + {escalated:.3f} x the large, each measured like the other rows; weights of both tiers, the "
                          f"larger key/value cache; the small tier "
                          f"is small-fine ({' '.join(PROFILES[ctx.profile].small_fine_argv)})",
                    reproduce=_cmd(ctx, "synthmed/ann-cascade"))


def ann_cooptimized(ctx: Context) -> Measured:
    """benchmarks.cooptimize's search on the large MFM (its profile's space), the most accurate configuration on
    validation within half the default configuration's accelerator latency (its default budget)."""
    from ann.cooptimize import Budget, Geometry, InputConfig, TokenPrunedMFM, choose
    from ann.train.vqa import encode_vqa
    from benchmarks.cooptimize import _adapted, search
    from tasks.synthmed import SynthMedConfig, load_synthmed

    prof = PROFILES[ctx.profile].cooptimize
    base, tok = _large(ctx)
    base_dir = _mfm(ctx, "mfm-large")[0] / "model"
    splits = {s: load_synthmed(s, SynthMedConfig(n_train=prof["n_train"], n_val=prof["n_val"], n_test=prof["n_test"]))
              for s in ("train", "val")}

    def make(folder: Path) -> None:
        found = search(base, base_dir, tok, splits, prof, steps=prof["steps"], seed=ctx.seed, cache_dir=ctx.cache_dir,
                       log=ctx.log, progress=ctx.progress)
        budget = Budget({"accel_latency_us": 0.5 * found.default["accel_latency_us"]})
        chosen = choose(found.rows, budget, accuracy="val_accuracy")
        record = {"chosen": chosen, "default": found.default, "points": len(found.rows)}
        (folder / "chosen.json").write_text(json.dumps(record))

    folder, _ = cached_dir(ctx, "synthmed-cooptimize", {"base": base_dir.parent.name, "space": prof, "seed": ctx.seed},
                           make, code=("ann/cooptimize",))
    rec = json.loads((folder / "chosen.json").read_text())
    c = rec["chosen"]
    cfg = InputConfig(Geometry(c["image_size"], c["patch_size"], c["merge_factor"]), vit_keep=c["vit_keep"],
                      vit_layer=c["vit_layer"], llm_keep=c["llm_keep"], llm_layer=c["llm_layer"],
                      question_tokens=c["question_tokens"])
    model, _ = _adapted(base, base_dir, cfg.geometry, cfg.vit_keep, cfg.vit_layer,  # cached by the search
                        lambda V: encode_vqa(splits["train"], tok, V), prof["steps"], ctx.seed, ctx.cache_dir, ctx.log,
                        ctx.progress)
    runner = TokenPrunedMFM(model, vit_keep=cfg.vit_keep, vit_layer=cfg.vit_layer, llm_keep=cfg.llm_keep,
                            llm_layer=cfg.llm_layer)
    V = cfg.geometry.visual_tokens
    kv = {"dropped": V - math.ceil(cfg.llm_keep * V), "from_layer": cfg.llm_layer} if cfg.llm_keep < 1 else None
    return _mfm_row(ctx, runner, tok, "synthmed/ann-cooptimized", f"MFM large, co-optimized inputs [{cfg.label}]",
                    weights=dense_weight_bytes(model), q=cfg.question_tokens, kv=kv,
                    notes=f"benchmarks.cooptimize's search ({rec['points']} points, {prof['steps']} fine-tune steps per "
                          f"geometry), chosen on validation within half the default's accelerator latency "
                          f"({rec['default']['accel_latency_us']:.3g} us at INT8 there)")


# ------------------------------------------------------------------------------------------------ ViT and its conversion
def _vit(ctx: Context):
    """benchmarks.conversion's SynthMed ViT (QCFS), trained or read from the cache, and the test questions packed."""
    from benchmarks.conversion import synthmed_vit, synthmed_xy

    def make():
        vit, info, _, xy = synthmed_vit(PROFILES[ctx.profile].conversion, ctx.seed, ctx.cache_dir, ctx.log,
                                        quiet=not ctx.progress)
        if not info["cached"]:
            ctx.trained.append("synthmed-vit-qcfs")
        n = PROFILES[ctx.profile].test_images
        x, y = synthmed_xy(_split(ctx, "test"))
        k = len(y) if n is None else 3 * n
        calib = xy["train"][0][torch.randperm(len(xy["train"][0]), generator=torch.Generator().manual_seed(ctx.seed))[:1024]]
        return vit, x[:k], y[:k], calib

    return ctx.once("synthmed/vit", make)


def ann_vit(ctx: Context) -> Measured:
    vit, x, y, _ = _vit(ctx)
    n = 3 * PROFILES[ctx.profile].latency_images
    with torch.no_grad():
        quality = float((torch.cat([vit(x[i:i + 256]) for i in range(0, len(x), 256)]).argmax(-1) == y).float().mean())
    return Measured(task="synthmed", track="ann", variant="spike-friendly ViT classifier (QCFS) fp32", metric=METRIC,
                    quality=quality, params=sum(p.numel() for p in vit.parameters()), memory=(dense_weight_bytes(vit), 0.0),
                    cpu_ms=cpu_ms_per_sample(lambda: vit(x[:n]), n, repeats=ctx.latency_repeats), model=vit,
                    example=x[:ACCEL_SAMPLES], reproduce=_cmd(ctx, "synthmed/ann-vit"),
                    notes="benchmarks.conversion's SynthMed ViT (the converted rows' ANN): classifies the answer from "
                          "image + question, trained on its own SynthMed splits")


def snn_converted(ctx: Context) -> list[Measured]:
    from conversion.transformer import TransformerConversionConfig, convert_transformer
    from snn.runtime import running_mean

    vit, x, y, calib = _vit(ctx)
    ts = PROFILES[ctx.profile].timesteps
    snn = convert_transformer(vit, calib, timesteps=max(ts), config=TransformerConversionConfig())
    with torch.no_grad():  # the read-out after every step: one run gives every T
        prefix = torch.cat([running_mean(snn.run(x[i:i + 64])) for i in range(0, len(x), 64)], dim=1)  # (T, B, C)
    n, params = 3 * PROFILES[ctx.profile].latency_images, sum(p.numel() for p in vit.parameters())
    out = []
    for T in ts:
        m = copy.copy(snn)  # one object per T, sharing the layers
        m.timesteps = T
        out.append(Measured(task="synthmed", track="snn", variant=f"ViT converted, multi-level IF T={T}", metric=METRIC,
                            quality=float((prefix[T - 1].argmax(-1) == y).float().mean()), params=params,
                            memory=(4.0 * params, None), state_bits=32,
                            cpu_ms=cpu_ms_per_sample(lambda m=m: m(x[:n]), n, repeats=ctx.latency_repeats),
                            model=m, example=x[:ACCEL_SAMPLES], timesteps=T,
                            loihi={"reason": NO_LAVA + "this network has residual branches, signed multi-level neurons "
                                             "and dense expectation-compensated LayerNorm and attention"},
                            notes="conversion.convert_transformer (8-level signed neurons, expectation compensation for "
                                  "LayerNorm and attention, which run densely every step); fp32 weights and membranes",
                            reproduce=_cmd(ctx, "synthmed/snn-converted")))
    return out


# ------------------------------------------------------------------------------------------------ spiking MFM
def _spiking(ctx: Context):
    """The spiking MFM distilled from the large MFM with the small MFM's budget (benchmarks.snn's recipe; cached)."""
    from benchmarks.snn import spiking_mfm_argv, teacher_logits_file, train_spiking_mfm
    from snn.checkpoint import load_model

    small = _mfm(ctx, "mfm-small")[1]
    large = _mfm(ctx, "mfm-large")[0]
    argv = spiking_mfm_argv(small, ctx.seed)

    def make(folder: Path) -> None:
        ctx.log(f"synthmed: training the spiking MFM ({small['loop']['steps']} steps, distilled from the large MFM)")
        teacher = teacher_logits_file(large / "model", small, folder / "teacher_logits.safetensors")
        train_spiking_mfm([*argv, "--teacher-logits", str(teacher)], folder / "run")
        shutil.rmtree(folder / "run" / "checkpoint", ignore_errors=True)  # resume state: not needed once trained
        (folder / "teacher_logits.safetensors").unlink()

    folder, _ = cached_dir(ctx, "synthmed-spiking-mfm", {"argv": argv, "teacher": large.name}, make,
                           code=("snn/models", "snn/neurons.py", "snn/train.py", "snn/vqa.py"))
    return ctx.once("synthmed/spiking", lambda: (load_model(folder / "run" / "model").eval(), folder.name))


def _spiking_data(ctx: Context, which: str, images: int | None):
    from snn.vqa import encode_spiking_vqa

    return ctx.once(f"synthmed/spiking/{which}/{images}",
                    lambda: _first_images(encode_spiking_vqa(_split(ctx, which)), images))


def _spiking_decode_batch(data, n: int = ACCEL_SAMPLES) -> tuple[dict, int]:
    """``n`` test samples of the most common (prompt, answer) lengths, each with its image, words up to the last
    answer word (no ``<eos>``): the inputs of one cached decode, and its prompt length (the prefill)."""
    length = data.prompt_len + (data.target_ids != -100).sum(1) - 1
    P, common = Counter(zip(data.prompt_len.tolist(), length.tolist())).most_common(1)[0][0]
    sel = torch.nonzero((data.prompt_len == P) & (length == common)).flatten()[:n]
    return {"images": data.images[data.image_index[sel]], "image_index": torch.arange(len(sel)),
            "tokens": data.tokens[sel, :common]}, P


def _prefill(ctx: Context) -> dict:
    """One test question's prefill (image + prompt): the largest call of a decode, whose membranes the state
    column counts."""
    ex, P = _spiking_decode_batch(_spiking_data(ctx, "test", None), 1)
    return {**ex, "tokens": ex["tokens"][:, :P]}


def _spiking_row(ctx: Context, model, row_id: str, variant: str, weights: float, membranes: float, *,
                 weight_bits=None, state_bits=16, notes: str = "") -> Measured:
    """A row of a spiking MFM: CPU answers re-run the prefix (as the ANN rows' do); the accelerator runs the
    greedy decode with the spike cache (:func:`benchmarks.compare.decode.trace_spiking_decode`); state: the spike
    cache at the end (1 bit per spike) + ``membranes`` (the prefill's, at their widths)."""
    from benchmarks.compare.decode import trace_spiking_decode
    from snn.vqa import predict_answers

    s = PROFILES[ctx.profile]
    data = _spiking_data(ctx, "test", s.test_images)
    lat = _first_images(data, s.latency_images)
    ex, P = _spiking_decode_batch(data)
    w, cache = trace_spiking_decode(model, ex["tokens"], P, name=variant, weight_bits=weight_bits or FP_ACCEL_BITS,
                                    act_bits=FP_ACCEL_BITS, state_bits=min(state_bits, FP_ACCEL_BITS),
                                    visual=lambda: model.visual_tokens(ex["images"])[:, ex["image_index"]])
    spikes = cache.spike_count() / len(ex["tokens"]) / 8
    return Measured(task="synthmed", track="snn", variant=variant, metric=METRIC,
                    quality=_accuracy(predict_answers(model, data), data), params=sum(p.numel() for p in model.parameters()),
                    memory=(weights, spikes + membranes),
                    cpu_ms=cpu_ms_per_sample(lambda: predict_answers(model, lat, images_per_batch=len(lat.images)),
                                             len(lat.answers), repeats=ctx.latency_repeats),
                    accel=workload_cost(w), timesteps=model.config.timesteps, weight_bits=weight_bits,
                    state_bits=state_bits, reproduce=_cmd(ctx, row_id),
                    notes=f"{notes}; accelerator: a cached decode (prefill of the image and {P} prompt words, then one "
                          f"step per answer word); state: the spike cache of {cache.length} positions "
                          f"({spikes / 1e3:.1f} kB at 1 bit) + the prefill's membranes ({membranes / 1e3:.1f} kB)",
                    loihi={"reason": NO_LAVA + "this model has residual branches, spike-driven attention (a product of "
                                     "two spike tensors), a word embedding and autoregressive decoding"})


def snn_trained(ctx: Context) -> Measured:
    from snn.quant import spiking_memory

    model, _ = _spiking(ctx)
    mem = spiking_memory(model, _prefill(ctx))
    return _spiking_row(ctx, model, "synthmed/snn-trained", "spiking MFM (distilled)", mem.weight_bytes, mem.state_bytes,
                        notes="benchmarks.snn's spiking_distilled recipe (the small MFM's steps and data, distilled from "
                              "the large MFM); fp32 weights (BatchNorm statistics included) and membranes as stored; "
                              "the accelerator maps it at 16 bits")


def snn_quantized(ctx: Context) -> Measured:
    """snn.quant's tiered search on the spiking MFM (at most 2 points of validation accuracy lost, at most 30 % of
    its fp32 memory), scored on ``snnq_val_images`` validation images; the precision is cached."""
    from snn.quant import Constraints, SpikingPrecision, SpikingQuantizer, neuron_sizes, spiking_memory, tiered_search
    from snn.vqa import predict_answers

    s = PROFILES[ctx.profile]
    model, source = _spiking(ctx)
    val = _spiking_data(ctx, "val", s.snnq_val_images)
    n = min(64, len(val.answers))
    q = SpikingQuantizer(model, {"images": val.images[val.image_index[:n]], "image_index": torch.arange(n),
                                 "tokens": val.tokens[:n]})
    constraints = Constraints(max_drop=0.02, max_memory_fraction=0.3)

    def make(folder: Path) -> None:
        res = tiered_search(q, lambda m: _accuracy(predict_answers(m, val), val), constraints, progress=ctx.progress)
        (folder / "precision.json").write_text(json.dumps({"precision": res.best.precision.to_dict(),
                                                           "evaluations": res.evaluations, "val": res.best.score,
                                                           "val_ref": res.score_ref}))

    folder, _ = cached_dir(ctx, "synthmed-spiking-quant", {"model": source, "val": s.snnq_val_images,
                                                           "constraints": dataclasses.asdict(constraints)}, make,
                           code=("snn/quant",))
    rec = json.loads((folder / "precision.json").read_text())
    p = SpikingPrecision.from_dict(rec["precision"])
    qm = q.build(p)
    one = _prefill(ctx)  # memory on the trained row's prefill
    mem = spiking_memory(qm, one, weight_bits=p.weights, per_tensor=p.per_tensor)
    bits = math.ceil(8 * mem.weight_bytes / sum(t.numel() for t in qm.parameters()))
    sbits = math.ceil(8 * mem.state_bytes / max(1, sum(neuron_sizes(qm, one).values())))
    return _spiking_row(ctx, qm, "synthmed/snn-quant", "spiking MFM, tiered quantization",
                        mem.weight_bytes, mem.state_bytes, weight_bits=bits, state_bits=sbits,
                        notes=f"snn.quant tiered search ({rec['evaluations']} evaluations on {s.snnq_val_images} validation "
                              f"images: {rec['val']:.3f} vs {rec['val_ref']:.3f} fp32), BatchNorm folded; per-layer "
                              f"weight and membrane widths; the accelerator maps it at W{bits} with {sbits}-bit "
                              f"membranes (the mean stored widths, rounded up)")


ROWS = [
    RowSpec("synthmed/ann-fp32", "synthmed", "ann", ann_fp32, "the large LLaVA-style MFM, fp32"),
    RowSpec("synthmed/ann-small", "synthmed", "ann", ann_small, "the small MFM, fp32"),
    RowSpec("synthmed/ann-mixed", "synthmed", "ann", ann_mixed, "the large MFM, hierarchy-aware mixed precision"),
    RowSpec("synthmed/ann-pruned", "synthmed", "ann", ann_pruned, "the large MFM, structurally pruned and recovered"),
    RowSpec("synthmed/ann-pruned-mixed", "synthmed", "ann", ann_pruned_mixed, "the pruned MFM, then mixed precision"),
    RowSpec("synthmed/ann-cascade", "synthmed", "ann", ann_cascade, "small-to-large cascade with self-tests"),
    RowSpec("synthmed/ann-cooptimized", "synthmed", "ann", ann_cooptimized, "the large MFM with co-optimized inputs"),
    RowSpec("synthmed/ann-vit", "synthmed", "ann", ann_vit, "the spike-friendly ViT classifier (QCFS) to convert"),
    RowSpec("synthmed/snn-converted", "synthmed", "snn", snn_converted, "that ViT converted to IF neurons, one row per T"),
    RowSpec("synthmed/snn-trained", "synthmed", "snn", snn_trained, "the spiking MFM, distilled from the large MFM"),
    RowSpec("synthmed/snn-quant", "synthmed", "snn", snn_quantized, "the spiking MFM after snn.quant's tiered search"),
]
