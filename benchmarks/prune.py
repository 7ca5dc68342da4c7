"""Structural pruning with recovery, on the MFM (SynthMed-VQA accuracy) and on SmolLM2-135M (held-out perplexity),
with measured CPU latency, and pruning followed by quantization.

In one run, for each model and each parameter ratio of the profile (SmolLM2: twice, see "vocabulary" below):

1. ``ann.prune.plan.prune``: the greedy search over towers (the MFM's vision and text towers; SmolLM2's decoder)
   and structure kinds (blocks, attention groups, MLP channels), Wanda importance, distance = KL of the outputs
   to the unpruned model on calibration data (SmolLM2: blocks of the stdlib corpus' train split; the MFM: the
   answer-slot logits of training images). SmolLM2's search is FLOP-aware (``speedup=`` with a time model
   proportional to FLOPs, :mod:`ann.prune.latency`): it cuts until 30 % of the parameters are gone *and* the
   calibration forward needs ``LM_SEARCH_FLOPS`` times fewer FLOPs than the unpruned model's (why FLOPs and not a
   fitted time model: at ``LM_SEARCH_FLOPS``);
2. recovery (``ann.prune.recover``, all weights, AdamW), on the same training data, never on the test data: the MFM
   distils from the unpruned model; SmolLM2 distils *and* takes the next-token loss on the stdlib train split
   (bf16 autocast), i.e. recovery is also domain fine-tuning. Since that alone improves a model on the domain, the
   unpruned SmolLM2 is fine-tuned the same way (same loss, steps, data) as a reference (``unpruned_finetuned``):
   the target compares with the unpruned model as the issue says; the JSON also gives the increase over the
   fine-tuned reference (``smollm2_increase_pct_vs_unpruned_finetuned_the_same_way``);
3. the metric before and after recovery (SmolLM2: bits per byte and perplexity of ``ann.train.code.EvalProtocol``'s
   held-out files; the MFM: exact-match accuracy on a 4000-image SynthMed test split, 12000 questions) and latency,
   measured on the same machine in the same run, models timed in turn (interleaved, median of the rounds) since
   this box's speed drifts by tens of percent over seconds:
   SmolLM2: a forward pass over one 256-token prompt with all its logits (prefill, the target's latency), the same
   with the last position's logits only (first token, as ``generate`` computes it), and one greedy decoding step;
   the MFM: answering a batch of 32 images (96 questions, greedy, as ``ann.train.vqa.predict_answers`` does);
4. prune-then-quantize (:mod:`quant`): the recovered SmolLM2 in int8 weight-only execution (``quant.int8``,
   W8A16, fused), its bits per byte and decoding speed next to the fp32 and the unpruned int8 model.

Vocabulary (SmolLM2 only): 21 % of SmolLM2's parameters are its tied 49152-token embedding, which blocks, heads and
MLP channels do not touch. The full profile runs each ratio twice, ``full`` (blocks/heads/MLP only) and ``domain``
(the quick profile only ``domain``: ``full`` missed the perplexity target by far in every run, +13 % at 30 %, +46 %
at 35 % and +35 % at 39 % removed, sessions 10-12); ``domain``: the
vocabulary first trimmed to the tokens of the stdlib training split, closed under BPE merges (``ann.prune.vocab``;
held-out text with other tokens is split into kept pieces, never lost), then the search removes the rest of the
ratio (of the original count); the teacher is the unpruned model with the same trimmed vocabulary (its logits on
kept tokens are the original ones). Perplexity is per token of the *original* tokenization for every variant
(``exp(total NLL / original token count)``), so that the variants compare on the same text; bits per byte as well.
``vocab_trimmed`` (trimming alone) is reported too.

Targets (issue [P]): at 30 % fewer parameters, latency at least 1.3x lower and, after recovery, MFM accuracy within
2 points / SmolLM2 perplexity within 10 % of the unpruned model. SmolLM2's FLOP-aware search removes at least
30 %, more where its FLOP target needs it; each SmolLM2 target names the fraction actually removed. Writes
``prune.json``, ``prune.md`` and ``prune.png`` (fraction removed vs metric, and latency speedup).

Cost on the 2-core CPU box: quick ~50 min for SmolLM2 (two 200-step recoveries, 4-8 s per step) + ~5 min for
the MFM (once its checkpoint is cached); full about 12 h (nine 600-step SmolLM2 recoveries; ``--only`` runs one model).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ann.prune.latency import interleaved_seconds
from benchmarks.common import Target, add_cache_dir_arg, add_common_args, format_table, format_targets, machine_info, save_figure, versions, write_results
from tasks.io import read_json


@dataclass(frozen=True)
class Profile:
    ratios: tuple[float, ...]
    lm_eval_bytes: int
    lm_calib_blocks: int  # 256-token blocks in the search's calibration batch
    lm_recover_steps: int  # recovery steps (distillation + next-token loss), 4 blocks of 256 tokens each
    lm_vocabs: tuple[str, ...]  # "full": prune blocks/heads/MLP only; "domain": trim the vocabulary first
    lm_lr: float
    lm_rounds: int  # interleaved latency rounds
    mfm_size: str
    mfm_calib_images: int
    mfm_recover_steps: int  # distillation steps, 32 images (96 questions) each
    mfm_lr: float
    mfm_test_images: int
    mfm_rounds: int


PROFILES = {
    "quick": Profile(ratios=(0.3,), lm_eval_bytes=16_000, lm_calib_blocks=4, lm_recover_steps=200, lm_vocabs=("domain",), lm_lr=6e-4,
                     lm_rounds=25, mfm_size="large", mfm_calib_images=64, mfm_recover_steps=300, mfm_lr=3e-4,
                     mfm_test_images=4000, mfm_rounds=15),
    "full": Profile(ratios=(0.1, 0.2, 0.3, 0.4), lm_eval_bytes=100_000, lm_calib_blocks=8, lm_recover_steps=600, lm_vocabs=("full", "domain"),
                    lm_lr=6e-4, lm_rounds=25, mfm_size="large", mfm_calib_images=128, mfm_recover_steps=1000,
                    mfm_lr=3e-4, mfm_test_images=4000, mfm_rounds=25),
}
TARGET_RATIO = 0.3
VOCAB_MIN_COUNTS = (1, 2, 3, 5, 10)  # candidate occurrence thresholds of the domain vocabulary
VOCAB_TOLERANCE = 0.005  # relative increase of validation bits per byte the trimming may cost
# SmolLM2's search cuts until the calibration forward needs this many times fewer FLOPs than the unpruned model's.
# Measured on the 2-core box: prefill speed-up / FLOP reduction = 0.84-0.97 over eight shapes and four benchmark runs
# (sessions 10-12; 1.54x fewer FLOPs timed 1.29x in one run, and 1.38-1.60x in six repeated 15-round timings of the
# same shape right after it), so 1.6x leaves room for this box's drift. A time model fitted on this box
# (ann.prune.latency.fit_latency) is the better idea but was too noisy to aim with (its constant term came out
# between -0.17 and 0.69 s of a 2.2 s forward in eight fits, which moved the same search's cut between 30 % and
# 39 %); FLOPs make the cut deterministic.
LM_SEARCH_FLOPS = 1.6


def _count(model) -> int:
    from ann.prune.plan import count_params

    return count_params(model)


# --------------------------------------------------------------------------------------------------- SmolLM2
def _key(ratio: float, vocab: str) -> str:
    return f"pruned_{ratio}" if vocab == "full" else f"vocab_pruned_{ratio}"


def _lm_logits(m, batch):
    return m(input_ids=batch["input_ids"]).logits


def lm_recovery_loss(teacher):
    """Recovery's loss for a causal LM (:mod:`ann.prune.recover`): distillation from ``teacher`` + next-token
    cross-entropy (domain fine-tuning), bf16 autocast."""
    from ann.prune.recover import kd_loss, next_token_loss

    return kd_loss(teacher, _lm_logits, bf16=True, task_loss=next_token_loss)


def lm_calibration_order(stream: torch.Tensor, blocks: int, seed: int) -> torch.Tensor:
    """Indices of the ``blocks`` 256-token blocks of ``stream`` (a tokenized training split) that calibrate the
    search (the same blocks, re-tokenized, for a trimmed vocabulary)."""
    from ann.train.code import make_blocks

    g = torch.Generator().manual_seed(seed)
    return torch.randperm(len(make_blocks(stream, 256)), generator=g)[:blocks]


def lm_calibration_flops(model, stream: torch.Tensor, order: torch.Tensor) -> int:
    """FLOPs of ``model``'s forward over the calibration blocks ``order`` of ``stream`` (the searches' time model)."""
    from ann.prune.latency import forward_flops
    from ann.train.code import make_blocks

    calib = make_blocks(stream, 256)[order].long()
    return forward_flops(model, lambda m: _lm_logits(m, {"input_ids": calib}))[0]


def domain_vocabulary(model, tok, stream: torch.Tensor, *, eval_bytes: int, log) -> dict:
    """The domain vocabulary (:mod:`ann.prune.vocab`): tokens seen >= min_count times in the training ``stream``
    (tokenized by ``tok``), closed under BPE merges; min_count = the largest of :data:`VOCAB_MIN_COUNTS` whose
    validation bits per byte (``eval_bytes`` of the val split, never the test files) stay within
    :data:`VOCAB_TOLERANCE` of the untrimmed model's. Returns the trimmed copy of ``model`` (``model``), its
    ``tokenizer``, the training ``stream`` in its tokens, the kept ids (``keep``), ``min_count``, the validation
    figures and the ``seconds`` it took."""
    from ann.prune.vocab import remap_ids, trim_vocabulary
    from ann.train.code import EvalProtocol, stdlib_token_stream

    t0 = time.perf_counter()
    val = EvalProtocol(eval_bytes=eval_bytes, split="val")
    with torch.no_grad():
        val_ref = val.evaluate(model, tok, progress=False)["bits_per_byte"]
        val_bpb = {}
        for mc in VOCAB_MIN_COUNTS:
            cand = copy.deepcopy(model)
            cand_tok, keep = trim_vocabulary(cand, tok, stream, min_count=mc)
            val_bpb[mc] = val.evaluate(cand, cand_tok, progress=False)["bits_per_byte"]
            log(f"smollm2 vocabulary min_count={mc}: {len(keep)} tokens, val bits/byte {val_bpb[mc]:.4f} "
                f"(untrimmed {val_ref:.4f})")
            del cand
    min_count = max([mc for mc, b in val_bpb.items() if b <= val_ref * (1 + VOCAB_TOLERANCE)], default=1)
    trimmed = copy.deepcopy(model)
    trimmed_tok, keep = trim_vocabulary(trimmed, tok, stream, min_count=min_count)
    trim_s = time.perf_counter() - t0
    # min_count 1 keeps every token of the training text, which then tokenizes to the same tokens (renumbered);
    # a higher count drops some, and the text is tokenized anew into kept pieces
    dstream = remap_ids(stream, keep, len(tok)) if min_count == 1 else stdlib_token_stream("train", trimmed_tok, progress=False)
    return {"model": trimmed, "tokenizer": trimmed_tok, "stream": dstream, "keep": keep, "min_count": min_count,
            "val_bits_per_byte": val_bpb, "val_bits_per_byte_untrimmed": val_ref, "seconds": trim_s}


def prune_lm(teacher, stream: torch.Tensor, order: torch.Tensor, ratio: float, *, params_unpruned: int,
             flops_unpruned: int, recover_steps: int, lr: float, seed: int, log, key: str, after_prune=None):
    """A copy of the causal LM ``teacher`` (SmolLM2, or its vocabulary-trimmed copy) pruned until ``ratio`` of
    ``params_unpruned`` is gone *and* its calibration forward needs :data:`LM_SEARCH_FLOPS` times fewer FLOPs than
    ``flops_unpruned`` (the unpruned model's, :func:`lm_calibration_flops`), then recovered: ``(model, record)``,
    or None when ``teacher`` alone is already below ``(1 - ratio) * params_unpruned``.

    The search: :func:`ann.prune.plan.prune` (Wanda importance; distance: KL of the logits on the calibration
    blocks ``order`` of ``stream``, the training split in ``teacher``'s tokens); recovery: ``recover_steps`` steps of
    :func:`lm_recovery_loss` from ``teacher`` on 4 training blocks of 256 tokens each. ``after_prune(m)``: measured
    between the two (the record's ``after_prune``; None when not given)."""
    from ann.prune.latency import LatencyModel, forward_flops
    from ann.prune.plan import prune
    from ann.prune.recover import recover
    from ann.train.code import block_batch_fn, make_blocks

    train = make_blocks(stream, 256)
    calib = train[order].long()
    search_ratio = 1 - (1 - ratio) * params_unpruned / _count(teacher)  # what is left to remove after the vocabulary
    if search_ratio < 0:
        return None
    m = copy.deepcopy(teacher)
    t0 = time.perf_counter()

    def run(x):
        return _lm_logits(x, {"input_ids": calib})

    # the searches' time model: FLOPs (LM_SEARCH_FLOPS says why)
    lat = LatencyModel(1.0, 0.0, 0.0, {"model": "FLOPs of the calibration forward (benchmarks.prune.LM_SEARCH_FLOPS)"})
    # the search's target counts from the unpruned model: a trimmed vocabulary has done part of it already
    speedup = max(1.0, LM_SEARCH_FLOPS * forward_flops(teacher, run)[0] / flops_unpruned)
    log(f"smollm2 {key}: FLOP reduction still to find {speedup:.3f}x")
    with torch.no_grad():
        info = prune(m, search_ratio, run=run, criterion="wanda", speedup=speedup, latency=lat,
                     progress=lambda s: log(f"smollm2 {key} {s}"))
    search_s = time.perf_counter() - t0
    before = after_prune(m) if after_prune is not None else None
    t0 = time.perf_counter()
    m, losses = recover(m, block_batch_fn(train, batch_size=4, seed=seed), lm_recovery_loss(teacher),
                        steps=recover_steps, lr=lr, seed=seed, desc=f"smollm2-{key}")
    return m, {"search": info, "search_seconds": search_s, "after_prune": before,
               "recovery_seconds": time.perf_counter() - t0, "losses": losses}


def _smollm2(profile: Profile, seed: int, log) -> dict:
    from ann.models.smollm2 import load_smollm2
    from ann.prune.recover import recover
    from ann.train.code import EvalProtocol, block_batch_fn, make_blocks, stdlib_token_stream
    from benchmarks.quant import _decode_seconds
    from quant.int8 import shared_input_groups, to_int8

    model, tok = load_smollm2()
    model.eval()
    protocol = EvalProtocol(eval_bytes=profile.lm_eval_bytes)
    stream = stdlib_token_stream("train", tok, progress=False)
    n_ref: dict[str, int] = {}  # scored tokens of the held-out files in the original tokenization

    def metric(m, tokenizer) -> dict:
        """Bits per byte, and perplexity per token of the *original* tokenization (a trimmed tokenizer splits
        out-of-vocabulary words into more tokens; the total NLL is what compares)."""
        with torch.no_grad():
            r = protocol.evaluate(m, tokenizer, progress=False)
        if tokenizer is tok:
            n_ref.setdefault("tokens", r["n_tokens"])
        return {"bits_per_byte": r["bits_per_byte"], "perplexity": math.exp(r["total_nats"] / n_ref["tokens"]),
                "n_tokens": r["n_tokens"]}

    dom = domain_vocabulary(model, tok, stream, eval_bytes=profile.lm_eval_bytes, log=log)
    trimmed, trimmed_tok, keep, min_count = dom["model"], dom["tokenizer"], dom["keep"], dom["min_count"]
    val_bpb, val_ref, trim_s = dom["val_bits_per_byte"], dom["val_bits_per_byte_untrimmed"], dom["seconds"]
    vocab = {"full": (model, tok, stream), "domain": (trimmed, trimmed_tok, dom["stream"])}
    order = lm_calibration_order(stream, profile.lm_calib_blocks, seed)
    f_full = lm_calibration_flops(model, stream, order)

    res: dict = {"unpruned": {"params": _count(model), **metric(model, tok)}}
    log(f"smollm2 unpruned: {res['unpruned']}")
    p0 = res["unpruned"]["params"]
    res["vocab_trimmed"] = {"params": _count(trimmed), "ratio": 1 - _count(trimmed) / p0,
                            "vocab": len(keep), "min_count": min_count, "val_bits_per_byte": val_bpb,
                            "val_bits_per_byte_untrimmed": val_ref, "seconds": trim_s, **metric(trimmed, trimmed_tok)}
    log(f"smollm2 vocabulary {len(tok)} -> {len(keep)}: {res['vocab_trimmed']}")
    variants: dict = {"unpruned": model, "vocab_trimmed": trimmed}

    def recovery_info(seconds: float, losses, teacher: str) -> dict:
        return {"steps": profile.lm_recover_steps, "lr": profile.lm_lr, "tokens": profile.lm_recover_steps * 4 * 256,
                "loss": "KL(teacher || student) + next-token cross-entropy, stdlib train split",
                "precision": "bf16 autocast, float32 weights", "seconds": seconds, "teacher": teacher,
                "loss_first": losses[0][1], "loss_last": losses[-1][1]}

    # the reference for what recovery's domain fine-tuning alone buys: the unpruned model, recovered the same way
    t0 = time.perf_counter()
    tuned, losses = recover(copy.deepcopy(model), block_batch_fn(make_blocks(stream, 256), batch_size=4, seed=seed),
                            lm_recovery_loss(model), steps=profile.lm_recover_steps, lr=profile.lm_lr, seed=seed,
                            desc="smollm2-unpruned")
    res["unpruned_finetuned"] = {"params": res["unpruned"]["params"], **metric(tuned, tok),
                                 "recovery": recovery_info(time.perf_counter() - t0, losses, "unpruned")}
    del tuned
    log(f"smollm2 unpruned, fine-tuned like the pruned models: {res['unpruned_finetuned']}")
    tokenizers = {"unpruned": tok, "vocab_trimmed": trimmed_tok}
    for ratio in profile.ratios:
        for v in profile.lm_vocabs:
            teacher, vtok, vstream = vocab[v]
            key = _key(ratio, v)

            def after_prune(m, vtok=vtok, key=key):
                pruned = metric(m, vtok)
                log(f"smollm2 {key} pruned: {pruned}")
                return pruned

            got = prune_lm(teacher, vstream, order, ratio, params_unpruned=p0, flops_unpruned=f_full,
                           recover_steps=profile.lm_recover_steps, lr=profile.lm_lr, seed=seed, log=log, key=key,
                           after_prune=after_prune)
            if got is None:
                log(f"smollm2 {v} vocabulary alone removes more than {ratio:.0%}; skipped")
                continue
            m, r = got
            recover_s = r["recovery_seconds"]
            recovered = metric(m, vtok)
            log(f"smollm2 {key} recovered ({recover_s:.0f} s): {recovered}")
            res[key] = {"ratio": 1 - _count(m) / p0, "params": _count(m), "vocabulary": v, "search": r["search"],
                        "search_seconds": r["search_seconds"], "pruned": r["after_prune"], **recovered,
                        "recovery": recovery_info(recover_s, r["losses"], "unpruned" if v == "full" else
                                                  "unpruned, vocabulary trimmed (the same logits on kept tokens)")}
            variants[key], tokenizers[key] = m, vtok

    # prune-then-quantize: int8 weight-only (W8A16, fused) of the unpruned and of the pruned models at the target ratio
    prompt = {v: make_blocks(vocab[v][2], 256)[-1:].long() for v in vocab}  # (1, 256): the same text for every model
    prompts = {k: prompt["full" if t is tok else "domain"] for k, t in tokenizers.items()}
    for name in [k for k in ("unpruned", *(_key(TARGET_RATIO, v) for v in profile.lm_vocabs)) if k in variants]:
        m = variants[name]
        qm = to_int8(m, activations="bf16", fuse=shared_input_groups(m, lambda x: x(prompts[name][:, :64])))
        variants[f"{name}_int8"], prompts[f"{name}_int8"], tokenizers[f"{name}_int8"] = qm, prompts[name], tokenizers[name]
        res[f"{name}_int8"] = {"params": res[name]["params"], **metric(qm, tokenizers[name])}
        log(f"smollm2 {name}_int8: {res[f'{name}_int8']}")
    # latency, every model in turn: "prefill", a forward over the prompt with all 256 logits (scoring); "first token",
    # the last position's logits only, as transformers' generate() computes its first step
    fns = {}
    for k, v in variants.items():
        fns[k] = lambda v=v, x=prompts[k]: v(x)
        fns[f"{k}/first"] = lambda v=v, x=prompts[k]: v(x, logits_to_keep=1)
    for k, s in interleaved_seconds(fns, profile.lm_rounds).items():
        res[k.split("/")[0]]["first_token_seconds" if k.endswith("/first") else "prefill_seconds"] = s
    for k, steps in _decode_seconds(variants, {k: x[:, :32] for k, x in prompts.items()}, profile.lm_rounds * 4).items():
        res[k]["decode_step_seconds"] = statistics.median(steps)
    return res


# --------------------------------------------------------------------------------------------------- MFM
def prune_mfm(model, train, ratio: float, *, calib_images: int, recover_steps: int, lr: float, seed: int, log,
              after_prune=None) -> tuple[torch.nn.Module, dict]:
    """A copy of the MFM ``model`` with ``ratio`` of its parameters removed and recovered: ``(model, record)``.

    The greedy search of :func:`ann.prune.plan.prune` (Wanda importance; distance: KL of the teacher-forced answer
    logits, :func:`ann.train.vqa.target_logits`, to the unpruned model's on ``calib_images`` training images), then
    ``recover_steps`` steps of distillation from ``model`` (:func:`ann.prune.recover.recover`, 32 images each) on
    ``train`` (a :class:`ann.train.vqa.VQATensors`). ``after_prune(m)``: measured between the two (the record's
    ``after_prune``; None when not given)."""
    from ann.prune.plan import prune
    from ann.prune.recover import kd_loss, recover
    from ann.train.vqa import target_logits, vqa_batch_fn

    calib = vqa_batch_fn(train, images_per_batch=calib_images, seed=seed + 1)(0, 0, 1)
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    with torch.no_grad():
        info = prune(m, ratio, run=lambda x: target_logits(x, calib), criterion="wanda", progress=lambda s: log(f"mfm {s}"))
    search_s = time.perf_counter() - t0
    before = after_prune(m) if after_prune is not None else None
    t0 = time.perf_counter()
    m, losses = recover(m, vqa_batch_fn(train, images_per_batch=32, seed=seed), kd_loss(model, target_logits),
                        steps=recover_steps, lr=lr, seed=seed, desc=f"mfm-{ratio}")
    return m, {"ratio": info["ratio"], "params": info["params_after"], "search": info, "search_seconds": search_s,
               "after_prune": before, "recovery": {"steps": recover_steps, "lr": lr, "seconds": time.perf_counter() - t0,
                                                   "loss_first": losses[0][1], "loss_last": losses[-1][1]}}


def _mfm(profile: Profile, seed: int, log, cache_dir: Path) -> dict:
    from ann.models.mfm import MFMForConditionalGeneration
    from ann.train.vqa import encode_vqa, evaluate_mfm, predict_answers
    from benchmarks.models import _mfm_argv, run_entry
    from benchmarks.quant import _images, no_image_answers
    from tasks.synthmed import SynthMedConfig, load_synthmed
    from transformers import AutoTokenizer

    folder, metrics, _ = run_entry(f"mfm-{profile.mfm_size}", "ann.train.synthmed", _mfm_argv(profile.mfm_size)("full", {}),
                                   cache_dir, log)
    model = MFMForConditionalGeneration.from_pretrained(folder / "model").eval()
    tok = AutoTokenizer.from_pretrained(folder / "model")
    data_cfg = SynthMedConfig(**metrics["data"])
    V = model.num_visual_tokens
    test_split = load_synthmed("test", SynthMedConfig(**{**metrics["data"], "n_test": profile.mfm_test_images}))
    test = encode_vqa(test_split, tok, V)
    train = encode_vqa(load_synthmed("train", data_cfg), tok, V)
    def accuracy(m) -> float:
        with no_image_answers(m):
            return evaluate_mfm(m, tok, test, test_split)["accuracy"]

    res: dict = {"unpruned": {"params": _count(model), "accuracy": accuracy(model)}, "test_questions": len(test.answers),
                 "size": profile.mfm_size}
    log(f"mfm unpruned: {res['unpruned']}")
    variants = {"unpruned": model}
    for ratio in profile.ratios:
        m, r = prune_mfm(model, train, ratio, calib_images=profile.mfm_calib_images, recover_steps=profile.mfm_recover_steps,
                         lr=profile.mfm_lr, seed=seed, log=log, after_prune=accuracy)
        res[f"pruned_{ratio}"] = {"ratio": r["ratio"], "params": r["params"], "search": r["search"],
                                  "search_seconds": r["search_seconds"], "pruned_accuracy": r["after_prune"],
                                  "accuracy": accuracy(m), "recovery": r["recovery"]}
        log(f"mfm -{ratio:.0%}: pruned {r['after_prune']:.4f}, recovered {res[f'pruned_{ratio}']['accuracy']:.4f}")
        variants[f"pruned_{ratio}"] = m
    batch = _images(test, 0, 32)
    lat = interleaved_seconds({k: (lambda v=v: predict_answers(v, tok, batch, images_per_batch=32))
                               for k, v in variants.items()}, profile.mfm_rounds)
    for k, s in lat.items():
        res[k]["batch_seconds"] = s
    return res


# --------------------------------------------------------------------------------------------------- report
def _two_se(p: float, n: int) -> float:
    return 2 * (p * (1 - p) / n) ** 0.5


def _targets(mfm: dict, lm: dict) -> list[Target]:
    key = f"pruned_{TARGET_RATIO}"
    out = []
    if key in mfm:
        u, p = mfm["unpruned"], mfm[key]
        out.append(Target("mfm_latency_speedup_at_30pct", u["batch_seconds"] / p["batch_seconds"], ">= 1.3",
                          u["batch_seconds"] / p["batch_seconds"] >= 1.3))
        drop = 100 * (u["accuracy"] - p["accuracy"])
        out.append(Target("mfm_accuracy_points_lost_after_recovery", drop, "<= 2", drop <= 2))
    for v, suffix in (("full", ""), ("domain", "_domain_vocab")):
        k = _key(TARGET_RATIO, v)
        if k not in lm:
            continue
        u, p = lm["unpruned"], lm[k]
        sp = u["prefill_seconds"] / p["prefill_seconds"]
        at = f" ({p['ratio']:.3f} removed)"  # the latency-aware search may cut past 30 % to reach its speed-up
        out.append(Target(f"smollm2_prefill_speedup_at_30pct{suffix}", sp, ">= 1.3" + at, sp >= 1.3))
        inc = 100 * (p["perplexity"] / u["perplexity"] - 1)
        out.append(Target(f"smollm2_perplexity_increase_pct_after_recovery{suffix}", inc, "<= 10" + at, inc <= 10))
    return out


def _plot(mfm: dict, lm: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
    for ax, (res, key, lat, title) in zip(axes, (
            (mfm, "accuracy", "batch_seconds", "MFM: SynthMed-VQA accuracy"),
            (lm, "perplexity", "prefill_seconds", "SmolLM2: held-out perplexity (lower is better)"))):
        tw = ax.twinx()
        series = [("pruned_", "", "o", "s")] + ([("vocab_pruned_", ", domain vocabulary", "D", "P")] if res is lm else [])
        for prefix, label, m1, m2 in series:
            rows = sorted((r["ratio"], r) for k, r in res.items() if k.startswith(prefix) and not k.endswith("int8"))
            if not rows:
                continue
            xs = [0.0] + [x for x, _ in rows]
            before = [res["unpruned"][key]] + [r["pruned_accuracy"] if key == "accuracy" else r["pruned"][key] for _, r in rows]
            after = [res["unpruned"][key]] + [r[key] for _, r in rows]
            ax.plot(xs, before, m1 + "--", color="tab:red", label="pruned, no recovery" + label, alpha=1 if not label else 0.6)
            ax.plot(xs, after, m2 + "-", color="tab:blue", label="after recovery" + label, alpha=1 if not label else 0.6)
            sp = [res["unpruned"][lat] / r[lat] for r in [res["unpruned"]] + [r for _, r in rows]]
            tw.plot(xs, sp, m1 + ":", color="tab:green", label="latency speedup" + label)
        if key == "perplexity":
            ax.set_yscale("log")
            if "unpruned_finetuned" in res:
                ax.axhline(res["unpruned_finetuned"][key], color="0.5", ls="-.", lw=1,
                           label="unpruned, fine-tuned like the recovery")
        else:  # what the test split can resolve: differences inside the band are noise
            u, se2 = res["unpruned"][key], _two_se(res["unpruned"][key], res["test_questions"])
            ax.axhspan(u - se2, u + se2, color="0.85", label="unpruned +- 2 SE")
        ax.set_xlabel("fraction of parameters removed")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        tw.set_ylabel("latency speedup (x unpruned)", color="tab:green", fontsize=8)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = tw.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper left")
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.prune", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_dir_arg(p, "trained MFMs (benchmarks.models' cache)")
    p.add_argument("--only", choices=("mfm", "smollm2"),
                   help="run one model only; the other model's results of an earlier run of this profile in --out are kept")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[prune {time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    previous = {}
    if args.only and (args.out / "prune.json").is_file():  # keep the other model's results of an earlier run
        previous = read_json(args.out / "prune.json", what="earlier benchmarks.prune results")
        if previous.get("profile") != args.profile:
            previous = {}
    mfm = _mfm(profile, args.seed, log, args.cache_dir) if args.only in (None, "mfm") else previous.get("mfm", {})
    lm = _smollm2(profile, args.seed, log) if args.only in (None, "smollm2") else previous.get("smollm2", {})
    targets = _targets(mfm, lm)
    rows = []
    for model_name, res, key, lat in (("MFM", mfm, "accuracy", "batch_seconds"), ("SmolLM2", lm, "perplexity", "prefill_seconds")):
        for name, r in res.items():
            if isinstance(r, dict) and key in r:
                before = r.get("pruned_accuracy", (r.get("pruned") or {}).get(key))
                speed = res["unpruned"][lat] / r[lat] if lat in r else None
                first = res["unpruned"]["first_token_seconds"] / r["first_token_seconds"] if "first_token_seconds" in r else None
                rows.append([model_name, name, r["params"], 1 - r["params"] / res["unpruned"]["params"], before, r[key], r.get("bits_per_byte"),
                             r.get(lat), speed, first, r.get("decode_step_seconds")])
    table = format_table(["model", "variant", "params", "removed", "metric pruned", "metric", "bits/byte", "latency s",
                          "speedup", "first-token speedup", "decode step s"], rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plot = _plot(mfm, lm, args.out / "prune.png") if mfm and lm else None
    payload = {"benchmark": "prune", "profile": args.profile, "seed": args.seed, "profile_settings": asdict(profile),
               "machine": machine_info(), "torch_threads": torch.get_num_threads(), "versions": versions("torch", "transformers"), "mfm": mfm, "smollm2": lm,
               "targets": [asdict(t) for t in targets], "plot": str(plot) if plot else None,
               "smollm2_increase_pct_vs_unpruned_finetuned_the_same_way": {
                   k: 100 * (r["perplexity"] / lm["unpruned_finetuned"]["perplexity"] - 1)
                   for k, r in lm.items() if "unpruned_finetuned" in lm and k.startswith(("pruned_", "vocab_pruned_"))
                   and isinstance(r, dict) and "perplexity" in r},
               "mfm_two_standard_errors": _two_se(mfm["unpruned"]["accuracy"], mfm["test_questions"]) if mfm else None,
               "wall_seconds": time.perf_counter() - t_start,
               "notes": {"latency": "MFM: answering 32 test images (96 questions, greedy); SmolLM2: prefill of one 256-token "
                                    "prompt; interleaved medians", "params": "all distinct parameters, embeddings included",
                         "recovery": "distillation from the unpruned model on training data only"}}
    md = "\n\n".join(["# benchmarks.prune", table, format_targets(targets, markdown=True)])
    write_results(args.out, "prune", payload, markdown=md)
    print(table)
    print(format_targets(targets))
    return json.loads(json.dumps(payload, default=str))


if __name__ == "__main__":
    main()
