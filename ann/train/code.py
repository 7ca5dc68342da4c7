"""``python -m ann.train code-lm --preset tiny|small --out DIR``: train a small Llama on the stdlib code corpus.

The model (:mod:`ann.models.code_lm`) uses SmolLM2's tokenizer, so it can draft for SmolLM2. Data: the
``"train"`` split of :func:`tasks.code.load_stdlib_corpus`; each file becomes ``[BOS] + tokens + [EOS]``, the
files are concatenated in corpus order and cut into blocks of ``--seq-len`` tokens (the remainder is dropped).
The token ids are cached (safetensors) under ``<cache>/code_tokens/`` (see :func:`ann.models.smollm2.cache_root`),
keyed by the tokenizer, the corpus split settings and the files' contents.

Objective: next-token cross-entropy, the mean over the ``seq_len - 1`` predictions of each block of the
global batch (HF ``labels=input_ids``). Batches: block ``perm_e[g mod n_blocks]`` for global sample index
``g = step * batch + j``, where ``perm_e`` is a permutation of the blocks drawn from ``(seed, epoch e =
g // n_blocks)``: a pure function of the step, so a resumed or DDP run sees exactly the same data.

``--teacher smollm2`` trains a *draft* for speculative decoding instead: the loss becomes
``KL(p_SmolLM2 || p_student) + cross-entropy`` per position (:func:`ann.prune.recover.kd_loss`, both forwards
under CPU bfloat16 autocast), so the student learns SmolLM2's distribution, which is what decides how many of its
guesses SmolLM2 accepts (the acceptance rate is ``1 - TV(p, q)`` for sampling, Leviathan et al. 2023).

Reported: bits per byte (:func:`ann.eval.lm.bits_per_byte`) on held-out ``"test"`` files, whole files taken
in a fixed hash order until ``--eval-bytes`` (:func:`held_out_files`). Writes ``DIR/model`` (HF
``save_pretrained`` + SmolLM2 tokenizer), ``DIR/metrics.json`` and ``DIR/checkpoint`` (resume state).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from ann.checkpoint import save_pretrained_atomic
from ann.eval.lm import bits_per_byte
from ann.models.code_lm import CODE_LM_PRESETS, build_code_lm, count_parameters
from ann.models.smollm2 import cache_root, load_smollm2_tokenizer
from tasks.dist import DistInfo, init_distributed, shard
from tasks.training import LoopConfig, train_loop
from tasks.code import CodeCorpusConfig, CodeFile, load_stdlib_corpus
from tasks.io import atomic_write_json, load_tensors, save_tensors

__all__ = [
    "EvalProtocol",
    "add_arguments",
    "run",
    "encode_files",
    "stdlib_token_stream",
    "make_blocks",
    "block_batch_fn",
    "lm_loss",
    "held_out_files",
    "unigram_bits_per_byte",
]

_TOKENS_FORMAT = "neuromfm-code-tokens-v1"

# Measured on the shared 2-core machine (with another training job on it): "tiny" 565 s of training for 100
# steps of 4 x 512 tokens (lr 1e-2 was worse: 2.86 vs 2.73 bpb); "small" 801 s for 120 steps of 2 x 512 tokens.
# Both are far from converged (< 0.1 epoch): at these budgets they only just beat the unigram baseline.
_DEFAULTS = {"tiny": {"steps": 100, "lr": 3e-3, "batch_size": 4}, "small": {"steps": 120, "lr": 3e-3, "batch_size": 2}}


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalProtocol:
    """How held-out bits per byte are measured (the same for every model compared on the stdlib corpus).

    Attributes:
        eval_bytes: budget of held-out UTF-8 bytes; whole files are taken (see :func:`held_out_files`).
        context: tokens per window (``bits_per_byte`` ``context``).
        stride: window step (``bits_per_byte`` ``stride``), in [1, context - 1].
        batch_size: windows per forward pass.
        split: the corpus split the files come from.
    """

    eval_bytes: int = 200_000
    context: int = 512
    stride: int = 384
    batch_size: int = 4
    split: str = "test"

    def __post_init__(self) -> None:
        if isinstance(self.eval_bytes, bool) or not isinstance(self.eval_bytes, int) or self.eval_bytes < 1:
            raise ValueError(f"EvalProtocol.eval_bytes={self.eval_bytes!r} is invalid: use a positive int (bytes)")
        if not isinstance(self.context, int) or self.context < 2:
            raise ValueError(f"EvalProtocol.context={self.context!r} is invalid: use an int >= 2")
        if not isinstance(self.stride, int) or not 1 <= self.stride < self.context:
            raise ValueError(f"EvalProtocol.stride={self.stride!r} is invalid: use an int in [1, context - 1]")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"EvalProtocol.batch_size={self.batch_size!r} is invalid: use a positive int")
        if self.split not in ("train", "val", "test"):
            raise ValueError(f"EvalProtocol.split={self.split!r} is invalid: use 'val' or 'test'")

    def evaluate(self, model, tokenizer, *, config: CodeCorpusConfig | None = None, progress: bool = True) -> dict:
        """Bits per byte of ``model`` on this protocol's held-out files: the BpbResult fields plus ``n_files``."""
        files = held_out_files(self.eval_bytes, split=self.split, config=config)
        res = bits_per_byte(model, tokenizer, [f.text for f in files], context=self.context, stride=self.stride,
                            batch_size=self.batch_size, progress=progress)
        return {**res.to_dict(), "n_files": len(files)}


