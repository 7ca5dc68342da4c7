import pytest
import torch

from tasks.digits import IMAGE_SHAPE, DigitsConfig, load_digits_split


def test_splits_are_deterministic_disjoint_and_cover_the_dataset():
    a = {s: load_digits_split(s) for s in ("train", "val", "test")}
    b = {s: load_digits_split(s, DigitsConfig(seed=0)) for s in ("train", "val", "test")}
    for s in a:
        assert torch.equal(a[s].x, b[s].x) and torch.equal(a[s].y, b[s].y)
    assert sum(len(v) for v in a.values()) == 1797
    rows = {tuple(r.tolist()) + (int(y),) for v in a.values() for r, y in zip(v.x, v.y)}
    # digits has a handful of exact duplicate images; the splits still hold 1797 samples in total
    assert len(rows) > 1700
    assert 0.55 < len(a["train"]) / 1797 < 0.65


def test_splits_are_stratified_and_scaled():
    for s in ("train", "val", "test"):
        d = load_digits_split(s)
        counts = torch.bincount(d.y, minlength=10)
        assert counts.min() >= 0.8 * counts.max()
        assert d.x.dtype == torch.float32 and d.x.min() >= 0 and d.x.max() <= 1
        assert d.images.shape[1:] == IMAGE_SHAPE


def test_other_seed_gives_other_split():
    assert not torch.equal(load_digits_split("test", DigitsConfig(seed=1)).x, load_digits_split("test").x)


def test_bad_input_names_the_problem():
    with pytest.raises(ValueError, match="unknown digits split 'dev'"):
        load_digits_split("dev")
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsConfig(val_fraction=0.7)
