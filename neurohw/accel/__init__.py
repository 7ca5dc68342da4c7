"""The simulated transformer accelerator (issue [H]): systolic MAC array, SRAM/DRAM hierarchy, integer units, energy.

- :class:`AcceleratorConfig`: validated design points and expert presets (:mod:`neurohw.accel.config`);
- :func:`map_gemm`: one GEMM's cycles / traffic / energy (:mod:`neurohw.accel.gemm`);
- :func:`map_workload`: a whole workload IR, op by op, with naive or flash attention and fusion
  (:mod:`neurohw.accel.model`, :mod:`neurohw.accel.attention`, :mod:`neurohw.accel.units`).
"""

from neurohw.accel.attention import AttentionMode
from neurohw.accel.config import PRESETS, AcceleratorConfig, Dataflow
from neurohw.accel.gemm import GemmResult, compute_cycles, map_gemm
from neurohw.accel.model import OpCost, WorkloadCost, inference_energy_pj, map_op, map_workload

__all__ = ["AcceleratorConfig", "Dataflow", "PRESETS", "GemmResult", "map_gemm", "compute_cycles", "AttentionMode",
           "OpCost", "WorkloadCost", "map_op", "map_workload", "inference_energy_pj"]
