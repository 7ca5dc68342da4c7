import pytest
import torch
from torch import nn

from quant.allocate import Budget, BudgetError, average_bits, flat_allocate, hierarchical_allocate, ilp_allocate
from quant.hierarchy import build_hierarchy
from quant.sensitivity import Sensitivity


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.self_attn = nn.Module()
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            setattr(self.self_attn, n, nn.Linear(d, d))
        self.mlp = nn.Module()
        self.mlp.up_proj, self.mlp.down_proj = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):  # (B, T, d) -> (B, T, d)
        a = self.self_attn
        h = x + a.o_proj(torch.tanh(a.q_proj(x)) * a.v_proj(x) + a.k_proj(x))
        return h + self.mlp.down_proj(torch.relu(self.mlp.up_proj(h)))


class ToyMultimodal(nn.Module):
    """LLaVA-style names; ``vision_scale`` scales the image features, so a small one makes vision insensitive."""

    def __init__(self, d=16, vocab=32, vision_scale=1.0):
        super().__init__()
        self.vision_scale = vision_scale
        self.vision_tower = nn.Module()
        self.vision_tower.patch_embed = nn.Linear(12, d)
        self.vision_tower.blocks = nn.ModuleList(_Block(d) for _ in range(2))
        self.projector = nn.Linear(d, d)
        self.language_model = nn.Module()
        self.language_model.embed_tokens = nn.Embedding(vocab, d)
        self.language_model.layers = nn.ModuleList(_Block(d) for _ in range(2))
        self.language_model.lm_head = nn.Linear(d, vocab)

    def forward(self, input_ids, pixel_values):  # (B, T), (B, P, 12) -> (B, T, vocab)
        v = self.vision_tower.patch_embed(pixel_values)
        for blk in self.vision_tower.blocks:
            v = blk(v)
        h = self.language_model.embed_tokens(input_ids) + self.vision_scale * self.projector(v).mean(1, keepdim=True)
        for blk in self.language_model.layers:
            h = blk(h)
        return self.language_model.lm_head(h)


def _setup(vision_scale):
    torch.manual_seed(0)
    m = ToyMultimodal(vision_scale=vision_scale).eval()
    batches = [{"input_ids": torch.randint(0, 32, (4, 6)), "pixel_values": torch.randn(4, 5, 12)}]
    root = build_hierarchy(m, groups_per_layer=2)
    return m, root, Sensitivity(m, root, batches, n_probes=4)


def test_ilp_respects_the_budget_and_beats_uniform_at_equal_average_bits():
    torch.manual_seed(0)
    sizes = {f"l{i}": int(s) for i, s in enumerate(torch.randint(10, 1000, (12,)))}
    sens = {k: float(torch.rand(())) * 10 ** float(torch.randint(-3, 2, ())) for k in sizes}
    score = lambda k, b: sens[k] * 4.0 ** -b  # noqa: E731  (quantization noise ~ 4^-b)
    budget = 4 * sum(sizes.values())
    bits = ilp_allocate(list(sizes), (2, 4, 8), score, sizes.__getitem__, budget)
    assert sum(sizes[k] * b for k, b in bits.items()) <= budget
    assert sum(score(k, b) for k, b in bits.items()) <= sum(score(k, 4) for k in sizes)
    assert len(set(bits.values())) > 1  # not uniform: the sensitive layers got more bits
    # Any additive cost works, e.g. a latency per (layer, bits) given as numbers.
    lat = {(k, b): sizes[k] * (1 + b / 8) for k in sizes for b in (2, 4, 8)}
    out = ilp_allocate(list(sizes), (2, 4, 8), score, sizes.__getitem__, 1.6 * sum(sizes.values()),
                       cost=lambda k, b: lat[k, b])
    assert sum(lat[k, b] for k, b in out.items()) <= 1.6 * sum(sizes.values())


