"""A small image+question classifier for SynthMed-VQA: how much the pixels add over the question alone.

It is a reference point, not a contribution: it shows that the answers are readable from image+question with
a few CPU-minutes of training, to be set against :func:`tasks.synthmed.blind_baseline` (question only).

Model (dimension letters: B questions, M images in the batch, C channels, s = S / 2^len(channels) the final
feature side, L question length, Dq / Dh widths):

    q      = ReLU(W_q mean_{t: ids_t != <pad>} Embed(ids_t))                          (B, Dq)   bag of words
    h_0    = ReLU(BN(Conv4x4/stride 2([image ; x ; y])))   x, y in [-1, 1]             (M, C_0, S/2, S/2)
    h_i    = ReLU(MaxPool2(BN(Conv3x3(h_{i-1}))))                                      (M, C_i, S/2^(i+1), ...)
    g      = ReLU(BN(Conv1x1(h_n))[image of each question] * (1 + gamma(q)) + beta(q)) (B, C_n, s, s)   FiLM
    logits = MLP([W_img [Flatten(g) ; mean_hw(g) ; max_hw(g)] ; q])                   (B, |ANSWER_VOCAB|)

FiLM conditioning (Perez et al., AAAI 2018): ``gamma, beta`` are linear in ``q`` and start at zero. The image
trunk does not see the question, so it runs once per image and its features are shared by all the questions
asked about that image (:meth:`VQABaseline.encode_images` / :meth:`VQABaseline.answer`); question-conditioned
convolutions early in the trunk trained more slowly and less stably in the few-minute CPU budget.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from tasks.synthmed import ANSWER_VOCAB, PAD_ID, QUESTION_VOCAB, SynthMedSplit, accuracy_by_type

__all__ = ["VQABaselineConfig", "VQABaseline", "VQATrainResult", "train_vqa_baseline", "predict_vqa", "evaluate_vqa"]


@dataclass(frozen=True)
class VQABaselineConfig:
    """Widths of :class:`VQABaseline`.

    Attributes:
        channels: output channels of the stride-2 stem and then of each conv block; each halves the resolution
            (the image size must be divisible by ``2 ** len(channels)``).
        embed_dim: question word-embedding width.
        question_dim: question feature width Dq.
        hidden: width Dh of the fused MLP.
        dropout: dropout before the classifier.
    """

    channels: tuple[int, ...] = (16, 32, 64, 64)
    embed_dim: int = 32
    question_dim: int = 64
    hidden: int = 256
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.channels, tuple) and 1 <= len(self.channels) <= 6
                and all(isinstance(c, int) and c >= 1 for c in self.channels)):
            raise ValueError(f"VQABaselineConfig.channels={self.channels!r} is invalid: use a tuple of 1..6 positive ints")
        for name in ("embed_dim", "question_dim", "hidden"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"VQABaselineConfig.{name}={v!r} is invalid: use a positive int")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"VQABaselineConfig.dropout={self.dropout!r} is invalid: use a float in [0, 1)")


class VQABaseline(nn.Module):
    """Tiny CNN trunk + bag-of-words question encoder with late FiLM fusion (maths in the module docstring)."""

    def __init__(self, *, image_size: int, config: VQABaselineConfig = VQABaselineConfig(),
                 vocab_size: int = len(QUESTION_VOCAB), n_answers: int = len(ANSWER_VOCAB)) -> None:
        super().__init__()
        c = config.channels
        if image_size % (2 ** len(c)):
            raise ValueError(f"image_size={image_size} must be divisible by 2**len(channels)={2 ** len(c)}; "
                             "use fewer VQABaselineConfig.channels or another image size")
        self.config = config
        self.embed = nn.Embedding(vocab_size, config.embed_dim, padding_idx=PAD_ID)
        self.q_proj = nn.Linear(config.embed_dim, config.question_dim)
        blocks = [nn.Conv2d(3, c[0], 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU()]
        for i, o in zip(c[:-1], c[1:]):
            blocks += [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.MaxPool2d(2), nn.ReLU()]
        self.trunk = nn.Sequential(*blocks)
        self.mix = nn.Sequential(nn.Conv2d(c[-1], c[-1], 1, bias=False), nn.BatchNorm2d(c[-1]))
        self.film = nn.Linear(config.question_dim, 2 * c[-1])
        nn.init.zeros_(self.film.weight)  # start as identity modulation: gamma = beta = 0
        nn.init.zeros_(self.film.bias)
        side = image_size // 2 ** len(c)
        self.img_proj = nn.Linear(c[-1] * (side * side + 2), config.hidden)
        self.head = nn.Sequential(nn.ReLU(), nn.Dropout(config.dropout),
                                  nn.Linear(config.hidden + config.question_dim, config.hidden), nn.ReLU(),
                                  nn.Linear(config.hidden, n_answers))

    def encode_question(self, question_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) int64 -> (B, Dq): projected mean of the non-pad word embeddings."""
        mask = (question_ids != PAD_ID).unsqueeze(-1).to(self.q_proj.weight.dtype)  # (B, L, 1)
        bag = (self.embed(question_ids) * mask).sum(1) / mask.sum(1).clamp_min(1)  # (B, L, E) -> (B, E)
        return F.relu(self.q_proj(bag))  # (B, Dq)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(M, 1, S, S) -> question-independent features (M, C_n, s, s)."""
        M, _, S, _ = images.shape
        lin = torch.linspace(-1, 1, S, device=images.device, dtype=images.dtype)
        coords = torch.stack(torch.meshgrid(lin, lin, indexing="xy")).expand(M, 2, S, S)  # (M, 2, S, S): x, y
        return self.mix(self.trunk(torch.cat([images, coords], 1)))  # (M, 3, S, S) -> (M, C_n, s, s)

    def answer(self, features: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """features (B, C_n, s, s) of each question's image, question_ids (B, L) -> logits (B, |answers|)."""
        q = self.encode_question(question_ids)  # (B, Dq)
        gamma, beta = self.film(q)[:, :, None, None].chunk(2, dim=1)  # (B, C_n, 1, 1) each
        g = F.relu(features * (1 + gamma) + beta)  # (B, C_n, s, s)
        pooled = torch.cat([g.flatten(1), g.mean((2, 3)), g.amax((2, 3))], 1)  # (B, C_n * (s*s + 2))
        return self.head(torch.cat([self.img_proj(pooled), q], 1))  # (B, Dh + Dq) -> (B, |answers|)

    def forward(self, images: torch.Tensor, question_ids: torch.Tensor) -> torch.Tensor:
        """images (B, 1, S, S) float in [0, 1] (one per question), question_ids (B, L) -> logits (B, |answers|)."""
        return self.answer(self.encode_images(images), question_ids)


@dataclass(frozen=True)
class VQATrainResult:
    """Trained model and its accuracies (fractions); ``test_*`` are None when no test split was given."""

    model: VQABaseline
    val_accuracy: float
    val_per_type: Mapping[str, float]
    test_accuracy: float | None
    test_per_type: Mapping[str, float] | None
    epochs: int
    train_seconds: float
    train_losses: tuple[float, ...] = field(default=())


def _image_batch(split: SynthMedSplit, image_ids: np.ndarray, by_image: list[np.ndarray]
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """Images (M, 1, S, S), question ids (B, L), the batch-local image of each question (B,), sample ids (B,)."""
    samples = np.concatenate([by_image[m] for m in image_ids])  # (B,)
    local = np.repeat(np.arange(len(image_ids)), [len(by_image[m]) for m in image_ids])  # (B,)
    return (torch.from_numpy(split.images[image_ids]), torch.from_numpy(split.question_ids[samples]),
            torch.from_numpy(local), samples)


def _samples_by_image(split: SynthMedSplit) -> list[np.ndarray]:
    order = np.argsort(split.image_index, kind="stable")
    counts = np.bincount(split.image_index, minlength=split.images.shape[0])
    return np.split(order, np.cumsum(counts)[:-1])


@torch.no_grad()
def predict_vqa(model: VQABaseline, split: SynthMedSplit, *, images_per_batch: int = 256) -> np.ndarray:
    """Predicted answer ids (N,) int64 for every sample of ``split`` (model in eval mode while predicting)."""
    was_training = model.training
    model.eval()
    by_image = _samples_by_image(split)
    pred = np.empty(len(split), dtype=np.int64)
    for start in range(0, split.images.shape[0], images_per_batch):
        ids = np.arange(start, min(start + images_per_batch, split.images.shape[0]))
        images, questions, local, samples = _image_batch(split, ids, by_image)
        pred[samples] = model.answer(model.encode_images(images)[local], questions).argmax(1).numpy()
    model.train(was_training)
    return pred


def evaluate_vqa(model: VQABaseline, split: SynthMedSplit) -> tuple[float, dict[str, float]]:
    """Accuracy overall and per question type on ``split``."""
    return accuracy_by_type(predict_vqa(model, split), split)


def train_vqa_baseline(train: SynthMedSplit, val: SynthMedSplit, *, epochs: int, seed: int,
                       test: SynthMedSplit | None = None, config: VQABaselineConfig = VQABaselineConfig(),
                       images_per_batch: int = 32, lr: float = 2e-3, weight_decay: float = 1e-4,
                       num_threads: int | None = 2, progress: bool = True) -> VQATrainResult:
    """Train :class:`VQABaseline` with AdamW, a one-cycle learning rate and cross-entropy; evaluate on val (and test).

    A batch is ``images_per_batch`` images with all the questions asked about them (the trunk runs once per
    image). Reproducible for a given ``seed`` and thread count. ``num_threads`` sets torch's intra-op threads for
    the duration of the call (restored afterwards); None leaves them as they are.
    """
    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"epochs={epochs!r} is invalid: use a positive int")
    if not (isinstance(images_per_batch, int) and images_per_batch >= 2):
        raise ValueError(f"images_per_batch={images_per_batch!r} is invalid: use an int >= 2 (batch norm)")
    for other in (val, test):
        if other is not None and other.config.image_size != train.config.image_size:
            raise ValueError("the splits have different image sizes; load all of them with one SynthMedConfig")
    from tqdm.auto import tqdm  # progress display only

    old_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        model = VQABaseline(image_size=train.config.image_size, config=config)
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        n_images = train.images.shape[0]
        steps = math.ceil(n_images / images_per_batch)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps, pct_start=0.1)
        answers = torch.from_numpy(train.answer_ids.copy())
        by_image = _samples_by_image(train)
        losses: list[float] = []
        t0 = time.perf_counter()
        model.train()
        with tqdm(total=epochs * steps, desc="vqa-baseline", disable=not progress, leave=False) as bar:
            for epoch in range(epochs):
                order = rng.permutation(n_images)
                if n_images % images_per_batch == 1:  # never a one-image batch (batch norm needs two)
                    order = order[:-1]
                total, seen = 0.0, 0
                for start in range(0, len(order), images_per_batch):
                    images, questions, local, samples = _image_batch(train, order[start:start + images_per_batch], by_image)
                    logits = model.answer(model.encode_images(images)[local], questions)  # (B, |answers|)
                    loss = F.cross_entropy(logits, answers[samples])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    sched.step()
                    total, seen = total + loss.item() * len(samples), seen + len(samples)
                    bar.update(1)
                losses.append(total / seen)
                bar.set_postfix(epoch=epoch + 1, loss=f"{losses[-1]:.3f}")
        seconds = time.perf_counter() - t0
        val_acc, val_per = evaluate_vqa(model, val)
        test_acc, test_per = evaluate_vqa(model, test) if test is not None else (None, None)
    finally:
        torch.set_num_threads(old_threads)
    return VQATrainResult(model=model, val_accuracy=val_acc, val_per_type=val_per, test_accuracy=test_acc,
                          test_per_type=test_per, epochs=epochs, train_seconds=seconds, train_losses=tuple(losses))
