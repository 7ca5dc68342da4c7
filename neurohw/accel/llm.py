r"""LLM-aided design: a loop that asks a language model for accelerator designs and evaluates them.

Clients (one protocol, :class:`LLMClient`: ``complete(messages) -> str`` with OpenAI-style chat messages):

- :class:`OpenAIClient`: any OpenAI-compatible server, ``POST {url}/v1/chat/completions``.
- :class:`HFLocalClient`: a local Hugging Face causal LM (e.g. SmolLM2-135M-Instruct) run with its chat template.

The loop, :func:`run_llm` (``n_evals`` rounds, each ending in exactly one evaluation):

1. Prompt: the design space (allowed values), the budgets, the objective (EDP, lower wins) and the past results
   best-first, at most ``history_rows`` of them (a small model's context and CPU time are short); ask for ONE
   JSON object.
2. Parse: the first JSON object in the reply (code fences and surrounding prose are skipped; failing that, one
   with trailing commas or a Python-style dict with single quotes / True / False is accepted too).
3. Validate: unknown fields, values outside the space, or a design the :class:`AcceleratorConfig` rejects are
   *invalid*. Missing searchable fields are *repaired*: filled from the best design so far (the space default
   before there is one) and counted in ``repaired``; a reply with no design field at all is invalid.
   A valid design that was already evaluated is a *duplicate* (it costs no evaluation).
4. On an invalid or duplicate reply, re-prompt with the error, up to ``max_retries`` times; then *fall back* to
   a rule: the space default if not yet evaluated, else a random unseen neighbour (one field one step) of the
   best design (of the least-violating one while none fits), else a random unseen design. Fallbacks are
   counted: ``accepted_from_llm`` / ``evals`` is the share of designs the model actually chose. LLM calls are
   at most ``n_evals * (1 + max_retries)``.

Every round is logged (replies truncated to ``reply_chars``, status of each attempt, source of the design), so
a model that mostly emits junk shows up as such in the report.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import random
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from tqdm.auto import tqdm

from neurohw.accel.dse import Budget, CostFn, DesignSpace, SearchResult, Trial, Ledger

__all__ = ["LLMClient", "LLMError", "OpenAIClient", "HFLocalClient", "extract_json_object", "build_messages",
           "run_llm", "client_from_args"]

Message = dict[str, str]


class LLMError(RuntimeError):
    """The language model could not be asked (connection, HTTP status, malformed answer)."""


class LLMClient(Protocol):
    def complete(self, messages: list[Message]) -> str:
        """The assistant's reply to chat ``messages`` (``[{"role": "system"|"user"|"assistant", "content": str}]``)."""
        ...


