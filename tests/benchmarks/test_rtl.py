"""benchmarks.rtl end to end on small arrays and shapes (the real profiles simulate up to 32 x 32)."""

from __future__ import annotations

import json
import shutil

import pytest

import benchmarks.rtl as br


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog is not installed (make setup installs it)")
def test_rtl_benchmark_writes_exactness_cycles_resources_and_targets(tmp_path, monkeypatch):
    monkeypatch.setattr(br, "ARRAYS", {"quick": ((2, 2), (3, 2), (4, 3)), "full": ((2, 2),)})
    monkeypatch.setattr(br, "SHAPES", ((3, 5, 4), (2, 2, 2)))
    out = br.main(["--out", str(tmp_path), "--quiet"])
    saved = json.loads((tmp_path / "rtl.json").read_text())
    assert len(saved["runs"]) == 3 * 2 * 2 and all(r["bit_exact"] and r["cycles_agree"] for r in saved["runs"])
    assert {c["dataflow"] for c in saved["configurations"]} == {"os", "ws"}
    assert saved["configurations"][0]["resources"]["multipliers"] == 4
    assert all(t["met"] for t in out["targets"])
