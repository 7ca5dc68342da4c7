"""``python -m ann.prune``: structural pruning of a local Hugging Face decoder, with optional LoRA recovery.

    python -m ann.prune MODEL_DIR --ratio 0.3 [--blocks K] --calib TASK_OR_TEXT_FILE [--recover-steps S] --out OUT_DIR

Drops the ``K`` blocks of least block influence, removes the least important MLP channels (``--criterion``) until
``ratio`` of the parameters are gone, optionally fine-tunes with LoRA for ``S`` steps on the calibration text, and
writes an ordinary HF model folder (``from_pretrained`` loads it) plus ``prune.json``. Llama-family decoders only
so far (SmolLM2 included); anything else is refused before the model is touched. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def _text(calib: Path) -> str:
    from tasks.calib import TEXT_TASKS, calibration_text

    if calib.is_file():
        return calib.read_text(encoding="utf-8", errors="replace")
    if str(calib) in TEXT_TASKS:
        return calibration_text(str(calib), max_bytes=400_000)
    raise FileNotFoundError(f"--calib {calib}: not a file, and not a text task ({', '.join(TEXT_TASKS)})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ann.prune", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path, help="a Hugging Face model folder (config.json, weights, tokenizer)")
    p.add_argument("--ratio", type=float, required=True, help="fraction of the parameters to remove, in [0, 1)")
    p.add_argument("--blocks", type=int, default=0, help="whole blocks to drop first (least block influence)")
    p.add_argument("--calib", type=Path, required=True, help="a UTF-8 text file, or a text task (stdlib, humaneval)")
    p.add_argument("--criterion", choices=("magnitude", "wanda", "taylor"), default="wanda", help="channel importance")
    p.add_argument("--recover-steps", type=int, default=0, help="LoRA recovery steps on the calibration text (0: none)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per calibration / recovery block")
    p.add_argument("--out", type=Path, required=True, help="output folder (the pruned model + prune.json)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from ann.checkpoint import save_pretrained_atomic
        from ann.prune.plan import prune_llama
        from ann.prune.recover import recover_lora
        from ann.prune.surgery import check_llama
        from ann.train.code import make_blocks
        from tasks.io import atomic_write_json

        torch.manual_seed(args.seed)
        if not (args.model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{args.model_dir}: not a Hugging Face model folder (no config.json)")
        if args.recover_steps < 0:
            raise ValueError(f"--recover-steps {args.recover_steps}: use 0 (no recovery) or more")
        t0 = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(args.model_dir).eval()
        tok = AutoTokenizer.from_pretrained(args.model_dir)
        check_llama(model)
        blocks = make_blocks(tok(_text(args.calib), return_tensors="pt").input_ids[0], args.seq_len)
        calib = blocks[: min(4, len(blocks))]

        def loss(m):
            return m(input_ids=calib, labels=calib).loss

        with torch.no_grad():
            info = prune_llama(model, args.ratio, run=lambda m: m(calib), blocks=args.blocks, criterion=args.criterion,
                               loss=loss if args.criterion == "taylor" else None)
        if args.recover_steps:
            model, losses = recover_lora(model, blocks, steps=args.recover_steps, seed=args.seed)
            info["recovery"] = {"steps": args.recover_steps, "first_loss": losses[0][1], "last_loss": losses[-1][1]}
        save_pretrained_atomic(model, args.out, tokenizer=tok)
        info.update({"model_dir": str(args.model_dir), "calib": str(args.calib), "seconds": time.perf_counter() - t0})
        atomic_write_json(args.out / "prune.json", info)
        print(f"wrote {args.out}: {info['params_before']:,} -> {info['params_after']:,} parameters "
              f"({info['ratio']:.1%} removed), blocks dropped {info['dropped_blocks']}, "
              f"{info['mlp_channels_removed_per_layer']} MLP channels removed per layer")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
