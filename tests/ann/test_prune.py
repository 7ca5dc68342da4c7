"""ann.prune: physical surgery of Llama, ViT, BERT and LLaVA models, the importance criteria, the search and recovery."""

import copy
import json

import pytest
import torch
import transformers as T

from ann.prune.importance import block_influence, input_norms, magnitude, taylor, wanda
from ann.prune.surgery import drop_blocks, head_group_slices, mlp_channel_slices, prune_head_groups, prune_mlp_channels, towers


def _llama():
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
                        num_key_value_heads=2, tie_word_embeddings=True)
    return T.LlamaForCausalLM(cfg).eval()


def test_removing_dead_structures_leaves_the_function_unchanged_and_the_model_reloads(tmp_path):
    model = _llama()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():  # zero the structures we will cut: the function must not change
        (t,) = towers(model)
        for layer in model.model.layers:
            for lin, axis, idx in mlp_channel_slices(t, layer, torch.arange(40, 48)) + head_group_slices(t, layer, 1):
                lin.weight.index_fill_(axis, idx, 0.0)
        ref = model(ids).logits
    pruned = copy.deepcopy(model)
    (t,) = towers(pruned)
    prune_mlp_channels(t, [list(range(40))] * 3)
    prune_head_groups(t, [[0]] * 3)
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
    (t,) = towers(model)
    drop_blocks(t, [1])
    assert model.config.num_hidden_layers == 2 and [l.self_attn.layer_idx for l in model.model.layers] == [0, 1]
    with torch.no_grad():
        model.generate(ids, max_new_tokens=3, do_sample=False)
    model.save_pretrained(tmp_path)
    assert T.AutoModelForCausalLM.from_pretrained(tmp_path).config.num_hidden_layers == 2
    with pytest.raises(ValueError, match="leaves none"):
        drop_blocks(t, [0, 1])
    with pytest.raises(ValueError, match="every one"):
        prune_head_groups(t, [[]] * 2)
    with pytest.raises(ValueError, match="same number"):
        prune_mlp_channels(t, [[0, 1], [0]])
    with pytest.raises(ValueError, match="no transformer layers this surgery knows"):
        towers(torch.nn.Linear(2, 2))


def test_importance_criteria_rank_a_dead_channel_last_and_block_influence_is_in_range():
    model = _llama()
    ids = torch.randint(0, 64, (2, 10))
    layer = model.model.layers[0]
    (t,) = towers(model)
    with torch.no_grad():
        for lin, axis, idx in mlp_channel_slices(t, layer, torch.tensor([5])):
            lin.weight.index_fill_(axis, idx, 0.0)
    norms = input_norms(model, lambda m: m(ids), [layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj])
    model(ids).logits.float().logsumexp(-1).mean().backward()  # any calibration loss
    for crit in (magnitude, wanda, taylor):
        scores = [crit(mlp_channel_slices(t, layer, torch.tensor([j])), input_norms=norms) for j in range(48)]
        assert scores[5] == min(scores) == 0.0 and max(scores) > 0
    bi = block_influence(model.model.layers, model, lambda m: m(ids))
    assert len(bi) == 3 and all(0.0 <= b <= 2.0 for b in bi)


@pytest.mark.parametrize("criterion", ["magnitude", "wanda", "taylor"])
def test_prune_reaches_the_ratio_keeps_working_and_refuses_bad_requests(criterion):
    model = _llama()
    ids = torch.randint(0, 64, (2, 10))

    def run(m):
        return m(ids).logits

    def loss(m):
        return torch.nn.functional.cross_entropy(m(ids).logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))

    from ann.prune.plan import count_params, prune

    p0 = count_params(model)
    info = prune(model, 0.3, run=run, blocks=1, criterion=criterion, loss=loss)
    assert info["params_before"] == p0 and info["params_after"] == count_params(model)
    assert info["ratio"] >= 0.3 and info["ratio"] < 0.3 + 0.01 + 1e-9  # the overshoot allowance
    assert info["moves"][0]["structure"] == "blocks" and model.config.num_hidden_layers == 2
    assert all(p.grad is None for p in model.parameters())
    with torch.no_grad():
        assert model(ids).logits.shape == (2, 10, 64)
    for bad, match in (({"ratio": 1.0}, "in \\[0, 1\\)"), ({"ratio": 0.2, "blocks": 3}, "at least one must stay"),
                       ({"ratio": 0.2, "criterion": "random"}, "choose one of"), ({"ratio": 0.97}, "at most"),
                       ({"ratio": 0.2, "criterion": "taylor"}, "needs loss"),
                       ({"ratio": 0.2, "structures": ["width"]}, "choose from")):
        fresh = _llama()
        before = {k: v.clone() for k, v in fresh.state_dict().items()}
        with pytest.raises(ValueError, match=match):
            prune(fresh, run=run, **bad)
        assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in before.items())  # refused before any change


