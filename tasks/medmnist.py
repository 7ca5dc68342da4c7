"""Loader for MedMNIST-format ``.npz`` files that a user already has on disk (no downloads).

A MedMNIST file (https://medmnist.com, Yang et al., "MedMNIST v2", Scientific Data 2023) is a NumPy
``.npz`` archive with six arrays::

    train_images, train_labels, val_images, val_labels, test_images, test_labels

Images are ``uint8`` in ``[0, 255]``, either grey ``(N, H, W)`` or RGB ``(N, H, W, 3)``. Labels are integer
class indices ``(N, 1)`` (the published layout) or ``(N,)``, or, for the multi-label sets such as ChestMNIST,
``(N, K)`` 0/1 indicators for ``K`` labels. 3-D MedMNIST volumes (``(N, D, H, W)``) are not supported.

The archive is opened with ``np.load(path, allow_pickle=False)``: object (pickled) arrays are refused, never
unpickled. Every problem with the file raises an error that names the file, the array and what is wrong.

Shape letters: N examples, C channels (1 grey or 3 RGB), H height, W width, K labels of a multi-label set.
"""

from __future__ import annotations

import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

__all__ = ["MEDMNIST_SPLITS", "MEDMNIST_KEYS", "ImageSplit", "load_medmnist"]

MEDMNIST_SPLITS: tuple[str, ...] = ("train", "val", "test")
"""The splits a MedMNIST file holds, in its own order."""

MEDMNIST_KEYS: tuple[str, ...] = tuple(f"{s}_{kind}" for s in MEDMNIST_SPLITS for kind in ("images", "labels"))
"""The six arrays every MedMNIST ``.npz`` file must hold."""

_NPY_MAGIC = b"\x93NUMPY"


