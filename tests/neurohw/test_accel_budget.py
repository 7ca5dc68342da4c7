"""neurohw.accel.budget: latency / energy budgets for quant's bit allocation."""

import pytest
import torch
import transformers as T

from neurohw.accel import PRESETS
from neurohw.accel.budget import allocation_cost_fn
from quant.allocate import Budget, flat_allocate
from quant.hierarchy import Level, build_hierarchy


def _root():
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    return build_hierarchy(m, groups_per_layer=2)


def test_costs_add_up_the_tree_energy_falls_with_bits_and_drives_the_ilp():
    root = _root()
    cost = allocation_cost_fn(PRESETS["default"], root, tokens=1)
    block = root.at_level(Level.BLOCK)[0]
    subs = block.at_level(Level.SUBLAYER)
    assert cost(block, 4) == pytest.approx(sum(cost(s, 4) for s in subs))  # additive, as Budget needs
    s = subs[0]
    assert cost(s, 4) == pytest.approx(sum(cost(g, 4) for g in s.children))
    # one decoding token uses one row of the output-stationary array: compute-bound, so narrower weights do not
    # shorten it; they do save the energy of moving them
    assert 0 < cost(root, 2) <= cost(root, 4) <= cost(root, 8)
    energy = allocation_cost_fn(PRESETS["default"], root, metric="energy")
    assert 0 < energy(root, 2) < energy(root, 4) < energy(root, 8)
    # An energy budget between uniform 4 and 8 bits: the ILP meets it with a mixed configuration.
    limit = 0.5 * (energy(root, 4) + energy(root, 8))
    score = lambda n, b: n.params * 4.0 ** -b * (10.0 if "v_proj" in n.name else 1.0)  # noqa: E731
    alloc = flat_allocate(root, score, (4, 8), Budget(limit=limit, cost_fn=energy))
    assert alloc.total_cost <= limit * (1 + 1e-9) and len(set(alloc.bits.values())) == 2
    with pytest.raises(ValueError, match="metric"):
        allocation_cost_fn(PRESETS["default"], root, metric="area")
    with pytest.raises(ValueError, match="tokens"):
        allocation_cost_fn(PRESETS["default"], root, tokens=0)
