r"""Physical pruning of Llama-family decoders (``LlamaForCausalLM`` and models with its layout: SmolLM2).

Coupled weights (what goes together):

- MLP channel ``j`` of a layer: row ``j`` of ``gate_proj`` and ``up_proj``, column ``j`` of ``down_proj``;
- KV group ``g`` of a layer (grouped-query attention, ``r = heads / kv_heads`` query heads per KV head):
  rows ``[g d, (g+1) d)`` of ``k_proj`` and ``v_proj``, rows of its ``r`` query heads in ``q_proj`` and the
  matching columns of ``o_proj`` (``d`` = head_dim). Removing whole groups keeps GQA's pairing intact;
- a block: the whole decoder layer (the residual stream passes through unchanged).

A Hugging Face config holds one ``intermediate_size``, one head count and one layer count, so every layer keeps
the same number of channels and groups (which ones is per layer): the result is an ordinary model that
``save_pretrained`` / ``from_pretrained`` handle. ``head_dim`` is written to the config explicitly, since
``hidden_size / num_attention_heads`` no longer gives it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["check_llama", "mlp_channel_slices", "kv_group_slices", "prune_mlp_channels", "prune_kv_groups",
           "drop_blocks"]


def check_llama(model: nn.Module) -> None:
    """Refuse, before anything is touched, a model whose layout this surgery does not know."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    ok = layers is not None and len(layers) > 0 and all(
        hasattr(l, "self_attn") and hasattr(l, "mlp") and all(hasattr(l.mlp, n) for n in ("gate_proj", "up_proj", "down_proj"))
        and all(hasattr(l.self_attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")) for l in layers)
    if not ok:
        raise ValueError(f"{type(model).__name__}: not a Llama-style decoder (model.layers[i].self_attn.{{q,k,v,o}}_proj, "
                         ".mlp.{gate,up,down}_proj); this surgery knows only that layout so far")


def _head_dim(model: nn.Module) -> int:
    c = model.config
    return getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads


def mlp_channel_slices(layer: nn.Module, j: torch.Tensor) -> list:
    """The coupled slices of MLP channels ``j`` (for :mod:`ann.prune.importance`)."""
    m = layer.mlp
    return [(m.gate_proj, 0, j), (m.up_proj, 0, j), (m.down_proj, 1, j)]


def _group_rows(model: nn.Module, groups: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of KV groups ``groups`` in k/v_proj and in q_proj (= o_proj's columns)."""
    d, r = _head_dim(model), model.config.num_attention_heads // model.config.num_key_value_heads
    kv = torch.cat([torch.arange(g * d, (g + 1) * d) for g in groups])
    q = torch.cat([torch.arange(g * r * d, (g + 1) * r * d) for g in groups])
    return kv, q


def kv_group_slices(model: nn.Module, layer: nn.Module, g: int) -> list:
    """The coupled slices of KV group ``g`` of ``layer``."""
    kv, q = _group_rows(model, [g])
    a = layer.self_attn
    return [(a.k_proj, 0, kv), (a.v_proj, 0, kv), (a.q_proj, 0, q), (a.o_proj, 1, q)]


def _cut(linear: nn.Linear, axis: int, keep: torch.Tensor) -> nn.Linear:
    w = linear.weight.detach().index_select(axis, keep)
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        out.weight.copy_(w)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach() if axis == 1 else linear.bias.detach().index_select(0, keep))
    return out


def _keep_lists(keep: Sequence[Sequence[int]], n_layers: int, size: int, what: str) -> list[torch.Tensor]:
    if len(keep) != n_layers:
        raise ValueError(f"{what}: {len(keep)} keep lists for {n_layers} layers")
    counts = {len(k) for k in keep}
    if len(counts) != 1:
        raise ValueError(f"{what}: every layer must keep the same number (a HF config holds one size); got {sorted(counts)}")
    n = counts.pop()
    if n == 0:
        raise ValueError(f"{what}: keeping none would remove every one; keep at least one per layer")
    out = []
    for k in keep:
        t = torch.as_tensor(sorted(set(int(i) for i in k)), dtype=torch.long)
        if len(t) != n or t.min() < 0 or t.max() >= size:
            raise ValueError(f"{what}: indices must be distinct and in [0, {size}); got {list(k)[:8]}...")
        out.append(t)
    return out


@torch.no_grad()
def prune_mlp_channels(model: nn.Module, keep: Sequence[Sequence[int]]) -> nn.Module:
    """Keep MLP channels ``keep[i]`` of layer ``i`` (in place; returns ``model``)."""
    check_llama(model)
    layers = model.model.layers
    idx = _keep_lists(keep, len(layers), model.config.intermediate_size, "prune_mlp_channels")
    for layer, k in zip(layers, idx):
        m = layer.mlp
        m.gate_proj, m.up_proj, m.down_proj = _cut(m.gate_proj, 0, k), _cut(m.up_proj, 0, k), _cut(m.down_proj, 1, k)
        if hasattr(m, "intermediate_size"):
            m.intermediate_size = len(k)
    model.config.intermediate_size = len(idx[0])
    return model


@torch.no_grad()
def prune_kv_groups(model: nn.Module, keep: Sequence[Sequence[int]]) -> nn.Module:
    """Keep KV groups ``keep[i]`` of layer ``i`` (each with its query heads; in place; returns ``model``)."""
    check_llama(model)
    c, layers = model.config, model.model.layers
    d, r = _head_dim(model), c.num_attention_heads // c.num_key_value_heads
    idx = _keep_lists(keep, len(layers), c.num_key_value_heads, "prune_kv_groups")
    for layer, groups in zip(layers, idx):
        a = layer.self_attn
        kv, q = _group_rows(model, groups.tolist())
        a.k_proj, a.v_proj = _cut(a.k_proj, 0, kv), _cut(a.v_proj, 0, kv)
        a.q_proj, a.o_proj = _cut(a.q_proj, 0, q), _cut(a.o_proj, 1, q)
        for name, v in (("num_heads", len(groups) * r), ("num_key_value_heads", len(groups))):
            if hasattr(a, name):
                setattr(a, name, v)
    c.head_dim = d
    c.num_key_value_heads = len(idx[0])
    c.num_attention_heads = len(idx[0]) * r
    return model


@torch.no_grad()
def drop_blocks(model: nn.Module, drop: Sequence[int]) -> nn.Module:
    """Remove decoder layers ``drop`` (in place; returns ``model``); the kept layers are renumbered for the KV
    cache."""
    check_llama(model)
    n = len(model.model.layers)
    drop = sorted(set(int(i) for i in drop))
    if any(i < 0 or i >= n for i in drop):
        raise ValueError(f"drop_blocks: indices must be in [0, {n}); got {drop}")
    if len(drop) >= n:
        raise ValueError(f"drop_blocks: removing {len(drop)} of {n} blocks leaves none; keep at least one")
    kept = [l for i, l in enumerate(model.model.layers) if i not in drop]
    model.model.layers = nn.ModuleList(kept)
    for i, l in enumerate(kept):
        l.self_attn.layer_idx = i
        if hasattr(l, "layer_idx"):
            l.layer_idx = i
    c = model.config
    if getattr(c, "layer_types", None):
        c.layer_types = [t for i, t in enumerate(c.layer_types) if i not in drop]
    c.num_hidden_layers = len(kept)
    return model
