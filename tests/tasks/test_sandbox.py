"""The candidate-code sandbox: correct verdicts, and every misbehaviour contained and reported as a failure.

Each misbehaving candidate is checked on two sides: the verdict (status and reason) and the outside world
(no file written, no connection accepted, no process left over, the caller still running).
"""

import dataclasses
import socket
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import psutil
import pytest

from tasks.sandbox import (
    IsolationLayer,
    Sandbox,
    SandboxConfig,
    SandboxResult,
    SandboxSetupError,
    SandboxStatus,
    run_candidate,
    run_many,
)

WALL_S = 10.0  # generous, so that a loaded machine cannot turn a pass into a timeout; only hangs use it up
LOOP_WALL_S = 2.0  # the one test that waits for the wall-time limit
CONFIG = SandboxConfig(wall_time_s=WALL_S, cpu_time_s=WALL_S, memory_mb=256, max_output_bytes=16 * 1024)
ALWAYS_ON = {IsolationLayer.PROCESS_GROUP, IsolationLayer.RESOURCE_LIMITS, IsolationLayer.AUDIT_HOOK}
OPTIONAL = frozenset(IsolationLayer) - ALWAYS_ON

SOLUTION = textwrap.dedent('''
    def add(a, b):
        """Return a + b."""
        return a + b
''')
TESTS = textwrap.dedent('''
    def check(candidate):
        assert candidate(2, 3) == 5
        assert candidate(-1, 1) == 0

    check(add)
    print("checked")
''')


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    return Sandbox(config=CONFIG)


@pytest.fixture(scope="module")
def plain_sandbox() -> Sandbox:
    """Only the always-on layers: what a machine without namespaces or root gets."""
    return Sandbox(config=dataclasses.replace(CONFIG, disabled_layers=OPTIONAL))


