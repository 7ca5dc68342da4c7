"""Low-bit modules that really store packed codes, and real int8 execution through PyTorch.

:class:`PackedWeight` holds one quantized weight as buffers (bit-packed codes, scales, zero points), so a
``state_dict`` / safetensors file of a model made of these modules is really low-bit. :class:`QuantLinear`
(for ``nn.Linear`` and HF's ``Conv1D``) and :class:`QuantEmbedding` (for ``nn.Embedding``) use it: their
forward dequantizes the weight once (cached lazily, :meth:`drop_cache` frees it) and runs the float op.
Two modules may share one :class:`PackedWeight` (tied input/output embeddings). The quantizer maths is in
:mod:`quant.quantizer`, the packed layout in :mod:`quant.packing`.

Dimension letters: ``B`` batch (any leading dims), ``I`` in features, ``O`` out features.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from quant.packing import pack_codes, packed_nbytes, unpack_codes
from quant.quantizer import QuantizedTensor, QuantSpec, code_offset, dequantize_codes, quantize_tensor
from quant.uniform import fake_quantize

__all__ = ["PackedWeight", "QuantLinear", "QuantEmbedding", "int8_dynamic", "is_conv1d", "linear_weight"]


def is_conv1d(module: nn.Module) -> bool:
    """True for HF ``transformers.pytorch_utils.Conv1D`` (a Linear with weight ``(I, O)``). transformers is
    not imported here: if it was never imported, no module can be a Conv1D."""
    mod = sys.modules.get("transformers.pytorch_utils")
    return mod is not None and isinstance(module, mod.Conv1D)


def linear_weight(module: nn.Module) -> torch.Tensor:
    """The ``(O, I)`` weight of an ``nn.Linear`` or (transposed) HF ``Conv1D``."""
    if isinstance(module, nn.Linear):
        return module.weight
    if is_conv1d(module):
        return module.weight.t()  # (I, O) -> (O, I)
    raise TypeError(f"expected nn.Linear or transformers Conv1D, got {type(module).__name__}")


def _check_act_bits(act_bits: int | None) -> None:
    if act_bits is not None and (isinstance(act_bits, bool) or not isinstance(act_bits, int) or not 2 <= act_bits <= 16):
        raise ValueError(f"act_bits={act_bits!r} must be None (float activations) or an int in [2, 16], e.g. 8")


class PackedWeight(nn.Module):
    """One quantized weight: buffers ``codes`` (uint8, bit-packed, :func:`quant.packing.pack_codes` of the
    codes plus :func:`quant.quantizer.code_offset`), ``scale`` (float32 ``(R, G)``) and, for asymmetric specs,
    ``zero_point`` (int32 ``(R, G)``). ``shape`` and ``spec`` are not in the state dict: the module is
    rebuilt from them (see :mod:`quant.model_io`)."""

    def __init__(self, *, shape: tuple[int, ...], spec: QuantSpec) -> None:
        super().__init__()
        self.shape, self.spec = torch.Size(shape), spec
        rows, groups, _ = spec.groups(self.shape)
        self.numel = math.prod(self.shape)
        self.register_buffer("codes", torch.zeros(packed_nbytes(self.numel, spec.bits), dtype=torch.uint8))
        self.register_buffer("scale", torch.ones(rows, groups, dtype=torch.float32))
        self.zero_point: torch.Tensor | None
        if spec.symmetric:
            self.zero_point = None
        else:
            self.register_buffer("zero_point", torch.zeros(rows, groups, dtype=torch.int32))
        self._cache: torch.Tensor | None = None

    @classmethod
    def from_tensor(cls, w: torch.Tensor, spec: QuantSpec) -> PackedWeight:
        return cls.from_quantized(quantize_tensor(w, spec))

    @classmethod
    def from_quantized(cls, qt: QuantizedTensor) -> PackedWeight:
        pw = cls(shape=tuple(qt.shape), spec=qt.spec)
        pw.codes = pack_codes(qt.codes + qt.code_offset, qt.spec.bits).to(qt.scale.device)
        pw.scale = qt.scale.to(torch.float32).clone()
        if qt.zero_point is not None:
            pw.zero_point = qt.zero_point.to(torch.int32).clone()
        return pw

    def quantized(self) -> QuantizedTensor:
        """The unpacked :class:`QuantizedTensor` (int32 codes)."""
        q = unpack_codes(self.codes, self.spec.bits, self.numel).to(torch.int32) - code_offset(self.spec)
        return QuantizedTensor(codes=q.reshape(self.shape), scale=self.scale, zero_point=self.zero_point,
                               spec=self.spec, shape=self.shape)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``w_hat`` in ``dtype``, cached until :meth:`drop_cache`, a state-dict load or a device change."""
        c = self._cache
        if c is None or c.dtype != dtype or c.device != self.scale.device:
            q = unpack_codes(self.codes, self.spec.bits, self.numel).to(torch.int32) - code_offset(self.spec)
            c = dequantize_codes(q, self.scale, self.zero_point, self.spec, self.shape).to(dtype)
            self._cache = c
        return c

    def drop_cache(self) -> None:
        self._cache = None

    def memory_bytes(self) -> int:
        """Bytes of the packed codes, scales and zero points."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))

    def _load_from_state_dict(self, *args, **kwargs):  # noqa: ANN002, ANN003 (nn.Module's signature)
        self.drop_cache()
        super()._load_from_state_dict(*args, **kwargs)

    def extra_repr(self) -> str:
        s = self.spec
        return (f"shape={tuple(self.shape)}, bits={s.bits}, symmetric={s.symmetric}, "
                f"granularity={s.granularity.value}" + (f", group_size={s.group_size}" if s.granularity == "group" else ""))


class QuantLinear(nn.Module):
    """``y = x_hat W_hat^T + bias`` with ``W_hat`` the dequantized packed weight ``(O, I)`` and ``x_hat`` a
    symmetric per-tensor fake-quant of ``x`` to ``act_bits`` with the scale from each call's ``max|x|``
    (:func:`quant.uniform.fake_quantize`), or ``x`` itself when ``act_bits`` is None. The bias stays float."""

    def __init__(self, *, in_features: int, out_features: int, spec: QuantSpec, bias: bool,
                 act_bits: int | None = 8, qweight: PackedWeight | None = None) -> None:
        super().__init__()
        _check_act_bits(act_bits)
        self.in_features, self.out_features, self.act_bits = in_features, out_features, act_bits
        if qweight is None:
            qweight = PackedWeight(shape=(out_features, in_features), spec=spec)
        elif qweight.shape != (out_features, in_features) or qweight.spec != spec:
            raise ValueError(f"shared qweight has shape {tuple(qweight.shape)} and {qweight.spec}; this layer needs "
                             f"({out_features}, {in_features}) and {spec}")
        self.qweight = qweight
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    @property
    def spec(self) -> QuantSpec:
        return self.qweight.spec

    @classmethod
    def from_linear(cls, linear: nn.Module, spec: QuantSpec, *, act_bits: int | None = 8,
                    qweight: PackedWeight | None = None) -> QuantLinear:
        """Quantize an ``nn.Linear`` or HF ``Conv1D`` (its ``(I, O)`` weight is transposed). ``qweight``
        reuses an already quantized (shared) weight instead of quantizing ``linear``'s."""
        w = linear_weight(linear)  # (O, I)
        if qweight is None:
            qweight = PackedWeight.from_tensor(w, spec)
        q = cls(in_features=w.shape[1], out_features=w.shape[0], spec=spec, bias=linear.bias is not None,
                act_bits=act_bits, qweight=qweight)
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=linear.bias.requires_grad)
        return q.to(w.device)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized ``(O, I)`` weight (read-only view for code that inspects ``.weight``)."""
        return self.qweight.dequantize()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is not None:
            x = fake_quantize(x, bits=self.act_bits)
        return F.linear(x, self.qweight.dequantize(x.dtype), self.bias)  # (B, I) x (O, I)^T -> (B, O)

    def drop_cache(self) -> None:
        self.qweight.drop_cache()

    def memory_bytes(self) -> int:
        """Packed weight + scales/zero points + float bias (a shared weight is counted here too)."""
        b = 0 if self.bias is None else self.bias.numel() * self.bias.element_size()
        return self.qweight.memory_bytes() + b

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act_bits={self.act_bits}"


class QuantEmbedding(nn.Module):
    """``nn.Embedding`` with a packed weight ``(num_embeddings, embedding_dim)``; ``"channel"`` specs give
    one scale per row (token)."""

    def __init__(self, *, num_embeddings: int, embedding_dim: int, spec: QuantSpec, padding_idx: int | None = None,
                 qweight: PackedWeight | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.qweight = qweight if qweight is not None else PackedWeight(shape=(num_embeddings, embedding_dim), spec=spec)

    @property
    def spec(self) -> QuantSpec:
        return self.qweight.spec

    @classmethod
    def from_embedding(cls, emb: nn.Embedding, spec: QuantSpec, *, qweight: PackedWeight | None = None) -> QuantEmbedding:
        if emb.max_norm is not None:
            raise ValueError("QuantEmbedding cannot hold an nn.Embedding with max_norm (it renormalizes its "
                             "weight in place); set max_norm=None before quantizing")
        q = cls(num_embeddings=emb.num_embeddings, embedding_dim=emb.embedding_dim, spec=spec,
                padding_idx=emb.padding_idx,
                qweight=qweight if qweight is not None else PackedWeight.from_tensor(emb.weight, spec))
        return q.to(emb.weight.device)

    @property
    def weight(self) -> torch.Tensor:
        return self.qweight.dequantize()

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        # output dtype: the scales' (float32 unless the model was cast, e.g. .to(torch.bfloat16))
        return F.embedding(idx, self.qweight.dequantize(self.qweight.scale.dtype), self.padding_idx)  # (B,) -> (B, D)

    def drop_cache(self) -> None:
        self.qweight.drop_cache()

    def memory_bytes(self) -> int:
        return self.qweight.memory_bytes()

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}"


def _conv1d_to_linear(model: nn.Module) -> None:
    """Replace every HF Conv1D in ``model`` (in place) by the equivalent ``nn.Linear``."""
    for name, m in list(model.named_modules()):
        if is_conv1d(m):
            lin = nn.Linear(m.weight.shape[0], m.weight.shape[1], device=m.weight.device, dtype=m.weight.dtype)
            with torch.no_grad():
                lin.weight.copy_(m.weight.t())  # (I, O) -> (O, I)
                lin.bias.copy_(m.bias)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, lin)


def int8_dynamic(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``nn.Linear`` layers (and HF ``Conv1D``, first turned into Linear) run in
    real int8 (per-tensor int8 weights, dynamically quantized int8 activations, fbgemm/x86 kernels) via
    ``torch.ao.quantization.quantize_dynamic``. CPU only; the original is unchanged. Its deprecation warning
    is silenced here only."""
    q = copy.deepcopy(model)
    _conv1d_to_linear(q)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*", category=UserWarning)
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(q, {nn.Linear}, dtype=torch.qint8, inplace=True)
