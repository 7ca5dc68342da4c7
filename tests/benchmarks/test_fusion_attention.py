"""benchmarks.fusion_attention on tiny lengths: the result's shape, the memory probe, the plot and the CLI."""

import json

import pytest

import benchmarks.fusion_attention as fa


def _fake_probe(impl, length, **kw):  # the real probe (a fresh process each) is tested once, below
    return {"peak_extra_bytes": {"naive": 3 * length**2}.get(str(getattr(impl, "value", impl)), length), "exact": True,
            "output_bytes": length, "peak_reset": True}


def test_long_sequence_comparison_on_tiny_lengths(tmp_path, monkeypatch):
    monkeypatch.setattr(fa, "peak_memory", _fake_probe)
    monkeypatch.setattr(fa, "NAIVE_LIMIT_BYTES", 2 * 8 * 96 * 96 * 4 - 1)  # naive skipped at L=96 only
    logs = []
    out = fa.long_sequence_comparison("quick", logs.append, lengths=(32, 96), heads=8, head_dim=16, threads=1,
                                      rounds=1)
    assert [r["length"] for r in out["rows"]] == [32, 96] and len(logs) == 2
    first, last = out["rows"]
    for impl in ("naive", "tiled", "sdpa"):
        x = first[impl]
        assert x["seconds"] > 0 and x["peak_extra_bytes"] >= 0 and x["diff_against"] == "naive"
        assert x["max_abs_diff"] < 1e-5  # fp32; see tests/ann/test_fusion_attention.py
    assert first["naive"]["max_abs_diff"] == 0
    assert last["naive"]["seconds"] is None and last["tiled"]["diff_against"] == "sdpa"
    p = first["predicted_dram_bytes"]
    assert p["naive"] > p["flash"] > 0 and p["naive_over_flash"] == pytest.approx(p["naive"] / p["flash"])
    assert first["naive"]["peak_extra_bytes"] == 3 * 32**2 and "naive/tiled 96.00x" in out["conclusion"]
    assert "L=96" in out["conclusion"] and "skipped" in out["conclusion"]
    assert out["setup"]["threads"] == 1
    json.dumps(out)
    assert fa.plot(out, tmp_path / "a.png").is_file()
    assert "naive MiB" in fa.table(out)


def test_memory_probe_sees_naive_scores():
    length, heads = 1024, 2  # naive: S and P are 2 * 2 * 1024^2 * 4 bytes = 16 MiB
    naive = fa.peak_memory("naive", length, heads=heads, head_dim=16, threads=1)
    tiled = fa.peak_memory("tiled", length, heads=heads, head_dim=16, threads=1)
    if not naive["peak_reset"]:
        pytest.skip("this kernel does not allow resetting the peak RSS (/proc/self/clear_refs)")
    assert naive["peak_extra_bytes"] >= 0.9 * fa.naive_score_bytes(1, heads, length)
    assert tiled["peak_extra_bytes"] < naive["peak_extra_bytes"] / 2


def test_bad_profile_is_refused():
    with pytest.raises(ValueError, match="profile must be one of"):
        fa.long_sequence_comparison("medium", print)


def test_cli_writes_json_and_png(tmp_path, monkeypatch):
    monkeypatch.setattr(fa, "peak_memory", _fake_probe)
    monkeypatch.setitem(fa.LENGTHS, "quick", (16,))
    monkeypatch.setitem(fa.ROUNDS, "quick", 1)
    payload = fa.main(["--out", str(tmp_path), "--threads", "1", "--quiet"])
    data = json.loads((tmp_path / "fusion_attention.json").read_text())
    assert data["rows"][0]["length"] == 16 and data["meta"]["profile"] == "quick" and "targets" in data
    assert (tmp_path / "fusion_attention.png").is_file() and (tmp_path / "fusion_attention.md").is_file()
    assert payload["conclusion"] == data["conclusion"]
