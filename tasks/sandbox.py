"""Run untrusted candidate Python code (e.g. model-generated solutions) against tests, contained.

Threat model
------------
The candidate is *model-generated* code: usually harmless, sometimes buggy in expensive ways (infinite
loops, huge allocations, output floods) and occasionally doing things it must not do (spawning processes,
touching the network, writing outside its scratch folder, fork bombs). The sandbox turns every one of these
into a failed :class:`SandboxResult` and keeps the caller alive. It is NOT a boundary against deliberate,
adversarial malware: see "Not protected" below.

Layers (defence in depth; ``SandboxResult.isolation`` lists the ones that were active)
-----------------------------------------------------------------------------------------
- ``PROCESS_GROUP``: a fresh interpreter in its own session; the whole process group is SIGKILLed on
  wall-time expiry and always at the end. Output is read without deadlock and capped.
- ``RESOURCE_LIMITS``: ``RLIMIT_AS`` (memory), ``RLIMIT_CPU``, ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``,
  ``RLIMIT_CORE=0`` and, with ``UNPRIVILEGED_USER``, ``RLIMIT_NPROC`` (the kernel ignores it for root).
- ``AUDIT_HOOK``: a :func:`sys.addaudithook` hook, installed before the candidate runs (and impossible to
  remove afterwards), that terminates the candidate on process creation, sockets (other than ``AF_UNIX``
  pairs), writes/renames/deletes outside the scratch folder, signalling other processes and ``ctypes``
  calls; ``ctypes`` itself cannot be imported. The first blocked operation is reported as ``VIOLATION``.
- ``NETWORK_NAMESPACE``: a fresh network namespace (only a down loopback). The namespaces are made with
  util-linux ``unshare``; a caller that is not root gets them inside a user namespace (``--map-root-user``).
- ``PID_NAMESPACE``: the sandbox init is PID 1 of a fresh PID namespace; when it exits or is killed, the
  kernel kills every process left in the namespace, whatever session or process group they moved to.
- ``MOUNT_NAMESPACE``: a private mount namespace with a private ``/proc``; ``/tmp``, ``/var/tmp`` and
  ``/dev/shm`` are covered by empty read-only-for-others tmpfs (only the sandbox folder is bound back), and
  folders the unprivileged user cannot traverse (e.g. ``/root`` holding the interpreter) are replaced by a
  tmpfs that exposes only the interpreter.
- ``UNPRIVILEGED_USER`` (parent is root): the candidate runs as ``sandbox_uid``/``sandbox_gid`` with no
  supplementary groups and ``no_new_privs``, so the kernel itself refuses writes outside the scratch folder
  and enforces ``RLIMIT_NPROC``.

Layers that cannot be set up are skipped with a ``RuntimeWarning`` (or a :class:`SandboxSetupError` when
listed in ``SandboxConfig.required_layers``).

Not protected
-------------
- Kernel exploits, side channels, and anything a same-uid process may do that the layers above do not name.
- The audit hook is in-process Python: code that reaches native code (e.g. an installed ``cffi`` package with
  ``site_packages=True``) or uses calls that raise no audit event (``os.open(..., dir_fd=...)``) can bypass
  it; the kernel layers are the containment in that case, and without ``UNPRIVILEGED_USER`` they are weaker.
- Reading: files readable by the sandbox user can be read. Disk use is capped per file only.
- Result forgery: the runner reports over a channel authenticated by a per-run nonce, so ``sys.exit(0)``,
  ``os._exit(0)`` or printing a fake report do not count as a pass; code that digs the nonce out of the
  runner's memory (frame or ``gc`` introspection) could still forge one. Do not use this as an adversarial
  grader.
- Without ``PID_NAMESPACE``: the runner gets a parent-death SIGKILL, so it dies with the init even after
  ``os.setsid``; but a grandchild made by a fork that bypassed the hook and left the process group is
  stopped only by its own CPU limit.
"""

from __future__ import annotations

import enum
import json
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Sequence

__all__ = [
    "IsolationLayer",
    "SandboxConfig",
    "SandboxResult",
    "SandboxSetupError",
    "SandboxStatus",
    "Sandbox",
    "run_candidate",
    "run_many",
]


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
    """One containment layer (see the module docstring)."""

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


