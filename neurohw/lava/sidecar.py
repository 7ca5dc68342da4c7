r"""Run a :class:`~neurohw.lava.network.LoihiNetwork` in Lava (lava-nc 0.10.0, ``Loihi2SimCfg(select_tag="fixed_pt")``)
from the main Python 3.11 process, through a Python 3.10 subprocess (lava-nc does not import on 3.11).

:func:`run_lava` writes a request folder, runs ``<lava python> neurohw/lava/_lava_runner.py REQUEST_DIR`` and reads
the answer back. Exchange format, version 1 (no pickle; the runner writes every file atomically):

* request: ``request.json`` ``{"format": "neuromfm-lava-request", "version": 1, "timesteps": T}``, ``net/``
  (:meth:`LoihiNetwork.save`), ``inputs.npz`` with ``x`` int32 ``(N, *input_shape)`` (the same graded input at
  every step) or ``(N, T, *input_shape)`` (one per step);
* result (exit code 0): ``outputs.npz`` with ``spikes_l{i}`` uint8 ``(N, T, n_out_i)`` (torch ``(C, H, W)`` order)
  and ``v_final`` int32 ``(N, n_out_last)``; ``result.json`` ``{"format": "neuromfm-lava-result", "version": 1,
  "lava_version", "samples", "timesteps", "run_seconds", "total_seconds", ...}``;
* failure (exit code 2): ``error.json`` ``{"error", "stage", "traceback"}``, ``stage`` one of ``import`` (no
  working Lava in that interpreter), ``request``, ``build``, ``run``, ``write``.

What Lava computes is written once, in :mod:`neurohw.lava.network` (``s_l(t)``: spikes of layer ``l`` at step ``t``;
``v``: membrane voltage; each synapse delays by one step, so layer ``l`` first sees its input at step ``l + 1``).

Every failure of the subprocess (no interpreter, Lava not importable, crash, timeout, missing or malformed
outputs) raises :class:`LavaSidecarError` with what went wrong and how to fix it; the main process never dies
from it. Wrong arguments raise ``ValueError`` before anything starts.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurohw.io import atomic_write_json
from neurohw.lava.network import LoihiNetwork

__all__ = ["LAVA_PYTHON_ENV", "REQUEST_FORMAT", "RESULT_FORMAT", "PROTOCOL_VERSION", "LavaSidecarError", "LavaResult",
           "lava_python", "run_lava"]

LAVA_PYTHON_ENV = "NEUROMFM_LAVA_PYTHON"
REQUEST_FORMAT, RESULT_FORMAT, PROTOCOL_VERSION = "neuromfm-lava-request", "neuromfm-lava-result", 1
ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).resolve().with_name("_lava_runner.py")
_TAIL = 2000  # characters of stderr / traceback quoted in an error
_SETUP_HINT = (f"run `make setup` to build .venv-lava (Python 3.10 + lava-nc 0.10.0), or set {LAVA_PYTHON_ENV} to a "
               "Python 3.10 interpreter that has lava-nc 0.10.0 and numpy<2")


class LavaSidecarError(RuntimeError):
    """The Lava subprocess could not give a result; the message says what went wrong and how to fix it."""


@dataclass
class LavaResult:
    """What Lava computed for ``N`` samples over ``T`` steps.

    Attributes:
        spikes: per layer, ``(N, T, n_out)`` uint8 0/1, flattened in torch ``(C, H, W)`` order.
        v_final: ``(N, n_out_last)`` int32, the last layer's ``v`` after step ``T - 1`` (a read-out's output).
        run_seconds: wall time of Lava's ``run`` calls only (no interpreter start, import, compile or process start).
        total_seconds: wall time of the whole :func:`run_lava` call, as seen from the calling process.
        lava_version: the lava-nc version that ran.
    """

    spikes: list[np.ndarray]
    v_final: np.ndarray
    run_seconds: float
    total_seconds: float
    lava_version: str

    @property
    def steps_per_second(self) -> float:
        """Simulated timesteps per second of ``run`` time: ``N * T / run_seconds``."""
        n, t = self.spikes[0].shape[:2]
        return n * t / self.run_seconds if self.run_seconds > 0 else math.inf


def lava_python() -> Path:
    """The interpreter that runs Lava: ``$NEUROMFM_LAVA_PYTHON`` if set, else ``<repo>/.venv-lava/bin/python``
    (it need not exist; :func:`run_lava` says what to do when it does not)."""
    env = os.environ.get(LAVA_PYTHON_ENV)
    return Path(env) if env else ROOT / ".venv-lava" / "bin" / "python"


# -------------------------------------------------------------------------------------------------- validation
def _checked_input(network: LoihiNetwork, x: np.ndarray, timesteps: int) -> np.ndarray:
    """``x`` as int32 ``(N, *input_shape)`` or ``(N, T, *input_shape)``; ``ValueError`` naming the problem otherwise."""
    if isinstance(timesteps, bool) or not isinstance(timesteps, (int, np.integer)) or timesteps < 1:
        raise ValueError(f"timesteps={timesteps!r}; need an integer >= 1")
    problems = network.violations()
    if problems:
        raise ValueError("the network has parameters outside Loihi's ranges (fix them in the exporter): "
                         + "; ".join(problems))
    x = np.asarray(x)
    shape = tuple(network.input_shape)
    if x.dtype.kind not in "iub":
        raise ValueError(f"x has dtype {x.dtype}; need integer graded spikes (network.quantize_input(x) makes them)")
    if x.shape[1:] not in (shape, (int(timesteps),) + shape) or x.shape[0] < 1:
        raise ValueError(f"x has shape {x.shape}; need (N, *{shape}) (same input every step) or "
                         f"(N, {timesteps}, *{shape}) (one per step), N >= 1")
    hi = 2 ** network.input_bits - 1
    if x.size and (x.min() < 0 or x.max() > hi):
        raise ValueError(f"x has values in [{x.min()}, {x.max()}]; the graded input is unsigned "
                         f"{network.input_bits}-bit, [0, {hi}] (network.quantize_input(x) clips)")
    return x.astype(np.int32)


# -------------------------------------------------------------------------------------------------- subprocess
def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return text if len(text) <= _TAIL else "..." + text[-_TAIL:]


def _child_env() -> dict[str, str]:
    """The caller's environment without what points Python 3.10 at the 3.11 environment's packages."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the runner and every process it started (Lava runs one process per Lava process, same group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _run_runner(python: Path, req: Path, timeout_s: float) -> int:
    """Run the runner on ``req`` in its own process group; its exit code. Output goes to ``req/stdout.txt`` and
    ``req/stderr.txt`` (files, not pipes: Lava's children cannot block us by holding a pipe)."""
    with open(req / "stdout.txt", "wb") as out, open(req / "stderr.txt", "wb") as err:
        try:
            proc = subprocess.Popen([str(python), str(RUNNER), str(req)], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, cwd=str(ROOT), env=_child_env(), start_new_session=True)
        except OSError as e:
            raise LavaSidecarError(f"cannot start the Lava interpreter {python}: {e}; {_SETUP_HINT}") from e
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise LavaSidecarError(
                f"the Lava run took longer than timeout_s={timeout_s:g} s and was stopped (the runner and all its "
                f"processes killed); give run_lava a larger timeout_s, or fewer samples / timesteps "
                f"(Lava's CPU simulation runs some hundred steps per second). stderr so far:\n"
                f"{_tail(req / 'stderr.txt')}"
            ) from None
        except BaseException:  # KeyboardInterrupt etc.: leave no Lava processes behind
            _kill_group(proc)
            raise


