"""SynthMed-VQA for the MFM: prompt encoding, the training objective and greedy-decoding evaluation.

One sample is (image, question, answer). Its tokens (see :mod:`ann.models.mfm_tokenizer`)::

    <pad>.. <bos> <image> x V  q_1 .. q_m  a_1 .. a_r <eos>        (left-padded to a common length L)

The loss is the summed next-token cross-entropy of the target tokens ``a_1 .. a_r <eos>`` divided by the
number of *samples* (not tokens) in the batch, so that equal DDP shards average to exactly the loss of the
whole batch:

    loss = (1 / N) * sum_n sum_{t in target(n)} -log p(x_t | x_<t, image_n)

Training batches group all questions of B images, so the vision tower runs once per image; the image
features are gathered per sample and written over the ``<image>`` token embeddings. The answer is correct when
greedy decoding reproduces the answer's words exactly (then ``<eos>``).

Auxiliary answer probe (training only). Each image is asked only a few of the T template questions, but its
answer to every template is known (``SynthMedSplit.all_answer_ids``). :class:`AnswerProbe` reads the answers
of all T templates from the projected visual tokens ``F`` (V, Dt) of each image with one learned query per
template (multi-head cross-attention, then a linear map to the answer vocabulary), and adds

    aux = lambda * (1 / (B T)) * sum_b sum_{t applicable} -log p_probe(answer_{b,t} | F_b)

to the loss (B images in the batch, a fixed denominator so that DDP shards still average exactly). This gives
the vision tower and projector a dense signal about every attribute of every image at the cost of one small
attention layer; the language model is untouched, the probe is discarded after training, and the MFM still
answers every question by generation.

Vision pre-training. Batches without text (``vqa_batch_fn(..., vision_steps=K)`` for its first K steps) train
only the vision tower, projector and probe on ``aux`` (the language model does not run): a step then costs
about a third of a full one, and the vision tower, which is what limits accuracy, gets many more updates in
the same wall time (LLaVA's two stages, with the roles of the pretrained and the trained part swapped).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from tasks.dist import shard, DistInfo
from tasks.synthmed import ANSWER_VOCAB, QUESTION_TEMPLATES, QuestionType, SynthMedSplit

__all__ = ["VQATensors", "encode_vqa", "AnswerProbe", "VQAObjective", "image_features", "vqa_batch_fn", "greedy_answers",
           "predict_answers",
           "evaluate_mfm", "evaluate_probe", "answer_accuracy", "answer_slot_logits", "target_logits"]

_IGNORE = -100


@dataclass(frozen=True)
class VQATensors:
    """A split, tokenized. ``input_ids``/``attention_mask``/``labels``: (N, L) with the answer; ``prompt_ids``/
    ``prompt_mask``: (N, Lp) without it (for generation); ``by_image``: (M, q) sample indices of each image;
    ``all_answers``: (M, T) answer index of every template for every image (-1: not applicable)."""

    images: torch.Tensor
    image_index: torch.Tensor
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    by_image: np.ndarray
    answers: tuple[str, ...]
    all_answers: torch.Tensor


def _left_pad(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(r) for r in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, L - len(r):] = torch.tensor(r)
        mask[i, L - len(r):] = 1
    return ids, mask


def encode_vqa(split: SynthMedSplit, tokenizer, num_visual_tokens: int) -> VQATensors:
    """Tokenize every (image, question, answer) of ``split`` for a model with ``num_visual_tokens``."""
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    head = [tokenizer.bos_token_id] + [image_id] * num_visual_tokens
    q_tokens = [tokenizer(t.text, add_special_tokens=False)["input_ids"] for t in QUESTION_TEMPLATES]
    a_tokens = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in ANSWER_VOCAB]
    prompts = [head + q_tokens[int(t)] for t in split.template_ids]
    targets = [a_tokens[int(a)] for a in split.answer_ids]
    full, mask = _left_pad([p + t for p, t in zip(prompts, targets)], tokenizer.pad_token_id)
    labels = torch.full_like(full, _IGNORE)
    for i, t in enumerate(targets):
        labels[i, full.shape[1] - len(t):] = torch.tensor(t)
    prompt_ids, prompt_mask = _left_pad(prompts, tokenizer.pad_token_id)
    order = np.argsort(split.image_index, kind="stable")
    q = len(split) // len(split.images)
    if q * len(split.images) != len(split) or np.any(np.bincount(split.image_index, minlength=len(split.images)) != q):
        raise ValueError("every image of the split must carry the same number of questions")
    return VQATensors(images=torch.from_numpy(np.array(split.images, dtype=np.float32)),
                      image_index=torch.from_numpy(np.array(split.image_index)), input_ids=full, attention_mask=mask,
                      labels=labels, prompt_ids=prompt_ids, prompt_mask=prompt_mask,
                      by_image=order.reshape(len(split.images), q),
                      answers=tuple(ANSWER_VOCAB[int(a)] for a in split.answer_ids),
                      all_answers=torch.from_numpy(np.array(split.all_answer_ids)))


def image_features(mfm: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Projected visual tokens of raw [0, 1] pixels: (M, C, S, S) -> (M, V, Dt)."""
    return torch.stack(list(mfm.get_image_features(pixel_values=pixel_values).pooler_output))