# --------------------------------------------------------------------------------------------------------
# Child side. Both programs run as ``python -I -S -B <file>`` and must not import neuromfm.
# The runner executes the candidate (as the sandbox user); the init sets the sandbox up (as the caller,
# PID 1 of the namespaces when available) and reports the runner's exit status on a channel the runner
# never sees.
# --------------------------------------------------------------------------------------------------------

_RUNNER_SOURCE = r'''
import builtins, json, os, pathlib, sys, traceback

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
BLOCKED = frozenset({
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.startfile",
    "subprocess.Popen", "_posixsubprocess.fork_exec", "os.killpg", "webbrowser.open", "urllib.Request",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo",
    "socket.gethostbyname", "socket.gethostbyaddr", "socket.getnameinfo", "socket.sethostname",
})
UNAVAILABLE_MODULES = frozenset({"ctypes", "_ctypes", "_posixsubprocess"})
# event -> ((index of a path the operation writes, index of its dir_fd argument or None), ...)
WRITE_EVENTS = {
    "os.remove": ((0, 1),), "os.rmdir": ((0, 1),), "os.mkdir": ((0, 2),), "os.rename": ((0, 2), (1, 3)),
    "os.link": ((1, 3),), "os.symlink": ((1, 2),), "os.chmod": ((0, 2),), "os.chown": ((0, 3),),
    "os.utime": ((0, 3),), "os.truncate": ((0, None),), "os.chflags": ((0, None),),
    "os.lchflags": ((0, None),), "os.setxattr": ((0, None),), "os.removexattr": ((0, None),),
    "shutil.rmtree": ((0, 1),), "shutil.move": ((0, None), (1, None)), "shutil.copyfile": ((1, None),),
    "shutil.copymode": ((1, None),), "shutil.copystat": ((1, None),), "shutil.copytree": ((1, None),),
    "shutil.chown": ((0, None),), "shutil.unpack_archive": ((1, None),), "shutil.make_archive": ((0, None),),
}
DEVICES = frozenset({"/dev/null", "/dev/stdout", "/dev/stderr"})
PLAIN = (str, bytes, int, float, type(None))
PATH_TYPES = (str, bytes, pathlib.PosixPath, pathlib.PurePosixPath)


def main():
    report_fd, work = int(sys.argv[1]), os.path.realpath(sys.argv[2])
    code_path, tests_path = sys.argv[3], sys.argv[4]
    nonce = sys.stdin.buffer.readline().decode("ascii").strip()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    privileged, my_pid = os.geteuid() == 0, os.getpid()

    def send(kind, **fields):
        fields.update(kind=kind, nonce=nonce)
        os.write(report_fd, (json.dumps(fields) + "\n").encode())

    def describe(args):
        parts = []
        for arg in args[:4]:
            plain = type(arg) in PLAIN or (type(arg) is tuple and all(type(a) in PLAIN for a in arg))
            parts.append(repr(arg)[:160] if plain else "<%s>" % type(arg).__name__)
        return ", ".join(parts)

    def violation(event, args, note=""):
        try:
            send("violation", op=event, detail=describe(args) + note)
        except BaseException:
            pass
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass
        os._exit(3)

    def check_write(event, args, path, dir_fd):
        if type(path) is int:  # an already-open descriptor
            return
        if type(path) not in PATH_TYPES:  # a custom os.PathLike could answer differently the next time
            violation(event, args)
        path = os.fsdecode(path)
        if path in DEVICES:
            return
        if not os.path.isabs(path):
            base = os.getcwd() if dir_fd is None or dir_fd == -1 else os.readlink("/proc/self/fd/%d" % dir_fd)
            path = os.path.join(base, path)
        real = os.path.realpath(path)
        if real != work and not real.startswith(work + os.sep):
            violation(event, args, "" if real == path else " -> %r" % real)

    def hook(event, args):
        if event in BLOCKED or event.startswith("ctypes."):
            violation(event, args)
        elif event == "import":
            if args[0].partition(".")[0] in UNAVAILABLE_MODULES:
                raise ImportError("module %r is not available in the sandbox" % args[0])
        elif event == "open":
            path, mode, flags = args
            if (type(flags) is int and flags & WRITE_FLAGS) or (type(mode) is str and set(mode) & set("wax+")):
                check_write(event, args, path, None)
        elif event in WRITE_EVENTS:
            for path_index, fd_index in WRITE_EVENTS[event]:
                if path_index < len(args):
                    dir_fd = args[fd_index] if fd_index is not None and fd_index < len(args) else None
                    check_write(event, args, args[path_index], dir_fd)
        elif event == "socket.__new__":
            if args[1] != 1:  # only AF_UNIX (socketpair, used by asyncio) is allowed
                violation(event, args[1:])
        elif event == "os.kill":
            if args[0] != my_pid:
                violation(event, args)
        elif event in ("resource.setrlimit", "resource.prlimit") and privileged:
            violation(event, args)

    import _posixsubprocess  # no audit event in 3.11: replace it by a function that raises one

    def fork_exec(*args, **kwargs):
        sys.audit("_posixsubprocess.fork_exec")
        raise PermissionError("process creation is blocked by the sandbox")

    _posixsubprocess.fork_exec = fork_exec
    sys.addaudithook(hook)
    send("started", uid=os.getuid())

    def where(tb, exc):
        place = ""
        if isinstance(exc, SyntaxError) and exc.filename in (code_path, tests_path):
            place = "%s line %s" % ("solution" if exc.filename == code_path else "tests", exc.lineno)
        for frame, lineno in traceback.walk_tb(tb):
            name = frame.f_code.co_filename
            if name in (code_path, tests_path):
                place = "%s line %d" % ("solution" if name == code_path else "tests", lineno)
        return place

    reserve = bytearray(1 << 20)  # freed on MemoryError so that the report can still be written
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    outcome, error, place = "passed", "", ""
    try:
        programs = []
        for path in (code_path, tests_path):
            with open(path, encoding="utf-8") as f:
                programs.append(compile(f.read(), path, "exec", dont_inherit=True))
        for program in programs:
            exec(program, namespace)
    except BaseException as exc:
        reserve = None
        namespace.clear()
        outcome = "memory" if isinstance(exc, MemoryError) else "failed" if isinstance(exc, AssertionError) else "error"
        try:
            if isinstance(exc, SystemExit):
                error = "the candidate called sys.exit(%r) before the tests completed" % (exc.code,)
            else:
                error = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1][:500]
            place = where(exc.__traceback__, exc)
            if not isinstance(exc, SystemExit):
                traceback.print_exception(type(exc), exc, exc.__traceback__, limit=20)
        except BaseException:
            error = error or type(exc).__name__
    send("done", outcome=outcome, error=error, where=place)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(0 if outcome == "passed" else 1)


main()
'''

