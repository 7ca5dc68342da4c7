import math

import pytest
import torch
from torch import nn

from ann.models import MLPConfig, ReLUMLP
from ann.train import TrainConfig, train_classifier
from ann.train.classifier import evaluate
from conversion import ConversionConfig, UnsupportedLayerError, check_convertible, convert_mlp
from tasks.digits import load_digits_split


@pytest.fixture(scope="module")
def digits_ann():
    torch.manual_seed(0)
    tr, va = load_digits_split("train"), load_digits_split("val")
    model = ReLUMLP(config=MLPConfig(hidden=(128, 128)))
    train_classifier(model, x_train=tr.x, y_train=tr.y, x_val=va.x, y_val=va.y, config=TrainConfig(epochs=30), progress=False)
    return model, tr


@pytest.mark.parametrize("T", [1, 7, 32])
def test_if_spike_counts_match_the_closed_form(T):
    """Soft reset + v0 = theta/2, constant current c: spikes over T steps = clip(floor(T*c + 1/2), 0, T)."""
    torch.manual_seed(1)
    ann = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 3))
    x = torch.rand(50, 6)
    snn = convert_mlp(ann, x, timesteps=T, config=ConversionConfig(norm="max"))
    spikes = []
    hook = snn.net[1].register_forward_hook(lambda m, i, o: spikes.append(o.sum(0)))
    with torch.no_grad():
        snn(x)
    hook.remove()
    lin = snn.net[0]
    current = (x.double() @ lin.weight.double().T + lin.bias.double())  # balanced input current per step
    expected = torch.clamp(torch.floor(T * current + 0.5), 0, T)
    # float32 accumulation can flip a count only where T*c + 1/2 sits on an integer
    near_edge = ((T * current + 0.5) - torch.round(T * current + 0.5)).abs() < 1e-4
    got = spikes[0].double()
    assert torch.equal(got[~near_edge], expected[~near_edge])
    assert (~near_edge).float().mean() > 0.95


def test_snn_approaches_the_ann_as_t_grows(digits_ann):
    model, tr = digits_ann
    te = load_digits_split("test")
    ann_acc = evaluate(model, te.x, te.y)
    snn = convert_mlp(model, tr.x, timesteps=8)
    errs, accs = {}, {}
    with torch.no_grad():
        ann_logits = model(te.x)
        for T in (8, 64, 256):
            snn.timesteps = T
            out = snn(te.x)
            errs[T] = float((out - ann_logits).abs().mean())
            accs[T] = evaluate(snn, te.x, te.y)
            agree = float((out.argmax(1) == ann_logits.argmax(1)).float().mean())
    assert errs[256] < errs[64] < errs[8]
    assert accs[64] >= ann_acc - 0.01
    assert agree >= 0.99  # at T=256


def test_hard_reset_and_max_norm_also_convert(digits_ann):
    model, tr = digits_ann
    te = load_digits_split("test")
    for cfg in (ConversionConfig(norm="max"), ConversionConfig(soft_reset=False, half_threshold_init=False)):
        snn = convert_mlp(model, tr.x, timesteps=64, config=cfg)
        assert evaluate(snn, te.x, te.y) >= 0.9


def test_unsupported_layers_are_listed_before_any_work():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    problems = dict(check_convertible(net))
    assert set(problems) == {"0", "1", "3"}
    with pytest.raises(UnsupportedLayerError, match=r"0: Conv2d is not supported.*1: BatchNorm2d.*3: Sigmoid"):
        convert_mlp(net, torch.zeros(0), timesteps=4)  # the empty calibration batch is never used
    with pytest.raises(UnsupportedLayerError, match="must end with an nn.Linear"):
        convert_mlp(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.zeros(1, 3), timesteps=4)


def test_bad_config_and_timesteps():
    with pytest.raises(ValueError, match="ConversionConfig.percentile"):
        ConversionConfig(percentile=0)
    with pytest.raises(ValueError, match="ConversionConfig.norm"):
        ConversionConfig(norm="mean")
    with pytest.raises(ValueError, match="timesteps=0"):
        convert_mlp(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), torch.rand(4, 2), timesteps=0)
    assert math.isfinite(ConversionConfig().percentile)
