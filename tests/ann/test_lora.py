"""ann.finetune.lora: merged == unmerged on tiny random Llama and ViT models, counting, target dispatch."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

from ann.finetune.lora import LoraSettings, add_lora, default_targets, merge_lora, trainable_fraction


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()


def tiny_vit() -> ViTForImageClassification:
    torch.manual_seed(0)
    return ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                                               num_labels=5)).eval()


def randomize_lora_b(model) -> int:
    """B starts at zero (adapted == base); give it random values so merging has something to get wrong."""
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
                n += 1
    return n


@pytest.mark.parametrize("build,inputs,out", [
    (tiny_llama, lambda: {"input_ids": torch.randint(0, 64, (2, 9))}, "logits"),
    (tiny_vit, lambda: {"pixel_values": torch.randn(2, 3, 16, 16)}, "logits"),
])
def test_merged_equals_unmerged(build, inputs, out):
    model = build()
    x = inputs()
    with torch.no_grad():
        base = getattr(model(**x), out).clone()
    peft_model = add_lora(model, LoraSettings(rank=4, alpha=8.0))
    with torch.no_grad():
        same = getattr(peft_model(**x), out)
    torch.testing.assert_close(same, base, atol=1e-6, rtol=0)  # B = 0: exactly the base model
    assert randomize_lora_b(peft_model) > 0
    peft_model.eval()
    with torch.no_grad():
        unmerged = getattr(peft_model(**x), out).clone()
    assert (unmerged - base).abs().max() > 1e-2  # the adapters change the function, so the check below can fail
    merged = merge_lora(peft_model)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        after = getattr(merged(**x), out)
    # W + (alpha/r) B A in float32 vs the two-path sum: rounding only, O(1e-6) relative on O(1) outputs
    torch.testing.assert_close(after, unmerged, atol=1e-4, rtol=1e-4)


def test_trainable_fraction_counts_adapters_only():
    model = tiny_llama()
    _, total_before, _ = trainable_fraction(model)
    r = 4
    peft_model = add_lora(model, LoraSettings(rank=r))
    trainable, total, fraction = trainable_fraction(peft_model)
    cfg = model.config
    d, f, kv = cfg.hidden_size, cfg.intermediate_size, cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads)
    per_layer = r * ((d + d) * 2 + (d + kv) * 2 + (d + f) * 2 + (f + d))  # q,o ; k,v ; gate,up ; down
    assert trainable == cfg.num_hidden_layers * per_layer
    assert total == total_before + trainable and fraction == pytest.approx(trainable / total)
    assert all(("lora_" in n) == p.requires_grad for n, p in peft_model.named_parameters())


def test_default_targets_by_family():
    assert default_targets(tiny_llama()) == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert default_targets(tiny_vit()) == ("q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2")
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=32))
    peft_model = add_lora(bert, LoraSettings(rank=2))
    names = {n.rsplit(".", 1)[0] for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any(n.endswith("attention.self.query.lora_A.default") for n in names)
    with pytest.raises(ValueError, match="target_modules"):
        default_targets(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("kwargs,field", [
    ({"rank": 0}, "rank"), ({"alpha": 0}, "alpha"), ({"dropout": 1.0}, "dropout"),
    ({"target_modules": "q_proj"}, "target_modules"), ({"target_modules": ()}, "target_modules"),
])
def test_settings_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LoraSettings(**kwargs)


def test_settings_normalise_and_bad_targets():
    s = LoraSettings(rank=2, alpha=4, target_modules=["q_proj"])
    assert s.target_modules == ("q_proj",) and s.scale == 2.0
    with pytest.raises(ValueError, match="target_modules"):
        add_lora(tiny_llama(), LoraSettings(target_modules=("no_such_layer",)))


def test_smollm2_code_entry_point_on_a_tiny_model(tmp_path, monkeypatch, byte_tok):
    """ann.finetune.code end to end with a tiny random Llama and a byte tokenizer in place of SmolLM2."""
    import argparse
    import json

    from ann.finetune import code as ft_code

    tok = byte_tok
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))
    monkeypatch.setattr(ft_code, "_load_base", lambda cache_dir, progress: (model, tok))
    for i in range(40):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"m{i}.py").write_text(f"def f{i}(x):\n    return x + {i}\n" * (1 + i % 3))
    parser = argparse.ArgumentParser()
    ft_code.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path / "out"), "--steps", "15", "--lr", "0.02", "--seq-len", "32",
                              "--batch-size", "4", "--eval-bytes", "400", "--eval-context", "32", "--eval-stride", "16",
                              "--corpus-root", str(tmp_path / "corpus"), "--cache-dir", str(tmp_path / "cache"),
                              "--rank", "4", "--quiet", "--save-merged"])
    metrics = ft_code.run(args)
    assert metrics["bits_per_byte_after"] < metrics["bits_per_byte_before"]  # 15 steps on repetitive code help
    assert 0 < metrics["trainable_fraction"] < 0.5
    assert metrics["merged_minus_unmerged_max_abs_logit"] < 1e-4  # float32 rounding of W + (alpha/r) B A
    assert (tmp_path / "out" / "adapter" / "adapter_config.json").is_file()
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["test_after"]["n_bytes"] <= 400
    assert (tmp_path / "out" / "model" / "config.json").is_file()
