import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from quant import (PackedWeight, QuantEmbedding, QuantLinear, QuantSpec, fake_quant, fake_quantize, int8_dynamic,
                   load_quantized, model_memory, quantize_model, quantize_tensor, save_quantized,
                   tied_weight_groups)

transformers = pytest.importorskip("transformers")
from transformers.pytorch_utils import Conv1D  # noqa: E402

G32 = QuantSpec(bits=4, granularity="group", group_size=32)


def tiny_llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(cfg).eval()


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama_config(model):
    """Mixed specs: 2/4/8 bits, channel and group, symmetric and affine; the tied embedding pair shares one."""
    cfg = {"model.embed_tokens": QuantSpec(bits=8), "lm_head": QuantSpec(bits=8)}
    for i in range(2):
        p = f"model.layers.{i}."
        cfg |= {p + "self_attn.q_proj": G32, p + "self_attn.k_proj": QuantSpec(bits=8, symmetric=False),
                p + "self_attn.v_proj": QuantSpec(bits=2, granularity="group", group_size=16),
                p + "self_attn.o_proj": QuantSpec(bits=4), p + "mlp.gate_proj": QuantSpec(bits=3, symmetric=False),
                p + "mlp.up_proj": G32, p + "mlp.down_proj": QuantSpec(bits=8, granularity="group", group_size=32)}
    return cfg


IDS = torch.tensor([[1, 5, 9, 33, 2, 63, 0, 17]])


# ---------------------------------------------------------------- modules

@pytest.mark.parametrize("spec", [QuantSpec(bits=3), QuantSpec(bits=5, symmetric=False, granularity="group", group_size=16)])
def test_quant_linear_is_linear_with_the_fake_quantized_weight_and_stores_packed_codes(spec):
    torch.manual_seed(0)
    lin, x = nn.Linear(40, 24), torch.randn(5, 40)
    q = QuantLinear.from_linear(lin, spec, act_bits=None)
    torch.testing.assert_close(q(x), F.linear(x, fake_quant(lin.weight, spec), lin.bias), rtol=0, atol=1e-6)  # same maths
    q8 = QuantLinear.from_linear(lin, spec, act_bits=8)
    torch.testing.assert_close(q8(x), F.linear(fake_quantize(x, bits=8), fake_quant(lin.weight, spec), lin.bias),
                               rtol=0, atol=1e-6)  # 1e-6: float32 matmul order
    sd = q.state_dict()
    assert sd["qweight.codes"].dtype == torch.uint8 and sd["qweight.codes"].numel() == math.ceil(40 * 24 * spec.bits / 8)
    assert ("qweight.zero_point" in sd) == (not spec.symmetric) and sd["bias"].dtype == torch.float32
    rows, groups, _ = spec.groups((24, 40))
    assert q.memory_bytes() == math.ceil(960 * spec.bits / 8) + rows * groups * (4 if spec.symmetric else 8) + 24 * 4


def test_weight_cache_is_lazy_dropped_on_request_and_on_load():
    lin = nn.Linear(16, 8)
    q = QuantLinear.from_linear(lin, QuantSpec(bits=4))
    assert q.qweight._cache is None
    w = q.qweight.dequantize()
    assert q.qweight.dequantize() is w and q.weight is w
    q.drop_cache()
    assert q.qweight._cache is None
    q.qweight.dequantize()
    other = QuantLinear.from_linear(nn.Linear(16, 8), QuantSpec(bits=4))
    q.load_state_dict(other.state_dict())
    assert q.qweight._cache is None and torch.equal(q.weight, other.weight)


