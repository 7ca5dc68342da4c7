"""snn.quant: fixed-point neurons, BatchNorm folding, memory at bit widths, building quantized copies, and the
QSViT-style and tiered searches (constraints, search cost, unsatisfiable constraints)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from snn.models import Spikformer, SpikformerConfig
from snn.neurons import NeuronSpec, build_neuron, neuron_multistep
from snn.quant import (Constraints, ConstraintsUnsatisfiable, QuantNeuron, SpikingPrecision, SpikingQuantizer,
                       fold_batchnorm, membrane_range, neuron_spec_of, qsvit_search, spiking_memory, tiered_search)

SMALL = dict(image_size=8, patch_size=2, dim=16, depth=1, heads=2, timesteps=3)


def _random_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = _random_bn(Spikformer(SpikformerConfig(**SMALL, engine="fused")))
    x = torch.rand(48, 1, 8, 8)
    return model, x, SpikingQuantizer(model, x)


@pytest.mark.parametrize("spec", [NeuronSpec(kind="lif", tau=2.0), NeuronSpec(kind="lif", tau=3.0, v_reset=None),
                                  NeuronSpec(kind="if", v_threshold=0.7), NeuronSpec(kind="lif", decay_input=False)])
def test_float_state_is_the_reference_dynamics(spec):
    x = torch.randn(6, 4, 5) * 1.5
    ref, _ = neuron_multistep(spec, x)
    out = QuantNeuron(spec, inv_tau=1 / spec.tau)(x)
    assert torch.equal(out, ref)


def test_spec_is_read_back_from_every_engine():
    spec = NeuronSpec(kind="lif", tau=3.0, v_threshold=0.8, v_reset=0.0)
    for engine in ("spikingjelly", "snntorch", "fused"):
        got, inv = neuron_spec_of(build_neuron(spec, engine=engine))
        assert (got.kind, got.v_threshold, got.v_reset) == (spec.kind, spec.v_threshold, spec.v_reset)
        assert inv == pytest.approx(1 / 3)


def test_membrane_grid_threshold_register_and_decay():
    spec = NeuronSpec(kind="lif", tau=3.0, v_threshold=1.0)
    n = QuantNeuron(spec, inv_tau=1 / 3, membrane_bits=24, threshold_bits=17, decay_bits=12, v_range=2.0)
    code = n.threshold / n.scale
    assert code == pytest.approx(round(code)) and round(code) % 64 == 0  # 17-bit register, top bits of a 24-bit v
    assert n.k == round(4096 / 3) / 4096
    coarse = QuantNeuron(spec, inv_tau=1 / 3, membrane_bits=3, v_range=1.0)  # codes -4..3, s = 1/3
    x = torch.full((4, 1, 1), 0.2)
    # H0 = 0.2/3 -> code 0; the membrane never leaves 0 on this grid, so it never fires (float would)
    assert coarse(x).sum() == 0 and QuantNeuron(spec, inv_tau=1 / 3)(torch.full((4, 1, 1), 2.0)).sum() > 0
    with pytest.raises(ValueError, match="v_range"):
        QuantNeuron(spec, inv_tau=0.5, membrane_bits=8)
    with pytest.raises(ValueError, match="membrane_bits"):
        QuantNeuron(spec, inv_tau=0.5, membrane_bits=1, v_range=1.0)


def test_membrane_range_hard_reset_needs_only_the_negative_side():
    hard, soft = NeuronSpec(v_threshold=1.0), NeuronSpec(v_threshold=1.0, v_reset=None)
    h = torch.tensor([-3.0] + [0.0] * 50_000 + [7.0])
    assert membrane_range(hard, torch.tensor([-0.5, 5.0])) == 1.0  # above the threshold everything fires
    assert membrane_range(soft, torch.tensor([-0.5, 5.0])) == pytest.approx(5.0, rel=1e-3)
    assert membrane_range(hard, h) < 3.0  # one outlier in 50k saturates instead of stretching the grid


def test_batchnorm_folding_is_exact(small):
    model, x, q = small
    folded, names = fold_batchnorm(model, x)
    assert len(names) == 6 and not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(q.build(SpikingPrecision(decay_bits=None))(x), model(x), rtol=1e-4, atol=1e-4)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_memory_is_counted_at_the_bit_widths():
    torch.manual_seed(0)
    from snn.runtime import DirectEncodingSNN

    net = DirectEncodingSNN(net=nn.Sequential(nn.Linear(4, 3), build_neuron(NeuronSpec(), engine="fused")), timesteps=2)
    x = torch.rand(5, 4)
    floats = spiking_memory(net, x)
    assert floats.weights == {"net.0.weight": 12 * 32, "net.0.bias": 3 * 32} and floats.state == {"net.1": 3 * 32 + 32}
    spec, inv = neuron_spec_of(net.net[1])
    net.net[1] = QuantNeuron(spec, inv_tau=inv, membrane_bits=6, threshold_bits=4, v_range=1.0)
    rep = spiking_memory(net, x, weight_bits={"net.0.weight": 4})
    assert rep.weights["net.0.weight"] == 12 * 4 + 3 * 32  # codes + one float32 scale per row
    assert rep.state == {"net.1": 3 * 6 + 4}
    assert rep.total_bytes == (12 * 4 + 3 * 32 + 3 * 32 + 3 * 6 + 4) / 8
    with pytest.raises(KeyError, match="nope"):
        spiking_memory(net, x, weight_bits={"nope": 4})


def test_build_quantizes_weights_per_row_and_refuses_unknown_names(small):
    model, x, q = small
    assert q.blocks == ["embed", "blocks.0", "head"]
    assert {i.kind for i in q.items} == {"weight", "membrane"}
    p = q.uniform(weight_bits=3, membrane_bits=6)
    built = q.build(p)
    w = built.get_submodule("blocks.0.fc1").weight
    for row in w:
        assert row.unique().numel() <= 7  # 3-bit symmetric: codes -3..3
    assert q.memory(p).total_bytes < 0.2 * q.memory().total_bytes
    assert all(isinstance(m, QuantNeuron) and m.membrane_bits == 6 for n, m in built.named_modules() if n.endswith("_lif"))
    with pytest.raises(KeyError, match="blocks.9"):
        q.build(SpikingPrecision(weights={"blocks.9.qkv.weight": 4}))
    with pytest.raises(ValueError, match="weights"):
        SpikingPrecision(weights={"pos": 1})


def _agreement(model: nn.Module, x: torch.Tensor):
    with torch.no_grad():
        ref = model(x).argmax(-1)

    def evaluate(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m(x).argmax(-1) == ref).float().mean())
    return evaluate


def test_searches_meet_the_constraints_and_the_tiered_one_costs_less(small):
    model, x, q = small
    evaluate = _agreement(model, x)
    c = Constraints(max_drop=0.1, max_memory_fraction=0.3)
    tiered = tiered_search(q, evaluate, c, progress=False)
    flat = qsvit_search(q, evaluate, c, progress=False)
    for r in (tiered, flat):
        assert r.best.feasible and r.best.memory_bytes <= 0.3 * r.memory_ref
        assert r.best.score >= r.score_ref - 0.1 and r.score_ref == 1.0
        assert r.evaluations == sum(r.stage_evaluations.values())
        assert evaluate(q.build(r.best.precision)) == r.best.score  # the answer is reproducible
    assert flat.stage_evaluations["sensitivity"] == sum(6 if i.kind == "weight" else 8 for i in q.items)
    assert set(tiered.stage_evaluations) <= {"reference", "global", "block", "module"}
    assert tiered.evaluations < flat.evaluations


def test_unsatisfiable_constraints_name_the_closest_candidate(small):
    model, x, q = small
    with pytest.raises(ConstraintsUnsatisfiable, match="closest found") as err:
        tiered_search(q, _agreement(model, x), Constraints(max_drop=0.0, max_memory_bytes=100.0), progress=False,
                      module_top_k=2, max_passes=1)
    assert err.value.closest.memory_bytes > 100.0
    with pytest.raises(ValueError, match="max_memory_fraction"):
        Constraints(max_memory_fraction=1.5)
    with pytest.raises(ValueError, match="max_drop"):
        Constraints(max_drop=-1)
