r"""First energy model: compute energy per op plus memory-access energy, per inference.

Compute (counts from :mod:`neurohw.workload`, energies from :mod:`neurohw.constants`):

    E_GEMM       = macs * (E_mult + E_add) + bias_adds * E_add          (at the op's numeric / act bits)
    E_SYNAPTIC   = (sops + bias_adds) * E_add                            (accumulate only, at weight bits)
    E_NEURON     = updates * E_add                                       (threshold compare + reset, at state bits)
    E_ELEMENTWISE = elements * E_add                                     (a compare / select per element)

Memory traffic in bits per inference (every access costs ``E_word / 64`` per bit of the memory level below):

    GEMM:      weights k*n*w_b + bias n*w_b read once (each weight is reused across the op's m rows from
               the array, as in a weight-stationary systolic array); inputs m*k*a_b read and outputs
               m*n*a_b written per computed row (T times unless the input is constant over time).
    SYNAPTIC:  one weight read per synaptic operation, sops*w_b (event-driven: a spike fetches the weights
               of its fan-out, every timestep; there is no reuse across timesteps), bias read every
               timestep, bias_adds*w_b, and the input spike map read every timestep, m*k*T bits.
    NEURON:    membrane potential read and written at every update, 2*updates*s_b, and spikes written,
               updates*1 bit.
    ELEMENTWISE: none (fused into the producing op's output path).

Memory level: every access is charged at the smallest SRAM (8 KB, 32 KB, 1 MB) that holds the model's
working set (all weights + all neuron state + the largest layer input and output); above 1 MB, at DRAM.
This is a deliberately simple first model (issue [H] replaces it by the accelerator's SRAM/DRAM
hierarchy); its point is that data movement is counted at all.

Symbols: w_b, a_b, s_b bit widths of weights, activations and membrane state; E_word energy of one 64-bit
access; m, k, n, T as in :mod:`neurohw.workload`.
"""

from __future__ import annotations

from dataclasses import dataclass

from neurohw.constants import ARITH_PJ, DRAM_PJ_PER_64B, SRAM_LEVELS, EnergyConstant
from neurohw.workload import Op, OpKind, Workload

__all__ = ["OpEnergy", "EnergyReport", "estimate_energy", "memory_level"]


@dataclass(frozen=True)
class OpEnergy:
    name: str
    kind: str
    compute_pj: float
    memory_pj: float
    memory_bits: float


@dataclass(frozen=True)
class EnergyReport:
    """Energy of one inference; ``compute_uj + memory_uj == total_uj``."""

    compute_uj: float
    memory_uj: float
    memory_level: str
    working_set_bytes: int
    per_op: tuple[OpEnergy, ...]

    @property
    def total_uj(self) -> float:
        return self.compute_uj + self.memory_uj

    def as_row(self) -> dict[str, float]:
        return {"compute": self.compute_uj, "memory": self.memory_uj, "total": self.total_uj}


def _arith(numeric: str, bits: int, what: str) -> float:
    try:
        return ARITH_PJ[(numeric, bits, what)].value_pj
    except KeyError:
        known = sorted({(n, b) for n, b, _ in ARITH_PJ})
        raise ValueError(f"no {what} energy for {numeric}{bits}; known formats: {known}") from None


def memory_level(working_set_bytes: int) -> tuple[str, EnergyConstant]:
    """The smallest memory that holds ``working_set_bytes`` and its per-64-bit access energy."""
    for capacity, const in SRAM_LEVELS:
        if working_set_bytes <= capacity:
            return f"SRAM {capacity // 1024} KB", const
    return "DRAM", DRAM_PJ_PER_64B


def working_set_bytes(w: Workload) -> int:
    weights = sum(op.params * op.weight_bits for op in w.ops)
    state = sum(op.neurons * op.state_bits for op in w.ops if op.kind is OpKind.NEURON)
    acts = max((op.m * (op.k + op.n) * (1 if op.kind is OpKind.SYNAPTIC else op.act_bits) for op in w.ops), default=0)
    return int((weights + state + acts + 7) // 8)


def _op_energy(op: Op, pj_per_bit: float) -> OpEnergy:
    num = op.numeric.value
    if op.kind is OpKind.GEMM:
        compute = op.macs * (_arith(num, op.act_bits, "mult") + _arith(num, op.act_bits, "add")) + op.bias_adds * _arith(num, op.act_bits, "add")
        rows = op.macs / (op.k * op.n) if op.k and op.n else 0.0  # rows actually computed per inference
        bits = op.params * op.weight_bits + rows * (op.k + op.n) * op.act_bits
    elif op.kind is OpKind.SYNAPTIC:
        compute = (op.sops + op.bias_adds) * _arith(num, op.weight_bits, "add")
        bits = (op.sops + op.bias_adds) * op.weight_bits + op.m * op.k * op.timesteps
    elif op.kind is OpKind.NEURON:
        compute = op.elements * _arith(num, op.state_bits, "add")
        bits = op.elements * (2 * op.state_bits + 1)
    else:
        compute = op.elements * _arith(num, op.act_bits, "add")
        bits = 0.0
    return OpEnergy(name=op.name, kind=op.kind.value, compute_pj=compute, memory_pj=bits * pj_per_bit, memory_bits=bits)


def estimate_energy(workload: Workload) -> EnergyReport:
    """Energy per inference of ``workload`` under the model in this module's docstring."""
    ws = working_set_bytes(workload)
    level, const = memory_level(ws)
    per_op = tuple(_op_energy(op, const.value_pj / 64.0) for op in workload.ops)
    return EnergyReport(
        compute_uj=sum(e.compute_pj for e in per_op) * 1e-6,
        memory_uj=sum(e.memory_pj for e in per_op) * 1e-6,
        memory_level=level,
        working_set_bytes=ws,
        per_op=per_op,
    )
