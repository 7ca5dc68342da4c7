"""Save and load this project's spiking models: ``config.json`` (the model class and its frozen config) and
``model.safetensors`` (parameters and persistent buffers, e.g. BatchNorm statistics). Never pickle.

A folder is written to a temporary sibling and renamed into place, so an interrupted save leaves the previous
one intact. Neuron engines without parameters (all but PLIF) keep nothing in the state dict that differs between
engines, so a model saved on one engine loads on another (``engine=`` override).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
from pathlib import Path

from torch import nn

from snn.models import SpikingLM, SpikingLMConfig, SpikingMFM, SpikingMFMConfig, Spikformer, SpikformerConfig
from snn.neurons import NeuronSpec
from tasks.io import atomic_write_json, load_tensors, read_json, save_tensors

__all__ = ["save_model", "load_model", "config_dict", "MODELS"]

MODELS: dict[str, tuple[type[nn.Module], type]] = {
    "Spikformer": (Spikformer, SpikformerConfig),
    "SpikingLM": (SpikingLM, SpikingLMConfig),
    "SpikingMFM": (SpikingMFM, SpikingMFMConfig),
}
_FORMAT = 1


def config_dict(v):
    """A (nested) frozen config as plain JSON values (enums by value)."""
    if isinstance(v, enum.Enum):
        return v.value
    if dataclasses.is_dataclass(v):
        return {f.name: config_dict(getattr(v, f.name)) for f in dataclasses.fields(v)}
    return v


def save_model(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write ``model`` (one of :data:`MODELS`) to ``directory`` (replaced atomically)."""
    name = type(model).__name__
    if name not in MODELS:
        raise ValueError(f"save_model: {name} is not one of the spiking models it knows ({sorted(MODELS)})")
    directory = Path(directory)
    tmp = directory.with_name(f".{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_tensors(tmp / "model.safetensors", model.state_dict())
    atomic_write_json(tmp / "config.json", {"format": _FORMAT, "model": name, "config": config_dict(model.config)})
    old = directory.with_name(f".{directory.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)
    return directory


def load_model(directory: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild the model saved in ``directory``; ``overrides`` replace config fields (e.g. ``engine="spikingjelly"``)."""
    directory = Path(directory)
    meta = read_json(directory / "config.json", what="spiking model config")
    if meta.get("format") != _FORMAT or meta.get("model") not in MODELS:
        raise ValueError(f"{directory / 'config.json'} is not a spiking model saved by snn.checkpoint "
                         f"(format {meta.get('format')!r}, model {meta.get('model')!r})")
    cls, cfg_cls = MODELS[meta["model"]]
    fields = dict(meta["config"])
    if "neuron" in fields:
        fields["neuron"] = NeuronSpec(**fields["neuron"])
    unknown = set(overrides) - {f.name for f in dataclasses.fields(cfg_cls)}
    if unknown:
        raise ValueError(f"load_model: {sorted(unknown)} are not fields of {cfg_cls.__name__}")
    model = cls(cfg_cls(**{**fields, **overrides}))
    state = load_tensors(directory / "model.safetensors", what="spiking model weights")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any("_lif." not in k for k in missing):  # snnTorch neurons keep constants as buffers
        raise ValueError(f"{directory} does not match {meta['model']} (missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.eval()
