"""The reference multimodal foundation model: a LLaVA built from Hugging Face classes, nothing downloaded.

Architecture (Liu et al., "Visual Instruction Tuning", 2023), all HF ``transformers`` modules:

    pixels (B, C, S, S) --ViTModel--> (B, 1 + n*n, Dv) --drop CLS--> (B, n*n, Dv)        n = S / P
        --merge k x k neighbours--> (B, (n/k)^2, k*k*Dv) --Linear-GELU-Linear--> (B, (n/k)^2, Dt)
        --replace the (n/k)^2 <image> token embeddings of the prompt--> LlamaForCausalLM --> next-token logits

``S``: image size, ``P``: patch size (the ViT's patch embedding is a P x P convolution with stride P),
``k``: ``merge_factor`` (pixel-unshuffle token merging as in Idefics3/SmolVLM: each visual token handed to the
decoder concatenates a k x k block of patch features, so the decoder sees k^2 times fewer visual tokens).

:class:`MFMForConditionalGeneration` *is* a :class:`transformers.LlavaForConditionalGeneration` (same
forward, ``generate``, ``save_pretrained`` / ``from_pretrained`` in safetensors); its config,
:class:`MFMConfig` (``model_type="neuromfm_llava"``), adds ``merge_factor`` and is registered with
``AutoConfig`` and ``AutoModelForImageTextToText`` when this module is imported. With ``merge_factor=1`` the
projector is LLaVA's own. The ViT's pooler is dropped (LLaVA never reads it). The model takes raw pixels in
[0, 1] and normalizes them itself, ``(x - image_mean) / image_std`` (stored in the config, so a saved model
needs no separate image processor); without it the from-scratch ViT stayed at the question-only prior on
SynthMed (measured: 0.46 vs 0.63 per-template accuracy after 200 steps of vision-only training).

Two sizes of one family, :data:`MFM_PRESETS` ``small`` and ``large``, share the tokenizer and the image
geometry, so the small one can draft for / cascade into the large one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (AutoConfig, AutoModelForImageTextToText, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, ViTConfig)
from transformers.activations import ACT2FN

__all__ = ["MFMSpec", "MFM_PRESETS", "MFMConfig", "MFMForConditionalGeneration", "MergeProjector",
           "build_mfm", "num_visual_tokens"]


def num_visual_tokens(image_size: int, patch_size: int, merge_factor: int) -> int:
    """Visual tokens the decoder sees: ``(image_size / patch_size / merge_factor)^2``."""
    return (image_size // patch_size // merge_factor) ** 2


@dataclass(frozen=True)
class MFMSpec:
    """Sizes of one MFM (all widths in features, sizes in pixels).

    Attributes:
        image_size: side S of the square input image; must be divisible by ``patch_size``.
        patch_size: side P of a ViT patch (= the patch-embedding stride).
        merge_factor: k; ``image_size / patch_size`` must be divisible by k.
        num_channels: image channels (1 for the grey-scale SynthMed scans).
        vision_hidden, vision_layers, vision_heads: ViT width, depth, attention heads.
        text_hidden, text_layers, text_heads, text_kv_heads: Llama decoder width, depth, query heads and
            grouped key/value heads (``text_heads`` divisible by ``text_kv_heads``).
        mlp_ratio: MLP hidden = mlp_ratio * width, in both towers.
        max_positions: the decoder's maximum sequence length.
    """

    image_size: int = 64
    patch_size: int = 8
    merge_factor: int = 1
    num_channels: int = 1
    vision_hidden: int = 128
    vision_layers: int = 4
    vision_heads: int = 4
    text_hidden: int = 128
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    mlp_ratio: int = 4
    max_positions: int = 256

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"MFMSpec.{name}={getattr(self, name)!r} is invalid: {fix}")

        for name in dataclasses.fields(self):
            v = getattr(self, name.name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name.name, "use a positive int")
        need(self.image_size % self.patch_size == 0, "image_size",
             f"image_size must be divisible by patch_size={self.patch_size} (e.g. {self.patch_size * (self.image_size // self.patch_size or 1)})")
        n = self.image_size // self.patch_size
        need(n % self.merge_factor == 0, "merge_factor",
             f"the patch grid is {n} x {n}; use a merge_factor that divides {n}")
        need(self.vision_hidden % self.vision_heads == 0, "vision_heads", f"must divide vision_hidden={self.vision_hidden}")
        need(self.text_hidden % self.text_heads == 0, "text_heads", f"must divide text_hidden={self.text_hidden}")
        need(self.text_heads % self.text_kv_heads == 0, "text_kv_heads", f"must divide text_heads={self.text_heads}")
        need(self.max_positions > num_visual_tokens(self.image_size, self.patch_size, self.merge_factor), "max_positions",
             "must exceed the number of visual tokens (image_size / patch_size / merge_factor)^2")


MFM_PRESETS: dict[str, MFMSpec] = {
    # ~61 k parameters: a shallow, narrow pair of towers (the cheap tier / draft).
    "small": MFMSpec(vision_hidden=48, vision_layers=1, vision_heads=2, text_hidden=48, text_layers=1,
                     text_heads=2, text_kv_heads=1, mlp_ratio=2, patch_size=16),
    # ~62 k parameters: the small towers on the large one's patch grid (8 px patches, 2 x 2 token merging), so
    # small lesions' shape and size stay visible; ~6 % of the large one's FLOPs per question, the SynthMed cascade's
    # cheap tier (benchmarks.cascade; session 15: 15000 steps, test accuracy 0.820 vs the large one's 0.855).
    "small-fine": MFMSpec(vision_hidden=48, vision_layers=1, vision_heads=2, text_hidden=48, text_layers=1,
                          text_heads=2, text_kv_heads=1, mlp_ratio=2, patch_size=8, merge_factor=2),
    # ~0.8 M parameters: the widths and depths that fit the 15-minute, 2-core training budget with enough steps.
    "large": MFMSpec(vision_hidden=96, vision_layers=3, vision_heads=4, text_hidden=96, text_layers=3,
                     text_heads=4, text_kv_heads=2, mlp_ratio=4, patch_size=8, merge_factor=2),
}


@strict
class MFMConfig(LlavaConfig):
    """:class:`transformers.LlavaConfig` plus ``merge_factor`` (k x k visual-token merging)."""

    model_type = "neuromfm_llava"
    merge_factor: int = 1
    image_mean: float = 0.0
    image_std: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        v = self.vision_config
        if not self.image_std > 0:
            raise ValueError(f"MFMConfig.image_std={self.image_std!r} is invalid: use a positive float")
        if not (isinstance(self.merge_factor, int) and self.merge_factor >= 1):
            raise ValueError(f"MFMConfig.merge_factor={self.merge_factor!r} is invalid: use a positive int")
        if v.image_size % v.patch_size:
            raise ValueError(f"vision_config.image_size={v.image_size} is not divisible by vision_config.patch_size="
                             f"{v.patch_size}: change one of them")
        if (v.image_size // v.patch_size) % self.merge_factor:
            raise ValueError(f"merge_factor={self.merge_factor} does not divide the {v.image_size // v.patch_size}-patch "
                             "grid side: use a divisor of image_size / patch_size")


class MergeProjector(nn.Module):
    """LLaVA's two-layer projector after k x k token merging.

    ``(B, n*n, Dv) -> (B, (n/k)^2, k*k*Dv) -> linear_1 -> GELU -> linear_2 -> (B, (n/k)^2, Dt)``; the merged
    token (i, j) concatenates patches (k*i + a, k*j + b) for a, b in [0, k), row-major.
    """

    def __init__(self, config: MFMConfig) -> None:
        super().__init__()
        self.merge_factor = config.merge_factor
        k2 = config.merge_factor ** 2
        dt = config.text_config.hidden_size
        self.linear_1 = nn.Linear(config.vision_config.hidden_size * k2, dt, bias=config.multimodal_projector_bias)
        self.act = ACT2FN[config.projector_hidden_act]
        self.linear_2 = nn.Linear(dt, dt, bias=config.multimodal_projector_bias)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        k = self.merge_factor
        if k == 1:
            return x
        B, N, D = x.shape
        n = int(round(N ** 0.5))
        x = x.reshape(B, n // k, k, n // k, k, D)  # (B, i, a, j, b, D)
        return x.permute(0, 1, 3, 2, 4, 5).reshape(B, (n // k) ** 2, k * k * D)  # (B, (n/k)^2, k*k*D)

    def forward(self, image_features: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(self.merge(image_features))))


class MFMForConditionalGeneration(LlavaForConditionalGeneration):
    """A :class:`transformers.LlavaForConditionalGeneration` with :class:`MergeProjector` and no ViT pooler."""

    config_class = MFMConfig

    def __init__(self, config: MFMConfig) -> None:
        super().__init__(config)
        self.model.vision_tower.pooler = None
        # LLaVA reads the last hidden state *before* the ViT's final LayerNorm (vision_feature_layer=-1), so that
        # norm never gets a gradient; freezing it keeps DDP (which refuses unused trainable parameters) working.
        self.model.vision_tower.layernorm.requires_grad_(False)
        self.model.multi_modal_projector = MergeProjector(config)
        self.post_init()

    def normalize(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(pixels - image_mean) / image_std``: raw [0, 1] pixels in, what the ViT was trained on out."""
        return (pixel_values - self.config.image_mean) / self.config.image_std

    def get_image_features(self, pixel_values: torch.Tensor, **kwargs):
        return super().get_image_features(pixel_values=self.normalize(pixel_values), **kwargs)

    def forward(self, input_ids=None, pixel_values=None, **kwargs):
        if pixel_values is not None:
            pixel_values = self.normalize(pixel_values)
        return super().forward(input_ids=input_ids, pixel_values=pixel_values, **kwargs)

    @property
    def num_visual_tokens(self) -> int:
        v = self.config.vision_config
        return num_visual_tokens(v.image_size, v.patch_size, self.config.merge_factor)


