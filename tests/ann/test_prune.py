"""ann.prune: physical surgery of Llama decoders and the importance criteria."""

import copy

import pytest
import torch
import transformers as T

from ann.prune.importance import block_influence, input_norms, magnitude, taylor, wanda
from ann.prune.surgery import drop_blocks, kv_group_slices, mlp_channel_slices, prune_kv_groups, prune_mlp_channels


def _llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, tie_word_embeddings=True)
    return T.LlamaForCausalLM(cfg).eval()


def test_removing_dead_structures_leaves_the_function_unchanged_and_the_model_reloads(tmp_path):
    model = _llama()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():  # zero the structures we will cut: the function must not change
        for layer in model.model.layers:
            for lin, axis, idx in mlp_channel_slices(layer, torch.arange(40, 48)) + kv_group_slices(model, layer, 1):
                lin.weight.index_fill_(axis, idx, 0.0)
        ref = model(ids).logits
    pruned = copy.deepcopy(model)
    prune_mlp_channels(pruned, [list(range(40))] * 3)
    prune_kv_groups(pruned, [[0]] * 3)
    with torch.no_grad():
        assert torch.allclose(pruned(ids).logits, ref, atol=1e-5)
    assert pruned.config.intermediate_size == 40 and pruned.config.num_attention_heads == 2
    assert pruned.config.num_key_value_heads == 1 and pruned.config.head_dim == 8
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    pruned.save_pretrained(tmp_path)
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()  # an ordinary HF model
    with torch.no_grad():
        assert torch.allclose(back(ids).logits, ref, atol=1e-5)
        gen = back.generate(ids[:1], max_new_tokens=4, do_sample=False)  # the KV cache works
    assert gen.shape == (1, 14)


def test_dropping_blocks_renumbers_the_cache_and_bad_requests_say_what_is_wrong(tmp_path):
    model = _llama()
    ids = torch.randint(0, 64, (1, 6))
    drop_blocks(model, [1])
    assert model.config.num_hidden_layers == 2 and [l.self_attn.layer_idx for l in model.model.layers] == [0, 1]
    with torch.no_grad():
        model.generate(ids, max_new_tokens=3, do_sample=False)
    model.save_pretrained(tmp_path)
    assert T.AutoModelForCausalLM.from_pretrained(tmp_path).config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="leaves none"):
        drop_blocks(model, [0, 1])
    with pytest.raises(ValueError, match="every one"):
        prune_kv_groups(model, [[]] * 2)
    with pytest.raises(ValueError, match="same number"):
        prune_mlp_channels(model, [[0, 1], [0]])
    with pytest.raises(ValueError, match="not a Llama-style decoder"):
        prune_mlp_channels(torch.nn.Linear(2, 2), [[0]])


def test_importance_criteria_rank_a_dead_channel_last_and_block_influence_is_in_range():
    model = _llama()
    ids = torch.randint(0, 64, (2, 10))
    layer = model.model.layers[0]
    with torch.no_grad():
        for lin, axis, idx in mlp_channel_slices(layer, torch.tensor([5])):
            lin.weight.index_fill_(axis, idx, 0.0)
    norms = input_norms(model, lambda m: m(ids), [layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj])
    model(ids).logits.float().logsumexp(-1).mean().backward()  # any calibration loss
    for crit in (magnitude, wanda, taylor):
        scores = [crit(mlp_channel_slices(layer, torch.tensor([j])), input_norms=norms) for j in range(48)]
        assert scores[5] == min(scores) == 0.0 and max(scores) > 0
    bi = block_influence(model.model.layers, model, lambda m: m(ids))
    assert len(bi) == 3 and all(0.0 <= b <= 2.0 for b in bi)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "taylor"])
def test_prune_llama_reaches_the_ratio_keeps_working_and_refuses_bad_requests(criterion):
    model = _llama()
    ids = torch.randint(0, 64, (2, 10))

    def run(m):
        return m(ids).logits

    def loss(m):
        return torch.nn.functional.cross_entropy(m(ids).logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))

    from ann.prune.plan import count_params, prune_llama

    p0 = count_params(model)
    info = prune_llama(model, 0.3, run=run, blocks=1, criterion=criterion, loss=loss)
    assert info["ratio"] >= 0.3 and info["ratio"] < 0.3 + 3 * 32 * 2 / p0 + 1e-9  # at most one channel per layer over
    assert len(info["dropped_blocks"]) == 1 and model.config.num_hidden_layers == 2
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert model(ids).logits.shape == (2, 10, 64)
    for bad, match in (({"ratio": 1.0}, "in \\[0, 1\\)"), ({"ratio": 0.2, "blocks": 3}, "at least one must stay"),
                       ({"ratio": 0.2, "criterion": "random"}, "choose one of"), ({"ratio": 0.95}, "at most"),
                       ({"ratio": 0.2, "criterion": "taylor"}, "needs loss")):
        fresh = _llama()
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(ValueError, match=match):
            prune_llama(fresh, run=run, **bad)
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())  # refused before any change


def test_lora_recovery_lowers_the_loss_of_a_pruned_model_and_merges_back():
    from ann.prune.plan import prune_llama
    from ann.prune.recover import recover_lora

    model = _llama()
    torch.manual_seed(1)
    pattern = torch.arange(12).repeat(20)  # a learnable stream
    blocks = pattern[: 16 * 12].view(12, 16)
    prune_llama(model, 0.2, run=lambda m: m(blocks[:2]), criterion="magnitude")
    before = float(model(input_ids=blocks, labels=blocks).loss)
    merged, losses = recover_lora(model, blocks, steps=30, lr=1e-2, progress=False)
    assert type(merged).__name__ == "LlamaForCausalLM" and losses
    with torch.no_grad():
        assert float(merged(input_ids=blocks, labels=blocks).loss) < before
    with pytest.raises(ValueError, match="steps"):
        recover_lora(_llama(), blocks, steps=0)


def test_cli_prunes_recovers_and_writes_a_loadable_model(tmp_path, capsys):
    from ann.prune.__main__ import main
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    model_dir = tmp_path / "m"
    _llama().save_pretrained(model_dir)
    words = [f"w{i}" for i in range(60)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(model_dir)
    (model_dir / "calib.txt").write_text(" ".join(words * 10))
    out = tmp_path / "pruned"
    code = main([str(model_dir), "--ratio", "0.4", "--blocks", "1", "--calib", str(model_dir / "calib.txt"),
                 "--recover-steps", "2", "--seq-len", "16", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    back = T.AutoModelForCausalLM.from_pretrained(out)
    assert back.config.num_hidden_layers == 2 and back.config.intermediate_size < 48
    assert (out / "prune.json").is_file()
    assert main([str(model_dir), "--ratio", "1.5", "--calib", str(model_dir / "calib.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "in [0, 1)" in capsys.readouterr().err
    assert main([str(model_dir), "--ratio", "0.2", "--calib", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "not a text task" in capsys.readouterr().err
