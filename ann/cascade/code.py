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
self-test (for a tier that may stop) and greedy only (for the last one). Costs: FLOPs of the generation
(``torch.utils.flop_counter``) and seconds (generation; the self-test's seconds include its sandbox runs).
"""

from __future__ import annotations

import json
import time
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

__all__ = ["CodeTask", "code_tier", "count_passed", "progsynth_task"]

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


def _generate(model: nn.Module, tok, text: str, n: int, *, sample: bool, temperature: float, max_new_tokens: int,
              seed: int, stop: Sequence[str]) -> tuple[list[str], float, float]:
    """``n`` completions of ``text`` up to the first of ``stop``, with their FLOPs and seconds."""
    ids = tok(text, return_tensors="pt")["input_ids"]
    kw = dict(max_new_tokens=max_new_tokens, pad_token_id=tok.eos_token_id, stop_strings=list(stop), tokenizer=tok,
              attention_mask=torch.ones_like(ids))
    if sample:
        kw.update(do_sample=True, temperature=temperature, top_k=0, num_return_sequences=n)  # top_k=0: the full distribution
    else:
        kw.update(do_sample=False)

    def run(m: nn.Module):
        torch.manual_seed(seed)
        return m.generate(ids, **kw)

    t0 = time.perf_counter()
    with torch.no_grad():
        run(model)
    seconds = time.perf_counter() - t0
    flops, out = forward_flops(model, run)
    texts = [tok.decode(row[ids.shape[1]:], skip_special_tokens=True) for row in out]
    return [_cut(t, stop) for t in texts], float(flops), seconds


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
        greedy, f_greedy[i], s_greedy[i] = _generate(model, tok, task.prompt, 1, sample=False, temperature=temperature,
                                                     max_new_tokens=max_new_tokens, seed=seed + i, stop=task.stop)
        cands = list(greedy)
        f_sel[i], s_sel[i] = f_greedy[i], s_greedy[i]
        if k > 1:
            more, f, s = _generate(model, tok, task.prompt, k - 1, sample=True, temperature=temperature,
                                   max_new_tokens=max_new_tokens, seed=seed + i, stop=task.stop)
            cands += more
            f_sel[i] += f
            s_sel[i] += s
        gen_tests: list[str] = []
        t0 = time.perf_counter()
        if l > 0:
            lines, f_test[i], _ = _generate(model, tok, task.test_prompt, l, sample=True, temperature=temperature,
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
