r"""Attention and gated-MLP rewrites: one GEMM for Q, K and V, one for gate and up, SDPA called directly.

Dimension letters: B batch, L query tokens, S key/value tokens (past + new), D model width, h query heads,
h_kv key/value heads (h_kv = h for ViT; h_kv < h with grouped-query attention), d head width, I MLP width.

Merged projections. Three linears on the same input, ``q = x W_q^T + b_q``, ``k = x W_k^T + b_k``,
``v = x W_v^T + b_v``, are one linear with the rows stacked, ``[q | k | v] = x [W_q; W_k; W_v]^T + [b_q; b_k; b_v]``
(``W_q``: (h d, D); ``W_k``, ``W_v``: (h_kv d, D)), and the output is split along its last dimension. Likewise
LlamaMLP's ``down(act(x W_g^T) * (x W_u^T))`` takes ``[g | u] = x [W_g; W_u]^T``. Same maths, one wider GEMM (and
one weight read, one call) instead of three / two.

The rewritten attention modules (:class:`FusedViTAttention`, :class:`FusedLlamaAttention`) subclass HF's so
HF's isinstance-based plumbing (output recording) still finds them, take the same arguments, update the same
KV cache (``past_key_values.update``) and call ``torch.nn.functional.scaled_dot_product_attention`` themselves
with the mask HF built (boolean, additive float or None, whatever the config's attention implementation made),
with ``is_causal`` set exactly when HF's own SDPA path sets it. Rotary embeddings are applied to Q and K in one
go (they are adjacent heads of the merged output):

    x_rot = x * cos + rotate_half(x) * sin,   rotate_half([x1, x2]) = [-x2, x1]   (halves of d)

Fused models are for inference: the state dict has ``qkv_proj`` / ``gate_up_proj`` where HF has
``q_proj``/``k_proj``/``v_proj`` / ``gate_proj``/``up_proj`` (fuse a copy to keep the original).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP
from transformers.models.vit.modeling_vit import ViTAttention

from ann.fusion.framework import NotApplicable, PatternError, Rewrite

__all__ = ["FusedViTAttention", "FusedLlamaAttention", "FusedLlamaMLP", "merge_linears", "rewrite_merge_qkv",
           "rewrite_sdpa", "MERGE_PATTERNS", "SDPA_PATTERNS"]

SDPA_PATTERNS = ("hf-attention->sdpa",)
MERGE_PATTERNS = ("vit-qkv", "llama-qkv", "llama-gate-up")


def merge_linears(linears: list[nn.Linear]) -> nn.Linear:
    """One ``nn.Linear`` whose output is the concatenation of the ``linears``' outputs (same input width)."""
    if any(type(m) is not nn.Linear for m in linears):
        raise TypeError(f"merge_linears needs plain nn.Linear layers, got {[type(m).__name__ for m in linears]}")
    k = {m.in_features for m in linears}
    if len(k) != 1:
        raise ValueError(f"merge_linears: input widths differ ({sorted(k)})")
    has_bias = [m.bias is not None for m in linears]
    w0 = linears[0].weight
    out = nn.Linear(k.pop(), sum(m.out_features for m in linears), bias=any(has_bias), device=w0.device, dtype=w0.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in linears], dim=0))  # (sum n_i, D)
        if out.bias is not None:
            out.bias.copy_(torch.cat([m.bias if m.bias is not None else m.weight.new_zeros(m.out_features)
                                      for m in linears]))
    out.weight.requires_grad_(w0.requires_grad)
    return out


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class FusedViTAttention(ViTAttention):
    """:class:`ViTAttention` with ``qkv_proj`` (merged) and SDPA called directly; ``o_proj`` is the original."""

    def __init__(self, attn: ViTAttention) -> None:
        nn.Module.__init__(self)  # the parent's __init__ would build fresh q/k/v projections
        for name in ("config", "num_attention_heads", "head_dim", "attention_dropout", "scaling", "is_causal"):
            setattr(self, name, getattr(attn, name))
        self.qkv_proj = merge_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o_proj = attn.o_proj
        self.train(attn.training)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        B, L, _ = hidden_states.shape
        h, d = self.num_attention_heads, self.head_dim
        qkv = self.qkv_proj(hidden_states).view(B, L, 3, h, d).permute(2, 0, 3, 1, 4)  # (3, B, h, L, d)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attention_mask, scale=self.scaling,
                                             dropout_p=self.attention_dropout if self.training else 0.0)  # (B, h, L, d)
        out = out.transpose(1, 2).reshape(B, L, h * d)  # (B, L, h d)
        return self.o_proj(out), None


