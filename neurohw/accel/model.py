r"""Map a whole workload (:mod:`neurohw.workload`) onto an accelerator: cycles, traffic and energy per op.

Ops run one after another (no overlap between ops; within an op, DRAM transfers overlap compute when the
buffers are double-buffered: cycles = max(compute, memory), else their sum). Each op kind has one mapper:

- ``GEMM``: :func:`neurohw.accel.gemm.map_gemm` (systolic array, dataflow, SRAM / DRAM per operand), times the
  op's repeats.
- ``SYNAPTIC`` (event-driven accumulate mode, spike inputs, zeros skipped): the output-stationary array acts
  as R x C accumulators; every synaptic operation adds one weight, so per inference

      compute cycles = p T F (2R + C - 2) + ceil((sops + bias_adds) / (R C)),   F = ceil(m / R) ceil(n / C)

  (fill and drain of every fold and timestep, then the events spread evenly over the PEs: an optimistic
  perfectly balanced zero skip; p = the op's ``passes``, e.g. one per step of a cached decode). Energy:
  (sops + bias_adds) E_add(acc_bits), no multiplies; SRAM: one weight read per synaptic operation, the spike map
  (1 bit per input element and timestep) and the input currents written (acc_bits); DRAM, per pass: weights once
  if they fit in the weight buffer, else once per timestep (a product of two activations: its second operand,
  at 1 bit when it is spikes, ``b_binary``, and never resident); spikes in (m k T bits) and currents out (m n T
  acc_bits, unless a fused neuron consumes them on chip).
- ``NEURON``: the vector unit updates ``lanes`` neurons per cycle (leak + integrate + compare: 2 adds at the
  state width); the membrane potential is read and written in the output buffer at every update and stays on
  chip when the layer's state fits there (else it goes to DRAM and back at every timestep); spikes out 1 bit.
- ``ATTENTION``: the two per-head GEMMs (Q K^T: m = L_q, k = d, n = L_kv; P V: m = L_q, k = L_kv, n = d) on the
  array, softmax on the softmax unit, DRAM traffic by :mod:`neurohw.accel.attention` (naive or flash).
- ``SOFTMAX`` / ``NORM`` / ``ELEMENTWISE``: the integer units of :mod:`neurohw.accel.units`; SRAM reads per
  pass, DRAM reads of the inputs and a DRAM write of the output.
- ``EMBEDDING``: a DMA gather of the looked-up rows (DRAM reads) and a write of the result.
- ``KV_WRITE`` / ``KV_READ``: reported, not charged again: the cache's reads are the attention op's K / V
  reads and its writes are the K / V projections' output writes (both already charged above).

Fusion (``fuse=True``): a vector op's input that comes straight from the op before it is taken from that op's
output path, not from DRAM (``fused_in_elements``), and an op whose only reader is such a fused consumer does
not write its output to DRAM (``output_on_chip``). ``fuse=False`` is the layer-by-layer baseline in which
every op reads its inputs from and writes its output to DRAM.

Resident weights: when all weights of the workload fit the weight buffer (its full capacity), they are loaded
once and stay on chip across inferences, so no op fetches weights from DRAM (per-inference figures then
exclude the one-time load, amortized over a stream of inferences); otherwise every op fetches its weights at
every call.

Energy is split into ``compute`` (MACs, accumulates, unit arithmetic), ``sram`` and ``dram``; data movement is
``sram + dram``. Every op must be integer and fit the array's multipliers: a float workload is refused with
the fix (``Workload.with_precision``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from neurohw.accel.attention import AttentionMode, attention_traffic
from neurohw.accel.config import AcceleratorConfig
from neurohw.accel.gemm import fold_dims, map_gemm, sram_pj_per_64b, tech_scale
from neurohw.accel.units import unit_cycles, unit_energy_pj, unit_for
from neurohw.constants import ARITH_PJ, DRAM_PJ_PER_64B
from neurohw.workload import Numeric, Op, OpKind, Workload

__all__ = ["OpCost", "WorkloadCost", "map_workload", "map_op", "energy_table", "workload_cost_fn"]


@dataclass(frozen=True)
class OpCost:
    """Cost of one IR op per inference (all its repeats); bytes are DRAM / SRAM traffic."""

    name: str
    kind: str
    function: str
    unit: str
    repeats: float
    cycles: float
    compute_cycles: float
    memory_cycles: float
    macs: float
    sops: float
    sram_read_bytes: float
    sram_write_bytes: float
    dram_read_bytes: float
    dram_write_bytes: float
    energy_pj: dict
    utilization: float
    kv_cache_bytes: float = 0.0

    @property
    def bound(self) -> str:
        return "memory" if self.memory_cycles > self.compute_cycles else "compute"

    def to_dict(self) -> dict:
        return {**asdict(self), "bound": self.bound, "energy_total_pj": sum(self.energy_pj.values())}


@dataclass(frozen=True)
class WorkloadCost:
    """The mapped workload: per-op costs and their totals (per inference)."""

    model: str
    config: AcceleratorConfig
    attention: str
    fuse: bool
    ops: tuple[OpCost, ...]
    weights_resident: bool = False

    @property
    def cycles(self) -> float:
        return sum(o.cycles for o in self.ops)

    @property
    def latency_s(self) -> float:
        return self.cycles / (self.config.clock_mhz * 1e6)

    @property
    def energy_pj(self) -> dict:
        out = {"compute": 0.0, "sram": 0.0, "dram": 0.0}
        for o in self.ops:
            for k, v in o.energy_pj.items():
                out[k] += v
        return out

    @property
    def energy_total_pj(self) -> float:
        return sum(self.energy_pj.values())

    @property
    def dram_bytes(self) -> float:
        return sum(o.dram_read_bytes + o.dram_write_bytes for o in self.ops)

    @property
    def utilization(self) -> float:
        """Array work (MACs + synaptic ops) over what the array could do in the whole run."""
        return sum(o.macs + o.sops for o in self.ops) / (self.config.pes * self.cycles) if self.cycles else 0.0

    def summary(self) -> dict:
        e = self.energy_pj
        return {"model": self.model, "config": self.config.to_dict(), "attention": self.attention, "fuse": self.fuse,
                "weights_resident": self.weights_resident, "ops": len(self.ops), "cycles": self.cycles, "latency_s": self.latency_s,
                "energy_pj": {**e, "total": sum(e.values()), "data_movement": e["sram"] + e["dram"]},
                "dram_bytes": self.dram_bytes, "macs": sum(o.macs for o in self.ops),
                "sops": sum(o.sops for o in self.ops), "utilization": self.utilization}

    def to_dict(self) -> dict:
        return {**self.summary(), "per_op": [o.to_dict() for o in self.ops]}


def energy_table(cfg: AcceleratorConfig) -> list[dict]:
    """Every per-op and per-access energy the model uses, at 45 nm and scaled to ``cfg``'s node, with sources."""
    from neurohw.constants import SRAM_LEVELS

    s = tech_scale(cfg)
    rows = [{"what": f"int{bits} {what}", "pj_45nm": c.value_pj, "pj_at_config": c.value_pj * s, "per": c.per,
             "source": c.source} for (num, bits, what), c in ARITH_PJ.items() if num == "int"]
    rows += [{"what": f"SRAM {cap // 1024} KiB, 64-bit access", "pj_45nm": c.value_pj, "pj_at_config": c.value_pj * s,
              "per": c.per, "source": c.source} for cap, c in SRAM_LEVELS]
    rows += [{"what": f"SRAM {name} buffer ({kb:g} KiB), 64-bit access (log-log interpolated)",
              "pj_45nm": sram_pj_per_64b(kb * 1024), "pj_at_config": sram_pj_per_64b(kb * 1024) * s, "per": "64-bit access",
              "source": "interpolated between the SRAM rows above"}
             for name, kb in (("input", cfg.ifmap_sram_kb), ("weight", cfg.weight_sram_kb), ("output", cfg.ofmap_sram_kb))]
    rows.append({"what": "DRAM, 64-bit access", "pj_45nm": DRAM_PJ_PER_64B.value_pj, "pj_at_config": DRAM_PJ_PER_64B.value_pj,
                 "per": DRAM_PJ_PER_64B.per, "source": DRAM_PJ_PER_64B.source + " (not node-scaled)"})
    return rows


