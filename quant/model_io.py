"""Whole-model quantization with a per-module bit config, and low-bit checkpoints (safetensors + JSON).

:func:`quantize_model` replaces each named ``nn.Linear`` / HF ``Conv1D`` / ``nn.Embedding`` of a copy of the
model by :class:`~quant.qmodules.QuantLinear` / :class:`~quant.qmodules.QuantEmbedding`.

Tied weights (one tensor used by several modules, e.g. HF ``tie_word_embeddings``: ``lm_head.weight is
embed_tokens.weight``) are quantized once: every module of the tie group gets the same
:class:`~quant.qmodules.PackedWeight` submodule, so memory holds one copy. A tie group must be quantized as a
whole with one spec (all its names in the bit config with equal specs) or left float; anything else is
refused, naming the group. :func:`tied_weight_groups` lists the groups.

Checkpoint layout (``out_dir``): ``model.safetensors`` (the quantized state dict; a tensor shared by several
keys is stored once, the other keys are recorded as aliases), ``quant_config.json`` (format, version,
act_bits, per-module specs, aliases) and, for HF models, the base ``config.json``. Every file is written to a
temporary name and moved into place with ``os.replace``; ``quant_config.json`` goes last.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from quant.qmodules import PackedWeight, QuantEmbedding, QuantLinear, is_conv1d
from quant.quantizer import QuantSpec

__all__ = ["quantize_model", "save_quantized", "load_quantized", "model_memory", "tied_weight_groups",
           "QUANT_FORMAT", "QUANT_FORMAT_VERSION"]

QUANT_FORMAT = "neuromfm.quant"
QUANT_FORMAT_VERSION = 1
_QUANT_TYPES = (QuantLinear, QuantEmbedding)


def _quantizable(m: nn.Module) -> bool:
    return isinstance(m, (nn.Linear, nn.Embedding)) or is_conv1d(m)


def tied_weight_groups(model: nn.Module) -> list[list[str]]:
    """Names of the quantizable modules (Linear, Conv1D, Embedding) that share one weight tensor, one list
    per shared tensor with at least two users, in module order."""
    by_tensor: dict[tuple, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        if _quantizable(m) and m.weight.numel() and m.weight.device.type != "meta":
            w = m.weight
            by_tensor.setdefault((w.data_ptr(), tuple(w.shape), w.stride(), w.dtype), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def _check_config(model: nn.Module, bit_config: dict[str, QuantSpec]) -> list[list[str]]:
    """Validate ``bit_config`` against ``model``; returns the tie groups it quantizes."""
    if not isinstance(bit_config, dict):
        raise TypeError(f"bit_config must be a dict[str, QuantSpec], got {type(bit_config).__name__}")
    modules = dict(model.named_modules(remove_duplicate=False))
    bad = []
    for name, spec in bit_config.items():
        if name not in modules:
            bad.append(f"{name!r} (no such module)")
        elif not _quantizable(modules[name]):
            bad.append(f"{name!r} ({type(modules[name]).__name__}; only nn.Linear, transformers Conv1D and "
                       "nn.Embedding can be quantized)")
        elif not isinstance(spec, QuantSpec):
            bad.append(f"{name!r} (its value is a {type(spec).__name__}, not a QuantSpec)")
    if bad:
        raise ValueError("bit_config names modules that cannot be quantized: " + "; ".join(bad))
    groups = []
    for group in tied_weight_groups(model):
        inside = [n for n in group if n in bit_config]
        if not inside:
            continue
        specs = {bit_config[n] for n in inside}
        if len(inside) != len(group) or len(specs) > 1:
            raise ValueError(f"modules {group} share one weight tensor (tied weights); quantize all of them with "
                             f"the same QuantSpec or none of them (got "
                             + ", ".join(f"{n}: {bit_config.get(n, 'float')}" for n in group) + ")")
        if len({is_conv1d(modules[n]) for n in group}) > 1:
            raise ValueError(f"tied modules {group} mix Conv1D (weight (in, out)) with Linear/Embedding "
                             "(weight (out, in)); such a tie cannot share one quantized weight")
        groups.append(group)
    return groups


def _apply_config(model: nn.Module, bit_config: dict[str, QuantSpec], act_bits: int | None, *, quantize: bool) -> None:
    """Replace the modules in place: with quantized weights (``quantize``) or empty buffers to load into."""
    groups = _check_config(model, bit_config)
    shared: dict[str, PackedWeight] = {}
    for group in groups:
        first = model.get_submodule(group[0])
        w = first.weight.t() if is_conv1d(first) else first.weight
        pw = PackedWeight.from_tensor(w, bit_config[group[0]]) if quantize else \
            PackedWeight(shape=tuple(w.shape), spec=bit_config[group[0]]).to(w.device)
        shared.update({n: pw for n in group})
    for name, spec in bit_config.items():
        m = model.get_submodule(name)
        pw = shared.get(name)
        if pw is None and not quantize:
            shape = tuple(m.weight.t().shape) if is_conv1d(m) else tuple(m.weight.shape)
            pw = PackedWeight(shape=shape, spec=spec).to(m.weight.device)
        if isinstance(m, nn.Embedding):
            q: nn.Module = QuantEmbedding.from_embedding(m, spec, qweight=pw)
        else:
            q = QuantLinear.from_linear(m, spec, act_bits=act_bits, qweight=pw)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, q)


def quantize_model(model: nn.Module, bit_config: dict[str, QuantSpec], *, act_bits: int | None = 8) -> nn.Module:
    """A deep copy of ``model`` with every module named in ``bit_config`` quantized to its spec (Linear and
    Conv1D -> :class:`QuantLinear` with ``act_bits`` activations, Embedding -> :class:`QuantEmbedding`).
    Raises ValueError listing every bad name, and for tie groups quantized partly or to different specs."""
    _check_config(model, bit_config)  # fail before copying
    q = copy.deepcopy(model)
    with torch.no_grad():
        _apply_config(q, bit_config, act_bits, quantize=True)
    return q


def _quant_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, _QUANT_TYPES)}


def model_memory(model: nn.Module) -> dict[str, int]:
    """Bytes held by the model's parameters and buffers, each tensor counted once (tied weights once):
    ``{"quantized_weights": packed codes + scales + zero points, "other": everything else, "total": ...}``."""
    seen: set[int] = set()
    quant = 0
    for m in model.modules():
        if isinstance(m, PackedWeight):
            for b in m.buffers(recurse=False):
                if id(b) not in seen:
                    seen.add(id(b))
                    quant += b.numel() * b.element_size()
    other = 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            other += t.numel() * t.element_size()
    return {"quantized_weights": quant, "other": other, "total": quant + other}


def _dedupe(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Store each shared tensor once (safetensors refuses shared storage): ``(tensors, {alias: kept key})``."""
    kept: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    by_view: dict[tuple, str] = {}
    storages: set[int] = set()
    for key, t in state.items():
        view = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() and view in by_view:
            aliases[key] = by_view[view]
            continue
        by_view[view] = key
        sp = t.untyped_storage().data_ptr()
        t = t.detach()
        if t.numel() and sp in storages:  # another view of a stored tensor: store a copy
            t = t.clone()
        storages.add(sp)
        kept[key] = t.contiguous().cpu()
    return kept, aliases


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    packed = {id(b) for m in model.modules() if isinstance(m, PackedWeight) for b in m.buffers(recurse=False)}
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in packed and t.is_floating_point():
            return t.dtype
    return None


