"""The accelerator as hardware (issue [V]): Verilog of the systolic array, simulated against the cycle model.

- :mod:`neurohw.rtl.generate`: a validated :class:`RtlConfig` (array size, bit widths, dataflow) and its Verilog;
- :mod:`neurohw.rtl.sim`: Icarus Verilog simulation of GEMM tiles, with the integer reference they must equal.
"""

from neurohw.rtl.generate import RtlConfig, RtlConfigError, from_accelerator, verilog_sources
from neurohw.rtl.sim import SimulatorMissing, TileRun, reference_tile, run_gemm, run_tile

__all__ = ["RtlConfig", "RtlConfigError", "from_accelerator", "verilog_sources", "SimulatorMissing", "TileRun",
           "reference_tile", "run_tile", "run_gemm"]
