import pytest
import torch
import transformers as T
from torch import nn

from quant.hierarchy import Category, Level, build_hierarchy, node_weights


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))


class _Mlp(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up_proj, self.down_proj = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)


class _Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.self_attn, self.mlp = _Attn(d), _Mlp(d)


class ToyMultimodal(nn.Module):
    """vision_tower / projector / language_model, the module names of LLaVA-style models."""

    def __init__(self, d=16, vocab=32):
        super().__init__()
        self.vision_tower = nn.Module()
        self.vision_tower.patch_embed = nn.Linear(12, d)
        self.vision_tower.blocks = nn.ModuleList(_Block(d) for _ in range(2))
        self.projector = nn.Linear(d, d)
        self.language_model = nn.Module()
        self.language_model.embed_tokens = nn.Embedding(vocab, d)
        self.language_model.layers = nn.ModuleList(_Block(d) for _ in range(2))
        self.language_model.lm_head = nn.Linear(d, vocab)


def _cats(root, block):
    return [s.category.value for s in root.find(f"block:{block}").children]


def test_llama_levels_categories_and_groups():
    torch.manual_seed(0)
    m = T.LlamaForCausalLM(T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    root = build_hierarchy(m, groups_per_layer=4)
    assert root.level is Level.MODEL and [n.name for n in root.children] == ["language"]
    assert [b.name for b in root.at_level("block")] == ["model.embed_tokens", "model.layers.0", "model.layers.1", "lm_head"]
    assert _cats(root, "model.layers.0") == ["qkv", "qkv", "qkv", "attn_out", "mlp_up", "mlp_up", "mlp_down"]
    assert root.find("sublayer:model.embed_tokens").category is Category.EMBEDDING
    assert root.find("sublayer:lm_head").category is Category.LM_HEAD
    n_weights = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and "norm" not in n)
    assert root.params == n_weights == sum(leaf.params for leaf in root.leaves())
    q = root.find("sublayer:model.layers.0.self_attn.q_proj")
    assert [g.weight.rows for g in q.children] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    assert all(g.level is Level.GROUP and g.params == 8 * 32 for g in q.children)
    keys = [n.key for n in root.walk()]
    assert len(keys) == len(set(keys))


def test_gpt2_conv1d_rows_are_output_channels_and_tied_head_appears_once():
    m = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32))
    root = build_hierarchy(m, groups_per_layer=2)
    assert _cats(root, "transformer.h.0") == ["qkv", "attn_out", "mlp_up", "mlp_down"]
    wte = root.find("sublayer:transformer.wte")
    assert wte.modules == ("transformer.wte", "lm_head")
    assert all(s.name != "lm_head" for s in root.at_level("sublayer"))  # tied: one leaf
    c_attn = root.find("sublayer:transformer.h.0.attn.c_attn")
    (w,) = node_weights(m, c_attn)
    assert w.shape == (96, 32)  # Conv1D weight (in=32, out=96) seen as (rows=out, in)
    (g,) = node_weights(m, c_attn.children[1])
    with torch.no_grad():
        g.zero_()
    assert bool((m.transformer.h[0].attn.c_attn.weight[:, 48:] == 0).all())  # writes reach the model
    assert bool((m.transformer.h[0].attn.c_attn.weight[:, :48] != 0).any())
    no_emb = build_hierarchy(m, include_embeddings=False, groups_per_layer=1)
    assert all(s.category is not Category.EMBEDDING and not s.children for s in no_emb.at_level("sublayer"))
    assert all("lm_head" not in s.modules for s in no_emb.at_level("sublayer"))  # tied to an embedding


def test_bert_encoder_categories():
    m = T.BertForMaskedLM(T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=64, max_position_embeddings=32))
    root = build_hierarchy(m)
    assert _cats(root, "bert.encoder.layer.1") == ["qkv", "qkv", "qkv", "attn_out", "mlp_up", "mlp_down"]
    word = root.find("sublayer:bert.embeddings.word_embeddings")
    assert word.category is Category.EMBEDDING and "cls.predictions.decoder" in word.modules


def test_multimodal_modalities_and_configurable_rules():
    root = build_hierarchy(ToyMultimodal(), groups_per_layer=1)
    mods = {n.name: n for n in root.children}
    assert list(mods) == ["vision", "projector", "language"]
    assert [b.name for b in mods["vision"].children] == [
        "vision_tower.patch_embed", "vision_tower.blocks.0", "vision_tower.blocks.1"]
    assert [b.name for b in mods["projector"].children] == ["projector"]
    assert root.find("sublayer:language_model.lm_head").category is Category.LM_HEAD
    assert root.params == sum(n.params for n in mods.values())
    custom = build_hierarchy(ToyMultimodal(), modality_rules={"eyes": r"^vision_tower\."}, default_modality="text")
    assert [n.name for n in custom.children] == ["eyes", "text"]
    with pytest.raises(ValueError, match="groups_per_layer"):
        build_hierarchy(ToyMultimodal(), groups_per_layer=0)
    with pytest.raises(ValueError, match="no quantizable weights"):
        build_hierarchy(nn.Sequential(nn.ReLU()))
