"""Trace any torch model into the workload IR (:mod:`neurohw.workload.ir`).

Two mechanisms, one recorder:

- *module hooks* on leaf modules whose cost the IR models as a whole: ``nn.Linear``, ``nn.Conv2d``,
  ``nn.Embedding``, spiking neurons (SpikingJelly ``BaseNode``, snnTorch ``SpikingNeuron``), norms
  (``nn.LayerNorm`` / ``GroupNorm`` and any module whose class name ends in ``LayerNorm`` or ``RMSNorm``, e.g.
  HF's ``LlamaRMSNorm``) and activations (``nn.GELU``, ``nn.SiLU``, HF's ``GELUActivation``, ...);
- a :class:`torch.overrides.TorchFunctionMode` for the functional ops between them:
  ``scaled_dot_product_attention``, ``matmul`` of two activations, ``linear``, softmax, functional norms and
  activations, and elementwise ``add`` / ``mul`` / ``div`` (residual streams, gating, rotary embeddings).
  Everything a recorded module does inside itself is part of that module, never recorded twice.
- fused kernels seen by the same mode: oneDNN's ``torch.ops.mkldnn._linear_pointwise(x, W_packed, b, attr, ...)``
  (what pre-packed and linear+activation modules call) is a linear GEMM followed by the elementwise ``attr``
  (``gelu``, ``swish`` = SiLU, ``relu``, ...) that consumes its output on chip; its ``.binary`` form is a GEMM
  followed by an elementwise ``add`` / ``mul`` with a second tensor. A merged projection (one ``nn.Linear`` for
  Q, K and V) is simply one wider GEMM. Weights of a GEMM called functionally count once, against the parameters
  of the module that runs it (a packed LM head tied to the embedding table adds none).

Every recorded call remembers which earlier call produced its inputs (tensors are followed through views,
reshapes and other unrecorded ops), which gives the IR's fusion facts (``fused_in_elements``,
``output_on_chip``). Calls with the same module, kind and shape are then merged into one :class:`Op`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from neurohw.workload.ir import VECTOR_KINDS, Numeric, Op, OpKind, Workload

__all__ = ["trace", "Tracer", "default_is_neuron", "KVCacheSpec"]


@dataclass(frozen=True)
class KVCacheSpec:
    """Key/value cache of autoregressive decoding: every attention call appends ``new_tokens`` entries of
    ``kv_heads`` x ``head_dim`` keys and values and reads the past ones back."""

    kv_heads: int
    head_dim: int

    @classmethod
    def of(cls, config) -> "KVCacheSpec":
        """The cache of a HF decoder config (a multimodal model's ``text_config`` is used when it has one)."""
        cfg = getattr(config, "text_config", None) or config
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(kv_heads=getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads, head_dim=head_dim)


@functools.cache
def _neuron_bases() -> tuple[type, ...]:
    bases: list[type] = []
    try:
        from spikingjelly.activation_based.neuron import BaseNode

        bases.append(BaseNode)
    except ImportError:
        pass
    try:
        from snntorch._neurons.neurons import SpikingNeuron

        bases.append(SpikingNeuron)
    except ImportError:
        pass
    return tuple(bases)


def default_is_neuron(module: nn.Module) -> bool:
    """True for spiking-neuron modules of SpikingJelly (``BaseNode``) and snnTorch (``SpikingNeuron``), and for any
    module whose class sets ``is_spiking_neuron = True`` (e.g. ``snn.neurons.FusedNeuron``; neurohw reads the
    marker instead of importing ``snn``)."""
    return getattr(type(module), "is_spiking_neuron", False) is True or isinstance(module, _neuron_bases())


def _activation_function(module: nn.Module) -> str | None:
    """The elementwise function a leaf activation module computes, or None."""
    from quant.ptq import ActivationFakeQuant  # requantization: one scale multiply per element

    if isinstance(module, ActivationFakeQuant):
        return "requant"
    name = type(module).__name__.lower()
    for fn in ("gelu", "silu", "relu", "hardtanh", "tanh", "sigmoid", "swish"):  # "hardtanh" before "tanh"
        if fn in name and not list(module.children()):
            return fn
    return None


def _norm_function(module: nn.Module) -> str | None:
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm) or name.endswith("LayerNorm"):
        return "layernorm"
    if name.endswith("RMSNorm"):
        return "rmsnorm"
    if isinstance(module, nn.GroupNorm):
        return "groupnorm"
    return None


