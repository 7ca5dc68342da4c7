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
    monkeypatch.setattr(br, "VECTOR_LANES", {"quick": (2,), "full": (2,)})
    monkeypatch.setattr(br, "VECTOR_SHAPES", {"softmax": (3, 5), "gelu": (2, 6), "layernorm": (3, 4)})
    out = br.main(["--out", str(tmp_path), "--quiet", "--no-llm"])
    saved = json.loads((tmp_path / "rtl.json").read_text())
    assert len(saved["runs"]) == 3 * 2 * 2 and all(r["bit_exact"] and r["cycles_agree"] for r in saved["runs"])
    assert {c["dataflow"] for c in saved["configurations"]} == {"os", "ws"}
    assert saved["configurations"][0]["resources"]["multipliers"] == 4
    units = saved["vector_units"]
    assert [u["unit"] for u in units] == ["softmax", "gelu", "layernorm"]
    assert all(u["bit_exact"] and u["rtl_cycles"] == u["stated_cycles"] for u in units)
    assert units[1]["rtl_cycles"] == units[1]["model_cycles"] == 6  # GELU streams 12 elements over 2 lanes
    assert all(t["met"] for t in out["targets"])


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="Icarus Verilog is not installed (make setup installs it)")
def test_the_llm_aided_loop_generates_and_verifies_the_chosen_design(monkeypatch):
    import numpy as np

    class Scripted:  # stands in for SmolLM2: always proposes the same small design
        def complete(self, messages):
            return '{"rows": 4, "cols": 8, "dataflow": "ws", "ifmap_sram_kb": 64, "weight_sram_kb": 64, ' \
                   '"ofmap_sram_kb": 64, "dram_bytes_per_cycle": 32}'

    monkeypatch.setattr(br, "SHAPES", ((3, 5, 4),))
    loop = br.run_dse_loop(0, 2, Scripted(), np.random.default_rng(0), lambda m: None)
    assert loop["dse"]["details"]["accepted_from_llm"] >= 1
    assert loop["verified"] and loop["runs"][0]["bit_exact"] and loop["runs"][0]["cycles_agree"]
    assert loop["outcome"].endswith("bit-exact and cycle-exact on 1 GEMMs")
