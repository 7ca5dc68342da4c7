"""python -m snn.quant: search and memory on a saved spiking ViT, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from snn.checkpoint import save_model
from snn.models import Spikformer, SpikformerConfig
from snn.quant.__main__ import main

SHORT = ["--weight-ladder", "8", "4", "--membrane-ladder", "16", "8", "--calib", "32"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("m") / "vit"
    save_model(Spikformer(SpikformerConfig(dim=16, depth=1, heads=2, timesteps=2, engine="fused")).eval(), d)
    return d


def test_search_writes_a_precision_that_memory_reads_back(saved, tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["search", str(saved), "--task", "digits", "--max-drop", "0.5", "--out", str(out), *SHORT]) == 0
    report = json.loads((out / "search.json").read_text())
    prec = json.loads((out / "precision.json").read_text())
    assert report["method"] == "tiered" and report["best"]["memory_bytes"] <= report["budget_bytes"]
    assert 0 <= report["test_score"] <= 1 and set(prec["weights"].values()) <= {8, 4}
    assert main(["memory", str(saved), "--task", "digits", "--precision", str(out / "precision.json"), "--calib", "32"]) == 0
    text = capsys.readouterr().out
    assert f"memory {report['best']['memory_bytes']:,.0f} bytes" in text


def test_errors_name_the_problem(saved, tmp_path, capsys):
    with pytest.raises(SystemExit, match="bytes needs a byte-level SpikingLM"):
        main(["memory", str(saved), "--task", "bytes", "--weight-bits", "8"])
    # 100 bytes is below anything the ladders can reach: the closest candidate is reported, nothing is written
    code = main(["search", str(saved), "--task", "digits", "--max-memory-bytes", "100", "--out", str(tmp_path / "x"), *SHORT])
    assert code == 2 and "closest found" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["search", str(saved), "--task", "digits", "--max-memory-fraction", "2", "--out", str(tmp_path / "y")])
