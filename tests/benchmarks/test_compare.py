import json

import pytest

from benchmarks import compare


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cache = tmp_path_factory.mktemp("cache")
    payload = compare.main(["ann", "snn", "--out", str(out), "--cache-dir", str(cache), "--quiet"])
    return out, cache, payload


def test_writes_rows_with_the_promised_schema(run):
    out, _, payload = run
    on_disk = json.loads((out / "compare.json").read_text())
    assert on_disk["rows"] == json.loads(json.dumps(payload["rows"]))
    keys = {"track", "variant", "task", "accuracy", "params", "macs", "sops", "timesteps", "firing_rate", "energy_uj"}
    for r in on_disk["rows"]:
        assert keys <= set(r)
        assert set(r["energy_uj"]) == {"compute", "memory", "total"}
        assert r["energy_uj"]["total"] == pytest.approx(r["energy_uj"]["compute"] + r["energy_uj"]["memory"])
    ann = [r for r in on_disk["rows"] if r["track"] == "ann"]
    snn = [r for r in on_disk["rows"] if r["track"] == "snn"]
    assert [r["variant"] for r in ann] == ["MLP fp32", "MLP W8A8 (int8 PTQ)"]
    for r in ann:
        assert r["accuracy"] >= 0.95 and r["sops"] == 0 and r["timesteps"] is None and r["macs"] == ann[0]["macs"]
    assert ann[1]["energy_uj"]["total"] < ann[0]["energy_uj"]["total"] / 3  # int8: cheaper MACs, 4x fewer bits moved
    assert [r["timesteps"] for r in snn] == [8, 16, 32, 64]
    for r in snn:
        assert 0 < r["firing_rate"] < 1 and r["sops"] > 0 and r["accuracy"] >= 0.9
    # more timesteps, more synaptic operations (measured from spikes, roughly proportional to T)
    assert snn[-1]["sops"] > 4 * snn[0]["sops"]
    assert (out / "compare.md").is_file() and (out / "compare.png").stat().st_size > 10_000
    names = {t["name"]: t for t in on_disk["targets"]}
    assert names["digits_ann_test_accuracy"]["met"] is True
    assert on_disk["meta"]["machine"]["cpu_count"] >= 1 and on_disk["meta"]["versions"]["torch"]


def test_second_run_uses_the_cached_checkpoint(run, tmp_path):
    _, cache, first = run
    again = compare.main(["ann", "--out", str(tmp_path), "--cache-dir", str(cache), "--quiet"])
    assert again["meta"]["tasks_meta"]["digits"]["ann_training"]["cached"] is True
    assert {r["track"] for r in again["rows"]} == {"ann"}
    assert again["rows"][0]["accuracy"] == first["rows"][0]["accuracy"]


def test_unknown_track_or_task_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as e:
        compare.parse_args(["ann", "cnn"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'cnn'" in err and "ann" in err and "snn" in err
    with pytest.raises(SystemExit):
        compare.parse_args(["ann", "--task", "imagenet"])
    assert "invalid choice: 'imagenet'" in capsys.readouterr().err


def test_corrupt_checkpoint_is_named_and_nothing_is_written(tmp_path):
    ck = tmp_path / "ck"
    ck.mkdir()
    (ck / "config.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"ck/config\.json is corrupt"):
        compare.main(["ann", "--checkpoint", str(ck), "--out", str(tmp_path / "out"), "--quiet"])
    assert not (tmp_path / "out").exists()
