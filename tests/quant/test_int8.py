"""Real int8 execution (quant.int8): the W8A8 maths, whole-model conversion and SmoothQuant's invariance."""

import copy

import pytest
import torch
from torch import nn

from quant.int8 import Int8Linear, calibrate_input_absmax, llama_smoothing_pairs, smooth, to_int8


def test_int8_linear_computes_the_stated_integer_formula():
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    q = Int8Linear.from_linear(lin)
    for rows in (1, 5, 33):  # below and above _int_mm's row minimum
        x = torch.randn(rows, 40)
        s_x = x.abs().amax(1, keepdim=True) / 127
        x_q = torch.round(x / s_x)
        w_q = q.weight_q.t().float()
        ref = (x_q @ w_q.T) * s_x * q.weight_scale + lin.bias  # exact integers in float64 range
        assert torch.allclose(q(x), ref, rtol=1e-5, atol=1e-5)
        assert (q(x) - lin(x)).abs().max() <= 0.05 * lin(x).abs().max()
    assert q.weight_q.dtype == torch.int8 and q.weight_q.abs().max() <= 127
    assert (q.dequantized_weight() - lin.weight).abs().max() <= float(q.weight_scale.max()) / 2 + 1e-7
    assert q(torch.randn(2, 3, 40)).shape == (2, 3, 24)


def test_weight_only_int8_computes_bf16_activations_times_scaled_int8_weights():
    torch.manual_seed(0)
    lin = nn.Linear(40, 24)
    q = Int8Linear.from_linear(lin, activations="bf16")
    assert q.weight_q.shape == (24, 48) and q.weight_scale.dtype == torch.bfloat16  # K padded to the kernel's 16
    x = torch.randn(5, 40)
    ref = x.bfloat16().double() @ q.dequantized_weight().double().T + lin.bias.double()
    assert torch.allclose(q(x).double(), ref, rtol=2e-2, atol=2e-2)  # the kernel accumulates and rounds in bf16
    assert (q(x) - lin(x)).abs().max() <= 0.03 * lin(x).abs().max()
    with pytest.raises(ValueError, match="activations"):
        Int8Linear.from_linear(lin, activations="fp8")


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def test_to_int8_converts_every_linear_but_the_skipped_ones():
    model = _tiny_llama()
    q = to_int8(model, skip=["model.layers.0.mlp.down_proj"])
    kinds = {n: type(m).__name__ for n, m in q.named_modules() if isinstance(m, (nn.Linear, Int8Linear))}
    assert kinds["model.layers.0.mlp.down_proj"] == "Linear" and kinds["model.layers.1.mlp.down_proj"] == "Int8Linear"
    assert kinds["lm_head"] == "Int8Linear" and isinstance(model.lm_head, nn.Linear)  # the original is untouched
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        ref, out = model(ids).logits, q(ids).logits
    assert (ref.argmax(-1) == out.argmax(-1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="not modules"):
        to_int8(model, skip=["nope"])
    with torch.no_grad():
        w16 = to_int8(model, activations="bf16")(ids).logits
    assert (ref.argmax(-1) == w16.argmax(-1)).float().mean() > 0.9
    with pytest.raises(ValueError, match="activations"):
        to_int8(model, activations="int4")


def test_smoothquant_leaves_the_float_model_unchanged_and_balances_ranges():
    model = _tiny_llama()
    with torch.no_grad():  # give one input channel of every q/k/v an outlier, as LLM activations have
        for layer in model.model.layers:
            layer.input_layernorm.weight[3] = 40.0
    ids = torch.randint(0, 64, (2, 16))
    pairs = llama_smoothing_pairs(model)
    assert len(pairs) == 6 and pairs[2] == ("model.layers.0.mlp.up_proj", ["model.layers.0.mlp.down_proj"])
    names = [c for _, cs in pairs for c in cs]
    amax = calibrate_input_absmax(model, lambda m: m(ids), names)
    sm = smooth(copy.deepcopy(model), pairs, amax, alpha=0.5)
    with torch.no_grad():
        assert torch.allclose(sm(ids).logits, model(ids).logits, atol=1e-4)
    after = calibrate_input_absmax(sm, lambda m: m(ids), names)
    q = "model.layers.0.self_attn.q_proj"
    ratio = lambda a: float(a.max() / a.median())  # noqa: E731
    assert ratio(after[q]) < ratio(amax[q]) / 2  # the outlier channel is flattened
    with pytest.raises(ValueError, match="alpha"):
        smooth(model, pairs, amax, alpha=1.5)


def test_fused_groups_match_separate_layers_run_one_gemm_and_never_reuse_a_stale_output():
    from quant.int8 import Int8Slice, shared_input_groups

    model = _tiny_llama()
    ids = torch.randint(0, 64, (2, 12))
    groups = shared_input_groups(model, lambda m: m(ids))
    attn, mlp = "model.layers.0.self_attn", "model.layers.0.mlp"
    assert [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"] in groups and [f"{mlp}.gate_proj", f"{mlp}.up_proj"] in groups
    assert len(groups) == 4  # 2 layers x (q/k/v, gate/up); o_proj, down_proj and lm_head read their own inputs
    plain, fused = to_int8(model), to_int8(model, fuse=groups)
    with torch.no_grad():
        assert torch.allclose(fused(ids).logits, plain(ids).logits, atol=1e-4)  # same codes, same scales
    q, k = fused.get_submodule(f"{attn}.q_proj"), fused.get_submodule(f"{attn}.k_proj")
    assert isinstance(q, Int8Slice) and q.fused is k.fused
    n_weights = sum(1 for n, _ in fused.named_buffers() if n.endswith("weight_q"))
    assert n_weights == 2 * 4 + 1  # per layer: qkv, o, gate_up, down; plus lm_head: each stored once
    x = torch.randn(3, 32)
    first = q(x)
    assert q.fused._last[2] is k.fused._last[2]  # k reads the cached GEMM
    assert torch.allclose(k(x), Int8Linear.from_linear(model.get_submodule(f"{attn}.k_proj"))(x), atol=1e-5)
    x.mul_(2.0)  # in place: the version changes, the cached output is stale
    assert not torch.allclose(q(x), first)
    with pytest.raises(ValueError, match="fuse groups"):
        to_int8(model, fuse=[[f"{attn}.q_proj", "nope"]])
    with pytest.raises(ValueError, match="input widths"):
        to_int8(model, fuse=[[f"{attn}.q_proj", f"{mlp}.down_proj"]])
