"""Small-to-large cascades with self-tests (issue [R]): compute saved against always using the largest tier, and
quality lost, with thresholds chosen on validation and reported on test.

Tasks and tiers (cheapest first):

- ``progsynth``: generated program synthesis from input/output examples (:mod:`tasks.progsynth`); tiers: the tiny
  and the small code LM (:mod:`ann.models.code_lm`, SmolLM2's tokenizer) trained from scratch on the task's
  training problems, and SmolLM2-135M fine-tuned on them with LoRA (merged). A tier writes ``k`` candidates and
  ``l`` tests of its own, runs them in :mod:`tasks.sandbox` with the prompt's examples (:mod:`ann.cascade.code`);
  quality is pass@1 on hidden examples.
- ``humaneval``: HumanEval (:func:`ann.cascade.code.humaneval_task`) with the tiny code LM trained on the standard
  library, then SmolLM2-135M-Instruct; val: even-numbered problems, test: odd-numbered ones.
- ``synthmed``: SynthMed-VQA with the small MFM (the ``small-fine`` preset, :data:`SMALL_MFM_ARGV`) and the large
  one (``python -m ann.train synthmed``); self-test: answer confidence, or confidence and agreement under input
  noise (:mod:`ann.cascade.vqa`), each a cascade of its own, the reported one chosen on validation; quality is
  exact-match accuracy.

Every tier runs on every validation and test item once; a cascade's quality and cost then follow exactly from
those records (:mod:`ann.cascade.policy`). Thresholds: the Pareto front over each tier's score quantiles on the
validation split, then the cheapest point losing at most ``max_loss`` (1 point) there; the same thresholds on the
test split give the reported figures. Cost: FLOPs (``torch.utils.flop_counter`` over the real generation) and
measured seconds per item (generation, and for a self-test its generation and sandbox runs).

Target: on at least one task, at least 40 % fewer FLOPs than always using the largest tier with at most 1 point
of quality lost (test split), on a task whose tiers differ: the largest at least ``MIN_GAP`` = 3 points above
the cheapest on test, i.e. the cheapest tier alone would lose 3x the budget, so the self-test must do the work
(where every tier scores about 0, stopping early saves everything and proves nothing). Writes
``cascade.json``, ``cascade.md`` and ``cascade.png``.

Trained models are cached (:func:`benchmarks.models.run_entry`, keyed by their arguments and code). Cost on the
2-core box (quick, session 14): training the progsynth tiers once about 51 minutes (tiny LM 1200 steps 2364 s,
SmolLM2 LoRA ~710 s) and the stdlib tiny LM for HumanEval 274 s; evaluating progsynth + HumanEval 26 minutes (the
tiny tier ~3 s per problem, mostly one sandbox process per distinct candidate); SynthMed-VQA about 20 s with
trained MFMs (training them, session 15, one thread each: small-fine ~6 min, large 771 s).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import Target, add_cache_dir_arg, add_common_args, format_table, format_targets, machine_info, save_figure, versions, write_results

SAVING_TARGET, LOSS_TARGET = 0.40, 0.01
MIN_GAP = 0.03  # a task's tiers must differ by this much (test quality) for its cascade to count: 3x the budget


@dataclass(frozen=True)
class Profile:
    problems: int  # program-synthesis problems generated (80 % train, 10 % val, 10 % test)
    n_val: int  # progsynth validation problems used (of the split)
    n_test: int
    k: int  # candidates per tier
    l: int  # self-generated tests per tier
    lm_steps: int  # training steps of the code LMs trained from scratch
    lm_presets: tuple[str, ...]  # which code LMs (ann.models.code_lm presets) are tiers, cheapest first
    lora_steps: int  # LoRA steps of SmolLM2
    humaneval: int  # HumanEval problems per split (val: even-numbered, test: odd-numbered; 82 each at most)
    humaneval_tokens: int  # new tokens per HumanEval completion at most
    max_loss: float = LOSS_TARGET


PROFILES = {
    "quick": Profile(problems=4000, n_val=100, n_test=150, k=8, l=4, lm_steps=1200, lm_presets=("tiny",), lora_steps=100,
                     humaneval=20, humaneval_tokens=128),
    "full": Profile(problems=4000, n_val=300, n_test=358, k=8, l=8, lm_steps=3000, lm_presets=("tiny", "small"),
                    lora_steps=400, humaneval=82, humaneval_tokens=256),
}


def _tier_models(profile: Profile, root: Path, cache_dir: Path, log) -> dict[str, Path]:
    from benchmarks.models import CODE_LM_PATHS, run_entry

    common = ["--corpus-root", str(root), "--seq-len", "256", "--eval-bytes", "20000", "--quiet"]
    out = {}
    for preset in profile.lm_presets:
        folder, m, _ = run_entry(f"progsynth-{preset}", "ann.train.code",
                                 ["--preset", preset, "--steps", str(profile.lm_steps), "--batch-size", "8", "--lr", "3e-3",
                                  *common], cache_dir, log, code_paths=(*CODE_LM_PATHS, "tasks/progsynth.py"))
        log(f"progsynth-{preset}: {m['params']} parameters, held-out {m['test_bits_per_byte']:.3f} bits/byte")
        out[f"code-lm-{preset}"] = folder / "model"
    folder, m, _ = run_entry("progsynth-smollm2", "ann.finetune.code",
                             ["--steps", str(profile.lora_steps), "--batch-size", "4", "--save-merged", *common],
                             cache_dir, log, code_paths=(*CODE_LM_PATHS, "tasks/progsynth.py"))
    log(f"progsynth-smollm2 (LoRA): held-out {m['bits_per_byte_before']:.3f} -> {m['bits_per_byte_after']:.3f} bits/byte")
    out["smollm2-lora"] = folder / "model"
    return out


def _load_tier(path: Path | None, log) -> tuple[torch.nn.Module, object]:
    """A causal LM tier (``path``: a saved model folder; None: SmolLM2-135M-Instruct), FLOPs per token counted, then
    its linears packed for oneDNN (:func:`ann.fusion.pack_linears`: same outputs to fp32 rounding, faster)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ann.cascade.code import token_flops
    from ann.fusion import pack_linears, packing_available
    from ann.models.smollm2 import load_smollm2

    if path is None:
        model, tok = load_smollm2()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(path)
    token_flops(model)  # before packing: the FLOP counter sees nn.Linear
    if packing_available():
        pack_linears(model)
    else:
        log("no oneDNN in this torch build: tiers run with stock linears (seconds are higher, FLOPs the same)")
    return model, tok


