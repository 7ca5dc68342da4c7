r"""What can be built and what it costs in silicon: the searchable design space, budgets, and the area model.

Area of one design ``cfg`` (symbols: R x C array, b_m = ``mac_bits``, b_a = ``acc_bits``, S = total SRAM KiB):

    area_45 = R C (A_mult(b_m) + A_add(b_a) + (2 b_m + b_a) A_ff) + 8192 S A_bit        [um^2 at 45 nm]
    area    = area_45 * (node_nm / 45)^2 / 1e6                                           [mm^2 at the node]

A_mult, A_add: Horowitz ISSCC 2014 area table (45 nm; 16-bit units interpolated); A_ff: one D flip-flop
(NanGate FreePDK45 DFF_X1) per register bit, per PE two forwarded operand registers of b_m bits and one b_a-bit
accumulator; A_bit: one SRAM bit including its periphery (Intel's 45 nm 153 Mbit test chip: die area / bits).
Values and sources in :mod:`neurohw.constants`. Not modelled: control, on-chip network, DRAM PHY and I/O (no
fixed overhead is added).
"""

from __future__ import annotations

import json
import math
import numbers
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from neurohw.accel.config import AcceleratorConfig
from neurohw.constants import ARITH_AREA_UM2, REGISTER_BIT_AREA_UM2, SRAM_BIT_AREA_UM2, TECH_REF_AREA_NODE_NM

__all__ = ["area_mm2", "Budget", "DesignSpace", "DEFAULT_CHOICES", "DEFAULT_FIXED"]


def area_mm2(cfg: AcceleratorConfig) -> dict[str, float]:
    """Silicon area (mm^2) of ``cfg``: ``pe_array``, ``ifmap_sram``, ``weight_sram``, ``ofmap_sram``, ``total``."""
    scale = (cfg.node_nm / TECH_REF_AREA_NODE_NM) ** 2 / 1e6  # um^2 at 45 nm -> mm^2 at the node
    pe_um2 = (ARITH_AREA_UM2[("int", cfg.mac_bits, "mult")].value_um2
              + ARITH_AREA_UM2[("int", cfg.acc_bits, "add")].value_um2
              + (2 * cfg.mac_bits + cfg.acc_bits) * REGISTER_BIT_AREA_UM2.value_um2)
    out = {"pe_array": cfg.pes * pe_um2 * scale}
    for name in ("ifmap", "weight", "ofmap"):
        out[f"{name}_sram"] = getattr(cfg, f"{name}_sram_kb") * 8192 * SRAM_BIT_AREA_UM2.value_um2 * scale
    out["total"] = sum(out.values())
    return out


