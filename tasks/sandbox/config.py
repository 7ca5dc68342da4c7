"""Sandbox vocabulary: outcome and layer enums, the validated :class:`SandboxConfig` and the :class:`SandboxResult`.

The layers themselves are described in the :mod:`tasks.sandbox` docstring.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class SandboxStatus(enum.Enum):
    """Outcome of one sandboxed run; everything but ``PASSED`` is a failure of the candidate."""

    PASSED = "passed"  # the code and the tests ran to completion
    FAILED = "failed"  # an AssertionError (a test failed)
    ERROR = "error"  # any other exception, syntax error or premature exit
    TIMEOUT = "timeout"  # wall-time or CPU-time limit
    MEMORY = "memory"  # MemoryError or killed at the address-space limit
    OUTPUT_LIMIT = "output_limit"  # more than max_output_bytes on stdout or stderr
    VIOLATION = "violation"  # a blocked operation (process, network, write outside, ...)


class IsolationLayer(enum.Enum):
    """One containment layer (see the :mod:`tasks.sandbox` docstring)."""

    PROCESS_GROUP = "process_group"
    RESOURCE_LIMITS = "resource_limits"
    AUDIT_HOOK = "audit_hook"
    NETWORK_NAMESPACE = "network_namespace"
    PID_NAMESPACE = "pid_namespace"
    MOUNT_NAMESPACE = "mount_namespace"
    UNPRIVILEGED_USER = "unprivileged_user"


_ALWAYS_ON = frozenset({IsolationLayer.PROCESS_GROUP, IsolationLayer.RESOURCE_LIMITS, IsolationLayer.AUDIT_HOOK})
_OPTIONAL = frozenset(IsolationLayer) - _ALWAYS_ON


class SandboxSetupError(RuntimeError):
    """The sandbox itself could not be set up on this machine (never raised for candidate behaviour)."""


_SETUP_HINT = ("if this machine cannot provide a layer, list it in SandboxConfig.disabled_layers "
               "(and not in required_layers)")


def _check_number(name: str, value: Any, *, minimum: float, integer: bool, hint: str) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not value >= minimum or value != value:
        kind = "an int" if integer else "a number"
        raise ValueError(f"SandboxConfig.{name} must be {kind} >= {minimum}, got {value!r}; {hint}")


def _check_layers(name: str, value: Any) -> frozenset[IsolationLayer]:
    try:
        layers = frozenset(value)
    except TypeError:
        layers = None
    if layers is None or not all(isinstance(layer, IsolationLayer) for layer in layers):
        raise ValueError(f"SandboxConfig.{name} must be a set of IsolationLayer members, got {value!r}")
    return layers


@dataclass(frozen=True)
class SandboxConfig:
    """Limits and layers of one sandbox; derive variants with :func:`dataclasses.replace`.

    Attributes:
        wall_time_s: wall-clock limit of one run in seconds, interpreter start-up (~0.1 s) included.
        cpu_time_s: CPU-time limit in seconds (``RLIMIT_CPU``, rounded up to whole seconds).
        memory_mb: address-space limit in MiB (``RLIMIT_AS``); the interpreter alone needs ~30 MiB.
        max_output_bytes: bytes kept from stdout and from stderr each; more ends the run as ``OUTPUT_LIMIT``.
        max_file_bytes: largest file the candidate may write, in bytes (``RLIMIT_FSIZE``).
        max_open_files: file-descriptor limit (``RLIMIT_NOFILE``).
        max_processes: process/thread limit of the sandbox user (``RLIMIT_NPROC``, only with
            ``UNPRIVILEGED_USER``: the kernel counts every process of that uid, so concurrent sandboxes share it).
        sandbox_uid, sandbox_gid: unprivileged identity used when the caller is root (default: nobody/nogroup).
        site_packages: let the candidate import installed third-party packages (default: standard library only).
        disabled_layers: optional layers not to use (e.g. to debug); the always-on layers cannot be disabled.
        required_layers: layers that must be available, else :class:`Sandbox` raises ``SandboxSetupError``.
    """

    wall_time_s: float = 10.0
    cpu_time_s: float = 10.0
    memory_mb: int = 512
    max_output_bytes: int = 64 * 1024
    max_file_bytes: int = 16 * 1024 * 1024
    max_open_files: int = 64
    max_processes: int = 32
    sandbox_uid: int = 65534
    sandbox_gid: int = 65534
    site_packages: bool = False
    disabled_layers: frozenset[IsolationLayer] = field(default_factory=frozenset)
    required_layers: frozenset[IsolationLayer] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        _check_number("wall_time_s", self.wall_time_s, minimum=0.001, integer=False,
                      hint="pass a positive wall-clock limit in seconds, e.g. wall_time_s=10.0")
        _check_number("cpu_time_s", self.cpu_time_s, minimum=0.001, integer=False,
                      hint="pass a positive CPU-time limit in seconds, e.g. cpu_time_s=10.0")
        _check_number("memory_mb", self.memory_mb, minimum=64, integer=True,
                      hint="the interpreter alone needs ~30 MiB of address space; use memory_mb=256 or more")
        _check_number("max_output_bytes", self.max_output_bytes, minimum=1, integer=True,
                      hint="pass how many bytes of stdout/stderr to keep, e.g. max_output_bytes=65536")
        _check_number("max_file_bytes", self.max_file_bytes, minimum=1, integer=True,
                      hint="pass the largest file the candidate may write in bytes, e.g. 16 * 2**20")
        _check_number("max_open_files", self.max_open_files, minimum=16, integer=True,
                      hint="the interpreter needs a handful of descriptors; use max_open_files=64")
        _check_number("max_processes", self.max_processes, minimum=1, integer=True,
                      hint="threads count too; use max_processes=32")
        for name in ("sandbox_uid", "sandbox_gid"):
            _check_number(name, getattr(self, name), minimum=1, integer=True,
                          hint="use an unprivileged id such as 65534 (nobody); 0 would not drop privileges")
        if not isinstance(self.site_packages, bool):
            raise ValueError(f"SandboxConfig.site_packages must be a bool, got {self.site_packages!r}")
        disabled = _check_layers("disabled_layers", self.disabled_layers)
        required = _check_layers("required_layers", self.required_layers)
        if disabled & _ALWAYS_ON:
            names = sorted(layer.name for layer in disabled & _ALWAYS_ON)
            raise ValueError(f"SandboxConfig.disabled_layers contains always-on layers {names}; remove them "
                             f"(only {sorted(layer.name for layer in _OPTIONAL)} can be disabled)")
        if disabled & required:
            names = sorted(layer.name for layer in disabled & required)
            raise ValueError(f"SandboxConfig.required_layers and disabled_layers both contain {names}; "
                             f"remove them from one of the two")
        object.__setattr__(self, "disabled_layers", disabled)
        object.__setattr__(self, "required_layers", required)


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did.

    Attributes:
        passed: True exactly when ``status`` is ``PASSED``.
        status: the outcome class.
        reason: one human-readable line (the exception and where, the blocked operation, the limit hit).
        returncode: the candidate interpreter's exit status (negative: killed by that signal); None when
            the sandbox killed it before it exited.
        stdout, stderr: the first ``max_output_bytes`` of each stream, decoded as UTF-8 (invalid bytes replaced).
        stdout_truncated, stderr_truncated: whether more output was produced than kept.
        wall_time_s: wall-clock seconds of the run, start-up included.
        cpu_time_s: CPU seconds used by the candidate interpreter, when it exited on its own.
        peak_memory_mb: its peak resident memory in MiB, when it exited on its own.
        isolation: the layers that were active.
    """

    passed: bool
    status: SandboxStatus
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    stdout_truncated: bool
    stderr_truncated: bool
    wall_time_s: float
    cpu_time_s: float | None
    peak_memory_mb: float | None
    isolation: tuple[IsolationLayer, ...]