def _code_tiers(task: str, models: dict[str, Path | None], splits: dict[str, list], profile: Profile, seed: int, log,
                *, max_new_tokens: int) -> dict[str, dict]:
    """Every tier on every split: tiers but the last with ``k`` candidates and ``l`` own tests, the last (the
    reference, "always the largest tier") greedy only."""
    from ann.cascade.code import code_tier
    from tasks.sandbox import Sandbox, SandboxConfig

    sandbox = Sandbox(config=SandboxConfig(wall_time_s=5.0, cpu_time_s=5.0, memory_mb=256))
    tiers: dict[str, dict] = {s: {} for s in splits}
    names = list(models)
    for name, path in models.items():
        model, tok = _load_tier(path, log)
        k, l = (profile.k, profile.l) if name != names[-1] else (1, 0)
        for split, tasks in splits.items():
            t0 = time.perf_counter()
            tested, greedy, _ = code_tier(name, model, tok, tasks, k=k, l=l, sandbox=sandbox, seed=seed,
                                          max_new_tokens=max_new_tokens)
            tiers[split][name] = (tested, greedy)
            log(f"{task} {name} {split}: pass@1 {greedy.quality.mean():.3f}, chosen of k={k} "
                f"{tested.quality.mean():.3f}, {time.perf_counter() - t0:.0f} s")
        del model
    return tiers


