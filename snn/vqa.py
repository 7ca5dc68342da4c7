r"""SynthMed-VQA for the spiking MFM: word encoding, the training objective (with optional distillation) and
greedy-decoding evaluation.

One sample is (image, question, answer); its words (:data:`tasks.synthmed.VQA_VOCAB`) are

    <bos> q_1 .. q_m | a_1 .. a_r <eos> <pad> ..         (right-padded to L = 1 + max m + R, R = max r + 1)
    '--- prompt ----' '-- target --'

and the target slot j of sample n is predicted at position ``prompt_len[n] - 1 + j``. With K the number of
samples in the batch, s_{n,j} the student's logits of slot j, y_{n,j} its word, tau the temperature, alpha the
distillation weight and t_{n,j} the teacher's logits (an ANN MFM with the same vocabulary, precomputed with
teacher forcing on the same words)::

    ce   = (1 / K) sum_n sum_j -log softmax(s_{n,j})[y_{n,j}]
    kd   = (1 / K) sum_n sum_j tau^2 KL(softmax(t_{n,j} / tau) || softmax(s_{n,j} / tau))
    loss = (1 - alpha) ce + alpha kd + lambda aux

The per-sample (not per-word) normalisation makes equal DDP shards average exactly to the whole batch's loss.
``aux`` is the training-only answer probe of the ANN MFM's recipe (:mod:`ann.train.vqa`, re-stated here because
the tracks do not import each other): one learned query per question template attends over the spike rates of the
visual tokens and predicts that template's answer for every image, normalised by (images x templates).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from snn.models.spiking_mfm import SpikingMFM
from snn.neurons import build_neuron
from tasks.dist import DistInfo, shard
from tasks.synthmed import ANSWER_VOCAB, QUESTION_TEMPLATES, VQA_VOCAB, SynthMedSplit, accuracy_by_type

__all__ = ["SpikingVQATensors", "encode_spiking_vqa", "SpikingVQAObjective", "spiking_vqa_batch_fn",
           "predict_answers", "evaluate_spiking_mfm", "IGNORE"]

IGNORE = -100
_WORD = {w: i for i, w in enumerate(VQA_VOCAB)}
PAD, BOS, EOS = _WORD["<pad>"], _WORD["<bos>"], _WORD["<eos>"]


def _words(text: str) -> list[int]:
    return [_WORD[w] for w in text.split()]


@dataclass(frozen=True)
class SpikingVQATensors:
    """A split in words. ``tokens`` (N, L) full sequences; ``prompt_len`` (N,); ``target_ids`` (N, R) the answer
    words + <eos> (IGNORE past the end); ``by_image`` (M, q) sample indices per image; ``all_answers`` (M, Q)."""

    images: torch.Tensor
    image_index: torch.Tensor
    tokens: torch.Tensor
    prompt_len: torch.Tensor
    target_ids: torch.Tensor
    by_image: np.ndarray
    answers: tuple[str, ...]
    all_answers: torch.Tensor

    @property
    def target_pos(self) -> torch.Tensor:
        """(N, R) position whose logits predict each target slot."""
        return self.prompt_len[:, None] - 1 + torch.arange(self.target_ids.shape[1])


def encode_spiking_vqa(split: SynthMedSplit) -> SpikingVQATensors:
    """Every (image, question, answer) of ``split`` in words (layout in the module docstring)."""
    prompts = [[BOS] + _words(QUESTION_TEMPLATES[int(t)].text) for t in split.template_ids]
    targets = [_words(ANSWER_VOCAB[int(a)]) + [EOS] for a in split.answer_ids]
    Lp, R = max(map(len, prompts)), max(len(_words(a)) for a in ANSWER_VOCAB) + 1
    tokens = torch.full((len(prompts), Lp + R), PAD, dtype=torch.long)
    target_ids = torch.full((len(prompts), R), IGNORE, dtype=torch.long)
    for n, (p, t) in enumerate(zip(prompts, targets)):
        tokens[n, : len(p) + len(t)] = torch.tensor(p + t)
        target_ids[n, : len(t)] = torch.tensor(t)
    q = len(split) // len(split.images)
    if q * len(split.images) != len(split) or np.any(np.bincount(split.image_index, minlength=len(split.images)) != q):
        raise ValueError("every image of the split must carry the same number of questions")
    order = np.argsort(split.image_index, kind="stable")
    return SpikingVQATensors(images=torch.from_numpy(np.array(split.images, dtype=np.float32)),
                             image_index=torch.from_numpy(np.array(split.image_index)), tokens=tokens,
                             prompt_len=torch.tensor([len(p) for p in prompts]), target_ids=target_ids,
                             by_image=order.reshape(len(split.images), q),
                             answers=tuple(ANSWER_VOCAB[int(a)] for a in split.answer_ids),
                             all_answers=torch.from_numpy(np.array(split.all_answer_ids)))


class _AnswerProbe(nn.Module):
    """Training-only: answers of all Q templates from the visual tokens' spike rates (M, V, D) -> (M, Q, A)."""

    def __init__(self, dim: int, num_templates: int, num_answers: int) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_templates, dim) * dim ** -0.5)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_answers)

    def forward(self, rates: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(torch.einsum("qd,mvd->mqv", self.queries, rates) * rates.shape[-1] ** -0.5, dim=-1)
        return self.head(self.norm(torch.einsum("mqv,mvd->mqd", weights, rates) + self.queries))


class SpikingVQAObjective(nn.Module):
    """The loss of the module docstring in one forward (what DDP wraps). Batches: ``images`` (M, C, S, S),
    ``image_index`` (K,), ``tokens`` (K, L), ``target_pos``/``target_ids`` (K, R), ``all_answers`` (M, Q) and, for
    distillation, ``teacher_logits`` (K, R, W)."""

    def __init__(self, mfm: SpikingMFM, *, aux_weight: float = 0.0, distill_weight: float = 0.0,
                 temperature: float = 2.0) -> None:
        super().__init__()
        for name, v, lo, hi in (("aux_weight", aux_weight, 0.0, float("inf")),
                                ("distill_weight", distill_weight, 0.0, 1.0), ("temperature", temperature, 1e-6, float("inf"))):
            if not (isinstance(v, (int, float)) and lo <= v <= hi and np.isfinite(v)):
                raise ValueError(f"{name}={v!r} is invalid: use a finite number in [{lo}, {hi}]")
        self.mfm, self.aux_weight = mfm, float(aux_weight)
        self.distill_weight, self.temperature = float(distill_weight), float(temperature)
        D = mfm.config.text_dim
        self.probe = _AnswerProbe(D, len(QUESTION_TEMPLATES), len(ANSWER_VOCAB)) if aux_weight > 0 else None
        # spike rates of the visual tokens for the probe: the projector's output through one more neuron
        self.probe_lif = build_neuron(mfm.config.neuron, engine=mfm.config.engine) if aux_weight > 0 else None

    def forward(self, images, image_index, tokens, target_pos, target_ids, all_answers=None, teacher_logits=None):
        visual = self.mfm.visual_tokens(images)  # (T, M, V, Dt)
        logits = self.mfm.decode(visual[:, image_index], tokens)  # (K, L, W)
        K = tokens.shape[0]
        slot = logits.gather(1, target_pos.clamp_max(tokens.shape[1] - 1)[..., None].expand(-1, -1, logits.shape[-1]))
        valid = target_ids != IGNORE  # (K, R)
        ce = nn.functional.cross_entropy(slot[valid], target_ids[valid], reduction="sum") / K
        loss = ce
        if self.distill_weight > 0:
            if teacher_logits is None:
                raise ValueError("distill_weight > 0 needs batches with 'teacher_logits' (give teacher logits to "
                                 "spiking_vqa_batch_fn)")
            tau = self.temperature
            kd = nn.functional.kl_div(torch.log_softmax(slot[valid] / tau, -1),
                                      torch.log_softmax(teacher_logits[valid] / tau, -1), log_target=True,
                                      reduction="sum") * tau ** 2 / K
            loss = (1 - self.distill_weight) * ce + self.distill_weight * kd
        if self.probe is not None:
            if all_answers is None:
                raise ValueError("aux_weight > 0 needs batches with 'all_answers' (spiking_vqa_batch_fn provides them)")
            from spikingjelly.activation_based import functional

            functional.reset_net(self.probe_lif)  # stateful engines start at rest on every call
            rates = self.probe_lif(visual).mean(dim=0)  # (M, V, Dt)
            aux = nn.functional.cross_entropy(self.probe(rates).flatten(0, 1), all_answers.flatten(), ignore_index=-1,
                                              reduction="sum") / all_answers.numel()
            loss = loss + self.aux_weight * aux
        return loss


def spiking_vqa_batch_fn(data: SpikingVQATensors, *, images_per_batch: int, seed: int,
                         teacher_logits: torch.Tensor | None = None):
    """``(step, rank, world) -> batch``: all questions of ``images_per_batch`` images (global), a fresh permutation
    every epoch; rank r takes the r-th equal slice of the images (:func:`tasks.dist.shard`)."""
    M = data.by_image.shape[0]
    if images_per_batch > M:
        raise ValueError(f"images_per_batch={images_per_batch} exceeds the {M} training images")
    want = (*data.target_ids.shape, len(VQA_VOCAB))
    if teacher_logits is not None and tuple(teacher_logits.shape) != want:
        raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} do not match the split's target slots "
                         f"(N, R, W) = {want}: compute them on the same training split with a model over "
                         "tasks.synthmed.VQA_VOCAB (ann.train.vqa.answer_slot_logits)")
    per_epoch = M // images_per_batch
    target_pos = data.target_pos

    def batch(step: int, rank: int, world: int) -> dict[str, torch.Tensor]:
        epoch, k = divmod(step, per_epoch)
        perm = np.random.default_rng([seed, epoch]).permutation(M)
        imgs = torch.from_numpy(perm[k * images_per_batch:(k + 1) * images_per_batch][shard(images_per_batch, DistInfo(rank, world))])
        samples = torch.from_numpy(data.by_image[imgs.numpy()].reshape(-1))
        b = {"images": data.images[imgs], "image_index": torch.arange(len(imgs)).repeat_interleave(data.by_image.shape[1]),
             "tokens": data.tokens[samples], "target_pos": target_pos[samples], "target_ids": data.target_ids[samples],
             "all_answers": data.all_answers[imgs]}
        if teacher_logits is not None:
            b["teacher_logits"] = teacher_logits[samples]
        return b

    return batch


