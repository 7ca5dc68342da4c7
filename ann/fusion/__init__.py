"""Graph- and module-level rewrites that make a model cheaper to run without changing what it computes (issue [X]).

- :mod:`ann.fusion.packed`: linear layers whose weights are pre-packed for oneDNN, for CPU decoding.
"""

from ann.fusion.packed import PackedLinear, pack_linears, packing_available, unpack_linears

__all__ = ["PackedLinear", "pack_linears", "packing_available", "unpack_linears"]