def _failure(python: Path, req: Path, rc: int) -> LavaSidecarError:
    """The error for a runner that exited with ``rc != 0``."""
    err_path = req / "error.json"
    stderr = _tail(req / "stderr.txt")
    if err_path.is_file():
        try:
            info = json.loads(err_path.read_text())
        except (OSError, ValueError) as e:
            info = {"error": f"unreadable error.json ({e})", "stage": "?", "traceback": ""}
        error, stage = info.get("error", "?"), info.get("stage", "?")
        if stage == "import":
            return LavaSidecarError(f"Lava does not import in {python}: {error}. {_SETUP_HINT}")
        trace = str(info.get("traceback", ""))
        trace = trace if len(trace) <= _TAIL else "..." + trace[-_TAIL:]
        return LavaSidecarError(f"the Lava run failed at stage {stage!r} (exit code {rc}): {error}\n{trace}")
    how = f"exit code {rc}"
    if rc < 0:
        how = f"killed by signal {-rc}" + (" - out of memory? try fewer samples per call" if -rc == signal.SIGKILL
                                           else "")
    if "No module named" in stderr or "ImportError" in stderr:
        return LavaSidecarError(f"the Lava interpreter {python} failed at import ({how}): {stderr}\n{_SETUP_HINT}")
    return LavaSidecarError(f"the Lava runner crashed ({how}) without reporting an error; stderr:\n"
                            f"{stderr or '(empty)'}")


