"""Speculative decoding of SmolLM2-135M on held-out standard-library code (issue [R]), against plain decoding and
against transformers' assisted generation with the same draft, all in one run.

Prompts: ``[BOS]`` + the first ``prompt_tokens - 1`` tokens of held-out ``"test"`` files of the stdlib corpus
(:func:`ann.train.code.held_out_files` order, files long enough to continue), ``new_tokens`` tokens each.

Kernels: ``stock`` (SmolLM2 as transformers builds it, fp32 ``nn.Linear`` = MKL sgemm) and ``packed`` (the same
parameters, every linear layer pre-packed for oneDNN, :mod:`ann.fusion.packed`). On this CPU, MKL's sgemm costs
about twice as much for 2-13 rows as for one, which is what verifying a guess needs; packed, 7 rows cost 1.2
single-token steps (and one token is 1.37x faster than stock). Every method runs on both where it says so, and its
speed-up is taken against plain decoding *with the same kernels*, so that speculation is not credited with the
kernels' gain (the gain of both together, over stock plain ``generate``, is reported beside it).

Methods, per prompt in turn (interleaved: this box's speed drifts, so every method sees the same moments), tokens
per second = all new tokens / all seconds:

- plain: transformers ``generate(do_sample=False)`` and ours (:func:`ann.speculative.speculative_generate`
  without a draft);
- per draft (:mod:`ann.speculative.drafts`: prompt lookup; a distilled code LM with SmolLM2's tokenizer
  (``python -m ann.train code-lm --preset tiny --teacher smollm2``, trained once and cached by
  :func:`benchmarks.models.run_entry`); prompt lookup falling back to that LM; the target with its least
  influential blocks skipped, sharing its weights): ours with a fixed draft length (``K`` = 6 for model drafts;
  prompt lookup, whose guesses cost nothing to make, up to ``lookup_k`` = 10 tokens and 2 after a single-token
  match) and with the adaptive length, and transformers' assisted generation with the same draft
  (``assistant_model=`` / ``prompt_lookup_num_tokens=``) at its default settings and at our fixed length (the
  faster of the two is the comparison; transformers has no combined draft); ``--no-draft-lm`` leaves the draft
  LM's methods out;
- sampling at temperature ``T``: ours plain and with the best greedy draft (rejection sampling; tokens differ
  from greedy by design, so only speed and acceptance are reported).

Per method: tokens/s, speed-up over plain decoding with the same kernels and over stock plain ``generate``,
whether every prompt's tokens equal plain greedy decoding's with the same kernels (and with stock kernels), and
for ours the acceptance rate ``a``, mean draft length ``g``, cost ratio ``c`` (the draft's seconds per guessed
token / our plain decoding's seconds per token, same kernels) and the expected-speed-up formula's prediction
``(1 - a^(g+1)) / ((1 - a)(g c + 1))`` next to the measured speed-up over our plain decoding.

Targets: ours (greedy, identical tokens) at least 2.0x the tokens/s of plain decoding with the same kernels
(the faster of ``generate`` and ours), and at least 1.1x transformers' assisted generation with the same draft and
kernels. Writes ``speculative.json``, ``speculative.md`` and ``speculative.png``.

Cost on the 2-core box: quick (4 prompts x 96 tokens) 738 s once the draft LM is cached (training it: 2818 s,
once; session 13); ``--no-draft-lm`` 600 s (session 14, an AVX2-only EPYC: packed plain decoding gained
less there, 1.10x over stock generate vs 1.38x on session 13's AVX512 box); full about 2 h; full with
``--no-draft-lm --drafts prompt-lookup`` 21 min (session 15, AVX512 EPYC: 2.88x over packed plain, where the 4
quick prompts, the hardest to look up, give 1.81x).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from benchmarks.common import Target, add_cache_dir_arg, add_common_args, format_table, format_targets, machine_info, save_figure, versions, write_results


@dataclass(frozen=True)
class Profile:
    prompts: int
    prompt_tokens: int
    new_tokens: int
    k: int  # fixed draft length
    k_max: int  # the adaptive length's ceiling
    skips: tuple[int, ...]  # blocks the self-speculative drafts skip (of SmolLM2's 30)
    ngram: int  # prompt lookup's longest n-gram
    temperature: float  # sampling methods
    lookup_k: int = 10  # prompt lookup's fixed draft length (its guesses are free; spans on code are long)
    lookup_unigram: int = 2  # ... but at most this many tokens after a match of a single token


PROFILES = {
    "quick": Profile(prompts=4, prompt_tokens=256, new_tokens=96, k=6, k_max=12, skips=(10,), ngram=3, temperature=0.8),
    "full": Profile(prompts=16, prompt_tokens=256, new_tokens=256, k=6, k_max=12, skips=(8, 12, 16, 20), ngram=3,
                    temperature=0.8),
}
SPEEDUP_TARGET, VS_HF_TARGET = 2.0, 1.1
# The draft LM: benchmarks.models' cache, keyed by these arguments and benchmarks.models.CODE_LM_PATHS.
DRAFT_ARGV = ["--preset", "tiny", "--teacher", "smollm2", "--steps", "400", "--seq-len", "256", "--batch-size", "8",
              "--eval-bytes", "50000"]


def _prompts(tok, profile: Profile) -> list[list[int]]:
    from ann.train.code import held_out_files

    out = []
    for f in held_out_files(10**9):
        ids = tok(f.text, add_special_tokens=False)["input_ids"]
        if len(ids) >= profile.prompt_tokens + profile.new_tokens:
            out.append([tok.bos_token_id] + ids[: profile.prompt_tokens - 1])
        if len(out) == profile.prompts:
            return out
    raise RuntimeError(f"only {len(out)} held-out files hold {profile.prompt_tokens + profile.new_tokens} tokens")


def _hf(model, prompt: list[int], n: int, **kw) -> tuple[list[int], float]:
    x = torch.tensor([prompt])
    t0 = time.perf_counter()
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0, **kw)
    return out[0, len(prompt):].tolist(), time.perf_counter() - t0


def packed_view(model):
    """A second module tree over ``model``'s parameters (no copy) whose linear layers are oneDNN-packed."""
    from ann.fusion import pack_linears

    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    view = copy.deepcopy(model, memo)
    pack_linears(view)
    return view


