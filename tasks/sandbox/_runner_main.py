"""In-sandbox program: run the candidate's solution, then its tests, and report how it went.

Never imported: the parent copies this file's text into the per-run sandbox folder (``ctl/runner.py``,
readable by the sandbox user) and the sandbox init executes it, as the sandbox user, as::

    python -I -B -X utf8 [-S] runner.py REPORT_FD WORK SOLUTION TESTS

It reads the per-run nonce from stdin, installs the audit hook (see the ``AUDIT_HOOK`` layer in
:mod:`tasks.sandbox`) and writes ``started``, ``violation`` and ``done`` JSON lines, each carrying the nonce, to
``REPORT_FD``. Standard library only: it must never import neuromfm.
"""

import builtins
import json
import os
import pathlib
import sys
import traceback

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


if __name__ == "__main__":
    main()
