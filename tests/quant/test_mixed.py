"""quant.mixed: uniform configs and the validated penalty path of mixed precision."""

import pytest
import torch
import transformers as T

from quant.allocate import Budget
from quant.hierarchy import Level, build_hierarchy
from quant.mixed import PENALTIES, kl_validator, mixed_config, uniform_config
from quant.quantizer import QuantSpec
from quant.sensitivity import Sensitivity


def _setup():
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    batches = [{"input_ids": torch.randint(0, 64, (2, 12))} for _ in range(2)]
    root = build_hierarchy(m)
    spec = lambda b: QuantSpec(bits=b, granularity="group", group_size=16)  # noqa: E731
    sens = Sensitivity(m, root, batches[:1])
    return m, root, sens, spec, batches


def test_penalty_path_picks_the_best_validated_candidate_and_every_candidate_meets_the_budget():
    m, root, sens, spec, batches = _setup()
    validate = kl_validator(m, batches[1:])
    calls = []

    def counted(config):
        calls.append(config)
        return validate(config)

    config, alloc, cands = mixed_config(m, root, sens.fn("kl"), (2, 3, 4, 8), Budget(avg_bits=3.0), spec, validate=counted)
    assert [c.penalty for c in cands] == list(PENALTIES) and sum(c.chosen for c in cands) == 1
    assert all(c.average_bits <= 3.0 + 1e-9 for c in cands)
    chosen = next(c for c in cands if c.chosen)
    assert chosen.validation == min(c.validation for c in cands) == pytest.approx(validate(config))
    assert alloc.average_bits == chosen.average_bits
    assert len(calls) <= len(cands)  # a configuration repeated along the path is validated once
    # The penalty narrows fewer layers below the uniform width that fits (3 bits) as t grows.
    below = [c.widths[2] for c in cands]
    assert below[-1] <= below[0]
    # Without a validator: the plain ILP, one candidate.
    config0, alloc0, cands0 = mixed_config(m, root, sens.fn("kl"), (2, 3, 4, 8), Budget(avg_bits=3.0), spec)
    assert [c.penalty for c in cands0] == [0.0] and cands0[0].validation is None
    assert cands[0].widths == cands0[0].widths  # t = 0 on the path is the plain ILP
    # Tied weights share one width; a uniform config covers every sublayer.
    assert config["lm_head"] == config["model.embed_tokens"]
    assert set(uniform_config(m, root, spec(4))) >= {mod for n in root.at_level(Level.SUBLAYER) for mod in n.modules}
    with pytest.raises(ValueError, match="penalties"):
        mixed_config(m, root, sens.fn("kl"), (2, 4), Budget(avg_bits=3.0), spec, validate=validate, penalties=(-1.0,))
    with pytest.raises(ValueError, match="held-out"):
        kl_validator(m, [])


def test_search_cost_counts_every_sensitivity_of_the_path_and_progress_counts_them(capsys):
    m, root, sens, spec, batches = _setup()
    _, alloc, _ = mixed_config(m, root, sens.fn("kl"), (2, 3, 4, 8), Budget(avg_bits=3.0), spec,
                               validate=kl_validator(m, batches[1:]), progress=True)
    # The path's later ILPs reuse the memoised scores; the cost still counts the ones the first ILPs computed.
    assert alloc.cost.evaluations == sens.cost.evaluations["kl"] > 0
    assert alloc.cost.sensitivity_seconds >= sens.cost.seconds["kl"] > 0
    assert f"sensitivities: {alloc.cost.evaluations}eval [" in capsys.readouterr().err