@dataclass(frozen=True, kw_only=True)
class ImageSplit:
    """One split of an image-classification dataset, ready for a model.

    Attributes:
        images: float32 tensor ``(N, C, H, W)`` with values in ``[0, 1]`` (C = 1 grey, 3 RGB).
        labels: int64 tensor, ``(N,)`` class indices in ``[0, n_classes)`` for single-label sets, or
            ``(N, K)`` 0/1 indicators for multi-label sets (then ``n_classes == K``).
        n_classes: number of classes (single-label) or of labels (multi-label).
        name: dataset name (for MedMNIST files, the file stem, e.g. ``"pathmnist"``).
        split: ``"train"``, ``"val"`` or ``"test"``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    n_classes: int
    name: str
    split: str

    def __post_init__(self) -> None:
        if not isinstance(self.images, torch.Tensor) or self.images.dtype != torch.float32 or self.images.ndim != 4:
            raise ValueError(
                "ImageSplit.images must be a float32 tensor (N, C, H, W); got "
                f"{type(self.images).__name__} {getattr(self.images, 'dtype', None)} "
                f"shape {tuple(getattr(self.images, 'shape', ()))}"
            )
        if not isinstance(self.labels, torch.Tensor) or self.labels.dtype != torch.int64 or self.labels.ndim not in (1, 2):
            raise ValueError(
                "ImageSplit.labels must be an int64 tensor (N,) or (N, K); got "
                f"{type(self.labels).__name__} {getattr(self.labels, 'dtype', None)} "
                f"shape {tuple(getattr(self.labels, 'shape', ()))}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageSplit.labels has {self.labels.shape[0]} rows but images has {self.images.shape[0]}; "
                "they must describe the same N examples"
            )
        if isinstance(self.n_classes, bool) or not isinstance(self.n_classes, int) or self.n_classes < 1:
            raise ValueError(f"ImageSplit.n_classes must be a positive int; got {self.n_classes!r}")
        if self.labels.ndim == 2 and self.labels.shape[1] != self.n_classes:
            raise ValueError(
                f"ImageSplit.n_classes is {self.n_classes} but the multi-label labels have "
                f"{self.labels.shape[1]} columns; set n_classes to the number of columns"
            )
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"ImageSplit.name must be a non-empty string; got {self.name!r}")
        if self.split not in MEDMNIST_SPLITS:
            raise ValueError(f"ImageSplit.split must be one of {MEDMNIST_SPLITS}; got {self.split!r}")

    @property
    def multi_label(self) -> bool:
        """True when ``labels`` is ``(N, K)`` 0/1 indicators rather than class indices."""
        return self.labels.ndim == 2

    def __len__(self) -> int:
        return int(self.images.shape[0])


def load_medmnist(
    path: str | os.PathLike,
    split: Literal["train", "val", "test"],
    *,
    n_classes: int | None = None,
) -> ImageSplit:
    """Load one split of a MedMNIST-format ``.npz`` file.

    Args:
        path: the ``.npz`` file (e.g. ``pathmnist.npz``, ``pathmnist_64.npz``).
        split: ``"train"``, ``"val"`` or ``"test"``.
        n_classes: number of classes of a single-label set; by default ``1 + max label`` over all three splits
            (so every split of one file reports the same number). Given explicitly, every label must be below it.

    Returns:
        An :class:`ImageSplit`: ``uint8`` images are scaled by ``1/255``; float images already in ``[0, 1]`` are
        kept; ``(N, H, W)`` becomes ``(N, 1, H, W)`` and ``(N, H, W, C)`` becomes ``(N, C, H, W)``; labels
        ``(N, 1)`` become ``(N,)``.

    Raises:
        ValueError: unknown split, a file that is not an ``.npz`` archive or is corrupt, missing arrays,
            pickled (object) arrays, or arrays of the wrong shape, dtype or range; the message names the file,
            the array and what is wrong.
        FileNotFoundError: ``path`` does not exist.
    """
    if split not in MEDMNIST_SPLITS:
        raise ValueError(f"unknown MedMNIST split {split!r}; choose one of {', '.join(MEDMNIST_SPLITS)}")
    if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1):
        raise ValueError(f"n_classes must be a positive int or None (inferred from the labels); got {n_classes!r}")
    path = Path(path)
    _check_archive(path)
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ValueError(f"MedMNIST file {path} is corrupt: cannot open it as an .npz archive ({e})") from e
    with npz:
        found = sorted(npz.files)
        missing = [k for k in MEDMNIST_KEYS if k not in found]
        if missing:
            raise ValueError(
                f"MedMNIST file {path} is missing array(s) {missing}; found {found}. "
                f"A MedMNIST .npz must hold all of {list(MEDMNIST_KEYS)}"
            )
        labels_by_split = {s: _read(npz, path, f"{s}_labels") for s in MEDMNIST_SPLITS}
        images_np = _read(npz, path, f"{split}_images")

    labels_np = {s: _labels_2d(path, f"{s}_labels", lab) for s, lab in labels_by_split.items()}
    widths = {s: lab.shape[1] for s, lab in labels_np.items()}
    if len(set(widths.values())) != 1:
        raise ValueError(
            f"MedMNIST file {path}: the label arrays disagree on the number of columns {widths}; "
            "every split must use the same label layout"
        )
    width = widths[split]
    multi_label = width > 1
    if multi_label:
        for s, lab in labels_np.items():
            if lab.size and (lab.min() < 0 or lab.max() > 1):
                raise ValueError(
                    f"MedMNIST file {path}, array '{s}_labels': multi-label (N, {width}) labels must be 0/1 "
                    f"indicators; found values in [{lab.min()}, {lab.max()}]"
                )
        if n_classes is not None and n_classes != width:
            raise ValueError(
                f"n_classes={n_classes} but MedMNIST file {path} has multi-label labels with {width} columns; "
                f"pass n_classes={width} or None"
            )
        n_out = width
    else:
        for s, lab in labels_np.items():
            if lab.size and lab.min() < 0:
                raise ValueError(
                    f"MedMNIST file {path}, array '{s}_labels': class indices must be >= 0; found {lab.min()}"
                )
        top = max((int(lab.max()) for lab in labels_np.values() if lab.size), default=-1)
        if n_classes is None:
            n_out = top + 1
            if n_out < 1:
                raise ValueError(f"MedMNIST file {path} holds no labels at all; cannot infer n_classes")
        else:
            if top >= n_classes:
                raise ValueError(
                    f"MedMNIST file {path}: a label equals {top} but n_classes={n_classes}; "
                    f"labels must lie in [0, n_classes), so pass n_classes >= {top + 1} or None"
                )
            n_out = n_classes

    labels = labels_np[split]
    images = _images_nchw(path, f"{split}_images", images_np)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"MedMNIST file {path}: '{split}_images' has {images.shape[0]} examples but '{split}_labels' has "
            f"{labels.shape[0]}; they must have the same length"
        )
    labels_t = torch.from_numpy(labels.astype(np.int64))
    if not multi_label:
        labels_t = labels_t[:, 0]  # (N, 1) -> (N,)
    return ImageSplit(images=images, labels=labels_t.contiguous(), n_classes=n_out, name=path.stem, split=split)


def _check_archive(path: Path) -> None:
    """Refuse a missing file, a directory, a bare ``.npy`` and anything that is not a readable zip archive."""
    if not path.exists():
        raise FileNotFoundError(f"MedMNIST file not found: {path} (expected a MedMNIST-format .npz file)")
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST path {path} is not a file (expected a MedMNIST-format .npz file)")
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
    if head == _NPY_MAGIC:
        raise ValueError(
            f"MedMNIST file {path} is a single .npy array, not an .npz archive; a MedMNIST file holds the six "
            f"arrays {list(MEDMNIST_KEYS)}"
        )
    # A truncated archive loses its central directory (at the end of a zip), so this also catches truncation.
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"MedMNIST file {path} is corrupt or truncated: it is not a valid .npz (zip) archive; "
            "re-download or re-create it"
        )


def _read(npz: np.lib.npyio.NpzFile, path: Path, key: str) -> np.ndarray:
    """Read one array; pickled (object) arrays and damaged members raise a ValueError naming file and key."""
    try:
        return npz[key]
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise ValueError(
                f"MedMNIST file {path}, array '{key}': holds Python objects (a pickled object array); refused, "
                "because loading pickles can run arbitrary code. Store it as a numeric array"
            ) from e
        raise ValueError(f"MedMNIST file {path}, array '{key}' is corrupt ({e}); re-create the file") from e
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        raise ValueError(f"MedMNIST file {path}, array '{key}' is corrupt ({e}); re-create the file") from e


def _labels_2d(path: Path, key: str, lab: np.ndarray) -> np.ndarray:
    """Check a label array's dtype and rank; return it as ``(N, K)`` (K = 1 for class indices)."""
    if lab.dtype.kind not in "iu":
        raise ValueError(
            f"MedMNIST file {path}, array '{key}' has dtype {lab.dtype}; labels must be integers (int or uint)"
        )
    if lab.ndim == 1:
        return lab[:, None]  # (N,) -> (N, 1)
    if lab.ndim == 2 and lab.shape[1] >= 1:
        return lab
    raise ValueError(
        f"MedMNIST file {path}, array '{key}' has shape {lab.shape}; labels must be (N,), (N, 1) or (N, K)"
    )