# --------------------------------------------------------------------------------------------- helpers
def _add_pj(bits: int) -> float:
    width = next((w for w in (8, 16, 32) if bits <= w), None)
    if width is None:
        raise ValueError(f"no integer adder energy for {bits}-bit values (at most 32)")
    return ARITH_PJ[("int", width, "add")].value_pj


def _dram_pj(nbytes: float) -> float:
    return nbytes * 8 * DRAM_PJ_PER_64B.value_pj / 64


def _cycles(cfg: AcceleratorConfig, compute: float, dram_bytes: float) -> tuple[float, float]:
    memory = dram_bytes / cfg.dram_bytes_per_cycle
    return (max(compute, memory) if cfg.double_buffer else compute + memory), memory


def _usable(cfg: AcceleratorConfig, kb: float) -> float:
    return kb * 1024 / (2 if cfg.double_buffer else 1)


def _check_op(cfg: AcceleratorConfig, op: Op) -> None:
    if op.numeric is not Numeric.INT:
        raise ValueError(f"op {op.name!r} is {op.numeric.value}: the accelerator computes in integers; map "
                         "workload.with_precision(numeric=Numeric.INT, weight_bits=8, act_bits=8) (or trace with numeric=INT)")
    if op.kind in (OpKind.GEMM, OpKind.ATTENTION) and max(op.act_bits, op.weight_bits) > cfg.mac_bits:
        raise ValueError(f"op {op.name!r} has {op.weight_bits}-bit weights / {op.act_bits}-bit activations, wider than "
                         f"the {cfg.mac_bits}-bit multipliers: lower the workload's precision or raise mac_bits")