def test_budget_below_the_minimum_names_it_and_bad_widths_are_listed():
    sizes = {"a": 100, "b": 300}
    with pytest.raises(BudgetError, match="minimum reachable budget 800") as e:
        ilp_allocate(list(sizes), (2, 4), lambda k, b: 1.0 / b, sizes.__getitem__, 700)
    assert e.value.minimum == 800 and e.value.unsupported == (1,) and isinstance(e.value, ValueError)
    with pytest.raises(BudgetError, match=r"add a narrower supported width \(\[2, 3\]\)"):
        ilp_allocate(list(sizes), (4, 8), lambda k, b: 1.0 / b, sizes.__getitem__, 1000)
    with pytest.raises(ValueError, match=r"unsupported bit widths \[1, 32\]"):
        ilp_allocate(list(sizes), (1, 4, 32), lambda k, b: 1.0 / b, sizes.__getitem__, 1000)
    with pytest.raises(ValueError, match="exactly one of"):
        Budget(avg_bits=4, bytes=10)


def test_hierarchical_meets_the_budget_with_fewer_evaluations_when_a_modality_is_insensitive():
    _, root, sens = _setup(vision_scale=1e-4)
    budget = Budget(avg_bits=4.0)
    levels = ("modality", "block", "sublayer")
    for metric in ("kl", "hawq"):
        hier = hierarchical_allocate(root, sens.fn(metric), (2, 4, 8), budget, levels=levels)
        flat = flat_allocate(root, sens.fn(metric), (2, 4, 8), budget)
        for a in (hier, flat):
            assert a.average_bits <= 4.0 and a.total_cost <= budget.total(root)
            assert a.average_bits == pytest.approx(average_bits(root, a.bits))
            assert set(a.bits) == {leaf.name for leaf in root.leaves()}
        assert hier.cost.evaluations < flat.cost.evaluations
        assert flat.cost.evaluations == 3 * len(root.at_level("sublayer"))
        modality_stage, block_stage = hier.cost.stages[0], hier.cost.stages[1]
        assert modality_stage.evaluations == 9 and block_stage.skipped_low_stake >= 1  # vision never refined
        assert all(hier.bits[leaf.name] == 2 for leaf in root.find("modality:vision").leaves())
        # The flat ILP is at least as good on its own objective (it sees every layer).
        uniform = sum(sens.score(n, 4, metric) for n in root.at_level("sublayer"))
        assert flat.objective <= uniform
    assert hier.cost.ilp_variables == sum(s.ilp_variables for s in hier.cost.stages)


def test_refined_children_choose_only_widths_next_to_their_parents_decision():
    _, root, sens = _setup(vision_scale=1.0)
    asked: dict[str, set[int]] = {}

    def score(node, bits):
        asked.setdefault(node.key, set()).add(bits)
        return sens.score(node, bits, "kl")

    choices = (2, 3, 4, 8)
    alloc = hierarchical_allocate(root, score, choices, Budget(avg_bits=4.0), levels=("modality", "block", "sublayer"),
                                  refine_threshold=0.0)
    assert alloc.average_bits <= 4.0
    subs = [n for n in root.at_level("sublayer") if n.key in asked]
    assert subs and all(len(asked[n.key]) <= 3 for n in subs)  # one step around the block's width, not all four
    for n in subs:
        b = sorted(asked[n.key])
        assert all(choices.index(y) - choices.index(x) == 1 for x, y in zip(b, b[1:]))  # contiguous neighbours
    flat = flat_allocate(root, sens.fn("kl"), choices, Budget(avg_bits=4.0))
    assert alloc.cost.evaluations < flat.cost.evaluations


def test_hierarchical_refines_to_groups_and_bytes_budget():
    _, root, sens = _setup(vision_scale=1.0)
    budget = Budget(bytes=root.params * 5 / 8)  # 5 bits per weight on average
    alloc = hierarchical_allocate(root, sens.fn("kl"), (2, 4, 8), budget, refine_threshold=0.2)
    assert alloc.total_cost <= root.params * 5 and alloc.average_bits <= 5.0
    assert [s.level for s in alloc.cost.stages] == ["modality", "block", "sublayer", "group"]
    rows = alloc.per_module(root)
    assert all(r[-1][1] == sum(r1 - r0 for r0, r1, _ in r) for r in rows.values())  # rows cover each weight
    with pytest.raises(BudgetError, match="minimum reachable budget"):
        hierarchical_allocate(root, sens.fn("kl"), (2, 4, 8), Budget(avg_bits=1.5))
