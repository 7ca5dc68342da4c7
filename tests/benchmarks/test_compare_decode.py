"""benchmarks.compare.decode: the decode yardstick of the code rows (replayed calls, KV cache bytes, the spiking
LM's cached decode traced)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.compare import decode
from benchmarks.compare.core import workload_cost
from tests.benchmarks.test_compare_code import tiny_llama


def test_trace_calls_of_a_plain_decode_is_trace_decode():
    """Contract: replaying a plain decode's recorded forward calls costs what trace_decode traces."""
    from benchmarks.compare.core import workload_cost
    from neurohw.workload import Numeric
    from neurohw.workload.reference import trace_decode

    model, P, N = tiny_llama(), 7, 5
    calls: list = []
    with decode.recording(model, calls):
        decode.hf_greedy(model, list(range(3, 3 + P)), N)
    assert calls == [(0, P, 1)] + [(P + i, 1, 1) for i in range(N - 1)]
    a = workload_cost(decode.trace_calls(model, calls, name="replay"))
    b = workload_cost(trace_decode(model, prompt_len=P, new_tokens=N, numeric=Numeric.INT, weight_bits=16, act_bits=16))
    for k in ("cycles", "macs", "latency_ms"):
        assert a[k] == pytest.approx(b[k], rel=1e-9), k
    assert a["energy_uj"]["total"] == pytest.approx(b["energy_uj"]["total"], rel=1e-9)
    with pytest.raises(ValueError, match="one sequence, in order"):
        decode.trace_calls(model, [(0, 3, 1), (5, 1, 1)], name="bad")


def test_kv_cache_bytes_closed_form():
    model = tiny_llama()
    # positions x layers x (K + V) x kv_heads x head_dim x 4 bytes (fp32)
    assert decode.kv_cache_bytes(model, 10) == 10 * 3 * 2 * 2 * 16 * 4
    with pytest.raises(ValueError, match="k_proj"):
        decode.kv_cache_bytes(torch.nn.Linear(2, 2), 10)



def test_the_spiking_decode_costs_each_position_once_one_call_per_step():
    """Contract: the cached decode's linear layers see every fed position once with the full forward's spikes
    (same synaptic operations), in one call for the prompt and one per further token (each fetches its weights
    unless they stay on chip)."""
    from snn.models import SpikingLM, SpikingLMConfig

    torch.manual_seed(0)
    lm = SpikingLM(SpikingLMConfig(dim=32, depth=1, heads=2, max_positions=32, timesteps=3, attn_threshold=0.5)).eval()
    tokens = torch.randint(0, 256, (1, 12))
    w, cache = decode.trace_spiking_decode(lm, tokens, 5, name="decode", weight_bits=8, act_bits=8, state_bits=16)
    assert cache.length == 12 and w.timesteps == 3
    from neurohw.workload import Numeric, trace

    full = trace(lm, tokens, timesteps=3, numeric=Numeric.INT, weight_bits=8, act_bits=8, state_bits=16)
    linear = ("qkv", "proj", "fc1", "fc2")

    def sops(wl):
        return sum(op.sops for op in wl.ops if op.name.endswith(linear))

    assert sops(w) == pytest.approx(sops(full), rel=1e-6) and sops(w) > 0
    assert sum(op.calls for op in w.ops if op.name.endswith("qkv")) == 1 + 12 - 5
    assert sum(op.passes for op in w.ops if op.name.endswith("qkv")) == 1 + 12 - 5  # weights fetched per call
    assert workload_cost(w)["energy_uj"]["total"] > 0
    with pytest.raises(ValueError, match="prompt_len=0"):
        decode.trace_spiking_decode(lm, tokens, 0, name="bad", weight_bits=8, act_bits=8, state_bits=16)


def test_trace_hf_decode_of_a_text_lm_is_trace_decode():
    """Contract: a prefill of P tokens and N - 1 fed steps cost what trace_decode traces for P + N."""
    from neurohw.workload import Numeric
    from neurohw.workload.reference import trace_decode

    model, P, N = tiny_llama(), 6, 4
    ids = torch.randint(3, 259, (1, P + N - 1))
    a = workload_cost(decode.trace_hf_decode(model, {"input_ids": ids[:, :P]}, ids[:, P:], name="hf"))
    b = workload_cost(trace_decode(model, prompt_len=P, new_tokens=N, numeric=Numeric.INT, weight_bits=16, act_bits=16))
    for k in ("cycles", "macs"):
        assert a[k] == pytest.approx(b[k], rel=1e-9), k
    assert a["energy_uj"]["total"] == pytest.approx(b["energy_uj"]["total"], rel=1e-9)
