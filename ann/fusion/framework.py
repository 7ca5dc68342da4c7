r"""The pass framework of operator fusion: guarded, undoable rewrites of a model in place (issue 11).

A :class:`FusionPass` is a frozen record: a ``name``, the ``patterns`` (named module structures) it knows, and
``rewrite(model) -> list[Rewrite]`` which changes the model in place and returns one :class:`Rewrite` per place it
changed (an empty list: the pass is *not applicable*). :func:`run_passes` applies passes one after the other and
guards each:

1. snapshot the model (every module's attribute dict, with copies of its ``_modules`` / ``_parameters`` /
   ``_buffers`` tables, the values of every parameter and buffer, and the attribute dicts of the HF configs it
   holds);
2. run the pass; on an exception the snapshot is restored;
3. run the example inputs and compare the primary output (``logits`` for an HF model) with the one the model
   gave *before this pass*; ``max |y_after - y_before| > atol`` restores the snapshot (the report also gives
   the accumulated difference to the model before the first pass);
4. optionally (``generate_tokens > 0``) greedy-decode with the KV cache and require the very tokens the
   unfused model produced; a difference restores the snapshot.

A restored model is the one from before the pass: same module objects and types, same parameter objects and
values, same configs. A rejected pass is reported (:class:`PassResult`: status, rewrites, max abs diff, reason)
and raises a :class:`FusionWarning`; when it had rewritten several patterns, each is then tried alone (and
undone) to name the ones that fail. The following passes still run.

Fusion is for inference: a fused model's state dict differs from the original one (merged ``qkv_proj`` /
``gate_up_proj`` weights, folded norms) and is not meant to be saved or trained. Fuse a copy
(``copy.deepcopy``) when the original is still needed; snapshots hold one copy of the weights while a pass runs.
"""

from __future__ import annotations

import enum
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

__all__ = ["FusionPass", "FusionReport", "FusionWarning", "NotApplicable", "PassResult", "PassStatus", "PatternError",
           "Rewrite", "Unavailable", "model_output", "run_passes"]


class FusionWarning(UserWarning):
    """A fusion pass was rejected (undone) or fell back to a slower path."""


class PassStatus(str, enum.Enum):
    APPLIED = "applied"
    REJECTED = "rejected"
    NOT_APPLICABLE = "not applicable"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True)
class Rewrite:
    """One place a pass changed: ``pattern`` (the pass's name for the structure) at module path ``where``; with
    ``refused`` set, a place that matched but was left as it is, for that reason (e.g. tied weights)."""

    pattern: str
    where: str
    refused: str = ""


class PatternError(Exception):
    """Raised by a rewrite when one site fails: names the ``pattern`` and the module path ``where``."""

    def __init__(self, pattern: str, where: str, message: str) -> None:
        super().__init__(f"{pattern}@{where}: {message}")
        self.pattern, self.where = pattern, where


class NotApplicable(Exception):
    """Raised by a rewrite that finds nothing to do for a stated reason (e.g. "already sdpa")."""


class Unavailable(Exception):
    """Raised by a rewrite whose backend is missing on this machine (e.g. no C compiler for torch.compile)."""


@dataclass(frozen=True)
class FusionPass:
    """One fusion pass.

    Attributes:
        name: short unique name (``"merge-qkv"``).
        patterns: names of the module structures it rewrites (reported per rewrite).
        rewrite: ``(model, only) -> list[Rewrite]``, changes the model in place, only at the patterns named in
            ``only`` (a frozenset; None: all); may raise :class:`NotApplicable` / :class:`Unavailable` with a
            reason, or :class:`PatternError` naming the site that failed.
        description: one line for reports.
    """

    name: str
    patterns: tuple[str, ...]
    rewrite: Callable[[nn.Module], list[Rewrite]]
    description: str = ""

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name):
            raise ValueError(f"FusionPass.name={self.name!r} is invalid: use a non-empty string")
        if not (isinstance(self.patterns, tuple) and self.patterns and all(isinstance(p, str) for p in self.patterns)):
            raise ValueError(f"FusionPass.patterns={self.patterns!r} is invalid: use a non-empty tuple of pattern names")
        if not callable(self.rewrite):
            raise ValueError(f"FusionPass.rewrite={self.rewrite!r} is invalid: use a callable (model, only) -> list[Rewrite]")


