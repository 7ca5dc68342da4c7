"""snn.models.spiking_lm: causality, the cached decode, learning, engines, tracing, bad input."""

from __future__ import annotations

import pytest
import torch

from neurohw.workload import OpKind, trace
from snn.models import SpikingLM, SpikeKVCache, SpikingLMConfig
from snn.neurons import Engine

SMALL = dict(dim=32, depth=1, heads=2, max_positions=32, timesteps=3)


def test_logits_depend_only_on_past_tokens():
    torch.manual_seed(0)
    m = SpikingLM(SpikingLMConfig(**SMALL)).eval()
    x = torch.randint(0, 256, (2, 20))
    y = x.clone()
    y[:, 12:] = torch.randint(0, 256, (2, 8))  # change the future from position 12 on
    a, b = m(x), m(y)
    assert a.shape == (2, 20, 256)
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)  # exact: the causal mask zeroes the future
    assert not torch.equal(a[:, 12:], b[:, 12:])


def _spiky_lm(seed: int = 0) -> SpikingLM:
    torch.manual_seed(seed)
    return SpikingLM(SpikingLMConfig(**SMALL, attn_threshold=0.5)).eval()


def test_cached_steps_give_the_full_forwards_logits():
    m = _spiky_lm()
    x = torch.randint(0, 256, (2, 20))
    full = m(x)
    cache = SpikeKVCache()
    parts = [m(x[:, :9], cache)] + [m(x[:, n:n + 1], cache) for n in range(9, 16)] + [m(x[:, 16:], cache)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x, logits_to_keep=3), full[:, -3:], rtol=1e-5, atol=1e-5)
    assert cache.length == 20
    # binary key / value spikes: 2 per block, timestep, position and width
    assert cache.spike_count() == 2 * SMALL["depth"] * SMALL["timesteps"] * 2 * 20 * SMALL["dim"]
    assert all(bool(((t == 0) | (t == 1)).all()) for b in cache.blocks for t in b.values())


def test_generate_equals_greedy_decoding_without_a_cache():
    m = _spiky_lm(1)
    prompt = torch.randint(0, 256, (1, 7))
    ids = prompt.clone()
    for _ in range(6):  # the window again for every token
        ids = torch.cat([ids, m(ids)[:, -1:].argmax(-1)], dim=1)
    cache = SpikeKVCache()
    assert torch.equal(m.generate(prompt, 6, cache), ids[:, 7:])
    assert cache.length == 7 + 6 - 1


def test_the_cache_is_refused_where_it_would_be_wrong():
    m = _spiky_lm()
    with pytest.raises(ValueError, match="needs eval mode"):
        m.train()(torch.zeros(1, 4, dtype=torch.long), SpikeKVCache())
    m.eval()
    cache = SpikeKVCache()
    m(torch.zeros(1, 30, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="sequence length 33 exceeds max_positions=32"):
        m(torch.zeros(1, 3, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="pass an empty SpikeKVCache"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 2, cache)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        m.generate(torch.zeros(1, 2, dtype=torch.long), 0)


def test_same_weights_same_logits_on_every_engine():
    torch.manual_seed(0)
    ref = SpikingLM(SpikingLMConfig(**SMALL)).eval()
    x = torch.randint(0, 256, (2, 16))
    for engine in Engine:
        m = SpikingLM(SpikingLMConfig(**SMALL, engine=engine)).eval()
        missing, unexpected = m.load_state_dict(ref.state_dict(), strict=False)
        assert not unexpected and all("_lif." in k for k in missing)
        torch.testing.assert_close(m(x), ref(x), rtol=1e-5, atol=1e-5)


def test_it_learns_repeated_code():
    torch.manual_seed(0)
    data = torch.tensor(list(b"def add(a, b):\n    return a + b\n\n" * 20))
    m = SpikingLM(SpikingLMConfig(**{**SMALL, "dim": 64, "depth": 2}))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):  # measured: about 8 -> 2 bits per byte
        i = torch.randint(0, len(data) - 33, (8,))
        x = torch.stack([data[j : j + 33] for j in i])
        loss = torch.nn.functional.cross_entropy(m(x[:, :-1]).reshape(-1, 256), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_trace_counts_the_causal_spike_products():
    torch.manual_seed(0)
    m = SpikingLM(SpikingLMConfig(**SMALL, attn_threshold=0.5)).eval()
    w = trace(m, torch.randint(0, 256, (2, 16)), timesteps=SMALL["timesteps"])
    assert any(op.kind is OpKind.EMBEDDING for op in w.ops)
    assert any(op.kind is OpKind.SYNAPTIC and op.function == "matmul" for op in w.ops)
    assert all(op.b_binary for op in w.ops if op.function == "matmul")  # k^T and v are spikes
    assert w.firing_rate is not None and 0 < w.firing_rate < 1


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="SpikingLMConfig.heads=3"):
        SpikingLMConfig(dim=32, heads=3)
    m = SpikingLM(SpikingLMConfig(**SMALL))
    with pytest.raises(ValueError, match="exceeds max_positions=32"):
        m(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 256\)"):
        m(torch.full((1, 4), 300))
    with pytest.raises(ValueError, match=r"expected integer tokens \(B, N\)"):
        m(torch.rand(1, 4))
