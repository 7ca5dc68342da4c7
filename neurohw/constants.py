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

Intel Loihi (the neuromorphic target): per-operation energy and time from Davies et al., IEEE Micro 2018, Table 2,
and a static power from Frady et al., NICE 2020 (section "Intel Loihi" at the end of this file). The Loihi chips'
capacity limits (cores, neurons, memory, axons) live with the placement that checks them, in
:mod:`neurohw.lava.mapping`, each with its source.
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


# --- Silicon area at 45 nm (the area model of design-space exploration, :mod:`neurohw.accel.space`) ----------
# Arithmetic units: Horowitz ISSCC 2014, the area column of the same 45 nm table ("Rough energy / area costs"):
#     8b add 36 um^2, 32b add 137 um^2, 8b mult 282 um^2, 32b mult 3495 um^2.
# 16-bit units are interpolated (not read from the table): an adder grows ~linearly with width,
#     A_add(16) = 36 + (137 - 36) * (16 - 8) / (32 - 8) = 69.7 um^2;
# a multiplier ~quadratically, so (as for its energy above) the geometric mean of the 8b and 32b multipliers,
#     A_mult(16) = sqrt(282 * 3495) = 993 um^2.
# Registers: one D flip-flop per bit, DFF_X1 of the NanGate FreePDK45 Open Cell Library (area 4.522 um^2).
# SRAM: area per bit including periphery = die area / capacity of Intel's 45 nm 153 Mbit SRAM test chip
#     (119 mm^2, 6T cell 0.346 um^2; Intel press release 25 Jan 2006 and U. Bhattacharya et al., "45nm SRAM
#     Technology Development and Technology Lead Vehicle", Intel Technology Journal 12(2), 2008):
#     119e6 um^2 / 153e6 bit (Mbit read as 10^6 bits) = 0.778 um^2/bit (2.25 x the bare cell), i.e.
#     6.37e-3 mm^2 per KiB, 6.5 mm^2 per MiB.
#     The chip also holds I/O and test circuits, so this over-estimates a compiled macro somewhat (conservative:
#     it never makes a large buffer look cheap). Not modelled: banking, ports, ECC.
# Area scales with the square of the feature size: A(node) = A_45 * (node / 45)^2 (ideal shrink; real SRAM and
# analog periphery shrink less below ~20 nm).
@dataclass(frozen=True)
class AreaConstant:
    value_um2: float
    per: str
    source: str = HOROWITZ_45NM_SOURCE + " (area column)"


# (numeric, bits, operation) -> area of one unit
ARITH_AREA_UM2: dict[tuple[str, int, str], AreaConstant] = {
    ("int", 8, "add"): AreaConstant(36.0, "8-bit integer adder"),
    ("int", 16, "add"): AreaConstant(36.0 + (137.0 - 36.0) * 8 / 24, "16-bit integer adder",
                                     "linear interpolation between Horowitz's 8b and 32b adders (approximation)"),
    ("int", 32, "add"): AreaConstant(137.0, "32-bit integer adder"),
    ("int", 8, "mult"): AreaConstant(282.0, "8-bit integer multiplier"),
    ("int", 16, "mult"): AreaConstant((282.0 * 3495.0) ** 0.5, "16-bit integer multiplier",
                                      "geometric mean of Horowitz's 8b and 32b multipliers (approximation)"),
    ("int", 32, "mult"): AreaConstant(3495.0, "32-bit integer multiplier"),
}
REGISTER_BIT_AREA_UM2 = AreaConstant(4.522, "one register bit (D flip-flop DFF_X1)",
                                     "NanGate FreePDK45 Open Cell Library, DFF_X1 cell area")
SRAM_BIT_AREA_UM2 = AreaConstant(119e6 / 153e6, "one SRAM bit incl. periphery (die area / bits)",
                                 "Intel 45 nm 153 Mbit SRAM test chip, 119 mm^2 (Intel 2006; Bhattacharya et al., "
                                 "Intel Technology Journal 12(2), 2008)")
TECH_REF_AREA_NODE_NM = 45.0

__all__ += ["AreaConstant", "ARITH_AREA_UM2", "REGISTER_BIT_AREA_UM2", "SRAM_BIT_AREA_UM2", "TECH_REF_AREA_NODE_NM"]


