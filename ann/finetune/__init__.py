"""Fine-tuning of ANN-track models: LoRA adapters (``ann.finetune.lora``) and task entry points
(``python -m ann.finetune TASK ...``)."""

from ann.finetune.lora import LoraSettings, add_lora, merge_lora, trainable_fraction

__all__ = ["LoraSettings", "add_lora", "merge_lora", "trainable_fraction"]
