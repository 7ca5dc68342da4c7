r"""Run an MFM with visual-token pruning in both towers and a resolution change at the input.

:class:`TokenPrunedMFM` wraps a (geometry-adapted, :mod:`ann.cooptimize.geometry`) MFM and runs its own loops over
the HF layers, so that tokens can be dropped between layers (the HF forwards keep every token):

- **Input**: raw [0, 1] scans of any square size are area-resized to the model's ``image_size``
  (:func:`~ann.cooptimize.geometry.resize_images`), then normalized as the MFM does.
- **ViT token pruning** (EViT-style attentive token selection, Liang et al., ICLR 2022, with token *skipping*
  instead of fusing): at the input of ViT layer ``vit_layer`` every patch token gets the attention the CLS token
  pays it there, averaged over heads,

      s_j = (1 / h) sum_heads softmax_j(q_cls . k_j / sqrt(d)),   q, k from that layer's LayerNorm + Q/K projections

  the ``ceil(vit_keep * N)`` highest-scoring patches (and CLS) go through the remaining layers, the others keep
  the features they had and skip them. The patch grid stays whole, so the projector's k x k merge is unchanged.
- **Decoder visual-token pruning** (FastV, Chen et al., ECCV 2024): at the input of decoder layer
  ``llm_layer`` each visual token gets the attention the *last* token pays it there (with rotary positions and
  grouped K/V heads, averaged over query heads); only the ``ceil(llm_keep * V)`` highest keep going, the others
  are dropped from the sequence for all later layers (the kept tokens keep their original positions).

With ``vit_keep = llm_keep = 1`` it computes exactly what the wrapped MFM computes (tested); the loops call the
HF layers themselves (``ViTLayer``, ``LlamaDecoderLayer``), so their attention backend (SDPA) is unchanged. It has
the duck type :mod:`ann.train.vqa` needs (``get_image_features``, ``get_input_embeddings``, ``config``, a forward
on ``inputs_embeds`` / ``attention_mask`` / ``position_ids`` returning ``.logits``), and a forward on
``input_ids`` + ``pixel_values`` for tracing (:func:`neurohw.workload.trace`). No KV cache: every call runs the
whole sequence (what :func:`ann.train.vqa.greedy_answers` does).
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

from ann.cooptimize.geometry import resize_images

__all__ = ["TokenPrunedMFM"]


def _check_keep(name: str, keep: float) -> float:
    if not (isinstance(keep, (int, float)) and 0.0 < keep <= 1.0):
        raise ValueError(f"{name}={keep!r} is invalid: the fraction of tokens kept, in (0, 1]")
    return float(keep)


class TokenPrunedMFM(nn.Module):
    """An MFM run with token pruning (module docstring). ``vit_layer`` / ``llm_layer``: index of the layer at
    whose input tokens are pruned (``0 <= layer < depth``; checked only where that tower prunes)."""

    def __init__(self, mfm: nn.Module, *, vit_keep: float = 1.0, vit_layer: int = 0, llm_keep: float = 1.0,
                 llm_layer: int = 1) -> None:
        super().__init__()
        self.mfm = mfm
        self.vit_keep, self.llm_keep = _check_keep("vit_keep", vit_keep), _check_keep("llm_keep", llm_keep)
        depth_v = len(mfm.model.vision_tower.layers)
        depth_t = len(mfm.model.language_model.layers)
        if self.vit_keep < 1 and not (isinstance(vit_layer, int) and 0 <= vit_layer < depth_v):
            raise ValueError(f"vit_layer={vit_layer!r} is invalid: a ViT layer index in [0, {depth_v})")
        if self.llm_keep < 1 and not (isinstance(llm_layer, int) and 0 <= llm_layer < depth_t):
            raise ValueError(f"llm_layer={llm_layer!r} is invalid: a decoder layer index in [0, {depth_t})")
        self.vit_layer, self.llm_layer = vit_layer, llm_layer

    # -- what ann.train.vqa reads ------------------------------------------------------------------------------
    @property
    def config(self):
        return self.mfm.config

    @property
    def num_visual_tokens(self) -> int:
        return self.mfm.num_visual_tokens

    def get_input_embeddings(self) -> nn.Module:
        return self.mfm.get_input_embeddings()

    # -- vision ------------------------------------------------------------------------------------------------
    def _vit(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized pixels (B, C, S, S) -> last ViT hidden states without CLS, before the final norm: (B, N, Dv)."""
        vit = self.mfm.model.vision_tower
        h = vit.embeddings(x)  # (B, 1 + N, Dv)
        B, T, D = h.shape
        idx = None
        for i, layer in enumerate(vit.layers):
            if i == self.vit_layer and self.vit_keep < 1.0:
                n_keep = math.ceil(self.vit_keep * (T - 1))
                top = self._cls_attention(layer, h).topk(n_keep, dim=1).indices.sort(1).values + 1  # (B, n_keep)
                idx = torch.cat([torch.zeros_like(top[:, :1]), top], 1)  # CLS first
                full, h = h, h.gather(1, idx[..., None].expand(-1, -1, D))  # (B, 1 + n_keep, Dv)
            h = layer(h, None)
        if idx is not None:
            h = full.scatter(1, idx[..., None].expand(-1, -1, D), h)  # skipped tokens keep their features
        return h[:, 1:]

    @staticmethod
    def _cls_attention(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
        """Attention of CLS to every patch at ``layer``'s input, mean over heads: (B, 1 + N, Dv) -> (B, N)."""
        att = layer.attention
        hn = layer.layernorm_before(h)
        B, T, _ = h.shape
        nh, d = att.num_attention_heads, att.head_dim
        q = att.q_proj(hn[:, :1]).view(B, 1, nh, d).transpose(1, 2)  # (B, nh, 1, d)
        k = att.k_proj(hn).view(B, T, nh, d).transpose(1, 2)  # (B, nh, T, d)
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1)  # (B, nh, 1, d) x (B, nh, d, T) -> (B, nh, 1, T)
        return p[:, :, 0, 1:].mean(1)  # (B, N)

    def get_image_features(self, pixel_values: torch.Tensor, **_) -> SimpleNamespace:
        """Projected visual tokens of raw [0, 1] scans of any square size: ``.pooler_output`` (B, V, Dt)."""
        size = self.mfm.config.vision_config.image_size
        feats = self._vit(self.mfm.normalize(resize_images(pixel_values, size)))
        return SimpleNamespace(pooler_output=self.mfm.model.multi_modal_projector(feats))

    # -- decoder -----------------------------------------------------------------------------------------------
    def _last_token_attention(self, layer: nn.Module, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                              keys: torch.Tensor) -> torch.Tensor:
        """Attention of the last token to every position at ``layer``'s input, mean over heads: (B, L)."""
        att = layer.self_attn
        hn = layer.input_layernorm(h)
        B, L, _ = h.shape
        d = att.head_dim
        q = att.q_proj(hn).view(B, L, -1, d).transpose(1, 2)  # (B, nh, L, d)
        k = att.k_proj(hn).view(B, L, -1, d).transpose(1, 2)  # (B, nkv, L, d)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        k = repeat_kv(k, att.num_key_value_groups)  # (B, nh, L, d)
        s = q[:, :, -1:] @ k.transpose(-1, -2) / math.sqrt(d)  # (B, nh, 1, d) x (B, nh, d, L) -> (B, nh, 1, L)
        s = s.masked_fill(~keys[:, None, None, :], float("-inf"))
        return torch.softmax(s, -1)[:, :, 0].mean(1)  # (B, L)

    @staticmethod
    def _mask(keys: torch.Tensor) -> torch.Tensor:
        """Boolean attention mask (B, 1, L, L): causal and not padding; a padding query sees itself (no NaN rows)."""
        L = keys.shape[1]
        causal = torch.ones(L, L, dtype=torch.bool, device=keys.device).tril()
        return (causal & keys[:, None, None, :]) | torch.eye(L, dtype=torch.bool, device=keys.device)

    def _decode(self, embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        lm = self.mfm.model.language_model
        h, keys, pos = embeds, attention_mask.bool(), position_ids
        cos, sin = lm.rotary_emb(h, position_ids=pos)  # (B, L, d) each
        mask = self._mask(keys)
        V = self.num_visual_tokens
        for i, layer in enumerate(lm.layers):
            if i == self.llm_layer and self.llm_keep < 1.0:
                B, L, D = h.shape
                start = L - keys.sum(1)  # (B,) first real token (<bos>); the visual tokens follow it
                vis = start[:, None] + 1 + torch.arange(V, device=h.device)  # (B, V)
                score = self._last_token_attention(layer, h, cos, sin, keys).gather(1, vis)
                kept = vis.gather(1, score.topk(math.ceil(self.llm_keep * V), dim=1).indices)
                drop = torch.zeros(B, L, dtype=torch.bool, device=h.device).scatter(1, vis, True).scatter(1, kept, False)
                idx = (~drop).nonzero()[:, 1].view(B, -1)  # (B, L'), positions in order
                h = h.gather(1, idx[..., None].expand(-1, -1, D))
                cos = cos.gather(1, idx[..., None].expand(-1, -1, cos.shape[-1]))
                sin = sin.gather(1, idx[..., None].expand(-1, -1, sin.shape[-1]))
                keys, pos = keys.gather(1, idx), pos.gather(1, idx)
                mask = self._mask(keys)
            h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos)
        return self.mfm.lm_head(lm.norm(h))

    def forward(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                inputs_embeds: torch.Tensor | None = None) -> SimpleNamespace:
        """Logits (B, L', vocab) of left-padded prompts; either ``inputs_embeds`` (visual slots already filled) or
        ``input_ids`` + ``pixel_values``. ``L'`` < L when the decoder pruned visual tokens."""
        if inputs_embeds is None:
            if input_ids is None or pixel_values is None:
                raise ValueError("give inputs_embeds, or input_ids together with pixel_values")
            feats = self.get_image_features(pixel_values).pooler_output  # (B, V, Dt)
            embeds = self.get_input_embeddings()(input_ids)  # (B, L, Dt)
            slots = (input_ids == self.config.image_token_id).unsqueeze(-1)
            if int(slots.sum()) != feats.shape[0] * feats.shape[1]:
                raise ValueError(f"input_ids hold {int(slots.sum())} <image> tokens, the images give "
                                 f"{feats.shape[0] * feats.shape[1]}: encode prompts with num_visual_tokens="
                                 f"{self.num_visual_tokens}")
            inputs_embeds = embeds.masked_scatter(slots, feats.to(embeds.dtype))
        if attention_mask is None:
            attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp_min(0)
        return SimpleNamespace(logits=self._decode(inputs_embeds, attention_mask, position_ids))