@dataclass(frozen=True, kw_only=True)
class OpenAIClient:
    """An OpenAI-compatible chat endpoint. ``url``: server root, with or without a trailing ``/v1``;
    ``timeout_s``: per request; ``seed`` is sent when given (servers that support it become reproducible)."""

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 60.0
    temperature: float = 0.7
    max_tokens: int = 256
    seed: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.url, str) and self.url.startswith(("http://", "https://"))):
            raise ValueError(f"OpenAIClient.url={self.url!r} is invalid: use http(s)://host[:port][/v1]")
        if not (self.timeout_s > 0 and self.max_tokens >= 1 and self.temperature >= 0):
            raise ValueError("OpenAIClient: timeout_s must be > 0, max_tokens >= 1 and temperature >= 0 "
                             f"(got {self.timeout_s}, {self.max_tokens}, {self.temperature})")

    @property
    def endpoint(self) -> str:
        base = self.url.rstrip("/")
        return (base[: -len("/v1")] if base.endswith("/v1") else base) + "/v1/chat/completions"

    @property
    def label(self) -> str:
        return f"openai:{self.model}@{self.endpoint}"

    def complete(self, messages: list[Message]) -> str:
        import requests

        body: dict[str, Any] = {"model": self.model, "messages": list(messages), "temperature": self.temperature,
                                "max_tokens": self.max_tokens}
        if self.seed is not None:
            body["seed"] = self.seed
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            r = requests.post(self.endpoint, json=body, headers=headers, timeout=self.timeout_s)
        except requests.RequestException as e:
            raise LLMError(f"cannot reach the chat endpoint {self.endpoint}: {type(e).__name__}: {e}") from e
        if r.status_code != 200:
            raise LLMError(f"the chat endpoint {self.endpoint} answered HTTP {r.status_code}: {r.text[:300]!r}")
        try:
            data = r.json()
        except ValueError as e:
            raise LLMError(f"the chat endpoint {self.endpoint} did not answer JSON: {r.text[:300]!r}") from e
        try:
            content = data["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMError(f"the chat endpoint {self.endpoint} answered a malformed chat completion (no "
                           f"choices[0].message.content): {json.dumps(data)[:300]}") from None
        if not isinstance(content, str):
            raise LLMError(f"the chat endpoint {self.endpoint} answered a non-string content: {content!r:.200}")
        return content


class HFLocalClient:
    """A local Hugging Face causal LM with its tokenizer's chat template (torch, CPU is fine).

    Generation: sampling at ``temperature`` (greedy when 0) with seed ``seed + number of earlier calls`` (in a
    forked RNG, the global torch RNG is untouched), at most ``max_new_tokens``, stopped early after the first
    ``}`` when ``stop_at_brace`` (the replies asked for are flat JSON objects; saves CPU time).
    ``prefill``: text that starts the assistant's turn (e.g. ``"{"`` to steer a small model into JSON); it is
    part of the returned reply and of :attr:`label`, so a report shows that the model was steered.
    """

    def __init__(self, *, model: Any, tokenizer: Any, max_new_tokens: int = 128, temperature: float = 0.7,
                 seed: int = 0, stop_at_brace: bool = True, prefill: str = "") -> None:
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            raise ValueError(f"HFLocalClient.max_new_tokens={max_new_tokens!r} is invalid: use an int >= 1")
        if not temperature >= 0:
            raise ValueError(f"HFLocalClient.temperature={temperature!r} is invalid: use a number >= 0")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.stop_at_brace, self.prefill = stop_at_brace, prefill
        self._calls = 0

    @classmethod
    def from_dir(cls, path: str | os.PathLike, *, max_new_tokens: int = 128, temperature: float = 0.7, seed: int = 0,
                 stop_at_brace: bool = True, prefill: str = "") -> HFLocalClient:
        """Load model and tokenizer from a local HF folder (``config.json``, weights, tokenizer files); offline."""
        try:
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:  # pragma: no cover (a declared dependency)
            raise ImportError("HFLocalClient needs transformers: `.venv/bin/python -m pip install transformers`") from e
        try:
            model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load a causal LM from {path}: {type(e).__name__}: {e}") from e
        return cls(model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=temperature,
                   seed=seed, stop_at_brace=stop_at_brace, prefill=prefill)

    @property
    def label(self) -> str:
        name = getattr(self.model, "name_or_path", "") or type(self.model).__name__
        return f"hf:{name}" + (f" (prefill {self.prefill!r})" if self.prefill else "")

    def complete(self, messages: list[Message]) -> str:
        import torch

        text = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)
        enc = self.tokenizer(text + self.prefill, return_tensors="pt", add_special_tokens=False)  # template has BOS
        n_prompt = enc["input_ids"].shape[1]
        kw: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.temperature > 0,
                              "pad_token_id": self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                              else self.tokenizer.eos_token_id}
        if self.temperature > 0:
            kw["temperature"] = self.temperature
        if self.stop_at_brace:
            kw.update(stop_strings=["}"], tokenizer=self.tokenizer)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self._calls)
            out = self.model.generate(**enc, **kw)  # (1, n_prompt + new)
        self._calls += 1
        return self.prefill + self.tokenizer.decode(out[0, n_prompt:], skip_special_tokens=True)


def extract_json_object(text: str) -> dict:
    """The first JSON object in ``text`` (code fences and prose around it are skipped). Raises ValueError."""
    decoder = json.JSONDecoder()
    starts = [i for i, ch in enumerate(text) if ch == "{"]
    for i in starts:
        try:
            obj, _ = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    for i in starts:  # lenient: a trailing comma, or a Python-style dict (single quotes, True / False)
        depth, j = 0, i
        for j in range(i, len(text)):
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            if depth == 0:
                break
        if depth:
            continue
        chunk = text[i: j + 1]
        for parse in (lambda c: json.loads(re.sub(r",\s*([}\]])", r"\1", c)), ast.literal_eval):
            try:
                obj = parse(chunk)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
            if isinstance(obj, dict):
                return obj
    raise ValueError("no JSON object found in the reply" if not starts else "the reply has no well-formed JSON object")


