"""Language-model evaluation: bits per byte of held-out text, for any HF causal LM and tokenizer.

Bits per byte (bpb) is tokenizer-independent, so models with different vocabularies compare on it::

    bpb = sum_i sum_p nll(x_{i,p} | x_{i,b(p)} ... x_{i,p-1})  /  (ln 2 * sum_i len(utf8(text_i)))

Symbols: ``text_i`` is the i-th text, tokenized on its own (no special tokens) into ``x_{i,1} ... x_{i,N_i}``,
with ``x_{i,0}`` = BOS prepended when the tokenizer has one (BOS is context, never scored). ``nll`` is the
negative natural log-probability the model gives the token (nats). ``p`` runs over ``1 ... N_i``; without a
BOS the first token has no context and is not scored either (its bytes still count in the denominator, so
the figure is then a slight under-estimate). ``b(p)`` is where the window that scores token ``p`` starts.

Windows (``C`` = ``context``, ``S`` = ``stride``, ``1 <= S <= C - 1``; positions ``0 ... N`` of one text)::

    window k covers positions [k*S, e_k),  e_k = min(k*S + C, N + 1),  k = 0, 1, ... until e_k = N + 1
    window k scores positions [e_{k-1}, e_k)   (e_{-1} = 1)

so every position ``p >= 1`` is scored exactly once, in the first window that reaches it:
``k(p) = max(0, floor((p - C) / S) + 1)`` and ``b(p) = k(p) * S``; ``S <= C - 1`` guarantees
``b(p) <= p - 1``, i.e. the token before ``p`` is in the window. The model never sees more than ``C`` tokens at
once; a token scored in window ``k >= 1`` has at least ``C - S`` tokens of left context. A text of at most ``C``
positions is one window, i.e. plain full-context scoring. ``S = C - 1`` (windows overlapping by the one token
they need as context) is the cheapest; smaller ``S`` costs about ``C / S`` times more and gives the later
tokens more context.

Also reported: nats per token ``= total_nll / n_tokens`` and perplexity ``= exp(nats per token)`` (per-token
figures depend on the tokenizer; bpb does not). Reference: the sliding-window perplexity of the HF guide
"Perplexity of fixed-length models"; bpb as in Gao et al., "The Pile" (2020), section 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

__all__ = ["BpbResult", "bits_per_byte", "score_windows"]


@dataclass(frozen=True, kw_only=True)
class BpbResult:
    """Held-out language-modelling figures (definitions in the module docstring).

    Attributes:
        bits_per_byte: total NLL in bits / total UTF-8 bytes.
        nats_per_token: total NLL in nats / scored tokens.
        n_tokens: scored tokens (BOS excluded).
        n_bytes: UTF-8 bytes of all texts.
        perplexity: ``exp(nats_per_token)``.
        total_nats: total NLL in nats (sum over every scored token).
    """

    bits_per_byte: float
    nats_per_token: float
    n_tokens: int
    n_bytes: int
    perplexity: float
    total_nats: float

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def score_windows(n_positions: int, *, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows of one sequence of ``n_positions`` tokens (position 0 is context only): a list of
    ``(begin, end, first_scored)``; the window feeds tokens ``[begin, end)`` and scores ``[first_scored, end)``
    (see the module docstring)."""
    _check(context, stride, 1)
    if n_positions < 2:
        return []
    out: list[tuple[int, int, int]] = []
    prev_end, begin = 1, 0
    while prev_end < n_positions:
        end = min(begin + context, n_positions)
        if end > prev_end:
            out.append((begin, end, prev_end))
            prev_end = end
        begin += stride
    return out


def _check(context: int, stride: int, batch_size: int) -> None:
    if isinstance(context, bool) or not isinstance(context, int) or context < 2:
        raise ValueError(f"bits_per_byte: context={context!r} must be an int >= 2 (tokens the model sees at once)")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= context - 1:
        raise ValueError(f"bits_per_byte: stride={stride!r} must be an int in [1, context - 1 = {context - 1}] "
                         "(each window must hold the token before its first scored one); use None for context // 2")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"bits_per_byte: batch_size={batch_size!r} must be an int >= 1")


