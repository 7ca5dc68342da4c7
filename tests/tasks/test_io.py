import json
import os

import pytest
import torch

from tasks.io import atomic_write_json, atomic_write_text, load_tensors, read_json, save_tensors


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_json(p, {"x": 1})
    atomic_write_json(p, {"x": 2})
    assert read_json(p) == {"x": 2}
    assert os.listdir(p.parent) == ["a.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_text(p, "old")
    with pytest.raises(ValueError):
        atomic_write_json(p, {"x": float("nan")})  # NaN is refused before anything is written
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.json"]


def test_read_json_names_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_json(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is corrupt"):
        read_json(bad)


def test_tensors_round_trip_and_corrupt_file(tmp_path):
    t = {"w": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(tmp_path / "m.safetensors", t)
    back = load_tensors(tmp_path / "m.safetensors")
    assert all(torch.equal(t[k], back[k]) for k in t)
    raw = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"cut\.safetensors is corrupt"):
        load_tensors(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_tensors(tmp_path / "missing.safetensors")
    assert json.loads(json.dumps(sorted(back)))  # keys are plain strings
