import pytest
import torch
import transformers as T
from torch import nn

from quant.hierarchy import build_hierarchy
from quant.sensitivity import (
    Sensitivity, hawq_score, hutchinson_diagonal, hutchinson_trace, node_hessian_trace, output_perturbation,
)


def test_hutchinson_trace_matches_the_exact_hessian_of_linear_regression():
    torch.manual_seed(0)
    n, d = 256, 12
    x, y = torch.randn(n, d) * torch.linspace(0.5, 2.0, d), torch.randn(n, 3)
    model = nn.Linear(d, 3, bias=False)
    loss = lambda m, b: 0.5 * (m(b[0]) - b[1]).pow(2).sum(-1).mean()  # noqa: E731
    exact = 3 * float(torch.trace(x.T @ x / n))  # H = I_3 (x) X^T X / n
    est = hutchinson_trace(model, loss, [(x, y)], {"weight": model.weight}, n_probes=400)["weight"]
    assert est == pytest.approx(exact, rel=0.03)  # 400 probes: std ~1% here


def test_hutchinson_diagonal_matches_exact_hessian_of_a_small_mlp_per_row_group():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    x, y = torch.randn(64, 3), torch.randn(64, 2)
    w = net[0].weight
    loss = lambda m, b: (m(b[0]) - b[1]).pow(2).mean()  # noqa: E731

    def f(flat):
        h = torch.tanh(x @ flat.view(4, 3).T + net[0].bias)
        return (net[2](h) - y).pow(2).mean()

    exact = torch.diagonal(torch.autograd.functional.hessian(f, w.detach().flatten())).view(4, 3)
    diag = hutchinson_diagonal(net, loss, [(x, y)], {"0.weight": w}, n_probes=2000)["0.weight"]
    # Per-row traces (the row-group granularity) carry probe noise of a few % of the whole trace; 2000 probes.
    total = float(exact.sum())
    assert float(diag.sum()) == pytest.approx(total, rel=0.05)
    assert float((diag.sum(1) - exact.sum(1)).abs().max()) <= 0.05 * total
    assert w.requires_grad


def _tiny_gpt2():
    torch.manual_seed(0)
    return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)).eval()


def test_output_perturbation_grows_as_bits_shrink_is_zero_at_16_and_restores_weights():
    m = _tiny_gpt2()
    root = build_hierarchy(m, groups_per_layer=2)
    batches = [{"input_ids": torch.randint(0, 64, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    node = root.find("block:transformer.h.0")
    before = {k: v.clone() for k, v in m.state_dict().items()}
    kl = [output_perturbation(m, batches, node, b, metric="kl") for b in (2, 4, 8, 16)]
    assert kl[0] > kl[1] > kl[2] > 0 and kl[3] == 0.0
    mse = [output_perturbation(m, batches, node, b, metric="mse") for b in (2, 8, 16)]
    assert mse[0] > mse[1] > 0 and mse[2] == 0.0
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="hawq"):
        output_perturbation(m, batches, node, 4, metric="hawq")


def test_sensitivity_table_on_llama_memoises_counts_and_hawq_decreases_with_bits():
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))  # sdpa: needs the math kernel
    root = build_hierarchy(m, groups_per_layer=2)
    sens = Sensitivity(m, root, [{"input_ids": torch.randint(0, 64, (2, 6))}], n_probes=2)
    q = root.find("sublayer:model.layers.0.self_attn.v_proj")
    table = sens.measure([q], (2, 4), metrics=("hawq", "kl"))
    assert set(table) == {(mt, q.key, b) for mt in ("hawq", "kl") for b in (2, 4)}
    assert table["hawq", q.key, 2] > table["hawq", q.key, 4] > 0
    assert table["kl", q.key, 2] > table["kl", q.key, 4] > 0
    sens.score(q, 2, "kl")  # memoised: not counted again
    assert sens.cost.evaluations == {"hawq": 2, "kl": 2} and sens.cost.hessian_vector_products == 2
    # The Hessian trace of a node is the sum over its groups; the score of 16 bits is 0.
    diag = sens.hessian_diagonal()
    assert node_hessian_trace(q, diag) == pytest.approx(sum(node_hessian_trace(g, diag) for g in q.children), rel=1e-5)
    assert hawq_score(m, q, 16, diag) == 0.0
