"""``python -m snn.quant {search,memory}``: quantize a saved spiking model with per-layer widths (:mod:`snn.quant`).

Examples::

    # the tiered (QSLM-style) search for a digits spiking ViT saved by snn.checkpoint: at most 2 points of
    # validation accuracy lost, at most 30 % of the fp32 memory; writes OUT/precision.json and OUT/search.json
    python -m snn.quant search MODEL_DIR --task digits --out OUT
    # the flat QSViT-style search instead, for a byte-level spiking LM (score: minus bits per byte)
    python -m snn.quant search LM_DIR --task bytes --method qsvit --max-drop 0.05 --out OUT
    # memory and score of a given configuration (or uniform widths)
    python -m snn.quant memory MODEL_DIR --task digits --precision OUT/precision.json
    python -m snn.quant memory MODEL_DIR --task digits --weight-bits 8 --membrane-bits 8

Models are folders written by :func:`snn.checkpoint.save_model`. The search scores on the validation split and
reports the answer on the test split too; constraints that nothing meets end with the closest candidate found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

LM_WINDOWS, LM_SEQ = 24, 256


def _task(name: str, model, calib: int, seed: int):
    """``(val score, test score, calibration batch)`` of ``task`` for ``model``, checked against the model."""
    from snn.models import SpikingLM, Spikformer
    from snn.quant.evaluators import byte_windows, digits_accuracy, neg_bits_per_byte

    if name == "digits":
        if not isinstance(model, Spikformer) or (model.config.image_size, model.config.channels) != (8, 1):
            raise SystemExit(f"--task digits needs a Spikformer for 8 x 8 x 1 images; {type(model).__name__} is not one")
        val, _ = digits_accuracy("val", seed=seed)
        test, _ = digits_accuracy("test", seed=seed)
        train = digits_accuracy("train", seed=seed)[1]
        return val, test, train[:calib]
    if not isinstance(model, SpikingLM) or model.config.vocab_size != 256 or model.config.max_positions < LM_SEQ:
        raise SystemExit(f"--task bytes needs a byte-level SpikingLM (vocab 256, >= {LM_SEQ} positions)")
    val_w, test_w = (byte_windows(s, n=LM_WINDOWS, seq=LM_SEQ, seed=seed) for s in ("val", "test"))
    calib_w = byte_windows("train", n=max(1, calib // 32), seq=LM_SEQ, seed=seed)[:, :-1]  # about calib / 32 windows
    return (lambda m: neg_bits_per_byte(m, val_w)), (lambda m: neg_bits_per_byte(m, test_w)), calib_w


def main(argv: list[str] | None = None) -> int:
    from snn.quant.evaluators import TASKS
    from snn.quant.search import MEMBRANE_LADDER, WEIGHT_LADDER

    p = argparse.ArgumentParser(prog="python -m snn.quant", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, text in (("search", "search per-layer widths under constraints"), ("memory", "memory and score of a configuration")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("model", type=Path, help="a spiking model folder (snn.checkpoint.save_model)")
        s.add_argument("--task", choices=TASKS, required=True, help="digits: accuracy; bytes: minus bits per byte")
        s.add_argument("--calib", type=int, default=256, help="calibration samples for the membrane ranges (default 256)")
        s.add_argument("--seed", type=int, default=0, help="data split / window seed (default 0)")
    s = sub.choices["search"]
    s.add_argument("--method", choices=("tiered", "qsvit"), default="tiered", help="QSLM-style tiered or QSViT-style flat")
    s.add_argument("--max-drop", type=float, default=0.02, help="largest score loss vs float (default 0.02)")
    s.add_argument("--max-memory-fraction", type=float, default=0.3, help="memory budget, fraction of fp32 (default 0.3)")
    s.add_argument("--max-memory-bytes", type=float, default=None, help="memory budget in bytes (with the fraction: the smaller)")
    s.add_argument("--memory-weight", type=float, default=0.5, help="weight of memory in the objective J (default 0.5)")
    s.add_argument("--weight-ladder", type=int, nargs="+", default=list(WEIGHT_LADDER), help="weight widths to try")
    s.add_argument("--membrane-ladder", type=int, nargs="+", default=list(MEMBRANE_LADDER), help="membrane widths to try")
    s.add_argument("--out", type=Path, required=True, help="folder for precision.json and search.json")
    m = sub.choices["memory"]
    m.add_argument("--precision", type=Path, help="a precision.json written by `search`")
    m.add_argument("--weight-bits", type=int, help="uniform weight width (without --precision)")
    m.add_argument("--membrane-bits", type=int, help="uniform membrane width (without --precision)")
    args = p.parse_args(argv)

    from snn.checkpoint import load_model
    from snn.quant import Constraints, ConstraintsUnsatisfiable, SpikingPrecision, SpikingQuantizer, qsvit_search, tiered_search
    from tasks.io import atomic_write_json, read_json

    if args.calib < 1:
        p.error(f"--calib {args.calib}: use a number of samples >= 1")
    model = load_model(args.model)
    val, test, calib = _task(args.task, model, args.calib, args.seed)
    q = SpikingQuantizer(model, calib)
    ref = q.memory()
    if args.cmd == "memory":
        if args.precision is not None:
            prec = SpikingPrecision.from_dict(read_json(args.precision, what="precision"))
        else:
            prec = q.uniform(weight_bits=args.weight_bits, membrane_bits=args.membrane_bits)
        mem = q.memory(prec)
        built = q.build(prec)
        print(f"memory {mem.total_bytes:,.0f} bytes (weights {mem.weight_bytes:,.0f}, state {mem.state_bytes:,.0f}); "
              f"{1 - mem.total_bytes / ref.total_bytes:.1%} less than fp32 ({ref.total_bytes:,.0f})")
        print(f"score: val {val(built):.4f} (fp32 {val(q.float_model):.4f}), test {test(built):.4f} (fp32 {test(q.float_model):.4f})")
        return 0
    try:
        constraints = Constraints(max_drop=args.max_drop, max_memory_fraction=args.max_memory_fraction,
                                  max_memory_bytes=args.max_memory_bytes, memory_weight=args.memory_weight)
    except ValueError as e:
        p.error(str(e))
    fn = tiered_search if args.method == "tiered" else qsvit_search
    try:
        r = fn(q, val, constraints, weight_ladder=args.weight_ladder, membrane_ladder=args.membrane_ladder)
    except ConstraintsUnsatisfiable as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    built = q.build(r.best.precision)
    report = {**r.to_dict(), "model": str(args.model), "task": args.task, "test_score": test(built),
              "test_score_ref": test(q.float_model)}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "precision.json", r.best.precision.to_dict())
    atomic_write_json(args.out / "search.json", report)
    print(f"{args.method}: {r.evaluations} configurations scored in {r.seconds:.1f} s")
    print(f"memory {r.best.memory_bytes:,.0f} bytes, {r.memory_saved:.1%} less than fp32 ({r.memory_ref:,.0f})")
    print(f"score: val {r.best.score:.4f} (fp32 {r.score_ref:.4f}), test {report['test_score']:.4f} "
          f"(fp32 {report['test_score_ref']:.4f})")
    print(f"wrote {args.out / 'precision.json'} and {args.out / 'search.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
