r"""Generated program synthesis: write ``f`` from input/output examples (issue [R]'s cascade task).

Every problem is a Python function of one argument ``x`` (an integer, or a list of integers) built by composing
1 to 3 primitives (``x * 3``, ``x % 4``, ``sorted(x)``, ``[v + 2 for v in x]``, ``sum(x)``, ...; :data:`PRIMITIVES`).
Deeper compositions are harder, so model sizes separate. The prompt shows ``n_shown`` examples as comments (4 by
default: with 3, a wrong program passes them more often) and the function head; the answer is the expression after
``return``::

    # f(3) == 10
    # f(-1) == -2
    # f(0) == 1
    # f(5) == 16
    def f(x):
        return x * 3 + 1

A candidate is correct when it passes the shown *and* ``n_hidden`` hidden examples (executed in
:mod:`tasks.sandbox`). Problems are identified by *behaviour* (outputs on fixed probe inputs), not by text, and
the split (``train`` / ``val`` / ``test``) is a hash of the behaviour, so no test function appears in training
under another spelling. Generation is deterministic for a seed.

:func:`write_corpus` writes the training problems as ``.py`` files, so the code-LM trainers read them with
``--corpus-root`` (``python -m ann.train code-lm``, ``python -m ann.finetune code``).
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PRIMITIVES", "Problem", "generate_problems", "split_problems", "prompt", "solution", "tests",
           "test_prompt", "parse_test", "extract_expression", "write_corpus"]

INT, LIST = "int", "list"
# (template with {x} for the argument, input kind, output kind, constants {a} may take)
PRIMITIVES: tuple[tuple[str, str, str, tuple[int, ...]], ...] = (
    ("{x} + {a}", INT, INT, tuple(range(1, 10))),
    ("{x} - {a}", INT, INT, tuple(range(1, 10))),
    ("{x} * {a}", INT, INT, (2, 3, 4, 5, 6, 7, -1, -2, -3)),
    ("{x} // {a}", INT, INT, (2, 3, 4, 5)),
    ("{x} % {a}", INT, INT, (2, 3, 4, 5, 6, 7)),
    ("{x} * {x}", INT, INT, (0,)),
    ("abs({x})", INT, INT, (0,)),
    ("max({x}, {a})", INT, INT, tuple(range(-3, 6))),
    ("min({x}, {a})", INT, INT, tuple(range(-3, 6))),
    ("[v + {a} for v in {x}]", LIST, LIST, tuple(range(1, 10))),
    ("[v * {a} for v in {x}]", LIST, LIST, (2, 3, 4, 5, -1)),
    ("sorted({x})", LIST, LIST, (0,)),
    ("{x}[::-1]", LIST, LIST, (0,)),
    ("[v for v in {x} if v > {a}]", LIST, LIST, tuple(range(0, 8))),
    ("[v for v in {x} if v % 2 == 0]", LIST, LIST, (0,)),
    ("[v for v in {x} if v % 2 == 1]", LIST, LIST, (0,)),
    ("{x}[:{a}]", LIST, LIST, (1, 2, 3, 4)),
    ("{x}[1:]", LIST, LIST, (0,)),
    ("sum({x})", LIST, INT, (0,)),
    ("len({x})", LIST, INT, (0,)),
    ("max({x}, default=0)", LIST, INT, (0,)),
    ("min({x}, default=0)", LIST, INT, (0,)),
)
_SPLITS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


@dataclass(frozen=True)
class Problem:
    """One function: ``expr`` (the body after ``return``), its input kind, composition depth, and the shown and
    hidden examples as ``(input, output)`` pairs (reprs are Python literals)."""

    expr: str
    kind: str
    depth: int
    shown: tuple[tuple[object, object], ...]
    hidden: tuple[tuple[object, object], ...]

    @property
    def key(self) -> str:
        """The behaviour hash that names the problem and decides its split."""
        return hashlib.sha256(repr(self.shown + self.hidden).encode()).hexdigest()[:16]


def _compose(rng: random.Random, depth: int) -> tuple[str, str]:
    kind = rng.choice((INT, LIST))
    expr, cur = "x", kind
    for _ in range(depth):
        template, _, out, consts = rng.choice([p for p in PRIMITIVES if p[1] == cur])
        compound = isinstance(ast.parse(expr, mode="eval").body, (ast.BinOp, ast.UnaryOp))
        operand = compound and template.startswith("{x}")  # x * 3 then + 1: (x * 3) + 1; abs(x * 3) needs none
        expr, cur = template.format(x=f"({expr})" if operand else expr, a=rng.choice(consts)), out
    return expr, kind


def _inputs(rng: random.Random, kind: str, n: int) -> list[object]:
    if kind == INT:
        return rng.sample(range(-9, 10), n)
    return [[rng.randint(0, 9) for _ in range(rng.randint(3, 6))] for _ in range(n)]


_BUILTINS = {"abs": abs, "max": max, "min": min, "sorted": sorted, "sum": sum, "len": len}


def _function(expr: str):
    return eval(f"lambda x: {expr}", {"__builtins__": _BUILTINS})  # our own generated expression, never a model's


_PROBES = {k: _inputs(random.Random(k), k, 12) for k in (INT, LIST)}


def generate_problems(n: int, *, seed: int = 0, n_shown: int = 4, n_hidden: int = 5) -> list[Problem]:
    """``n`` distinct problems (by behaviour), in generation order; depth 1, 2, 3 drawn with odds 1 : 2 : 1 (there
    are only about a hundred depth-1 behaviours, so late problems are mostly deeper). Problems whose examples do not tell them apart from the identity
    (``f(x) == x`` on every example) are skipped."""
    if n < 1 or n_shown < 1 or n_hidden < 1:
        raise ValueError(f"n={n}, n_shown={n_shown}, n_hidden={n_hidden}: each must be >= 1")
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n:
            raise RuntimeError(f"only {len(out)} distinct problems after {attempts} draws; ask for fewer")
        depth = rng.choice((1, 2, 2, 3))
        expr, kind = _compose(rng, depth)
        f = _function(expr)
        xs = _inputs(rng, kind, n_shown + n_hidden)
        ys = [f(x) for x in xs]
        if all(x == y for x, y in zip(xs, ys)):
            continue
        p = Problem(expr, kind, depth, tuple(zip(xs[:n_shown], ys[:n_shown])), tuple(zip(xs[n_shown:], ys[n_shown:])))
        probe = repr([f(x) for x in _PROBES[kind]])  # behaviour on fixed inputs
        if probe in seen:
            continue
        seen.add(probe)
        out.append(p)
    return out


def split_problems(problems: list[Problem], split: str) -> list[Problem]:
    """The problems of ``split`` (``"train"`` 80 %, ``"val"`` 10 %, ``"test"`` 10 %, by behaviour hash)."""
    if split not in _SPLITS:
        raise ValueError(f"split={split!r}: one of {sorted(_SPLITS)}")
    lo, hi = _SPLITS[split]
    return [p for p in problems if lo <= int(p.key, 16) / 16**16 < hi]


def prompt(p: Problem) -> str:
    lines = [f"# f({x!r}) == {y!r}" for x, y in p.shown]
    return "\n".join(lines) + "\ndef f(x):\n    return"


def solution(p: Problem) -> str:
    """The completion of :func:`prompt` (a space, the expression, a newline)."""
    return f" {p.expr}\n"


def tests(p: Problem, *, hidden: bool) -> str:
    """Assertions on the shown examples, plus the hidden ones when ``hidden``."""
    pairs = p.shown + (p.hidden if hidden else ())
    return "\n".join(f"assert f({x!r}) == {y!r}" for x, y in pairs) + "\n"


def test_prompt(p: Problem) -> str:
    """Where a model writes a test of its own: the shown examples, then the start of one more."""
    return "\n".join(f"# f({x!r}) == {y!r}" for x, y in p.shown) + "\n# f("


def parse_test(line: str) -> str | None:
    """A model's continuation of :func:`test_prompt` (``"ARG) == OUT"``) as an assertion, or None when it is not
    two Python literals."""
    head, sep, out = line.partition(") == ")
    if not sep:
        return None
    try:
        ast.literal_eval(head.strip())
        ast.literal_eval(out.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    return f"assert f({head.strip()}) == {out.strip()}"


def extract_expression(completion: str) -> str:
    """A program from a model's completion of :func:`prompt`: its first line is the returned expression."""
    return "def f(x):\n    return " + completion.split("\n", 1)[0].strip() + "\n"


def write_corpus(problems: list[Problem], root: str | os.PathLike, *, per_file: int = 50) -> Path:
    """Write ``problems`` (prompt + solution, blank-line separated) as ``root/progsynth_NNNN.py`` for the code-LM
    trainers' ``--corpus-root``; an existing folder is replaced whole (written beside it, then renamed)."""
    root = Path(root)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    for i in range(0, len(problems), per_file):
        text = "\n\n".join(prompt(p) + solution(p) for p in problems[i:i + per_file])
        (tmp / f"progsynth_{i // per_file:04d}.py").write_text(text, encoding="utf-8")
    if root.exists():
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        root.rename(old)
        tmp.rename(root)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(root)
    return root
