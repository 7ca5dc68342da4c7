"""The simulated transformer accelerator (issue [H]): systolic MAC array, SRAM/DRAM hierarchy, energy.

So far: :class:`AcceleratorConfig` (validated design points and expert presets) and :func:`map_gemm`, the
per-GEMM cycle / traffic / energy model (formulas in :mod:`neurohw.accel.gemm`).
"""

from neurohw.accel.config import PRESETS, AcceleratorConfig, Dataflow
from neurohw.accel.gemm import GemmResult, compute_cycles, map_gemm

__all__ = ["AcceleratorConfig", "Dataflow", "PRESETS", "GemmResult", "map_gemm", "compute_cycles"]
