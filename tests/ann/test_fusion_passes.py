"""ann.fusion passes: each rewrite computes what the HF model computes, decoding is unchanged, failures are undone."""

import copy
import warnings

import pytest
import torch
from torch import nn

import ann.fusion.qkv as qkv_mod
from ann.fusion import ALL_PASSES, DEFAULT_PASSES, FusionPass, FusionWarning, PassStatus, fuse_model, get_passes
from ann.fusion.bias_act import PackedLinearAct
from ann.fusion.fold_norm import NormFold, make_fold_rewrite
from ann.fusion.framework import PatternError, Rewrite, run_passes
from ann.fusion.packed import PackedLinear, packing_available
from ann.fusion.qkv import FusedLlamaAttention, FusedLlamaMLP, FusedViTAttention
from ann.models.mfm import MFMSpec, build_mfm

# Equivalence tolerance: the passes reorder float sums (merged / packed GEMMs, folded norms, SDPA vs eager
# softmax); on this tiny fp32 model logits (|y| ~ 1) move by ~1e-6 at most, so 1e-5 leaves a 10x margin.
ATOL = 1e-5
PAD, BOS, EOS, IMG = 0, 1, 2, 3
SPEC = MFMSpec(image_size=16, patch_size=4, merge_factor=2, vision_hidden=32, vision_layers=1, vision_heads=2,
               text_hidden=32, text_layers=2, text_heads=4, text_kv_heads=2, mlp_ratio=2, max_positions=64)
needs_onednn = pytest.mark.skipif(not packing_available(), reason="this torch build has no oneDNN")


