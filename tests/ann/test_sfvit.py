import pytest
import torch

from ann.models.sfvit import SFViTConfig, SpikeFriendlyViT


def test_packed_input_gives_logits_and_traces_with_fx():
    cfg = SFViTConfig(image_size=8, patch_size=4, dim=16, depth=1, heads=2, num_classes=3, text_vocab=5, text_len=2)
    m = SpikeFriendlyViT(config=cfg).eval()
    x = SpikeFriendlyViT.pack(torch.rand(4, 1, 8, 8), torch.tensor([[1, 2], [0, 4], [3, 3], [2, 1]]))
    assert x.shape == (4, 66) and cfg.num_tokens == 1 + 2 + 4
    gm = torch.fx.symbolic_trace(m)  # single-input and free of shape-dependent control flow under tracing
    with torch.no_grad():
        torch.testing.assert_close(gm(x), m(x))
    assert m(x).shape == (4, 3)


def test_bad_input_and_config_are_named():
    m = SpikeFriendlyViT()
    with pytest.raises(ValueError, match=r"packed input \(B, 64\).*SpikeFriendlyViT.pack.*got \(2, 65\)"):
        m(torch.zeros(2, 65))
    with pytest.raises(ValueError, match="SFViTConfig.patch_size=3"):
        SFViTConfig(patch_size=3)
    with pytest.raises(ValueError, match="SFViTConfig.text_len=0"):
        SFViTConfig(text_vocab=5)