def _fmt_trial(space: DesignSpace, t: Trial) -> str:
    v = json.dumps(space.values_of(t.config), separators=(",", ":"))
    if t.objective is None:
        return f"{v} -> could not be evaluated ({t.error})"
    ok = "within budget" if t.feasible else "OVER BUDGET"
    return f"{v} -> EDP {t.objective:.3e}, area {t.area_mm2:.3g} mm2, power {t.power_w:.3g} W, {ok}"


def build_messages(space: DesignSpace, budget: Budget, trials: Sequence[Trial], *, history_rows: int,
                   example: Mapping[str, Any]) -> list[Message]:
    """System + user message of one round (see the module docstring)."""
    ranked = sorted(trials, key=lambda t: (not t.feasible, t.objective if t.objective is not None else float("inf")))
    past = [f"{i + 1}. {_fmt_trial(space, t)}" for i, t in enumerate(ranked[:history_rows])]
    if len(ranked) > history_rows:
        past.append(f"({len(ranked) - history_rows} worse designs not shown)")
    user = (
        "Choose a systolic-array accelerator design for a fixed neural-network workload.\n"
        "Goal: minimise the energy-delay product (EDP = energy J x latency s); lower is better.\n"
        f"Budget: area <= {budget.area_mm2:g} mm2 and power <= {budget.power_w:g} W; "
        "designs over budget are rejected.\n"
        "Larger arrays and buffers cost area; more parallelism costs power.\n"
        f"Design fields and their allowed values:\n{space.describe()}\n"
        + ("Past results, best first:\n" + "\n".join(past) + "\n" if past else "No design has been evaluated yet.\n")
        + "Reply with ONE JSON object that uses exactly these keys and only allowed values, and is not one of the "
        f"past results. The format (change at least one value):\n{json.dumps(dict(example))}"
    )
    return [{"role": "system", "content": "You are an expert hardware architect. Answer with one JSON object only."},
            {"role": "user", "content": user}]


def _check(space: DesignSpace, obj: dict, base: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """``(normalized design, repaired fields)`` of a parsed reply, or ValueError with the reason."""
    unknown = [k for k in obj if k not in space.choices and k not in space.fixed]
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}: use only {list(space.choices)}")
    given = [k for k in space.choices if k in obj]
    if not given:
        raise ValueError(f"the object has none of the design fields {list(space.choices)}")
    filled = [k for k in space.choices if k not in obj]
    values = space.normalize({**{k: base[k] for k in filled}, **obj})
    space.to_config(values)  # the config's own checks (e.g. a buffer too small for one tile)
    return values, filled


def _fallback(space: DesignSpace, ledger: Ledger, rng: random.Random) -> dict | None:
    """The rule used when the model gave no usable design: the space default first, then a random unseen
    neighbour of the best design (of the least-violating one while none fits), then a random unseen design."""
    measured = [t for t in ledger.trials if t.violation is not None]
    anchor = ledger.best() or (min(measured, key=lambda t: t.violation) if measured else None)
    start = space.values_of(anchor.config) if anchor else space.default()
    neighbours = space.neighbours(start)
    cands = itertools.chain([space.default()], rng.sample(neighbours, k=len(neighbours)),
                            (space.sample(rng) for _ in range(1000)))
    for c in cands:
        try:
            space.to_config(c)
        except ValueError:
            continue
        if space.key(c) not in ledger.seen:
            return c
    return None