def _progsynth(profile: Profile, seed: int, cache_dir: Path, log) -> dict:
    from ann.cascade.code import progsynth_task
    from tasks import progsynth as ps

    problems = ps.generate_problems(profile.problems, seed=seed)
    root = ps.write_corpus(ps.split_problems(problems, "train"), cache_dir / f"progsynth-corpus-{profile.problems}-{seed}")
    models = _tier_models(profile, root, cache_dir, log)
    probs = {"val": ps.split_problems(problems, "val")[:profile.n_val], "test": ps.split_problems(problems, "test")[:profile.n_test]}
    splits = {s: [progsynth_task(p) for p in ps_] for s, ps_ in probs.items()}
    tiers = _code_tiers("progsynth", models, splits, profile, seed, log, max_new_tokens=40)
    depth = {s: [p.depth for p in ps_] for s, ps_ in probs.items()}
    return _cascade("progsynth", tiers, profile.max_loss, extra={"depth": depth, "problems": profile.problems})


def _humaneval(profile: Profile, seed: int, cache_dir: Path, log) -> dict:
    """HumanEval through the sandbox: the tiny code LM trained on the standard library (benchmarks.models'
    ``code-lm-tiny``), then SmolLM2-135M-Instruct. Validation: even-numbered problems, test: odd-numbered ones."""
    from ann.cascade.code import humaneval_task
    from benchmarks.models import ENTRIES, run_entry
    from tasks.code import load_humaneval

    e = ENTRIES["code-lm-tiny"]
    folder, m, _ = run_entry("code-lm-tiny", e.module, e.argv("full", {}), cache_dir, log)
    log(f"code-lm-tiny (stdlib): held-out {m['test_bits_per_byte']:.3f} bits/byte")
    problems = load_humaneval()
    splits = {"val": [humaneval_task(p) for p in problems[0::2][:profile.humaneval]],
              "test": [humaneval_task(p) for p in problems[1::2][:profile.humaneval]]}
    tiers = _code_tiers("humaneval", {"code-lm-tiny": folder / "model", "smollm2": None}, splits, profile, seed, log,
                        max_new_tokens=profile.humaneval_tokens)
    return _cascade("humaneval", tiers, profile.max_loss,
                    extra={"problems": {s: [t.name for t in ts] for s, ts in splits.items()}})


# The cheap SynthMed tier: ann.models.mfm's "small-fine" preset (the small towers on the large one's patch grid).
# Measured in session 15 (2 cores, test accuracy; large 0.855): "small" (16 px patches) 3000 steps 0.603, 15000
# steps 0.741, 40000 steps 0.757, its confident answers too often wrong to stop on (at most ~25 % FLOPs saved within
# 1 point); "small-fine" 15000 steps (~6 min) 0.820, at 6.4 % of the large one's FLOPs.
SMALL_MFM_ARGV = ["--size", "small-fine", "--steps", "15000", "--quiet"]


