r"""Real int8 execution of linear layers on CPU: W8A8 with per-output-channel weight scales and per-token
activation scales, through PyTorch's integer GEMM (``torch._int_mm``: int8 x int8 -> int32); or weight-only int8
(W8A16: bfloat16 activations, ``aten._weight_int8pack_mm``), see :class:`Int8Linear`.

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

Layers that read one tensor (q/k/v, gate/up; found by :func:`shared_input_groups`) can run as one fused GEMM
(``to_int8(..., fuse=groups)``): one activation quantization and one kernel call instead of three or two.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import nn

__all__ = ["ACTIVATIONS", "Int8Linear", "Int8Slice", "to_int8", "shared_input_groups", "calibrate_input_absmax", "smooth", "llama_smoothing_pairs"]


_TINY = torch.finfo(torch.float32).tiny


def _quantize_rows(x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (per-token) symmetric int8 of ``x2 (M, K)``: ``(x_q (M, K) int8, s_x (M, 1))``."""
    s = torch.linalg.vector_norm(x2, float("inf"), dim=1, keepdim=True).clamp_(min=_TINY).div_(127.0)
    return torch.round(x2 / s).to(torch.int8), s


ACTIVATIONS = ("int8", "bf16")


class Int8Linear(nn.Module):
    """A linear layer, or several fused ones that read the same input (their weight rows stacked), with int8
    weights (see the module docstring); built by :meth:`from_linear` / :meth:`from_linears`.

    ``activations="int8"``: W8A8, per-token int8 activations and an integer GEMM (``torch._int_mm``), the
    arithmetic of an int8 accelerator. ``activations="bf16"``: weight-only int8 (W8A16), the activations rounded
    to bfloat16 and the int8 weights scaled inside the GEMM (``aten._weight_int8pack_mm``, the CPU kernel behind
    torchao's int8 weight-only mode); fewer ops per call, so faster when one decoding token makes dispatch the
    cost, and closer to fp32."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, activations: str = "int8") -> None:
        super().__init__()
        if activations not in ACTIVATIONS:
            raise ValueError(f"Int8Linear: activations={activations!r}; choose one of {ACTIVATIONS}")
        self.in_features, self.out_features, self.activations = in_features, out_features, activations
        # W_q in the layout its kernel reads: (K, N) for _int_mm; (N, K) for _weight_int8pack_mm, whose CPU kernel
        # needs K to be a multiple of 16 (other K crash or compute garbage in torch 2.13), so K is zero-padded
        self.pad = 0 if activations == "int8" else -in_features % 16
        shape = (in_features, out_features) if activations == "int8" else (out_features, in_features + self.pad)
        self.register_buffer("weight_q", torch.zeros(shape, dtype=torch.int8))
        scale_dtype = torch.float32 if activations == "int8" else torch.bfloat16
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=scale_dtype))  # s_w
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._last: tuple[torch.Tensor, int, torch.Tensor] | None = None  # (x, x's version, y): see cached()

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, activations: str = "int8") -> Int8Linear:
        return cls.from_linears([linear], activations=activations)

    @classmethod
    @torch.no_grad()
    def from_linears(cls, linears: list[nn.Linear], *, activations: str = "int8") -> Int8Linear:
        """One int8 layer computing ``[l(x) for l in linears]`` concatenated on the last dimension."""
        if not linears or len({l.in_features for l in linears}) != 1:
            raise ValueError("Int8Linear.from_linears: needs one or more linear layers with equal in_features")
        w = torch.cat([l.weight.detach().float() for l in linears])
        has_bias = any(l.bias is not None for l in linears)
        m = cls(linears[0].in_features, w.shape[0], bias=has_bias, activations=activations)
        s = w.abs().amax(dim=1).clamp(min=_TINY) / 127.0
        if activations == "bf16":  # quantize against the scale the kernel will use
            s = s.bfloat16()
        m.weight_scale.copy_(s)
        wq = torch.round(w / s.float()[:, None]).clamp(-127, 127).to(torch.int8)
        m.weight_q.copy_(wq.t() if activations == "int8" else nn.functional.pad(wq, (0, m.pad)))
        if has_bias:
            m.bias.copy_(torch.cat([l.bias.detach().float() if l.bias is not None else torch.zeros(l.out_features)
                                    for l in linears]))
        return m

    def dequantized_weight(self) -> torch.Tensor:
        """``W_hat = s_w[:, None] * W_q`` (N, K), for checks."""
        wq = self.weight_q.t() if self.activations == "int8" else self.weight_q[:, : self.in_features]
        return wq.float() * self.weight_scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        if self.activations == "int8":
            xq, s = _quantize_rows(x2.float())
            y = torch._int_mm(xq, self.weight_q).mul(self.weight_scale).mul_(s)  # int32 -> float: s_x s_w sum x_q W_q
        else:
            xb = x2.bfloat16() if not self.pad else nn.functional.pad(x2.bfloat16(), (0, self.pad))
            y = torch.ops.aten._weight_int8pack_mm(xb, self.weight_q, self.weight_scale).float()
        if self.bias is not None:
            y.add_(self.bias)
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def cached(self, x: torch.Tensor) -> torch.Tensor:
        """``forward(x)``, computed once for the layers of a fusion group that all read ``x``. A hit needs the very
        same tensor object at the same version (an in-place change bumps it); the cache holds a reference to ``x``,
        so its memory cannot be reused by another tensor while cached."""
        last = self._last
        if last is None or last[0] is not x or last[1] != x._version:
            last = self._last = (x, x._version, self(x))
        return last[2]

    def extra_repr(self) -> str:
        kind = "W8A8" if self.activations == "int8" else "W8A16 (bf16 activations)"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {kind}"


class Int8Slice(nn.Module):
    """Output columns ``[start, end)`` of a fused :class:`Int8Linear`: each layer of a fusion group keeps its own
    name and output, the integer GEMM runs once per input tensor. The group's first slice owns the fused layer
    (it is its submodule, so its buffers are saved once); the others refer to it."""

    def __init__(self, fused: Int8Linear, start: int, end: int, *, owner: bool) -> None:
        super().__init__()
        if owner:
            self.fused = fused
        else:
            object.__setattr__(self, "fused", fused)  # not a submodule: one copy of the weights
        self.start, self.end = start, end
        self.in_features, self.out_features = fused.in_features, end - start

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fused.cached(x)[..., self.start : self.end]

    def extra_repr(self) -> str:
        return f"columns [{self.start}, {self.end}) of a fused int8 layer ({self.fused.activations} activations)"


def to_int8(model: nn.Module, *, skip: Iterable[str] = (), fuse: Iterable[Iterable[str]] = (),
            activations: str = "int8") -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` (except the names in ``skip``) as :class:`Int8Linear` with the
    given ``activations`` (``"int8"``: W8A8; ``"bf16"``: weight-only int8). The layers of each group in ``fuse``
    (names of linear layers that read the same input tensor, e.g. from :func:`shared_input_groups`) become one
    fused int8 GEMM, seen through :class:`Int8Slice` modules."""
    if activations not in ACTIVATIONS:
        raise ValueError(f"to_int8: activations={activations!r}; choose one of {ACTIVATIONS}")
    skip = set(skip)
    fuse = [list(g) for g in fuse]
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    unknown = skip - {n for n, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"to_int8: skip names {sorted(unknown)} are not modules of the model")
    fused_names = [n for g in fuse for n in g]
    bad = sorted(set(fused_names) - linears) + sorted(set(fused_names) & skip)
    if bad or len(fused_names) != len(set(fused_names)):
        raise ValueError(f"to_int8: fuse groups must name distinct, unskipped nn.Linear layers; bad: {bad or 'a repeated name'}")
    model = copy.deepcopy(model)

    def put(name: str, module: nn.Module) -> None:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module)

    for group in fuse:
        layers = [model.get_submodule(n) for n in group]
        if len({l.in_features for l in layers}) != 1:
            raise ValueError(f"to_int8: fuse group {group} mixes input widths; only layers reading one tensor fuse")
        fused, start = Int8Linear.from_linears(layers, activations=activations), 0
        for i, (name, layer) in enumerate(zip(group, layers)):
            put(name, Int8Slice(fused, start, start + layer.out_features, owner=i == 0))
            start += layer.out_features
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and name not in skip:
            put(name, Int8Linear.from_linear(m, activations=activations))
    return model


@torch.no_grad()
def shared_input_groups(model: nn.Module, run: Callable[[nn.Module], object]) -> list[list[str]]:
    """Groups (two or more, in module order) of ``nn.Linear`` layers that read the very same input tensor during
    ``run(model)``: q/k/v projections, gate/up projections. These are the layers :func:`to_int8` can fuse."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_m, inp):
            seen.setdefault(name, inp[0])  # the tensor itself, so no id is reused while we look
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    try:
        run(model)
    finally:
        for h in handles:
            h.remove()
    groups: dict[int, list[str]] = {}
    for name, x in seen.items():
        groups.setdefault(id(x), []).append(name)
    return [g for g in groups.values() if len(g) > 1]


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
