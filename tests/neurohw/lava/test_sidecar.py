"""The Lava sidecar: exact spikes on hand-computed networks (from the maths in neurohw.lava.network), layouts, and a
clear LavaSidecarError for every way the subprocess can fail. Lava start-up is ~2 s, so few real runs."""

import os
import stat
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from neurohw.lava import sidecar
from neurohw.lava.network import ConvGeometry, LoihiLayer, LoihiNetwork
from neurohw.lava.sidecar import LavaSidecarError, lava_python, run_lava

HAS_LAVA = (Path(sidecar.ROOT) / ".venv-lava" / "bin" / "python").exists()
needs_lava = pytest.mark.skipif(not HAS_LAVA, reason=".venv-lava not built (NEUROMFM_SKIP_LAVA=1 or no Python 3.10)")
READOUT_VTH = 2 ** 17 - 1


def tiny_dense() -> LoihiNetwork:
    """2 graded inputs -> 3 integrate-and-fire neurons (threshold 50 << 6 = 3200) -> 2 read-out integrators."""
    hidden = LoihiLayer(name="hidden", kind="dense", in_shape=(2,), out_shape=(3,),
                        weight=[[10, 0], [0, 20], [6, 6]], weight_exp=0, bias_mant=0, bias_exp=0, du=4095, dv=0, vth=50)
    out = LoihiLayer(name="out", kind="dense", in_shape=(3,), out_shape=(2,), weight=[[100, 0, 50], [-20, 40, 0]],
                     weight_exp=0, bias_mant=[1, -2], bias_exp=3, du=4095, dv=0, vth=READOUT_VTH, readout=True)
    return LoihiNetwork(input_shape=(2,), layers=[hidden, out])


def tiny_conv() -> LoihiNetwork:
    """(1, 4, 5) -> conv 2x(2, 3), padding (0, 1) -> (2, 3, 5) -> dense read-out of 2. Each kernel has one non-zero
    tap, so the orientation of Lava's (W, H, C) convolution against torch's (C, H, W) correlation shows."""
    w = np.zeros((2, 1, 2, 3), dtype=np.int32)
    w[0, 0, 0, 0] = 200  # out[0, y, x] = 200 * in[y, x - 1]
    w[1, 0, 1, 2] = 200  # out[1, y, x] = 200 * in[y + 1, x + 1]
    conv = LoihiLayer(name="conv", kind="conv", in_shape=(1, 4, 5), out_shape=(2, 3, 5), weight=w, weight_exp=0,
                      bias_mant=0, bias_exp=0, du=4095, dv=0, vth=1,
                      conv=ConvGeometry(kernel=(2, 3), padding=(0, 1)))
    w_out = np.zeros((2, 30), dtype=np.int32)
    w_out[0] = 2
    w_out[1, 14] = 6
    out = LoihiLayer(name="out", kind="dense", in_shape=(30,), out_shape=(2,), weight=w_out, weight_exp=0,
                     bias_mant=0, bias_exp=0, du=4095, dv=0, vth=READOUT_VTH, readout=True)
    return LoihiNetwork(input_shape=(1, 4, 5), layers=[conv, out])


def fake_python(tmp_path: Path, body: str) -> Path:
    """An executable that stands in for the Lava interpreter (called as ``fake RUNNER REQUEST_DIR``)."""
    path = tmp_path / "fake-python"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


