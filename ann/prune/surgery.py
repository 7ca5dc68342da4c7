r"""Physical pruning of Hugging Face transformers: which weights are coupled, and cutting them out.

A model is a set of *towers*, stacks of identical transformer layers with one config each (:func:`towers`):

- ``llama``: Llama-family decoders (``LlamaForCausalLM``, SmolLM2, a LLaVA's language model):
  ``layer.self_attn.{q,k,v,o}_proj``, ``layer.mlp.{gate,up,down}_proj``;
- ``vit``: ViT encoders (``ViTModel``, ``ViTForImageClassification``, a LLaVA's ViT vision tower):
  ``layer.attention.{q,k,v,o}_proj``, ``layer.mlp.{fc1,fc2}``;
- ``bert``: BERT-family encoders (``BertModel``, ``BertFor*``): ``layer.attention.self.{query,key,value}``,
  ``layer.attention.output.dense``, ``layer.intermediate.dense``, ``layer.output.dense``.

A LLaVA (the MFM included) has two towers, ``vision`` and ``text``; its projector's hidden width is tied to the
text width by the config, so it is left as it is.

Coupled weights (what goes together):

- MLP channel ``j`` of a layer: row ``j`` of the input projections (gate and up; fc1; intermediate.dense) with
  their bias, column ``j`` of the output projection (down; fc2; output.dense);
- attention group ``g`` (grouped-query attention, ``r = heads / kv_heads`` query heads per KV head; ``r = 1``
  without GQA): rows ``[g d, (g+1) d)`` of K and V, rows of its ``r`` query heads in Q and the matching columns
  of O (``d`` = head_dim). Removing whole groups keeps GQA's pairing intact;
- a block: the whole layer (the residual stream passes through unchanged).

A Hugging Face config holds one intermediate size, one head count and one layer count per tower, so every layer
keeps the same number of channels and groups (which ones is per layer): the result is an ordinary model that
``save_pretrained`` / ``from_pretrained`` handle. ``head_dim`` is written to the config explicitly, since
``hidden_size / num_attention_heads`` no longer gives it. BERT computes its head size as ``hidden_size / heads``
and reads no ``head_dim``, so its heads cannot be pruned into a loadable model: refused, with that reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["Tower", "towers", "mlp_channel_slices", "head_group_slices", "prune_mlp_channels",
           "check_heads", "prune_head_groups", "drop_blocks"]

# kind -> (attention module path, q, k, v, o names), (MLP input projections, MLP output projection)
_LAYOUT = {
    "llama": (("self_attn", "q_proj", "k_proj", "v_proj", "o_proj"), ("mlp.gate_proj", "mlp.up_proj"), "mlp.down_proj"),
    "vit": (("attention", "q_proj", "k_proj", "v_proj", "o_proj"), ("mlp.fc1",), "mlp.fc2"),
    "bert": (("attention.self", "query", "key", "value", "../output.dense"), ("intermediate.dense",), "output.dense"),
}


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    *parent, last = path.split(".")
    setattr(_get(module, ".".join(parent)) if parent else module, last, value)


def _kind(layer: nn.Module) -> str | None:
    for kind, ((attn, q, k, v, o), ins, out) in _LAYOUT.items():
        paths = (f"{attn}.{q}", f"{attn}.{k}", f"{attn}.{v}", _o_path(attn, o), *ins, out)
        try:
            if all(isinstance(_get(layer, p), nn.Linear) for p in paths):
                return kind
        except AttributeError:
            continue
    return None


def _o_path(attn: str, o: str) -> str:
    """O's path in the layer (BERT keeps it next to, not inside, the self-attention module)."""
    if o.startswith("../"):
        return ".".join(attn.split(".")[:-1] + [o[3:]])
    return f"{attn}.{o}"