# --------------------------------------------------------------------------------------------- mappers
def _gemm(cfg: AcceleratorConfig, op: Op, fuse: bool, resident: bool) -> OpCost:
    b_bits = 1 if op.b_binary else op.weight_bits
    g = map_gemm(cfg, op.m, op.n, op.k, a_bits=op.act_bits, b_bits=b_bits,
                 write_output=not (fuse and op.output_on_chip), b_resident=resident and op.params > 0)
    r = op.repeats
    mult = {"a": op.act_bits, "b": b_bits, "c": cfg.acc_bits}
    sram_r = sum(v * mult[x] / 8 for x, v in g.sram_reads.items())
    sram_w = sum(v * mult[x] / 8 for x, v in g.sram_writes.items())
    e = g.energy_breakdown_pj
    return OpCost(op.name, op.kind.value, op.function, "array", r, g.cycles * r, g.compute_cycles * r, g.memory_cycles * r,
                  op.macs, 0.0, sram_r * r, sram_w * r, sum(g.dram_reads.values()) * r, sum(g.dram_writes.values()) * r,
                  {"compute": e["mac"] * r, "sram": e["sram"] * r, "dram": e["dram"] * r}, g.utilization)


def _synaptic(cfg: AcceleratorConfig, op: Op, fuse: bool, resident: bool) -> OpCost:
    T, m, k, n, p = op.timesteps, op.m, op.k, op.n, op.passes or 1.0
    _, _, _, fr, fc = fold_dims(m, n, k, cfg.rows, cfg.cols, "os")
    events = op.sops + op.bias_adds
    compute = p * T * fr * fc * (2 * cfg.rows + cfg.cols - 2) + math.ceil(events / cfg.pes)
    w_bits = 1 if op.b_binary else op.weight_bits
    w_bytes = k * n * w_bits / 8
    per_pass = w_bytes if w_bytes <= _usable(cfg, cfg.weight_sram_kb) else T * w_bytes
    w_dram = 0.0 if resident and op.function != "matmul" else p * per_pass
    spikes_in = p * m * k * T / 8
    currents = p * m * n * T * cfg.acc_bits / 8
    dram_r = w_dram + spikes_in
    dram_w = 0.0 if (fuse and op.output_on_chip) else currents
    cycles, memory = _cycles(cfg, compute, dram_r + dram_w)
    s = tech_scale(cfg)
    sram_r = events * w_bits / 8 + spikes_in
    sram_w = w_dram + spikes_in + currents
    e_sram = s * 8 / 64 * ((events * w_bits / 8 + w_dram) * sram_pj_per_64b(cfg.weight_sram_kb * 1024)
                           + 2 * spikes_in * sram_pj_per_64b(cfg.ifmap_sram_kb * 1024)
                           + currents * sram_pj_per_64b(cfg.ofmap_sram_kb * 1024))
    energy = {"compute": events * _add_pj(cfg.acc_bits) * s, "sram": e_sram, "dram": _dram_pj(dram_r + dram_w)}
    return OpCost(op.name, op.kind.value, op.function, "array-event", 1.0, cycles, compute, memory, 0.0, op.sops,
                  sram_r, sram_w, dram_r, dram_w, energy, op.sops / (cfg.pes * cycles) if cycles else 0.0)


