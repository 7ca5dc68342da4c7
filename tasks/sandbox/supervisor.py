"""One sandboxed run, parent side: the per-run folder, spawning the init, supervision and the verdict.

Each run copies the two in-sandbox programs (``_init_main.py`` and ``_runner_main.py``, which sit next to this
file and import only the standard library) with the candidate into a fresh folder the sandbox user can read,
starts the init there under the plan's ``unshare`` prefix, reads every pipe without deadlock until the
deadline or an output cap, and classifies what it saw into a :class:`SandboxResult`.
"""

from __future__ import annotations

import json
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from tasks.sandbox.config import (
    _SETUP_HINT,
    IsolationLayer,
    SandboxConfig,
    SandboxResult,
    SandboxSetupError,
    SandboxStatus,
)
from tasks.sandbox.layers import _SYSTEM_PATH, _make_plan, _masks

# The in-sandbox programs, as text: written into each run's folder, because the sandbox user may not be able
# to read this package's folder (e.g. under /root) inside the mount namespace.
_RUNNER_SOURCE = Path(__file__).with_name("_runner_main.py").read_text(encoding="utf-8")
_INIT_SOURCE = Path(__file__).with_name("_init_main.py").read_text(encoding="utf-8")
_CHANNEL_CAP = 1 << 20  # bytes accepted on each report channel
_DRAIN_S = 0.5  # how long to keep reading pipes after the sandbox has exited or been killed


