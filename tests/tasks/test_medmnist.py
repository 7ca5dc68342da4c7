"""Tests for tasks.medmnist on small .npz files written here in the exact MedMNIST layout."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks.medmnist import MEDMNIST_KEYS, ImageSplit, load_medmnist

SIZES = {"train": 6, "val": 3, "test": 4}


def _arrays(*, rgb: bool, n_classes: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """MedMNIST layout: uint8 images (N, 28, 28[, 3]), uint8 labels (N, 1); every class appears in train."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for split, n in SIZES.items():
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        out[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
        out[f"{split}_labels"] = rng.integers(0, n_classes, size=(n, 1)).astype(np.uint8)
    out["train_labels"][:n_classes, 0] = np.arange(n_classes)
    return out


def _write(path: Path, arrays: dict[str, np.ndarray], *, compressed: bool = True) -> Path:
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    return path


@pytest.mark.parametrize("rgb", [False, True])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_loads_grey_and_rgb_in_the_medmnist_layout(tmp_path: Path, rgb: bool, split: str) -> None:
    arrays = _arrays(rgb=rgb)
    path = _write(tmp_path / "pathmnist.npz", arrays)
    ds = load_medmnist(path, split)
    n, c = SIZES[split], 3 if rgb else 1
    assert isinstance(ds, ImageSplit)
    assert ds.images.shape == (n, c, 28, 28)
    assert ds.images.dtype == torch.float32
    assert ds.labels.shape == (n,) and ds.labels.dtype == torch.int64
    assert ds.n_classes == 5 and ds.name == "pathmnist" and ds.split == split and len(ds) == n
    assert not ds.multi_label
    img = arrays[f"{split}_images"]
    expected = img.astype(np.float32) / 255.0
    expected = expected[:, None] if not rgb else expected.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
    # uint8 / 255 is computed the same way in float32 on both sides; only rounding of the division differs.
    torch.testing.assert_close(ds.images, torch.from_numpy(expected), atol=1e-7, rtol=0)
    assert torch.equal(ds.labels, torch.from_numpy(arrays[f"{split}_labels"][:, 0].astype(np.int64)))
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0


def test_flat_labels_uncompressed_npz_and_float_images_in_range(tmp_path: Path) -> None:
    arrays = _arrays(rgb=False)
    arrays = {k: (v[:, 0].astype(np.int64) if k.endswith("labels") else v) for k, v in arrays.items()}
    arrays["val_images"] = arrays["val_images"].astype(np.float32) / 255.0
    path = _write(tmp_path / "flat.npz", arrays, compressed=False)
    ds = load_medmnist(path, "val")
    assert ds.labels.shape == (SIZES["val"],)
    torch.testing.assert_close(ds.images[:, 0], torch.from_numpy(arrays["val_images"]), atol=0, rtol=0)


def test_multi_label_keeps_indicator_columns(tmp_path: Path) -> None:
    arrays = _arrays(rgb=False)
    rng = np.random.default_rng(1)
    for split, n in SIZES.items():
        arrays[f"{split}_labels"] = rng.integers(0, 2, size=(n, 14)).astype(np.uint8)
    ds = load_medmnist(_write(tmp_path / "chestmnist.npz", arrays), "test")
    assert ds.multi_label and ds.n_classes == 14
    assert ds.labels.shape == (SIZES["test"], 14)
    assert torch.equal(ds.labels, torch.from_numpy(arrays["test_labels"].astype(np.int64)))
    with pytest.raises(ValueError, match="n_classes=14"):
        load_medmnist(tmp_path / "chestmnist.npz", "train", n_classes=3)
    arrays["val_labels"][0, 3] = 2
    with pytest.raises(ValueError, match=r"bad_chest\.npz.*'val_labels'.*0/1 indicators"):
        load_medmnist(_write(tmp_path / "bad_chest.npz", arrays), "test")


def test_n_classes_is_inferred_over_all_splits_and_can_be_given(tmp_path: Path) -> None:
    arrays = _arrays(rgb=False, n_classes=3)
    arrays["test_labels"][0, 0] = 7  # the largest class appears only in test
    path = _write(tmp_path / "x.npz", arrays)
    assert load_medmnist(path, "train").n_classes == 8
    assert load_medmnist(path, "train", n_classes=9).n_classes == 9
    with pytest.raises(ValueError, match="n_classes=5"):
        load_medmnist(path, "train", n_classes=5)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_medmnist(tmp_path / "nope.npz", "train")


def test_unknown_split_lists_choices(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.npz", _arrays(rgb=False))
    with pytest.raises(ValueError, match="train, val, test"):
        load_medmnist(path, "validation")  # type: ignore[arg-type]


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    good = _write(tmp_path / "good.npz", _arrays(rgb=True))
    data = good.read_bytes()
    bad = tmp_path / "truncated.npz"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.npz.*corrupt"):
        load_medmnist(bad, "train")


def test_not_a_zip_is_corrupt(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.npz"
    bad.write_bytes(b"this is not a zip archive at all" * 10)
    with pytest.raises(ValueError, match=r"garbage\.npz.*corrupt"):
        load_medmnist(bad, "train")


def test_bare_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "single.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(ValueError, match=r"single\.npz.*not an \.npz archive"):
        load_medmnist(path, "train")


def test_damaged_member_is_corrupt(tmp_path: Path) -> None:
    """A zip whose central directory is intact but whose member data is damaged (CRC mismatch)."""
    good = _write(tmp_path / "good.npz", _arrays(rgb=False), compressed=False)
    data = bytearray(good.read_bytes())
    with zipfile.ZipFile(good) as z:
        info = z.getinfo("train_images.npy")
    # Flip a byte well inside the member's payload (past its local header and the .npy header).
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF
    bad = tmp_path / "damaged.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"damaged\.npz.*train_images.*corrupt"):
        load_medmnist(bad, "train")


def test_missing_keys_are_named_with_the_keys_found(tmp_path: Path) -> None:
    arrays = _arrays(rgb=False)
    del arrays["val_labels"], arrays["test_images"]
    path = _write(tmp_path / "partial.npz", arrays)
    with pytest.raises(ValueError) as e:
        load_medmnist(path, "train")
    msg = str(e.value)
    assert "partial.npz" in msg and "'val_labels'" in msg and "'test_images'" in msg
    assert "found" in msg and "'train_images'" in msg


def test_object_array_is_refused_not_unpickled(tmp_path: Path) -> None:
    arrays = _arrays(rgb=False)
    obj = np.empty(SIZES["train"], dtype=object)
    obj[:] = [{"label": i} for i in range(SIZES["train"])]
    arrays["train_labels"] = obj
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)  # savez pickles object arrays
    with pytest.raises(ValueError, match=r"pickled\.npz.*train_labels.*pickle"):
        load_medmnist(path, "test")


def test_length_mismatch_names_both_keys(tmp_path: Path) -> None:
    arrays = _arrays(rgb=False)
    arrays["val_labels"] = arrays["val_labels"][:-1]
    path = _write(tmp_path / "x.npz", arrays)
    with pytest.raises(ValueError, match=r"x\.npz.*'val_images' has 3 .* 'val_labels' has 2"):
        load_medmnist(path, "val")


@pytest.mark.parametrize(
    ("key", "value", "pattern"),
    [
        ("train_images", np.zeros((6, 28), np.uint8), r"'train_images' has shape \(6, 28\)"),
        ("train_images", np.zeros((6, 28, 28, 28), np.uint8), r"3-D MedMNIST volumes"),
        ("train_images", np.full((6, 28, 28), 2.0, np.float32), r"'train_images' is float.*\[0, 1\]"),
        ("train_images", np.full((6, 28, 28), np.nan, np.float32), r"non-finite"),
        ("train_images", np.zeros((6, 28, 28), np.int64), r"'train_images' has dtype int64"),
        ("train_images", np.zeros((0, 28, 28), np.uint8), r"'train_images' is empty"),
        ("train_labels", np.zeros((6, 1), np.float32), r"'train_labels' has dtype float32"),
        ("train_labels", np.zeros((6, 1, 1), np.uint8), r"'train_labels' has shape \(6, 1, 1\)"),
        ("train_labels", -np.ones((6, 1), np.int64), r"'train_labels'.*>= 0"),
    ],
)
def test_bad_arrays_name_file_key_and_problem(tmp_path: Path, key: str, value: np.ndarray, pattern: str) -> None:
    arrays = _arrays(rgb=False)
    arrays[key] = value
    path = _write(tmp_path / "bad.npz", arrays)
    with pytest.raises(ValueError, match=r"bad\.npz") as e:
        load_medmnist(path, "train")
    assert e.match(pattern)


def test_label_layouts_must_agree_across_splits(tmp_path: Path) -> None:
    arrays = _arrays(rgb=False)
    arrays["test_labels"] = np.zeros((SIZES["test"], 2), np.uint8)
    with pytest.raises(ValueError, match="disagree"):
        load_medmnist(_write(tmp_path / "x.npz", arrays), "train")


def test_image_split_validates_its_fields() -> None:
    images = torch.zeros(2, 1, 4, 4)
    with pytest.raises(ValueError, match="labels has 3 rows"):
        ImageSplit(images=images, labels=torch.zeros(3, dtype=torch.int64), n_classes=2, name="x", split="train")
    with pytest.raises(ValueError, match="ImageSplit.images must be a float32"):
        ImageSplit(images=images.double(), labels=torch.zeros(2, dtype=torch.int64), n_classes=2, name="x", split="train")
    with pytest.raises(ValueError, match="ImageSplit.split"):
        ImageSplit(images=images, labels=torch.zeros(2, dtype=torch.int64), n_classes=2, name="x", split="dev")


def test_keys_constant_matches_the_format() -> None:
    assert set(MEDMNIST_KEYS) == {f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")}
