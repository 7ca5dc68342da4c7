"""Checkpoints of the small reference models: ``model.safetensors`` + ``config.json`` in one folder.

(HF models use their own ``save_pretrained`` layout; this is the same layout for our plain torch models.)
Both files are written atomically; loading never unpickles anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from ann.models.mlp import MLPConfig, ReLUMLP
from tasks.io import atomic_write_json, load_tensors, read_json, save_tensors

__all__ = ["save_mlp", "load_mlp", "save_pretrained_atomic"]

_WEIGHTS = "model.safetensors"
_CONFIG = "config.json"
_FORMAT = "neuromfm-mlp-v1"


def save_mlp(model: ReLUMLP, directory: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Save ``model`` to ``directory`` (weights first, config last: a folder with a config is complete)."""
    directory = Path(directory)
    save_tensors(directory / _WEIGHTS, model.state_dict(), metadata={"format": _FORMAT})
    atomic_write_json(directory / _CONFIG, {"format": _FORMAT, "model": model.config.to_dict(), **(extra or {})})
    return directory


def load_mlp(directory: str | os.PathLike) -> tuple[ReLUMLP, dict]:
    """Load a model saved by :func:`save_mlp`; returns ``(model, config_json)``.

    Raises FileNotFoundError / ValueError naming the file when it is missing, corrupt or does not match.
    """
    directory = Path(directory)
    cfg = read_json(directory / _CONFIG, what="checkpoint config")
    if not isinstance(cfg, dict) or cfg.get("format") != _FORMAT:
        raise ValueError(f"checkpoint config {directory / _CONFIG} is not a {_FORMAT} config")
    model = ReLUMLP(config=MLPConfig.from_dict(cfg["model"]))
    state = load_tensors(directory / _WEIGHTS, what="checkpoint weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ValueError(f"checkpoint weights {directory / _WEIGHTS} do not match its config: {e}") from e
    return model.eval(), cfg


def save_pretrained_atomic(model, directory: str | os.PathLike, *, tokenizer=None) -> Path:
    """``model.save_pretrained`` (safetensors) + ``tokenizer.save_pretrained`` into ``directory``, atomically.

    Everything is written to a temp folder beside ``directory`` first and renamed over it at the end, so a
    crash leaves either the previous model folder or the new one, never a mix.
    """
    import shutil

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = directory.parent / f".{directory.name}.tmp-{os.getpid()}"
    old = directory.parent / f".{directory.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory
