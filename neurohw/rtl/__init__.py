"""The accelerator as hardware (issue [V]): Verilog of the systolic array, simulated against the cycle model.

- :mod:`neurohw.rtl.generate`: a validated :class:`RtlConfig` (array size, bit widths, dataflow os / ws) and its
  Verilog (``systolic_os.v``, ``systolic_ws.v`` and a generated top);
- :mod:`neurohw.rtl.sim`: Icarus Verilog simulation of GEMMs fold by fold, with the integer reference they must
  equal bit for bit and the cycles of :mod:`neurohw.accel.gemm` they must take;
- :mod:`neurohw.rtl.vector` / :mod:`neurohw.rtl.vector_sim`: the integer softmax, GELU and LayerNorm units, their
  integer reference and cocotb test benches;
- :mod:`neurohw.rtl.synth`: yosys resource counts.
"""

from neurohw.rtl.generate import RtlConfig, RtlConfigError, from_accelerator, verilog_sources
from neurohw.rtl.sim import GemmRun, SimulatorMissing, TileRun, WsFoldRun, reference_tile, run_gemm, run_tile, run_ws_fold

__all__ = ["RtlConfig", "RtlConfigError", "from_accelerator", "verilog_sources", "SimulatorMissing", "TileRun",
           "WsFoldRun", "GemmRun", "reference_tile", "run_tile", "run_ws_fold", "run_gemm"]
