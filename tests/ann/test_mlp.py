import json

import pytest
import torch

from ann.checkpoint import load_mlp, save_mlp
from ann.models import MLPConfig, ReLUMLP
from ann.train import TrainConfig, train_classifier
from tasks.classifier import evaluate
from tasks.digits import load_digits_split


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    tr, va = load_digits_split("train"), load_digits_split("val")
    model = ReLUMLP(config=MLPConfig())
    res = train_classifier(model, x_train=tr.x, y_train=tr.y, x_val=va.x, y_val=va.y, config=TrainConfig(epochs=40), progress=False)
    return model, res


def test_mlp_reaches_95_percent_on_digits(trained):
    model, res = trained
    te = load_digits_split("test")
    assert evaluate(model, te.x, te.y) >= 0.95
    assert res.val_accuracy == max(acc for _, acc in res.history)


def test_checkpoint_round_trip_gives_identical_outputs(trained, tmp_path):
    model, _ = trained
    save_mlp(model, tmp_path / "ck", extra={"note": "x"})
    back, cfg = load_mlp(tmp_path / "ck")
    x = load_digits_split("test").x
    assert torch.equal(model(x), back(x))  # same weights, same kernels: bit-identical
    assert cfg["note"] == "x" and back.config == model.config


def test_missing_or_corrupt_checkpoint_names_the_file(trained, tmp_path):
    model, _ = trained
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_mlp(tmp_path / "none")
    save_mlp(model, tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"model\.safetensors is corrupt"):
        load_mlp(tmp_path / "ck")
    save_mlp(model, tmp_path / "ck2")
    cfg = json.loads((tmp_path / "ck2" / "config.json").read_text())
    cfg["model"]["hidden"] = [8]
    (tmp_path / "ck2" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match its config"):
        load_mlp(tmp_path / "ck2")


def test_bad_config_and_input_are_refused():
    with pytest.raises(ValueError, match="MLPConfig.hidden"):
        MLPConfig(hidden=())
    with pytest.raises(ValueError, match="TrainConfig.epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 64\)"):
        ReLUMLP(config=MLPConfig())(torch.zeros(2, 1, 8, 8))