def _remove_tree(path: str) -> None:
    """Remove ``path`` even if the candidate made parts of it unwritable."""

    def retry(func: Any, failed: str, _exc: Any) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            func(failed)
        except OSError:
            pass

    shutil.rmtree(path, onerror=retry)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _has_exited(pid: int) -> bool:
    """Whether ``pid`` has exited, without reaping it (so its pid and process group cannot be reused)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


@dataclass
class _Observation:
    """Everything the parent saw of one run (mutable scratch state of :func:`_supervise`)."""

    kept: dict[str, bytearray]
    totals: dict[str, int]
    killed_for: SandboxStatus | None = None


def _supervise(proc: subprocess.Popen, fds: dict[str, int], *, deadline: float, caps: dict[str, int]) -> _Observation:
    """Read every pipe until EOF without deadlock; kill the group at the deadline or when a cap is passed."""
    obs = _Observation(kept={name: bytearray() for name in fds}, totals=dict.fromkeys(fds, 0))
    drain_until: float | None = None
    with selectors.DefaultSelector() as selector:
        for name, fd in fds.items():
            selector.register(fd, selectors.EVENT_READ, name)
        while selector.get_map():
            now = time.monotonic()
            if obs.killed_for is None and now >= deadline:
                obs.killed_for = SandboxStatus.TIMEOUT
                _kill_group(proc.pid)
            if drain_until is None and (obs.killed_for is not None or _has_exited(proc.pid)):
                drain_until = now + _DRAIN_S
            if drain_until is not None and now >= drain_until:
                break  # a stray writer outside the process group still holds a pipe
            wake = drain_until if drain_until is not None else deadline
            for key, _ in selector.select(timeout=max(0.0, min(wake - now, 0.25))):
                name = key.data
                try:
                    data = os.read(key.fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    selector.unregister(key.fd)
                    continue
                obs.totals[name] += len(data)
                room = caps[name] - len(obs.kept[name])
                if room > 0:
                    obs.kept[name] += data[:room]
                if obs.totals[name] > caps[name] and obs.killed_for is None:
                    obs.killed_for = SandboxStatus.OUTPUT_LIMIT
                    _kill_group(proc.pid)
    return obs


def _messages(raw: bytes, nonce: str | None) -> tuple[list[dict[str, Any]], int]:
    """JSON lines of a channel; with ``nonce``, lines without it are counted as forged and dropped."""
    messages, forged = [], 0
    for line in raw.splitlines():
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        if not isinstance(message, dict) or (nonce is not None and message.pop("nonce", None) != nonce):
            forged += 1
            continue
        messages.append(message)
    return messages, forged


def _first(messages: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    return next((m for m in messages if m.get("kind") == kind), None)


def _tail(text: bytes, n: int = 400) -> str:
    return text.decode("utf-8", "replace").strip()[-n:]


def _classify(obs: _Observation, *, nonce: str, config: SandboxConfig,
              drop: tuple[int, int] | None) -> tuple[SandboxStatus, str, dict[str, Any] | None]:
    """(status, reason, the init's exit report) from an observation; pure apart from raising setup errors."""
    runner, forged = _messages(bytes(obs.kept["report"]), nonce)
    init, _ = _messages(bytes(obs.kept["status"]), None)
    if (setup := _first(init, "setup_error")) is not None:
        raise SandboxSetupError(f"the sandbox could not start the candidate: {setup.get('detail')}; {_SETUP_HINT}")
    started, done, exit_ = _first(runner, "started"), _first(runner, "done"), _first(init, "exit")
    if (violation := _first(runner, "violation")) is not None:
        return SandboxStatus.VIOLATION, f"blocked operation {violation.get('op')}({violation.get('detail')})", exit_
    if forged:
        return SandboxStatus.VIOLATION, f"wrote {forged} unauthenticated line(s) to the sandbox's report channel", exit_
    if obs.killed_for is SandboxStatus.TIMEOUT:
        when = "" if started else " before the candidate started (interpreter start-up is counted)"
        return SandboxStatus.TIMEOUT, f"exceeded the wall-time limit of {config.wall_time_s:g} s{when}", exit_
    if obs.killed_for is SandboxStatus.OUTPUT_LIMIT:
        return (SandboxStatus.OUTPUT_LIMIT,
                f"wrote more than max_output_bytes={config.max_output_bytes} bytes to stdout or stderr", exit_)
    if started is None:
        code = exit_.get("returncode") if exit_ else None
        raise SandboxSetupError(
            f"the sandboxed interpreter exited (returncode {code}) before running the candidate; its stderr "
            f"ends with: {_tail(bytes(obs.kept['stderr']))!r}. A MemoryError there means SandboxConfig.memory_mb "
            f"is too small")
    if drop is not None and started.get("uid") != drop[0]:
        raise SandboxSetupError(f"the candidate ran as uid {started.get('uid')} instead of {drop[0]}")
    if done is not None:
        status = {"passed": SandboxStatus.PASSED, "failed": SandboxStatus.FAILED,
                  "memory": SandboxStatus.MEMORY}.get(done.get("outcome"), SandboxStatus.ERROR)
        if status is SandboxStatus.PASSED:
            return status, "the code and the tests ran to completion", exit_
        where = f" ({done['where']})" if done.get("where") else ""
        return status, f"{done.get('error') or status.value}{where}", exit_
    code = exit_.get("returncode") if exit_ else None
    if code is None:
        return SandboxStatus.ERROR, "the sandbox ended without an exit status", exit_
    if code >= 0:
        return SandboxStatus.ERROR, f"the candidate exited with code {code} before the tests completed", exit_
    name = signal.Signals(-code).name if -code in signal.valid_signals() else f"signal {-code}"
    cpu, peak_kb = exit_.get("cpu_s", 0.0), exit_.get("maxrss_kb", 0)
    if -code == signal.SIGXCPU or (-code == signal.SIGKILL and cpu >= config.cpu_time_s - 0.5):
        return SandboxStatus.TIMEOUT, f"exceeded the CPU-time limit of {config.cpu_time_s:g} s ({name})", exit_
    if peak_kb >= 0.9 * config.memory_mb * 1024:
        return SandboxStatus.MEMORY, f"killed by {name} at the memory limit of {config.memory_mb} MiB", exit_
    return SandboxStatus.ERROR, f"the candidate was killed by {name}", exit_


def _check_source(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be Python source as a str, got {type(value).__name__}")


class Sandbox:
    """Runs candidates under one :class:`SandboxConfig`; the layers are probed once, at construction.

    Example::

        sandbox = Sandbox(config=SandboxConfig(wall_time_s=5.0))
        result = sandbox.run("def add(a, b):\\n    return a + b", "assert add(2, 3) == 5")
        result.passed, result.status, result.reason
    """

    def __init__(self, *, config: SandboxConfig = SandboxConfig()) -> None:
        if not isinstance(config, SandboxConfig):
            raise TypeError(f"config must be a SandboxConfig, got {type(config).__name__}")
        self._config = config
        self._plan = _make_plan(config)

    @property
    def config(self) -> SandboxConfig:
        return self._config

    @property
    def layers(self) -> tuple[IsolationLayer, ...]:
        """The isolation layers every run of this sandbox uses, in declaration order."""
        return tuple(layer for layer in IsolationLayer if layer in self._plan.layers)

    def run(self, code: str, tests: str = "") -> SandboxResult:
        """Execute ``code`` then ``tests`` (e.g. HumanEval's ``check(candidate)``) in one fresh namespace.

        Never raises for anything the candidate does: every misbehaviour is a failed result.

        Raises:
            TypeError: ``code`` or ``tests`` is not a str.
            SandboxSetupError: the sandbox itself could not start the interpreter.
        """
        _check_source("code", code)
        _check_source("tests", tests)
        start = time.monotonic()
        root = tempfile.mkdtemp(prefix="neuromfm-sandbox-")
        try:
            nonce = secrets.token_hex(16)
            obs = self._execute(root, code, tests, nonce=nonce, deadline=start + self._config.wall_time_s)
        finally:
            _remove_tree(root)
        status, reason, exit_ = _classify(obs, nonce=nonce, config=self._config, drop=self._plan.drop)
        cap = self._config.max_output_bytes
        return SandboxResult(
            passed=status is SandboxStatus.PASSED, status=status, reason=reason,
            returncode=exit_.get("returncode") if exit_ else None,
            stdout=bytes(obs.kept["stdout"]).decode("utf-8", "replace"),
            stderr=bytes(obs.kept["stderr"]).decode("utf-8", "replace"),
            stdout_truncated=obs.totals["stdout"] > cap, stderr_truncated=obs.totals["stderr"] > cap,
            wall_time_s=time.monotonic() - start,
            cpu_time_s=exit_.get("cpu_s") if exit_ else None,
            peak_memory_mb=exit_["maxrss_kb"] / 1024 if exit_ and "maxrss_kb" in exit_ else None,
            isolation=self.layers,
        )

    def run_many(self, codes: Sequence[str], tests: str = "") -> list[SandboxResult]:
        """:meth:`run` for each of ``codes`` (e.g. k samples for pass@k) against the same ``tests``, in order."""
        if isinstance(codes, str):
            raise TypeError("codes must be a sequence of str, got a single str; wrap it in a list")
        return [self.run(code, tests) for code in codes]

    def _prepare(self, root: str, code: str, tests: str) -> dict[str, str]:
        """Lay out ``root``: ``ctl/`` (programs, read-only for the candidate) and ``work/`` (its cwd)."""
        ctl, work = os.path.join(root, "ctl"), os.path.join(root, "work")
        os.chmod(root, 0o711)
        os.mkdir(ctl, 0o755)
        os.mkdir(work, 0o700)
        if self._plan.drop is not None:
            os.chown(work, *self._plan.drop)
        paths = {"ctl": ctl, "work": work}
        for name, text in (("runner", _RUNNER_SOURCE), ("init", _INIT_SOURCE), ("solution", code), ("tests", tests)):
            paths[name] = os.path.join(ctl, f"{name}.py")
            with open(paths[name], "w", encoding="utf-8", errors="replace") as f:
                f.write(text)
            os.chmod(paths[name], 0o644)
        return paths

    def _execute(self, root: str, code: str, tests: str, *, nonce: str, deadline: float) -> _Observation:
        cfg, plan = self._config, self._plan
        paths = self._prepare(root, code, tests)
        report_r, report_w = os.pipe()
        status_r, status_w = os.pipe()
        flags = ["-I", "-B", "-X", "utf8"] + ([] if cfg.site_packages else ["-S"])
        rlimits = [("RLIMIT_AS", cfg.memory_mb << 20, cfg.memory_mb << 20),
                   ("RLIMIT_CPU", int(-(-cfg.cpu_time_s // 1)), int(-(-cfg.cpu_time_s // 1)) + 1),
                   ("RLIMIT_FSIZE", cfg.max_file_bytes, cfg.max_file_bytes),
                   ("RLIMIT_NOFILE", cfg.max_open_files, cfg.max_open_files),
                   ("RLIMIT_CORE", 0, 0)]
        if plan.drop is not None:
            rlimits.append(("RLIMIT_NPROC", cfg.max_processes, cfg.max_processes))
        init_config = {
            "argv": [sys.executable, *flags, paths["runner"], str(report_w), paths["work"], paths["solution"],
                     paths["tests"]],
            "cwd": paths["work"], "nonce": nonce, "report_fd": report_w, "status_fd": status_w,
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": paths["work"], "TMPDIR": paths["work"],
                    "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"},
            "drop": plan.drop, "rlimits": rlimits, "masks": _masks(plan, root),
        }
        try:
            proc = subprocess.Popen([*plan.unshare, sys.executable, "-I", "-S", "-B", paths["init"]],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    pass_fds=(report_w, status_w), start_new_session=True, cwd=paths["work"],
                                    env={"PATH": _SYSTEM_PATH, "LC_ALL": "C.UTF-8"})
        except OSError as exc:
            os.close(report_r)
            os.close(status_r)
            raise SandboxSetupError(f"could not start the sandbox process: {exc}") from exc
        finally:
            os.close(report_w)
            os.close(status_w)
        try:
            try:
                proc.stdin.write(json.dumps(init_config).encode())
                proc.stdin.close()
            except BrokenPipeError:
                pass  # the init died at once; its stderr tells why
            caps = {"stdout": cfg.max_output_bytes, "stderr": cfg.max_output_bytes,
                    "report": _CHANNEL_CAP, "status": _CHANNEL_CAP}
            fds = {"stdout": proc.stdout.fileno(), "stderr": proc.stderr.fileno(),
                   "report": report_r, "status": status_r}
            return _supervise(proc, fds, deadline=deadline, caps=caps)
        finally:
            _kill_group(proc.pid)  # always, before reaping: forked leftovers die with the group
            proc.wait()
            proc.stdout.close()
            proc.stderr.close()
            os.close(report_r)
            os.close(status_r)


def run_candidate(code: str, tests: str = "", *, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Run ``code`` followed by ``tests`` in a fresh :class:`Sandbox` (probes the layers on every call)."""
    return Sandbox(config=config).run(code, tests)


def run_many(codes: Sequence[str], tests: str = "", *, config: SandboxConfig = SandboxConfig()) -> list[SandboxResult]:
    """Run each of ``codes`` against the same ``tests`` in one :class:`Sandbox`, sequentially."""
    return Sandbox(config=config).run_many(codes, tests)