# functional ops the TorchFunctionMode records, by the function's __name__
_ELEMENTWISE = {
    **dict.fromkeys(("add", "add_", "__add__", "__radd__", "__iadd__", "sub", "sub_", "__sub__", "__rsub__", "__isub__"), "add"),
    **dict.fromkeys(("mul", "mul_", "__mul__", "__rmul__", "__imul__"), "mul"),
    **dict.fromkeys(("div", "div_", "__truediv__", "__rtruediv__", "__itruediv__"), "div"),
    **{fn: fn for fn in ("gelu", "silu", "relu", "tanh", "sigmoid", "exp")},
    "relu_": "relu",
}
_SOFTMAX = {"softmax", "_softmax", "log_softmax"}
_NORM = {"layer_norm": "layernorm", "rms_norm": "rmsnorm", "group_norm": "groupnorm"}
_MATMUL = {"matmul", "__matmul__", "bmm", "mm"}
_LINEAR_POINTWISE = "_linear_pointwise"  # torch.ops.mkldnn._linear_pointwise (packet) / .default / .binary
_ONEDNN_UNARY = {"none": None, "gelu": "gelu", "swish": "silu", "silu": "silu", "relu": "relu", "sigmoid": "sigmoid",
                 "tanh": "tanh", "hardtanh": "hardtanh", "leaky_relu": "leaky_relu", "hardswish": "hardswish"}
_ONEDNN_BINARY = {"add": "add", "sum": "add", "sub": "add", "mul": "mul", "div": "div"}


def _tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, Mapping):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


@dataclass
class _Call:
    """One recorded call (per inference counts); merged into an :class:`Op` at the end."""

    name: str
    kind: OpKind
    layer_type: str
    function: str = ""
    fields: dict = field(default_factory=dict)  # shape fields (part of the merge key)
    counts: dict = field(default_factory=dict)  # summed over merged calls
    nnz: float = 0.0
    numel: float = 0.0
    fused_in: float = 0.0
    consumers: int = 0
    fused_consumer: bool = False