def held_out_files(max_bytes: int, *, split: str = "test", config: CodeCorpusConfig | None = None) -> list[CodeFile]:
    """Whole files of ``split``, in the order of ``sha256("neuromfm-eval\\0" + relpath)``, each kept if the running
    total stays within ``max_bytes`` (so smaller files later in the order still fill the budget). Deterministic
    and machine-independent; returned in relpath order."""
    files = sorted(load_stdlib_corpus(split, config), key=lambda f: hashlib.sha256(f"neuromfm-eval\0{f.relpath}".encode()).digest())
    chosen, total = [], 0
    for f in files:
        if total + f.n_bytes <= max_bytes:
            chosen.append(f)
            total += f.n_bytes
    if not chosen:
        raise ValueError(f"held_out_files: no {split} file fits in max_bytes={max_bytes}; raise the budget")
    return sorted(chosen, key=lambda f: f.relpath)


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.sha256(f"{spec}\0{tokenizer.bos_token_id}\0{tokenizer.eos_token_id}".encode()).hexdigest()


def encode_files(files: Sequence[CodeFile], tokenizer, *, progress: bool = False) -> torch.Tensor:
    """``[BOS] + tokens(file) + [EOS]`` for each file, concatenated: a 1-D int32 tensor (no BOS if the tokenizer
    has none). Files are tokenized independently, as :func:`ann.eval.lm.bits_per_byte` does."""
    if tokenizer.eos_token_id is None:
        raise ValueError("encode_files: the tokenizer has no EOS token to separate files; set tokenizer.eos_token")
    bos = [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]
    eos = [int(tokenizer.eos_token_id)]
    out: list[int] = []
    chunk = 64  # files per tokenizer call (the fast tokenizer batches them)
    for i in tqdm(range(0, len(files), chunk), desc="tokenize", disable=not progress, leave=False):
        for ids in tokenizer([f.text for f in files[i : i + chunk]], add_special_tokens=False)["input_ids"]:
            out.extend(bos + list(ids) + eos)
    return torch.tensor(out, dtype=torch.int32)


def stdlib_token_stream(split: str, tokenizer, *, cache_dir=None, config: CodeCorpusConfig | None = None,
                        progress: bool = True) -> torch.Tensor:
    """:func:`encode_files` of a stdlib split, cached at ``<cache>/code_tokens/stdlib-<split>-<key>.safetensors``
    (key: tokenizer fingerprint, corpus settings and a hash of every file's path and text)."""
    config = CodeCorpusConfig() if config is None else config
    files = load_stdlib_corpus(split, config)
    h = hashlib.sha256(f"{_TOKENS_FORMAT}\0{_tokenizer_fingerprint(tokenizer)}\0{dataclasses.asdict(config)}".encode())
    for f in files:
        h.update(f"\0{f.relpath}\0".encode())
        h.update(f.text.encode("utf-8"))
    path = cache_root(cache_dir) / "code_tokens" / f"stdlib-{split}-{h.hexdigest()[:20]}.safetensors"
    if path.is_file():
        return load_tensors(path, what="cached code tokens")["ids"]
    ids = encode_files(files, tokenizer, progress=progress)
    save_tensors(path, {"ids": ids}, metadata={"format": _TOKENS_FORMAT, "split": split, "n_files": str(len(files))})
    return ids


