r"""SynthMed-VQA tiers: an MFM's answers with its confidence and consistency self-tests, costs in FLOPs and seconds.

Per question, a tier greedy-decodes its answer (up to ``<eos>``, as :func:`ann.train.vqa.predict_answers`) and
keeps the probability of every token it chose. Self-tests:

- confidence: ``prod_j p(a_j | image, question, a_<j)`` over the answer's tokens and ``<eos>`` (free: a
  by-product of answering);
- consistency: the answer again on the image with Gaussian noise (``perturb_std``, clipped to [0, 1]) added; the
  test passes when both answers agree (costs a second answer).

The cascade score of ``confidence`` is the confidence; of ``confidence+consistency`` it is the confidence when
the answers agree and 0 when they do not. FLOPs are counted by ``torch.utils.flop_counter`` over the real decode
(image features once per image, shared by its questions; each decoding step recomputes the whole sequence, as the
evaluation does); seconds are measured per batch and spread over its questions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ann.cascade.policy import TierRun
from ann.prune.latency import forward_flops
from ann.train.vqa import VQATensors, greedy_answers, image_features

__all__ = ["MFMAnswers", "mfm_answers", "vqa_tier"]


@dataclass(frozen=True)
class MFMAnswers:
    """Per question (``(N,)`` each): answer text, confidence, FLOPs and seconds spent."""

    answers: list[str]
    confidence: np.ndarray
    flops: np.ndarray
    seconds: np.ndarray


def mfm_answers(mfm: nn.Module, tokenizer, data: VQATensors, *, images: torch.Tensor | None = None,
                images_per_batch: int = 100, max_new_tokens: int = 3) -> MFMAnswers:
    """Greedy answers and confidences of ``mfm`` for every question of ``data`` (on ``images`` instead of
    ``data.images`` when given, e.g. perturbed ones)."""
    mfm.eval()
    images = data.images if images is None else images
    N, (M, q) = len(data.answers), data.by_image.shape
    out: list[str] = [""] * N
    conf, flops, secs = np.zeros(N), np.zeros(N), np.zeros(N)
    for s in range(0, M, images_per_batch):
        imgs = np.arange(s, min(M, s + images_per_batch))
        samples = torch.from_numpy(data.by_image[imgs].reshape(-1))

        def run(m: nn.Module):
            feats = image_features(m, images[torch.from_numpy(imgs)]).repeat_interleave(q, dim=0)  # (n, V, Dt)
            return greedy_answers(m, tokenizer, feats, data.prompt_ids[samples], data.prompt_mask[samples],
                                  max_new_tokens)

        t0 = time.perf_counter()
        with torch.no_grad():
            run(mfm)  # timed without the FLOP counter's overhead
        dt = time.perf_counter() - t0
        f, (texts, c) = forward_flops(mfm, run)
        idx = samples.numpy()
        for i, t in zip(idx.tolist(), texts):
            out[i] = t
        conf[idx], flops[idx], secs[idx] = c.numpy(), f / len(idx), dt / len(idx)
    return MFMAnswers(out, conf, flops, secs)


def vqa_tier(name: str, mfm: nn.Module, tokenizer, data: VQATensors, *, self_test: str = "confidence+consistency",
             perturb_std: float = 0.03, seed: int = 0) -> tuple[TierRun, dict]:
    """``mfm`` as a cascade tier on ``data`` (module docstring); returns the tier and its raw outputs
    (answers, confidence, agreement)."""
    if self_test not in ("confidence", "confidence+consistency"):
        raise ValueError(f"self_test={self_test!r}: 'confidence' or 'confidence+consistency'")
    if not perturb_std >= 0:
        raise ValueError(f"perturb_std={perturb_std!r}: a noise standard deviation, >= 0")
    ans = mfm_answers(mfm, tokenizer, data)
    quality = np.array([a == b for a, b in zip(ans.answers, data.answers)], dtype=np.float64)
    raw = {"answers": ans.answers, "confidence": ans.confidence}
    zero = np.zeros_like(quality)
    if self_test == "confidence":
        return TierRun(name, quality, ans.confidence, ans.flops, ans.seconds, zero, zero), raw
    g = torch.Generator().manual_seed(seed)
    noisy = (data.images + perturb_std * torch.randn(data.images.shape, generator=g)).clamp(0, 1)
    again = mfm_answers(mfm, tokenizer, data, images=noisy)
    agree = np.array([a == b for a, b in zip(ans.answers, again.answers)])
    raw["agree"] = agree
    return TierRun(name, quality, np.where(agree, ans.confidence, 0.0), ans.flops, ans.seconds, again.flops,
                   again.seconds), raw