@dataclass(frozen=True)
class PassResult:
    name: str
    status: PassStatus
    rewrites: tuple[Rewrite, ...] = ()
    max_abs_diff: float | None = None
    reason: str = ""
    seconds: float = 0.0
    max_abs_diff_total: float | None = None  # vs the model before the first pass

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.pattern for r in self.rewrites))

    def to_dict(self) -> dict:
        return {"name": self.name, "status": self.status.value, "rewrites": len(self.rewrites),
                "patterns": {p: sum(r.pattern == p for r in self.rewrites) for p in self.patterns},
                "where": [f"{r.pattern}@{r.where}" for r in self.rewrites],
                "max_abs_diff": self.max_abs_diff, "max_abs_diff_total": self.max_abs_diff_total, "reason": self.reason, "seconds": self.seconds}


@dataclass(frozen=True)
class FusionReport:
    results: tuple[PassResult, ...]
    atol: float
    generate_tokens: int = 0

    def result(self, name: str) -> PassResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(f"no pass named {name!r} in this report (passes: {[r.name for r in self.results]})")

    @property
    def applied(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.results if r.status is PassStatus.APPLIED)

    def to_dict(self) -> dict:
        return {"atol": self.atol, "generate_tokens": self.generate_tokens, "passes": [r.to_dict() for r in self.results]}

    def __str__(self) -> str:
        lines = []
        for r in self.results:
            diff = "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.2e}"
            pats = ", ".join(f"{p} x{sum(w.pattern == p for w in r.rewrites)}" for p in r.patterns)
            lines.append(f"{r.name:<10} {r.status.value:<15} rewrites={len(r.rewrites):<3} max|diff|={diff:<9} "
                         f"{pats}{'; ' if pats and r.reason else ''}{r.reason}")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- outputs

def model_output(model: nn.Module, inputs: Mapping | torch.Tensor) -> torch.Tensor:
    """The primary output of ``model(**inputs)`` (or ``model(inputs)``): ``.logits`` of an HF output, the first
    tensor of a tuple, or the tensor itself, run under ``torch.no_grad``; padding positions left out (:func:`_valid`)."""
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, Mapping) else model(inputs)
    if isinstance(out, torch.Tensor):
        return _valid(out, inputs)
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return _valid(logits, inputs)
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return _valid(out[0], inputs)
    raise TypeError(f"cannot compare outputs of type {type(out).__name__}: return a tensor, a tuple or an output "
                    "with .logits")


def _valid(y: torch.Tensor, inputs) -> torch.Tensor:
    """``y`` without the padding positions (``attention_mask == 0``) when ``y`` is (B, L, ...) like the mask: what a
    model outputs there is undefined (HF's eager and SDPA attention treat fully masked rows differently)."""
    mask = inputs.get("attention_mask") if isinstance(inputs, Mapping) else None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and y.dim() >= 2 and y.shape[:2] == mask.shape:
        return y[mask.bool()]  # (real tokens, ...)
    return y


def _greedy_tokens(model: nn.Module, inputs: Mapping, new_tokens: int) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                              use_cache=True)


# -------------------------------------------------------------------------------------------- snapshot

_TABLES = ("_modules", "_parameters", "_buffers")


