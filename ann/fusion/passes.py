r"""The fusion passes and :func:`fuse_model`, the one entry point (issue 11).

| pass | rewrites | module |
|---|---|---|
| ``sdpa`` | HF attention -> ``scaled_dot_product_attention`` (``set_attn_implementation("sdpa")``) | :mod:`ann.fusion.qkv` |
| ``merge-qkv`` | ViT / Llama attention: one GEMM for Q, K, V (GQA, rotary, masks, KV cache); LlamaMLP gate + up | :mod:`ann.fusion.qkv` |
| ``bias-act`` | linear + GELU / SiLU as one oneDNN call | :mod:`ann.fusion.bias_act` |
| ``fold-norm`` | LayerNorm / RMSNorm affine folded into the consuming linears | :mod:`ann.fusion.fold_norm` |
| ``pack`` | every remaining ``nn.Linear`` -> oneDNN-packed :class:`~ann.fusion.packed.PackedLinear` | :mod:`ann.fusion.packed` |
| ``compile`` | ``torch.compile`` of the whole forward (off by default) | here |

Each pass is guarded by :func:`ann.fusion.framework.run_passes` (numerical check after the pass, undo on
failure). Fusion is for inference on a copy: the fused model's state dict differs from HF's (see
:mod:`ann.fusion.framework`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ann.fusion.bias_act import BIAS_ACT_PATTERNS, rewrite_bias_act
from ann.fusion.fold_norm import FOLD_PATTERNS, rewrite_fold_norm
from ann.fusion.framework import FusionPass, FusionReport, Rewrite, Unavailable, run_passes
from ann.fusion.packed import PackedLinear, packing_available
from ann.fusion.qkv import MERGE_PATTERNS, SDPA_PATTERNS, rewrite_merge_qkv, rewrite_sdpa

__all__ = ["SDPA", "MERGE_QKV", "BIAS_ACT", "FOLD_NORM", "PACK", "COMPILE", "ALL_PASSES", "DEFAULT_PASSES",
           "get_passes", "fuse_model"]


def rewrite_pack(model: nn.Module, only: frozenset[str] | None = None) -> list[Rewrite]:
    """Every plain ``nn.Linear`` -> :class:`PackedLinear` (same parameters)."""
    if not packing_available():
        raise Unavailable("this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False)")
    out = []
    for parent_name, parent in model.named_modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear:
                setattr(parent, name, PackedLinear(child))
                out.append(Rewrite("linear->packed", f"{parent_name}.{name}" if parent_name else name))
    return out


def rewrite_compile(model: nn.Module, only: frozenset[str] | None = None) -> list[Rewrite]:
    """``model.compile()`` (inductor), after checking that a tiny function compiles on this machine."""
    try:
        probe = torch.compile(lambda x: torch.nn.functional.gelu(x) * 2, dynamic=False)
        probe(torch.ones(4))
    except Exception as e:  # noqa: BLE001 - no compiler, unsupported platform, ...
        raise Unavailable(f"torch.compile does not work here: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from e
    model.compile(dynamic=True)
    return [Rewrite("torch.compile", "")]


SDPA = FusionPass("sdpa", SDPA_PATTERNS, rewrite_sdpa, "attention through torch's scaled_dot_product_attention")
MERGE_QKV = FusionPass("merge-qkv", MERGE_PATTERNS, rewrite_merge_qkv, "one GEMM for Q/K/V and for gate/up")
BIAS_ACT = FusionPass("bias-act", BIAS_ACT_PATTERNS, rewrite_bias_act, "linear + GELU/SiLU in one oneDNN call")
FOLD_NORM = FusionPass("fold-norm", FOLD_PATTERNS, rewrite_fold_norm, "norm affine folded into its linears")
PACK = FusionPass("pack", ("linear->packed",), rewrite_pack, "remaining linears with oneDNN-packed weights")
COMPILE = FusionPass("compile", ("torch.compile",), rewrite_compile, "torch.compile (inductor) of the forward")

ALL_PASSES: tuple[FusionPass, ...] = (SDPA, MERGE_QKV, BIAS_ACT, FOLD_NORM, PACK, COMPILE)
DEFAULT_PASSES: tuple[FusionPass, ...] = (SDPA, MERGE_QKV, BIAS_ACT, FOLD_NORM, PACK)


def get_passes(names: Sequence[str]) -> tuple[FusionPass, ...]:
    """The passes called ``names``, in that order."""
    if isinstance(names, str):
        raise TypeError(f"names must be a sequence of pass names, not the string {names!r} (use [{names!r}])")
    known = {p.name: p for p in ALL_PASSES}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown fusion pass(es) {bad}: choose from {list(known)}")
    return tuple(known[n] for n in names)


def fuse_model(model: nn.Module, example_inputs: Mapping | torch.Tensor, *,
               passes: Sequence[FusionPass | str] = DEFAULT_PASSES, atol: float = 1e-4,
               generate_tokens: int = 0) -> FusionReport:
    """Fuse ``model`` in place, pass by pass, each checked on ``example_inputs`` and undone when it changes the
    output by more than ``atol`` (max abs) or, with ``generate_tokens > 0``, the greedy tokens; see
    :func:`ann.fusion.framework.run_passes`. ``passes``: :class:`FusionPass` objects or their names."""
    resolved = tuple(get_passes([p])[0] if isinstance(p, str) else p for p in passes)
    return run_passes(model, example_inputs, resolved, atol=atol, generate_tokens=generate_tokens)