def test_conv1d_is_a_linear_with_transposed_weight():
    torch.manual_seed(0)
    conv, x = Conv1D(24, 40), torch.randn(2, 3, 40)  # nf=24 outputs, nx=40 inputs; weight (40, 24)
    q = QuantLinear.from_linear(conv, QuantSpec(bits=8), act_bits=None)
    assert (q.in_features, q.out_features) == (40, 24)
    torch.testing.assert_close(q(x), F.linear(x, fake_quant(conv.weight.t(), QuantSpec(bits=8)), conv.bias),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(q(x), conv(x), rtol=0, atol=0.02)  # 8-bit per-channel weights, |y| ~ 1


def test_quant_embedding_has_per_row_scales_and_keeps_padding_idx():
    torch.manual_seed(0)
    emb = nn.Embedding(50, 12, padding_idx=3)
    q = QuantEmbedding.from_embedding(emb, QuantSpec(bits=4))
    assert q.qweight.scale.shape == (50, 1) and q.padding_idx == 3
    idx = torch.tensor([[0, 3, 49], [7, 7, 1]])
    assert torch.equal(q(idx), F.embedding(idx, fake_quant(emb.weight, QuantSpec(bits=4))))
    assert q.memory_bytes() == 50 * 12 // 2 + 50 * 4
    assert q.to(torch.bfloat16)(idx).dtype == torch.bfloat16  # follows a cast of the model
    with pytest.raises(ValueError, match="max_norm"):
        QuantEmbedding.from_embedding(nn.Embedding(4, 4, max_norm=1.0), QuantSpec(bits=4))


def test_packed_weight_unpacks_to_the_quantized_tensor():
    w = torch.randn(7, 13)
    spec = QuantSpec(bits=3, symmetric=False, granularity="group", group_size=5)
    pw = PackedWeight.from_tensor(w, spec)
    assert torch.equal(pw.quantized().codes, quantize_tensor(w, spec).codes)
    assert torch.equal(pw.dequantize(), fake_quant(w, spec))


# ---------------------------------------------------------------- whole models

def test_sequential_mixed_specs_original_unchanged_and_bad_configs_name_every_problem(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    before = [p.clone() for p in net.parameters()]
    cfg = {"0": QuantSpec(bits=8), "2": QuantSpec(bits=2, granularity="group", group_size=16),
           "4": QuantSpec(bits=4, symmetric=False)}
    q = quantize_model(net, cfg)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters())) and isinstance(net[0], nn.Linear)
    assert all(isinstance(q[i], QuantLinear) for i in (0, 2, 4)) and q[0].act_bits == 8
    x = torch.randn(32, 16)
    assert F.cosine_similarity(q(x).flatten(), net(x).flatten(), dim=0) > 0.9  # 2-bit middle layer: coarse
    save_quantized(q, cfg, tmp_path)
    assert not (tmp_path / "config.json").exists()
    with pytest.raises(ValueError, match="no config.json"):
        load_quantized(tmp_path)
    r = load_quantized(tmp_path, model=net)
    assert torch.equal(r(x), q(x)) and isinstance(net[0], nn.Linear)
    with pytest.raises(ValueError) as e:
        quantize_model(net, {"0": QuantSpec(bits=4), "1": QuantSpec(bits=4), "7": QuantSpec(bits=4), "2": 4})
    assert all(s in str(e.value) for s in ("'1' (ReLU", "'7' (no such module", "'2' (its value is a int"))
    with pytest.raises(ValueError, match="'4' .*missing from bit_config"):
        save_quantized(q, {k: v for k, v in cfg.items() if k != "4"}, tmp_path)
    with pytest.raises(ValueError, match="call|quantize_model"):
        save_quantized(net, cfg, tmp_path)


def test_llama_tied_embedding_is_quantized_once_and_save_load_is_exact(tmp_path):
    model = tiny_llama()
    assert tied_weight_groups(model) == [["model.embed_tokens", "lm_head"]]
    cfg = llama_config(model)
    q = quantize_model(model, cfg)
    assert q.lm_head.qweight is q.model.embed_tokens.qweight  # one quantized copy
    with torch.no_grad():
        ref, out = model(IDS).logits, q(IDS).logits
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.8  # 2-bit v_proj and 3-bit MLP gates
    mem = model_memory(q)
    assert mem["quantized_weights"] == sum(m.memory_bytes() for n, m in q.named_modules()
                                           if isinstance(m, PackedWeight) and n != "lm_head.qweight")

    save_quantized(q, cfg, tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "model.safetensors", "quant_config.json"]  # temporaries are gone
    qcfg = json.loads((tmp_path / "quant_config.json").read_text())
    assert qcfg["act_bits"] == 8 and qcfg["modules"]["lm_head"] == {"bits": 8, "symmetric": True,
                                                                       "granularity": "channel", "group_size": 128}
    assert qcfg["aliases"] == {f"lm_head.qweight.{b}": f"model.embed_tokens.qweight.{b}" for b in ("codes", "scale")}
    r = load_quantized(tmp_path)
    assert type(r) is type(model) and r.lm_head.qweight is r.model.embed_tokens.qweight
    with torch.no_grad():
        assert torch.equal(r(IDS).logits, out)
    assert model_memory(r) == mem


