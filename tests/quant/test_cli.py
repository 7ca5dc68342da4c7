"""``python -m quant quantize / report`` on a tiny local HF model folder."""

import json

import pytest
import torch

from quant.__main__ import main as cli
from quant.model_io import load_quantized


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    words = "the a of to in and is for def return import class if else with as self x y n".split()
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]").save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(d)
    (d / "calib.txt").write_text(" ".join(words * 20))
    return d


def test_quantize_writes_a_model_that_reloads_and_a_report(model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    code = cli(["quantize", str(model_dir), "--avg-bits", "4.5", "--calib", str(model_dir / "calib.txt"), "--out", str(out),
                "--calib-tokens", "32", "--calib-batches", "2", "--choices", "2", "4", "8", "--group-size", "16",
                "--metric", "hawq", "--probes", "2"])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "allocation.json").read_text())
    assert info["average_bits"] <= 4.5 and set(info["bits"].values()) <= {2, 4, 8}
    assert info["bits"]["lm_head"] == info["bits"]["model.embed_tokens"]  # tied: one width
    assert info["search_cost"]["evaluations"] > 0 and info["memory_bytes"]["quantized"]["total"] < info["memory_bytes"]["float"]["total"]
    model = load_quantized(out)
    with torch.no_grad():
        assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 21)
    assert cli(["report", str(out)]) == 0
    text = capsys.readouterr().out
    assert "model.layers.0.mlp.down_proj" in text and "average bits" in text and "tied, counted once" in text


def test_calib_takes_a_text_task_through_a_separate_process(model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    code = cli(["quantize", str(model_dir), "--avg-bits", "4", "--calib", "stdlib", "--out", str(out),
                "--calib-tokens", "32", "--calib-batches", "2", "--choices", "2", "4", "8", "--group-size", "16"])
    assert code == 0, capsys.readouterr().err
    info = json.loads((out / "allocation.json").read_text())
    assert info["calib"] == "stdlib" and info["average_bits"] <= 4
    assert sum(c["chosen"] for c in info["candidates"]) == 1  # the penalty path, validated on the held-out batch
    assert cli(["quantize", str(model_dir), "--avg-bits", "4", "--calib", "no-such-task", "--out", str(tmp_path / "o")]) == 2
    assert "not a text task" in capsys.readouterr().err


def test_quantize_says_what_is_wrong(model_dir, tmp_path, capsys):
    args = ["quantize", str(model_dir), "--calib", str(model_dir / "calib.txt"), "--out", str(tmp_path / "q"),
            "--calib-tokens", "32", "--calib-batches", "1"]
    assert cli(args + ["--avg-bits", "1.0", "--choices", "2", "4"]) == 2
    assert "minimum" in capsys.readouterr().err  # the budget error names the smallest reachable budget
    assert cli(args + ["--avg-bits", "4", "--choices", "3", "12"]) == 2
    assert "2..8 bits" in capsys.readouterr().err
    assert cli(["quantize", str(tmp_path), "--avg-bits", "4", "--calib", "x.txt", "--out", str(tmp_path / "o")]) == 2
    assert "not a Hugging Face model folder" in capsys.readouterr().err