# ------------------------------------------------------------------------------------------------ real Lava runs
@pytest.mark.lava
@needs_lava
def test_tiny_dense_network_gives_the_hand_computed_spikes(monkeypatch):
    monkeypatch.delenv("NEUROMFM_LAVA_PYTHON", raising=False)
    # Sample 0, x = [3, 1]: a_0 = W x = [30, 20, 24] from t = 1 on (one-step synaptic delay), u = a << 6 =
    # [1920, 1280, 1536]; IF v adds u each step and fires when v > 3200, then resets to 0:
    #   t=1 v=[1920,1280,1536]  t=2 v=[3840*,2560,3072]  t=3 v=[1920,3840*,4608*]  t=4 v=[3840*,1280,1536]
    # Read-out: a_1(t) = W_1 s_0(t-1): t=3 [100, -20], t=4 [50, 40]; bias [1, -2] << 3 = [8, -16] at every step, so
    #   v_final = [150, 20] << 6 + 5 * [8, -16] = [9640, 1200].
    # Sample 1, x = 0: no spikes, only the bias: v_final = 5 * [8, -16] (nothing carried over from sample 0).
    res = run_lava(tiny_dense(), np.array([[3, 1], [0, 0]]), 5, timeout_s=120)
    s0, s1 = res.spikes
    assert s0.shape == (2, 5, 3) and s1.shape == (2, 5, 2) and s0.dtype == np.uint8
    assert s0[0].tolist() == [[0, 0, 0], [0, 0, 0], [1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert not s0[1].any() and not s1.any()  # the read-out never reaches its threshold here
    assert res.v_final.tolist() == [[9640, 1200], [40, -80]]
    assert res.v_final.dtype == np.int32
    assert res.lava_version == "0.10.0"
    assert 0 < res.run_seconds < res.total_seconds
    assert res.steps_per_second == pytest.approx(2 * 5 / res.run_seconds)


@pytest.mark.lava
@needs_lava
def test_tiny_conv_network_keeps_torch_layout_and_per_step_input(monkeypatch):
    monkeypatch.delenv("NEUROMFM_LAVA_PYTHON", raising=False)
    t_steps = 4
    x = np.zeros((1, t_steps, 1, 4, 5), dtype=np.int32)
    x[0, 0, 0, 2, 3] = 100  # one hot pixel at (y=2, x=3), at step 0 only
    res = run_lava(tiny_conv(), x, t_steps, timeout_s=120)
    s0, s1 = res.spikes
    assert s0.shape == (1, t_steps, 30) and s1.shape == (1, t_steps, 2) and res.v_final.shape == (1, 2)
    # a_0(1) = conv(x(0)): channel 0 at (y=2, x=4) -> index 0*15 + 2*5 + 4 = 14; channel 1 at (y=1, x=2) -> 15+5+2 = 22
    expected = np.zeros((t_steps, 30), dtype=np.uint8)
    expected[1, [14, 22]] = 1
    np.testing.assert_array_equal(s0[0], expected)
    # read-out: a_1(2) = W_1 s_0(1) = [2 + 2, 6] once -> v_final = [4, 6] << 6
    assert res.v_final.tolist() == [[256, 384]]
    assert not s1.any()


@pytest.mark.lava
@needs_lava
def test_runner_failure_reports_its_error_json(monkeypatch):
    monkeypatch.delenv("NEUROMFM_LAVA_PYTHON", raising=False)
    # a request the runner refuses (wrong protocol version): error.json comes back as a LavaSidecarError
    real_write = sidecar.atomic_write_json
    monkeypatch.setattr(sidecar, "atomic_write_json", lambda path, obj: real_write(path, {**obj, "version": 99}))
    with pytest.raises(LavaSidecarError, match=r"failed at stage 'request'.*version 99"):
        run_lava(tiny_dense(), np.array([[1, 1]]), 3, timeout_s=120)


# ------------------------------------------------------------------------------------------------ failures, no Lava
def test_missing_interpreter_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", "/nonexistent/python3.10")
    assert lava_python() == Path("/nonexistent/python3.10")
    with pytest.raises(LavaSidecarError, match=r"no Lava interpreter at /nonexistent.*make setup.*NEUROMFM_LAVA_PY"):
        run_lava(tiny_dense(), np.array([[1, 1]]), 3)


def test_default_interpreter_is_the_repo_lava_venv(monkeypatch):
    monkeypatch.delenv("NEUROMFM_LAVA_PYTHON", raising=False)
    assert lava_python() == Path(sidecar.ROOT) / ".venv-lava" / "bin" / "python"


def test_interpreter_without_lava_is_reported_as_failed_import(monkeypatch):
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", sys.executable)  # the main 3.11 venv: numpy, no lava
    with pytest.raises(LavaSidecarError, match=r"Lava does not import in .*ModuleNotFoundError.*make setup"):
        run_lava(tiny_dense(), np.array([[1, 1]]), 3, timeout_s=60)


def test_timeout_kills_the_runner_and_its_children(monkeypatch, tmp_path):
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", str(fake_python(tmp_path, f"sleep 60 & echo $! > {pid_file}; wait")))
    t0 = time.perf_counter()
    with pytest.raises(LavaSidecarError, match=r"longer than timeout_s=0.5 s.*larger timeout_s"):
        run_lava(tiny_dense(), np.array([[1, 1]]), 3, timeout_s=0.5)
    assert time.perf_counter() - t0 < 10
    child = int(pid_file.read_text())
    for _ in range(50):  # the grandchild (a stand-in for Lava's processes) is gone too
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the runner's child survived the timeout")


def test_crash_without_error_json_quotes_exit_code_and_stderr(monkeypatch, tmp_path):
    fake = fake_python(tmp_path, "echo 'Segmentation fault in lava' >&2; exit 3")
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", str(fake))
    with pytest.raises(LavaSidecarError, match=r"(?s)crashed \(exit code 3\).*Segmentation fault in lava"):
        run_lava(tiny_dense(), np.array([[1, 1]]), 3)


def test_missing_and_malformed_outputs(monkeypatch, tmp_path):
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", str(fake_python(tmp_path, "exit 0")))
    with pytest.raises(LavaSidecarError, match=r"outputs are missing or unreadable"):
        run_lava(tiny_dense(), np.array([[1, 1]]), 3)
    # outputs with the wrong shapes (written by a stand-in runner in the main interpreter)
    script = tmp_path / "bad_runner.py"
    script.write_text(
        "import json, sys, numpy as np\n"
        "d = sys.argv[2]\n"
        "np.savez(d + '/outputs.npz', spikes_l0=np.zeros((1, 3, 7), np.uint8), spikes_l1=np.zeros((1, 3, 2), np.uint8),"
        " v_final=np.zeros((1, 2), np.int32))\n"
        "json.dump({'format': 'neuromfm-lava-result', 'version': 1, 'lava_version': 'x', 'samples': 1,"
        " 'timesteps': 3, 'run_seconds': 0.1, 'total_seconds': 0.2}, open(d + '/result.json', 'w'))\n")
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", str(fake_python(tmp_path, f'exec {sys.executable} {script} "$@"')))
    with pytest.raises(LavaSidecarError, match=r"malformed: spikes_l0: \(1, 3, 7\), expected 0/1 of shape \(1, 3, 3\)"):
        run_lava(tiny_dense(), np.array([[1, 1]]), 3)


@pytest.mark.parametrize("x, timesteps, match", [
    (np.array([[1.5, 1.0]]), 3, "dtype float64"),
    (np.array([[1, 2, 3]]), 3, r"shape \(1, 3\); need \(N, \*\(2,\)\)"),
    (np.array([[1, 256]]), 3, r"values in \[1, 256\].*\[0, 255\]"),
    (np.array([[-1, 0]]), 3, r"values in \[-1, 0\]"),
    (np.array([[1, 1]]), 0, "timesteps=0"),
])
def test_bad_arguments_are_refused_before_starting(monkeypatch, x, timesteps, match):
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", "/nonexistent")  # would fail later: validation comes first
    with pytest.raises(ValueError, match=match):
        run_lava(tiny_dense(), x, timesteps)


def test_out_of_range_network_is_refused(monkeypatch):
    net = tiny_dense()
    net.layers[0].vth = 2 ** 17
    monkeypatch.setenv("NEUROMFM_LAVA_PYTHON", "/nonexistent")
    with pytest.raises(ValueError, match=r"layer 'hidden': vth"):
        run_lava(net, np.array([[1, 1]]), 3)


def test_runner_and_sidecar_speak_the_same_protocol():
    from neurohw.lava import _lava_runner as runner

    assert (runner.REQUEST_FORMAT, runner.RESULT_FORMAT, runner.PROTOCOL_VERSION) == \
           (sidecar.REQUEST_FORMAT, sidecar.RESULT_FORMAT, sidecar.PROTOCOL_VERSION)
