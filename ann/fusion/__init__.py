"""Graph- and module-level rewrites that make a model cheaper to run without changing what it computes (issue [X]).

- :mod:`ann.fusion.packed`: linear layers whose weights are pre-packed for oneDNN, for CPU decoding.
- :mod:`ann.fusion.framework`: guarded, undoable fusion passes (numerical check after each pass).
- :mod:`ann.fusion.passes`: the passes (``sdpa``, ``merge-qkv``, ``bias-act``, ``fold-norm``, ``pack``,
  ``compile``) and :func:`fuse_model`; rewrites in :mod:`ann.fusion.qkv`, :mod:`ann.fusion.bias_act`,
  :mod:`ann.fusion.fold_norm`.
"""

from ann.fusion.framework import FusionPass, FusionReport, FusionWarning, PassResult, PassStatus, Rewrite
from ann.fusion.packed import PackedLinear, pack_linears, packing_available, unpack_linears
from ann.fusion.passes import ALL_PASSES, DEFAULT_PASSES, fuse_model, get_passes

__all__ = ["PackedLinear", "pack_linears", "packing_available", "unpack_linears", "FusionPass", "FusionReport",
           "FusionWarning", "PassResult", "PassStatus", "Rewrite", "ALL_PASSES", "DEFAULT_PASSES", "fuse_model",
           "get_passes"]