_INIT_SOURCE = r'''
import ctypes, json, os, resource, signal, subprocess, sys

MS_NOSUID, MS_NODEV, MS_BIND, MS_REC = 2, 4, 4096, 16384
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38


def check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, "%s: %s" % (what, os.strerror(err)))


def mask(libc, target, keeps):
    """Cover ``target`` with an empty tmpfs (mode 0755) and bind each of ``keeps`` back at its path."""
    fds = [os.open(keep, os.O_PATH | os.O_DIRECTORY) for keep in keeps]
    check(libc.mount(b"tmpfs", target.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755,size=64k"),
          "mount tmpfs on " + target)
    for keep, fd in zip(keeps, fds):
        os.makedirs(keep, mode=0o755, exist_ok=True)
        check(libc.mount(("/proc/self/fd/%d" % fd).encode(), keep.encode(), None, MS_BIND | MS_REC, None),
              "bind %s back" % keep)
        os.close(fd)


def spawn(cfg, libc):
    drop, init_pid = cfg["drop"], os.getpid()
    limits = [(getattr(resource, name), (soft, hard)) for name, soft, hard in cfg["rlimits"]]

    def preexec():
        if drop:
            os.setgroups([])
            os.setresgid(drop[1], drop[1], drop[1])
            os.setresuid(drop[0], drop[0], drop[0])
        # after the uid change (which clears it): the runner dies with the init, even if it leaves the group
        check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
        if os.getppid() != init_pid:
            os._exit(1)
        for which, value in limits:
            resource.setrlimit(which, value)

    read_end, write_end = os.pipe()
    try:
        proc = subprocess.Popen(cfg["argv"], stdin=read_end, cwd=cfg["cwd"], env=cfg["env"],
                                pass_fds=(cfg["report_fd"],), preexec_fn=preexec)
    finally:
        os.close(read_end)
    os.write(write_end, (cfg["nonce"] + "\n").encode())
    os.close(write_end)
    return proc


def main():
    cfg = json.loads(sys.stdin.buffer.read())
    status_fd = cfg["status_fd"]

    def send(kind, **fields):
        fields["kind"] = kind
        os.write(status_fd, (json.dumps(fields) + "\n").encode())

    os.umask(0o022)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
        for target, keeps in cfg["masks"]:
            mask(libc, target, keeps)
        proc = spawn(cfg, libc)
    except BaseException as exc:
        send("setup_error", detail="%s: %s" % (type(exc).__name__, exc))
        return 70
    while True:  # as PID 1, also reap orphans until the runner itself exits
        pid, status, usage = os.wait4(-1 if os.getpid() == 1 else proc.pid, 0)
        if pid == proc.pid:
            break
    proc.returncode = os.waitstatus_to_exitcode(status)
    send("exit", returncode=proc.returncode, cpu_s=usage.ru_utime + usage.ru_stime, maxrss_kb=usage.ru_maxrss)
    return 0


sys.exit(main())
'''


