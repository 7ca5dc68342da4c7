"""Workload IR: what a model computes per inference, traced from any torch model by forward hooks.

An inference of a model is described as a list of :class:`Op` in call order. Counts are *per inference*
(per input sample), averaged over the traced batch, and *measured* on real inputs: synaptic operations
and spikes depend on the data. The IR is plain data (``Workload.to_dict()`` is JSON-serializable), so that
``neurohw.accel`` and ``neurohw.energy`` never import the model code (ARCHITECTURE.md: neurohw does not
import ``ann``/``snn``).

Dimension letters: T timesteps (1 for an ANN), B traced batch, m rows per timestep and inference (tokens or
output pixels), k reduction length (fan-in), n outputs (fan-out).

Op kinds and their counts (per inference):
- ``GEMM``: dense multiply-accumulate ``macs = m * k * n`` (times T unless its input is the same at every
  timestep, e.g. the direct-encoding layer of an SNN, which is computed once).
- ``SYNAPTIC``: a GEMM whose input is binary spikes, executed event-driven: one accumulate per (input spike,
  target neuron) pair, ``sops = sum_t nnz(s[t]) * n`` (for a convolution, the exact count of
  (spike, output position, output channel) triples within each receptive field).
- ``NEURON``: spiking-neuron state updates, ``updates = neurons * T``, with the measured ``spikes``.
- ``ELEMENTWISE``: activations (ReLU, GELU, ...), ``elements`` per inference.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["OpKind", "Numeric", "Op", "Workload", "trace", "default_is_neuron"]

IR_VERSION = 1


class OpKind(str, Enum):
    GEMM = "gemm"
    SYNAPTIC = "synaptic"
    NEURON = "neuron"
    ELEMENTWISE = "elementwise"


class Numeric(str, Enum):
    """Arithmetic of an op: floating point or integer (bit widths are given separately)."""

    FLOAT = "float"
    INT = "int"


@dataclass(frozen=True)
class Op:
    """One op of the IR; all counts are per inference (see the module docstring for their definitions)."""

    name: str
    kind: OpKind
    layer_type: str
    timesteps: int = 1
    m: int = 0
    k: int = 0
    n: int = 0
    macs: float = 0.0
    sops: float = 0.0
    bias_adds: float = 0.0
    elements: float = 0.0
    neurons: int = 0
    spikes: float = 0.0
    input_density: float | None = None
    params: int = 0
    numeric: Numeric = Numeric.FLOAT
    weight_bits: int = 32
    act_bits: int = 32
    state_bits: int = 32
    calls: int = 0

    @property
    def firing_rate(self) -> float | None:
        """Spikes per neuron per timestep (NEURON ops only)."""
        if self.kind is not OpKind.NEURON or self.elements == 0:
            return None
        return self.spikes / self.elements

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"], d["numeric"] = self.kind.value, self.numeric.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Op":
        return cls(**{**d, "kind": OpKind(d["kind"]), "numeric": Numeric(d["numeric"])})


@dataclass(frozen=True)
class Workload:
    """The traced ops of one model variant, per inference.

    ``untraced`` names leaf modules with parameters whose type the tracer does not model: their cost is
    missing from the IR, so a non-empty list means the figures are a lower bound.
    """

    model: str
    timesteps: int
    batch_traced: int
    ops: tuple[Op, ...]
    untraced: tuple[str, ...] = field(default=())

    @property
    def params(self) -> int:
        return sum(op.params for op in self.ops)

    @property
    def macs(self) -> float:
        return sum(op.macs for op in self.ops)

    @property
    def sops(self) -> float:
        return sum(op.sops for op in self.ops)

    @property
    def neuron_updates(self) -> float:
        return sum(op.elements for op in self.ops if op.kind is OpKind.NEURON)

    @property
    def spikes(self) -> float:
        return sum(op.spikes for op in self.ops if op.kind is OpKind.NEURON)

    @property
    def firing_rate(self) -> float | None:
        """Mean spikes per neuron per timestep over all neuron layers; None for a model without neurons."""
        updates = self.neuron_updates
        return self.spikes / updates if updates else None

    def with_precision(self, *, numeric: Numeric, weight_bits: int, act_bits: int, state_bits: int | None = None) -> "Workload":
        """The same workload with other operand formats (e.g. an INT8 deployment of the traced model)."""
        ops = tuple(
            replace(op, numeric=numeric, weight_bits=weight_bits, act_bits=act_bits, state_bits=state_bits or op.state_bits)
            for op in self.ops
        )
        return replace(self, ops=ops)

    def to_dict(self) -> dict:
        return {
            "ir_version": IR_VERSION,
            "model": self.model,
            "timesteps": self.timesteps,
            "batch_traced": self.batch_traced,
            "ops": [op.to_dict() for op in self.ops],
            "untraced": list(self.untraced),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Workload":
        if d.get("ir_version") != IR_VERSION:
            raise ValueError(f"workload IR version {d.get('ir_version')!r} is not supported (expected {IR_VERSION})")
        return cls(
            model=d["model"],
            timesteps=d["timesteps"],
            batch_traced=d["batch_traced"],
            ops=tuple(Op.from_dict(o) for o in d["ops"]),
            untraced=tuple(d.get("untraced", ())),
        )


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
    """True for spiking-neuron modules of SpikingJelly (``BaseNode``) and snnTorch (``SpikingNeuron``)."""
    return isinstance(module, _neuron_bases())


def _elementwise_types() -> tuple[type, ...]:
    from quant.ptq import ActivationFakeQuant  # requantization: one scale multiply per element

    return (nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.LeakyReLU, nn.Hardtanh, nn.ReLU6, ActivationFakeQuant)


class _Recorder:
    """Accumulates counts per module over all its calls during one traced forward pass."""

    def __init__(self, *, timesteps: int | None, batch: int) -> None:
        self.T = timesteps
        self.B = batch
        self.ops: dict[str, dict] = {}

    def _entry(self, name: str, kind: OpKind, module: nn.Module) -> dict:
        if name not in self.ops:
            self.ops[name] = {"name": name, "kind": kind, "layer_type": type(module).__name__, "calls": 0}
        e = self.ops[name]
        e["calls"] += 1
        return e

    def _time_constant(self, x: torch.Tensor) -> bool:
        # (T, B, ...) input identical at every timestep: computed once per inference.
        return self.T is not None and x.shape[0] == self.T and torch.equal(x, x[:1].expand_as(x))

    def gemm(self, name: str, module: nn.Module, x: torch.Tensor, *, k: int, n: int, rows: int, sops_fn: Callable[[], float]) -> None:
        """``rows``: output rows (tokens / output pixels) summed over everything in the call."""
        T = self.T or 1
        binary = bool(torch.all((x == 0) | (x == 1)))
        spiking = self.T is not None and binary
        kind = OpKind.SYNAPTIC if spiking else OpKind.GEMM
        e = self._entry(name, kind, module)
        if e["kind"] is not kind:
            raise ValueError(f"module {name} got both spike and non-spike inputs in one traced pass")
        e.update(k=k, n=n, timesteps=T, m=rows // (T * self.B))
        e["params"] = sum(p.numel() for p in module.parameters(recurse=False))
        has_bias = getattr(module, "bias", None) is not None
        e["nnz"] = e.get("nnz", 0.0) + float((x != 0).sum())
        e["numel"] = e.get("numel", 0.0) + float(x.numel())
        if spiking:
            e["sops"] = e.get("sops", 0.0) + sops_fn() / self.B
            e["bias_adds"] = e.get("bias_adds", 0.0) + (rows * n / self.B if has_bias else 0.0)
        else:
            eff_rows = rows // T if self._time_constant(x) else rows
            e["macs"] = e.get("macs", 0.0) + eff_rows * k * n / self.B
            e["bias_adds"] = e.get("bias_adds", 0.0) + (eff_rows * n / self.B if has_bias else 0.0)

    def linear(self, name: str, module: nn.Linear, x: torch.Tensor) -> None:
        k, n = module.in_features, module.out_features
        rows = x.numel() // k
        self.gemm(name, module, x, k=k, n=n, rows=rows, sops_fn=lambda: float((x != 0).sum()) * n)

    def conv2d(self, name: str, module: nn.Conv2d, x: torch.Tensor, out: torch.Tensor) -> None:
        x4 = x.flatten(0, x.dim() - 4)  # (..., C, H, W) -> (N, C, H, W)
        kh, kw = module.kernel_size
        k = module.in_channels // module.groups * kh * kw
        n = module.out_channels
        rows = out.numel() // n

        def sops() -> float:
            # exact: for each output position and output channel, the number of spikes in its receptive field
            ones = torch.ones(module.groups, module.in_channels // module.groups, kh, kw, dtype=x4.dtype)
            counts = F.conv2d((x4 != 0).to(x4.dtype), ones, None, module.stride, module.padding, module.dilation, module.groups)
            return float(counts.sum()) * (module.out_channels // module.groups)

        self.gemm(name, module, x, k=k, n=n, rows=rows, sops_fn=sops)

    def neuron(self, name: str, module: nn.Module, out: torch.Tensor) -> None:
        T = self.T or 1
        e = self._entry(name, OpKind.NEURON, module)
        e["timesteps"] = T
        e.setdefault("neurons", out.numel() // (T * self.B))
        e["elements"] = e.get("elements", 0.0) + out.numel() / self.B
        e["spikes"] = e.get("spikes", 0.0) + float(out.sum()) / self.B

    def elementwise(self, name: str, module: nn.Module, out: torch.Tensor) -> None:
        e = self._entry(name, OpKind.ELEMENTWISE, module)
        e["timesteps"] = self.T or 1
        e["elements"] = e.get("elements", 0.0) + out.numel() / self.B

    def to_ops(self) -> tuple[Op, ...]:
        ops = []
        for e in self.ops.values():
            nnz, numel = e.pop("nnz", None), e.pop("numel", None)
            if nnz is not None:
                e["input_density"] = nnz / numel if numel else 0.0
            ops.append(Op(**e))
        return tuple(ops)


@torch.no_grad()
def trace(
    model: nn.Module,
    x: torch.Tensor,
    *,
    name: str | None = None,
    timesteps: int | None = None,
    is_neuron: Callable[[nn.Module], bool] = default_is_neuron,
    numeric: Numeric = Numeric.FLOAT,
    weight_bits: int = 32,
    act_bits: int = 32,
    state_bits: int = 32,
) -> Workload:
    """Run ``model(x)`` once on a batch ``x`` (B, ...) and return its per-inference :class:`Workload`.

    Args:
        timesteps: T for a multi-step spiking model whose layers see (T, B, ...) tensors; None for an ANN.
        is_neuron: predicate that tells spiking-neuron modules apart (their outputs are spikes).
        numeric, weight_bits, act_bits, state_bits: operand formats recorded on every op.
    """
    if timesteps is not None and (not isinstance(timesteps, int) or timesteps < 1):
        raise ValueError(f"trace: timesteps={timesteps!r} must be None (ANN) or an int >= 1")
    if x.dim() < 1 or x.shape[0] < 1:
        raise ValueError(f"trace: x must be a non-empty batch (B, ...), got shape {tuple(x.shape)}")
    rec = _Recorder(timesteps=timesteps, batch=int(x.shape[0]))
    handles, untraced = [], []
    neuron_names: list[str] = []
    elementwise = _elementwise_types()
    for mod_name, module in model.named_modules():
        if any(mod_name.startswith(p + ".") for p in neuron_names):
            continue  # submodules of a neuron (e.g. its surrogate function) are part of the neuron
        if is_neuron(module):
            neuron_names.append(mod_name)
            handles.append(module.register_forward_hook(lambda m, i, o, n=mod_name: rec.neuron(n, m, o)))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(lambda m, i, o, n=mod_name: rec.linear(n, m, i[0])))
        elif isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(lambda m, i, o, n=mod_name: rec.conv2d(n, m, i[0], o)))
        elif isinstance(module, elementwise):
            handles.append(module.register_forward_hook(lambda m, i, o, n=mod_name: rec.elementwise(n, m, o)))
        elif not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            untraced.append(f"{mod_name} ({type(module).__name__})")
    was_training = model.training
    try:
        model.eval()
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    ops = tuple(
        replace(op, numeric=numeric, weight_bits=weight_bits, act_bits=act_bits, state_bits=state_bits) for op in rec.to_ops()
    )
    return Workload(
        model=name or type(model).__name__,
        timesteps=timesteps or 1,
        batch_traced=int(x.shape[0]),
        ops=ops,
        untraced=tuple(untraced),
    )