@pytest.fixture()
def sandbox_root(tmp_path, monkeypatch) -> Path:
    """Make this test's sandbox folders (and so their processes' command lines) identifiable."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


def _processes_under(root: Path) -> list[int]:
    """Live processes whose command line names a sandbox folder under ``root``; waits up to 5 s for teardown."""
    deadline = time.monotonic() + 5.0
    while True:
        pids = [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
                if any(str(root) in arg for arg in p.info["cmdline"] or [])]
        if not pids or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def _uid_processes(uid: int, *, within: set[int] | None = None) -> set[int]:
    """Live (non-zombie) processes of ``uid``; with ``within``, waits up to 5 s for the others to be reaped."""
    deadline = time.monotonic() + 5.0
    while True:
        pids = {p.info["pid"] for p in psutil.process_iter(["pid", "uids", "status"])
                if p.info["uids"] and p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE}
        if within is None or pids <= within or time.monotonic() > deadline:
            return pids
        time.sleep(0.1)


def _assert_failure(result: SandboxResult, status: SandboxStatus) -> None:
    assert result.status is status, (result.status, result.reason, result.stderr[-500:])
    assert not result.passed
    assert result.reason


# ---------------------------------------------------------------------------------------------- verdicts


def test_passing_solution_passes(sandbox):
    result = sandbox.run(SOLUTION, TESTS)
    assert result.passed and result.status is SandboxStatus.PASSED, (result.reason, result.stderr)
    assert result.returncode == 0
    assert result.stdout == "checked\n"
    assert not result.stdout_truncated and not result.stderr_truncated
    assert ALWAYS_ON <= set(result.isolation)
    assert result.isolation == sandbox.layers
    assert 0 < result.wall_time_s < WALL_S
    assert result.cpu_time_s is not None and result.cpu_time_s >= 0
    assert result.peak_memory_mb is not None and 0 < result.peak_memory_mb < CONFIG.memory_mb


def test_wrong_solution_fails_with_the_failing_assertion(sandbox):
    result = sandbox.run(SOLUTION.replace("a + b", "a - b"), TESTS)
    _assert_failure(result, SandboxStatus.FAILED)
    assert "AssertionError" in result.reason and "tests line 3" in result.reason
    assert result.returncode == 1
    assert "AssertionError" in result.stderr  # the traceback is kept for the user
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("code", "expected"),
    [("def add(a, b)\n    return a + b\n", ["SyntaxError", "solution line 1"]),
     ("def add(a, b):\n    return a / 0\n", ["ZeroDivisionError", "solution line 2"]),
     ("import no_such_module_xyz\n", ["ModuleNotFoundError", "solution line 1"])],
    ids=["syntax", "exception", "import"],
)
def test_broken_solution_is_an_error(sandbox, code, expected):
    result = sandbox.run(code, TESTS)
    _assert_failure(result, SandboxStatus.ERROR)
    for text in expected:
        assert text in result.reason


@pytest.mark.parametrize(
    "code",
    ["import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n",
     # writing a fake report on the runner's channel (its fd is argv[1]) without the per-run nonce
     "import os, sys\nos.write(int(sys.argv[1]), b'{\"kind\": \"done\", \"outcome\": \"passed\"}\\n')\nos._exit(0)\n"],
    ids=["os._exit", "sys.exit", "forged-report"],
)
def test_exiting_early_or_forging_a_report_is_not_a_pass(sandbox, code):
    result = sandbox.run(code + SOLUTION, TESTS.replace("5", "6"))  # the tests would fail
    assert not result.passed
    assert result.status in (SandboxStatus.ERROR, SandboxStatus.VIOLATION)
    assert "checked" not in result.stdout


# -------------------------------------------------------------------------------------------- resources


def test_infinite_loop_times_out_within_the_wall_limit():
    config = dataclasses.replace(CONFIG, wall_time_s=LOOP_WALL_S)
    start = time.monotonic()
    result = run_candidate("while True:\n    pass\n", TESTS, config=config)
    elapsed = time.monotonic() - start
    _assert_failure(result, SandboxStatus.TIMEOUT)
    assert "wall-time" in result.reason
    assert result.returncode is None  # killed by the sandbox, not exited
    assert LOOP_WALL_S <= elapsed < LOOP_WALL_S + 5.0  # generous margin: not a timing test, but it must not hang


def test_cpu_limit_stops_a_busy_candidate():
    result = run_candidate("while True:\n    pass\n", config=dataclasses.replace(CONFIG, cpu_time_s=1.0))
    _assert_failure(result, SandboxStatus.TIMEOUT)
    assert "CPU-time" in result.reason  # RLIMIT_CPU fired (SIGXCPU at 1 s), not the 10 s wall limit
    assert result.returncode is not None and result.returncode < 0
    assert result.wall_time_s < WALL_S


@pytest.mark.parametrize(
    "code",
    ["x = bytearray(10**11)\n",
     "chunks = []\nwhile True:\n    chunks.append(bytearray(10**6))\n"],
    ids=["one-huge", "growing-list"],
)
def test_huge_allocation_is_a_memory_failure(sandbox, code):
    result = sandbox.run(code, TESTS)
    _assert_failure(result, SandboxStatus.MEMORY)
    assert "MemoryError" in result.reason
    assert result.wall_time_s < WALL_S


def test_output_flood_is_capped(sandbox):
    result = sandbox.run("while True:\n    print('x' * 1000)\n", TESTS)
    _assert_failure(result, SandboxStatus.OUTPUT_LIMIT)
    assert result.stdout_truncated and not result.stderr_truncated
    assert len(result.stdout.encode()) == CONFIG.max_output_bytes
    assert set(result.stdout) <= {"x", "\n"}
    assert result.wall_time_s < WALL_S  # stopped at the cap, not by the deadline


def test_file_size_limit(sandbox):
    code = f"with open('big.bin', 'wb') as f:\n    f.write(b'0' * {CONFIG.max_file_bytes + 1})\n"
    result = sandbox.run(code, "")
    _assert_failure(result, SandboxStatus.ERROR)
    assert "File too large" in result.reason


# ------------------------------------------------------------------------------------------ containment


@pytest.mark.parametrize(
    "code",
    ["import os\nwhile True:\n    os.fork()\n",
     # the candidate swallows every exception: the first attempt still ends the run
     "import os\nwhile True:\n    try:\n        os.fork()\n    except BaseException:\n        pass\n",
     "import subprocess\nwhile True:\n    subprocess.Popen(['sleep', '100'])\n",
     "import multiprocessing\nwhile True:\n    multiprocessing.Process(target=print).start()\n"],
    ids=["os.fork", "os.fork-swallowed", "subprocess", "multiprocessing"],
)
def test_fork_bomb_is_contained_and_leaves_no_process(sandbox, sandbox_root, code):
    before_uid = _uid_processes(CONFIG.sandbox_uid)
    result = sandbox.run(code, TESTS)
    _assert_failure(result, SandboxStatus.VIOLATION)
    assert any(op in result.reason for op in ("os.fork", "subprocess.Popen"))
    assert result.wall_time_s < WALL_S
    assert _processes_under(sandbox_root) == []
    assert _uid_processes(CONFIG.sandbox_uid, within=before_uid) <= before_uid
    assert list(sandbox_root.iterdir()) == []  # the sandbox folder is gone


def _write_attempts(target: Path) -> dict[str, str]:
    return {
        "open": f"open({str(target)!r}, 'w').write('escaped')\n",
        "os.open": f"import os\nos.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\n",
        "pathlib": f"import pathlib\npathlib.Path({str(target)!r}).write_text('escaped')\n",
        # a symlink inside the sandbox folder pointing out of it
        "symlink": f"import os\nos.symlink({str(target)!r}, 'link')\nopen('link', 'w').write('escaped')\n",
    }


@pytest.mark.parametrize("how", ["open", "os.open", "pathlib", "symlink"])
@pytest.mark.parametrize("where", ["pytest-tmp", "repository"])
def test_writing_outside_the_sandbox_folder_is_blocked(sandbox, tmp_path, how, where):
    folder = tmp_path if where == "pytest-tmp" else Path(__file__).resolve().parent
    target = folder / f"escape-{uuid.uuid4().hex}.txt"
    try:
        result = sandbox.run(_write_attempts(target)[how], TESTS)
        _assert_failure(result, SandboxStatus.VIOLATION)
        assert target.name in result.reason
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


def test_kernel_layers_stop_writes_the_audit_hook_cannot_see(sandbox):
    """``os.open(name, dir_fd=...)`` raises an audit event without the folder: only the uid drop stops it."""
    if IsolationLayer.UNPRIVILEGED_USER not in sandbox.layers:
        pytest.skip("needs the UNPRIVILEGED_USER layer (the caller is not root)")
    folder = Path(__file__).resolve().parent
    target = folder / f"escape-{uuid.uuid4().hex}.txt"
    code = f"import os\nfd = os.open({str(folder)!r}, os.O_RDONLY)\nos.open({target.name!r}, os.O_WRONLY | os.O_CREAT, dir_fd=fd)\n"
    try:
        result = sandbox.run(code, TESTS)
        _assert_failure(result, SandboxStatus.ERROR)
        masked = any(folder.is_relative_to(p) for p in ("/tmp", "/var/tmp", "/dev/shm"))
        # a checkout under /tmp is hidden by the mount namespace (not found); elsewhere the uid drop refuses
        assert ("FileNotFoundError" if masked else "PermissionError") in result.reason
        assert not target.exists()
    finally:
        target.unlink(missing_ok=True)


@pytest.fixture()
def listening_server():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)  # the candidate has finished by then: a connection would already be queued
    yield server
    server.close()


@pytest.mark.parametrize("which", ["sandbox", "plain_sandbox"])
@pytest.mark.parametrize(
    "template",
    ["import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))\ns.sendall(b'hi')\n",
     "import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n",
     "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:{port}/', timeout=1)\n"],
    ids=["socket", "create_connection", "urllib"],
)
def test_network_is_blocked(request, listening_server, which, template):
    sandbox = request.getfixturevalue(which)
    port = listening_server.getsockname()[1]
    result = sandbox.run(template.format(port=port), TESTS)
    _assert_failure(result, SandboxStatus.VIOLATION)
    assert "socket" in result.reason or "urllib" in result.reason
    with pytest.raises(socket.timeout):  # nothing ever connected
        listening_server.accept()


def test_writing_inside_the_sandbox_folder_is_allowed(sandbox):
    code = textwrap.dedent('''
        import os, pathlib, shutil, tempfile
        os.makedirs("data/nested")
        with open("data/nested/out.txt", "w") as f:
            f.write("hello")
        pathlib.Path("data/other.txt").write_text("world")
        with tempfile.NamedTemporaryFile(dir=".") as tmp:
            tmp.write(b"scratch")
        os.rename("data/other.txt", "data/renamed.txt")
        content = open("data/nested/out.txt").read() + " " + pathlib.Path("data/renamed.txt").read_text()
        shutil.rmtree("data")
        assert not os.path.exists("data")
        assert os.path.realpath(tempfile.gettempdir()) == os.path.realpath(os.getcwd())
        print(content)
    ''')
    result = sandbox.run(code, "")
    assert result.passed, (result.reason, result.stderr)
    assert result.stdout == "hello world\n"


def test_isolation_is_visible_from_inside(sandbox, tmp_path):
    """What the candidate sees matches the layers the sandbox reports."""
    code = textwrap.dedent(f'''
        import os, socket
        print("uid", os.getuid())
        print("pid", os.getpid())
        print("interfaces", sorted(name for _, name in socket.if_nameindex()))
        print("host-tmp-visible", os.path.exists({str(tmp_path)!r}))
    ''')
    result = sandbox.run(code, "")
    assert result.passed, (result.reason, result.stderr)
    seen = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    layers = set(sandbox.layers)
    if IsolationLayer.UNPRIVILEGED_USER in layers:
        assert seen["uid"] == str(CONFIG.sandbox_uid)
    if IsolationLayer.PID_NAMESPACE in layers:
        assert seen["pid"] == "2"  # the sandbox init is PID 1
    if IsolationLayer.NETWORK_NAMESPACE in layers:
        assert seen["interfaces"] == "['lo']"
    if IsolationLayer.MOUNT_NAMESPACE in layers:
        assert seen["host-tmp-visible"] == "False"
    assert seen["uid"].isdigit() and seen["pid"].isdigit()


def test_without_optional_layers_the_hook_still_contains(plain_sandbox, tmp_path, sandbox_root):
    assert set(plain_sandbox.layers) == ALWAYS_ON
    assert plain_sandbox.run(SOLUTION, TESTS).passed
    target = tmp_path / "escape.txt"
    for code in (_write_attempts(target)["open"], "import os\nwhile True:\n    os.fork()\n"):
        result = plain_sandbox.run(code, TESTS)
        _assert_failure(result, SandboxStatus.VIOLATION)
        assert set(result.isolation) == ALWAYS_ON
    assert not target.exists()
    # leaving the process group does not outlive the run: the runner dies with its init (parent-death signal)
    short = Sandbox(config=dataclasses.replace(plain_sandbox.config, wall_time_s=LOOP_WALL_S))
    result = short.run("import os\nos.setsid()\nwhile True:\n    pass\n", TESTS)
    _assert_failure(result, SandboxStatus.TIMEOUT)
    assert _processes_under(sandbox_root) == []
    assert list(sandbox_root.iterdir()) == []


def test_missing_namespaces_fall_back_with_a_warning_unless_required(monkeypatch):
    monkeypatch.setattr("tasks.sandbox.layers.shutil.which", lambda *args, **kwargs: None)  # no `unshare` program
    namespaces = {IsolationLayer.NETWORK_NAMESPACE, IsolationLayer.PID_NAMESPACE, IsolationLayer.MOUNT_NAMESPACE}
    with pytest.warns(RuntimeWarning) as record:
        sandbox = Sandbox(config=CONFIG)
    warned = {layer for layer in IsolationLayer for w in record if f"layer {layer.name} " in str(w.message)}
    assert namespaces <= warned  # one visible warning per layer that fell back
    assert not (namespaces | warned) & set(sandbox.layers)
    assert ALWAYS_ON <= set(sandbox.layers)
    assert sandbox.run(SOLUTION, TESTS).passed
    with pytest.raises(SandboxSetupError, match="PID_NAMESPACE"):
        Sandbox(config=dataclasses.replace(CONFIG, required_layers={IsolationLayer.PID_NAMESPACE}))


def test_caller_survives_a_batch_of_misbehaving_candidates(tmp_path, sandbox_root):
    codes = [SOLUTION, SOLUTION.replace("a + b", "a * b"), "import os\nos.fork()\n", "x = bytearray(10**11)\n",
             f"open({str(tmp_path / 'x')!r}, 'w')\n", "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"]
    results = run_many(codes, TESTS, config=CONFIG)
    assert [r.status for r in results] == [SandboxStatus.PASSED, SandboxStatus.FAILED, SandboxStatus.VIOLATION,
                                           SandboxStatus.MEMORY, SandboxStatus.VIOLATION, SandboxStatus.VIOLATION]
    assert [r.passed for r in results] == [True] + [False] * 5
    assert run_candidate(SOLUTION, TESTS, config=CONFIG).passed  # still working afterwards
    assert list(sandbox_root.iterdir()) == []  # every sandbox folder was removed
    assert _processes_under(sandbox_root) == []


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("field", "value"),
    [("wall_time_s", 0), ("wall_time_s", -1.0), ("wall_time_s", float("nan")), ("cpu_time_s", 0),
     ("memory_mb", 32), ("memory_mb", 128.5), ("max_output_bytes", 0), ("max_file_bytes", 0),
     ("max_open_files", 3), ("max_processes", 0), ("sandbox_uid", 0), ("sandbox_gid", True),
     ("site_packages", "yes"), ("disabled_layers", {IsolationLayer.AUDIT_HOOK}), ("disabled_layers", {"network"})],
)
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SandboxConfig(**{field: value})


def test_config_layer_sets_are_normalised_and_checked():
    config = SandboxConfig(disabled_layers={IsolationLayer.NETWORK_NAMESPACE})
    assert config.disabled_layers == frozenset({IsolationLayer.NETWORK_NAMESPACE})
    with pytest.raises(ValueError, match="required_layers"):
        SandboxConfig(disabled_layers={IsolationLayer.PID_NAMESPACE}, required_layers={IsolationLayer.PID_NAMESPACE})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.wall_time_s = 1.0


def test_bad_arguments_raise(sandbox):
    with pytest.raises(TypeError, match="code"):
        sandbox.run(b"print(1)")
    with pytest.raises(TypeError, match="tests"):
        sandbox.run("x = 1", None)
    with pytest.raises(TypeError, match="codes"):
        sandbox.run_many("x = 1")
    with pytest.raises(TypeError, match="config"):
        Sandbox(config={"wall_time_s": 1.0})
