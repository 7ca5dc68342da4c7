r"""Domain vocabulary trimming: remove the embedding rows (and the tied output rows) of the tokens a domain never uses.

A causal LM's vocabulary is a structure like its MLP channels: token ``v`` owns row ``v`` of the input embedding
and of the output projection (``d`` parameters each; once when they are tied, as in SmolLM2, where the embedding is
49152 x 576 = 28.3 M of the 134.5 M parameters). Trimming keeps the set

    K = closure( tokens of the domain text  U  added/special tokens  U  the byte alphabet )

where the closure adds, for every kept BPE token, the two tokens its merge was made of (recursively). The trimmed
tokenizer keeps exactly the merges whose result is in ``K``, in their original order. Then:

- text whose original tokens all lie in ``K`` tokenizes to the *same* tokens (renumbered): the original BPE run
  only ever applied merges that build kept tokens (their results are ancestors of the final tokens, hence kept),
  and at every step the lowest-ranked applicable merge is one of them, so the restricted run makes the same
  choices;
- any other text still tokenizes: a word that needed a dropped token stops merging earlier and comes out as
  smaller kept pieces (down to single bytes), so nothing becomes unknown.

On kept tokens the trimmed model's logits are exactly the original's (same rows); its softmax renormalises over
``K``, i.e. the model can no longer spend probability on tokens outside the domain. Language-model quality must
then be compared per byte (bits per byte), or as perplexity per token of the *original* tokenization, since the
number of tokens of out-of-domain text changes.

Only a byte-level BPE tokenizer (``tokenizers`` ``BPE`` model) and a decoder-only LM whose vocabulary lives in
``get_input_embeddings`` / ``get_output_embeddings`` are supported; anything else is refused before the model is
touched.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["domain_vocabulary", "trim_tokenizer", "trim_embeddings", "remap_ids", "trim_vocabulary"]


def _spec(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"vocabulary trimming needs a fast (tokenizers-backed) tokenizer; got {type(tokenizer).__name__}")
    spec = json.loads(backend.to_str())
    if spec["model"]["type"] != "BPE":
        raise ValueError(f"vocabulary trimming supports BPE tokenizers; this one is {spec['model']['type']}")
    return spec


def _merges(spec: dict) -> list[tuple[str, str]]:
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in spec["model"]["merges"]]


def domain_vocabulary(tokenizer, token_ids: torch.Tensor | Iterable[int], *, min_count: int = 1) -> list[int]:
    """The ids to keep (sorted): every id occurring at least ``min_count`` times in ``token_ids`` (the domain text,
    tokenized by ``tokenizer``), the added/special tokens and the single-byte tokens, closed under BPE merge
    ancestry (module docstring)."""
    if not (isinstance(min_count, int) and min_count >= 1):
        raise ValueError(f"min_count={min_count!r} must be an int >= 1")
    spec = _spec(tokenizer)
    vocab: dict[str, int] = spec["model"]["vocab"]
    by_id = {i: t for t, i in vocab.items()}
    ids = torch.as_tensor(list(token_ids) if not isinstance(token_ids, torch.Tensor) else token_ids).long().flatten()
    if ids.numel() == 0:
        raise ValueError("domain_vocabulary: no tokens given; pass the tokenized domain text")
    if int(ids.min()) < 0:
        raise ValueError(f"domain_vocabulary: negative token id {int(ids.min())}")
    counts = torch.bincount(ids)
    seen = {int(i) for i in (counts >= min_count).nonzero().flatten()}
    added = {a["id"] for a in spec["added_tokens"]}
    unknown = sorted(seen - by_id.keys() - added)
    if unknown:
        raise ValueError(f"domain_vocabulary: ids {unknown[:5]} are not in the tokenizer's vocabulary; were these "
                         "tokens made by another tokenizer?")
    keep = {by_id[i] for i in seen if i in by_id}
    keep |= {t for t in vocab if len(t) == 1}  # the byte alphabet (every byte the tokenizer can emit alone)
    made = {a + b: (a, b) for a, b in _merges(spec)}
    stack = list(keep)
    while stack:
        for part in made.get(stack.pop(), ()):
            if part not in keep:
                keep.add(part)
                stack.append(part)
    return sorted({vocab[t] for t in keep} | added)


def _check_keep(keep: Sequence[int], size: int, what: str) -> torch.Tensor:
    idx = torch.as_tensor(list(keep), dtype=torch.long)
    if idx.numel() == 0 or idx.dim() != 1:
        raise ValueError(f"{what}: keep must be a non-empty list of token ids")
    if not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"{what}: keep must be sorted and without repeats (domain_vocabulary returns it so)")
    if int(idx[0]) < 0 or int(idx[-1]) >= size:
        raise ValueError(f"{what}: keep holds ids outside [0, {size}) ({int(idx[0])}..{int(idx[-1])})")
    return idx


def remap_ids(ids: torch.Tensor, keep: Sequence[int], vocab_size: int) -> torch.Tensor:
    """Original token ids -> trimmed ids (``keep[new] = old``); every id must be kept."""
    idx = _check_keep(keep, vocab_size, "remap_ids")
    table = torch.full((vocab_size,), -1, dtype=torch.long)
    table[idx] = torch.arange(idx.numel())
    out = table[ids.long()]
    if bool((out < 0).any()):
        lost = torch.unique(ids[out < 0])
        raise ValueError(f"remap_ids: {lost.numel()} token ids are outside the kept vocabulary (e.g. {lost[:5].tolist()}); "
                         "re-tokenize that text with the trimmed tokenizer instead")
    return out.to(ids.dtype)


def trim_tokenizer(tokenizer, keep: Sequence[int]):
    """A new tokenizer of the same class whose ids are ``0..len(keep)-1`` (``keep[new] = old``) and whose merges are
    those building kept tokens (module docstring). Every added/special token must be kept."""
    spec = _spec(tokenizer)
    model = spec["model"]
    idx = _check_keep(keep, max(len(model["vocab"]), 1 + max((a["id"] for a in spec["added_tokens"]), default=0)),
                      "trim_tokenizer")
    new_id = {old: new for new, old in enumerate(idx.tolist())}
    missing = [a["content"] for a in spec["added_tokens"] if a["id"] not in new_id]
    if missing:
        raise ValueError(f"trim_tokenizer: special/added tokens {missing[:5]} are not kept; keep them "
                         "(domain_vocabulary always does)")
    kept_tokens = {t for t, i in model["vocab"].items() if i in new_id}
    parts_ok = all(a in kept_tokens and b in kept_tokens for a, b in _merges(spec) if a + b in kept_tokens)
    if not parts_ok:
        raise ValueError("trim_tokenizer: keep is not closed under BPE merges (a kept token's parts are missing); "
                         "build it with domain_vocabulary")
    model["vocab"] = {t: new_id[i] for t, i in model["vocab"].items() if i in new_id}
    model["merges"] = [m for m, (a, b) in zip(model["merges"], _merges(spec)) if a + b in kept_tokens]
    for a in spec["added_tokens"]:
        a["id"] = new_id[a["id"]]
    for st in ((spec.get("post_processor") or {}).get("special_tokens") or {}).values():
        st["ids"] = [new_id[i] for i in st["ids"]]
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        (Path(tmp) / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
        cfg_path = Path(tmp) / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        if "added_tokens_decoder" in cfg:
            cfg["added_tokens_decoder"] = {str(new_id[int(k)]): v for k, v in cfg["added_tokens_decoder"].items()}
            cfg_path.write_text(json.dumps(cfg, ensure_ascii=False), encoding="utf-8")
        return AutoTokenizer.from_pretrained(tmp)


def trim_embeddings(model: nn.Module, keep: Sequence[int]) -> None:
    """Keep only rows ``keep`` of ``model``'s input embedding and output projection (tied ones stay tied), in place;
    ``config.vocab_size`` and the bos/eos/pad ids of the config and generation config are renumbered."""
    if getattr(model.config, "is_encoder_decoder", False) or hasattr(model.config, "text_config"):
        raise ValueError(f"vocabulary trimming supports decoder-only LMs; {type(model).__name__} is not one")
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if not isinstance(emb, nn.Embedding) or (out is not None and not isinstance(out, nn.Linear)):
        raise ValueError(f"vocabulary trimming needs an nn.Embedding input and an nn.Linear output; "
                         f"{type(model).__name__} has {type(emb).__name__} / {type(out).__name__}")
    idx = _check_keep(keep, emb.num_embeddings, "trim_embeddings")
    new_id = {old: new for new, old in enumerate(idx.tolist())}
    special = []  # (config, attribute, renumbered value), all checked before anything changes
    for cfg in (model.config, getattr(model, "generation_config", None)):
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            v = getattr(cfg, name, None) if cfg is not None else None
            if v is None:
                continue
            for i in v if isinstance(v, list) else [v]:
                if i not in new_id:
                    raise ValueError(f"trim_embeddings: {name}={i} is not kept; add it to keep")
            special.append((cfg, name, [new_id[i] for i in v] if isinstance(v, list) else new_id[v]))
    tied = out is not None and out.weight is emb.weight
    new_emb = nn.Embedding(idx.numel(), emb.embedding_dim, dtype=emb.weight.dtype)
    new_emb.weight = nn.Parameter(emb.weight.data[idx].clone(), requires_grad=emb.weight.requires_grad)
    model.set_input_embeddings(new_emb)
    if out is not None:
        new_out = nn.Linear(out.in_features, idx.numel(), bias=out.bias is not None, dtype=out.weight.dtype)
        new_out.weight = new_emb.weight if tied else nn.Parameter(out.weight.data[idx].clone())
        if out.bias is not None:
            new_out.bias = nn.Parameter(out.bias.data[idx].clone())
        model.set_output_embeddings(new_out)
    model.config.vocab_size = idx.numel()
    for cfg, name, v in special:
        setattr(cfg, name, v)


def trim_vocabulary(model: nn.Module, tokenizer, domain_ids: torch.Tensor, *, min_count: int = 1):
    """:func:`domain_vocabulary` of ``domain_ids``, then :func:`trim_tokenizer` and :func:`trim_embeddings` (in
    place). Returns ``(trimmed tokenizer, keep)``; nothing is changed if any step refuses."""
    keep = domain_vocabulary(tokenizer, domain_ids, min_count=min_count)
    n = model.get_input_embeddings().num_embeddings
    if keep[-1] >= n:
        raise ValueError(f"the tokenizer has ids up to {keep[-1]} but the model's embedding has {n} rows")
    new_tok = trim_tokenizer(tokenizer, keep)
    trim_embeddings(model, keep)
    return new_tok, keep
