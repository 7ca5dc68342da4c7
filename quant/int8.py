r"""Real int8 execution of linear layers on CPU: W8A8 with per-output-channel weight scales and per-token
activation scales, through PyTorch's integer GEMM (``torch._int_mm``: int8 x int8 -> int32).

For a linear layer ``y = x W^T + b`` with ``x`` of shape ``(M, K)`` (M tokens) and ``W`` of shape ``(N, K)``:

    s_w[n] = max_k |W[n, k]| / 127,          W_q = clamp(round(W / s_w[:, None]), -127, 127)     (once)
    s_x[m] = max_k |x[m, k]| / 127,          x_q = round(x / s_x[:, None])                       (every call)
    y[m, n] ~ s_x[m] s_w[n] sum_k x_q[m, k] W_q[n, k] + b[n]                                      (int32 accumulate)

Per-token activation scales follow each token's own range (decoding quantizes one token at a time), so an
outlier token does not coarsen the others; this is what keeps int8 decoding of SmolLM2 close to fp32 where
PyTorch's per-tensor dynamic quantization (``torch.ao.quantization.quantize_dynamic``) loses accuracy.

Activation outliers in fixed channels can additionally be moved into the weights before quantization
(:func:`smooth`, SmoothQuant, Xiao et al. 2023): for a producer (a norm's scale or a linear layer's output rows)
feeding consumers ``W_c`` through channels ``j``,

    t_j = max|x_j|^alpha / max_c max_n |W_c[n, j]|^(1 - alpha),   producer_j /= t_j,   W_c[:, j] *= t_j

which leaves the float network's function unchanged (exactly, up to float rounding) and balances the ranges.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["Int8Linear", "ActivationCache", "to_int8", "calibrate_input_absmax", "smooth", "llama_smoothing_pairs"]


def _quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) symmetric int8: ``(x_q (M, K) int8, s_x (M, 1))`` of ``x (..., K)``."""
    x2 = x.reshape(-1, x.shape[-1]).float()
    s = torch.linalg.vector_norm(x2, float("inf"), dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny).div_(127.0)
    return torch.round(x2 / s).to(torch.int8), s


class ActivationCache:
    """The quantized form of the last input tensor, shared by the int8 layers of a model: layers that read the
    same tensor (q/k/v projections, gate/up projections) quantize it once. A hit needs the very same tensor
    object at the same version (an in-place change bumps it); the cache holds a reference to it, so its memory
    cannot be reused by another tensor while cached."""

    def __init__(self) -> None:
        self._x: torch.Tensor | None = None
        self._version = -1
        self._value: tuple[torch.Tensor, torch.Tensor] | None = None

    def get(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x is not self._x or x._version != self._version:
            self._x, self._version, self._value = x, x._version, _quantize_rows(x)
        return self._value


class Int8Linear(nn.Module):
    """A linear layer executed in int8 (see the module docstring); built by :meth:`from_linear`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("weight_t", torch.zeros(in_features, out_features, dtype=torch.int8))  # W_q^T (K, N)
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.act_cache: ActivationCache | None = None  # shared by the layers of one model (to_int8)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear) -> Int8Linear:
        w = linear.weight.detach().float()
        m = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        s = w.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
        m.weight_scale.copy_(s)
        m.weight_t.copy_(torch.round(w / s[:, None]).clamp(-127, 127).to(torch.int8).t())
        if linear.bias is not None:
            m.bias.copy_(linear.bias.detach().float())
        return m

    def dequantized_weight(self) -> torch.Tensor:
        """``W_hat = s_w[:, None] * W_q`` (N, K), for checks."""
        return self.weight_t.t().float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        xq, s = self.act_cache.get(x) if self.act_cache is not None else _quantize_rows(x)
        y = torch._int_mm(xq, self.weight_t) * (s * self.weight_scale)  # int32 * float -> float
        if self.bias is not None:
            y.add_(self.bias)
        return y.reshape(*shape[:-1], self.out_features).to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, W8A8"


def to_int8(model: nn.Module, *, skip: Iterable[str] = ()) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (except the names in ``skip``) as :class:`Int8Linear`."""
    skip = set(skip)
    unknown = skip - {n for n, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"to_int8: skip names {sorted(unknown)} are not modules of the model")
    model = copy.deepcopy(model)
    cache = ActivationCache()
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name not in skip:
            parent, _, child = name.rpartition(".")
            q = Int8Linear.from_linear(m)
            q.act_cache = cache
            setattr(model.get_submodule(parent) if parent else model, child, q)
    return model


@torch.no_grad()
def calibrate_input_absmax(model: nn.Module, run: Callable[[nn.Module], object], names: Iterable[str]) -> dict[str, torch.Tensor]:
    """Per-input-channel ``max |x|`` of the named linear layers over whatever ``run(model)`` feeds them."""
    amax: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_m, inp):
            a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0).float()
            amax[name] = torch.maximum(amax[name], a) if name in amax else a
        return fn

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        run(model)
    finally:
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in amax]
    if missing:
        raise ValueError(f"calibration never reached {missing}")
    return amax