def load_draft_lm(tok, cache_dir: Path, log):
    """The distilled draft LM (trained on first use; :data:`DRAFT_ARGV`), refused if its tokenizer is not ``tok``'s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ann.speculative import check_same_tokenizer
    from benchmarks.models import CODE_LM_PATHS, run_entry

    out, metrics, _ = run_entry("code-lm-draft", "ann.train.code", DRAFT_ARGV, cache_dir, log, code_paths=CODE_LM_PATHS)
    check_same_tokenizer(tok, AutoTokenizer.from_pretrained(out / "model"))
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    return model, metrics


@dataclass(frozen=True)
class Method:
    kernels: str  # "stock" | "packed"
    draft: str  # "plain" (no draft) or the draft's name
    impl: str  # "hf" | "ours"
    setting: str  # "", "k6", "adaptive", "default", "sample"

    @property
    def key(self) -> str:
        return f"{self.kernels} {self.draft}/{self.impl}" + (f"-{self.setting}" if self.setting else "")


DRAFTS = ("prompt-lookup", "draft-lm", "prompt-lookup+draft-lm", "layer-skip")


def run(profile: Profile, seed: int, log, cache_dir: Path, *, drafts_wanted: tuple[str, ...] = DRAFTS) -> dict:
    """Every method of the module docstring whose draft family is in ``drafts_wanted`` (plain decoding always)."""
    from ann.models.smollm2 import load_smollm2
    from tqdm.auto import tqdm

    from ann.fusion import pack_linears
    from ann.speculative import (CachedLM, DraftLength, FallbackDraft, ModelDraft, PromptLookupDraft, Sampler,
                                 expected_speedup, layer_skip_draft, speculative_generate)

    torch.manual_seed(seed)
    model, tok = load_smollm2()
    model.eval()
    draft_lm = draft_lm_packed = draft_metrics = None
    if {"draft-lm", "prompt-lookup+draft-lm"} & set(drafts_wanted):
        draft_lm, draft_metrics = load_draft_lm(tok, cache_dir, log)
        log(f"draft LM: {draft_metrics['params']} parameters, held-out {draft_metrics['test_bits_per_byte']:.3f} bits/byte")
        draft_lm_packed = copy.deepcopy(draft_lm)
        pack_linears(draft_lm_packed)
    prompts = _prompts(tok, profile)
    n, k = profile.new_tokens, profile.k
    targets = {"stock": model, "packed": packed_view(model)}
    calib = torch.tensor([p[:128] for p in prompts[:2]])  # block influence: the prompts' text, not the generations

    def lookup() -> PromptLookupDraft:
        return PromptLookupDraft(max_ngram=profile.ngram, limits={1: profile.lookup_unigram})

    def drafts(kernels: str) -> dict:  # name -> (factory of a fresh draft, HF's generate kwargs or None, draft length)
        lm = draft_lm if kernels == "stock" else draft_lm_packed
        out = {"prompt-lookup": (lookup, {"prompt_lookup_num_tokens": 10}, profile.lookup_k)}
        if lm is not None:
            out["draft-lm"] = (lambda: ModelDraft(lm, name="draft-lm"), {"assistant_model": lm}, k)
            out["prompt-lookup+draft-lm"] = (lambda: FallbackDraft(lookup(), ModelDraft(lm, name="draft-lm")), None,
                                             k)  # k: the model's guesses cost draft steps
        out = {name: v for name, v in out.items() if name in drafts_wanted}
        for s in profile.skips if kernels == "packed" and "layer-skip" in drafts_wanted else ():
            d, dropped = layer_skip_draft(model, s, lambda m: m(calib).logits)  # the stock tree: prune surgery knows it
            pack_linears(d.lm.model)  # its own module tree over the target's parameters
            out[f"layer-skip-{s}"] = (lambda d=d: d, {"assistant_model": d.lm.model}, k)
            log(f"layer-skip-{s}: blocks {dropped}")
        return out

    last: dict = {}  # the stats of our latest generation

    def ours(target, make, p, length, sampler=None):
        out, last["stats"] = speculative_generate(CachedLM(target), make() if make else None, p, max_new_tokens=n,
                                                  length=length, sampler=sampler)
        return out, last["stats"].seconds

    made = {kernels: drafts(kernels) for kernels in targets}
    methods: dict[Method, object] = {}
    for kernels, target in targets.items():
        methods[Method(kernels, "plain", "hf", "")] = lambda p, t=target: _hf(t, p, n)
        methods[Method(kernels, "plain", "ours", "")] = lambda p, t=target: ours(t, None, p, None)
        for name, (make, hf_kw, dk) in made[kernels].items():
            if kernels == "stock" and name != "prompt-lookup":
                continue  # stock kernels: one draft shows what the kernels change
            methods[Method(kernels, name, "ours", f"k{dk}")] = lambda p, t=target, mk=make, dk=dk: ours(
                t, mk, p, DraftLength(dk))
            methods[Method(kernels, name, "ours", "adaptive")] = lambda p, t=target, mk=make: ours(
                t, mk, p, DraftLength(k, adaptive=True, k_max=profile.k_max))
            if hf_kw is None:
                continue
            methods[Method(kernels, name, "hf", "default")] = lambda p, t=target, kw=hf_kw: _hf(t, p, n, **kw)
            fixed = ({"prompt_lookup_num_tokens": dk} if "prompt_lookup_num_tokens" in hf_kw else
                     {**hf_kw, "num_assistant_tokens": dk, "num_assistant_tokens_schedule": "constant",
                      "assistant_confidence_threshold": 0.0})
            if fixed != hf_kw:  # transformers' default already is this length
                methods[Method(kernels, name, "hf", f"k{dk}")] = lambda p, t=target, kw=fixed: _hf(t, p, n, **kw)
    packed = targets["packed"]
    gen = torch.Generator().manual_seed(seed)
    methods[Method("packed", "plain", "ours", "sample")] = lambda p: ours(packed, None, p, None, Sampler(profile.temperature, gen))
    best = next((n for n in ("prompt-lookup+draft-lm", "prompt-lookup", *made["packed"]) if n in made["packed"]), None)
    if best is not None:  # sampling with the best greedy draft this run has
        sample_draft, _, sample_k = made["packed"][best]
        methods[Method("packed", sample_draft().name, "ours", "sample")] = lambda p: ours(
            packed, sample_draft, p, DraftLength(sample_k), Sampler(profile.temperature, gen))

    res = {m.key: {**asdict(m), "seconds": 0.0, "tokens": 0, "identical": True, "identical_to_stock": True, "stats": []}
           for m in methods}
    for i, p in enumerate(tqdm(prompts, desc="prompts")):
        ref: dict[str, list[int]] = {}
        for m, fn in methods.items():
            last.clear()
            out, sec = fn(p)
            if m.draft == "plain" and m.impl == "hf":
                ref[m.kernels] = out
            r = res[m.key]
            r["seconds"] += sec
            r["tokens"] += len(out)
            r["identical"] &= out == ref[m.kernels]
            r["identical_to_stock"] &= out == ref["stock"]
            if "stats" in last:
                r["stats"].append(last["stats"].summary())
        log(f"prompt {i}: " + ", ".join(f"{k_} {r['tokens'] / r['seconds']:.2f}" for k_, r in res.items()))
    stock_plain = res["stock plain/hf"]["tokens"] / res["stock plain/hf"]["seconds"]
    for r in res.values():
        r["tokens_per_second"] = r["tokens"] / r["seconds"]
    for r in res.values():
        same = [x for x in res.values() if x["kernels"] == r["kernels"] and x["draft"] == "plain"
                and (x["setting"] == "sample") == (r["setting"] == "sample")]
        r["speedup"] = r["tokens_per_second"] / max(x["tokens_per_second"] for x in same)
        r["speedup_vs_stock_generate"] = r["tokens_per_second"] / stock_plain
        if r["setting"] == "sample":
            r["identical"] = r["identical_to_stock"] = None  # sampled tokens differ from greedy by design
        if r["impl"] == "ours" and r["draft"] != "plain":
            ours_plain = next(x for x in same if x["impl"] == "ours")
            plain_step = ours_plain["seconds"] / ours_plain["tokens"]
            s = {k_: sum(x[k_] for x in r["stats"]) for k_ in ("guessed", "accepted", "tested", "rounds", "draft_seconds", "new_tokens")}
            a = s["accepted"] / s["tested"] if s["tested"] else 0.0
            g = s["guessed"] / s["rounds"]
            c = (s["draft_seconds"] / s["guessed"]) / plain_step if s["guessed"] else 0.0
            r.update(acceptance_rate=a, mean_draft_length=g, cost_ratio=c, tokens_per_round=s["new_tokens"] / s["rounds"],
                     predicted_speedup=expected_speedup(a, g, c) if s["guessed"] else 1.0,
                     measured_vs_ours_plain=r["tokens_per_second"] / ours_plain["tokens_per_second"])
        del r["stats"]
    return {"prompts": len(prompts), "new_tokens": n, "draft_lm": draft_metrics, "methods": res}


def _targets(res: dict) -> list[Target]:
    m = list(res["methods"].values())
    ours = [r for r in m if r["impl"] == "ours" and r["draft"] != "plain" and r["setting"] != "sample" and r["identical"]]
    if not ours:
        return [Target("speculative_speedup_vs_plain", 0.0, f">= {SPEEDUP_TARGET} (identical tokens)", False)]

    def key(r: dict) -> str:
        return Method(r["kernels"], r["draft"], r["impl"], r["setting"]).key

    def hf_of(r: dict) -> list[dict]:
        return [x for x in m if x["impl"] == "hf" and x["draft"] == r["draft"] and x["kernels"] == r["kernels"]]

    best = max(ours, key=lambda r: r["speedup"])
    out = [Target("speculative_speedup_vs_plain", best["speedup"],
                  f">= {SPEEDUP_TARGET} ({key(best)} over plain decoding with the same kernels, identical tokens)",
                  best["speedup"] >= SPEEDUP_TARGET)]
    shared = [r for r in ours if hf_of(r)]  # transformers has no combined draft: our best of the drafts it has
    if shared:
        mine = max(shared, key=lambda r: r["tokens_per_second"])
        top = max(hf_of(mine), key=lambda r: r["tokens_per_second"])
        vs = mine["tokens_per_second"] / top["tokens_per_second"]
        out.append(Target("speculative_speedup_vs_hf_assisted", vs, f">= {VS_HF_TARGET} ({key(mine)} vs {key(top)})",
                          vs >= VS_HF_TARGET))
    return out


def _plot(res: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = res["methods"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(m)
    ax.barh(names, [m[k]["speedup"] for k in names],
            color=["tab:blue" if "/ours" in k else "tab:orange" if "/hf-" in k else "0.6" for k in names])
    ax.axvline(SPEEDUP_TARGET, color="tab:red", ls="--", lw=1, label=f"target {SPEEDUP_TARGET}x")
    ax.set_xlabel("tokens/s over plain decoding with the same kernels")
    ax.invert_yaxis()
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    pts = [(r["predicted_speedup"], r["measured_vs_ours_plain"], k) for k, r in m.items() if "predicted_speedup" in r]
    for x, y, k in pts:
        bx.scatter(x, y)
        bx.annotate(k, (x, y), fontsize=6)
    top = max([1.0] + [max(x, y) for x, y, _ in pts]) * 1.1
    bx.plot([0, top], [0, top], color="0.6", lw=1, ls=":")
    bx.set_xlabel("predicted (1 - a^(g+1)) / ((1 - a)(g c + 1))")
    bx.set_ylabel("measured (x our plain decoding)")
    bx.set_title("expected-speed-up formula vs measurement", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.speculative", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_dir_arg(p, "trained models (benchmarks.models' cache; the draft LM is trained there on first use)")
    p.add_argument("--no-draft-lm", action="store_true",
                   help="leave out the distilled draft LM's methods (training it takes ~47 min on 2 cores the first time)")
    p.add_argument("--drafts", nargs="+", choices=DRAFTS, default=list(DRAFTS),
                   help="draft families to run (default: all; plain decoding always runs)")
    args = p.parse_args(argv)
    profile = PROFILES[args.profile]
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[speculative {time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    drafts = tuple(d for d in args.drafts if not (args.no_draft_lm and "draft-lm" in d))
    res = run(profile, args.seed, log, args.cache_dir, drafts_wanted=drafts)
    targets = _targets(res)
    rows = [[k, r["tokens_per_second"], r["speedup"], r["speedup_vs_stock_generate"], r["identical"], r["identical_to_stock"],
             r.get("acceptance_rate"), r.get("mean_draft_length"), r.get("cost_ratio"), r.get("predicted_speedup"),
             r.get("measured_vs_ours_plain")] for k, r in res["methods"].items()]
    headers = ["method", "tokens/s", "x plain (same kernels)", "x stock generate", "identical", "identical to stock",
               "acceptance a", "mean g", "cost c", "formula", "measured x our plain"]
    table = format_table(headers, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    plot = _plot(res, args.out / "speculative.png")
    payload = {"benchmark": "speculative", "profile": args.profile, "seed": args.seed, "profile_settings": asdict(profile),
               "drafts": list(drafts), "machine": machine_info(), "torch_threads": torch.get_num_threads(),
               "versions": versions("torch", "transformers"), **res, "targets": [t.to_dict() for t in targets],
               "plot": str(plot), "wall_seconds": time.perf_counter() - t_start,
               "notes": {"formula": "our plain decoding with the same kernels is the formula's unit (c and the measured "
                                    "ratio)",
                         "speedup": "tokens/s over the faster plain decoding (generate or ours) with the same kernels; "
                                    "sampled methods over our plain sampling",
                         "speedup_vs_stock_generate": "tokens/s over transformers' plain greedy generate, stock kernels"}}
    md = "\n\n".join(["# benchmarks.speculative", format_table(headers, rows, markdown=True),
                       format_targets(targets, markdown=True)])
    write_results(args.out, "speculative", payload, markdown=md)
    print(table)
    print(format_targets(targets))
    return json.loads(json.dumps(payload, default=str))


if __name__ == "__main__":
    main()
