r"""Recovery fine-tuning of a pruned model: knowledge distillation from the unpruned model, or a task loss; all
weights or LoRA adapters (:mod:`ann.finetune.lora`, merged back, so the result is again an ordinary HF model).

Distillation (Hinton et al. 2015; the recovery Minitron and Sheared-LLaMA use) needs no labels: with ``f`` the
calibration forward (logits ``(..., V)``) of the unpruned teacher ``T`` and the pruned student ``S``,

    L_KD(x) = mean over positions of KL( softmax(f_T(x)) || softmax(f_S(x)) )

which is :func:`ann.prune.plan.output_distance`: the same quantity the search minimised, now driven down by
training (``distance="mse"`` for a bare encoder's features). For a causal LM and a domain's text, the next-token
cross-entropy can be added (``task_loss=next_token_loss``): recovery then is also domain fine-tuning, and the
pruned model may end better *on that domain* than the unpruned one it distils from; compare it with the unpruned
model fine-tuned the same way too. Steps run through :func:`tasks.training.train_loop` (AdamW, warmup + cosine).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ann.finetune.lora import LoraSettings, add_lora, merge_lora
from ann.prune.plan import output_distance
from tasks.training import LoopConfig, train_loop

__all__ = ["kd_loss", "next_token_loss", "recover"]


def next_token_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Causal-LM cross-entropy of ``logits`` ``(B, T, V)`` against ``batch["input_ids"]`` shifted by one (nats/token)."""
    ids = batch["input_ids"]
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten().long())


def kd_loss(teacher: nn.Module, forward: Callable[[nn.Module, dict], torch.Tensor], *, distance: str = "kl",
            bf16: bool = False, task_loss: Callable[[torch.Tensor, dict], torch.Tensor] | None = None,
            ) -> Callable[[nn.Module, dict], torch.Tensor]:
    """``loss_fn(student, batch)`` = :func:`output_distance` (teacher -> student) of ``forward`` on ``batch``,
    plus ``task_loss(student output, batch)`` when given (e.g. :func:`next_token_loss`: distillation together with
    fine-tuning on the domain's data, ``L = L_KD + L_CE``; one student forward serves both).

    ``bf16``: both forwards under CPU bfloat16 autocast (weights and the losses stay float32); measured 1.75x
    faster per SmolLM2 training step on this project's AVX512-BF16 CPUs."""
    teacher.eval()

    def loss_fn(student: nn.Module, batch: dict) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            with torch.no_grad():
                t = forward(teacher, batch)
            s = forward(student, batch)
        loss = output_distance(t, s, distance)
        return loss if task_loss is None else loss + task_loss(s, batch)

    return loss_fn


def recover(model: nn.Module, batch_fn: Callable[[int, int, int], dict], loss_fn: Callable[[nn.Module, dict], torch.Tensor],
            *, steps: int, lr: float, lora_rank: int | None = None, seed: int = 0, progress: bool = True,
            desc: str = "prune-recovery") -> tuple[nn.Module, list[tuple[int, float]]]:
    """Fine-tune ``model`` for ``steps`` steps of ``loss_fn`` on ``batch_fn``'s batches (``tasks.training``'s
    contract); every weight, or LoRA adapters of rank ``lora_rank`` merged back at the end. Returns the model
    (in eval mode) and the (step, loss) log."""
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"recover: steps={steps!r} must be an int >= 1")
    if lora_rank is not None and not (isinstance(lora_rank, int) and lora_rank >= 1):
        raise ValueError(f"recover: lora_rank={lora_rank!r} must be None (all weights) or an int >= 1")
    trained = add_lora(model, LoraSettings(rank=lora_rank, alpha=2.0 * lora_rank)) if lora_rank else model
    cfg = LoopConfig(steps=steps, lr=lr, warmup_steps=min(20, steps // 10), seed=seed)
    trained.train()
    result = train_loop(trained, batch_fn=batch_fn, loss_fn=loss_fn, config=cfg, out_dir=None, progress=progress, desc=desc)
    out = merge_lora(trained) if lora_rank else trained
    out.eval()
    for p in out.parameters():
        p.requires_grad_(True)
    return out, list(result.losses)