def _positive(owner: str, name: str, v: object) -> None:
    if not (isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
        raise ValueError(f"{owner}.{name}={v!r} is invalid: use a finite number > 0")


@dataclass(frozen=True, kw_only=True)
class Budget:
    """Limits a design must meet: silicon area (mm^2) and average power while running the workload (W)."""

    area_mm2: float
    power_w: float

    def __post_init__(self) -> None:
        _positive("Budget", "area_mm2", self.area_mm2)
        _positive("Budget", "power_w", self.power_w)


_POW2_KIB = tuple(2 ** i for i in range(4, 13))  # 16 .. 4096 KiB
DEFAULT_CHOICES: Mapping[str, tuple] = MappingProxyType({
    "rows": (8, 16, 32, 64, 128), "cols": (8, 16, 32, 64, 128), "dataflow": ("os", "ws", "is"),
    "ifmap_sram_kb": _POW2_KIB, "weight_sram_kb": _POW2_KIB, "ofmap_sram_kb": _POW2_KIB,
    "dram_bytes_per_cycle": (8, 16, 32, 64, 128), "overlap_folds": (False, True)})
DEFAULT_FIXED: Mapping[str, Any] = MappingProxyType(
    {"mac_bits": 8, "acc_bits": 32, "clock_mhz": 1000.0, "double_buffer": True, "node_nm": 45.0, "vdd": 0.9})


def _coerce(name: str, v: object, choices: tuple) -> Any:
    """The choice equal to ``v`` (numbers and booleans may come as strings, strings in any case)."""
    for c in choices:
        if isinstance(c, bool):
            if (isinstance(v, bool) and v == c) or (isinstance(v, str) and v.strip().lower() == str(c).lower()):
                return c
        elif isinstance(c, (int, float)):
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == c:
                return c
            if isinstance(v, str):
                try:
                    if float(v.strip()) == c:
                        return c
                except ValueError:
                    pass
        elif isinstance(v, str) and v.strip().lower() == str(c).lower():
            return c
    raise ValueError(f"{name}={v!r} is outside the design space: use one of {list(choices)}")


@dataclass(frozen=True, kw_only=True)
class DesignSpace:
    """The searchable :class:`AcceleratorConfig` fields with their allowed values; the others are fixed."""

    choices: Mapping[str, tuple] = field(default_factory=lambda: DEFAULT_CHOICES)
    fixed: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_FIXED)

    def __post_init__(self) -> None:
        names = set(AcceleratorConfig.__dataclass_fields__)
        for attr in ("choices", "fixed"):
            bad = sorted(set(getattr(self, attr)) - names)
            if bad:
                raise ValueError(f"DesignSpace.{attr} names {bad}, which are not AcceleratorConfig fields: "
                                 f"use {sorted(names)}")
        both = sorted(set(self.choices) & set(self.fixed))
        if both:
            raise ValueError(f"DesignSpace: {both} are both searchable and fixed; keep each in one of choices / fixed")
        for k, v in self.choices.items():
            if not (isinstance(v, tuple) and v and len(set(v)) == len(v)):
                raise ValueError(f"DesignSpace.choices[{k!r}]={v!r} is invalid: "
                                 "use a non-empty tuple of distinct values")
        object.__setattr__(self, "choices", MappingProxyType(dict(self.choices)))
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.choices)

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.choices.values())

    def normalize(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """``values`` as the space's own choice objects; every searchable field is required, fixed ones may
        be repeated at their fixed value. Raises ValueError naming the field and the allowed values."""
        if not isinstance(values, Mapping):
            raise ValueError(f"a design must be a JSON object / mapping of field -> value, got {type(values).__name__}")
        unknown = sorted(str(k) for k in values if k not in self.choices and k not in self.fixed)
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}: the design fields are {list(self.choices)}")
        for k in sorted(set(values) & set(self.fixed)):
            try:
                _coerce(k, values[k], (self.fixed[k],))
            except ValueError:
                raise ValueError(f"{k}={values[k]!r}: {k} is fixed at {self.fixed[k]!r} in this design space; "
                                 "leave it out") from None
        missing = [k for k in self.choices if k not in values]
        if missing:
            raise ValueError(f"missing field(s) {missing}: give every one of {list(self.choices)}")
        return {k: _coerce(k, values[k], self.choices[k]) for k in self.choices}

    def to_config(self, values: Mapping[str, Any]) -> AcceleratorConfig:
        """The :class:`AcceleratorConfig` of ``values`` (checked by :meth:`normalize`, then by the config itself)."""
        return AcceleratorConfig(**self.fixed, **self.normalize(values))

    def values_of(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The searchable fields of a ``Trial.config`` / ``AcceleratorConfig.to_dict()``."""
        return self.normalize({k: config[k] for k in self.choices})

    def key(self, values: Mapping[str, Any]) -> tuple:
        v = self.normalize(values)
        return tuple(v[k] for k in self.choices)

    def default(self) -> dict[str, Any]:
        """AcceleratorConfig's default where it is a choice, else the middle choice."""
        base = AcceleratorConfig().to_dict()
        return {k: next((x for x in c if x == base[k]), c[len(c) // 2]) for k, c in self.choices.items()}

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {k: rng.choice(c) for k, c in self.choices.items()}

    def neighbours(self, values: Mapping[str, Any]) -> list[dict[str, Any]]:
        """Designs that move one field one step in its list of choices."""
        v = self.normalize(values)
        out = []
        for k, c in self.choices.items():
            i = c.index(v[k])
            out += [{**v, k: c[j]} for j in (i - 1, i + 1) if 0 <= j < len(c)]
        return out

    def describe(self) -> str:
        """The allowed values, one field a line (for prompts and reports)."""
        def fmt(x: Any) -> str:
            return json.dumps(x)
        lines = [f"- {k}: {', '.join(fmt(x) for x in c)}" for k, c in self.choices.items()]
        lines.append("fixed (do not change): " + ", ".join(f"{k}={fmt(v)}" for k, v in self.fixed.items()))
        return "\n".join(lines)
