r"""Linear layers with pre-packed oneDNN weights, for CPU inference with few rows per call.

``nn.Linear`` on CPU computes ``y = x W^T + b`` with MKL's ``sgemm``. Decoding feeds a handful of rows per call
(one token; ``g + 1`` when verifying a speculative guess), and there MKL is far from the memory-bandwidth bound
that should set the cost: on the 2-core AMD EPYC box, one SmolLM2-135M step with a 300-token KV cache took
59.8 ms for one token and 114 ms for 2 to 13 tokens (fp32, session 13), so verifying a guess cost two steps.
With the weights reordered once into oneDNN's blocked layout (``torch.ops.mkldnn._reorder_linear_weight``, what
``torch.compile``'s CPU freezing pass does) and multiplied by ``torch.ops.mkldnn._linear_pointwise``, the same
step took 43.5 ms for one token and 52.4 / 57.9 ms for 7 / 13.

Same maths, other summation order: outputs differ from ``F.linear`` by float rounding (about 1e-7 relative in
fp32). :func:`pack_linears` swaps every ``nn.Linear`` of a model for a :class:`PackedLinear` that keeps the
original ``weight`` / ``bias`` parameters (state dicts and tied embeddings are unchanged) plus a packed copy
(the weights' memory once more). The packed copy is rebuilt when the weight is modified in place (its version
counter moved); calls that need gradients, inputs of another dtype, or a dtype this CPU cannot pack
(:func:`dtype_packable`) take ``F.linear``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PackedLinear", "dtype_packable", "pack_linears", "unpack_linears", "packing_available"]


def packing_available() -> bool:
    """Whether this torch build has oneDNN (``torch.backends.mkldnn``) and its linear ops."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


@functools.cache
def dtype_packable(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN packs weights of ``dtype`` (bf16 needs AVX512-BW/VL/DQ or AVX-NE-CONVERT; an
    AVX2-only CPU packs fp32 only). Tried once per dtype on a tiny weight."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=dtype), 1)
    except RuntimeError:
        return False
    return True


class PackedLinear(nn.Module):
    """``linear``'s function with a oneDNN-packed weight (module docstring). ``batch_hint``: the rows per call to
    tune the packing for."""

    def __init__(self, linear: nn.Linear, *, batch_hint: int = 8) -> None:
        super().__init__()
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"PackedLinear wraps an nn.Linear, not {type(linear).__name__}")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias  # the same Parameters: tying and state dicts unchanged
        self.batch_hint = batch_hint
        self._packed: torch.Tensor | None = None
        self._key: tuple | None = None

    def _pack(self) -> torch.Tensor:
        w = self.weight
        key = (w.data_ptr(), w._version, w.dtype)
        if self._key != key:
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach(), self.batch_hint)
            self._key = key
        return self._packed

    def __getstate__(self) -> dict:  # copies and pickles repack on first use
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        return {**state, "_packed": None, "_key": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if ((torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or x.dtype != w.dtype
                or x.device.type != "cpu" or not dtype_packable(w.dtype)):
            return F.linear(x, w, self.bias)
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]).contiguous(), self._pack(), self.bias,
                                               "none", [], "")
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, packed=oneDNN"


def _swap(model: nn.Module, old: type, make) -> int:
    n = 0
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if type(child) is old:
                setattr(parent, name, make(child))
                n += 1
    return n


def pack_linears(model: nn.Module, *, batch_hint: int = 8) -> int:
    """Swap every ``nn.Linear`` of ``model`` (in place) for a :class:`PackedLinear`; returns how many. Raises when
    this torch build has no oneDNN (nothing is changed then)."""
    if not packing_available():
        raise RuntimeError("this torch build has no oneDNN (torch.backends.mkldnn.is_available() is False): "
                           "packed linears need it; run the model unpacked")
    if not (isinstance(batch_hint, int) and batch_hint >= 1):
        raise ValueError(f"batch_hint={batch_hint!r}: the rows per call to tune for, an integer >= 1")
    return _swap(model, nn.Linear, lambda m: PackedLinear(m, batch_hint=batch_hint))


def unpack_linears(model: nn.Module) -> int:
    """Undo :func:`pack_linears` (the same parameters back in plain ``nn.Linear``); returns how many."""

    def make(p: PackedLinear) -> nn.Linear:
        lin = nn.Linear(p.in_features, p.out_features, bias=p.bias is not None, device="meta")
        lin.weight, lin.bias = p.weight, p.bias
        return lin

    return _swap(model, PackedLinear, make)