@torch.no_grad()
def bits_per_byte(
    model: nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    context: int = 512,
    stride: int | None = None,
    batch_size: int = 4,
    progress: bool = True,
) -> BpbResult:
    """Bits per byte of ``texts`` under ``model`` (maths and windowing in the module docstring).

    Args:
        model: an HF causal LM (``model(input_ids=..., attention_mask=...).logits`` of shape (B, T, V)).
        tokenizer: its tokenizer (called with ``add_special_tokens=False``; ``bos_token_id`` is prepended if set).
        texts: the texts; each is scored on its own.
        context: tokens per window, ``C``.
        stride: window step ``S`` in ``[1, C - 1]``; None means ``C // 2``.
        batch_size: windows per forward pass (right-padded; padding is masked and never scored).
        progress: show a progress bar over windows.

    The model is put in eval mode for the call and its training mode is restored afterwards.
    """
    if isinstance(texts, str):
        raise TypeError("bits_per_byte: texts must be a sequence of strings, not one string; wrap it in a list")
    stride = max(1, context // 2) if stride is None and isinstance(context, int) else stride
    _check(context, stride, batch_size)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if n_bytes == 0:
        raise ValueError("bits_per_byte: the texts hold no bytes; pass at least one non-empty text")

    bos = getattr(tokenizer, "bos_token_id", None)
    prefix = [] if bos is None else [int(bos)]
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    seqs = [prefix + list(ids) for ids in encoded]
    # Every window of every text: (text index, begin, end, first scored position).
    windows = [(i, b, e, s) for i, ids in enumerate(seqs) for b, e, s in score_windows(len(ids), context=context, stride=stride)]
    windows.sort(key=lambda w: w[2] - w[1], reverse=True)  # similar lengths together: little padding

    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()
    total_nats = 0.0  # python float: float64 accumulation
    n_tokens = 0
    bar = tqdm(total=len(windows), desc="bits/byte", disable=not progress, leave=False, dynamic_ncols=True)
    try:
        for start in range(0, len(windows), batch_size):
            chunk = windows[start : start + batch_size]
            T = max(e - b for _, b, e, _ in chunk)
            ids = torch.zeros(len(chunk), T, dtype=torch.long)  # (B, T); pad id is irrelevant (masked, unscored)
            mask = torch.zeros(len(chunk), T, dtype=torch.long)  # (B, T)
            score = torch.zeros(len(chunk), T, dtype=torch.bool)  # (B, T): target positions scored in this row
            for r, (i, b, e, s) in enumerate(chunk):
                ids[r, : e - b] = torch.tensor(seqs[i][b:e])
                mask[r, : e - b] = 1
                score[r, s - b : e - b] = True
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits  # (B, T, V)
            # Logit at t predicts the token at t + 1: (B, T-1, V) against targets (B, T-1).
            logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            nll = -logp.gather(-1, ids[:, 1:].to(device).unsqueeze(-1)).squeeze(-1)  # (B, T-1)
            sel = score[:, 1:].to(device)
            total_nats += float(nll[sel].double().sum())
            n_tokens += int(sel.sum())
            bar.update(len(chunk))
    finally:
        bar.close()
        model.train(was_training)
    if n_tokens == 0:
        raise ValueError("bits_per_byte: no token was scored (every text is at most one token without a BOS)")
    nats_per_token = total_nats / n_tokens
    return BpbResult(
        bits_per_byte=total_nats / (math.log(2.0) * n_bytes),
        nats_per_token=nats_per_token,
        n_tokens=n_tokens,
        n_bytes=n_bytes,
        perplexity=math.exp(nats_per_token),
        total_nats=total_nats,
    )