def _read_result(req: Path, network: LoihiNetwork, n: int, timesteps: int) -> tuple[dict, list[np.ndarray], np.ndarray]:
    """``result.json`` and ``outputs.npz``, checked against the request; ``LavaSidecarError`` when missing or wrong."""
    hint = "the runner exited 0 but its outputs are {}; the runner and this module disagree (same checkout?)"
    try:
        meta = json.loads((req / "result.json").read_text())
        with np.load(req / "outputs.npz", allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if not isinstance(meta, dict):
            raise ValueError(f"result.json holds a {type(meta).__name__}, not an object")
    except (OSError, ValueError) as e:
        raise LavaSidecarError(hint.format(f"missing or unreadable ({type(e).__name__}: {e})")) from e
    problems = []
    if meta.get("format") != RESULT_FORMAT or meta.get("version") != PROTOCOL_VERSION:
        problems.append(f"result.json format {meta.get('format')!r} version {meta.get('version')!r}, expected "
                        f"{RESULT_FORMAT!r} version {PROTOCOL_VERSION}")
    if meta.get("samples") != n or meta.get("timesteps") != timesteps:
        problems.append(f"result.json has {meta.get('samples')} samples x {meta.get('timesteps')} steps, "
                        f"requested {n} x {timesteps}")
    for key in ("run_seconds", "total_seconds"):
        if not isinstance(meta.get(key), (int, float)):
            problems.append(f"result.json: {key}={meta.get(key)!r}")
    spikes = []
    for i, layer in enumerate(network.layers):
        s = arrays.get(f"spikes_l{i}")
        want = (n, timesteps, layer.n_out)
        if s is None or s.shape != want or (s.size and s.max() > 1):
            problems.append(f"spikes_l{i}: {None if s is None else s.shape}, expected 0/1 of shape {want}")
        else:
            spikes.append(s.astype(np.uint8))
    v = arrays.get("v_final")
    if v is None or v.shape != (n, network.layers[-1].n_out) or v.dtype.kind not in "iu":
        problems.append(f"v_final: {None if v is None else (v.shape, v.dtype)}, expected int32 "
                        f"{(n, network.layers[-1].n_out)}")
    if problems:
        raise LavaSidecarError(hint.format("malformed: " + "; ".join(problems)))
    return meta, spikes, v.astype(np.int32)


def run_lava(network: LoihiNetwork, x: np.ndarray, timesteps: int, *, timeout_s: float = 600.0) -> LavaResult:
    """Run ``network`` in Lava on the graded inputs ``x`` for ``timesteps`` steps per sample.

    Args:
        network: a valid network (``network.violations()`` empty).
        x: int ``(N, *input_shape)`` (the same input every step) or ``(N, timesteps, *input_shape)``, values in
            ``[0, 2^input_bits - 1]``; each sample starts from a fresh network (all state 0).
        timesteps: ``T >= 1``.
        timeout_s: wall-clock limit of the whole subprocess (interpreter start, Lava import and compile included:
            about 2 s before the first step). On expiry the runner and all its processes are killed.

    Returns:
        :class:`LavaResult` (spikes of every layer at every step, the last layer's final ``v``, timings).

    Raises:
        ValueError: bad ``x`` / ``timesteps`` or an out-of-range network (before anything starts).
        LavaSidecarError: no interpreter, Lava not importable, crash, timeout, missing or malformed outputs.
    """
    t0 = time.perf_counter()
    x = _checked_input(network, x, timesteps)
    timesteps = int(timesteps)
    python = lava_python()
    if not python.exists():
        source = f"${LAVA_PYTHON_ENV}" if os.environ.get(LAVA_PYTHON_ENV) else "the default"
        raise LavaSidecarError(f"no Lava interpreter at {python} ({source}); {_SETUP_HINT}")
    if not os.access(python, os.X_OK):
        raise LavaSidecarError(f"the Lava interpreter {python} is not executable; {_SETUP_HINT}")
    with tempfile.TemporaryDirectory(prefix="neuromfm-lava-") as tmp:
        req = Path(tmp)
        try:
            atomic_write_json(req / "request.json", {"format": REQUEST_FORMAT, "version": PROTOCOL_VERSION,
                                                     "timesteps": timesteps})
            network.save(req / "net")
            np.savez(req / "inputs.npz", x=x)
        except OSError as e:
            raise LavaSidecarError(f"cannot write the Lava request into {req}: {e}; free disk space or point TMPDIR "
                                   "at a writable folder") from e
        rc = _run_runner(python, req, float(timeout_s))
        if rc != 0:
            raise _failure(python, req, rc)
        meta, spikes, v_final = _read_result(req, network, x.shape[0], timesteps)
    return LavaResult(spikes=spikes, v_final=v_final, run_seconds=float(meta["run_seconds"]),
                      total_seconds=time.perf_counter() - t0, lava_version=str(meta.get("lava_version", "?")))
