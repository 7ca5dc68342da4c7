import pytest
import torch
from torch import nn

from ann.models.sfvit import SFViTConfig, SpikeFriendlyViT
from conversion import UnsupportedLayerError
from conversion.transformer import (TransformerConversionConfig, check_transformer_convertible, convert_transformer, ecm,
                                    transformer_accounting)
from quant.qcfs import replace_relu_with_qcfs

VQA_CFG = SFViTConfig(image_size=8, patch_size=4, dim=32, depth=2, heads=2, num_classes=5, text_vocab=7, text_len=3)


@pytest.fixture(scope="module")
def vqa_vit():
    """A small image + question ViT with QCFS activations and non-trivial weights (a few training steps)."""
    torch.manual_seed(0)
    m = SpikeFriendlyViT(config=VQA_CFG)
    x = SpikeFriendlyViT.pack(torch.rand(96, 1, 8, 8), torch.randint(0, 7, (96, 3)))
    replace_relu_with_qcfs(m, levels=8, x_calib=x)
    y = (x[:, :32].mean(1) * 10).long() % 5
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(20):
        loss = nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval(), x


def test_expectation_compensation_makes_the_running_mean_exact():
    torch.manual_seed(0)
    a, b = torch.randn(9, 3, 4, 5), torch.randn(9, 3, 5, 2)
    f = lambda p, q: torch.softmax(p @ q, dim=-1)  # noqa: E731
    y = ecm(f, a, b)
    t = torch.arange(1, 10).view(-1, 1, 1, 1).float()
    torch.testing.assert_close(y.cumsum(0) / t, f(a.cumsum(0) / t, b.cumsum(0) / t), rtol=1e-5, atol=1e-5)


def test_one_step_with_identity_sites_is_the_ann_exactly(vqa_vit):
    m, x = vqa_vit
    snn = convert_transformer(m, x, timesteps=4)
    logits, sites = snn.record_sites(x)
    with torch.no_grad():
        assert torch.equal(logits, m(x))
    assert set(sites) == set(snn.sites()) and len(snn.neurons) == len(sites)


def test_the_snn_approaches_the_ann_as_t_grows_and_reads_out_causally(vqa_vit):
    m, x = vqa_vit
    with torch.no_grad():
        ann = m(x)
        snn = convert_transformer(m, x, timesteps=64, config=TransformerConversionConfig(levels=4, percentile=100.0))
        prefix = snn.prefix_outputs(x)
        snn.timesteps = 8
        torch.testing.assert_close(snn(x), prefix[7], rtol=1e-4, atol=1e-5)  # the 8-step run is the 64-step run's prefix
    err = [float((prefix[t - 1] - ann).abs().mean()) for t in (2, 8, 64)]
    assert err[2] < err[1] < err[0]
    assert float((prefix[63].argmax(1) == ann.argmax(1)).float().mean()) >= 0.95


def test_accounting_reports_every_site(vqa_vit):
    m, x = vqa_vit
    snn = convert_transformer(m, x, timesteps=4)
    acct = transformer_accounting(snn, x[:16])
    assert {r["layer"] for r in acct["layers"]} == set(snn.sites())
    assert all(0.0 <= r["firing_rate"] <= 1.0 for r in acct["layers"])
    fc1 = next(r for r in acct["layers"] if r["layer"] == "blocks.0.fc1")
    assert fc1["mean_spike_level"] == 1.0  # the QCFS site is binary
    assert acct["sops"] > 0 and acct["ecm_macs"] > 0 and acct["ann_macs"] > 0


def test_unsupported_models_and_layers_are_named_before_any_work():
    m = SpikeFriendlyViT(config=SFViTConfig(depth=2))
    m.blocks[1].act = nn.GELU()
    assert [n for n, _ in check_transformer_convertible(m)] == ["blocks.1.act"]
    with pytest.raises(UnsupportedLayerError, match="blocks.1.act: GELU is not a ReLU"):
        convert_transformer(m, torch.zeros(0), timesteps=4)  # the empty calibration batch is never used
    with pytest.raises(UnsupportedLayerError, match="Linear is not an ann.models.SpikeFriendlyViT"):
        convert_transformer(nn.Linear(2, 2), torch.zeros(0), timesteps=4)
    with pytest.raises(ValueError, match="timesteps=0"):
        convert_transformer(SpikeFriendlyViT(), torch.rand(4, 64), timesteps=0)
    with pytest.raises(ValueError, match="levels=0"):
        TransformerConversionConfig(levels=0)
