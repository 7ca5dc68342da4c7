"""``python -m ann.prune``: structural pruning of a local Hugging Face model, with optional recovery.

    python -m ann.prune MODEL_DIR --ratio 0.3 [--blocks K] --calib TASK_OR_TEXT_FILE [--recover-steps S]
        [--recover-ce] [--trim-vocab] [--speedup X] --out OUT_DIR

Searches which blocks, attention heads and MLP channels to remove, tower by tower, until ``ratio`` of the
parameters are gone (:mod:`ann.prune.plan`). With ``--trim-vocab`` (decoder-only text models with a BPE
tokenizer) the vocabulary is first cut to the tokens the calibration text uses (:mod:`ann.prune.vocab`; the
trimmed tokenizer is saved with the model; other text still tokenizes, into smaller pieces), and the search
removes the rest of ``ratio`` (of the original parameter count). With ``--speedup X`` the search is latency-aware:
it also cuts until the calibration forward's time, as modelled from timings on this machine
(:mod:`ann.prune.latency`), is ``X`` times lower (than the model's after any vocabulary trimming). It optionally
recovers by distilling from the unpruned model for ``S`` steps (:mod:`ann.prune.recover`; ``--recover-ce`` adds
next-token cross-entropy on the calibration text, i.e. domain fine-tuning), and writes an ordinary HF model folder
(``from_pretrained`` loads it) plus ``prune.json``. Calibration inputs by family (``ann.models.hf.load_pretrained`` dispatches):

- Llama-family and BERT-family models: a UTF-8 text file, or a text task (``stdlib``, ``humaneval``);
- ViT models: ``synthmed`` (SynthMed scans, resized to the model's image size and channels);
- the MFM (``neuromfm_llava``): ``synthmed`` (its VQA prompts; distance on the answer-slot logits).

Anything else is refused before the model is touched. Exit status 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


_IMAGES = 1000  # SynthMed training images the search and the recovery of an image model draw from


def _text(calib: Path) -> str:
    from tasks.calib import TEXT_TASKS, calibration_text

    if calib.is_file():
        return calib.read_text(encoding="utf-8", errors="replace")
    if str(calib) in TEXT_TASKS:
        return calibration_text(str(calib), max_bytes=400_000)
    raise FileNotFoundError(f"--calib {calib}: not a file, and not a text task ({', '.join(TEXT_TASKS)})")


def _need_synthmed(calib: Path, family: str) -> None:
    if str(calib) != "synthmed":
        raise ValueError(f"--calib {calib}: a {family} model calibrates on images; use --calib synthmed")


def _text_data(loaded, args):
    """(search batch, recovery batch_fn, forward, distance) for a text model."""
    import torch

    from ann.train.code import block_batch_fn, make_blocks

    tok = loaded.tokenizer_or_processor
    if tok is None:
        raise ValueError(f"{args.model_dir}: no tokenizer files; save the tokenizer next to the model")
    blocks = make_blocks(tok(_text(args.calib), return_tensors="pt").input_ids[0], args.seq_len)
    blocks = blocks.clamp_max(loaded.config.vocab_size - 1) if hasattr(loaded.config, "vocab_size") else blocks
    calib = {"input_ids": blocks[: min(args.calib_samples, len(blocks))]}
    with torch.no_grad():
        out = loaded.model(**calib)
    has_logits = getattr(out, "logits", None) is not None

    def forward(m, batch):
        o = m(input_ids=batch["input_ids"])
        return o.logits if has_logits else o.last_hidden_state

    return calib, block_batch_fn(blocks, batch_size=4, seed=args.seed), forward, "kl" if has_logits else "mse"


def _vit_data(loaded, args):
    import torch

    from tasks.synthmed import SynthMedConfig, load_synthmed

    _need_synthmed(args.calib, "ViT")
    c = loaded.config
    imgs = torch.tensor(load_synthmed("train", SynthMedConfig(n_train=_IMAGES)).images)  # (M, 1, S, S), a copy
    imgs = torch.nn.functional.interpolate(imgs, size=(c.image_size, c.image_size), mode="bilinear",
                                           align_corners=False).expand(-1, c.num_channels, -1, -1).contiguous()
    with torch.no_grad():
        has_logits = getattr(loaded.model(pixel_values=imgs[:2]), "logits", None) is not None

    def forward(m, batch):
        o = m(pixel_values=batch["pixel_values"])
        return o.logits if has_logits else o.last_hidden_state

    def batch_fn(step, rank, world):
        g = torch.Generator().manual_seed(args.seed * 100_003 + step)
        return {"pixel_values": imgs[torch.randint(len(imgs), (16,), generator=g)]}

    return {"pixel_values": imgs[: args.calib_samples]}, batch_fn, forward, "kl" if has_logits else "mse"


def _mfm_data(loaded, args):
    from ann.train.vqa import encode_vqa, target_logits, vqa_batch_fn
    from tasks.synthmed import SynthMedConfig, load_synthmed

    _need_synthmed(args.calib, "MFM")
    if loaded.config.model_type != "neuromfm_llava":
        raise ValueError(f"{args.model_dir}: a generic LLaVA needs its processor's prompt format for calibration; the "
                         "CLI knows the MFM's (neuromfm_llava). From Python, call ann.prune.plan.prune with your own run")
    tok = loaded.tokenizer_or_processor
    model = loaded.model
    size = model.config.vision_config.image_size
    cfg = SynthMedConfig(image_size=size, n_train=_IMAGES)
    train = encode_vqa(load_synthmed("train", cfg), tok, model.num_visual_tokens)
    calib = vqa_batch_fn(train, images_per_batch=min(args.calib_samples, len(train.images)), seed=args.seed + 1)(0, 0, 1)
    return calib, vqa_batch_fn(train, images_per_batch=32, seed=args.seed), target_logits, "kl"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ann.prune", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path, help="a Hugging Face model folder (config.json, safetensors weights, tokenizer)")
    p.add_argument("--ratio", type=float, required=True, help="fraction of the parameters to remove, in [0, 1)")
    p.add_argument("--blocks", type=int, default=None,
                   help="drop exactly this many blocks of the largest tower first (default: the search decides)")
    p.add_argument("--calib", type=Path, required=True,
                   help="text models: a UTF-8 text file or a text task (stdlib, humaneval); ViT and the MFM: synthmed")
    p.add_argument("--criterion", choices=("magnitude", "wanda", "taylor"), default="wanda", help="unit importance")
    p.add_argument("--calib-samples", type=int, default=4, help="text blocks / images in the search's calibration batch")
    p.add_argument("--recover-steps", type=int, default=0, help="distillation steps from the unpruned model (0: none)")
    p.add_argument("--recover-ce", action="store_true",
                   help="causal LMs: add next-token cross-entropy on the calibration text to the distillation loss "
                        "(recovery becomes domain fine-tuning too)")
    p.add_argument("--lora-rank", type=int, default=0, help="recover through LoRA adapters of this rank (0: all weights)")
    p.add_argument("--lr", type=float, default=1e-4, help="recovery learning rate")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per text calibration / recovery block")
    p.add_argument("--trim-vocab", action="store_true",
                   help="text LMs: first drop the vocabulary the calibration text never uses (counts toward --ratio)")
    p.add_argument("--vocab-min-count", type=int, default=1,
                   help="with --trim-vocab: keep tokens the calibration text uses at least this often (and their BPE parts)")
    p.add_argument("--speedup", type=float, default=None,
                   help="also cut until the modelled calibration-forward time is this many times lower (>= 1; "
                        "after --trim-vocab, counted from the trimmed model)")
    p.add_argument("--out", type=Path, required=True, help="output folder (the pruned model + prune.json)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        import copy
        import dataclasses

        import torch

        from ann.checkpoint import save_pretrained_atomic
        from ann.models.hf import ModelFamily, load_pretrained
        from ann.prune.plan import count_params, prune
        from ann.prune.recover import kd_loss, next_token_loss, recover
        from ann.prune.surgery import towers
        from ann.prune.vocab import trim_vocabulary
        from tasks.io import atomic_write_json

        torch.manual_seed(args.seed)
        if not 0.0 <= args.ratio < 1.0:  # before loading anything (ann.prune.plan.prune checks it again)
            raise ValueError(f"--ratio {args.ratio}: the fraction of parameters to remove must be in [0, 1)")
        if args.speedup is not None and args.speedup < 1:
            raise ValueError(f"--speedup {args.speedup}: a latency factor >= 1 (1.3 = 1.3 times faster)")
        for name, v, lo in (("--recover-steps", args.recover_steps, 0), ("--lora-rank", args.lora_rank, 0),
                            ("--calib-samples", args.calib_samples, 1), ("--vocab-min-count", args.vocab_min_count, 1)):
            if v < lo:
                raise ValueError(f"{name} {v}: use {lo} or more")
        t0 = time.perf_counter()
        loaded = load_pretrained(args.model_dir)
        model = loaded.model.eval()
        towers(model)  # refuses an unknown layout before any work
        if args.recover_ce and loaded.family != ModelFamily.LLAMA:
            raise ValueError(f"--recover-ce: next-token loss needs a causal LM; {args.model_dir} is a "
                             f"{loaded.family.value} model")
        p0, trimmed = count_params(model), None
        if args.trim_vocab:
            tok = loaded.tokenizer_or_processor
            if loaded.family != ModelFamily.LLAMA or tok is None:
                raise ValueError(f"--trim-vocab: needs a decoder-only text model with its tokenizer; "
                                 f"{args.model_dir} is a {loaded.family.value} model"
                                 + ("" if tok is not None else " without tokenizer files"))
            new_tok, keep = trim_vocabulary(model, tok, tok(_text(args.calib), return_tensors="pt").input_ids[0],
                                            min_count=args.vocab_min_count)
            loaded = dataclasses.replace(loaded, tokenizer_or_processor=new_tok, config=model.config)
            trimmed = {"vocab_before": len(tok), "vocab_after": len(keep), "params_after": count_params(model)}
            print(f"vocabulary {len(tok):,} -> {len(keep):,} tokens: {p0:,} -> {trimmed['params_after']:,} parameters")
        ratio = 1 - (1 - args.ratio) * p0 / count_params(model)  # of what is left, to reach args.ratio of p0
        if ratio < 0:
            raise ValueError(f"--ratio {args.ratio}: trimming the vocabulary alone removes "
                             f"{1 - count_params(model) / p0:.3f} of the parameters; ask for at least that much")
        data = {ModelFamily.LLAMA: _text_data, ModelFamily.BERT: _text_data, ModelFamily.VIT: _vit_data,
                ModelFamily.LLAVA: _mfm_data}[loaded.family]
        calib, batch_fn, forward, distance = data(loaded, args)
        teacher = copy.deepcopy(model) if args.recover_steps else None

        if args.criterion == "taylor" and distance != "kl":
            raise ValueError("--criterion taylor needs a model with logits (its loss); use wanda or magnitude")

        def loss(m):  # taylor's calibration loss, label-free: cross-entropy against the model's own predictions
            logits = forward(m, calib).float().flatten(0, -2)
            return torch.nn.functional.cross_entropy(logits, logits.detach().argmax(-1))

        with torch.no_grad():
            info = prune(model, ratio, run=lambda m: forward(m, calib), blocks=args.blocks, criterion=args.criterion,
                         loss=loss if args.criterion == "taylor" else None, distance=distance, speedup=args.speedup,
                         progress=print)
        if args.recover_steps:
            loss_fn = kd_loss(teacher, forward, distance=distance, task_loss=next_token_loss if args.recover_ce else None)
            model, losses = recover(model, batch_fn, loss_fn, steps=args.recover_steps,
                                    lr=args.lr, lora_rank=args.lora_rank or None, seed=args.seed)
            info["recovery"] = {"steps": args.recover_steps, "lora_rank": args.lora_rank or None, "lr": args.lr,
                                "loss": "distillation" + (" + next-token cross-entropy" if args.recover_ce else ""),
                                "first_loss": losses[0][1], "last_loss": losses[-1][1]}
        if trimmed:
            info["vocabulary"] = trimmed
        info.update({"search_ratio": info["ratio"], "ratio_target": args.ratio, "params_before": p0, "ratio": 1 - info["params_after"] / p0})
        save_pretrained_atomic(model, args.out, tokenizer=loaded.tokenizer_or_processor)
        info.update({"model_dir": str(args.model_dir), "calib": str(args.calib), "seconds": time.perf_counter() - t0})
        atomic_write_json(args.out / "prune.json", info)
        print(f"wrote {args.out}: {info['params_before']:,} -> {info['params_after']:,} parameters "
              f"({info['ratio']:.1%} removed); " + "; ".join(
                  f"{n}: {t['layers']} layers, {t['heads']} heads, MLP {t['intermediate_size']}" for n, t in info["towers"].items()))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
