"""tasks.progsynth: deterministic, behaviour-split problems whose reference solutions pass their own tests."""

import pytest

from tasks import progsynth as ps


def test_generation_is_deterministic_distinct_and_split_by_behaviour(tmp_path):
    a, b = ps.generate_problems(300, seed=0), ps.generate_problems(300, seed=0)
    assert a == b and a != ps.generate_problems(300, seed=1)
    assert len({p.key for p in a}) == 300 and {p.depth for p in a} == {1, 2, 3}
    splits = {s: ps.split_problems(a, s) for s in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == 300 and len(splits["train"]) > 4 * len(splits["test"]) > 0
    assert not {p.key for p in splits["train"]} & {p.key for p in splits["test"]}
    with pytest.raises(ValueError, match="split"):
        ps.split_problems(a, "dev")


def test_reference_solutions_pass_their_examples_and_prompts_parse():
    for p in ps.generate_problems(100, seed=2):
        namespace: dict = {}
        exec(ps.extract_expression(ps.solution(p)), namespace)  # our own generated code, not a model's
        exec(ps.tests(p, hidden=True), namespace)
        assert ps.prompt(p).endswith("def f(x):\n    return") and ps.prompt(p).count("# f(") == len(p.shown)
        assert ps.test_prompt(p).endswith("\n# f(")


def test_parse_test_accepts_literals_only():
    assert ps.parse_test("3) == 7") == "assert f(3) == 7"
    assert ps.parse_test("[1, 2]) == [2, 4]") == "assert f([1, 2]) == [2, 4]"
    assert ps.parse_test("x) == 1") is None
    assert ps.parse_test("__import__('os')) == 1") is None
    assert ps.parse_test("garbage") is None


def test_write_corpus_replaces_the_folder_whole(tmp_path):
    probs = ps.generate_problems(120, seed=0)
    root = ps.write_corpus(probs, tmp_path / "c", per_file=50)
    assert sorted(f.name for f in root.iterdir()) == ["progsynth_0000.py", "progsynth_0001.py", "progsynth_0002.py"]
    ps.write_corpus(probs[:10], root, per_file=50)
    assert [f.name for f in root.iterdir()] == ["progsynth_0000.py"]
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]