@torch.no_grad()
def predict_answers(mfm: SpikingMFM, data: SpikingVQATensors, *, images_per_batch: int = 128,
                    progress: bool = False) -> list[str]:
    """Greedy answer of every sample (words up to <eos>; "<no-eos>" appended when it never stops)."""
    mfm.eval()
    out = [""] * len(data.answers)
    M, q = data.by_image.shape
    Lp = int(data.prompt_len.max())
    for s in tqdm(range(0, M, images_per_batch), desc="answer", disable=not progress, leave=False):
        imgs = torch.arange(s, min(M, s + images_per_batch))
        samples = torch.from_numpy(data.by_image[imgs.numpy()].reshape(-1))
        gen = mfm.generate(data.images[imgs], torch.arange(len(imgs)).repeat_interleave(q), data.tokens[samples, :Lp],
                           data.prompt_len[samples], max_new_tokens=data.target_ids.shape[1], eos_id=EOS, pad_id=PAD)
        for n, row in zip(samples.tolist(), gen.tolist()):
            words = []
            for w in row:
                if w == EOS:
                    break
                words.append(VQA_VOCAB[w])
            out[n] = " ".join(words) if EOS in row else " ".join(words) + " <no-eos>"
    return out


def evaluate_spiking_mfm(mfm: SpikingMFM, data: SpikingVQATensors, split: SynthMedSplit, **kw) -> dict[str, float]:
    """Exact-match answer accuracy, overall and per question type (the ANN MFM's metric)."""
    index = {a: i for i, a in enumerate(ANSWER_VOCAB)}
    overall, per = accuracy_by_type(np.array([index.get(p, -1) for p in predict_answers(mfm, data, **kw)]), split)
    return {"accuracy": overall, **{f"accuracy_{k}": v for k, v in per.items()}}