AutoConfig.register(MFMConfig.model_type, MFMConfig, exist_ok=True)
AutoModelForImageTextToText.register(MFMConfig, MFMForConditionalGeneration, exist_ok=True)


def build_mfm(spec: MFMSpec, *, vocab_size: int, image_token_id: int, pad_token_id: int, bos_token_id: int,
              eos_token_id: int, seed: int = 0, image_mean: float = 0.3, image_std: float = 0.25
              ) -> MFMForConditionalGeneration:
    """A randomly initialised MFM (seeded) of the given sizes for a tokenizer with these special ids.

    ``image_mean``/``image_std``: pixel statistics of the training images (defaults: SynthMed's, 0.31 / 0.23).
    """
    vision = ViTConfig(image_size=spec.image_size, patch_size=spec.patch_size, num_channels=spec.num_channels,
                       hidden_size=spec.vision_hidden, num_hidden_layers=spec.vision_layers,
                       num_attention_heads=spec.vision_heads, intermediate_size=spec.mlp_ratio * spec.vision_hidden,
                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    text = LlamaConfig(vocab_size=vocab_size, hidden_size=spec.text_hidden, num_hidden_layers=spec.text_layers,
                       num_attention_heads=spec.text_heads, num_key_value_heads=spec.text_kv_heads,
                       intermediate_size=spec.mlp_ratio * spec.text_hidden, max_position_embeddings=spec.max_positions,
                       tie_word_embeddings=True, pad_token_id=pad_token_id, bos_token_id=bos_token_id,
                       eos_token_id=eos_token_id)
    config = MFMConfig(vision_config=vision, text_config=text, merge_factor=spec.merge_factor,
                       image_token_index=image_token_id, vision_feature_layer=-1,
                       vision_feature_select_strategy="default", tie_word_embeddings=True,
                       image_seq_length=num_visual_tokens(spec.image_size, spec.patch_size, spec.merge_factor),
                       pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
                       image_mean=image_mean, image_std=image_std)
    torch.manual_seed(seed)
    return MFMForConditionalGeneration(config).eval()
