"""benchmarks.compare end to end on the digits rows, with tiny training budgets (the real profiles train for minutes):
every row measured on the one yardstick, the cache reused, bad arguments named, a failing row reported without
losing the others."""

import json

import pytest

import benchmarks.compare as compare
import benchmarks.compare.digits as digits

TINY = {"quick": {"mlp": 20, "vit": 3, "nas_trials": 3, "nas_fast": 1, "qcfs": 3}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setattr(digits, "EPOCHS", TINY)
    mp.setattr(digits, "TIMESTEPS", {"quick": (8, 16)})
    out, cache = tmp_path_factory.mktemp("compare"), tmp_path_factory.mktemp("cache")
    try:
        payload = compare.main(["ann", "snn", "--only", "digits/*", "--out", str(out), "--cache-dir", str(cache), "--quiet"])
        yield out, cache, payload, mp
    finally:
        mp.undo()


def test_every_digits_row_is_measured_on_the_same_yardstick(run):
    out, _, payload, _ = run
    saved = json.loads((out / "compare.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(payload["rows"]))
    rows = {r["variant"]: r for r in saved["rows"]}
    assert not [r for r in saved["rows"] if r["error"]], [r["error"] for r in saved["rows"] if r["error"]]
    assert [r["id"] for r in saved["rows"]] == ["digits/ann-fp32", "digits/ann-w8a8", "digits/snn-converted",
                                                "digits/snn-converted", "digits/snn-loihi", "digits/snn-trained",
                                                "digits/snn-quant", "digits/snn-nas"]
    for r in saved["rows"]:
        a, m = r["accel"], r["memory_bytes"]
        assert a["cycles"] > 0 and a["energy_uj"]["total"] == pytest.approx(a["energy_uj"]["compute"] + a["energy_uj"]["data_movement"])
        assert m["total"] == pytest.approx(m["weights"] + m["state"]) and r["cpu_ms_per_sample"] > 0
        assert 0 <= r["quality"] <= 1 and r["reproduce"].startswith("python -m benchmarks.compare")
    fp32, int8 = rows["MLP fp32"], rows["MLP W8A8 (int8 PTQ)"]
    assert fp32["quality"] >= 0.9 and fp32["accel"]["bits"] == "W16A16" and int8["accel"]["bits"] == "W8A8"
    assert int8["accel"]["energy_uj"]["total"] < fp32["accel"]["energy_uj"]["total"]
    assert int8["memory_bytes"]["weights"] < fp32["memory_bytes"]["weights"] / 3 and fp32["memory_bytes"]["state"] == 0
    t8, t16 = rows["converted IF T=8"], rows["converted IF T=16"]
    assert t16["accel"]["sops"] > 1.5 * t8["accel"]["sops"] and 0 < t8["firing_rate"] < 1
    assert t8["memory_bytes"]["state"] == t16["memory_bytes"]["state"] == (256 + 256) * 4  # fp32 hidden membranes, once
    loihi = next(r for r in saved["rows"] if r["id"] == "digits/snn-loihi")
    assert loihi["loihi"]["energy_uj"] > loihi["loihi"]["dynamic_uj"] > 0 and loihi["loihi"]["time_ms"] > 0
    vit, q, nas = (next(r for r in saved["rows"] if r["id"] == f"digits/snn-{k}") for k in ("trained", "quant", "nas"))
    assert q["memory_bytes"]["total"] <= 0.3 * vit["memory_bytes"]["total"] * 1.01  # snn.quant's memory constraint
    assert nas["memory_bytes"]["total"] <= vit["memory_bytes"]["total"] and vit["timesteps"] == 4
    for f in ("compare.md", "compare.png", "compare_energy.png"):
        assert (out / f).stat().st_size > 1000
    md = (out / "compare.md").read_text()
    assert "## Reproduce" in md and "--only digits/snn-nas" in md
    assert {t["name"]: t["met"] for t in saved["targets"]}["rows_failed"] is True


def test_a_second_run_reads_every_checkpoint_from_the_cache(run, tmp_path):
    _, cache, first, _ = run
    again = compare.main(["ann", "snn", "--only", "digits/snn-trained", "--only", "digits/ann-fp32", "--out", str(tmp_path),
                          "--cache-dir", str(cache), "--quiet"])
    assert again["meta"]["trained_this_run"] == []
    q = {r["variant"]: r["quality"] for r in first["rows"]}
    assert all(r["quality"] == q[r["variant"]] for r in again["rows"])


def test_a_failing_row_is_reported_and_the_others_stand(monkeypatch, tmp_path):
    def broken(ctx):
        raise RuntimeError("out of coffee")

    rows = [compare.RowSpec("digits/broken", "digits", "ann", broken, "a row that fails")]
    monkeypatch.setattr(compare, "ROWS", rows + [r for r in compare.ROWS if r.id == "digits/ann-fp32"])
    monkeypatch.setattr(digits, "EPOCHS", TINY)
    payload = compare.main(["ann", "--out", str(tmp_path), "--cache-dir", str(tmp_path / "c"), "--quiet"])
    err, ok = payload["rows"]
    assert err["error"] == "RuntimeError: out of coffee" and ok["error"] is None and ok["quality"] > 0.5
    assert {t["name"]: t["met"] for t in payload["targets"]}["rows_failed"] is False
    assert "out of coffee" in payload["meta"]["failures"][0]["traceback"]
    assert "## Failed rows" in (tmp_path / "compare.md").read_text()


def test_bad_arguments_name_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        compare.parse_args(["ann", "cnn"])
    assert e.value.code == 2 and "invalid choice: 'cnn'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["ann", "--task", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["ann", "--only", "digits/nope"])
    err = capsys.readouterr().err
    assert "matches no row" in err and "digits/ann-fp32" in err
    with pytest.raises(SystemExit):
        compare.parse_args(["ann", "--threads", "0"])
    assert "--threads 0 is invalid" in capsys.readouterr().err


def test_a_cache_entry_is_remade_when_its_config_or_its_source_changes(monkeypatch, tmp_path):
    import benchmarks.models as bm
    from benchmarks.compare.core import Context, cached_dir

    ctx = Context(profile="quick", seed=0, cache_dir=tmp_path, log=lambda m: None, progress=False)
    made = []

    def make(folder):
        made.append(folder)
        (folder / "x.txt").write_text(str(len(made)))

    source = {"v": "first"}
    monkeypatch.setattr(bm, "code_fingerprint", lambda paths: f"{paths} {source['v']}")
    a, cached_a = cached_dir(ctx, "entry", {"k": 1}, make, code=("quant",))
    b, cached_b = cached_dir(ctx, "entry", {"k": 1}, make, code=("quant",))
    assert (cached_a, cached_b, a, len(made)) == (False, True, b, 1)
    source["v"] = "edited"
    c, cached_c = cached_dir(ctx, "entry", {"k": 1}, make, code=("quant",))
    d, _ = cached_dir(ctx, "entry", {"k": 2}, make, code=("quant",))
    assert not cached_c and len({a, c, d}) == 3 and len(made) == 3 and (c / "x.txt").read_text() == "2"
