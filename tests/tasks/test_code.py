"""Tests for tasks.code: the standard-library corpus and HumanEval (never executed here, only compiled)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from tasks.code import (
    CODE_SPLITS,
    CodeCorpusConfig,
    CodeFile,
    HumanEvalProblem,
    humaneval_path,
    humaneval_program,
    is_corpus_file,
    join_code_files,
    load_humaneval,
    load_stdlib_corpus,
    skipped_stdlib_files,
    split_of,
    stdlib_corpus_sizes,
    total_bytes,
)

# ---------------------------------------------------------------------------------------------------------------
# Standard-library corpus
# ---------------------------------------------------------------------------------------------------------------


def _all_splits(config: CodeCorpusConfig | None = None) -> dict[str, list[CodeFile]]:
    return {s: load_stdlib_corpus(s, config) for s in CODE_SPLITS}


def _expected_relpaths(root: Path) -> set[str]:
    """Every corpus file under root, found independently of the module's walk (rglob + the filter)."""
    relpaths = (p.relative_to(root).as_posix() for p in root.rglob("*.py") if p.is_file())
    return {r for r in relpaths if is_corpus_file(r)}


def test_splits_are_disjoint_and_cover_every_corpus_file() -> None:
    from tasks.code import stdlib_root

    splits = _all_splits()
    names = {s: {f.relpath for f in files} for s, files in splits.items()}
    assert all(names.values()), "every split must be non-empty"
    assert not names["train"] & names["val"] and not names["train"] & names["test"] and not names["val"] & names["test"]
    union = names["train"] | names["val"] | names["test"]
    expected = _expected_relpaths(stdlib_root(CodeCorpusConfig())) - set(skipped_stdlib_files())
    assert union == expected
    assert len(union) > 300
    # The fractions hold roughly (hashing is uniform; 0.8/0.1/0.1 over ~700 files).
    assert 0.7 < len(names["train"]) / len(union) < 0.9


def test_known_stdlib_files_present_and_no_tests() -> None:
    union = {f.relpath for files in _all_splits().values() for f in files}
    for known in ("json/decoder.py", "os.py", "collections/__init__.py", "unittest/case.py"):
        assert known in union
    for rel in union:
        parts = rel.split("/")
        assert rel.endswith(".py")
        assert not parts[-1].startswith("test_")
        assert not {"test", "tests", "idle_test", "site-packages", "__pycache__"} & set(parts[:-1]), rel
        assert not parts[0].startswith("config-") and not parts[-1].startswith("_sysconfigdata_")


def test_is_corpus_file_filter() -> None:
    assert is_corpus_file("json/decoder.py")
    assert is_corpus_file("unittest/mock.py")
    for rel in (
        "test/test_json.py",
        "idlelib/idle_test/htest.py",
        "lib2to3/tests/data/bom.py",
        "ctypes/test/__init__.py",
        "foo/test_bar.py",
        "site-packages/numpy/__init__.py",
        "json/__pycache__/decoder.py",
        "config-3.11-x86_64-linux-gnu/python-config.py",
        "_sysconfigdata__linux_x86_64-linux-gnu.py",
        "json/decoder.pyc",
    ):
        assert not is_corpus_file(rel), rel


def test_split_is_deterministic_and_depends_only_on_the_path() -> None:
    config = CodeCorpusConfig()
    first = _all_splits(config)
    again = _all_splits(CodeCorpusConfig())
    assert {s: [f.relpath for f in v] for s, v in first.items()} == {s: [f.relpath for f in v] for s, v in again.items()}
    # Pinned assignments (from the sha256 scheme in the module doc): a change of hashing scheme would
    # silently reshuffle every benchmark's splits, so it must show up here.
    pinned = {
        "json/decoder.py": "train",
        "typing.py": "train",
        "os.py": "val",
        "ast.py": "val",
        "calendar.py": "test",
        "asyncio/runners.py": "test",
    }
    assert {rel: split_of(rel, config) for rel in pinned} == pinned
    other = dataclasses.replace(config, split_salt="another-salt")
    assert any(split_of(f.relpath, other) != s for s, files in first.items() for f in files)


def test_split_of_matches_fractions_on_synthetic_paths() -> None:
    config = CodeCorpusConfig(train_fraction=0.5, val_fraction=0.25, test_fraction=0.25)
    counts = {s: 0 for s in CODE_SPLITS}
    for i in range(8000):
        counts[split_of(f"pkg/mod_{i}.py", config)] += 1
    # Binomial std for p=0.25, n=8000 is ~39 files; 5 std of slack.
    assert abs(counts["train"] - 4000) < 250 and abs(counts["val"] - 2000) < 200 and abs(counts["test"] - 2000) < 200


def test_text_and_bytes() -> None:
    from tasks.code import stdlib_root

    root = stdlib_root(CodeCorpusConfig())
    train = load_stdlib_corpus("train", None)
    sample = train[:5]
    for f in sample:
        assert f.n_bytes == (root / f.relpath).stat().st_size  # no newline translation, strict UTF-8
    sizes = stdlib_corpus_sizes()
    assert sizes["train"].n_files == len(train) and sizes["train"].n_bytes == total_bytes(train)
    assert all(sz.n_bytes > 0 for sz in sizes.values())


