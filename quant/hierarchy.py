r"""The quantization hierarchy of a model: model -> modality -> block -> sublayer -> channel group.

Every quantizable weight (``nn.Linear``, transformers' ``Conv1D``, ``nn.Embedding``) is one *sublayer* leaf;
a weight shared by several modules (tied ``lm_head`` / ``embed_tokens``) appears once, under the first module
that holds it, with every holder listed in ``Node.modules``. Biases and norms stay in float and are not counted.

Levels (names are the module paths, so the tree works on any HF model):

- ``model``: the root.
- ``modality``: the first rule of ``modality_rules`` (name -> regex, searched in the module path) that
  matches, else ``default_modality``. Projector rules come first, so ``visual.merger`` is a projector.
- ``block``: the outermost numbered container (``...layers.N``, ``...h.N``, ``...layer.N``, ``...blocks.N``).
  A weight outside every block (embeddings, ``lm_head``, a pooler) is a block of its own, named after it.
- ``sublayer``: the module, with a :class:`Category` from the first matching ``category_rules`` entry.
- ``group``: the sublayer's output rows split into ``groups_per_layer`` contiguous channel groups
  (sizes differ by at most one row; no group level when ``groups_per_layer == 1``).

Weights are addressed in ``(rows, in)`` layout, rows = output channels: ``Linear.weight`` ``(out, in)`` and
``Embedding.weight`` ``(num, dim)`` as stored, ``Conv1D.weight`` ``(in, out)`` transposed (``out_axis = 1``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn

__all__ = [
    "Level", "Category", "WeightSlice", "Node", "build_hierarchy", "node_weights",
    "DEFAULT_MODALITY_RULES", "DEFAULT_CATEGORY_RULES", "DEFAULT_BLOCK_PATTERN",
]


class Level(str, Enum):
    MODEL = "model"
    MODALITY = "modality"
    BLOCK = "block"
    SUBLAYER = "sublayer"
    GROUP = "group"


class Category(str, Enum):
    QKV = "qkv"
    ATTN_OUT = "attn_out"
    MLP_UP = "mlp_up"
    MLP_DOWN = "mlp_down"
    EMBEDDING = "embedding"
    LM_HEAD = "lm_head"
    OTHER = "other"


# name -> regex searched in the module path; first match wins, ``default_modality`` otherwise.
DEFAULT_MODALITY_RULES: dict[str, str] = {
    "projector": r"(?:^|\.)[^.]*(?:projector|mm_proj|connector|adapter|merger)[^.]*(?:\.|$)",
    "vision": r"(?:^|\.)(?:vision|visual|vit|image|img|patch|pixel)[^.]*(?:\.|$)",
}

# (category, regex searched in the module path); first match wins, Category.OTHER otherwise.
# nn.Embedding modules are Category.EMBEDDING before any rule. Order matters: ``attention.output.dense``
# (attn_out) must be tried before ``output.dense`` (mlp_down).
DEFAULT_CATEGORY_RULES: tuple[tuple[Category, str], ...] = (
    (Category.LM_HEAD, r"(?:^|\.)(?:lm_head|embed_out|output_layer|decoder)$"),
    (Category.QKV, r"(?:^|\.)(?:q_proj|k_proj|v_proj|qkv_proj|query|key|value|c_attn|Wqkv|qkv|in_proj"
                   r"|query_key_value|to_q|to_k|to_v)$"),
    (Category.ATTN_OUT, r"(?:^|\.)(?:o_proj|out_proj)$"),
    (Category.ATTN_OUT, r"(?:attn|attention|self_attn)\.(?:c_proj|proj|dense|out)$"),
    (Category.ATTN_OUT, r"attention\.output\.dense$"),
    (Category.MLP_UP, r"(?:^|\.)(?:up_proj|gate_proj|gate_up_proj|fc1|c_fc|w1|w3|wi|wi_0|wi_1|lin1|fc_in"
                      r"|dense_h_to_4h)$"),
    (Category.MLP_UP, r"intermediate\.dense$"),
    (Category.MLP_DOWN, r"(?:^|\.)(?:down_proj|fc2|w2|wo|lin2|fc_out|dense_4h_to_h)$"),
    (Category.MLP_DOWN, r"mlp\.c_proj$"),
    (Category.MLP_DOWN, r"(?:^|\.)output\.dense$"),
)

# group 1 = the block's module path (outermost numbered container).
DEFAULT_BLOCK_PATTERN = r"^((?:.*?\.)?(?:layers|h|layer|blocks|block)\.\d+)(?:\.|$)"


@dataclass(frozen=True)
class WeightSlice:
    """Rows ``[rows[0], rows[1])`` along ``out_axis`` of the parameter named ``param`` (a name from
    ``model.named_parameters()``)."""

    param: str
    out_axis: int
    rows: tuple[int, int]

    def of(self, tensor: torch.Tensor) -> torch.Tensor:
        """This slice of ``tensor`` (the parameter or anything of its shape, e.g. a Hessian diagonal) as a
        view in ``(rows, in)`` layout."""
        v = tensor.narrow(self.out_axis, self.rows[0], self.rows[1] - self.rows[0])
        return v.t() if self.out_axis == 1 else v  # Conv1D (in, out) -> (out, in)

    def view(self, model: nn.Module) -> torch.Tensor:
        """A view of the model's weight in ``(rows, in)`` layout; writing into it writes the model."""
        return self.of(model.get_parameter(self.param))


