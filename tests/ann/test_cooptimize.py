"""ann.cooptimize: geometry transfer, token-pruned runs, question compression, search, Pareto front and budget."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch

from ann.cooptimize import (Budget, BudgetInfeasible, Geometry, InputConfig, SearchSpace, TokenPrunedMFM, adapt_geometry,
                            choose, compress_questions, finetune, geometry_of, pareto_front)
from ann.models.mfm import MFMSpec, build_mfm
from ann.models.mfm_tokenizer import IMAGE_TOKEN, build_vqa_tokenizer
from ann.train.vqa import _sequence_logits, encode_vqa, image_features, predict_answers
from tasks.synthmed import SynthMedConfig, load_synthmed

# two layers in each tower so that pruning at layer 1 leaves a layer that sees fewer tokens
SPEC = MFMSpec(vision_hidden=32, vision_layers=2, vision_heads=2, text_hidden=32, text_layers=2, text_heads=2,
               text_kv_heads=1, mlp_ratio=2, patch_size=8, merge_factor=2)


@pytest.fixture(scope="module")
def tok():
    return build_vqa_tokenizer()


@pytest.fixture(scope="module")
def mfm(tok):
    return build_mfm(SPEC, vocab_size=len(tok), image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, seed=1)


@pytest.fixture(scope="module")
def split():
    return load_synthmed("val", SynthMedConfig(n_train=8, n_val=6, n_test=8, seed=3))


@torch.no_grad()
def test_runner_without_pruning_computes_what_the_mfm_computes(mfm, tok, split):
    data = encode_vqa(split, tok, mfm.num_visual_tokens)
    runner = TokenPrunedMFM(mfm)
    feats = image_features(mfm, data.images)
    torch.testing.assert_close(image_features(runner, data.images), feats, rtol=0, atol=1e-6)  # same ops, same order
    ids, mask = data.prompt_ids, data.prompt_mask
    f = feats[data.image_index]
    ref = _sequence_logits(mfm, f, ids, mask)[mask.bool()]
    # the HF mask vs our boolean one: the same attention up to float rounding
    torch.testing.assert_close(_sequence_logits(runner, f, ids, mask)[mask.bool()], ref, rtol=1e-5, atol=1e-5)
    assert predict_answers(runner, tok, data) == predict_answers(mfm, tok, data)


@torch.no_grad()
def test_pruning_keeps_the_grid_in_the_vit_and_drops_visual_tokens_in_the_decoder(mfm, tok, split):
    data = encode_vqa(split, tok, mfm.num_visual_tokens)
    full = image_features(TokenPrunedMFM(mfm), data.images)
    vit = image_features(TokenPrunedMFM(mfm, vit_keep=0.5, vit_layer=1), data.images)
    assert vit.shape == full.shape and not torch.allclose(vit, full)
    V = mfm.num_visual_tokens
    logits = TokenPrunedMFM(mfm, llm_keep=0.5, llm_layer=1)(inputs_embeds=mfm.get_input_embeddings()(data.prompt_ids),
                                                             attention_mask=data.prompt_mask).logits
    assert logits.shape[1] == data.prompt_ids.shape[1] - (V - V // 2)
    answers = predict_answers(TokenPrunedMFM(mfm, vit_keep=0.25, vit_layer=0, llm_keep=0.5), tok, data)
    assert len(answers) == len(data.answers)


def test_runner_refuses_bad_settings(mfm):
    with pytest.raises(ValueError, match="vit_keep"):
        TokenPrunedMFM(mfm, vit_keep=0.0)
    with pytest.raises(ValueError, match="llm_layer"):
        TokenPrunedMFM(mfm, llm_keep=0.5, llm_layer=2)
    with pytest.raises(ValueError, match="inputs_embeds"):
        TokenPrunedMFM(mfm)(input_ids=torch.ones(1, 3, dtype=torch.long))


@torch.no_grad()
def test_doubling_the_patch_equals_halving_the_resolution(mfm, split):
    """FlexiViT's PI-resize with area downsampling: a 16 px patch on 64 px = the 8 px kernel on 32 px (exact)."""
    x = torch.tensor(split.images[:3], dtype=torch.float32)
    a = image_features(TokenPrunedMFM(adapt_geometry(mfm, Geometry(64, 16, 2))), x)
    b = image_features(TokenPrunedMFM(adapt_geometry(mfm, Geometry(32, 8, 2))), x)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)  # two summation orders of the same linear maps


@torch.no_grad()
@pytest.mark.parametrize("new_k", [4, 1])
def test_merge_transfer_is_the_mean_or_the_copy_of_the_old_tokens(mfm, new_k):
    """k: 2 -> 4: the new first projector layer is the mean of the old one over the 2 x 2 old tokens it covers;
    2 -> 1: the new one on a patch is the old one on a 2 x 2 block of copies of it."""
    new = adapt_geometry(mfm, Geometry(64, 8, new_k))
    old_p, new_p = mfm.model.multi_modal_projector, new.model.multi_modal_projector
    x = torch.randn(2, 64, 32)  # (B, N, Dv) patch features on the 8 x 8 grid
    if new_k == 4:
        ref = old_p.linear_1(old_p.merge(x))  # (B, 16, Dt) on the 4 x 4 grid of 2 x 2 tokens
        ref = ref.reshape(2, 2, 2, 2, 2, -1).mean((2, 4)).reshape(2, 4, -1)  # mean over 2 x 2 blocks of tokens
        torch.testing.assert_close(new_p.linear_1(new_p.merge(x)), ref, rtol=1e-5, atol=1e-5)
    else:
        copies = x[:, :, None, :].expand(2, 64, 4, 32).reshape(2, 64, 128)  # each patch as a 2 x 2 block of itself
        torch.testing.assert_close(new_p.linear_1(x), old_p.linear_1(copies), rtol=1e-5, atol=1e-5)
    assert geometry_of(new) == Geometry(64, 8, new_k) and new.config.image_seq_length == new.num_visual_tokens