def save_quantized(model: nn.Module, bit_config: dict[str, QuantSpec], out_dir: str | os.PathLike) -> Path:
    """Write a model made by :func:`quantize_model` (with this ``bit_config``) to ``out_dir`` (see the module
    docstring for the layout); returns ``out_dir``."""
    from safetensors.torch import save_file

    qmods = _quant_modules(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    bad = [f"{n!r} (not quantized: {type(modules[n]).__name__ if n in modules else 'no such module'})"
           for n in bit_config if n not in qmods]
    bad += [f"{n!r} (quantized with {qmods[n].spec}, bit_config says {bit_config[n]})"
            for n in bit_config if n in qmods and qmods[n].spec != bit_config[n]]
    bad += [f"{n!r} (quantized but missing from bit_config)" for n in qmods if n not in bit_config]
    if bad:
        raise ValueError("save_quantized needs the model returned by quantize_model(model, bit_config) "
                         "for the same bit_config; mismatches: " + "; ".join(bad))
    act = {m.act_bits for m in qmods.values() if isinstance(m, QuantLinear)}
    if len(act) > 1:
        raise ValueError(f"the quantized Linear layers use different act_bits {sorted(act, key=str)}; the "
                         "checkpoint format holds one act_bits for the whole model")
    tensors, aliases = _dedupe(model.state_dict())
    dtype = _float_dtype(model)
    qcfg = {"format": QUANT_FORMAT, "version": QUANT_FORMAT_VERSION,
            "act_bits": next(iter(act)) if act else None,
            "float_dtype": str(dtype).removeprefix("torch.") if dtype is not None else None,
            "model_class": type(model).__name__,
            "packing": "little-endian bit stream of unsigned codes (quant.packing); symmetric codes offset by 2^(b-1)",
            "modules": {n: s.to_dict() for n, s in bit_config.items()},
            "aliases": aliases}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out, prefix=".tmp-save-") as tmp:
        tmp_path = Path(tmp)
        save_file(tensors, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
        (tmp_path / "quant_config.json").write_text(json.dumps(qcfg, indent=2))
        names = ["model.safetensors"]
        if hasattr(model, "config") and hasattr(model.config, "save_pretrained"):
            cfg = copy.deepcopy(model.config)
            cfg.architectures = [type(model).__name__]
            cfg.save_pretrained(str(tmp_path))
            names.append("config.json")
        for name in names + ["quant_config.json"]:  # quant_config.json last: it marks a complete checkpoint
            os.replace(tmp_path / name, out / name)
    return out


def _build_hf_model(out: Path) -> nn.Module:
    if not (out / "config.json").exists():
        raise ValueError(f"{out} has no config.json (not an HF model): pass model=<a float model of the same "
                         "architecture> to load_quantized")
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(out))
    arch = (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
        return cls(config)
    warnings.warn(f"{out / 'config.json'} names no transformers model class (architectures={arch!r}); "
                  "building it with AutoModelForCausalLM.from_config (AutoModel if that fails)", stacklevel=3)
    try:
        return transformers.AutoModelForCausalLM.from_config(config)
    except ValueError:
        return transformers.AutoModel.from_config(config)


def load_quantized(out_dir: str | os.PathLike, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_quantized`: from ``config.json`` for HF models, or from a copy of
    ``model`` (a float model of the same architecture; not changed). Returned in eval mode."""
    from safetensors.torch import load_file

    out = Path(out_dir)
    qpath = out / "quant_config.json"
    if not qpath.exists():
        raise FileNotFoundError(f"{qpath} not found: not a checkpoint written by quant.save_quantized")
    qcfg = json.loads(qpath.read_text())
    if qcfg.get("format") != QUANT_FORMAT or qcfg.get("version") != QUANT_FORMAT_VERSION:
        raise ValueError(f"{qpath}: format {qcfg.get('format')!r} version {qcfg.get('version')!r}; this code reads "
                         f"{QUANT_FORMAT!r} version {QUANT_FORMAT_VERSION}")
    base = copy.deepcopy(model) if model is not None else _build_hf_model(out)
    if qcfg.get("float_dtype"):
        base = base.to(getattr(torch, qcfg["float_dtype"]))
    bit_config = {n: QuantSpec.from_dict(d) for n, d in qcfg["modules"].items()}
    with torch.no_grad():
        _apply_config(base, bit_config, qcfg["act_bits"], quantize=False)
    tensors = load_file(str(out / "model.safetensors"))
    for alias, key in qcfg.get("aliases", {}).items():
        tensors[alias] = tensors[key]
    base.load_state_dict(tensors, strict=True)
    return base.eval()
