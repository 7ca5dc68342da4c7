"""ann.models.code_lm presets and ann.train.code's data pipeline and entry point, on tiny models and corpora."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from ann.models.code_lm import CODE_LM_PRESETS, CodeLMConfig, build_code_lm, count_parameters
from ann.train import code as code_train
from tasks.code import CodeCorpusConfig, CodeFile, load_stdlib_corpus


TINY = CodeLMConfig(hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=32,
                    vocab_size=259, max_position_embeddings=64)


def write_corpus(root, n: int = 40) -> None:
    for i in range(n):
        sub = root / f"pkg{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"mod{i}.py").write_text(f'"""Module {i}."""\n\ndef f{i}(x):\n    return x * {i} + 1  # ünï\n' * (1 + i % 4),
                                        encoding="utf-8")


def test_presets_match_closed_form_and_smollm2_ids():
    for name, cfg in CODE_LM_PRESETS.items():
        assert (cfg.vocab_size, cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (49152, 1, 2, 2), name
        llama = cfg.to_llama_config()
        assert llama.tie_word_embeddings and llama.num_hidden_layers == cfg.num_layers
    model = build_code_lm(TINY, seed=0)
    assert count_parameters(model) == TINY.expected_parameters()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    again = build_code_lm(TINY, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))


@pytest.mark.parametrize("field,value,msg", [
    ("hidden_size", 0, "hidden_size"), ("num_heads", 3, "num_heads"), ("num_kv_heads", 3, "num_kv_heads"),
    ("bos_token_id", 10**6, "bos_token_id"), ("num_layers", True, "num_layers"), ("rope_theta", -1.0, "rope_theta"),
])
def test_config_errors_name_the_field(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        dataclasses.replace(TINY, **{field: value})


def test_encode_blocks_and_batches(byte_tok):
    tok = byte_tok
    files = [CodeFile("a.py", "ab\n"), CodeFile("b.py", "é")]
    ids = code_train.encode_files(files, tok).tolist()
    # [BOS] a b \n [EOS] [BOS] (2 bytes of é) [EOS]
    assert len(ids) == 5 + 4 and ids[0] == 1 and ids[4] == 2 and ids[5] == 1 and ids[-1] == 2
    stream = torch.arange(103, dtype=torch.int32)
    blocks = code_train.make_blocks(stream, 10)
    assert blocks.shape == (10, 10) and blocks[3, 0] == 30
    fn = code_train.block_batch_fn(blocks, batch_size=4, seed=7)
    b0 = fn(0, 0, 1)["input_ids"]
    assert b0.dtype == torch.long and b0.shape == (4, 10)
    assert torch.equal(b0, code_train.block_batch_fn(blocks, batch_size=4, seed=7)(0, 0, 1)["input_ids"])  # pure
    halves = torch.cat([fn(5, r, 2)["input_ids"] for r in range(2)])
    assert torch.equal(halves, fn(5, 0, 1)["input_ids"])  # DDP shards make up the global batch
    # one epoch (10 blocks over steps 0..4 with batch 2) visits every block exactly once
    fn2 = code_train.block_batch_fn(blocks, batch_size=2, seed=1)
    seen = torch.cat([fn2(s, 0, 1)["input_ids"][:, 0] for s in range(5)])
    assert sorted(seen.tolist()) == list(range(0, 100, 10))
    with pytest.raises(ValueError, match="seq_len"):
        code_train.make_blocks(stream, 1000)


def test_token_stream_is_cached(tmp_path, byte_tok):
    write_corpus(tmp_path / "corpus")
    cfg = CodeCorpusConfig(root=str(tmp_path / "corpus"))
    tok = byte_tok
    ids = code_train.stdlib_token_stream("train", tok, cache_dir=tmp_path / "cache", config=cfg, progress=False)
    cached = list((tmp_path / "cache" / "code_tokens").glob("stdlib-train-*.safetensors"))
    assert len(cached) == 1
    assert torch.equal(ids, code_train.encode_files(load_stdlib_corpus("train", cfg), tok))
    again = code_train.stdlib_token_stream("train", tok, cache_dir=tmp_path / "cache", config=cfg, progress=False)
    assert torch.equal(ids, again)


def test_held_out_files_respect_budget(tmp_path):
    write_corpus(tmp_path / "corpus", n=60)
    cfg = CodeCorpusConfig(root=str(tmp_path / "corpus"))
    test_files = load_stdlib_corpus("test", cfg)
    budget = sum(f.n_bytes for f in test_files) // 2
    chosen = code_train.held_out_files(budget, config=cfg)
    assert 0 < sum(f.n_bytes for f in chosen) <= budget
    assert {f.relpath for f in chosen} <= {f.relpath for f in test_files}
    assert chosen == code_train.held_out_files(budget, config=cfg)
    with pytest.raises(ValueError, match="max_bytes"):
        code_train.held_out_files(1, config=cfg)


def _cli(tmp_path, monkeypatch, tok, steps: int) -> tuple[argparse.ArgumentParser, list[str]]:
    write_corpus(tmp_path / "corpus", n=60)
    monkeypatch.setitem(CODE_LM_PRESETS, "tiny", TINY)
    monkeypatch.setattr(code_train, "load_smollm2_tokenizer", lambda cache_dir=None: tok)
    parser = argparse.ArgumentParser()
    code_train.add_arguments(parser)
    argv = ["--preset", "tiny", "--out", str(tmp_path / "out"), "--steps", str(steps), "--lr", "0.01",
            "--seq-len", "32", "--batch-size", "4", "--eval-bytes", "2000", "--val-bytes", "1500",
            "--eval-context", "32", "--eval-stride", "16", "--corpus-root", str(tmp_path / "corpus"),
            "--cache-dir", str(tmp_path / "cache"), "--checkpoint-every", "6", "--quiet"]
    return parser, argv


def test_run_end_to_end(tmp_path, monkeypatch, byte_tok):
    parser, argv = _cli(tmp_path, monkeypatch, byte_tok, steps=12)
    metrics = code_train.run(parser.parse_args(argv))
    assert metrics["params"] == TINY.expected_parameters()
    # a uniform model over 259 byte tokens scores log2(259) = 8.02 bits per byte; 12 steps at lr 1e-2 are below
    assert 0 < metrics["test_bits_per_byte"] < 8.0
    assert metrics["val"]["val_bpb"] > 0 and metrics["unigram_test_bits_per_byte"] > 0
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0 < saved["test"]["n_bytes"] <= 2000 and saved["test_bits_per_byte"] == metrics["test_bits_per_byte"]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert model(torch.tensor([[1, 50, 60, 70]])).logits.shape == (1, 4, 259)


def test_run_resumes_from_checkpoint(tmp_path, monkeypatch, byte_tok):
    parser, argv = _cli(tmp_path, monkeypatch, byte_tok, steps=6)
    code_train.run(parser.parse_args(argv))
    argv[argv.index("--steps") + 1] = "8"  # same warmup (steps // 10 = 0), so the checkpoint is compatible
    metrics = code_train.run(parser.parse_args(argv))
    assert metrics["resumed_from_step"] == 6 and metrics["loop"]["steps"] == 8


def test_teacher_distillation_pulls_the_student_towards_the_teacher(tmp_path, monkeypatch, byte_tok):
    """``--teacher smollm2`` (here a small random Llama over the same 259 tokens stands in for SmolLM2): after the
    same steps, the distilled student is closer to the teacher (KL on training blocks) than the one trained on
    cross-entropy alone."""
    torch.manual_seed(0)
    teacher = LlamaForCausalLM(LlamaConfig(vocab_size=259, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)).eval()
    with torch.no_grad():
        teacher.lm_head.weight.mul_(40.0)  # a random init is near-uniform (entropy 5.4 of 5.6 nats); peak it
    monkeypatch.setattr(code_train, "load_teacher", lambda cache_dir=None: teacher)
    kl = {}
    for name in ("none", "smollm2"):
        parser, argv = _cli(tmp_path / name, monkeypatch, byte_tok, steps=12)
        metrics = code_train.run(parser.parse_args([*argv, "--teacher", name]))
        assert metrics["teacher"] == name
        student = AutoModelForCausalLM.from_pretrained(tmp_path / name / "out" / "model").eval()
        x = torch.tensor([byte_tok('"""Module 3."""\n\ndef f3(x):\n    return x * 3 + 1\n')["input_ids"]])
        with torch.no_grad():
            t, s = teacher(x).logits.log_softmax(-1), student(x).logits.log_softmax(-1)
        kl[name] = float((t.exp() * (t - s)).sum(-1).mean())
    assert kl["smollm2"] < 0.85 * kl["none"]  # measured 2.47 vs 3.50 nats
    assert "KL" in metrics["objective"]
