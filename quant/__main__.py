"""``python -m quant``: hierarchy-aware mixed-precision quantization of a local Hugging Face model.

    python -m quant quantize MODEL_DIR --avg-bits 4.5 [--budget-mb M] --calib TASK_OR_TEXT_FILE --out OUT_DIR
    python -m quant report OUT_DIR

``quantize`` measures the sensitivity of every level of the model's hierarchy (modality -> block -> sublayer) on
calibration text (KL of the output distribution, or HAWQ-V2's Hessian-trace score), allocates a bit width to every
weight matrix with an ILP under the budget (coarse levels first, refining only where sensitivities differ;
``quant.allocate``) along a short penalty path validated on the last calibration batch (``quant.mixed``), quantizes (packed low-bit weights, ``quant.qmodules``) and writes the model
(``model.safetensors`` + ``quant_config.json`` + ``config.json`` + tokenizer) and ``allocation.json`` (bits per
module, search cost). ``report`` prints the bit width and memory of every quantized module. Exit status 2 on bad
input, with the reason (an unreachable budget names the smallest reachable one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

ALLOCATION_FILE = "allocation.json"


def _calibration_text(calib: Path, *, max_bytes: int) -> str:
    """A UTF-8 text file's text, or a text task's calibration text. ``quant`` may not import ``tasks``, so a task
    name is resolved by ``python -m tasks.calib NAME`` in a separate process."""
    import subprocess

    if calib.is_file():
        return calib.read_text(encoding="utf-8", errors="replace")
    if calib.suffix or "/" in str(calib):
        raise FileNotFoundError(f"--calib {calib}: no such file (give a UTF-8 text file, or a text task name)")
    # run from the folder that holds the quant package (the repository, or site-packages), where tasks lives too
    r = subprocess.run([sys.executable, "-m", "tasks.calib", str(calib), "--max-bytes", str(max_bytes)],
                       capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    if r.returncode != 0:
        why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}"
        raise ValueError(f"--calib {calib}: not a file, and not a text task ({why}); give a UTF-8 text file "
                         "or a name that `python -m tasks.calib` knows")
    return r.stdout


def _calibration_batches(tok, path: Path, *, tokens: int, n_batches: int) -> list[dict]:
    import torch

    ids = tok(_calibration_text(path, max_bytes=max(200_000, 16 * tokens * n_batches)), return_tensors="pt").input_ids[0]
    if len(ids) < 2:
        raise ValueError(f"--calib {path}: fewer than 2 tokens of text")
    n = max(1, min(n_batches, len(ids) // tokens))
    length = min(tokens, len(ids))
    return [{"input_ids": ids[i * length:(i + 1) * length][None], "attention_mask": torch.ones(1, length, dtype=torch.long)}
            for i in range(n)]


def _load(model_dir: Path):
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir}: not a Hugging Face model folder (no config.json); save one with "
                                "model.save_pretrained(DIR) and tokenizer.save_pretrained(DIR)")
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    except ValueError:  # not a causal LM (e.g. a BERT encoder)
        model = AutoModel.from_pretrained(model_dir)
    return model.eval(), AutoTokenizer.from_pretrained(model_dir)


def _write_json(path: Path, obj: dict) -> None:
    """Atomic JSON write (temp file in the same folder + rename)."""
    import os
    import tempfile

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def quantize_command(args: argparse.Namespace) -> dict:
    """Sensitivity -> allocation -> quantized model on disk; returns what ``allocation.json`` holds."""
    from quant.allocate import Budget
    from quant.hierarchy import build_hierarchy
    from quant.mixed import kl_validator, mixed_config
    from quant.model_io import model_memory, quantize_model, save_quantized
    from quant.quantizer import QuantSpec, fake_quant
    from quant.sensitivity import Sensitivity

    t0 = time.perf_counter()
    model, tok = _load(args.model_dir)
    batches = _calibration_batches(tok, args.calib, tokens=args.calib_tokens, n_batches=args.calib_batches)
    spec = lambda b: QuantSpec(bits=b, granularity=args.granularity, group_size=args.group_size)  # noqa: E731
    for b in args.choices:
        spec(b)  # an unsupported width fails here, before any work
    root = build_hierarchy(model, include_embeddings=not args.no_embeddings)
    # the last calibration batch is held out to validate the candidates of the penalty path (quant.mixed)
    held_out = batches[-1:] if len(batches) > 1 and not args.no_validate else []
    batches = batches[: len(batches) - len(held_out)]
    sens = Sensitivity(model, root, batches, fake_quant=lambda w, b: fake_quant(w, spec(b)) if b < 16 else w,
                       n_probes=args.probes, seed=args.seed)
    budget_bits = args.avg_bits * root.params
    if args.budget_mb is not None:
        budget_bits = min(budget_bits, args.budget_mb * 2 ** 20 * 8)
    validate = kl_validator(model, held_out, act_bits=args.act_bits) if held_out else None
    bit_config, alloc, candidates = mixed_config(model, root, sens.fn(args.metric), args.choices,
                                                 Budget(bytes=budget_bits / 8), spec, flat=args.flat, validate=validate,
                                                 progress=True)
    qmodel = quantize_model(model, bit_config, act_bits=args.act_bits)
    save_quantized(qmodel, bit_config, args.out)
    tok.save_pretrained(str(args.out))
    mem_fp, mem_q = model_memory(model), model_memory(qmodel)
    info = {"format": "neuromfm.quant.allocation", "version": 1, "model_dir": str(args.model_dir),
            "calib": str(args.calib), "metric": args.metric, "search": "flat" if args.flat else "hierarchical",
            "choices": list(args.choices), "avg_bits_target": args.avg_bits, "budget_mb": args.budget_mb,
            "average_bits": alloc.average_bits, "bits": {n: s.bits for n, s in bit_config.items()},
            "candidates": [dataclasses.asdict(c) for c in candidates],
            "search_cost": {"evaluations": alloc.cost.evaluations, "sensitivity_seconds": alloc.cost.sensitivity_seconds,
                            "solve_seconds": alloc.cost.solve_seconds, "ilp_variables": alloc.cost.ilp_variables,
                            "hessian_seconds": sens.cost.hessian_seconds},
            "memory_bytes": {"float": mem_fp, "quantized": mem_q}, "seconds": time.perf_counter() - t0}
    _write_json(args.out / ALLOCATION_FILE, info)
    return info


def report_command(args: argparse.Namespace) -> str:
    from quant.model_io import load_quantized, model_memory
    from quant.qmodules import QuantEmbedding, QuantLinear

    model = load_quantized(args.out_dir)
    rows = [f"{'module':<48} {'bits':>4} {'granularity':>11} {'KiB':>10}"]
    total_q = 0
    seen = set()
    for name, m in model.named_modules():
        if isinstance(m, (QuantLinear, QuantEmbedding)):
            shared = id(m.qweight) in seen
            seen.add(id(m.qweight))
            kib = 0.0 if shared else m.memory_bytes() / 1024
            total_q += 0 if shared else m.memory_bytes()
            rows.append(f"{name[:48]:<48} {m.spec.bits:>4} {m.spec.granularity.value:>11} {kib:>10.1f}"
                        + ("  (tied, counted once)" if shared else ""))
    mem = model_memory(model)
    rows.append(f"\nquantized weights {mem['quantized_weights'] / 2**20:.2f} MiB, other parameters and buffers "
                f"{mem['other'] / 2**20:.2f} MiB, total {mem['total'] / 2**20:.2f} MiB")
    alloc = args.out_dir / ALLOCATION_FILE
    if alloc.is_file():
        a = json.loads(alloc.read_text())
        rows.append(f"average bits {a['average_bits']:.3f} (target {a['avg_bits_target']}), {a['search']} search: "
                    f"{a['search_cost']['evaluations']} sensitivity evaluations ({a['metric']}), "
                    f"{a['search_cost']['sensitivity_seconds']:.1f} s; float model {a['memory_bytes']['float']['total'] / 2**20:.2f} MiB")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    from quant.allocate import SUPPORTED_BITS, BudgetError

    p = argparse.ArgumentParser(prog="python -m quant", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    q = sub.add_parser("quantize", help="mixed-precision quantization of a local HF model folder")
    q.add_argument("model_dir", type=Path, help="a Hugging Face model folder (config.json, weights, tokenizer)")
    q.add_argument("--avg-bits", type=float, required=True, help="average bits per weight (e.g. 4.5)")
    q.add_argument("--budget-mb", type=float, default=None, help="also cap the weights at this many MiB (bits x params)")
    q.add_argument("--calib", type=Path, required=True,
                   help="a UTF-8 text file of calibration text, or a text task (stdlib, humaneval: python -m tasks.calib)")
    q.add_argument("--out", type=Path, required=True, help="output folder (quantized model + allocation.json)")
    q.add_argument("--metric", choices=("kl", "mse", "hawq"), default="kl", help="sensitivity metric (default kl)")
    q.add_argument("--choices", type=int, nargs="+", default=[2, 3, 4, 6, 8], help="bit widths to choose from")
    q.add_argument("--granularity", choices=("tensor", "channel", "group"), default="group", help="weight scales (default group)")
    q.add_argument("--group-size", type=int, default=128, help="weights per scale for --granularity group")
    q.add_argument("--act-bits", type=int, default=None, help="fake-quantize activations to this many bits (default: float)")
    q.add_argument("--calib-tokens", type=int, default=256, help="tokens per calibration batch")
    q.add_argument("--calib-batches", type=int, default=4, help="calibration batches")
    q.add_argument("--probes", type=int, default=8, help="Hutchinson probes (hawq)")
    q.add_argument("--no-embeddings", action="store_true", help="keep embeddings (and a tied lm_head) in float")
    q.add_argument("--flat", action="store_true", help="flat per-layer ILP instead of the hierarchy-aware search")
    q.add_argument("--no-validate", action="store_true",
                   help="the plain ILP, no penalty path validated on the last calibration batch (quant.mixed)")
    q.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report", help="bit widths and memory of a quantized model folder")
    r.add_argument("out_dir", type=Path)
    args = p.parse_args(argv)
    try:
        if args.command == "quantize":
            bad = [b for b in args.choices if b not in SUPPORTED_BITS or b > 8]
            if bad:
                raise ValueError(f"--choices {bad}: supported weight widths are 2..8 bits")
            info = quantize_command(args)
            print(f"wrote {args.out}: average {info['average_bits']:.3f} bits, "
                  f"{info['memory_bytes']['quantized']['total'] / 2**20:.2f} MiB "
                  f"(float {info['memory_bytes']['float']['total'] / 2**20:.2f} MiB), "
                  f"{info['search_cost']['evaluations']} sensitivity evaluations in {info['seconds']:.1f} s")
        else:
            print(report_command(args))
    except (BudgetError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
