"""Which optional isolation layers this machine supports for a config, probed once per :class:`Sandbox`.

The result is a :class:`_Plan`: the active layers, the ``unshare`` argv prefix that creates the namespaces and
the identity to drop to; :func:`_masks` turns it into the mounts the sandbox init makes for one run.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from typing import Sequence

from tasks.sandbox.config import _ALWAYS_ON, _OPTIONAL, _SETUP_HINT, IsolationLayer, SandboxConfig, SandboxSetupError

_MASKED_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # world-writable folders hidden from the candidate
_UNSHARE_FLAGS = {
    IsolationLayer.NETWORK_NAMESPACE: ("--net",),
    IsolationLayer.MOUNT_NAMESPACE: ("--mount",),
    IsolationLayer.PID_NAMESPACE: ("--pid", "--fork", "--kill-child"),
}
_SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


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