def _neuron(cfg: AcceleratorConfig, op: Op, fuse: bool, resident: bool) -> OpCost:
    updates = op.elements
    compute = math.ceil(updates / cfg.cols)
    state_layer = op.neurons * op.state_bits / 8
    state_dram = 0.0 if state_layer <= _usable(cfg, cfg.ofmap_sram_kb) else 2 * updates * op.state_bits / 8
    cur_in = (op.in_elements - (op.fused_in_elements if fuse else 0.0)) * cfg.acc_bits / 8
    spikes_out = 0.0 if (fuse and op.output_on_chip) else updates / 8
    dram_r, dram_w = cur_in + state_dram / 2, spikes_out + state_dram / 2
    cycles, memory = _cycles(cfg, compute, dram_r + dram_w)
    s = tech_scale(cfg)
    sram_r = updates * op.state_bits / 8 + op.in_elements * cfg.acc_bits / 8
    sram_w = updates * op.state_bits / 8 + updates / 8
    energy = {"compute": 2 * updates * _add_pj(op.state_bits) * s,
              "sram": s * 8 / 64 * (sram_r + sram_w) * sram_pj_per_64b(cfg.ofmap_sram_kb * 1024),
              "dram": _dram_pj(dram_r + dram_w)}
    return OpCost(op.name, op.kind.value, op.function, "neuron", 1.0, cycles, compute, memory, 0.0, 0.0,
                  sram_r, sram_w, dram_r, dram_w, energy, 0.0)


def _vector(cfg: AcceleratorConfig, op: Op, fuse: bool, resident: bool) -> OpCost:
    spec = unit_for(op.function, op_name=op.name)
    compute = unit_cycles(spec, op.elements, cfg.cols)
    a = op.act_bits / 8
    dram_r = (op.in_elements - (op.fused_in_elements if fuse else 0.0)) * a
    dram_w = 0.0 if (fuse and op.output_on_chip) else op.elements * a
    cycles, memory = _cycles(cfg, compute, dram_r + dram_w)
    s = tech_scale(cfg)
    sram_r, sram_w = spec.passes * op.in_elements * a, op.elements * a
    energy = {"compute": unit_energy_pj(spec, op.elements, s),
              "sram": s * 8 / 64 * (sram_r + sram_w) * sram_pj_per_64b(cfg.ofmap_sram_kb * 1024),
              "dram": _dram_pj(dram_r + dram_w)}
    return OpCost(op.name, op.kind.value, op.function, f"{op.function} unit", 1.0, cycles, compute, memory, 0.0, 0.0,
                  sram_r, sram_w, dram_r, dram_w, energy, 0.0)