@dataclass(eq=False)
class Node:
    """One node of the hierarchy. ``params`` counts weight elements in the subtree; sublayer and group nodes
    carry their ``weight`` slice, sublayers also their ``category`` and every holder module in ``modules``.
    Names are unique within a level (``key`` is unique in the tree); nodes hash by identity."""

    name: str
    level: Level
    params: int
    children: list[Node] = field(default_factory=list)
    category: Category | None = None
    modules: tuple[str, ...] = ()
    weight: WeightSlice | None = None

    @property
    def key(self) -> str:
        return f"{self.level.value}:{self.name}"

    def walk(self) -> Iterator[Node]:
        """Pre-order traversal (self first)."""
        yield self
        for c in self.children:
            yield from c.walk()

    def at_level(self, level: Level | str) -> list[Node]:
        """Every node of ``level`` in this subtree, in model order (the node itself if it is of that level)."""
        level = Level(level)
        return [n for n in self.walk() if n.level is level]

    def leaves(self) -> list[Node]:
        return [n for n in self.walk() if not n.children]

    def slices(self) -> list[WeightSlice]:
        """The weight slices this node covers (a sublayer its whole weight, not its groups one by one)."""
        if self.weight is not None:
            return [self.weight]
        return [s for c in self.children for s in c.slices()]

    def find(self, key: str) -> Node:
        for n in self.walk():
            if n.key == key or n.name == key:
                return n
        raise KeyError(f"no node {key!r} in the hierarchy; keys look like 'sublayer:model.layers.0.mlp.up_proj'")


def node_weights(model: nn.Module, node: Node) -> list[torch.Tensor]:
    """Views (``(rows, in)`` layout) of every weight slice of ``node``; writes go into the model."""
    return [s.view(model) for s in node.slices()]


def _quantizable(module: nn.Module) -> tuple[torch.nn.Parameter, int] | None:
    """(weight, out_axis) for a quantizable module, else None."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        return module.weight, 0
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers absent: no Conv1D modules can exist either
        return None
    if isinstance(module, Conv1D):
        return module.weight, 1
    return None


def _category(name: str, module: nn.Module, rules: Sequence[tuple[Category, str]]) -> Category:
    if isinstance(module, nn.Embedding):
        return Category.EMBEDDING
    for cat, rx in rules:
        if re.search(rx, name):
            return Category(cat)
    return Category.OTHER


def _row_bounds(rows: int, groups: int) -> list[tuple[int, int]]:
    n = min(groups, rows)
    b = [round(i * rows / n) for i in range(n + 1)]
    return [(b[i], b[i + 1]) for i in range(n)]


def build_hierarchy(model: nn.Module, *, include_embeddings: bool = True, groups_per_layer: int = 4,
                    modality_rules: Mapping[str, str] | None = None, default_modality: str = "language",
                    category_rules: Sequence[tuple[Category, str]] = DEFAULT_CATEGORY_RULES,
                    block_pattern: str = DEFAULT_BLOCK_PATTERN) -> Node:
    """The hierarchy tree of ``model``'s quantizable weights (see the module docstring).

    ``include_embeddings=False`` leaves out every weight owned by an ``nn.Embedding``, also where a tied
    ``lm_head`` shares it (quantizing the head would quantize the embedding too).
    """
    if not isinstance(groups_per_layer, int) or groups_per_layer < 1:
        raise ValueError(f"groups_per_layer={groups_per_layer!r} must be an int >= 1 (1: no group level)")
    rules = dict(DEFAULT_MODALITY_RULES if modality_rules is None else modality_rules)
    block_rx = re.compile(block_pattern)
    param_name = {id(p): n for n, p in model.named_parameters(remove_duplicate=True)}
    embedding_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}

    sublayers: dict[int, Node] = {}  # id(param) -> sublayer node
    placed: list[tuple[str, str, Node]] = []  # (modality, block name, sublayer)
    for name, module in model.named_modules():
        found = _quantizable(module)
        if found is None:
            continue
        w, out_axis = found
        if not include_embeddings and id(w) in embedding_params:
            continue
        if id(w) in sublayers:  # tied weight: one leaf, every holder listed
            leaf = sublayers[id(w)]
            leaf.modules = (*leaf.modules, name)
            continue
        rows = w.shape[out_axis]
        params = w.numel()
        ws = WeightSlice(param_name[id(w)], out_axis, (0, rows))
        leaf = Node(name, Level.SUBLAYER, params, category=_category(name, module, category_rules),
                    modules=(name,), weight=ws)
        if groups_per_layer > 1:
            per_row = params // rows
            leaf.children = [Node(f"{name}[{r0}:{r1}]", Level.GROUP, (r1 - r0) * per_row,
                                  category=leaf.category, modules=(name,),
                                  weight=WeightSlice(ws.param, out_axis, (r0, r1)))
                             for r0, r1 in _row_bounds(rows, groups_per_layer)]
        sublayers[id(w)] = leaf
        modality = next((m for m, rx in rules.items() if re.search(rx, name)), default_modality)
        mb = block_rx.match(name)
        placed.append((modality, mb.group(1) if mb else name, leaf))

    if not placed:
        raise ValueError("the model has no quantizable weights (nn.Linear, transformers Conv1D, nn.Embedding)")
    modalities: dict[str, dict[str, list[Node]]] = {}
    for modality, block, leaf in placed:
        modalities.setdefault(modality, {}).setdefault(block, []).append(leaf)
    mod_nodes = []
    for modality, blocks in modalities.items():
        block_nodes = [Node(b, Level.BLOCK, sum(s.params for s in subs), children=subs) for b, subs in blocks.items()]
        mod_nodes.append(Node(modality, Level.MODALITY, sum(b.params for b in block_nodes), children=block_nodes))
    return Node("model", Level.MODEL, sum(m.params for m in mod_nodes), children=mod_nodes)