def test_the_search_cuts_the_structure_whose_removal_costs_least():
    """A model whose last block is (nearly) an identity and whose MLPs all matter: the search drops the block."""
    from ann.prune.plan import prune

    model = _llama()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        last = model.model.layers[2]
        last.self_attn.o_proj.weight.mul_(1e-3)
        last.mlp.down_proj.weight.mul_(1e-3)
        for layer in model.model.layers[:2]:
            layer.mlp.down_proj.weight.mul_(30.0)
    info = prune(model, 0.3, run=lambda m: m(ids).logits, structures=("blocks", "mlp"), step=0.5)
    assert info["moves"][0]["structure"] == "blocks" and info["moves"][0]["dropped"] == [2]


def _vit():
    torch.manual_seed(0)
    cfg = T.ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, intermediate_size=48, num_labels=5)
    return T.ViTForImageClassification(cfg).eval()


def _bert():
    torch.manual_seed(0)
    cfg = T.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    return T.BertForMaskedLM(cfg).eval()


def _mfm():
    from ann.models.mfm import MFMSpec, build_mfm

    spec = MFMSpec(image_size=16, patch_size=4, vision_hidden=16, vision_layers=2, vision_heads=2, text_hidden=16,
                   text_layers=2, text_heads=2, text_kv_heads=2, mlp_ratio=2)
    return build_mfm(spec, vocab_size=40, image_token_id=3, pad_token_id=0, bos_token_id=1, eos_token_id=2)


@pytest.mark.parametrize("family", ["vit", "bert", "mfm"])
def test_vit_bert_and_llava_towers_prune_save_and_reload(family, tmp_path):
    from ann.prune.plan import count_params, prune

    model = {"vit": _vit, "bert": _bert, "mfm": _mfm}[family]()
    if family == "vit":
        x = {"pixel_values": torch.rand(3, 1, 16, 16)}
    elif family == "bert":
        x = {"input_ids": torch.randint(0, 64, (3, 12))}
    else:
        ids = torch.tensor([[1, 3] + [3] * 15 + [5, 6, 7]] * 2)
        x = {"input_ids": ids, "pixel_values": torch.rand(2, 1, 16, 16)}
    names = sorted(t.name for t in towers(model))
    assert names == {"vit": ["vision"], "bert": ["encoder"], "mfm": ["text", "vision"]}[family]
    p0 = count_params(model)
    info = prune(model, 0.25, run=lambda m: m(**x).logits, step=0.25)
    assert info["ratio"] >= 0.25 and count_params(model) < p0
    if family == "bert":  # its config cannot express fewer heads: the search never tries them
        assert all(m["structure"] != "heads" for m in info["moves"])
    with torch.no_grad():
        out = model(**x).logits
    model.save_pretrained(tmp_path)
    back = type(model).from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.allclose(back(**x).logits, out, atol=1e-5)


def test_bert_heads_are_refused_with_the_reason():
    (t,) = towers(_bert())
    with pytest.raises(ValueError, match="head size as hidden_size / num_attention_heads"):
        prune_head_groups(t, [[0, 1]] * 2)