def make_blocks(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a 1-D token stream into ``(n_blocks, seq_len)`` consecutive blocks (the remainder is dropped)."""
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"make_blocks: seq_len={seq_len!r} must be an int >= 2")
    n = stream.numel() // seq_len
    if n == 0:
        raise ValueError(f"make_blocks: {stream.numel()} tokens hold no block of seq_len={seq_len}; lower seq_len")
    return stream[: n * seq_len].view(n, seq_len)  # (N, T)


def block_batch_fn(blocks: torch.Tensor, *, batch_size: int, seed: int) -> Callable[[int, int, int], dict]:
    """``batch_fn(step, rank, world_size)`` for :func:`tasks.training.train_loop` (sampling rule in the module doc):
    this rank's share of the global batch of ``batch_size`` blocks, as ``{"input_ids": (B/world, T) long}``."""
    n = blocks.shape[0]

    @lru_cache(maxsize=2)
    def perm(epoch: int) -> torch.Tensor:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))

    def batch_fn(step: int, rank: int, world_size: int) -> dict:
        g = [step * batch_size + j for j in range(batch_size)]
        idx = torch.stack([perm(i // n)[i % n] for i in g])
        part = idx[shard(batch_size, DistInfo(rank=rank, world_size=world_size))]
        return {"input_ids": blocks[part].long()}

    return batch_fn


def lm_loss(model, batch: dict) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) of a batch of blocks (HF shifts ``labels`` inside)."""
    return model(input_ids=batch["input_ids"], labels=batch["input_ids"]).loss


def unigram_bits_per_byte(train_stream: torch.Tensor, tokenizer, files: Sequence[CodeFile], *, vocab_size: int) -> float:
    """Baseline: bits per byte of ``files`` under the add-one-smoothed unigram of the training tokens,
    ``p(v) = (count(v) + 1) / (n + V)``, scoring the same tokens as :func:`encode_files` minus BOS (EOS included)."""
    counts = torch.bincount(train_stream.long(), minlength=vocab_size).double()  # (V,)
    logp = torch.log((counts + 1.0) / (counts.sum() + vocab_size))
    held = encode_files(files, tokenizer).long()
    if tokenizer.bos_token_id is not None:
        held = held[held != tokenizer.bos_token_id]
    n_bytes = sum(f.n_bytes for f in files)
    return float(-logp[held].sum() / (torch.log(torch.tensor(2.0, dtype=torch.float64)) * n_bytes))


def load_teacher(*, cache_dir=None):
    """SmolLM2-135M, the ``--teacher smollm2`` model (eval mode)."""
    from ann.models.smollm2 import load_smollm2

    return load_smollm2(cache_dir=cache_dir, progress=False)[0]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(CODE_LM_PRESETS), default="tiny", help="model shape")
    p.add_argument("--out", type=Path, required=True, help="output folder (model/, metrics.json, checkpoint/)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default: per preset)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: per preset)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch, in blocks (default: per preset)")
    p.add_argument("--seq-len", type=int, default=512, help="tokens per training block")
    p.add_argument("--eval-bytes", type=int, default=EvalProtocol.eval_bytes, help="held-out test bytes for bpb")
    p.add_argument("--eval-context", type=int, default=EvalProtocol.context, help="bpb window (tokens)")
    p.add_argument("--eval-stride", type=int, default=EvalProtocol.stride, help="bpb window step (tokens)")
    p.add_argument("--val-bytes", type=int, default=30_000, help="val-split bytes for bpb during training")
    p.add_argument("--eval-every", type=int, default=0, help="val bpb every N steps (0: only at the end)")
    p.add_argument("--checkpoint-every", type=int, default=50, help="checkpoint every N steps")
    p.add_argument("--corpus-root", default=None, help="read this folder instead of the stdlib (CodeCorpusConfig.root)")
    p.add_argument("--cache-dir", type=Path, default=None, help="cache root (default $NEUROMFM_CACHE or .cache/neuromfm)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start over even if DIR/checkpoint exists")
    p.add_argument("--teacher", choices=("none", "smollm2"), default="none",
                   help="smollm2: distil from SmolLM2-135M (KL + cross-entropy), e.g. to train a speculative draft")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> dict:
    info = init_distributed()
    t0 = time.perf_counter()
    spec = CODE_LM_PRESETS[args.preset]
    steps = args.steps if args.steps is not None else _DEFAULTS[args.preset]["steps"]
    lr = args.lr if args.lr is not None else _DEFAULTS[args.preset]["lr"]
    batch_size = args.batch_size if args.batch_size is not None else _DEFAULTS[args.preset]["batch_size"]
    if args.seq_len > spec.max_position_embeddings or args.eval_context > spec.max_position_embeddings:
        raise ValueError(f"--seq-len/--eval-context must be <= max_position_embeddings={spec.max_position_embeddings}")
    progress = not args.quiet
    tok = load_smollm2_tokenizer(cache_dir=args.cache_dir)
    if (tok.bos_token_id, tok.eos_token_id, len(tok)) != (spec.bos_token_id, spec.eos_token_id, spec.vocab_size):
        raise ValueError(f"tokenizer (bos {tok.bos_token_id}, eos {tok.eos_token_id}, {len(tok)} tokens) does not match "
                         f"the code LM preset (bos {spec.bos_token_id}, eos {spec.eos_token_id}, {spec.vocab_size})")
    model = build_code_lm(spec, seed=args.seed)
    corpus = CodeCorpusConfig(root=None if args.corpus_root is None else str(args.corpus_root))
    stream = stdlib_token_stream("train", tok, cache_dir=args.cache_dir, config=corpus, progress=progress)
    blocks = make_blocks(stream, args.seq_len)
    final = EvalProtocol(eval_bytes=args.eval_bytes, context=args.eval_context, stride=args.eval_stride)
    val = dataclasses.replace(final, eval_bytes=args.val_bytes, split="val")
    loop = LoopConfig(steps=steps, lr=lr, warmup_steps=min(30, steps // 10), weight_decay=0.1,
                      eval_every=args.eval_every, checkpoint_every=args.checkpoint_every, seed=args.seed)
    loss_fn = lm_loss
    if args.teacher == "smollm2":
        from ann.prune.recover import kd_loss, next_token_loss

        teacher = load_teacher(cache_dir=args.cache_dir)
        if teacher.config.vocab_size != spec.vocab_size:
            raise ValueError(f"--teacher smollm2: its vocabulary ({teacher.config.vocab_size}) is not the preset's "
                             f"({spec.vocab_size}); a draft must share the teacher's tokens")
        loss_fn = kd_loss(teacher, lambda m, b: m(input_ids=b["input_ids"]).logits, bf16=True, task_loss=next_token_loss)
    result = train_loop(model, batch_fn=block_batch_fn(blocks, batch_size=batch_size, seed=args.seed),
                        loss_fn=loss_fn, config=loop, out_dir=args.out,
                        evaluate=lambda m: {"val_bpb": val.evaluate(m, tok, config=corpus, progress=False)["bits_per_byte"]},
                        resume=not args.no_resume, progress=progress, desc=f"code-lm-{args.preset}")
    metrics: dict = {}
    if info.is_main:
        t_eval = time.perf_counter()
        test = final.evaluate(model, tok, config=corpus, progress=progress)
        unigram = unigram_bits_per_byte(stream, tok, held_out_files(final.eval_bytes, config=corpus),
                                        vocab_size=spec.vocab_size)
        eval_seconds = time.perf_counter() - t_eval
        save_pretrained_atomic(model, args.out / "model", tokenizer=tok)
        tokens_per_step = batch_size * args.seq_len
        metrics = {
            "task": "code-lm-stdlib", "preset": args.preset, "spec": dataclasses.asdict(spec), "teacher": args.teacher,
            "objective": "KL(teacher || student) + next-token cross-entropy (bf16 autocast)" if args.teacher != "none"
            else "next-token cross-entropy",
            "params": count_parameters(model), "train_blocks": int(blocks.shape[0]), "seq_len": args.seq_len,
            "batch_size": batch_size, "tokens_seen": steps * tokens_per_step,
            "epochs": steps * batch_size / blocks.shape[0], "loop": dataclasses.asdict(loop),
            "eval_protocol": dataclasses.asdict(final), "world_size": info.world_size,
            "train_seconds": result.train_seconds, "eval_seconds": eval_seconds,
            "wall_seconds": time.perf_counter() - t0, "resumed_from_step": result.start_step,
            "final_loss": result.losses[-1][1] if result.losses else None,
            "val": result.final_eval, "val_history": result.evals, "test": test,
            "test_bits_per_byte": test["bits_per_byte"], "unigram_test_bits_per_byte": unigram,
            "torch_threads": torch.get_num_threads(),
        }
        atomic_write_json(args.out / "metrics.json", metrics)
    return metrics