@torch.no_grad()
def smooth(model: nn.Module, pairs: list[tuple[str, list[str]]], amax: dict[str, torch.Tensor], *, alpha: float = 0.8) -> nn.Module:
    """Apply SmoothQuant in place. ``pairs``: ``(producer, consumers)`` with the producer a norm module (its
    ``weight`` is the per-channel scale) or an ``nn.Linear`` whose output rows feed the consumers' input channels;
    ``amax[consumers[0]]``: the consumers' per-input-channel activation range. Returns ``model``."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smooth: alpha={alpha} must be in [0, 1]")
    eps = 1e-5
    for producer, consumers in pairs:
        p = model.get_submodule(producer)
        cs = [model.get_submodule(c) for c in consumers]
        w_range = torch.stack([c.weight.abs().amax(0) for c in cs]).amax(0)
        t = (amax[consumers[0]].clamp(min=eps) ** alpha / w_range.clamp(min=eps) ** (1 - alpha)).clamp(min=eps)
        if isinstance(p, nn.Linear):
            p.weight.div_(t[:, None])
            if p.bias is not None:
                p.bias.div_(t)
        elif getattr(p, "weight", None) is not None and p.weight.shape == t.shape:
            p.weight.div_(t)
            if getattr(p, "bias", None) is not None:
                p.bias.div_(t)
        else:
            raise ValueError(f"smooth: producer {producer!r} ({type(p).__name__}) has no per-channel weight of size {t.numel()}")
        for c in cs:
            c.weight.mul_(t)
    return model


def llama_smoothing_pairs(model: nn.Module) -> list[tuple[str, list[str]]]:
    """SmoothQuant pairs of a Llama-style decoder (``model.layers.i``): input_layernorm -> q/k/v,
    post_attention_layernorm -> gate/up, up_proj -> down_proj (the gated product is linear in up_proj's rows)."""
    pairs = []
    names = {n for n, _ in model.named_modules()}
    for name, _ in model.named_modules():
        if name.endswith(".self_attn") and f"{name[: -len('.self_attn')]}.mlp" in names:
            layer = name[: -len(".self_attn")]
            pairs.append((f"{layer}.input_layernorm", [f"{name}.q_proj", f"{name}.k_proj", f"{name}.v_proj"]))
            pairs.append((f"{layer}.post_attention_layernorm", [f"{layer}.mlp.gate_proj", f"{layer}.mlp.up_proj"]))
            pairs.append((f"{layer}.mlp.up_proj", [f"{layer}.mlp.down_proj"]))
    if not pairs:
        warnings.warn("llama_smoothing_pairs: no Llama-style decoder layers found; nothing to smooth", stacklevel=2)
    return pairs
