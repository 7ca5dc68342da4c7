r"""Shorter text sequences: keep only the most informative question tokens (prompt compression).

The decoder's sequence is ``<bos>``, V visual tokens, the question, then the answer. With ``max_tokens = n``
each question keeps its ``n`` most informative tokens, in their original order, where a token's information
is its rarity over the question templates (inverse document frequency, the selection criterion of
selective-context prompt compression, Li et al., EMNLP 2023, with template frequencies instead of an LM):

    idf(w) = log(T / df(w)),   df(w) = number of the T templates whose text contains w

(ties keep the earlier token). Words every template shares (``?``, ``is``, ``the``, ``lesion``) go first, the
words that tell questions apart (``upper``, ``shape``, ``hypointense``) stay. Questions of at most ``n`` tokens
are unchanged.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter

import torch

from ann.train.vqa import VQATensors, _left_pad
from tasks.synthmed import QUESTION_TEMPLATES

__all__ = ["token_idf", "compress_questions"]

_IGNORE = -100


def token_idf(tokenizer) -> dict[int, float]:
    """``token id -> idf`` over the SynthMed question templates (module docstring)."""
    docs = [set(tokenizer(t.text, add_special_tokens=False)["input_ids"]) for t in QUESTION_TEMPLATES]
    df = Counter(w for d in docs for w in d)
    return {w: math.log(len(docs) / c) for w, c in df.items()}


def _keep(question: list[int], n: int, idf: dict[int, float]) -> list[int]:
    if len(question) <= n:
        return question
    ranked = sorted(range(len(question)), key=lambda i: (-idf.get(question[i], math.inf), i))[:n]
    return [question[i] for i in sorted(ranked)]


def compress_questions(data: VQATensors, tokenizer, num_visual_tokens: int, max_tokens: int | None) -> VQATensors:
    """``data`` with every question cut to its ``max_tokens`` most informative tokens (None: unchanged).

    Prompts (``prompt_ids``) and full sequences (``input_ids``, ``labels``) are rebuilt and re-left-padded; the
    answers are unchanged."""
    if max_tokens is None:
        return data
    if not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens={max_tokens!r} is invalid: the question tokens kept, an int >= 1 (None: all)")
    head = 1 + num_visual_tokens  # <bos> + visual tokens
    idf = token_idf(tokenizer)
    prompts, targets = [], []
    for ids, mask, labels in zip(data.prompt_ids, data.prompt_mask, data.labels):
        row = ids[mask.bool()].tolist()
        if len(row) < head:
            raise ValueError(f"a prompt has {len(row)} tokens, fewer than <bos> + {num_visual_tokens} visual tokens: "
                             "give the num_visual_tokens the data was encoded for")
        prompts.append(row[:head] + _keep(row[head:], max_tokens, idf))
        targets.append(labels[labels != _IGNORE].tolist())
    pad = tokenizer.pad_token_id
    full, full_mask = _left_pad([p + t for p, t in zip(prompts, targets)], pad)
    new_labels = torch.full_like(full, _IGNORE)
    for i, t in enumerate(targets):
        new_labels[i, full.shape[1] - len(t):] = torch.tensor(t)
    prompt_ids, prompt_mask = _left_pad(prompts, pad)
    return dataclasses.replace(data, input_ids=full, attention_mask=full_mask, labels=new_labels, prompt_ids=prompt_ids,
                               prompt_mask=prompt_mask)