# --------------------------------------------------------------------------------------------------------
# Parent side: which layers this machine supports (probed once per Sandbox), the per-run folder, the
# supervision loop (deadline, output caps, no deadlock) and the classification of what was observed.
# --------------------------------------------------------------------------------------------------------

_MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable folders hidden from the candidate
_UNSHARE_FLAGS = {
    IsolationLayer.NETWORK_NAMESPACE: ("--net",),
    IsolationLayer.MOUNT_NAMESPACE: ("--mount",),
    IsolationLayer.PID_NAMESPACE: ("--pid", "--fork", "--kill-child"),
}
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_CHANNEL_CAP = 1 << 20  # bytes accepted on each report channel
_DRAIN_S = 0.5  # how long to keep reading pipes after the sandbox has exited or been killed
_SETUP_HINT = ("if this machine cannot provide a layer, list it in SandboxConfig.disabled_layers "
               "(and not in required_layers)")


@dataclass(frozen=True)
class _Plan:
    """Layers available for a config on this machine and how to launch them."""

    layers: frozenset[IsolationLayer]
    unshare: tuple[str, ...]  # argv prefix; empty without namespaces
    drop: tuple[int, int] | None  # (uid, gid) when privileges are dropped


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _outermost(paths: Sequence[str]) -> list[str]:
    """The paths that are not inside another one of ``paths``."""
    unique = sorted(set(paths))
    return [p for p in unique if not any(q != p and _under(p, q) for q in unique)]


def _interpreter_dirs() -> list[str]:
    """Folders the sandboxed interpreter needs to reach (venv and base installation)."""
    paths = {os.path.dirname(os.path.abspath(sys.executable)), os.path.dirname(os.path.realpath(sys.executable))}
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        paths |= {os.path.abspath(prefix), os.path.realpath(prefix)}
    return _outermost(list(paths))


def _can_traverse(path: str, uid: int, gid: int) -> bool:
    st = os.stat(path)
    bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
    return bool(st.st_mode & bit)


def _blocked_ancestors(paths: Sequence[str], uid: int, gid: int) -> dict[str, list[str]]:
    """Outermost folder on each path's way that ``uid`` cannot traverse -> the paths behind it.

    Raises:
        PermissionError: a path itself is not traversable, which masking cannot fix.
    """
    blocked: dict[str, list[str]] = {}
    for path in paths:
        parts = [p for p in path.split("/") if p]
        for depth in range(len(parts) + 1):
            ancestor = "/" + "/".join(parts[:depth])
            if not _can_traverse(ancestor, uid, gid):
                if ancestor == path or depth == 0:
                    raise PermissionError(f"{ancestor} is not accessible to uid {uid}")
                blocked.setdefault(ancestor, []).append(path)
                break
    return blocked


def _unshare_prefix(binary: str, layers: frozenset[IsolationLayer]) -> tuple[str, ...]:
    flags: list[str] = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    for layer, layer_flags in _UNSHARE_FLAGS.items():
        if layer in layers:
            flags += layer_flags
    if {IsolationLayer.MOUNT_NAMESPACE, IsolationLayer.PID_NAMESPACE} <= layers:
        flags.append("--mount-proc")
    return (binary, *flags, "--")


