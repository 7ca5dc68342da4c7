"""ann.speculative: the KV-cache bookkeeping, greedy identity with every draft source, rejection sampling's output
distribution, the expected-speed-up formula and the adaptive draft length."""

import copy
import math

import pytest
import torch
import transformers as T

from ann.fusion import pack_linears
from ann.speculative import (CachedLM, DraftLength, FallbackDraft, ModelDraft, PromptLookupDraft, Sampler,
                             check_same_tokenizer, expected_speedup, layer_skip_draft, speculative_generate)
from ann.speculative.decode import _verify


def _llama(seed=0, vocab=64, layers=4, hidden=32, tied=True):
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=48, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    return T.LlamaForCausalLM(cfg).eval()


def test_cached_logits_match_a_full_forward_after_crops_and_prompt_changes():
    model = _llama()
    lm = CachedLM(model)
    ids = torch.randint(0, 64, (20,)).tolist()
    with torch.no_grad():
        full = model(torch.tensor([ids])).logits[0]  # (20, V)
    # float32 on CPU: incremental and full forwards differ by reduction order only
    assert torch.allclose(lm.logits(ids[:12], 3), full[9:12], atol=1e-5)
    other = ids[:8] + [5, 6]
    with torch.no_grad():
        want = model(torch.tensor([other])).logits[0, -2:]
    assert torch.allclose(lm.logits(other, 2), want, atol=1e-5)  # cropped back to 8, fed 2
    assert lm.fed == 12 + 2 and lm.tokens == ids[:8] + [5, 6]
    assert torch.allclose(lm.logits(ids, 12), full[8:], atol=1e-5)  # 8 shared, 12 fed
    assert torch.allclose(lm.logits(ids[3:10], 1)[0], model(torch.tensor([ids[3:10]])).logits[0, -1], atol=1e-5)
    with pytest.raises(ValueError, match="last=0"):
        lm.logits(ids, 0)


def _plain(model, prompt, n, eos=None):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, eos_token_id=eos,
                         pad_token_id=0, attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("source", ["other-model", "self", "layer-skip", "prompt-lookup", "fallback", "packed",
                                    "lookup-limits"])
@pytest.mark.parametrize("adaptive", [False, True])
def test_greedy_speculative_decoding_gives_the_targets_own_greedy_tokens(source, adaptive):
    target = _llama(0)
    prompt = [1, 7, 8, 9, 7, 8, 9, 7, 8]  # repeats, so that prompt lookup has something to find
    want = _plain(target, prompt, 24)
    if source == "other-model":
        draft = ModelDraft(_llama(1, layers=1))
    elif source == "self":
        draft = ModelDraft(_llama(0))
    elif source == "layer-skip":
        draft, dropped = layer_skip_draft(target, 2, lambda m: m(torch.tensor([prompt])).logits)
        assert len(dropped) == 2 and 0 not in dropped and 3 not in dropped
        assert draft.lm.model.model.layers[0].self_attn.q_proj.weight is target.model.layers[0].self_attn.q_proj.weight
        assert len(target.model.layers) == 4  # the target keeps its blocks
    elif source == "fallback":
        draft = FallbackDraft(PromptLookupDraft(max_ngram=2), ModelDraft(_llama(1, layers=1), name="lm"))
    elif source == "packed":  # target and draft with oneDNN-packed linears: tokens still the unpacked target's
        target = copy.deepcopy(target)
        pack_linears(target)
        draft = ModelDraft(_llama(1, layers=1))
        pack_linears(draft.lm.model)
    elif source == "lookup-limits":
        draft = PromptLookupDraft(max_ngram=2, limits={1: 1})
    else:
        draft = PromptLookupDraft(max_ngram=2)
    got, stats = speculative_generate(CachedLM(target), draft, prompt, max_new_tokens=24,
                                      length=DraftLength(3, adaptive=adaptive, k_max=6))
    assert got == want
    assert stats.new_tokens == 24 and stats.tested >= stats.accepted and stats.rounds <= 24
    if source == "self":  # the target drafting for itself is always right
        assert stats.acceptance_rate == 1.0 and stats.rounds < 24 / 2
    if source == "fallback":  # prompt lookup where the context repeats, the model elsewhere
        assert draft.used["prompt-lookup"] > 0 and sum(draft.used.values()) == stats.rounds - (stats.lengths[-1] == 0)
    plain, pstats = speculative_generate(CachedLM(target), None, prompt, max_new_tokens=24)
    assert plain == want and pstats.rounds == 24 and pstats.guessed == 0


