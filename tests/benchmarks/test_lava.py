"""benchmarks.lava end to end on a tiny profile (one training epoch, one Lava sample per network)."""

from pathlib import Path

import pytest

import benchmarks.lava as bl

HAS_LAVA = (Path(__file__).resolve().parents[2] / ".venv-lava" / "bin" / "python").exists()


@pytest.mark.slow
@pytest.mark.lava
@pytest.mark.skipif(not HAS_LAVA, reason=".venv-lava not built (NEUROMFM_SKIP_LAVA=1 or no Python 3.10)")
def test_lava_benchmark_runs_and_writes_its_results(tmp_path, monkeypatch):
    monkeypatch.delenv("NEUROMFM_LAVA_PYTHON", raising=False)
    monkeypatch.setitem(bl.PROFILES, "quick", bl.Profile(epochs=1, lava_samples=1, eval_t=(2, 4)))
    out = bl.main(["--out", str(tmp_path), "--quiet"])
    assert set(out["networks"]) == {"digits_mlp", "digits_cnn", "digits_converted_mlp", "mixed_deep"}
    for name, r in out["networks"].items():
        assert r["lava"]["bit_exact"], name  # exactness does not depend on training
        assert r["lava"]["lava_spike_count"] > 0 and r["evaluation"]["energy"]["total_j"] > 0
    names = {t["name"] for t in out["targets"]}
    assert "digits_converted_mlp_float_minus_deployed_accuracy_T16" in names and "mixed_deep_bit_exact_vs_lava" in names
    assert set(out["accuracy_vs_T"]) == {"digits_mlp", "digits_cnn", "digits_converted_mlp"}
    assert (tmp_path / "lava.json").is_file() and (tmp_path / "lava_accuracy_vs_T.png").stat().st_size > 0