def test_geometry_errors_name_the_field(mfm):
    with pytest.raises(ValueError, match="image_size=60"):
        Geometry(60, 8, 1)
    with pytest.raises(ValueError, match="merge_factor=3"):
        Geometry(64, 8, 3)
    with pytest.raises(ValueError, match="patch_size=4"):
        adapt_geometry(mfm, Geometry(64, 4, 2))
    with pytest.raises(ValueError, match="integer multiples"):
        adapt_geometry(mfm, Geometry(48, 12, 1))


def test_question_compression_keeps_the_rarest_tokens_in_order(mfm, tok, split):
    V = mfm.num_visual_tokens
    data = encode_vqa(split, tok, V)
    short = compress_questions(data, tok, V, 4)
    assert compress_questions(data, tok, V, None) is data
    for i in range(len(data.answers)):
        q_old = data.prompt_ids[i][data.prompt_mask[i].bool()][1 + V:].tolist()
        q_new = short.prompt_ids[i][short.prompt_mask[i].bool()][1 + V:].tolist()
        assert len(q_new) == min(4, len(q_old))
        it = iter(q_old)
        assert all(t in it for t in q_new)  # a subsequence: order kept
        if len(q_old) > 4:
            assert tok.convert_tokens_to_ids("?") not in q_new  # in every template: least informative
        # the answer tokens follow the shortened prompt in the full sequence
        assert short.labels[i][short.labels[i] != -100].tolist() == data.labels[i][data.labels[i] != -100].tolist()
    with pytest.raises(ValueError, match="max_tokens=0"):
        compress_questions(data, tok, V, 0)


def test_space_pareto_and_budget():
    g = Geometry(64, 8, 2)
    space = SearchSpace(geometries=(g, Geometry(32, 8, 2)), vit_keeps=(1.0, 0.5), vit_layers=(0, 1), llm_keeps=(1.0,),
                        question_tokens=(None, 5))
    configs = space.configs()
    assert len(configs) == 2 * (1 + 2) * 1 * 2 and len(set(configs)) == len(configs)
    assert InputConfig(g) in configs
    rows = [{"label": "a", "acc": 0.9, "lat": 10.0}, {"label": "b", "acc": 0.85, "lat": 4.0},
            {"label": "c", "acc": 0.80, "lat": 5.0}, {"label": "d", "acc": 0.7, "lat": 1.0}]
    assert pareto_front(rows, maximize=["acc"], minimize=["lat"]) == [0, 1, 3]
    assert choose(rows, Budget({"lat": 5.0}), accuracy="acc")["label"] == "b"
    with pytest.raises(BudgetInfeasible, match="cheapest found is d with lat=1"):
        choose(rows, Budget({"lat": 0.5}), accuracy="acc")
    with pytest.raises(KeyError, match="energy"):
        choose(rows, Budget({"energy": 1.0}), accuracy="acc")
    with pytest.raises(ValueError, match="vit_keep=1.5"):
        InputConfig(g, vit_keep=1.5)
    with pytest.raises(ValueError, match="limits is empty"):
        Budget({})


def test_finetune_trains_an_adapted_model(mfm, tok):
    train = load_synthmed("train", SynthMedConfig(n_train=8, n_val=4, n_test=4, seed=3))
    new = adapt_geometry(mfm, Geometry(32, 8, 2))
    before = {k: v.clone() for k, v in new.state_dict().items()}
    res = finetune(new, encode_vqa(train, tok, new.num_visual_tokens), steps=2, images_per_batch=4, progress=False)
    assert len(res.losses) == 2 and not new.training
    changed = [k for k, v in new.state_dict().items() if not torch.equal(v, before[k])]
    assert any("vision_tower" in k for k in changed) and any("language_model" in k for k in changed)
    assert dataclasses.is_dataclass(Geometry(32, 8, 2))


@torch.no_grad()
def test_greedy_answers_never_feed_back_an_image_token(mfm, tok, split):
    """A model that prefers <image> (an untrained one, or one reading shortened questions) must not generate it: fed
    back, it would claim an image slot that has no features (it crashed the co-optimization once)."""
    from ann.train.vqa import greedy_answers

    class PrefersImage(torch.nn.Module):
        config = mfm.config

        def get_input_embeddings(self):
            return mfm.get_input_embeddings()

        def forward(self, inputs_embeds, attention_mask, position_ids):
            logits = mfm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids).logits
            logits[..., mfm.config.image_token_id] = 1e4
            return SimpleNamespace(logits=logits)

    data = encode_vqa(split, tok, mfm.num_visual_tokens)
    feats = image_features(mfm, data.images)[data.image_index]
    texts, _ = greedy_answers(PrefersImage(), tok, feats, data.prompt_ids, data.prompt_mask)
    assert len(texts) == len(data.answers) and not any(IMAGE_TOKEN in t for t in texts)
