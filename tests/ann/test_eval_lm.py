"""ann.eval.lm: bits per byte against hand computations on tiny random Llama models."""

from __future__ import annotations

import math

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ann.eval.lm import bits_per_byte, score_windows

TEXTS = [
    "def f(x):\n    return x + 1\n",
    "héllo wörld — ünïcode bytes count, not characters\n" * 3,
    "",
    "class A:\n    pass\n" * 4,
]


def byte_tokenizer(*, bos: bool = True) -> PreTrainedTokenizerFast:
    """One token per UTF-8 byte (ids 2..257), plus <bos>=0 and <eos>=1."""
    vocab = {"<bos>": 0, "<eos>": 1}
    for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet())):
        vocab[c] = i + 2
    t = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<bos>" if bos else None, eos_token="<eos>")


def tiny_llama(*, layers: int = 2, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # larger logits than the 0.02-std init, so the test sees context effects clearly
        for p in model.parameters():
            if p.dim() >= 2:
                p.mul_(20.0)
    return model


def reference_nats(model, ids: list[int], *, context: int, stride: int) -> float:
    """Each target p scored from its own forward pass over ids[b(p):p], b(p) from the closed form."""
    total = 0.0
    for p in range(1, len(ids)):
        k = max(0, math.floor((p - context) / stride) + 1)
        b = k * stride
        assert 0 <= b <= p - 1 and p - b + 1 <= context
        logits = model(input_ids=torch.tensor([ids[b:p]])).logits[0, -1].double()
        total += float(-torch.log_softmax(logits, -1)[ids[p]])
    return total


def test_one_window_equals_full_sequence_nll():
    tok, model = byte_tokenizer(), tiny_llama()
    text = TEXTS[0]
    ids = [0] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)  # (T, V)
    hand = float(-sum(logp[t, ids[t + 1]] for t in range(len(ids) - 1)))
    res = bits_per_byte(model, tok, [text], context=64, progress=False)
    assert res.n_tokens == len(ids) - 1 == len(text.encode())  # BOS not scored
    assert res.n_bytes == len(text.encode("utf-8"))
    # float32 forward vs the double-accumulated hand sum: ~1e-6 relative
    assert res.total_nats == pytest.approx(hand, rel=1e-5)
    assert res.bits_per_byte == pytest.approx(hand / (math.log(2) * res.n_bytes), rel=1e-5)
    assert res.perplexity == pytest.approx(math.exp(hand / res.n_tokens), rel=1e-5)
    # the same text in windows larger than itself, any stride: identical sum
    res2 = bits_per_byte(model, tok, [text], context=len(ids), stride=3, progress=False)
    assert res2.total_nats == pytest.approx(hand, rel=1e-5)


@pytest.mark.parametrize("context,stride", [(8, 3), (8, 7), (5, 1), (16, 8)])
def test_windows_match_closed_form_reference(context, stride):
    tok, model = byte_tokenizer(), tiny_llama()
    text = TEXTS[0] + TEXTS[3]
    ids = [0] + tok(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hand = reference_nats(model, ids, context=context, stride=stride)
    res = bits_per_byte(model, tok, [text], context=context, stride=stride, batch_size=3, progress=False)
    assert res.n_tokens == len(ids) - 1
    assert res.total_nats == pytest.approx(hand, rel=1e-5)  # float32 forward passes


def test_windows_score_every_token_once():
    # Zero layers: a token's prediction depends on that token only, so the NLL sum cannot depend on the
    # windowing unless a token is skipped or scored twice.
    tok, model = byte_tokenizer(), tiny_llama(layers=0)
    full = bits_per_byte(model, tok, TEXTS, context=4096, progress=False)
    for context, stride in [(4, 1), (4, 3), (7, 2), (32, 31)]:
        res = bits_per_byte(model, tok, TEXTS, context=context, stride=stride, progress=False)
        assert res.n_tokens == full.n_tokens == sum(len(t.encode()) for t in TEXTS)
        assert res.total_nats == pytest.approx(full.total_nats, rel=1e-6)
    for n in range(0, 40):
        for context, stride in [(4, 1), (4, 3), (9, 4)]:
            scored = [p for _, e, s in score_windows(n, context=context, stride=stride) for p in range(s, e)]
            assert scored == list(range(1, n))  # each position >= 1 once, in order
            assert all(e - b <= context and s >= b + 1 for b, e, s in score_windows(n, context=context, stride=stride))


def test_batching_and_padding_do_not_change_the_result():
    tok, model = byte_tokenizer(), tiny_llama()
    one = bits_per_byte(model, tok, TEXTS, context=24, stride=10, batch_size=1, progress=False)
    many = bits_per_byte(model, tok, TEXTS, context=24, stride=10, batch_size=7, progress=False)
    assert one.n_tokens == many.n_tokens
    assert many.total_nats == pytest.approx(one.total_nats, rel=1e-5)  # padded rows: float32 noise only
    assert one.n_bytes == sum(len(t.encode("utf-8")) for t in TEXTS)


def test_without_bos_first_token_is_context_only():
    tok, model = byte_tokenizer(bos=False), tiny_llama()
    res = bits_per_byte(model, tok, [TEXTS[0]], context=64, progress=False)
    assert res.n_tokens == len(TEXTS[0].encode()) - 1
    assert res.n_bytes == len(TEXTS[0].encode())


def test_restores_training_mode_and_validates():
    tok, model = byte_tokenizer(), tiny_llama()
    model.train()
    bits_per_byte(model, tok, [TEXTS[0]], context=16, progress=False)
    assert model.training
    with pytest.raises(ValueError, match="stride"):
        bits_per_byte(model, tok, [TEXTS[0]], context=16, stride=16, progress=False)
    with pytest.raises(ValueError, match="context"):
        bits_per_byte(model, tok, [TEXTS[0]], context=1, progress=False)
    with pytest.raises(ValueError, match="no bytes"):
        bits_per_byte(model, tok, [""], progress=False)
    with pytest.raises(TypeError, match="sequence of strings"):
        bits_per_byte(model, tok, "abc", progress=False)
