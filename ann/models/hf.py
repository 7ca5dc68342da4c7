"""One entry point that loads a local Hugging Face checkpoint directory: :func:`load_pretrained`.

The directory is what ``save_pretrained`` writes: ``config.json`` + ``model.safetensors`` (or a sharded
``model.safetensors.index.json`` with its shards), and optionally tokenizer / processor files.
Everything that can be checked without building the model is checked first (directory, config, model
type, weights files and their safetensors headers), so a bad checkpoint fails in milliseconds with an
error naming the file or field and the fix. Pickle-based weights (``pytorch_model.bin``) are refused;
nothing is ever unpickled.

Dispatch is by two tables, first match wins and the default comes last:

* ``config.json["model_type"]`` -> :class:`ModelFamily` (:data:`_FAMILIES`);
* ``config.json["architectures"][0]`` suffix -> the transformers Auto class of that family
  (e.g. ``BertForSequenceClassification`` -> ``AutoModelForSequenceClassification``), else the family default.

Adding a model type that one of the families already covers is one entry in :data:`_FAMILIES`.
"""

from __future__ import annotations

import enum
import importlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "LoadedModel", "ModelFamily", "load_pretrained", "supported_model_types"]

_CONFIG = "config.json"
_WEIGHTS = "model.safetensors"
_WEIGHTS_INDEX = "model.safetensors.index.json"
_PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.txt", "vocab.json", "spiece.model",
)  # fmt: skip
_IMAGE_PROCESSOR_FILES = ("preprocessor_config.json",)
_PROCESSOR_FILES = ("processor_config.json",)
_SAVE_HINT = "re-save it with model.save_pretrained(path, safe_serialization=True) or download it again"