def _attention(cfg: AcceleratorConfig, op: Op, fuse: bool, mode: AttentionMode) -> OpCost:
    h, lq, lkv, d, r = op.heads, op.q_len, op.kv_len, op.head_dim, op.repeats
    qk = map_gemm(cfg, lq, lkv, d, a_bits=op.act_bits, b_bits=op.act_bits)
    pv = map_gemm(cfg, lq, d, lkv, a_bits=op.act_bits, b_bits=op.act_bits)
    sram_elements = (_usable(cfg, cfg.ifmap_sram_kb) + _usable(cfg, cfg.weight_sram_kb)) * 8 / op.act_bits
    io = attention_traffic(lq, lkv, d, mode=mode, sram_elements=sram_elements, act_bits=op.act_bits,
                           score_bits=cfg.acc_bits, write_output=not (fuse and op.output_on_chip))
    softmax, rescale = unit_for("softmax"), unit_for("mul")
    array_cycles = qk.compute_cycles + pv.compute_cycles
    unit_cyc = unit_cycles(softmax, lq * lkv, cfg.cols) + unit_cycles(rescale, io.rescale_mults, cfg.cols)
    dram_r, dram_w = h * r * io.read_bits / 8, h * r * io.write_bits / 8
    cycles, memory = _cycles(cfg, h * r * (array_cycles + unit_cyc), dram_r + dram_w)
    s = tech_scale(cfg)
    mac_pj = qk.energy_breakdown_pj["mac"] + pv.energy_breakdown_pj["mac"]
    unit_pj = unit_energy_pj(softmax, lq * lkv, s) + unit_energy_pj(rescale, io.rescale_mults, s)
    bits = {"a": op.act_bits, "b": op.act_bits, "c": cfg.acc_bits}
    sram_r = sum(g.sram_reads[x] * bits[x] / 8 for g in (qk, pv) for x in g.sram_reads)
    sram_w = sum(g.sram_writes[x] * bits[x] / 8 for g in (qk, pv) for x in g.sram_writes)
    sram_pj = qk.energy_breakdown_pj["sram"] + pv.energy_breakdown_pj["sram"]
    energy = {"compute": h * r * (mac_pj + unit_pj), "sram": h * r * sram_pj, "dram": _dram_pj(dram_r + dram_w)}
    return OpCost(op.name, op.kind.value, f"{op.function} ({mode.value})", "array + softmax unit", r, cycles,
                  h * r * (array_cycles + unit_cyc), memory, op.macs, 0.0, h * r * sram_r, h * r * sram_w, dram_r, dram_w,
                  energy, op.macs / (cfg.pes * cycles) if cycles else 0.0)


def _embedding(cfg: AcceleratorConfig, op: Op, fuse: bool, resident: bool) -> OpCost:
    rows = op.elements * op.weight_bits / 8  # the gathered table rows
    dram_r = 0.0 if resident else rows
    dram_w = 0.0 if (fuse and op.output_on_chip) else op.elements * op.act_bits / 8
    cycles, memory = _cycles(cfg, 0.0, dram_r + dram_w)
    s = tech_scale(cfg)
    energy = {"compute": 0.0, "sram": s * 8 / 64 * rows * sram_pj_per_64b(cfg.weight_sram_kb * 1024),
              "dram": _dram_pj(dram_r + dram_w)}
    return OpCost(op.name, op.kind.value, op.function, "dma", 1.0, cycles, 0.0, memory, 0.0, 0.0, rows, dram_r, dram_r,
                  dram_w, energy, 0.0)