class _Recorder:
    def __init__(self, *, timesteps: int | None, batch: int, kv: KVCacheSpec | None) -> None:
        self.T, self.B, self.kv = timesteps, batch, kv
        self.new_tokens = 0  # set per decoding step by the caller when ``kv`` is given
        self.calls: list[_Call] = []
        self.producer: dict[int, int] = {}  # id(tensor) -> index of the call that produced it
        self._alive: list[torch.Tensor] = []  # keeps the tensors in ``producer`` alive, so ids stay unique
        # [module name, per-name counter, own parameters not yet charged to a functional GEMM (None: none)]
        self.stack: list[list] = [["", {}, None]]
        self.charged: set[str] = set()  # modules whose parameters a functional GEMM was charged with
        self.inside_leaf = 0

    # ----------------------------------------------------------------------------------------- dataflow
    def mark(self, out, index: int) -> None:
        for t in _tensors(out):
            self.producer[id(t)] = index
            self._alive.append(t)

    def follow(self, inputs, out) -> None:
        """An unrecorded op (view, reshape, cat, ...): its outputs carry the producer of its first input."""
        src = next((self.producer[id(t)] for t in _tensors(inputs) if id(t) in self.producer), None)
        if src is not None:
            self.mark(out, src)

    def record(self, call: _Call, inputs, out) -> None:
        index = len(self.calls)
        seen: set[int] = set()
        for t in _tensors(inputs):
            p = self.producer.get(id(t))
            if p is None or p in seen:
                continue
            seen.add(p)
            self.calls[p].consumers += 1
            if p == index - 1 and call.kind in VECTOR_KINDS:
                call.fused_in += t.numel() / self.B
                self.calls[p].fused_consumer = True
        self.calls.append(call)
        self.mark(out, index)

    def charge(self, weight_params: int) -> int:
        """Parameters a functional GEMM adds: its weights, once, against the running module's own parameters."""
        entry = self.stack[-1]
        if entry[2] is None:
            return weight_params
        got = min(weight_params, entry[2])
        entry[2] -= got
        self.charged.add(entry[0])
        return got

    def fn_name(self, fn: str) -> str:
        module, counter = self.stack[-1][:2]
        counter[fn] = counter.get(fn, 0) + 1
        base = f"{module}.{fn}" if module else fn
        return base if counter[fn] == 1 else f"{base}#{counter[fn]}"

    # ---------------------------------------------------------------------------------------- op kinds
    def gemm(self, name: str, layer_type: str, function: str, x: torch.Tensor, *, k: int, n: int, rows: int,
             params: int, bias: bool, sops_fn: Callable[[], float]) -> _Call:
        """``rows``: output rows (tokens / output pixels) of the call, over the batch and all timesteps."""
        T = self.T or 1
        # spike input: binary values, or the output of a neuron layer (graded / signed spike values k * theta)
        src = self.producer.get(id(x))
        spiking = self.T is not None and (bool(torch.all((x == 0) | (x == 1)))
                                          or (src is not None and self.calls[src].kind is OpKind.NEURON))
        c = _Call(name, OpKind.SYNAPTIC if spiking else OpKind.GEMM, layer_type, function,
                  fields={"k": k, "n": n, "timesteps": T, "m": max(rows // (T * self.B), 1), "params": params})
        c.nnz, c.numel = float((x != 0).sum()), float(x.numel())
        if spiking:  # ("passes" is set per run: Tracer.run)
            c.counts = {"sops": sops_fn() / self.B, "bias_adds": rows * n / self.B if bias else 0.0}
        else:
            # (T, B, ...) input identical at every timestep: computed once per inference
            const = self.T is not None and x.shape[0] == self.T and torch.equal(x, x[:1].expand_as(x))
            eff_rows = rows // T if const else rows
            c.counts = {"macs": eff_rows * k * n / self.B, "bias_adds": eff_rows * n / self.B if bias else 0.0}
        return c

    def linear(self, name: str, layer_type: str, x: torch.Tensor, weight: torch.Tensor, has_bias: bool, params: int) -> _Call:
        n, k = weight.shape
        return self.gemm(name, layer_type, "linear", x, k=k, n=n, rows=x.numel() // k, params=params,
                         bias=has_bias, sops_fn=lambda: float((x != 0).sum()) * n)

    def conv2d(self, name: str, module: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> _Call:
        x4 = x.flatten(0, x.dim() - 4)  # (..., C, H, W) -> (N, C, H, W)
        kh, kw = module.kernel_size
        k = module.in_channels // module.groups * kh * kw
        n = module.out_channels

        def sops() -> float:
            # exact: for each output position and output channel, the number of spikes in its receptive field
            ones = torch.ones(module.groups, module.in_channels // module.groups, kh, kw, dtype=x4.dtype)
            counts = F.conv2d((x4 != 0).to(x4.dtype), ones, None, module.stride, module.padding, module.dilation, module.groups)
            return float(counts.sum()) * (module.out_channels // module.groups)

        params = sum(p.numel() for p in module.parameters(recurse=False))
        return self.gemm(name, type(module).__name__, "conv2d", x, k=k, n=n, rows=out.numel() // n, params=params,
                         bias=module.bias is not None, sops_fn=sops)

    def matmul(self, name: str, a: torch.Tensor, b: torch.Tensor) -> _Call:
        # (..., m, k) @ (..., k, n): rows = every output row over the broadcast batch dims
        k, n = b.shape[-2], b.shape[-1]
        if a.dim() == 1 or b.dim() == 1:
            raise ValueError(f"{name}: matrix-vector matmul of shapes {tuple(a.shape)} @ {tuple(b.shape)} is not modelled")
        batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]).numel()
        rows = batch * a.shape[-2]
        c = self.gemm(name, "matmul", "matmul", a, k=k, n=n, rows=rows, params=0, bias=False,
                      sops_fn=lambda: float((a != 0).sum()) * n * (batch // max(a.shape[:-2].numel(), 1)))
        if self.T is not None and bool(torch.all((b == 0) | (b == 1))):
            c.fields["b_binary"] = True  # spikes: stored and moved at 1 bit
        return c

    def neuron(self, name: str, module: nn.Module, out: torch.Tensor) -> _Call:
        # spike events: a nonzero output (binary 1, or a graded / signed spike value of a multi-level neuron)
        T = self.T or 1
        return _Call(name, OpKind.NEURON, type(module).__name__, "neuron",
                     fields={"timesteps": T, "neurons": out.numel() // (T * self.B)},
                     counts={"elements": out.numel() / self.B, "in_elements": out.numel() / self.B,
                             "spikes": float((out != 0).sum()) / self.B})

    def vector(self, name: str, kind: OpKind, layer_type: str, function: str, inputs, out, params: int = 0) -> _Call:
        floats = [t for t in _tensors(inputs) if t.is_floating_point()]
        return _Call(name, kind, layer_type, function, fields={"timesteps": self.T or 1, "params": params},
                     counts={"elements": out.numel() / self.B, "in_elements": sum(t.numel() for t in floats) / self.B})

    def attention(self, name: str, q: torch.Tensor, k: torch.Tensor, causal: bool) -> list[_Call]:
        # q (B, h, L_q, d), k (B, h_kv, L_kv, d)
        h, lq, d = q.shape[-3], q.shape[-2], q.shape[-1]
        hkv, lkv = k.shape[-3], k.shape[-2]
        per = q.numel() // (h * lq * d) // self.B  # leading dims beyond the batch (e.g. timesteps)
        att = _Call(name, OpKind.ATTENTION, "scaled_dot_product_attention", "sdpa",
                    fields={"heads": h * per, "kv_heads": hkv * per, "q_len": lq, "kv_len": lkv, "head_dim": d,
                            "causal": causal, "m": lq, "k": d, "n": lkv, "timesteps": self.T or 1},
                    counts={"macs": 2.0 * h * per * lq * lkv * d, "elements": float(h * per * lq * lkv)})
        if self.kv is None:
            return [att]
        new = self.new_tokens
        write = _Call(f"{name}.kv_write", OpKind.KV_WRITE, "kv_cache", "kv_write", fields={"kv_len": new},
                      counts={"elements": 2.0 * self.kv.kv_heads * new * self.kv.head_dim})
        read = _Call(f"{name}.kv_read", OpKind.KV_READ, "kv_cache", "kv_read", fields={"kv_len": lkv - new},
                     counts={"elements": 2.0 * self.kv.kv_heads * (lkv - new) * self.kv.head_dim})
        return [c for c in (write, read) if c.counts["elements"] > 0] + [att]

    # ------------------------------------------------------------------------------------------- merge
    def to_ops(self) -> tuple[Op, ...]:
        merged: dict[tuple, dict] = {}
        for c in self.calls:
            on_chip = c.consumers == 1 and c.fused_consumer
            key = (c.name, c.kind, c.function, tuple(sorted(c.fields.items())), c.fused_in > 0, on_chip)
            e = merged.get(key)
            if e is None:
                e = merged[key] = {"name": c.name, "kind": c.kind, "layer_type": c.layer_type, "function": c.function,
                                   **c.fields, "output_on_chip": on_chip, "calls": 0, "fused_in_elements": 0.0,
                                   "_nnz": 0.0, "_numel": 0.0}
            e["calls"] += 1
            e["fused_in_elements"] += c.fused_in
            e["_nnz"] += c.nnz
            e["_numel"] += c.numel
            for k, v in c.counts.items():
                e[k] = e.get(k, 0.0) + v
        ops = []
        for e in merged.values():
            nnz, numel = e.pop("_nnz"), e.pop("_numel")
            if e["kind"] in (OpKind.GEMM, OpKind.SYNAPTIC):
                e["input_density"] = nnz / numel if numel else 0.0
            ops.append(Op(**e))
        return tuple(ops)


class _FunctionRecorder(TorchFunctionMode):
    """Records the functional ops between (and outside) the hooked leaf modules."""

    def __init__(self, rec: _Recorder) -> None:
        super().__init__()
        self.rec = rec

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        rec = self.rec
        if rec.inside_leaf:
            return out
        fn = getattr(func, "__name__", "")
        inputs = (args, kwargs)
        if not isinstance(out, torch.Tensor) or not out.is_floating_point():
            rec.follow(inputs, out)
            return out
        calls: list[_Call] = []
        if fn == "scaled_dot_product_attention":
            q, k = args[0], args[1] if len(args) > 1 else kwargs["key"]
            calls = rec.attention(rec.fn_name("sdpa"), q, k, bool(kwargs.get("is_causal", False)))
        elif fn in _MATMUL and all(isinstance(t, torch.Tensor) for t in args[:2]) and args[0].dim() > 1 and args[1].dim() > 1:
            calls = [rec.matmul(rec.fn_name("matmul"), args[0], args[1])]
        elif fn == "linear":
            w = args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            calls = [rec.linear(rec.fn_name("linear"), "linear", args[0], w, b is not None,
                                rec.charge(w.numel() + (b.numel() if b is not None else 0)))]
        elif fn.split(".")[0] == _LINEAR_POINTWISE:
            self._linear_pointwise(fn, args, kwargs, out)
            return out
        elif fn in _SOFTMAX:
            calls = [rec.vector(rec.fn_name("softmax"), OpKind.SOFTMAX, fn, "softmax", inputs, out)]
        elif fn in _NORM:
            calls = [rec.vector(rec.fn_name(_NORM[fn]), OpKind.NORM, fn, _NORM[fn], inputs, out)]
        elif fn in _ELEMENTWISE:
            calls = [rec.vector(rec.fn_name(_ELEMENTWISE[fn]), OpKind.ELEMENTWISE, fn, _ELEMENTWISE[fn], inputs, out)]
        if not calls:
            rec.follow(inputs, out)
            return out
        for c in calls[:-1]:
            rec.record(c, (), ())
        rec.record(calls[-1], inputs, out)
        return out

    def _linear_pointwise(self, fn: str, args, kwargs, out: torch.Tensor) -> None:
        """oneDNN linear with a fused post-op: ``(x, W, b, attr, scalars, algorithm)`` (unary) or
        ``(x, other, W, b, attr)`` (``.binary``): one GEMM + the elementwise op fed from its output path."""
        rec = self.rec
        binary = fn.endswith(".binary")
        names = ("input", "other", "weight", "bias", "attr") if binary else ("input", "weight", "bias", "attr")
        a = dict(zip(names, args)) | kwargs
        x, b, attr = a["input"], a.get("bias"), str(a.get("attr", "none"))
        k, n = x.shape[-1], out.shape[-1]
        params = rec.charge(k * n + (b.numel() if b is not None else 0))
        gemm = rec.gemm(rec.fn_name("linear"), "mkldnn._linear_pointwise", "linear", x, k=k, n=n, rows=x.numel() // k,
                        params=params, bias=b is not None, sops_fn=lambda: float((x != 0).sum()) * n)
        post = (_ONEDNN_BINARY if binary else _ONEDNN_UNARY).get(attr, attr)
        rec.record(gemm, (x,), out)
        if post is None:
            return
        extra = [a["other"]] if binary else []
        # the post-op reads the GEMM's output, the op just before it: fused_in, and the GEMM's output stays on chip
        rec.record(rec.vector(rec.fn_name(post), OpKind.ELEMENTWISE, f"mkldnn.{attr}", post, (out, *extra), out),
                   (out, *extra), out)


def _leaf_recorder(rec: _Recorder, name: str, module: nn.Module, is_neuron: Callable[[nn.Module], bool], claimed: set[int]):
    """The forward hook ``(module, inputs, output) -> None`` that records a leaf module, or None.

    ``claimed``: ids of parameters already counted by an earlier module (tied weights, e.g. an LM head that
    shares the embedding table, are counted once)."""
    params = sum(p.numel() for p in module.parameters(recurse=False) if id(p) not in claimed)
    if is_neuron(module):
        return lambda m, i, o: rec.record(rec.neuron(name, m, o), i, o)
    if isinstance(module, nn.Linear):
        return lambda m, i, o: rec.record(rec.linear(name, type(m).__name__, i[0], m.weight, m.bias is not None, params), i, o)
    if isinstance(module, nn.Conv2d):
        return lambda m, i, o: rec.record(rec.conv2d(name, m, i[0], o), i, o)
    if isinstance(module, nn.Embedding):
        def embedding(m, i, o):
            rows = o.numel() // m.embedding_dim
            rec.record(_Call(name, OpKind.EMBEDDING, type(m).__name__, "gather",
                             fields={"m": max(rows // rec.B, 1), "n": m.embedding_dim, "params": params},
                             counts={"elements": o.numel() / rec.B}), (), o)
        return embedding
    if (fn := _norm_function(module)) is not None:
        return lambda m, i, o: rec.record(rec.vector(name, OpKind.NORM, type(m).__name__, fn, i, o, params), i, o)
    if (fn := _activation_function(module)) is not None:
        return lambda m, i, o: rec.record(rec.vector(name, OpKind.ELEMENTWISE, type(m).__name__, fn, i, o, params), i, o)
    return None


def _batch_of(x) -> int:
    ts = _tensors(x)
    if not ts or ts[0].dim() < 1 or ts[0].shape[0] < 1:
        raise ValueError(f"trace: x must be a non-empty batch (B, ...), got {tuple(ts[0].shape) if ts else type(x).__name__}")
    return int(ts[0].shape[0])


class Tracer:
    """Hooks a model once; :meth:`run` records any number of forward calls into one workload."""

    def __init__(self, model: nn.Module, *, batch: int, timesteps: int | None = None, kv: KVCacheSpec | None = None,
                 is_neuron: Callable[[nn.Module], bool] = default_is_neuron) -> None:
        if timesteps is not None and (not isinstance(timesteps, int) or timesteps < 1):
            raise ValueError(f"trace: timesteps={timesteps!r} must be None (ANN) or an int >= 1")
        self.model = model
        self.rec = _Recorder(timesteps=timesteps, batch=batch, kv=kv)
        self._leaves_with_params: list[tuple[str, str]] = []  # not hooked: traced if a functional GEMM charged them
        self._handles: list = []
        leaf_names: list[str] = []
        claimed: set[int] = set()
        for mod_name, module in model.named_modules():
            if any(mod_name.startswith(p + ".") for p in leaf_names):
                continue  # submodules of a recorded leaf (e.g. a neuron's surrogate function) belong to it
            hook = _leaf_recorder(self.rec, mod_name, module, is_neuron, claimed)
            if hook is not None:
                claimed.update(id(p) for p in module.parameters(recurse=False))
                leaf_names.append(mod_name)
                self._handles += [module.register_forward_pre_hook(self._enter_leaf),
                                  module.register_forward_hook(self._exit_leaf(hook))]
                continue
            own = [p for p in module.parameters(recurse=False) if id(p) not in claimed]
            claimed.update(id(p) for p in own)
            budget = sum(p.numel() for p in own) if any(True for _ in module.parameters(recurse=False)) else None
            self._handles += [module.register_forward_pre_hook(lambda m, i, n=mod_name, b=budget: self._enter(n, b)),
                              module.register_forward_hook(self._exit)]
            if not list(module.children()) and budget is not None:
                self._leaves_with_params.append((mod_name, type(module).__name__))

    @property
    def untraced(self) -> list[str]:
        """Leaf modules with parameters that neither a hook nor a functional GEMM (charged to them) accounted for."""
        return [f"{n} ({t})" for n, t in self._leaves_with_params if n not in self.rec.charged]

    # hooks must return None (a forward hook's return value replaces the module's output)
    def _enter(self, name: str, budget: int | None) -> None:
        self.rec.stack.append([name, {}, budget])

    def _exit(self, module, inputs, output) -> None:
        self.rec.stack.pop()

    def _enter_leaf(self, module, inputs) -> None:
        self.rec.inside_leaf += 1

    def _exit_leaf(self, hook):
        def exit_hook(module, inputs, output):
            self.rec.inside_leaf -= 1
            if not self.rec.inside_leaf:
                hook(module, inputs, output)
        return exit_hook

    def run(self, fn: Callable[[], object]):
        """Record ``fn()``: one forward pass (e.g. one step of a decode). A synaptic op runs one pass over its
        weights per run, however many calls it takes (T single-step calls, or one multi-step call), so each call
        counts ``1 / (its op's calls in this run)`` passes (:attr:`neurohw.workload.ir.Op.passes`)."""
        start = len(self.rec.calls)
        try:
            with _FunctionRecorder(self.rec):
                return fn()
        finally:
            calls = [c for c in self.rec.calls[start:] if c.kind is OpKind.SYNAPTIC]
            per_name = Counter(c.name for c in calls)
            for c in calls:
                c.counts["passes"] = 1.0 / per_name[c.name]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def workload(self, *, name: str, numeric: Numeric, weight_bits: int, act_bits: int, state_bits: int) -> Workload:
        ops = tuple(replace(op, numeric=numeric, weight_bits=weight_bits, act_bits=act_bits, state_bits=state_bits)
                    for op in self.rec.to_ops())
        return Workload(model=name, timesteps=self.rec.T or 1, batch_traced=self.rec.B, ops=ops, untraced=tuple(self.untraced))


@torch.no_grad()
def trace(
    model: nn.Module,
    x,
    *,
    name: str | None = None,
    timesteps: int | None = None,
    is_neuron: Callable[[nn.Module], bool] = default_is_neuron,
    numeric: Numeric = Numeric.FLOAT,
    weight_bits: int = 32,
    act_bits: int = 32,
    state_bits: int = 32,
) -> Workload:
    """Run ``model(x)`` once on a batch and return its per-inference :class:`Workload`.

    Args:
        x: a tensor (B, ...) or a dict of keyword inputs (e.g. ``{"input_ids": ..., "pixel_values": ...}``);
            B is the leading dimension of its first tensor.
        timesteps: T for a multi-step spiking model whose layers see (T, B, ...) tensors; None for an ANN.
        is_neuron: predicate that tells spiking-neuron modules apart (their outputs are spikes).
        numeric, weight_bits, act_bits, state_bits: operand formats recorded on every op.
    """
    tracer = Tracer(model, batch=_batch_of(x), timesteps=timesteps, is_neuron=is_neuron)
    was_training = model.training
    try:
        model.eval()
        tracer.run(lambda: model(**x) if isinstance(x, Mapping) else model(x))
    finally:
        tracer.close()
        model.train(was_training)
    return tracer.workload(name=name or type(model).__name__, numeric=numeric, weight_bits=weight_bits,
                           act_bits=act_bits, state_bits=state_bits)