def _mfm(attn: str = "sdpa"):
    m = build_mfm(SPEC, vocab_size=40, image_token_id=IMG, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # norms start at gamma = 1, beta = 0: randomise them so folding changes the weights
        for mod in m.modules():
            if type(mod).__name__ in ("LayerNorm", "LlamaRMSNorm") and getattr(mod, "weight", None) is not None:
                mod.weight.copy_(1 + 0.3 * torch.randn(mod.weight.shape, generator=g))
                if getattr(mod, "bias", None) is not None:
                    mod.bias.copy_(0.2 * torch.randn(mod.bias.shape, generator=g))
    m.set_attn_implementation(attn)
    return m.eval()


def _inputs(m):
    """Two prompts of different lengths, left-padded like ann.train.vqa.encode_vqa does."""
    V = m.num_visual_tokens
    q = [[10, 11, 12, 13, 14], [20, 21]]
    rows = [[BOS] + [IMG] * V + t for t in q]
    L = max(map(len, rows))
    ids = torch.tensor([[PAD] * (L - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (L - len(r)) + [1] * len(r) for r in rows])
    px = torch.rand(2, 1, SPEC.image_size, SPEC.image_size, generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": px}


def _logits(m, inp):
    with torch.no_grad():
        y = m(**inp).logits
    return y[inp["attention_mask"].bool()]  # real tokens only (padding rows are undefined)


def _greedy(m, inp, n=6):
    with torch.no_grad():
        return m.generate(**inp, max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True)


def _same_model(a: nn.Module, b_types: list, b_state: dict):
    assert [type(x) for x in a.modules()] == b_types
    sa = a.state_dict()
    assert sa.keys() == b_state.keys()
    assert all(torch.equal(sa[k], b_state[k]) for k in sa)


@pytest.fixture(scope="module")
def base():
    m = _mfm("eager")
    return m, _inputs(m)


@pytest.mark.parametrize("name", [p.name for p in DEFAULT_PASSES])
def test_each_pass_alone_is_equivalent(base, name):
    ref, inp = base
    if name in ("bias-act", "pack") and not packing_available():
        pytest.skip("no oneDNN")
    m = copy.deepcopy(ref)
    rep = fuse_model(m, inp, passes=[name], atol=ATOL)
    r = rep.result(name)
    assert r.status is PassStatus.APPLIED and r.rewrites and r.max_abs_diff <= ATOL, str(rep)
    assert (_logits(m, inp) - _logits(ref, inp)).abs().max() <= ATOL


@needs_onednn
def test_all_default_passes_keep_logits_and_greedy_tokens(base):
    ref, inp = base
    m = copy.deepcopy(ref)
    rep = fuse_model(m, inp, atol=ATOL, generate_tokens=4)
    assert rep.applied == ("sdpa", "merge-qkv", "bias-act", "fold-norm", "pack"), str(rep)
    assert {p for r in rep.results for p in r.patterns} >= {"vit-qkv", "llama-qkv", "llama-gate-up", "vit-fc1-gelu",
                                                            "projector-gelu", "vit-ln-qkv", "llama-rms-qkv"}
    # the tied LM head's final norm is refused, with the reason
    assert "tied" in rep.result("fold-norm").reason
    attn = [type(x) for x in m.modules() if "Attention" in type(x).__name__]
    assert FusedViTAttention in attn and FusedLlamaAttention in attn
    assert any(isinstance(x, FusedLlamaMLP) for x in m.modules())
    assert any(isinstance(x, PackedLinearAct) for x in m.modules()) and not any(type(x) is nn.Linear for x in m.modules())
    assert (_logits(m, inp) - _logits(ref, inp)).abs().max() <= 3 * ATOL  # three reorderings stacked
    # KV-cache decoding (GQA, rotary, left padding): identical tokens, longer than the check inside fuse_model
    assert torch.equal(_greedy(m, inp, 8), _greedy(ref, inp, 8))
    # fusion is for inference: merged weights show in the state dict
    keys = m.state_dict().keys()
    assert any(k.endswith("self_attn.qkv_proj.weight") for k in keys) and not any("q_proj" in k for k in keys)


def test_sdpa_pass_reroutes_eager_and_is_not_applicable_twice(base):
    ref, inp = base
    m = copy.deepcopy(ref)
    assert fuse_model(m, inp, passes=["sdpa"]).result("sdpa").status is PassStatus.APPLIED
    assert m.config.text_config._attn_implementation == "sdpa" and m.config.vision_config._attn_implementation == "sdpa"
    again = fuse_model(m, inp, passes=["sdpa"]).result("sdpa")
    assert again.status is PassStatus.NOT_APPLICABLE and "already" in again.reason
    toy = nn.Sequential(nn.Linear(4, 4))
    assert fuse_model(toy, torch.randn(2, 4), passes=["sdpa"]).result("sdpa").status is PassStatus.NOT_APPLICABLE


def test_merged_attention_decodes_with_the_sdpa_mask_format_too():
    ref = _mfm("sdpa")
    inp = _inputs(ref)
    m = copy.deepcopy(ref)
    assert fuse_model(m, inp, passes=["merge-qkv"], atol=ATOL, generate_tokens=3).applied == ("merge-qkv",)
    assert torch.equal(_greedy(m, inp, 8), _greedy(ref, inp, 8))
    one = {k: v[1:] for k, v in inp.items()}  # no padding at all: HF passes no mask, SDPA's causal flag is used
    assert torch.equal(_greedy(m, one, 8), _greedy(ref, one, 8))


def test_a_wrong_rewrite_is_undone_and_the_failing_pattern_named(base, monkeypatch):
    ref, inp = base
    m = copy.deepcopy(ref)
    types, state = [type(x) for x in m.modules()], {k: v.clone() for k, v in m.state_dict().items()}
    # break the merged MLP only: SiLU dropped
    monkeypatch.setattr(qkv_mod.FusedLlamaMLP, "forward", lambda self, x: self.down_proj(
        torch.mul(*self.gate_up_proj(x).chunk(2, dim=-1))))
    with pytest.warns(FusionWarning, match="merge-qkv.*llama-gate-up"):
        rep = fuse_model(m, inp, passes=["merge-qkv"], atol=ATOL)
    r = rep.result("merge-qkv")
    assert r.status is PassStatus.REJECTED and r.max_abs_diff > ATOL
    assert "failing alone: llama-gate-up" in r.reason and "vit-qkv (" not in r.reason
    _same_model(m, types, state)
    assert torch.equal(_logits(m, inp), _logits(ref, inp))


class _Block(nn.Module):
    """A norm whose output feeds a linear *and* the residual: folding its affine into the linear is not exact."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 8)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        y = self.norm(x)
        return self.fc(y) + y


def test_a_fold_that_is_not_exact_is_rejected_and_the_model_left_unchanged():
    m = nn.Sequential(_Block()).eval()
    x = torch.randn(3, 8)
    types, state = [type(x) for x in m.modules()], {k: v.clone() for k, v in m.state_dict().items()}
    bad = FusionPass("fold-toy", ("toy-ln-fc",), make_fold_rewrite((NormFold("toy-ln-fc", "_Block", "norm", ("fc",)),)))
    with pytest.warns(FusionWarning, match="fold-toy.*toy-ln-fc"):
        rep = run_passes(m, x, [bad], atol=1e-4)
    assert rep.result("fold-toy").status is PassStatus.REJECTED
    _same_model(m, types, state)
    assert isinstance(m[0].norm, nn.LayerNorm) and m[0].norm.elementwise_affine


def test_a_rewrite_that_raises_is_undone_and_named():
    m = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)).eval()
    types, state = [type(x) for x in m.modules()], {k: v.clone() for k, v in m.state_dict().items()}

    def half_then_fail(model, only):
        model[0] = nn.Identity()
        raise PatternError("toy-pattern", "1", "cannot rewrite this one")

    with pytest.warns(FusionWarning, match="toy-pattern@1"):
        rep = run_passes(m, torch.randn(2, 4), [FusionPass("boom", ("toy-pattern",), half_then_fail)])
    assert rep.result("boom").status is PassStatus.REJECTED and "toy-pattern" in rep.result("boom").reason
    _same_model(m, types, state)


def test_no_match_is_not_applicable_and_unavailable_compile_does_not_crash(monkeypatch):
    m = nn.Sequential(nn.Conv2d(1, 2, 3)).eval()
    x = torch.randn(1, 1, 5, 5)
    rep = fuse_model(m, x, passes=["merge-qkv", "bias-act", "fold-norm"])
    assert all(r.status is PassStatus.NOT_APPLICABLE for r in rep.results)

    def no_compiler(*a, **k):
        raise RuntimeError("no C compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    r = fuse_model(m, x, passes=["compile"]).result("compile")
    assert r.status is PassStatus.UNAVAILABLE and "no C compiler" in r.reason


def test_bias_act_without_onednn_warns_and_falls_back(base, monkeypatch):
    import ann.fusion.bias_act as ba

    ref, inp = base
    m = copy.deepcopy(ref)
    monkeypatch.setattr(ba, "packing_available", lambda: False)
    with pytest.warns(FusionWarning, match="no oneDNN"):
        rep = fuse_model(m, inp, passes=["bias-act"], atol=ATOL)
    assert rep.applied == ("bias-act",)
    assert (_logits(m, inp) - _logits(ref, inp)).abs().max() <= ATOL


def test_bad_arguments_give_clear_errors(base):
    ref, inp = base
    m = copy.deepcopy(ref)
    with pytest.raises(ValueError, match="unknown fusion pass"):
        fuse_model(m, inp, passes=["merge-qkvv"])
    with pytest.raises(TypeError, match="sequence of pass names"):
        get_passes("pack")
    with pytest.raises(ValueError, match="atol"):
        fuse_model(m, inp, atol=-1.0)
    with pytest.raises(TypeError, match="example_inputs"):
        fuse_model(m, [inp])
    with pytest.raises(ValueError, match="once"):
        fuse_model(m, inp, passes=["pack", "pack"])
    with pytest.raises(ValueError, match="generate"):
        fuse_model(nn.Linear(2, 2), torch.randn(1, 2), generate_tokens=2)
    with pytest.raises(ValueError, match="FusionPass.patterns"):
        FusionPass("x", (), lambda m, o: [])
    assert [p.name for p in ALL_PASSES][-1] == "compile" and "compile" not in [p.name for p in DEFAULT_PASSES]
    assert isinstance(Rewrite("a", "b"), Rewrite)
    _same_model(m, [type(x) for x in ref.modules()], ref.state_dict())  # nothing was touched


@needs_onednn
def test_report_serialises(base):
    ref, inp = base
    m = copy.deepcopy(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FusionWarning)  # a clean model fuses without warnings
        rep = fuse_model(m, inp)
    d = rep.to_dict()
    assert [p["name"] for p in d["passes"]] == [p.name for p in DEFAULT_PASSES]
    assert all(p["status"] == "applied" for p in d["passes"]) and d["atol"] == 1e-4
    assert d["passes"][-1]["patterns"] == {"linear->packed": sum(isinstance(x, PackedLinear) and not isinstance(x, PackedLinearAct)
                                                                 for x in m.modules())}
