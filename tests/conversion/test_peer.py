import torch
from torch import nn

from ann.models.sfvit import SFViTConfig, SpikeFriendlyViT
from conversion.peer import spikingjelly_convert, spikingjelly_prefix_outputs, with_relu
from quant.qcfs import QCFS, replace_relu_with_qcfs


def test_spikingjelly_converts_the_same_weights_with_relus_and_approaches_the_ann():
    torch.manual_seed(0)
    ann = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    x = torch.rand(200, 6)
    replace_relu_with_qcfs(ann, levels=8, x_calib=x)
    plain = with_relu(ann)
    assert not any(isinstance(m, QCFS) for m in plain.modules()) and isinstance(ann[1], QCFS)
    sj = spikingjelly_convert(ann, [x[:100], x[100:]])
    out = spikingjelly_prefix_outputs(sj, x, 256)
    with torch.no_grad():
        ref = plain(x)
    assert out.shape == (256, 200, 3)
    assert float((out[255] - ref).abs().mean()) < float((out[7] - ref).abs().mean())


def test_spikingjelly_runs_on_the_spike_friendly_vit():
    """Its step-mode rewrite refuses LayerNorm; the single-step graph converts the ReLUs and runs."""
    torch.manual_seed(0)
    m = SpikeFriendlyViT(config=SFViTConfig(dim=16, depth=1, heads=2)).eval()
    x = torch.rand(32, 64)
    sj = spikingjelly_convert(m, [x])
    assert spikingjelly_prefix_outputs(sj, x, 4).shape == (4, 32, 10)
