"""In-sandbox program: the sandbox init, which sets the sandbox up and starts the runner.

Never imported: the parent copies this file's text into the per-run sandbox folder (``ctl/init.py``)
and runs it, as the caller and as PID 1 of the namespaces when they are available, as::

    [unshare ... --] python -I -S -B init.py

It reads its JSON configuration (runner argv, cwd, environment, nonce, channel descriptors, identity to drop to,
rlimits, mount masks) from stdin, applies the masks, spawns the runner and writes ``setup_error`` or ``exit``
JSON lines to the status descriptor, a channel the runner never sees. Standard library only: it must never
import neuromfm.
"""

import ctypes
import json
import os
import resource
import signal
import subprocess
import sys

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


if __name__ == "__main__":
    sys.exit(main())
