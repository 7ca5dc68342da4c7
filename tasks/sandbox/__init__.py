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

Package layout
--------------
- ``config``: the outcome and layer enums, :class:`SandboxConfig` (validated) and :class:`SandboxResult`.
- ``layers``: which optional layers this machine supports, probed once per :class:`Sandbox`.
- ``supervisor``: one run, parent side (folder, spawn, supervision, verdict) and :class:`Sandbox`.
- ``_init_main`` and ``_runner_main``: the two programs that run inside the sandbox (standard library only,
  never imported; their text is copied into each run's folder).
"""

from __future__ import annotations

from tasks.sandbox.config import IsolationLayer, SandboxConfig, SandboxResult, SandboxSetupError, SandboxStatus
from tasks.sandbox.supervisor import Sandbox, run_candidate, run_many

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