def _kv(cfg: AcceleratorConfig, op: Op, fuse: bool, resident: bool) -> OpCost:
    return OpCost(op.name, op.kind.value, op.function, "(charged to attention / projections)", 1.0, 0.0, 0.0, 0.0, 0.0,
                  0.0, 0.0, 0.0, 0.0, 0.0, {"compute": 0.0, "sram": 0.0, "dram": 0.0}, 0.0,
                  kv_cache_bytes=op.elements * op.act_bits / 8)


_MAPPERS = {
    OpKind.GEMM: _gemm,
    OpKind.SYNAPTIC: _synaptic,
    OpKind.NEURON: _neuron,
    OpKind.SOFTMAX: _vector,
    OpKind.NORM: _vector,
    OpKind.ELEMENTWISE: _vector,
    OpKind.EMBEDDING: _embedding,
    OpKind.KV_WRITE: _kv,
    OpKind.KV_READ: _kv,
}


def map_op(cfg: AcceleratorConfig, op: Op, *, attention: AttentionMode | str = AttentionMode.FLASH, fuse: bool = True,
           weights_resident: bool = False) -> OpCost:
    """The cost of one op (module docstring); an op kind without a mapper is an error, never skipped."""
    _check_op(cfg, op)
    if op.kind is OpKind.ATTENTION:
        return _attention(cfg, op, fuse, AttentionMode(attention))
    try:
        mapper = _MAPPERS[op.kind]
    except KeyError:
        raise ValueError(f"op {op.name!r}: no accelerator mapping for op kind {op.kind!r}") from None
    return mapper(cfg, op, fuse, weights_resident)


def map_workload(cfg: AcceleratorConfig, workload: Workload, *, attention: AttentionMode | str = AttentionMode.FLASH,
                 fuse: bool = True) -> WorkloadCost:
    """Map every op of ``workload`` onto ``cfg`` (formulas in the module docstring)."""
    mode = AttentionMode(attention)
    resident = workload.weight_bytes <= cfg.weight_sram_kb * 1024
    return WorkloadCost(model=workload.model, config=cfg, attention=mode.value, fuse=fuse, weights_resident=resident,
                        ops=tuple(map_op(cfg, op, attention=mode, fuse=fuse, weights_resident=resident) for op in workload.ops))


def workload_cost_fn(workload: Workload, *, attention: AttentionMode | str = AttentionMode.FLASH, fuse: bool = True):
    """``cfg -> (latency_s, energy_j)`` of one inference of ``workload`` (the cost function of
    :mod:`neurohw.accel.dse`)."""
    def cost(cfg: AcceleratorConfig) -> tuple[float, float]:
        c = map_workload(cfg, workload, attention=attention, fuse=fuse)
        return c.latency_s, c.energy_total_pj * 1e-12
    return cost


def inference_energy_pj(model, x, *, timesteps: int | None = None, preset: str = "default", weight_bits: int = 8,
                        act_bits: int = 8, state_bits: int = 16) -> float:
    """Energy (pJ) of one inference of any torch ``model`` on the preset ``preset``: traced on the batch ``x``
    (:func:`neurohw.workload.trace`, measured spike rates for a spiking model) with INT ``weight_bits`` weights,
    ``act_bits`` activations and ``state_bits`` membranes, then mapped by :func:`map_workload`. ``timesteps``: T of
    a multi-step spiking model; None reads ``model.timesteps`` or ``model.config.timesteps`` when the model has one
    (an ANN has neither). The signature ``(model, x)`` with defaults is what :mod:`snn.nas` takes as its energy
    objective (``--energy-fn neurohw.accel.model:inference_energy_pj``)."""
    from neurohw.accel.config import PRESETS
    from neurohw.workload import Numeric, trace

    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r}; choose one of {sorted(PRESETS)}")
    if timesteps is None:
        timesteps = getattr(model, "timesteps", None) or getattr(getattr(model, "config", None), "timesteps", None)
    w = trace(model, x, timesteps=timesteps, numeric=Numeric.INT, weight_bits=weight_bits, act_bits=act_bits,
              state_bits=state_bits)
    return map_workload(PRESETS[preset], w).energy_total_pj