def _images_nchw(path: Path, key: str, img: np.ndarray) -> torch.Tensor:
    """Check an image array's rank, channels, dtype and range; return float32 ``(N, C, H, W)`` in ``[0, 1]``."""
    if img.ndim == 3:
        img = img[..., None]  # (N, H, W) -> (N, H, W, 1)
    elif img.ndim != 4 or img.shape[-1] not in (1, 3):
        raise ValueError(
            f"MedMNIST file {path}, array '{key}' has shape {img.shape}; images must be (N, H, W) grey or "
            "(N, H, W, 3) RGB (3-D MedMNIST volumes are not supported)"
        )
    if img.shape[0] == 0 or img.shape[1] == 0 or img.shape[2] == 0:
        raise ValueError(f"MedMNIST file {path}, array '{key}' is empty (shape {img.shape})")
    if img.dtype == np.uint8:
        x = torch.from_numpy(img).to(torch.float32).div_(255.0)
    elif img.dtype.kind == "f":
        if not np.isfinite(img).all():
            raise ValueError(
                f"MedMNIST file {path}, array '{key}' is float ({img.dtype}) with non-finite entries (NaN/inf); "
                "float images must be finite and in [0, 1] (or store uint8 in [0, 255])"
            )
        lo, hi = float(img.min()), float(img.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"MedMNIST file {path}, array '{key}' is float ({img.dtype}) with values in [{lo}, {hi}]; "
                "float images must be in [0, 1] (or store uint8 in [0, 255])"
            )
        x = torch.from_numpy(img.astype(np.float32))
    else:
        raise ValueError(
            f"MedMNIST file {path}, array '{key}' has dtype {img.dtype}; images must be uint8 in [0, 255] "
            "(the MedMNIST format) or float in [0, 1]"
        )
    return x.permute(0, 3, 1, 2).contiguous()  # (N, H, W, C) -> (N, C, H, W)
