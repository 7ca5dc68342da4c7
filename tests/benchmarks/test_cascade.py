"""Pieces of benchmarks.cascade that run without trained tiers: threshold choice on val reported on test, targets,
plot and strict-JSON output."""

import json

import numpy as np

import benchmarks.cascade as bc
from ann.cascade import TierRun


def _tiers(seed, n=300):
    rng = np.random.default_rng(seed)
    hard = rng.random(n)
    out = {}
    for name, solves, flops in (("tiny", 0.55, 1.0), ("small", 0.7, 4.0), ("large", 0.9, 50.0)):
        q = (hard < solves).astype(float)
        score = np.clip(q * 0.8 + 0.3 * rng.random(n), 0, 1)  # a self-test that mostly knows
        z = np.zeros(n)
        tested = TierRun(name, q, score, np.full(n, 2 * flops), np.full(n, flops / 10), np.full(n, flops), np.full(n, 0.1))
        greedy = TierRun(name, q, np.full(n, np.nan), np.full(n, flops), np.full(n, flops / 20), z, z)
        out[name] = (tested, greedy)
    return out


def test_thresholds_chosen_on_val_are_reported_on_test_and_written_as_strict_json(tmp_path):
    r = bc._cascade("progsynth", {"val": _tiers(0), "test": _tiers(1)}, 0.01, extra={})
    assert set(r["cascades"]) == {"tiny -> large", "tiny -> small -> large", "small -> large"}
    best = r["cascades"][r["best"]]
    feasible = [k for k, c in r["cascades"].items() if c["val"]["feasible"]]
    assert r["best"] == min(feasible, key=lambda k: r["cascades"][k]["val"]["flops"])  # chosen on val, not on test
    only = bc._cascade("progsynth", {"val": _tiers(0), "test": _tiers(1)}, 0.01, extra={}, chains=[["small", "large"]])
    assert list(only["cascades"]) == ["small -> large"] and only["best"] == "small -> large"
    assert best["val"]["quality"] >= r["largest"]["val"]["quality"] - 0.01  # the budget holds where it was chosen
    assert best["flops_saved"] > 0.4 and abs(best["quality_lost"]) < 0.05
    assert r["per_tier"]["tiny"]["test"]["pass@1"] == float(_tiers(1)["tiny"][1].quality.mean())
    t = {x.name: x for x in bc._targets({"progsynth": r})}
    assert t["progsynth_flops_saved"].met == (best["flops_saved"] >= 0.4)
    assert t["cascade_any_task"].met == (t["progsynth_flops_saved"].met and t["progsynth_quality_lost"].met)
    assert t["progsynth_tiers_differ"].met  # 0.55 vs 0.9 solved
    # every tier at 0: stopping at the cheapest "saves" everything and loses nothing, which must not count
    zero = {s: {n: tuple(TierRun(x.name, 0 * x.quality, x.score, x.flops, x.seconds, x.test_flops, x.test_seconds)
                         for x in v) for n, v in _tiers(i).items()} for i, s in enumerate(("val", "test"))}
    z = bc._cascade("humaneval", zero, 0.01, extra={})
    tz = {x.name: x for x in bc._targets({"humaneval": z})}
    assert tz["humaneval_flops_saved"].met and tz["humaneval_quality_lost"].met
    assert not tz["humaneval_tiers_differ"].met and not tz["cascade_any_task"].met
    assert bc._plot({"progsynth": r}, tmp_path / "c.png").is_file()
    text = json.dumps(bc._finite(r), allow_nan=False)  # +inf thresholds ("never stops") become null
    assert "Infinity" not in text and "NaN" not in text


def test_main_writes_tables_json_and_plot(tmp_path, monkeypatch):
    fake = {"val": _tiers(0), "test": _tiers(1)}
    monkeypatch.setattr(bc, "_progsynth", lambda *a, **k: bc._cascade("progsynth", fake, 0.01, extra={}))
    two = {s: {n: v[n] for n in ("small", "large")} for s, v in fake.items()}
    monkeypatch.setattr(bc, "_synthmed", lambda *a, **k: bc._cascade("synthmed", two, 0.01, extra={}))
    monkeypatch.setattr(bc, "_humaneval", lambda *a, **k: bc._cascade("humaneval", two, 0.01, extra={}))
    out = bc.main(["--out", str(tmp_path)])
    saved = json.loads((tmp_path / "cascade.json").read_text())
    assert set(saved["tasks"]) == {"progsynth", "humaneval", "synthmed"} and saved["targets"] == out["targets"]
    bc.main(["--out", str(tmp_path), "--only", "humaneval", "synthmed"])
    assert set(json.loads((tmp_path / "cascade.json").read_text())["tasks"]) == {"humaneval", "synthmed"}
    assert (tmp_path / "cascade.png").is_file() and "FLOPs saved" in (tmp_path / "cascade.md").read_text()