def _synthmed(seed: int, cache_dir: Path, log, small: Path | None, large: Path | None) -> dict:
    """SynthMed-VQA: the small MFM (:data:`SMALL_MFM_ARGV`) with either self-test, then the large MFM.
    Both self-tests are tried as separate cascades; the reported one is chosen on validation."""
    import ann.models.mfm  # noqa: F401  (registers the MFM with transformers' Auto classes)
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from ann.cascade import TierRun
    from ann.cascade.vqa import vqa_tier
    from ann.train.vqa import encode_vqa
    from benchmarks.models import ENTRIES, run_entry
    from tasks.synthmed import SynthMedConfig, load_synthmed
    from tasks.io import read_json

    if small is None:
        small, m, _ = run_entry("mfm-small-fine", "ann.train.synthmed", SMALL_MFM_ARGV, cache_dir, log)
        log(f"mfm-small-fine: test accuracy {m['test']['accuracy']:.3f}")
    if large is None:
        e = ENTRIES["mfm-large"]
        large, _, _ = run_entry("mfm-large", e.module, e.argv("full", {}), cache_dir, log)
    tiers: dict[str, dict] = {"val": {}, "test": {}}
    for name, folder in (("mfm-small", Path(small)), ("mfm-large", Path(large))):
        m = read_json(folder / "metrics.json", what=f"{name} metrics")
        cfg = SynthMedConfig(**{k: m["data"][k] for k in ("n_train", "n_val", "n_test", "noise_std", "texture_std", "seed")})
        mfm = AutoModelForImageTextToText.from_pretrained(folder / "model").eval()
        tok = AutoTokenizer.from_pretrained(folder / "model")
        for split in tiers:
            data = encode_vqa(load_synthmed(split, cfg), tok, mfm.num_visual_tokens)
            last = name == "mfm-large"
            tested, raw = vqa_tier(name, mfm, tok, data, seed=seed, self_test="confidence" if last else "confidence+consistency")
            zero, nan = np.zeros(len(tested)), np.full(len(tested), np.nan)
            greedy = TierRun(name, tested.quality, nan, tested.flops, tested.seconds, zero, zero)
            if last:
                tiers[split][name] = (tested, greedy)
            else:
                conf = TierRun(f"{name}/confidence", tested.quality, raw["confidence"], tested.flops, tested.seconds, zero, zero)
                tiers[split][f"{name}/confidence"] = (conf, greedy)
                tiers[split][f"{name}/confidence+consistency"] = (tested, greedy)
            log(f"synthmed {name} {split}: accuracy {tested.quality.mean():.3f}"
                + ("" if last else f", consistent under noise {np.mean(raw['agree']):.3f}"))
    return _cascade("synthmed", tiers, LOSS_TARGET, extra={"models": {"mfm-small": str(small), "mfm-large": str(large)}},
                    chains=[["mfm-small/confidence", "mfm-large"], ["mfm-small/confidence+consistency", "mfm-large"]])


def _default_chains(names: list[str]) -> list[list[str]]:
    """Every chain ending at the largest tier: the cheapest r tiers plus the largest, and each single cheaper tier
    plus the largest."""
    chains: list[list[str]] = []
    for r in range(1, len(names)):
        for use in [names[:r] + [names[-1]]] + ([names[r - 1:r] + [names[-1]]] if r > 1 else []):
            if use not in chains:
                chains.append(use)
    return chains


def _cascade(task: str, tiers: dict[str, dict], max_loss: float, *, extra: dict,
             chains: list[list[str]] | None = None) -> dict:
    """Search thresholds on val, report on test: every tier but the last self-tests, the last answers greedily.
    ``chains``: the tier sequences to try (default :func:`_default_chains`); the reported one is chosen on val."""
    from ann.cascade import choose, evaluate, pareto_search

    names = list(tiers["val"])

    def chain(split: str, use: list[str]) -> list:
        return [tiers[split][n][0] for n in use[:-1]] + [tiers[split][use[-1]][1]]

    largest = {s: tiers[s][names[-1]][1] for s in tiers}
    ref = {s: {"quality": float(largest[s].quality.mean()), "flops": float(largest[s].flops.mean()),
               "seconds": float(largest[s].seconds.mean())} for s in tiers}
    per_tier = {n: {s: {"pass@1" if task != "synthmed" else "accuracy": float(tiers[s][n][1].quality.mean()),
                        "selftested_quality": float(tiers[s][n][0].quality.mean()),
                        "flops": float(tiers[s][n][1].flops.mean()), "seconds": float(tiers[s][n][1].seconds.mean()),
                        "selftest_flops": float(tiers[s][n][0].test_flops.mean() + tiers[s][n][0].flops.mean()
                                                - tiers[s][n][1].flops.mean()),
                        "selftest_seconds": float(tiers[s][n][0].test_seconds.mean() + tiers[s][n][0].seconds.mean()
                                                  - tiers[s][n][1].seconds.mean())}
                    for s in tiers} for n in names}
    cascades = {}
    for use in chains or _default_chains(names):
        front = pareto_search(chain("val", use))
        pick = choose(front, reference_quality=ref["val"]["quality"], max_loss=max_loss)
        test = evaluate(chain("test", use), pick["thresholds"])
        test_front = [evaluate(chain("test", use), p["thresholds"]) for p in front]
        cascades[" -> ".join(use)] = {
            "tiers": use, "val": pick, "val_front": front, "test": test, "test_front": test_front,
            "flops_saved": 1 - test["flops"] / ref["test"]["flops"],
            "seconds_saved": 1 - test["seconds"] / ref["test"]["seconds"],
            "quality_lost": ref["test"]["quality"] - test["quality"]}
    # the reported cascade is chosen on validation too (feasible there, then the fewest FLOPs); test only reports it
    best = max(cascades, key=lambda k: (cascades[k]["val"]["feasible"], -cascades[k]["val"]["flops"]))
    return {"task": task, "tiers": names, "per_tier": per_tier, "largest": ref, "cascades": cascades, "best": best,
            "items": {s: len(largest[s]) for s in tiers}, **extra}