def test_tied_weights_must_share_one_spec():
    model = tiny_llama()
    cfg = llama_config(model)
    with pytest.raises(ValueError, match=r"\['model.embed_tokens', 'lm_head'\] share one weight.*lm_head: float"):
        quantize_model(model, {k: v for k, v in cfg.items() if k != "lm_head"})
    with pytest.raises(ValueError, match="same QuantSpec"):
        quantize_model(model, cfg | {"lm_head": QuantSpec(bits=4)})


def test_memory_shrinks_about_as_bits_over_32():
    model = tiny_llama()
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Embedding))]
    fp = model_memory(model)
    float_w = sum(model.get_submodule(n).weight.numel() * 4 for n in names if n != "lm_head")  # tied: once
    assert fp["quantized_weights"] == 0
    for bits in (2, 4, 8):
        mem = model_memory(quantize_model(model, {n: QuantSpec(bits=bits, granularity="group", group_size=32) for n in names}))
        ratio = mem["quantized_weights"] / float_w
        assert bits / 32 < ratio <= bits / 32 + 1 / 32 + 1e-9  # + one float32 scale per 32 weights
        assert mem["other"] == fp["total"] - float_w  # norms stay float


def test_gpt2_conv1d_mixed_specs_save_load_is_exact(tmp_path):
    model = tiny_gpt2()
    cfg = {"transformer.wte": QuantSpec(bits=8), "lm_head": QuantSpec(bits=8),
           "transformer.wpe": QuantSpec(bits=4, symmetric=False)}
    for i in range(2):
        cfg |= {f"transformer.h.{i}.attn.c_attn": G32, f"transformer.h.{i}.attn.c_proj": QuantSpec(bits=8),
                f"transformer.h.{i}.mlp.c_fc": QuantSpec(bits=4, symmetric=False, granularity="group", group_size=16),
                f"transformer.h.{i}.mlp.c_proj": QuantSpec(bits=2, granularity="group", group_size=32)}
    q = quantize_model(model, cfg, act_bits=None)
    assert isinstance(q.transformer.h[0].attn.c_attn, QuantLinear) and q.lm_head.qweight is q.transformer.wte.qweight
    save_quantized(q, cfg, tmp_path)
    r = load_quantized(tmp_path)
    with torch.no_grad():
        out = q(IDS).logits
        assert torch.equal(r(IDS).logits, out) and r.transformer.h[1].mlp.c_fc.act_bits is None
        assert F.cosine_similarity(out.flatten(), model(IDS).logits.flatten(), dim=0) > 0.9


def test_int8_dynamic_runs_real_int8_and_stays_close_to_fp32():
    from torch.ao.nn.quantized.dynamic import Linear as DynLinear

    for model in (tiny_llama(), tiny_gpt2()):
        q = int8_dynamic(model)
        assert isinstance(q.lm_head, DynLinear) and type(model.lm_head) is nn.Linear  # copy; original intact
        assert not any(type(m) in (nn.Linear, Conv1D) for m in q.modules())
        with torch.no_grad():
            ref, out = model(IDS).logits, q(IDS).logits
        assert (out - ref).abs().max() < 0.05 * ref.abs().max()  # int8 weights and activations: ~1% of range
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(4, 8)
    torch.testing.assert_close(int8_dynamic(net)(x), net(x), rtol=0, atol=0.05)  # int8: a few % of |y| ~ 1
