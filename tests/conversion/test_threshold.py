import math

import pytest
import torch
from torch import nn

from ann.models import MLPConfig, ReLUMLP
from ann.train import TrainConfig, train_classifier
from tasks.classifier import evaluate
from conversion import ConversionConfig, UnsupportedLayerError, check_convertible, convert_sequential
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
    """Soft reset + v0 = theta/2, constant current c: spikes over T steps = clip(floor(T*c/theta + 1/2), 0, T)."""
    torch.manual_seed(1)
    ann = nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 3))
    x = torch.rand(50, 6)
    snn = convert_sequential(ann, x, timesteps=T, config=ConversionConfig(norm="max"))
    spikes = []
    hook = snn.net[1].register_forward_hook(lambda m, i, o: spikes.append((o != 0).sum(0)))
    with torch.no_grad():
        snn(x)
    hook.remove()
    lin, theta = ann[0], float(snn.net[1].theta)
    assert theta == pytest.approx(float(ann[:2](x).detach().max()))  # max norm: the largest activation
    current = (x.double() @ lin.weight.double().T + lin.bias.double()) / theta  # input current per step, in thresholds
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
    snn = convert_sequential(model, tr.x, timesteps=8)
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
        snn = convert_sequential(model, tr.x, timesteps=64, config=cfg)
        assert evaluate(snn, te.x, te.y) >= 0.9


def test_unsupported_layers_are_listed_before_any_work():
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.MaxPool2d(2), nn.LayerNorm(4), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    problems = dict(check_convertible(net))
    assert set(problems) == {"1", "2", "4", "<network>"}
    with pytest.raises(UnsupportedLayerError, match=r"1: MaxPool2d.*use nn.AvgPool2d.*2: LayerNorm is not supported.*"
                                                    r"4: Sigmoid is not a ReLU.*<network>: no ReLU"):
        convert_sequential(net, torch.zeros(0), timesteps=4)  # the empty calibration batch is never used
    with pytest.raises(UnsupportedLayerError, match="must end with an nn.Linear"):
        convert_sequential(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), torch.zeros(1, 3), timesteps=4)


def test_bad_config_and_timesteps():
    with pytest.raises(ValueError, match="ConversionConfig.percentile"):
        ConversionConfig(percentile=0)
    with pytest.raises(ValueError, match="ConversionConfig.norm"):
        ConversionConfig(norm="mean")
    with pytest.raises(ValueError, match="timesteps=0"):
        convert_sequential(nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)), torch.rand(4, 2), timesteps=0)
    assert math.isfinite(ConversionConfig().percentile)


def test_a_cnn_with_batchnorm_and_average_pooling_converts_per_channel():
    from ann.models import CNNConfig, ReLUCNN

    torch.manual_seed(0)
    cnn = ReLUCNN(config=CNNConfig(stages=((4, 8),), hidden=16))
    x = torch.rand(64, 64)
    cnn.train()(x)  # non-trivial BatchNorm running statistics
    cnn.eval()
    snn = convert_sequential(cnn, x, timesteps=128, config=ConversionConfig(per_channel=True))
    thetas = [m.theta for m in snn.net if hasattr(m, "theta")]
    assert [t.shape for t in thetas] == [torch.Size([4]), torch.Size([8]), torch.Size([16])]  # one per channel
    with torch.no_grad():
        ref, prefix = cnn(x), snn.prefix_outputs(x)
    err = [float((prefix[t - 1] - ref).abs().mean()) for t in (4, 32, 128)]
    assert err[2] < err[1] < err[0]
    assert err[2] < 0.05 * float(ref.abs().mean())
