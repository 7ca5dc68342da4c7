"""The workload IR: what one inference of a model computes and moves, as plain data.

An inference is a tuple of :class:`Op` in call order. Counts are *per inference* (per input sample), averaged
over the traced batch, and *measured* on real inputs (spikes and synaptic operations depend on the data).
``Workload.to_dict()`` is JSON-serializable, so ``neurohw.accel`` never imports model
code (ARCHITECTURE.md: neurohw does not import ``ann``/``snn``).

Dimension letters: T timesteps (1 for an ANN), B traced batch, m rows per call and timestep (tokens or output
pixels), k reduction length (fan-in), n outputs (fan-out); for attention h query heads, h_kv key/value heads,
L_q query length, L_kv key/value length, d head dimension.

Op kinds and their counts (per inference, summed over the calls an entry stands for):

- ``GEMM``: dense multiply-accumulate, ``macs = m * k * n`` per call and timestep (once per call when the
  input is the same at every timestep, e.g. the direct-encoding layer of an SNN). ``function`` is
  ``"linear"``, ``"conv2d"`` or ``"matmul"`` (a product of two activations). ``repeats = macs / (m k n)``.
- ``SYNAPTIC``: a GEMM whose input is spikes (binary, or the graded / signed spike values a neuron layer emits),
  executed event-driven: one accumulate per (input spike, target neuron) pair, ``sops = sum_t nnz(s[t]) * n``
  (exact per receptive field for a convolution). ``passes``: how many times the op's shape (m rows over T
  timesteps) runs per inference, i.e. fetches its weights: one per traced forward (one per step of a cached
  decode), whether that forward called it once (multi-step) or T times (single-step); 0 when not recorded,
  taken as 1. ``b_binary``: a ``"matmul"`` (GEMM or SYNAPTIC) whose second operand is spikes (0 / 1, e.g. the
  cached keys and values of spike-driven attention), stored and moved at 1 bit, not at ``weight_bits``.
- ``NEURON``: spiking-neuron state updates, ``elements = neurons * T``, with the measured ``spikes`` (spike
  events: nonzero outputs; a graded spike is one event).
- ``ATTENTION``: softmax(Q K^T / sqrt(d)) V of one call (``scaled_dot_product_attention``):
  ``macs = 2 h L_q L_kv d`` (scores and the weighted sum), ``elements = h L_q L_kv`` softmax inputs.
- ``SOFTMAX``, ``NORM`` (``function`` ``"layernorm"``/``"rmsnorm"``/...) and ``ELEMENTWISE`` (``function``
  ``"gelu"``, ``"silu"``, ``"relu"``, ``"add"``, ``"mul"``, ``"requant"``, ...): ``elements`` outputs and
  ``in_elements`` activation inputs read.
- ``EMBEDDING``: a table lookup, ``elements = m * n`` weights gathered.
- ``KV_WRITE`` / ``KV_READ``: key/value-cache traffic of autoregressive decoding, ``elements`` written (the
  new tokens' keys and values, ``2 h_kv L_new d``) or read back (the past ones, ``2 h_kv L_past d``).

Dataflow between ops (for fusion): ``fused_in_elements`` counts input elements that come straight from the
op traced just before (its producer), so a fused implementation reads them from the producer's output path,
not from DRAM; ``output_on_chip`` is true when that fused consumer is the *only* reader of this op's output,
so a fused implementation never writes it to DRAM.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum

__all__ = ["IR_VERSION", "OpKind", "Numeric", "Op", "Workload", "VECTOR_KINDS"]

IR_VERSION = 2


class OpKind(str, Enum):
    GEMM = "gemm"
    SYNAPTIC = "synaptic"
    NEURON = "neuron"
    ATTENTION = "attention"
    SOFTMAX = "softmax"
    NORM = "norm"
    ELEMENTWISE = "elementwise"
    EMBEDDING = "embedding"
    KV_WRITE = "kv_write"
    KV_READ = "kv_read"


# kinds that run on a vector unit element by element (and may fuse into their producer's output path)
VECTOR_KINDS = frozenset({OpKind.SOFTMAX, OpKind.NORM, OpKind.ELEMENTWISE, OpKind.NEURON})


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
    function: str = ""
    timesteps: int = 1
    m: int = 0
    k: int = 0
    n: int = 0
    macs: float = 0.0
    sops: float = 0.0
    bias_adds: float = 0.0
    passes: float = 0.0
    b_binary: bool = False
    elements: float = 0.0
    in_elements: float = 0.0
    neurons: int = 0
    spikes: float = 0.0
    input_density: float | None = None
    params: int = 0
    heads: int = 0
    kv_heads: int = 0
    q_len: int = 0
    kv_len: int = 0
    head_dim: int = 0
    causal: bool = False
    fused_in_elements: float = 0.0
    output_on_chip: bool = False
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

    @property
    def repeats(self) -> float:
        """How many times the op's one-call shape runs per inference (GEMM: per call and timestep)."""
        if self.kind is OpKind.GEMM:
            return self.macs / (self.m * self.k * self.n) if self.m and self.k and self.n else 0.0
        if self.kind is OpKind.ATTENTION:
            per_call = 2 * self.heads * self.q_len * self.kv_len * self.head_dim
            return self.macs / per_call if per_call else 0.0
        return float(self.calls)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kind"], d["numeric"] = self.kind.value, self.numeric.value
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Op":
        try:
            kind = OpKind(d["kind"])
        except ValueError:
            raise ValueError(f"op {d.get('name')!r} has unknown kind {d['kind']!r}; known kinds: "
                             f"{[k.value for k in OpKind]}") from None
        return cls(**{**d, "kind": kind, "numeric": Numeric(d["numeric"])})


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

    def _per_module(self, value) -> float:
        """Sum of ``value(op)`` over modules, each counted once however often its op is called (max over its entries)."""
        seen: dict[str, float] = {}
        for op in self.ops:
            seen[op.name] = max(seen.get(op.name, 0), value(op))
        return sum(seen.values())

    @property
    def params(self) -> int:
        """Parameters of the traced modules (each weight counted once, however often its op is called)."""
        return int(self._per_module(lambda op: op.params))

    @property
    def weight_bytes(self) -> float:
        """Bytes of all weights at their bit widths (each module's parameters once)."""
        return self._per_module(lambda op: op.params * op.weight_bits / 8)

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