class FusedLlamaAttention(LlamaAttention):
    """:class:`LlamaAttention` with ``qkv_proj`` (merged, GQA-aware), rotary on Q and K at once, SDPA directly."""

    def __init__(self, attn: LlamaAttention) -> None:
        nn.Module.__init__(self)
        for name in ("config", "layer_idx", "head_dim", "num_key_value_groups", "scaling", "attention_dropout", "is_causal"):
            setattr(self, name, getattr(attn, name))
        self.num_heads = attn.q_proj.out_features // attn.head_dim
        self.num_kv_heads = attn.k_proj.out_features // attn.head_dim
        self.qkv_proj = merge_linears([attn.q_proj, attn.k_proj, attn.v_proj])
        self.o_proj = attn.o_proj
        self.train(attn.training)

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                attention_mask: torch.Tensor | None = None, past_key_values=None, **kwargs):
        B, L, _ = hidden_states.shape
        h, hkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.qkv_proj(hidden_states).view(B, L, h + 2 * hkv, d).transpose(1, 2)  # (B, h + 2 h_kv, L, d)
        cos, sin = position_embeddings  # (B or 1, L, d)
        qk = qkv[:, : h + hkv]  # (B, h + h_kv, L, d)
        qk = qk * cos.unsqueeze(1) + _rotate_half(qk) * sin.unsqueeze(1)
        q, k = qk.split((h, hkv), dim=1)  # (B, h, L, d), (B, h_kv, L, d)
        v = qkv[:, h + hkv:]  # (B, h_kv, L, d)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)  # (B, h_kv, S, d)
        S = k.shape[2]
        # HF's SDPA path: the causal flag only without a mask and for more than one query token
        is_causal = L > 1 and attention_mask is None and self.is_causal
        if is_causal and S > L:  # an empty static cache: its tail is masked anyway
            k, v = k[:, :, :L], v[:, :, :L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, is_causal=is_causal, scale=self.scaling,
                                             dropout_p=self.attention_dropout if self.training else 0.0,
                                             enable_gqa=h != hkv)  # (B, h, L, d)
        out = out.transpose(1, 2).reshape(B, L, h * d)  # (B, L, h d)
        return self.o_proj(out), None


class FusedLlamaMLP(LlamaMLP):
    """:class:`LlamaMLP` with ``gate_up_proj`` (gate and up merged); ``down_proj`` and ``act_fn`` are the original."""

    def __init__(self, mlp: LlamaMLP) -> None:
        nn.Module.__init__(self)
        self.config, self.hidden_size, self.intermediate_size = mlp.config, mlp.hidden_size, mlp.intermediate_size
        self.gate_up_proj = merge_linears([mlp.gate_proj, mlp.up_proj])
        self.down_proj, self.act_fn = mlp.down_proj, mlp.act_fn
        self.train(mlp.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)  # (..., I) each
        return self.down_proj(self.act_fn(gate) * up)


def _plain(*linears) -> bool:
    return all(type(m) is nn.Linear for m in linears)


def rewrite_merge_qkv(model: nn.Module, only: frozenset[str] | None = None) -> list[Rewrite]:
    """Swap ViTAttention / LlamaAttention / LlamaMLP (with plain ``nn.Linear`` projections) for the merged ones."""
    sites = []
    for parent_name, parent in model.named_modules():
        for name, child in parent.named_children():
            where = f"{parent_name}.{name}" if parent_name else name
            if type(child) is ViTAttention and _plain(child.q_proj, child.k_proj, child.v_proj):
                sites.append(("vit-qkv", where, parent, name, FusedViTAttention))
            elif type(child) is LlamaAttention and _plain(child.q_proj, child.k_proj, child.v_proj):
                sites.append(("llama-qkv", where, parent, name, FusedLlamaAttention))
            elif type(child) is LlamaMLP and _plain(child.gate_proj, child.up_proj):
                sites.append(("llama-gate-up", where, parent, name, FusedLlamaMLP))
    out = []
    for pattern, where, parent, name, cls in sites:
        if only is not None and pattern not in only:
            continue
        try:
            setattr(parent, name, cls(getattr(parent, name)))
        except Exception as e:  # noqa: BLE001 - named for the report
            raise PatternError(pattern, where, f"{type(e).__name__}: {e}") from e
        out.append(Rewrite(pattern, where))
    return out


def rewrite_sdpa(model: nn.Module, only: frozenset[str] | None = None) -> list[Rewrite]:
    """HF models: ``set_attn_implementation("sdpa")`` (one rewrite per HF attention module it reroutes).

    Rewritten attention modules call SDPA themselves, whatever the config says."""
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel):
        raise NotApplicable("not a Hugging Face model (own attention modules call SDPA directly)")
    attn = [n for n, m in model.named_modules() if type(m) in (ViTAttention, LlamaAttention)
            or (type(m).__name__.endswith("Attention") and hasattr(m, "config") and not type(m).__name__.startswith("Fused"))]
    configs = [m.config for m in model.modules() if isinstance(m, PreTrainedModel)]
    if all(c._attn_implementation == "sdpa" for c in configs):
        raise NotApplicable("the model already runs HF's sdpa attention")
    model.set_attn_implementation("sdpa")
    return [Rewrite("hf-attention->sdpa", n) for n in attn] or [Rewrite("hf-attention->sdpa", "")]
