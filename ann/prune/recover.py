"""Recovery fine-tuning of a pruned causal LM with LoRA (:mod:`ann.finetune.lora`): adapters on every linear layer
of the family, ``steps`` AdamW steps of next-token loss on token blocks, then merged back, so the result is again
an ordinary (pruned) HF model."""

from __future__ import annotations

import torch
from torch import nn

from ann.finetune.lora import LoraSettings, add_lora, merge_lora
from ann.train.code import block_batch_fn, lm_loss
from tasks.training import LoopConfig, train_loop

__all__ = ["recover_lora"]


def recover_lora(model: nn.Module, blocks: torch.Tensor, *, steps: int, lr: float = 1e-3, batch_size: int = 4,
                 rank: int = 16, seed: int = 0, progress: bool = True) -> tuple[nn.Module, list[tuple[int, float]]]:
    """Fine-tune ``model`` on ``blocks`` ((N, T) token ids) for ``steps`` steps with LoRA and merge; returns the
    merged model and the (step, loss) log."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"recover_lora: steps={steps!r} must be an int >= 1")
    peft_model = add_lora(model, LoraSettings(rank=rank, alpha=2.0 * rank))
    cfg = LoopConfig(steps=steps, lr=lr, warmup_steps=min(10, steps // 10), seed=seed)
    peft_model.train()
    result = train_loop(peft_model, batch_fn=block_batch_fn(blocks, batch_size=batch_size, seed=seed), loss_fn=lm_loss,
                        config=cfg, out_dir=None, progress=progress, desc="prune-recovery")
    merged = merge_lora(peft_model).eval()
    for p in merged.parameters():
        p.requires_grad_(True)
    return merged, list(result.losses)
