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
        w_q = q.weight_t.t().float()
        ref = (x_q @ w_q.T) * s_x * q.weight_scale + lin.bias  # exact integers in float64 range
        assert torch.allclose(q(x), ref, rtol=1e-5, atol=1e-5)
        assert (q(x) - lin(x)).abs().max() <= 0.05 * lin(x).abs().max()
    assert q.weight_t.dtype == torch.int8 and q.weight_t.abs().max() <= 127
    assert (q.dequantized_weight() - lin.weight).abs().max() <= float(q.weight_scale.max()) / 2 + 1e-7
    assert q(torch.randn(2, 3, 40)).shape == (2, 3, 24)


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


def test_layers_reading_one_tensor_quantize_it_once_and_never_reuse_a_stale_copy():
    from quant.int8 import ActivationCache

    torch.manual_seed(0)
    a, b = Int8Linear.from_linear(nn.Linear(16, 8)), Int8Linear.from_linear(nn.Linear(16, 4))
    x = torch.randn(3, 16)
    fresh_a, fresh_b = a(x), b(x)
    cache = ActivationCache()
    a.act_cache = b.act_cache = cache
    assert torch.equal(a(x), fresh_a) and torch.equal(b(x), fresh_b)
    first = cache._value
    b(x)
    assert cache._value is first  # hit: the same quantized tensor
    x.mul_(2.0)  # in place: the version changes, the cached codes are stale
    cached = b(x)
    assert cache._value is not first
    b.act_cache = None
    assert torch.equal(cached, b(x)) and not torch.equal(cached, fresh_b)
