r"""Simulating the vector units (:mod:`neurohw.rtl.vector`) with Icarus Verilog under a cocotb (Python) test bench.

``run_vector(unit, cfg, x, constants)`` builds ``vector_top`` once per (unit, configuration) through
``cocotb_tools.runner`` (compiled into a cache folder keyed by a hash of the sources), runs the bench of
:mod:`neurohw.rtl.cocotb_vector` on the rows of ``x`` in groups of ``cfg.lanes`` (the last group zero padded), and
returns the outputs and the busy cycles. The result must equal :func:`neurohw.rtl.vector.softmax_int` /
``gelu_int`` / ``layernorm_int`` bit for bit and :func:`neurohw.rtl.vector.rtl_cycles` cycle for cycle.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurohw.rtl.sim import SimulatorMissing, _tool
from neurohw.rtl.vector import (GeluConstants, LayerNormConstants, SoftmaxConstants, VectorConfig, _check_rows,
                                vector_sources)

__all__ = ["VectorRun", "run_vector"]

_CACHE = Path(tempfile.gettempdir()) / "neuromfm-rtl-vector"
_KINDS = {"softmax": SoftmaxConstants, "gelu": GeluConstants, "layernorm": LayerNormConstants}


@dataclass(frozen=True)
class VectorRun:
    """The unit's output (rows, n) and its busy cycles per group of ``lanes`` rows."""

    out: np.ndarray
    group_cycles: tuple[int, ...]

    @property
    def cycles(self) -> int:
        return sum(self.group_cycles)


def _runner():
    try:
        from cocotb_tools.runner import get_runner
    except ImportError as e:
        raise SimulatorMissing("cocotb is not installed in this environment: `make setup` installs it (it is a "
                               "dependency in pyproject.toml), or `pip install cocotb==2.1.0`") from e
    _tool("iverilog")
    _tool("vvp")
    return get_runner("icarus")


def _build(unit: str, cfg: VectorConfig) -> Path:
    src = "".join((Path(__file__).parent / f).read_text() for f in ("common.v", "vector_units.v"))
    key = hashlib.sha256(f"{unit}{cfg}{src}".encode()).hexdigest()[:16]
    work = _CACHE / key
    if (work / "sim_build" / "sim.vvp").exists():
        return work
    runner = _runner()
    _CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=_CACHE))  # built aside, then renamed into place
    sources = vector_sources(unit, cfg, tmp / "src")
    try:
        runner.build(sources=sources, hdl_toplevel="vector_top", build_dir=tmp / "sim_build", always=True,
                     timescale=("1ns", "1ps"), log_file=tmp / "build.log")
    except RuntimeError as e:
        log = (tmp / "build.log").read_text()[-3000:] if (tmp / "build.log").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"iverilog failed to build the {unit} unit for {cfg}:\n{log}") from e
    try:
        tmp.rename(work)
    except OSError:  # another process built it first
        shutil.rmtree(tmp, ignore_errors=True)
    return work


def run_vector(unit: str, cfg: VectorConfig, x: np.ndarray, constants) -> VectorRun:
    """Simulate ``unit`` ('softmax', 'gelu', 'layernorm') on the rows of ``x`` with ``constants`` (of
    :func:`neurohw.rtl.vector.softmax_constants` and friends)."""
    kind = _KINDS.get(unit)
    if kind is None:
        raise ValueError(f"unit={unit!r}: the vector units are {sorted(_KINDS)}")
    if not isinstance(constants, kind):
        raise TypeError(f"the {unit} unit needs {kind.__name__} (from neurohw.rtl.vector), got {type(constants).__name__}")
    x = _check_rows(x, cfg)
    rows, n = x.shape
    if unit == "layernorm" and constants.gamma.size != n:
        raise ValueError(f"rows of {n} elements but LayerNorm constants for {constants.gamma.size} columns")
    padded = np.zeros((-(-rows // cfg.lanes) * cfg.lanes, n), dtype=np.int64)
    padded[:rows] = x
    job = {"n": n, "lanes": cfg.lanes, "in_bits": cfg.in_bits, "out_bits": cfg.out_bits,
           "signed_out": unit != "softmax", "ports": constants.ports(),
           "groups": padded.reshape(-1, cfg.lanes, n).tolist()}
    if unit == "layernorm":
        job["gamma"], job["beta"] = constants.gamma.tolist(), constants.beta.tolist()
    work = _build(unit, cfg)
    runner = _runner()
    with tempfile.TemporaryDirectory(prefix="rtl-vector-") as d:
        jf, of = Path(d) / "job.json", Path(d) / "out.json"
        jf.write_text(json.dumps(job))
        env = {"NEUROMFM_RTL_JOB": str(jf), "NEUROMFM_RTL_OUT": str(of), "COCOTB_RESOLVE_X": "ZEROS"}
        xml = runner.test(test_module="neurohw.rtl.cocotb_vector", hdl_toplevel="vector_top", hdl_toplevel_lang="verilog",
                          build_dir=work / "sim_build", test_dir=d, extra_env=env, results_xml=str(Path(d) / "results.xml"),
                          log_file=Path(d) / "sim.log")
        from cocotb_tools.runner import get_results

        _, failed = get_results(xml)
        if failed or not of.exists():
            log = (Path(d) / "sim.log").read_text()[-3000:] if (Path(d) / "sim.log").exists() else ""
            raise RuntimeError(f"the cocotb bench of {unit} {cfg} failed:\n{log}")
        res = json.loads(of.read_text())
    return VectorRun(out=np.array(res["out"], dtype=np.int64)[:rows], group_cycles=tuple(res["cycles"]))
