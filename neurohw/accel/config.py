"""Accelerator configuration: a systolic MAC array, three SRAM buffers, a DRAM channel, a technology node.

Every field is validated at construction; an impossible config names the field and the fix.
"""

from __future__ import annotations

import enum
import math
import numbers
from dataclasses import asdict, dataclass

__all__ = ["Dataflow", "AcceleratorConfig", "PRESETS"]


class Dataflow(str, enum.Enum):
    """Which operand stays in the processing elements (PEs) while the others stream through.

    - ``os`` output stationary: each PE accumulates one output element; A and B stream.
    - ``ws`` weight stationary: each PE holds one weight (element of B); A streams, partial sums flow down.
    - ``is`` input stationary: each PE holds one input element (of A); B streams, partial sums flow down.
    """

    OS = "os"
    WS = "ws"
    IS = "is"


def _is_int(v: object) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class AcceleratorConfig:
    """One accelerator design point.

    Attributes:
        rows, cols: R x C processing elements of the systolic array.
        dataflow: :class:`Dataflow` (``"os"``, ``"ws"`` or ``"is"``).
        mac_bits: width of the integer multipliers (operands narrower than this use the full multiplier).
        acc_bits: width of the accumulators / partial sums.
        ifmap_sram_kb, weight_sram_kb, ofmap_sram_kb: capacities of the input, weight and output buffers (KiB).
        dram_bytes_per_cycle: DRAM bandwidth at the array clock.
        clock_mhz: array clock.
        double_buffer: buffers are split in two halves so that DRAM transfers overlap compute
            (cycles = max(compute, memory) instead of compute + memory).
        overlap_folds: consecutive folds of a GEMM are pipelined: the next fold's fill hides under the
            current fold's drain (see :mod:`neurohw.accel.gemm`).
        node_nm, vdd: technology node and supply voltage that energies are scaled to (45 nm / 0.9 V: none).
    """

    rows: int = 32
    cols: int = 32
    dataflow: Dataflow = Dataflow.OS
    mac_bits: int = 8
    acc_bits: int = 32
    ifmap_sram_kb: float = 256.0
    weight_sram_kb: float = 256.0
    ofmap_sram_kb: float = 128.0
    dram_bytes_per_cycle: float = 32.0
    clock_mhz: float = 1000.0
    double_buffer: bool = True
    overlap_folds: bool = False
    node_nm: float = 45.0
    vdd: float = 0.9

    def __post_init__(self) -> None:
        def need(ok: bool, field: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"AcceleratorConfig.{field}={getattr(self, field)!r} is invalid: {fix}")

        for f in ("rows", "cols"):
            need(_is_int(getattr(self, f)) and 1 <= getattr(self, f) <= 4096, f, "use an int in [1, 4096]")
        try:
            object.__setattr__(self, "dataflow", Dataflow(self.dataflow))
        except ValueError:
            raise ValueError(f"AcceleratorConfig.dataflow={self.dataflow!r} is invalid: use one of "
                             f"{[d.value for d in Dataflow]}") from None
        need(self.mac_bits in (8, 16, 32), "mac_bits", "use 8, 16 or 32 (the widths with published energies)")
        need(self.acc_bits in (16, 32) and self.acc_bits >= self.mac_bits, "acc_bits",
             "use 16 or 32, at least mac_bits (the adder widths with published energies)")
        for f in ("ifmap_sram_kb", "weight_sram_kb", "ofmap_sram_kb", "dram_bytes_per_cycle", "clock_mhz", "node_nm", "vdd"):
            v = getattr(self, f)
            need(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0, f,
                 "use a finite number > 0")
        # One tile of each operand (an R x C block) must fit, twice when double-buffered.
        copies = 2 if self.double_buffer else 1
        tile = self.rows * self.cols
        for f, bits in (("ifmap_sram_kb", self.mac_bits), ("weight_sram_kb", self.mac_bits), ("ofmap_sram_kb", self.acc_bits)):
            need(getattr(self, f) * 1024 * 8 >= copies * tile * bits, f,
                 f"the buffer must hold {copies} x one {self.rows}x{self.cols} tile of {bits}-bit values "
                 f"({copies * tile * bits / 8 / 1024:.3g} KiB): enlarge it or shrink the array")

    @property
    def pes(self) -> int:
        return self.rows * self.cols

    def to_dict(self) -> dict:
        d = asdict(self)
        d["dataflow"] = self.dataflow.value
        return d


# Expert presets (sizes in the range of published edge/server designs: Eyeriss-class 12x14 PEs with ~100 KiB,
# TPU-v1-class 256x256 with 24 MiB; ours are scaled to the small models of this project).
PRESETS: dict[str, AcceleratorConfig] = {
    "edge": AcceleratorConfig(rows=16, cols=16, ifmap_sram_kb=64, weight_sram_kb=64, ofmap_sram_kb=32,
                              dram_bytes_per_cycle=8, clock_mhz=500),
    "default": AcceleratorConfig(),
    "server": AcceleratorConfig(rows=128, cols=128, ifmap_sram_kb=2048, weight_sram_kb=2048, ofmap_sram_kb=1024,
                                dram_bytes_per_cycle=128, clock_mhz=1000),
}
