"""``python -m benchmarks.fusion [--profile quick|full] [--out DIR] [--seed N] [--mfm DIR]``: graph-level operator
fusion of the large MFM (issue 11), pass by pass.

Model: the large MFM loaded from ``--mfm`` (an HF ``save_pretrained`` folder with its tokenizer) or else a seeded
random init of ``MFM_PRESETS["large"]`` whose norm weights / biases are randomised too (a fresh model's norms are
gamma = 1, beta = 0, which would make ``fold-norm`` trivially exact); speed and equivalence need no trained
weights, and the JSON says which model ran. Inputs: real SynthMed-VQA test questions (the first ``images`` test
images x their questions, prompts without the answers, left-padded as :func:`ann.train.vqa.encode_vqa` does).

Stages: ``eager`` (HF with eager attention, for reference), ``unfused`` (HF as built: SDPA attention), then the
model after each of :data:`ann.fusion.DEFAULT_PASSES` cumulatively (each applied by :func:`ann.fusion.fuse_model`,
so a pass that breaks equivalence is undone and reported), and ``compile`` (``torch.compile`` of the *unfused*
model, an alternative backend, when it works here; full profile only: inductor fails to lower the passes'
calls on oneDNN-prepacked weights, which the framework rejects and undoes). Per stage, on the CPU with all of torch's threads:

- forward time of the batch (median of ``repeats``, the stages interleaved in a rotating order, so all see the same
  drift of a shared machine) and greedy ``generate`` time (fewer repeats);
- max |logits - logits of the unfused model| over the real (non-padding) tokens, and whether the greedy answers
  are identical;
- the accelerator view: the stage traced at INT8 (``neurohw.workload.trace``) and mapped on
  ``neurohw.accel.PRESETS["default"]``: cycles, DRAM bytes, energy. ``eager`` / ``unfused`` are mapped
  layer by layer (naive attention, ``fuse=False``), the fused stages with flash attention and ``fuse=True``; both
  mappings of every stage are in the JSON.

Targets: ``fused_speedup`` (unfused / all-default-passes forward time) >= 1.2 and ``fused_max_abs_diff`` <= 1e-4.
The long-sequence attention comparison of :mod:`benchmarks.fusion_attention` (memory-efficient attention: naive vs
tiled vs SDPA on the CPU, and the accelerator's naive vs flash traffic) is included under "attention".
Writes ``DIR/fusion.json``, ``DIR/fusion.md`` and ``DIR/fusion.png``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

from benchmarks.common import (Target, add_common_args, format_table, format_targets, interleaved_medians, machine_info,
                               save_figure, versions, write_results)

__all__ = ["PROFILES", "load_model", "vqa_inputs", "run_stages", "main"]

PROFILES = {
    "quick": {"images": 32, "repeats": 15, "gen_repeats": 3, "gen_tokens": 6, "compile": False},
    "full": {"images": 64, "repeats": 40, "gen_repeats": 7, "gen_tokens": 6, "compile": True},
}
SPEEDUP_GOAL, DIFF_GOAL = 1.2, 1e-4
COLUMNS = ["stage", "status", "rewrites", "forward ms", "speedup", "generate ms", "gen speedup", "max abs diff",
           "answers same", "accel map", "cycles", "DRAM MB", "E uJ", "DRAM MB (fused map)"]


def load_model(mfm_dir: Path | None, seed: int):
    """(model, tokenizer, description): the saved MFM in ``mfm_dir`` or a seeded random large MFM."""
    import torch

    import ann.models.mfm  # noqa: F401 - registers the MFM with the Auto classes
    from ann.models.mfm import MFM_PRESETS, build_mfm
    from ann.models.mfm_tokenizer import build_vqa_tokenizer

    if mfm_dir is not None:
        from transformers import AutoModelForImageTextToText, AutoTokenizer

        if not (Path(mfm_dir) / "config.json").is_file():
            raise FileNotFoundError(f"--mfm {mfm_dir}: no config.json there; give a folder written by save_pretrained")
        model = AutoModelForImageTextToText.from_pretrained(mfm_dir).eval()
        return model, AutoTokenizer.from_pretrained(mfm_dir), {"source": "saved", "path": str(mfm_dir), "trained": True}
    tok = build_vqa_tokenizer()
    model = build_mfm(MFM_PRESETS["large"], vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids("<image>"),
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ in ("LayerNorm", "LlamaRMSNorm") and getattr(m, "weight", None) is not None:
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model, tok, {"source": "random init (norm affines randomised)", "preset": "large", "seed": seed, "trained": False}


def vqa_inputs(model, tok, images: int) -> tuple[dict, dict]:
    """(inputs, info): the first ``images`` SynthMed-VQA test images x their questions, prompts only."""
    import torch

    from ann.train.vqa import encode_vqa
    from tasks.synthmed import SynthMedConfig, load_synthmed

    split = load_synthmed("test", SynthMedConfig())
    data = encode_vqa(split, tok, model.num_visual_tokens)
    rows = torch.as_tensor(data.by_image[:images].reshape(-1))  # (images * q,)
    ids, mask = data.prompt_ids[rows], data.prompt_mask[rows]
    keep = int(mask.sum(0).nonzero().min())  # drop columns that are padding in every selected row
    px = data.images[data.image_index[rows]]
    px = px.unsqueeze(1) if px.dim() == 3 else px  # (N, C, S, S)
    inputs = {"input_ids": ids[:, keep:], "attention_mask": mask[:, keep:], "pixel_values": px}
    return inputs, {"split": "test", "images": images, "prompts": len(rows), "prompt_len": int(ids.shape[1] - keep)}


def _accel(model, inputs: dict) -> dict:
    from neurohw.accel import PRESETS, map_workload
    from neurohw.workload import Numeric, trace

    w = trace(model, inputs, name="mfm", numeric=Numeric.INT, weight_bits=8, act_bits=8, state_bits=8)
    out = {"ops": len(w.ops), "macs": w.macs, "params": w.params, "untraced": list(w.untraced)}
    for key, att, fuse in (("layer_by_layer", "naive", False), ("fused", "flash", True)):
        s = map_workload(PRESETS["default"], w, attention=att, fuse=fuse).summary()
        out[key] = {"attention": att, "fuse": fuse, "cycles": s["cycles"], "dram_bytes": s["dram_bytes"],
                    "energy_uj": s["energy_pj"]["total"] / 1e6}
    return out


def run_stages(model, tok, inputs: dict, *, repeats: int, gen_repeats: int, gen_tokens: int, compile_row: bool,
               log, accel: bool = True) -> dict:
    """Build every stage, check it against the unfused model, time it, trace it; returns the JSON-ready result."""
    import torch

    from ann.fusion import DEFAULT_PASSES, PassStatus, fuse_model
    from ann.fusion.framework import model_output
    from ann.fusion.passes import COMPILE

    model = model.eval()
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    stages: dict[str, dict] = {"eager": {"model": eager, "status": "reference", "rewrites": 0},
                               "unfused": {"model": model, "status": "HF as built", "rewrites": 0}}
    reports = []
    prev = model
    for p in DEFAULT_PASSES:
        m = copy.deepcopy(prev)
        t0 = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            r = fuse_model(m, inputs, passes=[p]).result(p.name)
        log(f"{p.name}: {r.status.value}, {len(r.rewrites)} rewrites ({time.perf_counter() - t0:.1f} s)"
            + (f"; {r.reason}" if r.reason else ""))
        reports.append({**r.to_dict(), "warnings": [str(w.message) for w in caught]})
        stages[p.name] = {"model": m, "status": r.status.value, "rewrites": len(r.rewrites)}
        prev = m
    fused_name = DEFAULT_PASSES[-1].name
    if compile_row:  # on the unfused model: inductor cannot lower calls on oneDNN-prepacked weights (tried: rejected)
        m = copy.deepcopy(model)
        t0 = time.perf_counter()
        r = fuse_model(m, inputs, passes=[COMPILE]).result("compile")
        log(f"compile: {r.status.value} ({time.perf_counter() - t0:.1f} s){'; ' + r.reason if r.reason else ''}")
        if r.status.value == "applied":
            try:  # decoding shapes recompile; a failure there drops the row instead of the run
                with torch.inference_mode():
                    m.generate(**inputs, max_new_tokens=gen_tokens, do_sample=False)
                stages["compile"] = {"model": m, "status": "applied", "rewrites": 1}
            except Exception as e:  # noqa: BLE001
                r = replace(r, status=PassStatus.UNAVAILABLE, reason=f"generate failed: {type(e).__name__}: {e}"[:300])
                log(f"compile: dropped ({r.reason})")
        reports.append(r.to_dict())
    with torch.inference_mode():
        ref = model_output(model, inputs)
        gen = {k: s["model"].generate(**inputs, max_new_tokens=gen_tokens, do_sample=False) for k, s in stages.items()}
    prompt_len = inputs["input_ids"].shape[1]
    answers = {k: tok.batch_decode(g[:, prompt_len:], skip_special_tokens=True) for k, g in gen.items()}
    for k, s in stages.items():
        with torch.inference_mode():
            s["max_abs_diff"] = float((model_output(s["model"], inputs) - ref).abs().max())
        s["answers_identical"] = answers[k] == answers["unfused"]
        s["tokens_identical"] = bool(torch.equal(gen[k], gen["unfused"]))
    log(f"timing {len(stages)} stages: forward x{repeats}, generate x{gen_repeats} (interleaved)")
    with torch.inference_mode():
        fwd, _ = interleaved_medians({k: (lambda m=s["model"]: m(**inputs)) for k, s in stages.items()}, repeats)
        gtime, _ = interleaved_medians({k: (lambda m=s["model"]: m.generate(**inputs, max_new_tokens=gen_tokens, do_sample=False))
                        for k, s in stages.items()}, gen_repeats)
    rows = []
    for k, s in stages.items():
        row = {"stage": k, "status": s["status"], "rewrites": s["rewrites"], "forward_s": fwd[k],
               "speedup": fwd["unfused"] / fwd[k], "generate_s": gtime[k], "generate_speedup": gtime["unfused"] / gtime[k],
               "max_abs_diff": s["max_abs_diff"], "answers_identical": s["answers_identical"],
               "tokens_identical": s["tokens_identical"]}
        if accel and k != "compile":
            a = _accel(s["model"], inputs)
            a["primary"] = "layer_by_layer" if k in ("eager", "unfused") else "fused"
            row["accel"] = a
        rows.append(row)
    final = next(r for r in rows if r["stage"] == fused_name)
    targets = [Target("fused_speedup", final["speedup"], f">= {SPEEDUP_GOAL} (unfused / {fused_name} forward time)",
                      final["speedup"] >= SPEEDUP_GOAL),
               Target("fused_max_abs_diff", final["max_abs_diff"], f"<= {DIFF_GOAL:g} (max |logits - unfused|)",
                      final["max_abs_diff"] <= DIFF_GOAL)]
    return {"rows": rows, "passes": reports, "fused_stage": fused_name, "targets": [t.to_dict() for t in targets],
            "sample_answers": answers["unfused"][:6], "_targets": targets}


def table(result: dict, *, markdown: bool = False) -> str:
    rows = []
    for r in result["rows"]:
        a = r.get("accel")
        p = a[a["primary"]] if a else None
        rows.append([r["stage"], r["status"], r["rewrites"], r["forward_s"] * 1e3, r["speedup"], r["generate_s"] * 1e3,
                     r["generate_speedup"], r["max_abs_diff"], r["answers_identical"],
                     (f"{p['attention']}/{'fused' if p['fuse'] else 'unfused'}" if p else None),
                     p["cycles"] if p else None, p["dram_bytes"] / 1e6 if p else None, p["energy_uj"] if p else None,
                     a["fused"]["dram_bytes"] / 1e6 if a else None])
    return format_table(COLUMNS, rows, markdown=markdown)


def plot(result: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    names = [r["stage"] for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    a1.bar(names, [r["speedup"] for r in rows], color="C0", label="forward")
    a1.plot(names, [r["generate_speedup"] for r in rows], "o-", color="C1", label="greedy generate")
    a1.axhline(1.0, color="grey", linewidth=1)
    a1.axhline(SPEEDUP_GOAL, color="C3", linestyle="--", linewidth=1, label=f"target {SPEEDUP_GOAL}x")
    a1.set_ylabel("speedup vs unfused (CPU, measured)")
    a1.set_title("MFM-large, cumulative fusion passes")
    a1.legend(fontsize=8)
    acc = [r for r in rows if "accel" in r]
    x = range(len(acc))
    a2.bar([i - 0.2 for i in x], [r["accel"]["layer_by_layer"]["dram_bytes"] / 1e6 for r in acc], 0.4, label="naive attn, no fusion")
    a2.bar([i + 0.2 for i in x], [r["accel"]["fused"]["dram_bytes"] / 1e6 for r in acc], 0.4, label="flash attn, fused")
    a2.set_xticks(list(x), [r["stage"] for r in acc])
    a2.set_ylabel("DRAM MB per question (accelerator model, INT8)")
    a2.set_title("simulated accelerator (default preset)")
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    return save_figure(fig, path)


def _attention(profile: str, log) -> dict:
    """The long-sequence attention comparison of :mod:`benchmarks.fusion_attention` (naive vs tiled vs SDPA)."""
    import benchmarks.fusion_attention as fa

    res = fa.long_sequence_comparison(profile, log)
    print(fa.table(res))
    print(res["conclusion"])
    return res


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fusion", description=__doc__.split("\n\n")[0])
    add_common_args(ap)
    ap.add_argument("--mfm", type=Path, default=None, help="a saved MFM folder (save_pretrained + tokenizer); "
                    "default: a seeded random init of the large preset")
    args = ap.parse_args(argv)
    import torch

    prof = PROFILES[args.profile]
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[fusion {time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    model, tok, model_info = load_model(args.mfm, args.seed)
    inputs, data_info = vqa_inputs(model, tok, prof["images"])
    log(f"model: {model_info['source']}; inputs: {data_info}")
    result = run_stages(model, tok, inputs, repeats=prof["repeats"], gen_repeats=prof["gen_repeats"],
                        gen_tokens=prof["gen_tokens"], compile_row=prof["compile"], log=log)
    targets = result.pop("_targets")
    print(table(result))
    print(format_targets(targets))
    attention = _attention(args.profile, log)
    payload = {"benchmark": "fusion", "profile": args.profile, "seed": args.seed, "model": model_info, "inputs": data_info,
               "torch_threads": threads, **result, "attention": attention,
               "notes": {"compile": "torch.compile row (of the unfused model) only in the full profile: inductor "
                                    "compilation takes minutes on 2 cores", "targets_full_only": []},
               "machine": machine_info(), "versions": versions("transformers"), "seconds": time.perf_counter() - t0}
    md = "\n\n".join(["# Operator fusion of the large MFM (issue 11)", f"Model: {model_info['source']}; inputs: "
                      f"{data_info['prompts']} SynthMed-VQA test prompts ({data_info['images']} images), {threads} threads.",
                      table(result, markdown=True), format_targets(targets, markdown=True)])
    out = write_results(args.out, "fusion", payload, markdown=md)
    plot(result, args.out / "fusion.png")
    log(f"wrote {out}")
    return payload


if __name__ == "__main__":
    main()