@dataclass
class Tower:
    """One stack of identical layers: ``owner.<attr>`` is its ``nn.ModuleList``; ``config`` the (sub-)config every
    layer was built from (the same object the model saves); ``kind`` its layout (module docstring)."""

    name: str
    kind: str
    owner: nn.Module
    attr: str
    config: object

    @property
    def layers(self) -> nn.ModuleList:
        return getattr(self.owner, self.attr)

    def attn(self, layer: nn.Module) -> tuple[nn.Module, nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        """The attention module and its Q, K, V, O projections."""
        attn, q, k, v, o = _LAYOUT[self.kind][0]
        a = _get(layer, attn)
        return a, getattr(a, q), getattr(a, k), getattr(a, v), _get(layer, _o_path(attn, o))

    def mlp(self, layer: nn.Module) -> tuple[list[nn.Linear], nn.Linear]:
        """The MLP's input projections (cut by rows) and output projection (cut by columns)."""
        _, ins, out = _LAYOUT[self.kind]
        return [_get(layer, p) for p in ins], _get(layer, out)

    @property
    def heads(self) -> int:
        return self.config.num_attention_heads

    @property
    def kv_heads(self) -> int:
        return getattr(self.config, "num_key_value_heads", None) or self.heads

    @property
    def head_dim(self) -> int:
        return getattr(self.config, "head_dim", None) or self.config.hidden_size // self.heads

    @property
    def intermediate(self) -> int:
        return self.config.intermediate_size


_DEFAULT_NAME = {"llama": "text", "vit": "vision", "bert": "encoder"}


def towers(model: nn.Module) -> list[Tower]:
    """The towers of ``model`` (module docstring); raises ``ValueError`` naming what is known if none is found."""
    found: list[Tower] = []
    for path, module in model.named_modules():
        for attr, child in module.named_children():
            if not isinstance(child, nn.ModuleList) or len(child) == 0:
                continue
            kinds = {_kind(l) for l in child}
            if len(kinds) != 1 or None in kinds:
                continue
            kind = kinds.pop()
            config = _tower_config(child[0], kind)
            full = f"{path}.{attr}" if path else attr
            name = "vision" if "vision" in full else "text" if "language" in full else _DEFAULT_NAME[kind]
            if any(t.name == name for t in found):
                name = f"{name}{len(found)}"
            found.append(Tower(name=name, kind=kind, owner=module, attr=attr, config=config))
    if not found:
        raise ValueError(f"{type(model).__name__}: no transformer layers this surgery knows (Llama-family decoders, ViT "
                         "and BERT-family encoders, and LLaVA models made of them)")
    return found


def _tower_config(layer: nn.Module, kind: str):
    attn = _get(layer, _LAYOUT[kind][0][0])
    config = getattr(attn, "config", None)
    if config is None:
        raise ValueError(f"{type(layer).__name__}: its attention module holds no config; cannot update the model's sizes")
    return config


def mlp_channel_slices(tower: Tower, layer: nn.Module, j: torch.Tensor) -> list:
    """The coupled slices of MLP channels ``j`` of ``layer`` (for :mod:`ann.prune.importance`)."""
    ins, out = tower.mlp(layer)
    return [(l, 0, j) for l in ins] + [(out, 1, j)]


def _group_rows(tower: Tower, groups: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of attention groups ``groups`` in K/V and in Q (= O's columns)."""
    d, r = tower.head_dim, tower.heads // tower.kv_heads
    kv = torch.cat([torch.arange(g * d, (g + 1) * d) for g in groups])
    q = torch.cat([torch.arange(g * r * d, (g + 1) * r * d) for g in groups])
    return kv, q


def head_group_slices(tower: Tower, layer: nn.Module, g: int) -> list:
    """The coupled slices of attention group ``g`` of ``layer``."""
    kv, q = _group_rows(tower, [g])
    _, wq, wk, wv, wo = tower.attn(layer)
    return [(wk, 0, kv), (wv, 0, kv), (wq, 0, q), (wo, 1, q)]


def _cut(linear: nn.Linear, axis: int, keep: torch.Tensor) -> nn.Linear:
    w = linear.weight.detach().index_select(axis, keep)
    out = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, dtype=w.dtype, device=w.device)
    with torch.no_grad():
        out.weight.copy_(w)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach() if axis == 1 else linear.bias.detach().index_select(0, keep))
    return out


def _replace(layer: nn.Module, old: nn.Linear, new: nn.Linear) -> None:
    for name, m in layer.named_modules():
        if m is old:
            _set(layer, name, new)
            return
    raise AssertionError("linear layer not found in its layer")


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
def prune_mlp_channels(tower: Tower, keep: Sequence[Sequence[int]]) -> None:
    """Keep MLP channels ``keep[i]`` of layer ``i`` of ``tower`` (in place)."""
    idx = _keep_lists(keep, len(tower.layers), tower.intermediate, f"prune_mlp_channels({tower.name})")
    for layer, k in zip(tower.layers, idx):
        ins, out = tower.mlp(layer)
        for l in ins:
            _replace(layer, l, _cut(l, 0, k))
        _replace(layer, out, _cut(out, 1, k))
        for m in layer.modules():  # LlamaMLP keeps its own copy
            if isinstance(getattr(m, "intermediate_size", None), int):
                m.intermediate_size = len(k)
    tower.config.intermediate_size = len(idx[0])


def check_heads(tower: Tower) -> None:
    """Refuse head pruning where the config cannot express it (BERT: head size = hidden / heads, no ``head_dim``)."""
    if tower.kind == "bert":
        raise ValueError(f"{tower.name}: BERT computes its head size as hidden_size / num_attention_heads and reads no "
                         "head_dim, so fewer heads cannot be saved as a loadable model; prune MLP channels and blocks")


@torch.no_grad()
def prune_head_groups(tower: Tower, keep: Sequence[Sequence[int]]) -> None:
    """Keep attention groups ``keep[i]`` of layer ``i`` (each KV head with its query heads; in place)."""
    check_heads(tower)
    d, r = tower.head_dim, tower.heads // tower.kv_heads
    idx = _keep_lists(keep, len(tower.layers), tower.kv_heads, f"prune_head_groups({tower.name})")
    for layer, groups in zip(tower.layers, idx):
        a, wq, wk, wv, wo = tower.attn(layer)
        kv, q = _group_rows(tower, groups.tolist())
        for lin, axis, rows in ((wk, 0, kv), (wv, 0, kv), (wq, 0, q), (wo, 1, q)):
            _replace(layer, lin, _cut(lin, axis, rows))
        for name, v in (("num_heads", len(groups) * r), ("num_attention_heads", len(groups) * r),
                        ("num_key_value_heads", len(groups))):
            if hasattr(a, name):
                setattr(a, name, v)
    c = tower.config
    c.head_dim = d
    if hasattr(c, "num_key_value_heads"):
        c.num_key_value_heads = len(idx[0])
    c.num_attention_heads = len(idx[0]) * r


@torch.no_grad()
def drop_blocks(tower: Tower, drop: Sequence[int]) -> None:
    """Remove layers ``drop`` of ``tower`` (in place); the kept layers are renumbered for the KV cache."""
    n = len(tower.layers)
    drop = sorted(set(int(i) for i in drop))
    if any(i < 0 or i >= n for i in drop):
        raise ValueError(f"drop_blocks({tower.name}): indices must be in [0, {n}); got {drop}")
    if len(drop) >= n:
        raise ValueError(f"drop_blocks({tower.name}): removing {len(drop)} of {n} blocks leaves none; keep at least one")
    kept = [l for i, l in enumerate(tower.layers) if i not in drop]
    setattr(tower.owner, tower.attr, nn.ModuleList(kept))
    for i, l in enumerate(kept):
        for m in l.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = i
    c = tower.config
    if getattr(c, "layer_types", None):
        c.layer_types = [t for i, t in enumerate(c.layer_types) if i not in drop]
    c.num_hidden_layers = len(kept)
