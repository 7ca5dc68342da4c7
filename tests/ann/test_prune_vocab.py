"""ann.prune.vocab: domain vocabulary trimming of a byte-level BPE tokenizer and its LM's embedding rows."""

import inspect
import textwrap

import pytest
import torch
import transformers as T
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from ann.prune.vocab import domain_vocabulary, remap_ids, trim_embeddings, trim_tokenizer, trim_vocabulary

DOMAIN = inspect.getsource(textwrap)  # Python source: the "domain"
OTHER = "Zürich naïve déjà vu: 東京 ☃ — SELECT * FROM patients WHERE age > 40;"


@pytest.fixture(scope="module")
def bpe_tok() -> T.PreTrainedTokenizerFast:
    """A byte-level BPE (600 tokens, real merges) trained on English-ish prose, so the domain uses only part of it."""
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.decoder = decoders.ByteLevel()
    prose = inspect.getsource(inspect) + inspect.getsource(T.PreTrainedTokenizerFast) + OTHER * 20
    t.train_from_iterator([prose, DOMAIN[:2000]], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return T.PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                     pad_token="<eos>")


def _lm(vocab: int, tied: bool = True) -> T.LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied,
                        bos_token_id=1, eos_token_id=2, pad_token_id=2)
    return T.LlamaForCausalLM(cfg).eval()


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False).input_ids


def test_domain_text_tokenizes_the_same_and_other_text_falls_back_to_kept_pieces(bpe_tok):
    half = DOMAIN[: len(DOMAIN) // 2]
    keep = domain_vocabulary(bpe_tok, _ids(bpe_tok, half))
    assert keep == sorted(set(keep)) and {0, 1, 2} <= set(keep) and len(keep) < len(bpe_tok)
    new = trim_tokenizer(bpe_tok, keep)
    assert len(new) == len(keep)
    assert remap_ids(torch.tensor(_ids(bpe_tok, half)), keep, len(bpe_tok)).tolist() == _ids(new, half)
    for text in (OTHER, DOMAIN[len(DOMAIN) // 2:]):  # unseen tokens: smaller pieces, nothing lost
        got = _ids(new, text)
        assert max(got) < len(keep) and new.decode(got) == text
        assert len(got) >= len(_ids(bpe_tok, text))
    assert new.bos_token_id == 1 and new.eos_token_id == 2
    ids = torch.tensor(_ids(bpe_tok, half))
    frequent = domain_vocabulary(bpe_tok, ids, min_count=3)
    counts = torch.bincount(ids)
    assert set(frequent) < set(keep) and set((counts >= 3).nonzero().flatten().tolist()) <= set(frequent)
    with pytest.raises(ValueError, match="min_count"):
        domain_vocabulary(bpe_tok, ids, min_count=0)


@pytest.mark.parametrize("tied", [True, False])
def test_trimmed_model_gives_the_original_logits_on_kept_tokens_and_reloads(bpe_tok, tied, tmp_path):
    model = _lm(len(bpe_tok), tied)
    ids = torch.tensor([_ids(bpe_tok, DOMAIN[:600])])
    with torch.no_grad():
        ref = model(ids).logits
    new_tok, keep = trim_vocabulary(model, bpe_tok, ids)
    assert model.config.vocab_size == len(keep) and model.config.eos_token_id == keep.index(2)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    with torch.no_grad():
        got = model(remap_ids(ids, keep, len(bpe_tok))).logits
    assert torch.allclose(got, ref[..., keep], atol=1e-6)
    model.save_pretrained(tmp_path)
    new_tok.save_pretrained(tmp_path)
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tok_back = T.AutoTokenizer.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.allclose(back(torch.tensor([_ids(tok_back, DOMAIN[:600])])).logits, got, atol=1e-6)


def test_bad_vocabularies_are_refused_before_anything_changes(bpe_tok):
    model = _lm(len(bpe_tok))
    keep = domain_vocabulary(bpe_tok, _ids(bpe_tok, DOMAIN[:500]))
    with pytest.raises(ValueError, match="sorted"):
        trim_embeddings(model, keep[::-1])
    with pytest.raises(ValueError, match="outside"):
        trim_embeddings(model, keep + [len(bpe_tok) + 5])
    with pytest.raises(ValueError, match="eos_token_id=2 is not kept"):
        trim_embeddings(model, [k for k in keep if k != 2])
    assert model.config.vocab_size == len(bpe_tok) and model.get_input_embeddings().num_embeddings == len(bpe_tok)
    longest = max((k for k in keep if k >= 3), key=lambda i: len(bpe_tok.convert_ids_to_tokens(i)))  # not a special
    assert len(bpe_tok.convert_ids_to_tokens(longest)) >= 3
    with pytest.raises(ValueError, match="not closed under BPE merges"):
        trim_tokenizer(bpe_tok, [k for k in keep if len(bpe_tok.convert_ids_to_tokens(k)) == 1 or k == longest or k < 3])
    with pytest.raises(ValueError, match="special/added tokens"):
        trim_tokenizer(bpe_tok, [k for k in keep if k != 1])
    with pytest.raises(ValueError, match="outside the kept vocabulary"):
        remap_ids(torch.tensor(_ids(bpe_tok, OTHER)), keep, len(bpe_tok))
    with pytest.raises(ValueError, match="not in the tokenizer's vocabulary"):
        domain_vocabulary(bpe_tok, [len(bpe_tok) + 10])
    word = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    with pytest.raises(ValueError, match="BPE"):
        domain_vocabulary(T.PreTrainedTokenizerFast(tokenizer_object=word, unk_token="[UNK]"), [1])


def test_cli_trims_the_vocabulary_within_the_ratio(bpe_tok, tmp_path, capsys):
    import json

    from ann.prune.__main__ import main

    model_dir = tmp_path / "m"
    model = _lm(len(bpe_tok))
    model.save_pretrained(model_dir)
    bpe_tok.save_pretrained(model_dir)
    (tmp_path / "calib.txt").write_text(DOMAIN[:3000])
    n0 = sum(p.numel() for p in model.parameters())
    out = tmp_path / "pruned"
    args = [str(model_dir), "--calib", str(tmp_path / "calib.txt"), "--seq-len", "16", "--out", str(out), "--trim-vocab",
            "--vocab-min-count", "2"]
    assert main([*args, "--ratio", "0.3", "--recover-steps", "2", "--recover-ce"]) == 0, capsys.readouterr().err
    info = json.loads((out / "prune.json").read_text())
    assert "cross-entropy" in info["recovery"]["loss"]
    back = T.AutoModelForCausalLM.from_pretrained(out)
    tok = T.AutoTokenizer.from_pretrained(out)
    assert back.config.vocab_size == len(tok) == info["vocabulary"]["vocab_after"] < len(bpe_tok)
    assert sum(p.numel() for p in back.parameters()) == info["params_after"] <= 0.7 * n0 + 24 * 2 * 16
    assert abs(info["ratio"] - 0.3) < 0.03 and info["params_before"] == n0
    assert main([*args, "--ratio", "0.01", "--out", str(tmp_path / "x")]) == 2  # the vocabulary alone removes more
    assert "ask for at least that much" in capsys.readouterr().err
