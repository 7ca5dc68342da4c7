"""Atomic file writes and safe loading helpers shared by every package that writes results or checkpoints.

Every file neuromfm writes goes through :func:`atomic_write_bytes` (temp file in the same directory,
``fsync``, then ``os.replace``), so an interrupted run never leaves a half-written file behind: readers see
either the old file or the new one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "read_json", "save_tensors", "load_tensors"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename); parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # Never leave the temp file behind, whatever interrupted the write.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialize ``obj`` as indented JSON (NaN is refused: results must be finite or null) and write atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def read_json(path: str | os.PathLike, *, what: str = "JSON file") -> Any:
    """Read a JSON file; a missing or corrupt file raises an error that names the file and the problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is corrupt (not valid JSON: {e}); delete it and re-create it") from e


def save_tensors(path: str | os.PathLike, tensors: dict, *, metadata: dict[str, str] | None = None) -> Path:
    """Save a ``{name: torch.Tensor}`` dict as safetensors, atomically (never pickle)."""
    from safetensors.torch import save

    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write_bytes(path, save(contiguous, metadata=metadata))


def load_tensors(path: str | os.PathLike, *, what: str = "checkpoint") -> dict:
    """Load a safetensors file; a missing or corrupt file raises an error naming the file and the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return load(path.read_bytes())
    except (SafetensorError, ValueError, RuntimeError) as e:
        raise ValueError(f"{what} {path} is corrupt (not a valid safetensors file: {e}); delete it and re-create it") from e