# --- Intel Loihi: per-operation energy and time (the Lava/Loihi target, :mod:`neurohw.lava.energy`) ------------
# M. Davies et al., "Loihi: A Neuromorphic Manycore Processor with On-Chip Learning", IEEE Micro 38(1):82-99,
# 2018, Table 2 "Loihi pre-silicon performance and energy measurements" (column "Value at 0.75 V"; Table 1 of the
# paper is the learning engine's variable list). The paper, p. 95: "Table 2 provides a selection of energy and
# performance measurements from pre-silicon SDF and SPICE simulations, consistent with early post-silicon
# characterization." So these are simulated figures at 0.75 V in Intel 14 nm, not meter readings; the synaptic-op
# energy is a minimum ("(min)") and its time a maximum ("(max)"). Rows used (verbatim labels):
#     Energy per synaptic spike op (min)               23.6 pJ     Time per synaptic spike op (max)          3.5 ns
#     Energy per synaptic update (pairwise STDP)       120 pJ      Time per synaptic update (pairwise STDP)   6.1 ns
#     Energy per neuron update (active / inactive)     81 / 52 pJ  Time per neuron update (active / inactive) 8.4 / 5.3 ns
#     Within-tile spike energy                         1.7 pJ      Within-tile spike latency                  2.1 ns
#     Energy per tile hop (E-W / N-S)                  3.0 / 4.0 pJ Latency per tile hop (E-W / N-S)          4.1 / 6.5 ns
#     Mesh-wide barrier sync time (1-32 tiles)         113-465 ns
# Loihi 2: Intel has published no per-operation energy or time table (the Loihi 2 technology brief and Orchard
# et al., "Efficient Neuromorphic Signal Processing with Loihi 2", SiPS 2021, give chip totals and relative
# speed-ups only), so the Loihi 1 figures are used for both chips. Intel 4 should be cheaper per operation, so for
# Loihi 2 this over-estimates energy (a conservative choice, stated in every report).
# Static power: E. P. Frady et al., "Neuromorphic Nearest-Neighbor Search Using Intel's Pohoiki Springs", NICE
# 2020, Table 1: "Static 3.34 W" for a board of 32 Loihi chips (leakage "when all circuits are fully powered"),
# i.e. 3.34 W / 32 = 104.4 mW per chip. Measured on silicon at an unstated supply voltage, so it is not at the
# 0.75 V of Table 2; reported apart from the per-operation (dynamic) energy, never folded into it.
DAVIES_2018_TABLE2 = ("Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', IEEE Micro "
                      "38(1), 2018, Table 2 (pre-silicon SDF/SPICE, 0.75 V, Intel 14 nm)")
FRADY_2020_TABLE1 = ("Frady et al., 'Neuromorphic Nearest-Neighbor Search Using Intel's Pohoiki Springs', NICE 2020, "
                     "Table 1: static 3.34 W for 32 Loihi chips (measured, supply voltage not stated)")


@dataclass(frozen=True)
class TimeConstant:
    value_ns: float
    per: str
    source: str


@dataclass(frozen=True)
class PowerConstant:
    value_mw: float
    per: str
    source: str


LOIHI_ENERGY_PJ: dict[str, EnergyConstant] = {
    "synop": EnergyConstant(23.6, "synaptic spike op (min)", DAVIES_2018_TABLE2),
    "synaptic_update": EnergyConstant(120.0, "synaptic update, pairwise STDP (learning; not used for inference)",
                                      DAVIES_2018_TABLE2),
    "neuron_update_active": EnergyConstant(81.0, "neuron update, active", DAVIES_2018_TABLE2),
    "neuron_update_inactive": EnergyConstant(52.0, "neuron update, inactive", DAVIES_2018_TABLE2),
    "spike_within_tile": EnergyConstant(1.7, "spike message within a tile", DAVIES_2018_TABLE2),
    "hop_east_west": EnergyConstant(3.0, "spike message, one tile hop east-west", DAVIES_2018_TABLE2),
    "hop_north_south": EnergyConstant(4.0, "spike message, one tile hop north-south", DAVIES_2018_TABLE2),
}
LOIHI_TIME_NS: dict[str, TimeConstant] = {
    "synop": TimeConstant(3.5, "synaptic spike op (max)", DAVIES_2018_TABLE2),
    "synaptic_update": TimeConstant(6.1, "synaptic update, pairwise STDP (not used for inference)", DAVIES_2018_TABLE2),
    "neuron_update_active": TimeConstant(8.4, "neuron update, active", DAVIES_2018_TABLE2),
    "neuron_update_inactive": TimeConstant(5.3, "neuron update, inactive", DAVIES_2018_TABLE2),
    "spike_within_tile": TimeConstant(2.1, "spike latency within a tile", DAVIES_2018_TABLE2),
    "hop_east_west": TimeConstant(4.1, "spike latency per tile hop east-west", DAVIES_2018_TABLE2),
    "hop_north_south": TimeConstant(6.5, "spike latency per tile hop north-south", DAVIES_2018_TABLE2),
    "barrier_1_tile": TimeConstant(113.0, "mesh-wide barrier sync, 1 tile", DAVIES_2018_TABLE2),
    "barrier_32_tiles": TimeConstant(465.0, "mesh-wide barrier sync, 32 tiles (a whole chip)", DAVIES_2018_TABLE2),
}
LOIHI_STATIC_MW_PER_CHIP = PowerConstant(3340.0 / 32, "static (leakage) power of one chip", FRADY_2020_TABLE1)

__all__ += ["DAVIES_2018_TABLE2", "FRADY_2020_TABLE1", "TimeConstant", "PowerConstant", "LOIHI_ENERGY_PJ",
            "LOIHI_TIME_NS", "LOIHI_STATIC_MW_PER_CHIP"]
