r"""Resource estimates of the generated RTL from yosys (Debian's package; no commercial tool), at the word level.

``yosys -p "read_verilog -sv ...; hierarchy -top accel_top; proc; flatten; opt; wreduce; memory; opt; stat -width"``
elaborates the configuration, removes what drives nothing (e.g. the operand registers past the last PE), narrows
every operator to the bits it needs (``wreduce``), and counts the word-level cells by type and width. From them:

    multipliers        count of ``$mul`` cells (per width: the PE products a_bits x b_bits, the requantization units)
    flip-flop bits     sum over ``$dff`` / ``$dffe`` / ``$sdff`` / ``$sdffe`` / ``$sdffce`` / ``$adff`` ... of width x count
    cells              every word-level cell

These are what the structure costs before technology mapping (gate counts depend on the cell library).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile

from neurohw.rtl.generate import RtlConfig, verilog_sources

__all__ = ["YosysMissing", "yosys_stat", "yosys_stat_vector"]


class YosysMissing(RuntimeError):
    """yosys is not on PATH."""


def yosys_stat(cfg: RtlConfig, *, timeout_s: float = 600.0) -> dict:
    """Word-level resource counts of ``cfg``'s array (module docstring)."""
    with tempfile.TemporaryDirectory(prefix="rtl-yosys-") as d:
        return _stat(verilog_sources(cfg, d), "accel_top", d, timeout_s)


def yosys_stat_vector(unit: str, cfg, *, timeout_s: float = 600.0) -> dict:
    """Word-level resource counts of a vector unit (:func:`neurohw.rtl.vector.vector_sources`)."""
    from neurohw.rtl.vector import vector_sources

    with tempfile.TemporaryDirectory(prefix="rtl-yosys-") as d:
        return _stat(vector_sources(unit, cfg, d), "vector_top", d, timeout_s)


def _stat(files, top: str, cwd: str, timeout_s: float) -> dict:
    exe = shutil.which("yosys")
    if exe is None:
        raise YosysMissing("yosys is not installed: `make setup` installs it (scripts/setup-tools.sh runs "
                           "`apt-get install -y yosys`), or install Debian's yosys yourself")
    script = (f"read_verilog -sv {' '.join(map(str, files))}; hierarchy -top {top}; proc; flatten; opt; wreduce; "
              "memory; opt; stat -width")
    res = subprocess.run([exe, "-p", script], capture_output=True, text=True, timeout=timeout_s, cwd=cwd)
    if res.returncode != 0:
        raise RuntimeError(f"yosys failed for {top} ({files[-1]}):\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}")
    text = res.stdout[res.stdout.rfind("Printing statistics"):]
    cells: dict[str, int] = {}
    for name, count in re.findall(r"^\s+(\$\w+?)\s+(\d+)\s*$", text, flags=re.M):
        cells[name] = cells.get(name, 0) + int(count)
    total = re.search(r"Number of cells:\s+(\d+)", text)
    muls = {k: v for k, v in cells.items() if re.fullmatch(r"\$mul_\d+", k)}
    divs = {k: v for k, v in cells.items() if re.fullmatch(r"\$(div|mod)_\d+", k)}
    ff_bits = sum(int(k.rsplit("_", 1)[1]) * v for k, v in cells.items()
                  if re.fullmatch(r"\$(s|a|al|ad|aldff|)?dff(e|ce|sr|sre)?_\d+", k))
    return {"cells": int(total.group(1)) if total else sum(cells.values()), "multipliers": sum(muls.values()),
            "multipliers_by_width": muls, "dividers": sum(divs.values()), "flipflop_bits": ff_bits, "by_type": cells}