def _probe_namespaces(wanted: frozenset[IsolationLayer]) -> tuple[frozenset[IsolationLayer], dict[IsolationLayer, str]]:
    """Namespace layers among ``wanted`` that ``unshare`` can create here, and why the others cannot."""
    wanted = wanted & frozenset(_UNSHARE_FLAGS)
    if not wanted:
        return frozenset(), {}
    binary = shutil.which("unshare", path=_SYSTEM_PATH)
    if binary is None:
        return frozenset(), {layer: "the `unshare` program (util-linux) is not installed" for layer in wanted}

    def works(layers: frozenset[IsolationLayer]) -> bool:
        try:
            done = subprocess.run([*_unshare_prefix(binary, layers), "true"], stdin=subprocess.DEVNULL,
                                  capture_output=True, timeout=10, env={"PATH": _SYSTEM_PATH})
        except (OSError, subprocess.SubprocessError):
            return False
        return done.returncode == 0

    if works(wanted):
        return wanted, {}
    usable = frozenset(layer for layer in wanted if works(frozenset({layer})))
    if usable and not works(usable):
        usable = frozenset()
    why = "`unshare` is not permitted here (it needs root, or unprivileged user namespaces)"
    return usable, {layer: why for layer in wanted - usable}


def _make_plan(config: SandboxConfig) -> _Plan:
    """Probe the optional layers; warn about each one that falls back, raise for required ones."""
    wanted = _OPTIONAL - config.disabled_layers
    namespaces, missing = _probe_namespaces(wanted)
    layers = set(_ALWAYS_ON | namespaces)
    drop = None
    if IsolationLayer.UNPRIVILEGED_USER in wanted:
        uid, gid = config.sandbox_uid, config.sandbox_gid
        if os.geteuid() != 0:
            missing[IsolationLayer.UNPRIVILEGED_USER] = "the caller is not root, so the candidate keeps its uid"
        else:
            try:
                blocked = _blocked_ancestors([*_interpreter_dirs(), tempfile.gettempdir()], uid, gid)
            except OSError as exc:
                missing[IsolationLayer.UNPRIVILEGED_USER] = f"the interpreter cannot run as uid {uid}: {exc}"
            else:
                if blocked and IsolationLayer.MOUNT_NAMESPACE not in layers:
                    missing[IsolationLayer.UNPRIVILEGED_USER] = (
                        f"uid {uid} cannot traverse {sorted(blocked)} to reach the interpreter, and hiding "
                        f"them needs the mount namespace")
                else:
                    drop = (uid, gid)
                    layers.add(IsolationLayer.UNPRIVILEGED_USER)
    ordered = sorted(missing.items(), key=lambda item: item[0].value)
    if lacking := [f"{layer.name} ({why})" for layer, why in ordered if layer in config.required_layers]:
        raise SandboxSetupError(f"required sandbox layers are unavailable: {'; '.join(lacking)}; {_SETUP_HINT}")
    for layer, why in ordered:
        warnings.warn(f"sandbox layer {layer.name} is unavailable ({why}); running without it",
                      RuntimeWarning, stacklevel=3)
    binary = shutil.which("unshare", path=_SYSTEM_PATH)
    unshare = _unshare_prefix(binary, frozenset(namespaces)) if namespaces and binary else ()
    return _Plan(layers=frozenset(layers), unshare=unshare, drop=drop)


def _masks(plan: _Plan, root: str) -> list[tuple[str, list[str]]]:
    """(folder to cover with an empty tmpfs, paths to bind back inside it), outermost folders first."""
    if IsolationLayer.MOUNT_NAMESPACE not in plan.layers:
        return []
    exposed = _outermost([root, *_interpreter_dirs()])
    targets = {d for d in _MASKED_DIRS if os.path.isdir(d) and os.path.realpath(d) == d}
    if plan.drop is not None:
        targets |= set(_blocked_ancestors(exposed, *plan.drop))
    masks: list[tuple[str, list[str]]] = []
    for target in sorted(targets, key=lambda t: t.count("/")):
        if any(_under(target, p) for p in exposed):
            continue  # the target is (inside) a folder the sandbox needs: covering it would hide that
        if any(_under(target, t) and not any(_under(target, k) for k in keeps) for t, keeps in masks):
            continue  # already hidden by an outer mask
        masks.append((target, [p for p in exposed if _under(p, target)]))
    return masks


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