@pytest.mark.parametrize("lora_rank", [None, 4])
def test_distillation_recovery_moves_the_pruned_model_towards_the_teacher_and_merges_back(lora_rank):
    from ann.prune.plan import output_distance, prune
    from ann.prune.recover import kd_loss, recover
    from ann.train.code import block_batch_fn

    teacher = _llama()
    with torch.no_grad():
        teacher.model.norm.weight.mul_(20.0)  # confident outputs: a random init is nearly uniform, KL ~ 1e-5
    model = copy.deepcopy(teacher)
    blocks = torch.randint(0, 64, (12, 16), generator=torch.Generator().manual_seed(1))
    prune(model, 0.4, run=lambda m: m(blocks[:2]).logits, criterion="magnitude")

    def forward(m, batch):
        return m(input_ids=batch["input_ids"]).logits

    with torch.no_grad():
        before = float(output_distance(teacher(blocks).logits, model(blocks).logits))
    out, losses = recover(model, block_batch_fn(blocks, batch_size=4, seed=0), kd_loss(teacher, forward), steps=40,
                          lr=1e-3 if lora_rank else 3e-4, lora_rank=lora_rank, progress=False)
    assert type(out).__name__ == "LlamaForCausalLM" and len(losses) == 40
    with torch.no_grad():
        assert float(output_distance(teacher(blocks).logits, out(blocks).logits)) < 0.7 * before
    with pytest.raises(ValueError, match="steps"):
        recover(_llama(), block_batch_fn(blocks, batch_size=4, seed=0), kd_loss(teacher, forward), steps=0, lr=1e-3)


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
                 "--recover-steps", "2", "--lora-rank", "4", "--seq-len", "16", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    back = T.AutoModelForCausalLM.from_pretrained(out)
    assert back.config.num_hidden_layers == 2 and back.config.intermediate_size < 48
    assert (out / "prune.json").is_file()
    assert main([str(model_dir), "--ratio", "1.5", "--calib", str(model_dir / "calib.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "in [0, 1)" in capsys.readouterr().err
    assert main([str(model_dir), "--ratio", "0.2", "--calib", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "not a text task" in capsys.readouterr().err
    assert main([str(model_dir), "--ratio", "0.2", "--calib", str(model_dir / "calib.txt"), "--speedup", "0.5",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--speedup 0.5" in capsys.readouterr().err and not (tmp_path / "x").exists()
    fast = tmp_path / "fast"
    assert main([str(model_dir), "--ratio", "0.2", "--calib", str(model_dir / "calib.txt"), "--speedup", "1.2",
                 "--seq-len", "16", "--out", str(fast)]) == 0
    info = json.loads((fast / "prune.json").read_text())
    assert info["speedup_target"] == 1.2 and info["speedup_modelled"] >= 1 and info["latency_model"]["alpha"] >= 0


@pytest.mark.parametrize("family", ["vit", "bert", "mfm"])
def test_cli_prunes_vit_bert_and_the_mfm_with_their_calibration_data(family, tmp_path, capsys):
    from ann.prune.__main__ import main

    model_dir = tmp_path / "m"
    if family == "vit":
        model, calib = _vit(), "synthmed"
        model.save_pretrained(model_dir)
    elif family == "bert":
        from transformers import PreTrainedTokenizerFast
        from tokenizers import Tokenizer, models, pre_tokenizers

        model, calib = _bert(), str(tmp_path / "calib.txt")
        model.save_pretrained(model_dir)
        words = [f"w{i}" for i in range(60)]
        tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(["[UNK]", *words])}, unk_token="[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
        PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(model_dir)
        (tmp_path / "calib.txt").write_text(" ".join(words * 10))
    else:
        from ann.models.mfm import MFMSpec, build_mfm
        from ann.models.mfm_tokenizer import IMAGE_TOKEN, build_vqa_tokenizer

        tok = build_vqa_tokenizer()
        spec = MFMSpec(image_size=32, patch_size=8, vision_hidden=16, vision_layers=2, vision_heads=2, text_hidden=16,
                       text_layers=2, text_heads=2, text_kv_heads=1, mlp_ratio=2)
        model = build_mfm(spec, vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                          pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        model.save_pretrained(model_dir)
        tok.save_pretrained(model_dir)
        calib = "synthmed"
    out = tmp_path / "pruned"
    code = main([str(model_dir), "--ratio", "0.2", "--calib", calib, "--recover-steps", "2", "--seq-len", "8",
                 "--calib-samples", "8", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    back = type(model).from_pretrained(out)
    assert sum(p.numel() for p in back.parameters()) < sum(p.numel() for p in model.parameters())
    if family != "bert":  # a text file is not what an image model calibrates on
        assert main([str(model_dir), "--ratio", "0.2", "--calib", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
        assert "use --calib synthmed" in capsys.readouterr().err


def test_kd_loss_adds_the_next_token_loss_from_the_same_student_forward():
    from ann.prune.recover import kd_loss, next_token_loss

    model = _llama()
    ids = torch.randint(0, 64, (2, 12))

    def forward(m, batch):
        return m(input_ids=batch["input_ids"]).logits

    with torch.no_grad():
        logits = model(ids).logits
        ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1))
        assert torch.allclose(next_token_loss(logits, {"input_ids": ids}), ce)
        both = kd_loss(model, forward, task_loss=next_token_loss)(model, {"input_ids": ids})
        assert torch.allclose(both, ce, atol=1e-5)  # the distance of a model to itself is 0
        other = _llama()
        torch.nn.init.normal_(other.lm_head.weight)
        assert kd_loss(model, forward, task_loss=next_token_loss)(other, {"input_ids": ids}) > \
            next_token_loss(other(ids).logits, {"input_ids": ids})


def test_flops_count_matmuls_and_cpu_attention_and_the_latency_fit_passes_through_the_measured_model():
    from ann.prune.latency import count_blocks, fit_latency, forward_flops

    model = _llama()
    ids = torch.randint(0, 64, (2, 10))
    flops, out = forward_flops(model, lambda m: m(ids).logits)
    lin = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    attn = 3 * 2 * 2 * (2 * 4 * 10 * 10 * 8)  # layers x (QK^T, PV) x multiply-add x B H L S D: CPU SDPA counts
    assert out.shape == (2, 10, 64) and flops == 2 * 20 * lin + attn
    lat = fit_latency(model, lambda m: m(ids).logits, rounds=1)
    assert lat.alpha >= 0 and lat.beta >= 0 and count_blocks(model) == 3 and model.config.num_hidden_layers == 3
    point = lat.measured["model"]
    assert lat(point["flops"], point["blocks"]) == pytest.approx(point["seconds"])
    assert lat.measured["fewer_blocks"]["blocks"] == 2 and lat.measured["narrower_mlp"]["flops"] < point["flops"]


def test_a_speedup_target_makes_the_search_prefer_what_saves_time():
    """With a time model in which a block's fixed cost dominates, the latency-aware search drops blocks where the
    parameter-only search cuts MLP channels; both targets end up met."""
    from ann.prune.latency import LatencyModel
    from ann.prune.plan import prune

    ids = torch.randint(0, 64, (2, 10))
    plain = prune(_llama(), 0.2, run=lambda m: m(ids).logits, structures=("blocks", "mlp"))
    assert {m["structure"] for m in plain["moves"]} == {"mlp"}
    lat = LatencyModel(alpha=1e-12, beta=1.0, gamma=0.0, measured={})
    fast = prune(_llama(), 0.2, run=lambda m: m(ids).logits, structures=("blocks", "mlp"), speedup=1.4, latency=lat)
    assert "blocks" in {m["structure"] for m in fast["moves"]}
    assert fast["speedup_modelled"] >= 1.4 and fast["ratio"] >= 0.2
    with pytest.raises(ValueError, match="speedup"):
        prune(_llama(), 0.2, run=lambda m: m(ids).logits, speedup=0.5)


def test_once_only_the_time_target_is_left_the_last_mlp_move_cuts_just_enough_channels():
    """Time proportional to FLOPs: the search stops at the first MLP width that meets the speed-up (keeping one
    channel more would miss it), not a whole ``step`` past it."""
    from ann.prune.latency import LatencyModel, forward_flops
    from ann.prune.plan import prune

    ids = torch.randint(0, 64, (2, 10))
    run = lambda m: m(ids).logits  # noqa: E731
    model = _llama()
    flops0 = forward_flops(model, run)[0]
    info = prune(model, 0.05, run=run, structures=("mlp",), speedup=1.25, latency=LatencyModel(1.0, 0.0, 0.0, {}))
    per_channel = 2 * ids.numel() * 3 * 32 * 3  # gate, up and down rows of one channel, in each of the 3 layers
    flops = forward_flops(model, run)[0]
    assert info["speedup_modelled"] == pytest.approx(flops0 / flops) and flops0 / flops >= 1.25
    assert flops0 / (flops + per_channel) < 1.25
    assert info["moves"][-1]["amount"] < 6  # ceil(step * 48): the last move was sized to what was left