def _configs(model: nn.Module) -> list:
    """Every HF config object the model's modules hold, with their sub-configs."""
    try:
        from transformers import PretrainedConfig
    except ImportError:  # pragma: no cover - transformers is a dependency
        return []
    seen: dict[int, object] = {}
    todo = [getattr(m, "config", None) for m in model.modules()]
    while todo:
        c = todo.pop()
        if isinstance(c, PretrainedConfig) and id(c) not in seen:
            seen[id(c)] = c
            todo += [v for v in vars(c).values() if isinstance(v, PretrainedConfig)]
    return list(seen.values())


class _Snapshot:
    """Everything a pass may change in place, kept so that :meth:`restore` puts the model back exactly."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = [(m, {k: (dict(v) if k in _TABLES else v) for k, v in vars(m).items()}) for m in model.modules()]
        tensors = {id(t): t for m in model.modules() for t in [*m._parameters.values(), *m._buffers.values()] if t is not None}
        self.values = [(t, t.detach().clone(), t._version) for t in tensors.values()]
        self.configs = [(c, dict(vars(c))) for c in _configs(model)]

    def restore(self) -> None:
        for m, attrs in self.modules:
            vars(m).clear()
            vars(m).update({k: (dict(v) if k in _TABLES else v) for k, v in attrs.items()})
        with torch.no_grad():
            for t, value, version in self.values:
                if t._version != version or t.shape != value.shape:
                    t.data = value
        for c, attrs in self.configs:
            vars(c).clear()
            vars(c).update(attrs)


# ----------------------------------------------------------------------------------------------- runner

def _max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    d = (a.float() - b.float()).abs()
    return float(d.max()) if d.numel() else 0.0  # NaN when either has one: never <= atol


def run_passes(model: nn.Module, example_inputs: Mapping | torch.Tensor, passes: Sequence[FusionPass], *,
               atol: float = 1e-4, generate_tokens: int = 0, clock: Callable[[], float] | None = None) -> FusionReport:
    """Apply ``passes`` to ``model`` in place, each guarded (module docstring); returns the report.

    ``atol``: the largest ``max |logits_after - logits_before|`` a pass may cause (float rounding of reordered
    sums); ``generate_tokens``: greedy tokens to decode after every pass for the KV-cache check (0: skip).
    """
    import time

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if not isinstance(example_inputs, (Mapping, torch.Tensor)):
        raise TypeError("example_inputs must be a dict of keyword inputs (e.g. input_ids, pixel_values) or a tensor, "
                        f"got {type(example_inputs).__name__}")
    if not (isinstance(atol, (int, float)) and not isinstance(atol, bool) and atol >= 0 and math.isfinite(atol)):
        raise ValueError(f"atol={atol!r} is invalid: use a finite float >= 0 (e.g. 1e-4)")
    if not (isinstance(generate_tokens, int) and generate_tokens >= 0):
        raise ValueError(f"generate_tokens={generate_tokens!r} is invalid: use an int >= 0 (0 skips the decoding check)")
    if generate_tokens and not (isinstance(example_inputs, Mapping) and hasattr(model, "generate")):
        raise ValueError("generate_tokens > 0 needs a model with .generate and dict example_inputs")
    passes = tuple(passes)
    for p in passes:
        if not isinstance(p, FusionPass):
            raise TypeError(f"passes must be FusionPass objects, got {type(p).__name__} ({p!r}); look names up with "
                            "ann.fusion.get_passes")
    names = [p.name for p in passes]
    if len(set(names)) != len(names):
        raise ValueError(f"passes={names}: each pass may appear once")
    clock = clock or time.perf_counter
    was_training = model.training
    model.eval()
    try:
        reference = original = model_output(model, example_inputs)
        tokens = _greedy_tokens(model, example_inputs, generate_tokens) if generate_tokens else None
        results = []
        for p in passes:
            r, out = _run_one(model, example_inputs, p, reference, tokens, atol, generate_tokens, clock)
            if out is not None:
                r = replace(r, max_abs_diff_total=_max_abs_diff(out, original))
                reference = out
            results.append(r)
    finally:
        model.train(was_training)
    return FusionReport(results=tuple(results), atol=float(atol), generate_tokens=generate_tokens)


def _culprits(model, inputs, p: FusionPass, reference, atol, snap: _Snapshot) -> list[str]:
    """Each pattern of ``p`` applied alone on the restored model: those that fail the output check (model restored)."""
    bad = []
    for pattern in p.patterns:
        try:
            done = [r for r in p.rewrite(model, frozenset({pattern})) if not r.refused]
            diff = _max_abs_diff(model_output(model, inputs), reference) if done else 0.0
            if not diff <= atol:
                bad.append(f"{pattern} (max |diff| {diff:.3g})")
        except Exception as e:  # noqa: BLE001
            bad.append(f"{pattern} ({type(e).__name__})")
        finally:
            snap.restore()
    return bad


def _run_one(model, inputs, p: FusionPass, reference, tokens, atol, generate_tokens, clock):
    """``(result, output after the pass or None when the model is as before)``."""
    t0 = clock()
    snap = _Snapshot(model)
    rewrites: list[Rewrite] = []

    def reject(reason: str, diff: float | None = None) -> PassResult:
        snap.restore()
        culprits = _culprits(model, inputs, p, reference, atol, snap) if len({r.pattern for r in rewrites}) > 1 else []
        if culprits:
            reason += "; failing alone: " + ", ".join(culprits)
        where = ", ".join(f"{r.pattern}@{r.where}" for r in rewrites[:6]) + (" ..." if len(rewrites) > 6 else "")
        pats = ", ".join(dict.fromkeys(r.pattern for r in rewrites)) or "-"
        msg = f"fusion pass {p.name!r} rejected and undone (patterns: {pats}): {reason}" + (f" [{where}]" if where else "")
        warnings.warn(msg, FusionWarning, stacklevel=4)
        return PassResult(p.name, PassStatus.REJECTED, tuple(rewrites), diff, f"patterns {pats}: {reason}", clock() - t0), None

    refusals = ""
    try:
        found = list(p.rewrite(model, None))
        rewrites = [r for r in found if not r.refused]
        refusals = "; ".join(f"refused {r.pattern}@{r.where}: {r.refused}" for r in found if r.refused)
    except NotApplicable as e:
        snap.restore()
        return PassResult(p.name, PassStatus.NOT_APPLICABLE, (), None, str(e), clock() - t0), None
    except Unavailable as e:
        snap.restore()
        return PassResult(p.name, PassStatus.UNAVAILABLE, (), None, str(e), clock() - t0), None
    except PatternError as e:
        rewrites = [Rewrite(e.pattern, e.where)]
        return reject(f"the rewrite failed at {e}")
    except Exception as e:  # noqa: BLE001 - any failure of a rewrite is reported and undone
        return reject(f"the rewrite raised {type(e).__name__}: {e}")
    if not rewrites:
        snap.restore()
        return PassResult(p.name, PassStatus.NOT_APPLICABLE, (), None, refusals or "no matching pattern in this model",
                          clock() - t0), None
    try:
        out = model_output(model, inputs)
    except Exception as e:  # noqa: BLE001
        return reject(f"the fused model raised {type(e).__name__}: {e}")
    diff = _max_abs_diff(out, reference)
    if not diff <= atol:
        return reject(f"max |logits - logits before the pass| = {diff:.3g} > atol {atol:g}", diff)
    if tokens is not None:
        try:
            got = _greedy_tokens(model, inputs, generate_tokens)
        except Exception as e:  # noqa: BLE001
            return reject(f"generate raised {type(e).__name__}: {e}", diff)
        if got.shape != tokens.shape or not torch.equal(got, tokens):
            return reject(f"greedy decoding of {generate_tokens} tokens changed", diff)
    return PassResult(p.name, PassStatus.APPLIED, tuple(rewrites), diff, refusals, clock() - t0), out