def _embed(mfm: nn.Module, input_ids: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Token embeddings with the ``<image>`` positions replaced by ``feats`` (N, V, Dt), in order."""
    embeds = mfm.get_input_embeddings()(input_ids)  # (N, L, Dt)
    mask = (input_ids == mfm.config.image_token_id).unsqueeze(-1)  # (N, L, 1)
    return embeds.masked_scatter(mask, feats.to(embeds.dtype))


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp_min(0)  # left padding: the first real token is position 0


def _sequence_logits(mfm: nn.Module, feats: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits (N, L, vocab) of left-padded prompts whose ``<image>`` slots hold ``feats`` (N, V, Dt)."""
    return mfm(inputs_embeds=_embed(mfm, input_ids, feats), attention_mask=attention_mask,
               position_ids=_positions(attention_mask)).logits


def target_logits(mfm: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher-forced logits at every target position of a :func:`vqa_batch_fn` batch (answer words and
    ``<eos>``, in sample order): (number of targets, vocab); what a pruned MFM distils from the unpruned one."""
    feats = image_features(mfm, batch["pixel_values"])[batch["image_index"]]
    logits = _sequence_logits(mfm, feats, batch["input_ids"], batch["attention_mask"])
    return logits[:, :-1][batch["labels"][:, 1:] != _IGNORE]


class AnswerProbe(nn.Module):
    """Answers of all ``num_templates`` questions from an image's visual tokens: (B, V, D) -> (B, T, answers).

    One learned query per template attends over the V tokens (``heads``-head attention), then a shared
    LayerNorm + linear map gives the logits over the ``num_answers`` answer vocabulary."""

    def __init__(self, dim: int, num_templates: int, num_answers: int, *, heads: int = 4) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_templates, dim) * dim ** -0.5)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_answers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        q = self.queries.unsqueeze(0).expand(feats.shape[0], -1, -1)
        out, _ = self.attn(q, feats, feats, need_weights=False)
        return self.head(self.norm(out + q))


class VQAObjective(nn.Module):
    """Wraps the MFM so that DDP sees one forward: images once, then every question about them.

    With ``aux_weight > 0`` an :class:`AnswerProbe` (owned here, not by the MFM) adds the auxiliary loss of the
    module docstring; batches must then carry ``all_answers`` (B, T). A batch without ``input_ids`` is a
    vision pre-training batch: the loss is the auxiliary term alone."""

    def __init__(self, mfm: nn.Module, *, aux_weight: float = 0.0) -> None:
        super().__init__()
        if not (aux_weight >= 0.0 and np.isfinite(aux_weight)):
            raise ValueError(f"aux_weight={aux_weight!r} must be a finite number >= 0 (0 disables the answer probe)")
        self.mfm = mfm
        self.aux_weight = float(aux_weight)
        self.probe = (AnswerProbe(mfm.config.text_config.hidden_size, len(QUESTION_TEMPLATES), len(ANSWER_VOCAB))
                      if aux_weight > 0 else None)

    def forward(self, pixel_values: torch.Tensor, image_index: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, all_answers: torch.Tensor | None = None) -> torch.Tensor:
        img = image_features(self.mfm, pixel_values)  # (B, V, Dt)
        loss = img.new_zeros(())
        if input_ids is not None:
            logits = _sequence_logits(self.mfm, img[image_index], input_ids, attention_mask)  # (N, L, vocab)
            nll = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                              ignore_index=_IGNORE, reduction="sum")
            loss = nll / input_ids.shape[0]
        elif self.probe is None:
            raise ValueError("a vision pre-training batch (no input_ids) needs aux_weight > 0")
        if self.probe is not None:
            if all_answers is None:
                raise ValueError("aux_weight > 0 needs batches with 'all_answers' (vqa_batch_fn provides them)")
            aux = nn.functional.cross_entropy(self.probe(img).flatten(0, 1), all_answers.flatten(),
                                              ignore_index=-1, reduction="sum")
            loss = loss + self.aux_weight * aux / all_answers.numel()
        return loss


def vqa_batch_fn(data: VQATensors, *, images_per_batch: int, seed: int, vision_steps: int = 0):
    """``(step, rank, world) -> batch``: all questions of ``images_per_batch`` images (global), a fresh
    permutation of the images every epoch; rank r takes the r-th equal slice of the images. Steps below
    ``vision_steps`` carry only the images and their ``all_answers`` (vision pre-training)."""
    M = data.by_image.shape[0]
    if images_per_batch > M:
        raise ValueError(f"images_per_batch={images_per_batch} exceeds the {M} training images")
    if not (isinstance(vision_steps, int) and vision_steps >= 0):
        raise ValueError(f"vision_steps={vision_steps!r} must be an int >= 0")
    per_epoch = M // images_per_batch

    def batch(step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(M)
        imgs = perm[k * images_per_batch:(k + 1) * images_per_batch][shard(images_per_batch, DistInfo(rank, world))]
        if step < vision_steps:
            return {"pixel_values": data.images[torch.from_numpy(imgs)],
                    "all_answers": data.all_answers[torch.from_numpy(imgs)]}
        samples = torch.from_numpy(data.by_image[imgs].reshape(-1))
        local = torch.arange(len(imgs)).repeat_interleave(data.by_image.shape[1])
        return {"pixel_values": data.images[torch.from_numpy(imgs)], "image_index": local,
                "input_ids": data.input_ids[samples], "attention_mask": data.attention_mask[samples],
                "labels": data.labels[samples], "all_answers": data.all_answers[torch.from_numpy(imgs)]}

    return batch


@torch.no_grad()
def greedy_answers(mfm: nn.Module, tokenizer, feats: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                   max_new_tokens: int = 3) -> tuple[list[str], torch.Tensor]:
    """Greedy answers (words up to ``<eos>``; ``" <no-eos>"`` appended when none came) of left-padded prompts
    ``ids``/``mask`` whose ``<image>`` slots hold ``feats`` (N, V, Dt), and each answer's confidence: the product of
    its chosen tokens' probabilities, ``<eos>`` included (0 without ``<eos>``). The ``<image>`` token is never
    generated (its probability is 0)."""
    n = ids.shape[0]
    done = torch.zeros(n, dtype=torch.bool)
    conf = torch.ones(n, dtype=torch.float64)
    gen: list[list[int]] = [[] for _ in range(n)]
    for _ in range(max_new_tokens):
        logits = _sequence_logits(mfm, feats, ids, mask)[:, -1].double()  # (n, vocab)
        logits[:, mfm.config.image_token_id] = float("-inf")  # never an answer; fed back, it would claim an image slot
        probs = torch.softmax(logits, -1)
        p, nxt = probs.max(-1)
        conf = torch.where(done, conf, conf * p)
        for i in torch.nonzero(~done).flatten().tolist():
            if int(nxt[i]) == tokenizer.eos_token_id:
                done[i] = True
            else:
                gen[i].append(int(nxt[i]))
        if bool(done.all()):
            break
        ids = torch.cat([ids, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    texts = [tokenizer.decode(g) if d else tokenizer.decode(g) + " <no-eos>" for g, d in zip(gen, done.tolist())]
    return texts, torch.where(done, conf, torch.zeros_like(conf))


@torch.no_grad()
def predict_answers(mfm: nn.Module, tokenizer, data: VQATensors, *, images_per_batch: int = 128,
                    max_new_tokens: int = 3, progress: bool = False) -> list[str]:
    """Greedy-decode every sample's answer (words up to ``<eos>``, :func:`greedy_answers`)."""
    mfm.eval()
    out: list[str | None] = [None] * len(data.answers)
    M = data.by_image.shape[0]
    for s in tqdm(range(0, M, images_per_batch), desc="answer", disable=not progress, leave=False):
        imgs = np.arange(s, min(M, s + images_per_batch))
        samples = torch.from_numpy(data.by_image[imgs].reshape(-1))
        feats = image_features(mfm, data.images[torch.from_numpy(imgs)])
        feats = feats.repeat_interleave(data.by_image.shape[1], dim=0)  # (N, V, Dt)
        texts, _ = greedy_answers(mfm, tokenizer, feats, data.prompt_ids[samples], data.prompt_mask[samples],
                                  max_new_tokens)
        for i, n in enumerate(samples.tolist()):
            out[n] = texts[i]
    return [o if o is not None else "" for o in out]


@torch.no_grad()
def answer_slot_logits(mfm: nn.Module, data: VQATensors, *, images_per_batch: int = 128) -> torch.Tensor:
    """Teacher-forced logits of every target slot (answer words, then ``<eos>``): (N, R, vocab), R = the longest
    answer in words + 1, zeros past a sample's last slot. Slot j of sample n is predicted at position
    ``L - r_n - 1 + j`` (targets end every left-padded row). This is what a student with the same word vocabulary
    (e.g. the spiking MFM, :mod:`snn.vqa`) distils from."""
    mfm.eval()
    R = max(len(a.split()) for a in ANSWER_VOCAB) + 1
    N, L = data.input_ids.shape
    out = torch.zeros(N, R, mfm.config.text_config.vocab_size)
    M, q = data.by_image.shape
    for s in range(0, M, images_per_batch):
        imgs = np.arange(s, min(M, s + images_per_batch))
        samples = torch.from_numpy(data.by_image[imgs].reshape(-1))
        feats = image_features(mfm, data.images[torch.from_numpy(imgs)]).repeat_interleave(q, dim=0)
        mask = data.attention_mask[samples]
        logits = _sequence_logits(mfm, feats, data.input_ids[samples], mask)  # (n, L, vocab)
        r = (data.labels[samples] != _IGNORE).sum(1)  # (n,)
        for j in range(R):
            ok = j < r
            out[samples[ok], j] = logits[ok, L - r[ok] - 1 + j]
    return out


def evaluate_mfm(mfm: nn.Module, tokenizer, data: VQATensors, split: SynthMedSplit, **kw) -> dict[str, float]:
    """Exact-match answer accuracy, overall and per question type."""
    return answer_accuracy(predict_answers(mfm, tokenizer, data, **kw), data, split)


@torch.no_grad()
def evaluate_probe(objective: VQAObjective, data: VQATensors, *, images_per_batch: int = 256) -> dict[str, float]:
    """Accuracy of the training-only :class:`AnswerProbe` over every applicable (image, template) pair of
    ``data`` (``{}`` without a probe): how much the visual tokens already tell, before the LM has learnt to ask."""
    if objective.probe is None:
        return {}
    correct = total = 0
    for s in range(0, len(data.images), images_per_batch):
        ans = data.all_answers[s:s + images_per_batch]
        pred = objective.probe(image_features(objective.mfm, data.images[s:s + images_per_batch])).argmax(-1)
        correct += int(((pred == ans) & (ans >= 0)).sum())
        total += int((ans >= 0).sum())
    return {"probe_accuracy": correct / total}


def answer_accuracy(pred: list[str], data: VQATensors, split: SynthMedSplit) -> dict[str, float]:
    """Exact-match accuracy of predicted answers ``pred`` (one per sample), overall and per question type."""
    correct = np.array([p == a for p, a in zip(pred, data.answers)])
    metrics = {"accuracy": float(correct.mean())}
    for qt in QuestionType:
        sel = split.question_type_ids == int(qt)
        if sel.any():
            metrics[f"accuracy_{qt.name.lower()}"] = float(correct[sel].mean())
    return metrics
