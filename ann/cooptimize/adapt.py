"""Short fine-tuning of a geometry-adapted MFM on SynthMed-VQA (plain VQA loss, no answer probe).

:func:`ann.cooptimize.geometry.adapt_geometry` transfers the weights to a new resolution / patch size / merging;
the tokens then mean something slightly different to the decoder, and a few hundred steps of the usual VQA
objective (:class:`ann.train.vqa.VQAObjective`, all parameters, AdamW with warmup + cosine) re-align them. The
images stay at the dataset's resolution: the model sees them through
:class:`~ann.cooptimize.runner.TokenPrunedMFM`, which resizes them, exactly as at evaluation.
"""

from __future__ import annotations

import torch
from torch import nn

from ann.cooptimize.runner import TokenPrunedMFM
from ann.train.vqa import VQAObjective, VQATensors, vqa_batch_fn
from tasks.training import LoopConfig, LoopResult, train_loop

__all__ = ["finetune"]


def finetune(mfm: nn.Module, train: VQATensors, *, steps: int, lr: float = 3e-4, seed: int = 0,
             images_per_batch: int = 32, vit_keep: float = 1.0, vit_layer: int = 0, progress: bool = True,
             desc: str = "adapt") -> LoopResult:
    """Fine-tune ``mfm`` in place for ``steps`` optimizer steps on ``train`` (encoded for its visual tokens).

    ``vit_keep`` / ``vit_layer``: train with ViT token pruning on (:class:`~ann.cooptimize.runner.TokenPrunedMFM`),
    so the projector and decoder learn to read the features of tokens that skipped the later ViT layers."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps={steps!r} is invalid: an int >= 1 (skip the call for no fine-tuning)")
    objective = VQAObjective(TokenPrunedMFM(mfm, vit_keep=vit_keep, vit_layer=vit_layer), aux_weight=0.0)
    config = LoopConfig(steps=steps, lr=lr, warmup_steps=min(50, steps // 10), weight_decay=0.01, seed=seed)
    torch.manual_seed(seed)
    mfm.train()
    try:
        return train_loop(objective, batch_fn=vqa_batch_fn(train, images_per_batch=images_per_batch, seed=seed),
                          loss_fn=lambda m, b: m(**b), config=config, out_dir=None, progress=progress, desc=desc)
    finally:
        mfm.eval()