def test_generation_stops_after_eos_and_never_passes_max_new_tokens():
    target = _llama(0)
    prompt = [1, 7, 8, 9]
    free = _plain(target, prompt, 12)
    eos = free[5]
    want = free[: free.index(eos) + 1]
    got, _ = speculative_generate(CachedLM(target), ModelDraft(_llama(0)), prompt, max_new_tokens=12,
                                  length=DraftLength(4), eos_token_id=eos)
    assert got == want
    for n in (1, 2, 5):
        got, stats = speculative_generate(CachedLM(target), ModelDraft(_llama(0)), prompt, max_new_tokens=n,
                                          length=DraftLength(4))
        assert got == free[:n] and stats.new_tokens == n
    with pytest.raises(ValueError, match="max_new_tokens"):
        speculative_generate(CachedLM(target), None, prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        speculative_generate(CachedLM(target), None, [], max_new_tokens=3)


def _chi2_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    from scipy.stats import chisquare

    n = counts.sum()
    keep = probs * n >= 5  # pool cells too rare for the chi-square approximation
    obs = torch.cat([counts[keep], counts[~keep].sum().view(1)]).double()
    exp = torch.cat([probs[keep], probs[~keep].sum().view(1)]).double() * n
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    exp = exp * obs.sum() / exp.sum()  # float rounding: scipy wants the sums equal to ~1e-8
    return float(chisquare(obs.numpy(), exp.numpy()).pvalue)


def test_rejection_sampling_keeps_the_targets_distribution_and_a_wrong_rule_would_be_caught():
    """Synthetic distributions on 6 tokens: the first appended token is distributed as p_0 whatever q is, for a
    model draft (q) and a point-mass draft; the draft's own distribution q_0 fails the same test."""
    g = torch.Generator().manual_seed(0)
    V, n = 6, 3000
    p_logits = torch.randn(3, V, generator=g) * 1.5
    q = torch.softmax(torch.randn(2, V, generator=g) * 1.5, -1)
    sampler = Sampler(1.0, torch.Generator().manual_seed(1))
    p0 = torch.softmax(p_logits[0], -1)
    for point_mass in (False, True):
        counts = torch.zeros(V)
        for _ in range(n):
            guess = [sampler.draw(q[0]), sampler.draw(q[1])]
            new, _ = _verify(p_logits, guess, None if point_mass else q, sampler)
            counts[new[0]] += 1
        assert _chi2_pvalue(counts, p0) > 1e-3
        assert _chi2_pvalue(counts, q[0]) < 1e-6  # the test has the power to see the wrong distribution


def test_sampled_speculative_decoding_matches_the_targets_joint_distribution_end_to_end():
    """Two sampled tokens from a 6-token LM, drafted by another LM: the 36-cell joint frequency matches the
    target's exact p(x1) p(x2 | x1) (chi-square), while the draft's own joint does not."""
    target, small = _llama(0, vocab=6, layers=2, hidden=16, tied=False), _llama(3, vocab=6, layers=1, hidden=16, tied=False)
    with torch.no_grad():  # sharper than a random init's near-uniform distributions: total variation 0.30 apart
        for m in (target, small):
            m.lm_head.weight.mul_(5.0)
    prompt = [1, 2, 3]

    def joint(model):
        with torch.no_grad():
            p1 = torch.softmax(model(torch.tensor([prompt])).logits[0, -1], -1)
            seqs = torch.tensor([prompt + [x] for x in range(6)])
            p2 = torch.softmax(model(seqs).logits[:, -1], -1)  # (6, 6)
        return (p1[:, None] * p2).flatten()

    sampler = Sampler(1.0, torch.Generator().manual_seed(0))
    counts = torch.zeros(36)
    tlm, draft = CachedLM(target), ModelDraft(small)
    for _ in range(1500):
        got, _ = speculative_generate(tlm, draft, prompt, max_new_tokens=2, length=DraftLength(2), sampler=sampler)
        counts[got[0] * 6 + got[1]] += 1
    assert _chi2_pvalue(counts, joint(target)) > 1e-3
    assert _chi2_pvalue(counts, joint(small)) < 1e-6


def test_expected_speedup_formula_and_the_adaptive_length_follow_acceptance_and_cost():
    assert expected_speedup(0.0, 4, 0.1) == pytest.approx(1 / 1.4)
    assert expected_speedup(1.0, 4, 0.0) == 5
    assert expected_speedup(0.8, 4, 0.05) == pytest.approx((1 - 0.8 ** 5) / (0.2 * 1.2))
    # a Monte Carlo check of E[tokens per round] = (1 - a^(g+1)) / (1 - a)
    g = torch.Generator().manual_seed(0)
    acc = torch.rand(20000, 4, generator=g) < 0.7
    tokens = torch.cumprod(acc.int(), 1).sum(1) + 1
    assert float(tokens.float().mean()) == pytest.approx(expected_speedup(0.7, 4, 0.0), rel=0.02)
    with pytest.raises(ValueError, match="acceptance"):
        expected_speedup(1.5, 4, 0.1)

    def settle(a, draft_seconds):
        length = DraftLength(3, adaptive=True, k_max=8)
        for _ in range(30):
            k = length.next()
            acc = min(k, round(a * k))
            length.update(guessed=k, accepted=acc, tested=min(k, acc + 1), draft_seconds=draft_seconds * k,
                          verify_seconds=0.05 + 0.001 * k)
        return length.next()

    assert settle(1.0, 0.0) == 8  # always right and free: guess as far as allowed
    assert settle(0.0, 0.02) == 1  # always wrong and not free: guess as little as possible
    with pytest.raises(ValueError, match="draft length"):
        DraftLength(0)


def test_a_draft_with_another_tokenizer_is_refused():
    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def get_vocab(self):
            return dict(self.vocab)

    check_same_tokenizer(Tok({"a": 0, "b": 1}), Tok({"a": 0, "b": 1}))
    with pytest.raises(ValueError, match="does not match the target's"):
        check_same_tokenizer(Tok({"a": 0, "b": 1}), Tok({"a": 1, "b": 0}))
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookupDraft(max_ngram=1, min_ngram=2)
    with pytest.raises(ValueError, match="limits"):
        PromptLookupDraft(limits={1: 0})
    with pytest.raises(ValueError, match="skip"):
        layer_skip_draft(_llama(0), 3, lambda m: m(torch.tensor([[1, 2]])).logits)


def test_the_mfm_decoder_speculates_with_its_image_and_keeps_its_greedy_answer():
    from ann.models.mfm import MFMSpec, build_mfm

    def mfm(seed, layers):
        torch.manual_seed(seed)
        spec = MFMSpec(image_size=16, patch_size=4, vision_hidden=16, vision_layers=2, vision_heads=2, text_hidden=16,
                       text_layers=layers, text_heads=2, text_kv_heads=2, mlp_ratio=2)
        return build_mfm(spec, vocab_size=40, image_token_id=3, pad_token_id=0, bos_token_id=1, eos_token_id=2).eval()

    large, small = mfm(0, 3), mfm(1, 1)
    n_img = large.num_visual_tokens
    prompt = [1] + [3] * n_img + [10, 11, 12]
    px = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        want = large.generate(input_ids=torch.tensor([prompt]), pixel_values=px, max_new_tokens=8, do_sample=False,
                              min_new_tokens=8)[0, len(prompt):].tolist()
    got, stats = speculative_generate(CachedLM(large, prefill_kwargs={"pixel_values": px}),
                                      ModelDraft(small, prefill_kwargs={"pixel_values": px}), prompt,
                                      max_new_tokens=8, length=DraftLength(3))
    assert got == want and stats.guessed > 0
    assert not math.isnan(stats.acceptance_rate)


def test_prompt_lookup_limits_the_guess_by_the_matched_ngram():
    ids = [5, 6, 7, 8, 9, 1, 2, 5, 6, 7]
    assert PromptLookupDraft(max_ngram=3).propose(ids, 4, None).tokens == [8, 9, 1, 2]  # after "5 6 7"
    assert PromptLookupDraft(max_ngram=3, limits={3: 2}).propose(ids, 4, None).tokens == [8, 9]
    unigram = [4, 1, 2, 3, 4]  # only "4" recurs
    assert PromptLookupDraft(max_ngram=3).propose(unigram, 3, None).tokens == [1, 2, 3]
    assert PromptLookupDraft(max_ngram=3, limits={1: 1}).propose(unigram, 3, None).tokens == [1]
