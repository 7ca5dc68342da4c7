"""The environment `make setup` builds: pins that matter, and the Lava sidecar."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAVA_PY = ROOT / ".venv-lava" / "bin" / "python"


def test_main_env_has_cpu_torch_numpy1_and_no_torchvision():
    import numpy
    import torch

    assert torch.__version__.startswith("2.13.0")
    assert numpy.__version__.startswith("1.")
    out = subprocess.run([sys.executable, "-c", "import importlib.util as u; print(u.find_spec('torchvision'), u.find_spec('torchaudio'))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "None None"


@pytest.mark.lava
@pytest.mark.skipif(not LAVA_PY.exists(), reason=".venv-lava not built (NEUROMFM_SKIP_LAVA=1 or no Python 3.10)")
def test_lava_sidecar_runs_a_fixed_point_lif_network():
    code = """
import numpy as np
from lava.proc.lif.process import LIF
from lava.proc.dense.process import Dense
from lava.proc.io.source import RingBuffer
from lava.proc.monitor.process import Monitor
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.magma.core.run_conditions import RunSteps
src = RingBuffer(data=np.ones((2, 10), dtype=np.int32))
dense = Dense(weights=np.array([[100, 0], [0, 40]]))
lif = LIF(shape=(2,), du=4095, dv=0, vth=200, bias_mant=0)
src.s_out.connect(dense.s_in); dense.a_out.connect(lif.a_in)
mon = Monitor(); mon.probe(lif.s_out, 10)
lif.run(condition=RunSteps(num_steps=10), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
s = mon.get_data()[lif.name]["s_out"]
lif.stop()
print(int(s[:, 0].sum()), int(s[:, 1].sum()))
"""
    out = subprocess.run([str(LAVA_PY), "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    strong, weak = map(int, out.stdout.split()[-2:])
    assert strong > weak > 0  # the neuron with the larger weight fires more often