def test_join_code_files() -> None:
    files = [CodeFile(relpath="a.py", text="x = 1\n"), CodeFile(relpath="b/c.py", text="y = 2")]
    joined = join_code_files(files)
    assert joined == "# ===== file: a.py =====\nx = 1\n# ===== file: b/c.py =====\ny = 2\n"
    assert join_code_files(files, separator="<sep>\n") == "<sep>\nx = 1\n<sep>\ny = 2\n"
    with pytest.raises(ValueError, match="separator"):
        join_code_files(files, separator="")


def test_custom_root_and_unknown_split(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("a = 1\n")
    (tmp_path / "pkg" / "test_mod.py").write_text("assert True\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "helper.py").write_text("b = 2\n")
    (tmp_path / "latin1.py").write_bytes(b"s = '\xe9'\n")
    config = CodeCorpusConfig(root=str(tmp_path))
    with pytest.warns(UserWarning, match="skipped 1 file"):
        files = [f for s in CODE_SPLITS for f in load_stdlib_corpus(s, config)]
    assert [f.relpath for f in files] == ["pkg/mod.py"]
    assert skipped_stdlib_files(config) == ("latin1.py",)
    with pytest.raises(ValueError, match="train, val, test"):
        load_stdlib_corpus("dev", config)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError, match="CodeCorpusConfig.root"):
        load_stdlib_corpus("train", CodeCorpusConfig(root=str(tmp_path / "missing")))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"train_fraction": 0.0, "val_fraction": 0.5, "test_fraction": 0.5}, "train_fraction"),
        ({"train_fraction": 1.2}, "train_fraction"),
        ({"val_fraction": float("nan")}, "val_fraction"),
        ({"test_fraction": "0.1"}, "test_fraction"),
        ({"train_fraction": 0.7}, "sum to 1"),
        ({"split_salt": ""}, "split_salt"),
        ({"root": ""}, "root"),
    ],
)
def test_config_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CodeCorpusConfig(**kwargs)


def test_config_is_frozen_and_keyword_only() -> None:
    config = CodeCorpusConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.train_fraction = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        CodeCorpusConfig(0.8, 0.1, 0.1)  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------------------------
# HumanEval
# ---------------------------------------------------------------------------------------------------------------


def test_humaneval_file_is_shipped_by_the_package() -> None:
    path = humaneval_path()
    assert path.name == "HumanEval.jsonl.gz" and path.is_file()


def test_humaneval_has_164_well_formed_problems() -> None:
    problems = load_humaneval()
    assert len(problems) == 164
    assert len({p.task_id for p in problems}) == 164
    assert problems[0].task_id == "HumanEval/0" and problems[-1].task_id == "HumanEval/163"
    for p in problems:
        assert isinstance(p, HumanEvalProblem)
        assert all(getattr(p, f.name).strip() for f in dataclasses.fields(p))
        assert f"def {p.entry_point}" in p.prompt + p.canonical_solution
        assert "def check(" in p.test


def test_canonical_programs_compile_without_running() -> None:
    problems = load_humaneval()
    for p in problems[:3] + problems[-1:]:
        program = humaneval_program(p, p.canonical_solution)
        assert program.startswith(p.prompt + p.canonical_solution)
        assert program.endswith(f"check({p.entry_point})")
        compile(program, p.task_id, "exec")  # syntax check only: never exec'd here


def test_humaneval_program_types() -> None:
    p = load_humaneval()[0]
    with pytest.raises(TypeError, match="completion"):
        humaneval_program(p, None)  # type: ignore[arg-type]


def _record(i: int) -> dict:
    return {
        "task_id": f"T/{i}",
        "prompt": "def f():\n",
        "canonical_solution": "    return 1\n",
        "test": "def check(c):\n    assert c() == 1\n",
        "entry_point": "f",
    }


def test_humaneval_custom_file_and_errors(tmp_path: Path) -> None:
    good = tmp_path / "mini.jsonl.gz"
    good.write_bytes(gzip.compress("".join(json.dumps(_record(i)) + "\n" for i in range(3)).encode()))
    assert [p.task_id for p in load_humaneval(good)] == ["T/0", "T/1", "T/2"]

    with pytest.raises(FileNotFoundError, match="absent.jsonl.gz"):
        load_humaneval(tmp_path / "absent.jsonl.gz")

    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(good.read_bytes()[:-12])
    with pytest.raises(ValueError, match=r"truncated\.jsonl\.gz.*corrupt"):
        load_humaneval(truncated)

    notgz = tmp_path / "notgz.jsonl.gz"
    notgz.write_bytes(b"plain text, not gzip")
    with pytest.raises(ValueError, match=r"notgz\.jsonl\.gz.*corrupt"):
        load_humaneval(notgz)

    badjson = tmp_path / "badjson.jsonl"
    badjson.write_text(json.dumps(_record(0)) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"badjson\.jsonl.*line 2"):
        load_humaneval(badjson)

    missing = tmp_path / "missing.jsonl"
    rec = _record(0)
    del rec["entry_point"]
    missing.write_text(json.dumps(rec) + "\n")
    with pytest.raises(ValueError, match=r"missing\.jsonl.*entry_point"):
        load_humaneval(missing)

    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps(_record(0)) + "\n" + json.dumps(_record(0)) + "\n")
    with pytest.raises(ValueError, match="repeats"):
        load_humaneval(dup)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no problems"):
        load_humaneval(empty)
