"""LoRA (low-rank adaptation) of HF models through ``peft``: settings, injection, counting, merging.

For each targeted linear layer ``y = W x`` (``W``: (out, in)) LoRA adds a trainable low-rank update while ``W``
stays frozen::

    y = W x + (alpha / r) * B (A dropout(x))         A: (r, in), B: (out, r)
    W_merged = W + (alpha / r) * B A                 (after training: one ordinary linear layer again)

``A`` starts Kaiming-uniform and ``B`` at zero, so the adapted model starts exactly equal to the base model.
Trainable parameters per layer: ``r * (in + out)`` instead of ``in * out``. Reference: Hu et al., "LoRA:
Low-Rank Adaptation of Large Language Models", ICLR 2022; implementation: ``peft.LoraConfig`` /
``get_peft_model`` / ``merge_and_unload``.

Targets (``LoraSettings.target_modules = None``) are picked by ``model.config.model_type``, first match wins
(:data:`FAMILY_TARGETS`): every attention and MLP projection of Llama-family decoders and of ViT encoders
(transformers 5 names them ``q_proj`` ... ``o_proj``, ``fc1``, ``fc2``); ``query``, ``key``, ``value`` and every
``dense`` layer (attention output, MLP in and out, pooler) of BERT encoders. Classification heads are not
adapted (a new head that must be trained fully is a separate choice of the caller).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

__all__ = ["LoraSettings", "FAMILY_TARGETS", "default_targets", "add_lora", "trainable_fraction", "merge_lora"]

FAMILY_TARGETS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("llama", "mistral", "qwen2"), ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")),
    (("vit",), ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")),  # transformers 5 ViT layer names
    (("bert",), ("query", "key", "value", "dense")),
)
"""``(model_types, target module names)`` rows; one row per family, first match wins."""


@dataclass(frozen=True, kw_only=True)
class LoraSettings:
    """LoRA hyper-parameters (symbols as in the module docstring).

    Attributes:
        rank: r, the rank of the update ``B A`` (>= 1).
        alpha: the update is scaled by ``alpha / r`` (> 0).
        dropout: dropout probability on the adapter's input, in [0, 1).
        target_modules: names (last component) of the linear layers to adapt; None picks them by model family.
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoraSettings.rank={self.rank!r} is invalid: use an int >= 1 (8 or 16 are usual)")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoraSettings.alpha={self.alpha!r} is invalid: use a number > 0 (often 2 * rank)")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoraSettings.dropout={self.dropout!r} is invalid: use a float in [0, 1)")
        if self.target_modules is not None:
            names = self.target_modules
            if isinstance(names, str) or not all(isinstance(n, str) and n for n in names) or not names:
                raise ValueError(f"LoraSettings.target_modules={names!r} is invalid: use a non-empty tuple of module "
                                 "names such as ('q_proj', 'v_proj'), or None to pick them by model family")
            object.__setattr__(self, "target_modules", tuple(names))

    @property
    def scale(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank


def default_targets(model: nn.Module) -> tuple[str, ...]:
    """Target module names for ``model``'s family (:data:`FAMILY_TARGETS`, from ``model.config.model_type``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    for model_types, targets in FAMILY_TARGETS:
        if model_type in model_types:
            return targets
    known = ", ".join(t for types, _ in FAMILY_TARGETS for t in types)
    raise ValueError(f"no default LoRA targets for model_type {model_type!r} (known: {known}); "
                     "set LoraSettings.target_modules to the names of the linear layers to adapt")


def add_lora(model: nn.Module, settings: LoraSettings):
    """Wrap ``model`` in a ``peft.PeftModel`` with LoRA adapters; only the adapters are trainable.

    The adapters are injected into ``model`` itself (peft replaces the targeted layers in place), so code that
    holds ``model`` runs the adapted network too.
    """
    from peft import LoraConfig, get_peft_model

    if not isinstance(settings, LoraSettings):
        raise TypeError(f"settings must be a LoraSettings; got {type(settings).__name__}")
    targets = settings.target_modules if settings.target_modules is not None else default_targets(model)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(targets), bias="none")
    try:
        return get_peft_model(model, config)
    except ValueError as e:
        if "not found in the base model" in str(e) or "Target modules" in str(e):
            raise ValueError(f"LoraSettings.target_modules={targets} matches no layer of {type(model).__name__}: "
                             f"use names of its linear layers ({e})") from e
        raise


def trainable_fraction(model: nn.Module) -> tuple[int, int, float]:
    """``(trainable, total, trainable / total)`` parameter counts; shared (tied) tensors are counted once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    if total == 0:
        raise ValueError("trainable_fraction: the model has no parameters")
    return trainable, total, trainable / total


def merge_lora(peft_model) -> nn.Module:
    """Fold every adapter into its layer (``W + (alpha / r) B A``) and return the plain base model.

    The merged model computes the same function as the adapted one (up to float rounding); ``peft_model`` is
    consumed (its layers are replaced in place).
    """
    if not hasattr(peft_model, "merge_and_unload"):
        raise TypeError(f"merge_lora needs the PeftModel returned by add_lora; got {type(peft_model).__name__}")
    return peft_model.merge_and_unload()