def run_llm(space: DesignSpace, cost_fn: CostFn, budget: Budget, client: LLMClient, *, n_evals: int,
            max_retries: int = 3, seed: int = 0, history_rows: int = 6, reply_chars: int = 400,
            progress: bool = False) -> SearchResult:
    """The LLM-aided proposer (the loop of the module docstring); ``evals == n_evals`` unless the space runs out.

    ``details`` holds: ``client``, ``llm_calls``, ``replies_parse_error`` (no JSON object), ``replies_invalid``
    (JSON but outside the space or rejected by the config), ``replies_duplicate``, ``accepted_from_llm``,
    ``repaired`` (accepted with missing fields filled), ``fallbacks``, ``valid_reply_rate`` (valid replies incl.
    duplicates / calls), ``llm_design_share`` (accepted / evals) and ``rounds`` (the per-round log).
    Errors of the client itself (:class:`LLMError`) are raised, not hidden. ``progress``: a tqdm bar over rounds
    (a local model takes seconds per reply).
    """
    if not (isinstance(max_retries, int) and max_retries >= 0):
        raise ValueError(f"max_retries={max_retries!r} is invalid: use an int >= 0")
    if not (isinstance(n_evals, int) and not isinstance(n_evals, bool) and n_evals >= 1):
        raise ValueError(f"n_evals={n_evals!r} is invalid: use an int >= 1")
    t0, rng, ledger = time.perf_counter(), random.Random(seed), Ledger(space, cost_fn, budget)
    n = {"llm_calls": 0, "replies_parse_error": 0, "replies_invalid": 0, "replies_duplicate": 0,
         "accepted_from_llm": 0, "repaired": 0, "fallbacks": 0}
    rounds = []
    bar = tqdm(total=min(n_evals, space.size), desc="LLM-aided DSE", unit="design", disable=not progress)
    for r in range(min(n_evals, space.size)):
        best = ledger.best()
        base = space.values_of(best.config) if best else space.default()
        messages = build_messages(space, budget, ledger.trials, history_rows=history_rows, example=base)
        attempts, chosen, filled = [], None, []
        for _ in range(1 + max_retries):
            reply = client.complete(messages)
            n["llm_calls"] += 1
            status = "parse_error"
            try:
                obj = extract_json_object(reply)
                status = "invalid"
                values, filled = _check(space, obj, base)
            except ValueError as e:
                n[f"replies_{status}"] += 1
                error = str(e)
            else:
                if space.key(values) not in ledger.seen:
                    chosen = values
                    attempts.append({"reply": reply[:reply_chars], "status": "ok", "error": None, "repaired": filled})
                    break
                n["replies_duplicate"] += 1
                status, prev = "duplicate", ledger.seen[space.key(values)]
                error = f"this design was already evaluated ({_fmt_trial(space, prev)}); propose a different one"
            attempts.append({"reply": reply[:reply_chars], "status": status, "error": error})
            retry = f"Not accepted: {error}. Reply with ONE corrected JSON object."
            messages = messages + [{"role": "assistant", "content": reply[:reply_chars]}, {"role": "user", "content": retry}]
        if chosen is not None:
            source = "llm"
            n["accepted_from_llm"] += 1
            n["repaired"] += bool(filled)
        else:
            chosen, source = _fallback(space, ledger, rng), "fallback"
            if chosen is None:
                break  # every design of the space has been evaluated
            n["fallbacks"] += 1
        _, trial, _ = ledger.submit(chosen, source)
        rounds.append({"round": r, "source": source, "design": chosen, "objective": trial.objective,
                       "feasible": trial.feasible, "attempts": attempts})
        bar.update(1)
        bar.set_postfix(llm=n["accepted_from_llm"], fallback=n["fallbacks"], calls=n["llm_calls"])
    bar.close()
    evals = len(ledger.trials)
    details = {"client": getattr(client, "label", type(client).__name__), **n,
               "valid_reply_rate": ((n["accepted_from_llm"] + n["replies_duplicate"]) / n["llm_calls"]
                                    if n["llm_calls"] else None),
               "llm_design_share": n["accepted_from_llm"] / evals if evals else None, "rounds": rounds}
    return ledger.result("llm", t0, proposals=n["llm_calls"] + n["fallbacks"], duplicates=n["replies_duplicate"],
                         invalid=n["replies_parse_error"] + n["replies_invalid"], details=details)


def client_from_args(args: Any) -> LLMClient | None:
    """The client the ``dse`` command line asks for (``--llm-url`` or ``--llm-dir``), or None."""
    if getattr(args, "llm_url", None) and getattr(args, "llm_dir", None):
        raise ValueError("give either --llm-url or --llm-dir, not both")
    if getattr(args, "llm_url", None):
        if getattr(args, "llm_prefill", ""):
            raise ValueError("--llm-prefill works with --llm-dir only (chat endpoints do not continue a given reply)")
        key_env = getattr(args, "llm_api_key_env", None)
        if key_env and key_env not in os.environ:
            raise ValueError(f"--llm-api-key-env {key_env}: no such environment variable is set")
        return OpenAIClient(url=args.llm_url, model=args.llm_model, api_key=os.environ[key_env] if key_env else None,
                            temperature=args.llm_temperature, max_tokens=args.llm_max_new_tokens, seed=args.seed)
    if getattr(args, "llm_dir", None):
        return HFLocalClient.from_dir(args.llm_dir, max_new_tokens=args.llm_max_new_tokens,
                                      temperature=args.llm_temperature, seed=args.seed, prefill=args.llm_prefill)
    return None