def _finite(obj):
    """``obj`` with every non-finite float as None (a threshold of +inf: the tier never stops), for strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _targets(results: dict[str, dict]) -> list[Target]:
    """Per task: FLOPs saved and quality lost of the best cascade. A task counts for "any task" only when its tiers
    clearly differ (the largest tier at least ``MIN_GAP`` above the cheapest on test): where every tier scores about
    the same (e.g. all near 0), stopping early loses nothing and says nothing about the self-tests."""
    out, met = [], []
    for task, r in results.items():
        c = r["cascades"][r["best"]]
        saved = Target(f"{task}_flops_saved", c["flops_saved"],
                       f">= {SAVING_TARGET:.0%} fewer FLOPs than always {r['tiers'][-1]} ({r['best']})",
                       c["flops_saved"] >= SAVING_TARGET)
        lost = Target(f"{task}_quality_lost", c["quality_lost"], f"<= {LOSS_TARGET} ({r['best']}, test split)",
                      c["quality_lost"] <= LOSS_TARGET + 1e-12)
        quality = [r["per_tier"][n]["test"].get("pass@1", r["per_tier"][n]["test"].get("accuracy")) for n in r["tiers"]]
        gap = quality[-1] - quality[0]
        differ = Target(f"{task}_tiers_differ", gap, f">= {MIN_GAP} (largest minus cheapest tier, test)", gap >= MIN_GAP)
        out += [saved, lost, differ]
        if saved.met and lost.met and differ.met:
            met.append(task)
    out.append(Target("cascade_any_task", float(len(met)), ">= 1 task with all three met" + (f" ({', '.join(met)})" if met else ""),
                      bool(met)))
    return out


def _plot(results: dict[str, dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4), squeeze=False)
    for ax, (task, r) in zip(axes[0], results.items()):
        ref = r["largest"]["test"]
        for key, c in r["cascades"].items():
            pts = sorted((p["flops"] / ref["flops"], p["quality"]) for p in c["test_front"])
            line, = ax.plot(*zip(*pts), marker=".", lw=1, label=f"{key} (val front, on test)")
            ax.scatter([c["test"]["flops"] / ref["flops"]], [c["test"]["quality"]], s=80, marker="*",
                       color=line.get_color(), zorder=3)
        for n in r["tiers"]:
            t = r["per_tier"][n]["test"]
            ax.scatter([t["flops"] / ref["flops"]], [t["pass@1" if task != "synthmed" else "accuracy"]], marker="s",
                       color="0.3")
            ax.annotate(n, (t["flops"] / ref["flops"], t["pass@1" if task != "synthmed" else "accuracy"]), fontsize=7)
        ax.axhline(ref["quality"] - LOSS_TARGET, color="tab:red", ls="--", lw=1, label="largest tier - 1 pt")
        ax.axvline(1 - SAVING_TARGET, color="tab:red", ls=":", lw=1, label="40 % fewer FLOPs")
        ax.set_xscale("log")
        ax.set_xlabel("FLOPs per item / always the largest tier")
        ax.set_ylabel("test quality")
        ax.set_title(f"{task} (stars: thresholds chosen on val)", fontsize=9)
        ax.legend(fontsize=6)
    fig.tight_layout()
    return save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cascade", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_dir_arg(p, "trained models (benchmarks.models' cache; tiers are trained there on first use)")
    p.add_argument("--only", nargs="+", choices=("synthmed", "progsynth", "humaneval"), default=None,
                   help="run only these tasks (default: all)")
    p.add_argument("--mfm-small", type=Path, default=None, help="a trained small MFM folder (default: train/cache the small-fine one)")
    p.add_argument("--mfm-large", type=Path, default=None, help="a trained large MFM folder (default: train/cache one)")
    args = p.parse_args(argv)
    for given in (args.mfm_small, args.mfm_large):
        if given is not None and not (given / "model").is_dir():
            p.error(f"{given}: not a trained MFM folder (no model/ inside); give the --out folder of "
                    "python -m ann.train synthmed")
    profile = PROFILES[args.profile]
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[cascade {time.perf_counter() - t_start:6.0f}s] {msg}", flush=True)

    torch.manual_seed(args.seed)
    results: dict[str, dict] = {}
    if args.only is None or "synthmed" in args.only:
        results["synthmed"] = _synthmed(args.seed, args.cache_dir, log, args.mfm_small, args.mfm_large)
    if args.only is None or "progsynth" in args.only:
        results["progsynth"] = _progsynth(profile, args.seed, args.cache_dir, log)
    if args.only is None or "humaneval" in args.only:
        results["humaneval"] = _humaneval(profile, args.seed, args.cache_dir, log)
    targets = _targets(results)
    headers = ["task", "cascade", "thresholds (inf: never stops)", "stops", "test quality", "largest", "lost", "FLOPs saved", "seconds saved"]
    rows = [[t, k, c["test"]["thresholds"], c["test"]["stops"], c["test"]["quality"], r["largest"]["test"]["quality"],
             c["quality_lost"], c["flops_saved"], c["seconds_saved"]] for t, r in results.items() for k, c in r["cascades"].items()]
    tier_headers = ["task", "tier", "test quality (pass@1 / accuracy)", "k-candidate self-tested", "FLOPs/item", "s/item",
                    "self-test FLOPs", "self-test s"]
    tier_rows = [[t, n, x["test"].get("pass@1", x["test"].get("accuracy")), x["test"]["selftested_quality"],
                  x["test"]["flops"], x["test"]["seconds"], x["test"]["selftest_flops"], x["test"]["selftest_seconds"]]
                 for t, r in results.items() for n, x in r["per_tier"].items()]
    args.out.mkdir(parents=True, exist_ok=True)
    plot = _plot(results, args.out / "cascade.png")
    payload = {"benchmark": "cascade", "profile": args.profile, "seed": args.seed, "profile_settings": asdict(profile),
               "machine": machine_info(), "torch_threads": torch.get_num_threads(),
               "versions": versions("torch", "transformers"), "tasks": _finite(results),
               "targets": [t.to_dict() for t in targets], "plot": str(plot), "wall_seconds": time.perf_counter() - t_start}
    md = "\n\n".join(["# benchmarks.cascade", format_table(tier_headers, tier_rows, markdown=True),
                      format_table(headers, rows, markdown=True), format_targets(targets, markdown=True)])
    write_results(args.out, "cascade", payload, markdown=md)
    print(format_table(tier_headers, tier_rows))
    print(format_table(headers, rows))
    print(format_targets(targets))
    return json.loads(json.dumps(payload))


if __name__ == "__main__":
    main()
