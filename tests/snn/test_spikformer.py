"""snn.models.spikformer: shapes, the same network on every neuron engine, learning, tracing, bad input."""

from __future__ import annotations

import pytest
import torch

from neurohw.workload import OpKind, trace
from snn.models import Spikformer, SpikformerConfig
from snn.neurons import Engine

SMALL = dict(image_size=8, patch_size=2, dim=16, depth=1, heads=2, timesteps=3)


def test_the_same_weights_give_the_same_logits_on_every_engine():
    torch.manual_seed(0)
    x = torch.rand(5, 1, 8, 8)
    ref = Spikformer(SpikformerConfig(**SMALL)).eval()
    outs = {}
    for engine in Engine:
        m = Spikformer(SpikformerConfig(**SMALL, engine=engine)).eval()
        missing, unexpected = m.load_state_dict(ref.state_dict(), strict=False)
        # LIF neurons have no parameters: identical networks (snnTorch keeps its constants as buffers)
        assert not unexpected and all("_lif." in k for k in missing)
        outs[engine] = m(x)
    assert outs[Engine.SPIKINGJELLY].shape == (5, 10)
    for engine in Engine:
        torch.testing.assert_close(outs[engine], outs[Engine.SPIKINGJELLY], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ref(x), ref(x))  # state is reset between calls


def test_it_learns_a_small_digits_subset():
    from tasks.digits import load_digits_split

    torch.manual_seed(0)
    tr = load_digits_split("train")
    x, y = tr.x[:64], tr.y[:64]
    m = Spikformer(SpikformerConfig(**{**SMALL, "dim": 32}, engine="fused"))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):  # measured: 2.32 -> 0.99 on this seed
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


def test_trace_counts_spike_driven_attention_as_synaptic_ops():
    torch.manual_seed(0)
    m = Spikformer(SpikformerConfig(**SMALL)).eval()
    w = trace(m, torch.rand(2, 1, 8, 8) * 10, timesteps=SMALL["timesteps"])  # strong input: an untrained net fires
    kinds = {op.kind for op in w.ops}
    assert {OpKind.NEURON, OpKind.SYNAPTIC, OpKind.GEMM} <= kinds
    # every linear layer in the blocks takes spikes (the head takes spike rates averaged over tokens)
    block_linears = [op for op in w.ops if op.function == "linear" and op.name.startswith("blocks.")]
    assert len(block_linears) == 4 and all(op.kind is OpKind.SYNAPTIC for op in block_linears)
    # k^T v is a product of two spike tensors: executed event-driven
    assert any(op.kind is OpKind.SYNAPTIC and op.function == "matmul" for op in w.ops)
    assert w.firing_rate is not None and 0 < w.firing_rate < 1


def test_bad_configs_and_inputs_are_refused():
    with pytest.raises(ValueError, match="SpikformerConfig.heads=3"):
        SpikformerConfig(dim=16, heads=3)
    with pytest.raises(ValueError, match="SpikformerConfig.timesteps=0"):
        SpikformerConfig(timesteps=0)
    with pytest.raises(ValueError, match="SpikformerConfig.patch_size=3"):
        SpikformerConfig(image_size=8, patch_size=3)
    m = Spikformer(SpikformerConfig(**SMALL))
    with pytest.raises(ValueError, match=r"expected images \(B, 1, 8, 8\)"):
        m(torch.rand(2, 3, 8))
    with pytest.raises(ValueError, match=r"expected \(T, B, 1, 8, 8\)"):
        m.forward_sequence(torch.rand(3, 2, 1, 7, 7))