# Bytes per element of each safetensors dtype (used to check that data_offsets match the shape).
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint directory exists but cannot be loaded; the message names the file or field and the fix."""


class ModelFamily(enum.Enum):
    """Model families that :func:`load_pretrained` knows how to build."""

    LLAVA = "llava"
    LLAMA = "llama"
    VIT = "vit"
    BERT = "bert"


@dataclass(frozen=True)
class LoadedModel:
    """Result of :func:`load_pretrained`.

    Attributes:
        model: the transformers model, in eval mode.
        family: which :class:`ModelFamily` dispatched it.
        config: the model's ``PretrainedConfig``.
        tokenizer_or_processor: an ``AutoProcessor`` / ``AutoImageProcessor`` / ``AutoTokenizer`` result when
            the directory holds the matching files, else ``None``.
        path: the checkpoint directory (resolved).
    """

    model: Any
    family: ModelFamily
    config: Any
    tokenizer_or_processor: Any | None
    path: Path


@dataclass(frozen=True)
class _FamilySpec:
    """One row of the dispatch table.

    Attributes:
        family: the family this row builds.
        model_types: ``config.json["model_type"]`` values routed here (each one is covered by a test).
        heads: ``(architecture suffix, Auto class name)`` pairs, first match on ``architectures[0]`` wins.
        default_auto: Auto class name used when ``architectures`` is absent or matches no head.
        plugin_modules: ``{model_type: module}`` imported before loading; the module registers that model
            type with transformers' Auto classes (our own models).
    """

    family: ModelFamily
    model_types: tuple[str, ...]
    heads: tuple[tuple[str, str], ...]
    default_auto: str
    plugin_modules: tuple[tuple[str, str], ...] = ()


_BASE_MODEL_HEAD = ("Model", "AutoModel")  # e.g. LlamaModel, BertModel: the bare encoder/decoder.

_FAMILIES: tuple[_FamilySpec, ...] = (
    _FamilySpec(
        family=ModelFamily.LLAVA,
        model_types=("llava", "neuromfm_llava"),
        heads=(("ForConditionalGeneration", "AutoModelForImageTextToText"), _BASE_MODEL_HEAD),
        default_auto="AutoModelForImageTextToText",
        plugin_modules=(("neuromfm_llava", "ann.models.mfm"),),
    ),
    _FamilySpec(
        family=ModelFamily.LLAMA,
        model_types=("llama", "mistral", "qwen2"),
        heads=(
            ("ForCausalLM", "AutoModelForCausalLM"),
            ("ForSequenceClassification", "AutoModelForSequenceClassification"),
            ("ForTokenClassification", "AutoModelForTokenClassification"),
            ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
            _BASE_MODEL_HEAD,
        ),
        default_auto="AutoModelForCausalLM",
    ),
    _FamilySpec(
        family=ModelFamily.VIT,
        model_types=("vit",),
        heads=(
            ("ForImageClassification", "AutoModelForImageClassification"),
            ("ForMaskedImageModeling", "AutoModelForMaskedImageModeling"),
            _BASE_MODEL_HEAD,
        ),
        default_auto="AutoModel",
    ),
    _FamilySpec(
        family=ModelFamily.BERT,
        model_types=("bert", "roberta", "distilbert", "albert", "electra"),
        heads=(
            ("ForSequenceClassification", "AutoModelForSequenceClassification"),
            ("ForMaskedLM", "AutoModelForMaskedLM"),
            ("ForTokenClassification", "AutoModelForTokenClassification"),
            ("ForQuestionAnswering", "AutoModelForQuestionAnswering"),
            ("ForMultipleChoice", "AutoModelForMultipleChoice"),
            ("ForPreTraining", "AutoModelForPreTraining"),
            ("ForCausalLM", "AutoModelForCausalLM"),
            ("LMHeadModel", "AutoModelForCausalLM"),  # BertLMHeadModel
            _BASE_MODEL_HEAD,
        ),
        default_auto="AutoModel",
    ),
)


def supported_model_types() -> dict[ModelFamily, tuple[str, ...]]:
    """``{family: model types}`` that :func:`load_pretrained` accepts."""
    return {spec.family: spec.model_types for spec in _FAMILIES}


def _supported_text() -> str:
    return "; ".join(f"{spec.family.name}: {', '.join(spec.model_types)}" for spec in _FAMILIES)


def _spec_for(model_type: str, config_file: Path) -> _FamilySpec:
    """First row of :data:`_FAMILIES` that lists ``model_type``."""
    for spec in _FAMILIES:
        if model_type in spec.model_types:
            return spec
    raise CheckpointError(
        f"{config_file}: model_type {model_type!r} is not supported by load_pretrained; "
        f"supported families and model types are {_supported_text()}"
    )


def _auto_class_name(spec: _FamilySpec, architectures: Any) -> str:
    """Auto class name for ``architectures[0]`` (first suffix match in ``spec.heads``), else the default."""
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        for suffix, auto_name in spec.heads:
            if architectures[0].endswith(suffix):
                return auto_name
    return spec.default_auto


def _check_directory(path: Path) -> Path:
    """The directory must exist and hold ``config.json`` (the ``save_pretrained`` layout)."""
    expected = "expected a Hugging Face checkpoint directory as written by model.save_pretrained(path)"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint path {path} does not exist; {expected}")
    if not path.is_dir():
        raise NotADirectoryError(f"checkpoint path {path} is not a directory; {expected}")
    config_file = path / _CONFIG
    if not config_file.is_file():
        raise FileNotFoundError(f"checkpoint directory {path} has no {_CONFIG}; {expected}")
    return config_file


def _read_config(config_file: Path) -> dict[str, Any]:
    """Parse ``config.json`` and check that it names a ``model_type``."""
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"{config_file} is not valid JSON ({e}); re-save the config with model.save_pretrained(path)"
        ) from e
    if not isinstance(raw, dict):
        raise CheckpointError(f"{config_file} must hold a JSON object, got {type(raw).__name__}")
    model_type = raw.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise CheckpointError(
            f"{config_file} has no 'model_type' field (got {model_type!r}); it names the architecture "
            f"(e.g. \"llama\", \"vit\", \"bert\"), save the config with config.save_pretrained(path) to write it"
        )
    return raw


def _weights_files(path: Path) -> list[Path]:
    """The safetensors files of the checkpoint (one file, or every shard named in the index)."""
    single, index = path / _WEIGHTS, path / _WEIGHTS_INDEX
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted(set(weight_map.values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(
                f"{index} is not a valid safetensors index (needs a JSON object with a 'weight_map' "
                f"of tensor name -> shard file); {_SAVE_HINT}"
            ) from e
        missing = [name for name in shards if not (path / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{index} names shard files that are missing: {missing}; {_SAVE_HINT}")
        return [path / name for name in shards]
    pickled = [name for name in _PICKLE_WEIGHTS if (path / name).exists()]
    if pickled:
        raise CheckpointError(
            f"{path} holds only {pickled[0]}, which is pickle-based and is never loaded here; convert it to "
            f"safetensors (load it once in a trusted environment and model.save_pretrained(path, "
            f"safe_serialization=True))"
        )
    raise FileNotFoundError(
        f"{path} has no weights file: expected {_WEIGHTS} or {_WEIGHTS_INDEX}; "
        f"save the model with model.save_pretrained(path, safe_serialization=True)"
    )


def _check_safetensors_header(file: Path) -> None:
    """Validate a safetensors file's header without reading its data.

    Layout: ``[u64 little-endian N][N bytes JSON header][data]``; each tensor entry has ``dtype``, ``shape``
    and ``data_offsets = [begin, end]`` relative to the start of ``data``. Checks that N fits in the file,
    the header is a JSON object, and every ``begin <= end <= len(data)`` with ``end - begin`` equal to
    ``prod(shape) * bytes(dtype)`` when the dtype is known.
    """

    def bad(why: str) -> CheckpointError:
        return CheckpointError(f"weights file {file} is corrupt or truncated ({why}); {_SAVE_HINT}")

    size = file.stat().st_size
    if size < 8:
        raise bad(f"{size} bytes, shorter than the 8-byte header length")
    with file.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > size - 8:
            raise bad(f"header length {header_len} exceeds the {size - 8} bytes after it")
        header_bytes = f.read(header_len)
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise bad(f"header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise bad("header is not a JSON object")
    data_len = size - 8 - header_len
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            shape = [int(d) for d in entry["shape"]]
            dtype = entry["dtype"]
        except (KeyError, TypeError, ValueError) as e:
            raise bad(f"tensor {name!r} has no valid dtype/shape/data_offsets") from e
        if not 0 <= begin <= end <= data_len:
            raise bad(f"tensor {name!r} data_offsets [{begin}, {end}] lie outside the {data_len} data bytes")
        numel = 1
        for d in shape:
            numel *= d
        need = numel * _DTYPE_BYTES[dtype] if dtype in _DTYPE_BYTES else end - begin
        if end - begin != need:
            raise bad(f"tensor {name!r} spans {end - begin} bytes but {dtype}{shape} needs {need}")


def _import_plugins(spec: _FamilySpec, model_type: str) -> None:
    """Import the module that registers ``model_type`` with transformers (lazily: only when it is needed)."""
    for plugin_type, module in spec.plugin_modules:
        if plugin_type != model_type:
            continue
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise CheckpointError(
                f"model_type {model_type!r} is defined by {module}, which could not be imported ({e}); "
                f"make sure the neuromfm package is installed completely"
            ) from e


def _any_file(path: Path, names: tuple[str, ...]) -> bool:
    """Whether ``path`` holds any of the files ``names``."""
    return any((path / name).is_file() for name in names)


def _load_preprocessor(path: Path) -> Any | None:
    """Processor / image processor / tokenizer saved next to the model, or ``None`` when there is none."""
    import transformers

    has_tok, has_img = _any_file(path, _TOKENIZER_FILES), _any_file(path, _IMAGE_PROCESSOR_FILES)
    if _any_file(path, _PROCESSOR_FILES) or (has_tok and has_img):
        loader = transformers.AutoProcessor
    elif has_img:
        loader = transformers.AutoImageProcessor
    elif has_tok:
        loader = transformers.AutoTokenizer
    else:
        return None
    try:
        return loader.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 -- re-raised with the path and the chained cause
        raise CheckpointError(f"{path}: transformers.{loader.__name__} could not load the saved files: {e}") from e


def load_pretrained(path: str | os.PathLike, *, dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Load a supported Hugging Face checkpoint directory (``save_pretrained`` layout, safetensors only).

    Args:
        path: the checkpoint directory.
        dtype: dtype of the loaded parameters.

    Returns:
        A :class:`LoadedModel` with the model in eval mode.

    Raises:
        FileNotFoundError / NotADirectoryError: the directory, its ``config.json`` or its weights are missing.
        CheckpointError: invalid config, unsupported ``model_type``, pickle-only or corrupt weights, weights
            that do not cover the model, or any other transformers loading error (chained).
    """
    path = Path(path).expanduser().resolve()
    config_file = _check_directory(path)
    raw = _read_config(config_file)
    spec = _spec_for(raw["model_type"], config_file)
    files = _weights_files(path)
    for file in files:
        _check_safetensors_header(file)
    _import_plugins(spec, raw["model_type"])

    import transformers

    auto_cls = getattr(transformers, _auto_class_name(spec, raw.get("architectures")))
    try:
        model, info = auto_cls.from_pretrained(
            str(path), dtype=dtype, use_safetensors=True, local_files_only=True, output_loading_info=True
        )
    except Exception as e:  # noqa: BLE001 -- re-raised with the path and the chained cause
        raise CheckpointError(f"{path}: transformers.{auto_cls.__name__}.from_pretrained failed: {e}") from e
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise CheckpointError(
            f"{path}: the weights do not cover {len(missing)} parameter(s) of {type(model).__name__} "
            f"(e.g. {missing[:3]}); config.json 'architectures' may name a different head than the one "
            f"saved, re-save the model with model.save_pretrained(path)"
        )
    return LoadedModel(
        model=model.eval(),
        family=spec.family,
        config=model.config,
        tokenizer_or_processor=_load_preprocessor(path),
        path=path,
    )
