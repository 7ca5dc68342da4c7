"""Every hardware / energy constant of neuromfm, in one place, each with its source.

Technology: 45 nm, 0.9 V (M. Horowitz, "Computing's energy problem (and what we can do about it)",
ISSCC 2014, Figure 1.1.9 / table of "Rough energy costs for various operations in 45nm 0.9V").
Values in picojoules (pJ).

Arithmetic (per operation):
    INT8 add 0.03, INT16 add 0.05, INT32 add 0.1, INT8 mult 0.2, INT32 mult 3.1,
    FP16 add 0.4, FP16 mult 1.1, FP32 add 0.9, FP32 mult 3.7.
    A multiply-accumulate (MAC) = mult + add: FP32 4.6, FP16 1.5, INT8 0.23 (the figures the SNN literature
    uses: AC 0.9 pJ / MAC 4.6 pJ at FP32). INT16 mult is not in the table; we take the geometric mean of the
    INT8 and INT32 multipliers, sqrt(0.2 * 3.1) = 0.79 pJ (a multiplier's area/energy grows ~quadratically
    with width; documented approximation).
Memory (per 64-bit access):
    SRAM 8 KB: 10, SRAM 32 KB: 20, SRAM 1 MB: 100, DRAM: 1300-2600 (we use the low end, 1300, so that
    DRAM-bound results are not exaggerated).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EnergyConstant", "HOROWITZ_45NM_SOURCE", "ARITH_PJ", "SRAM_LEVELS", "DRAM_PJ_PER_64B"]

HOROWITZ_45NM_SOURCE = "Horowitz, 'Computing's energy problem', ISSCC 2014, 45 nm 0.9 V"


@dataclass(frozen=True)
class EnergyConstant:
    value_pj: float
    per: str
    source: str = HOROWITZ_45NM_SOURCE


# (numeric, bits, operation) -> energy per operation
ARITH_PJ: dict[tuple[str, int, str], EnergyConstant] = {
    ("int", 8, "add"): EnergyConstant(0.03, "8-bit integer add"),
    ("int", 16, "add"): EnergyConstant(0.05, "16-bit integer add"),
    ("int", 32, "add"): EnergyConstant(0.1, "32-bit integer add"),
    ("int", 8, "mult"): EnergyConstant(0.2, "8-bit integer multiply"),
    ("int", 16, "mult"): EnergyConstant(0.79, "16-bit integer multiply", "geometric mean of Horowitz INT8 and INT32 mult (approximation)"),
    ("int", 32, "mult"): EnergyConstant(3.1, "32-bit integer multiply"),
    ("float", 16, "add"): EnergyConstant(0.4, "FP16 add"),
    ("float", 16, "mult"): EnergyConstant(1.1, "FP16 multiply"),
    ("float", 32, "add"): EnergyConstant(0.9, "FP32 add"),
    ("float", 32, "mult"): EnergyConstant(3.7, "FP32 multiply"),
}

# On-chip SRAM levels: (capacity in bytes, energy per 64-bit access), smallest first.
SRAM_LEVELS: tuple[tuple[int, EnergyConstant], ...] = (
    (8 * 1024, EnergyConstant(10.0, "64-bit read, 8 KB SRAM")),
    (32 * 1024, EnergyConstant(20.0, "64-bit read, 32 KB SRAM")),
    (1024 * 1024, EnergyConstant(100.0, "64-bit read, 1 MB SRAM")),
)
DRAM_PJ_PER_64B = EnergyConstant(1300.0, "64-bit DRAM access (low end of 1.3-2.6 nJ)")

# Technology scaling of on-chip (logic and SRAM) energies from the 45 nm / 0.9 V reference: dynamic energy
# C V^2 with switched capacitance proportional to the feature size, E(node, V) = E_45 * (node / 45) * (V / 0.9)^2.
# A first-order approximation (constant-field scaling); measured factors below ~20 nm are larger than this
# predicts (A. Stillmaker, B. Baas, "Scaling equations for the accurate prediction of CMOS device performance
# from 180 nm to 7 nm", Integration 58, 2017). DRAM access energy is dominated by the DRAM device and its
# interface and is NOT scaled.
TECH_REF_NODE_NM = 45.0
TECH_REF_VDD = 0.9
