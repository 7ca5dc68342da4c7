r"""Quantization sensitivity of any node of the hierarchy (:mod:`quant.hierarchy`) at ``b`` bits.

Two metrics:

**Hessian-aware (HAWQ-V2).** Hutchinson's estimator with Rademacher probes ``z`` (entries +-1) gives the
Hessian diagonal and hence the trace of any block of it, since ``E[z_i z_j] = delta_ij``:

    diag(H) ~= mean_{batches, probes} z * (H z),          H z = d/dtheta (g . z),  g = dL/dtheta

(``H z`` by double backward, no Hessian formed), so ``tr(H_node) = sum over the node's elements of diag(H)``.
The score of a node at ``b`` bits is

    hawq(node, b) = max(0, tr(H_node)) / n_node * ||W_node - Q_b(W_node)||^2

Symbols: ``theta`` the parameters, ``L`` the calibration loss, ``n_node`` the node's weight count,
``W_node`` its weights in (rows, in) layout, ``Q_b`` the fake quantizer at ``b`` bits.
Reference: Dong et al., "HAWQ-V2: Hessian Aware trace-Weighted Quantization", NeurIPS 2020;
Hutchinson, "A stochastic estimator of the trace of the influence matrix", 1990.

**Output perturbation.** Only the node's weights are fake-quantized (in place, restored afterwards; the
copy kept is of that node alone), and the outputs on the calibration batches are compared with the float
ones: ``kl = mean over positions of KL(p_fp || p_q)``, ``p = softmax(logits)`` over the last axis
(positions with ``attention_mask == 0`` left out), or ``mse = mean((y_fp - y_q)^2)``.

``bits >= FLOAT_BITS`` (16) means "kept in floating point": the default quantizer returns the weight
unchanged, so every score is exactly 0 there.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from quant.hierarchy import Node
from quant.uniform import fake_quantize

__all__ = [
    "FLOAT_BITS", "FakeQuant", "Forward", "LossFn", "Metric", "default_fake_quant", "hf_logits",
    "self_distill_loss", "causal_lm_loss", "hutchinson_diagonal", "hutchinson_trace", "node_hessian_trace",
    "hawq_score", "quantized", "reference_outputs", "output_distance", "output_perturbation", "SensitivityCost", "Sensitivity",
]

FLOAT_BITS = 16
FakeQuant = Callable[[torch.Tensor, int], torch.Tensor]  # (weight (rows, in), bits) -> dequantized weight
Forward = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> logits / outputs
LossFn = Callable[[nn.Module, Any], torch.Tensor]  # (model, batch) -> scalar loss


class Metric(str, Enum):
    HAWQ = "hawq"
    KL = "kl"
    MSE = "mse"


def default_fake_quant(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel (rows of the ``(rows, in)`` layout) fake quantization; identity at
    ``bits >= FLOAT_BITS``."""
    if bits >= FLOAT_BITS:
        return w
    return fake_quantize(w.detach().float(), bits=bits, axis=0).to(w.dtype)


def hf_logits(model: nn.Module, batch: Any) -> torch.Tensor:
    """Default forward: ``model(**batch)`` for a dict batch, ``model(batch)`` otherwise; returns ``.logits``
    when present, else the first tensor of a tuple output, else ``.last_hidden_state``, else the output."""
    out = model(**batch) if isinstance(batch, Mapping) else model(batch)
    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    if getattr(out, "last_hidden_state", None) is not None:
        return out.last_hidden_state
    raise TypeError(f"cannot find logits in a {type(out).__name__}; pass forward=(model, batch) -> tensor")


def self_distill_loss(model: nn.Module, batch: Any, *, forward: Forward = hf_logits) -> torch.Tensor:
    """``KL(p_fp || p_theta)`` with ``p_fp`` the detached current prediction: needs no labels (any classifier
    or LM), its gradient is 0 at the current weights and its Hessian there is the Gauss-Newton matrix
    ``J^T (diag(p) - p p^T) J`` (positive semi-definite, the second-order term of the ``kl`` metric).
    The default calibration loss of the Hessian metric."""
    logits = forward(model, batch)
    logq = F.log_softmax(logits.float(), -1)
    p = logq.detach().exp()
    return (p * (logq.detach() - logq)).sum(-1).mean()


def causal_lm_loss(model: nn.Module, batch: Any, *, forward: Forward = hf_logits) -> torch.Tensor:
    """Next-token cross-entropy on ``batch["input_ids"]`` (logits ``(B, T, V)``)."""
    logits = forward(model, batch)
    ids = batch["input_ids"]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())  # (B*(T-1), V) vs (B*(T-1),)


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()  # dropout off: sensitivities must be deterministic
    try:
        yield
    finally:
        model.train(was)


def hutchinson_diagonal(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                        params: Mapping[str, torch.Tensor], *, n_probes: int = 16,
                        seed: int = 0) -> dict[str, torch.Tensor]:
    """Estimate of ``diag(H)`` per parameter (same shapes as ``params``), averaged over batches and
    ``n_probes`` Rademacher probes per batch (formula in the module docstring)."""
    if n_probes < 1:
        raise ValueError(f"n_probes={n_probes!r} must be >= 1")
    names = list(params)
    tensors = [params[n] for n in names]
    gen = torch.Generator().manual_seed(seed)
    acc = [torch.zeros_like(t, dtype=torch.float32) for t in tensors]
    n_batches = 0
    saved = [t.requires_grad for t in tensors]
    # Fused SDPA kernels (flash / memory-efficient) have no double backward; the math kernel does.
    with _eval_mode(model), sdpa_kernel(SDPBackend.MATH):
        try:
            for t in tensors:
                t.requires_grad_(True)
            for batch in batches:
                loss = loss_fn(model, batch)
                grads = torch.autograd.grad(loss, tensors, create_graph=True)
                for _ in range(n_probes):
                    zs = [(torch.randint(0, 2, t.shape, generator=gen) * 2 - 1).to(t.dtype) for t in tensors]
                    hz = torch.autograd.grad(grads, tensors, grad_outputs=zs, retain_graph=True, allow_unused=True)
                    for a, z, h in zip(acc, zs, hz):
                        if h is not None:  # None: the loss is linear in that tensor, its Hessian block is 0
                            a.add_((z * h).float())
                n_batches += 1
        finally:
            for t, s in zip(tensors, saved):
                t.requires_grad_(s)
    if n_batches == 0:
        raise ValueError("batches is empty; pass at least one calibration batch")
    return {n: a / (n_batches * n_probes) for n, a in zip(names, acc)}


def hutchinson_trace(model: nn.Module, loss_fn: LossFn, batches: Iterable[Any],
                     params: Mapping[str, torch.Tensor], *, n_probes: int = 16, seed: int = 0) -> dict[str, float]:
    """Hutchinson estimate of ``tr(H)`` per parameter tensor. For row groups (or any node), use
    :func:`hutchinson_diagonal` with :func:`node_hessian_trace`."""
    diag = hutchinson_diagonal(model, loss_fn, batches, params, n_probes=n_probes, seed=seed)
    return {n: float(d.sum()) for n, d in diag.items()}


def node_hessian_trace(node: Node, diag: Mapping[str, torch.Tensor]) -> float:
    """``tr(H_node)``: the diagonal estimate summed over the node's weight slices."""
    return float(sum(s.of(diag[s.param]).sum() for s in node.slices()))


def hawq_score(model: nn.Module, node: Node, bits: int, diag: Mapping[str, torch.Tensor],
               fake_quant: FakeQuant = default_fake_quant) -> float:
    """``tr(H_node) / n_node * ||W_node - Q_b(W_node)||^2`` (module docstring)."""
    err = 0.0
    with torch.no_grad():
        for s in node.slices():
            w = s.view(model)
            err += float((w.float() - fake_quant(w, bits).float()).pow(2).sum())
    # max(0, .): the loss Hessian is PSD near a minimum (and always for self_distill_loss); a negative
    # estimate is probe noise or curvature away from a minimum, and would reward quantization noise.
    return max(0.0, node_hessian_trace(node, diag)) / node.params * err


@contextlib.contextmanager
def quantized(model: nn.Module, node: Node, bits: int, fake_quant: FakeQuant = default_fake_quant) -> Iterator[None]:
    """Fake-quantize ``node``'s weights in place for the duration of the block; restored exactly afterwards."""
    views = [s.view(model) for s in node.slices()]
    with torch.no_grad():
        saved = [v.clone() for v in views]
        try:
            for v in views:
                v.copy_(fake_quant(v, bits))
            yield
        finally:
            for v, o in zip(views, saved):
                v.copy_(o)


def reference_outputs(model: nn.Module, batches: Sequence[Any], *, forward: Forward = hf_logits) -> list[torch.Tensor]:
    """Float outputs per calibration batch (compute once, reuse for every node)."""
    with _eval_mode(model), torch.no_grad():
        return [forward(model, b).detach() for b in batches]


def _mask(batch: Any, out: torch.Tensor) -> torch.Tensor | None:
    if isinstance(batch, Mapping) and batch.get("attention_mask") is not None:
        m = batch["attention_mask"]
        if out.dim() >= 2 and tuple(m.shape) == tuple(out.shape[:2]):
            return m.to(torch.float32)
    return None


def _distance(ref: torch.Tensor, out: torch.Tensor, metric: Metric, mask: torch.Tensor | None) -> torch.Tensor:
    if metric is Metric.KL:
        # float64: KL of nearly equal float32 logits is ~1e-12, below float32's rounding of the sum
        lp, lq = F.log_softmax(ref.double(), -1), F.log_softmax(out.double(), -1)
        per = (lp.exp() * (lp - lq)).sum(-1)  # (...,) KL per position
    else:
        per = (ref.double() - out.double()).pow(2)
        per = per.flatten(2).mean(-1) if (mask is not None and per.dim() > 2) else per
    if mask is None:
        return per.mean()
    m = mask.reshape(mask.shape + (1,) * (per.dim() - mask.dim()))
    return (per * m).sum() / (m.expand_as(per).sum()).clamp_min(1)


def output_distance(model: nn.Module, batches: Sequence[Any], reference: Sequence[torch.Tensor], metric: Metric | str = "kl",
                    *, forward: Forward = hf_logits) -> float:
    """Mean over batches of KL(p_fp || p_q) or MSE between ``model``'s outputs and the float ``reference``
    (:func:`reference_outputs`), whatever ``model`` has quantized (module docstring)."""
    metric = Metric(metric)
    if metric is Metric.HAWQ:
        raise ValueError("metric='hawq' is not an output metric; use hawq_score (or Sensitivity)")
    if len(batches) == 0:
        raise ValueError("batches is empty; pass at least one calibration batch")
    total = 0.0
    with _eval_mode(model), torch.no_grad():
        for b, r in zip(batches, reference):
            total += float(_distance(r, forward(model, b), metric, _mask(b, r)))
    return max(0.0, total / len(batches))  # max: float rounding can give -1e-9 for an unchanged output


def output_perturbation(model: nn.Module, batches: Sequence[Any], node: Node, bits: int,
                        fake_quant: FakeQuant = default_fake_quant, metric: Metric | str = "kl", *,
                        forward: Forward = hf_logits, reference: Sequence[torch.Tensor] | None = None) -> float:
    """:func:`output_distance` with only ``node`` quantized at ``bits`` (module docstring). ``reference``: the
    float outputs from :func:`reference_outputs`, else recomputed."""
    if Metric(metric) is Metric.HAWQ:
        raise ValueError("metric='hawq' is not an output metric; use hawq_score (or Sensitivity)")
    if len(batches) == 0:
        raise ValueError("batches is empty; pass at least one calibration batch")
    ref = reference_outputs(model, batches, forward=forward) if reference is None else reference
    with quantized(model, node, bits, fake_quant):
        return output_distance(model, batches, ref, metric, forward=forward)


@dataclass
class SensitivityCost:
    """What the scores cost: evaluations and seconds per metric, plus the one-off Hessian estimate."""

    evaluations: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    hessian_vector_products: int = 0
    hessian_seconds: float = 0.0

    @property
    def total_evaluations(self) -> int:
        return sum(self.evaluations.values())


class Sensitivity:
    """Lazy, memoised table ``(metric, node, bits) -> score`` over the hierarchy ``root`` of ``model``.

    ``score`` computes an entry on first request and counts it in ``cost``; ``fn(metric)`` is the
    ``(node, bits) -> score`` callable the allocators take. The Hessian diagonal (for ``hawq``) is estimated
    once, for every weight of ``root``, on the first HAWQ request. ``loss_fn`` defaults to
    :func:`self_distill_loss` with ``forward``.
    """

    def __init__(self, model: nn.Module, root: Node, batches: Sequence[Any], *,
                 fake_quant: FakeQuant = default_fake_quant, forward: Forward = hf_logits,
                 loss_fn: LossFn | None = None, n_probes: int = 16, seed: int = 0) -> None:
        if len(batches) == 0:
            raise ValueError("batches is empty; pass at least one calibration batch")
        self.model, self.root, self.batches = model, root, list(batches)
        self.fake_quant, self.forward, self.n_probes, self.seed = fake_quant, forward, n_probes, seed
        self.loss_fn: LossFn = loss_fn or (lambda m, b: self_distill_loss(m, b, forward=forward))
        self.cost = SensitivityCost()
        self._scores: dict[tuple[Metric, str, int], float] = {}
        self._diag: dict[str, torch.Tensor] | None = None
        self._ref: list[torch.Tensor] | None = None

    def hessian_diagonal(self) -> dict[str, torch.Tensor]:
        if self._diag is None:
            t0 = time.perf_counter()
            params = {s.param: self.model.get_parameter(s.param) for s in self.root.slices()}
            self._diag = hutchinson_diagonal(self.model, self.loss_fn, self.batches, params,
                                             n_probes=self.n_probes, seed=self.seed)
            self.cost.hessian_vector_products = self.n_probes * len(self.batches)
            self.cost.hessian_seconds = time.perf_counter() - t0
        return self._diag

    def score(self, node: Node, bits: int, metric: Metric | str) -> float:
        metric = Metric(metric)
        key = (metric, node.key, int(bits))
        if key not in self._scores:
            diag = self.hessian_diagonal() if metric is Metric.HAWQ else None
            if metric is not Metric.HAWQ and self._ref is None:
                self._ref = reference_outputs(self.model, self.batches, forward=self.forward)
            t0 = time.perf_counter()
            if metric is Metric.HAWQ:
                value = hawq_score(self.model, node, bits, diag, self.fake_quant)
            else:
                value = output_perturbation(self.model, self.batches, node, bits, self.fake_quant, metric,
                                            forward=self.forward, reference=self._ref)
            self.cost.seconds[metric.value] = self.cost.seconds.get(metric.value, 0.0) + time.perf_counter() - t0
            self.cost.evaluations[metric.value] = self.cost.evaluations.get(metric.value, 0) + 1
            self._scores[key] = value
        return self._scores[key]

    def fn(self, metric: Metric | str) -> Callable[[Node, int], float]:
        metric = Metric(metric)
        return lambda node, bits: self.score(node, bits, metric)

    def measure(self, nodes: Iterable[Node], choices: Iterable[int],
                metrics: Iterable[Metric | str] = (Metric.HAWQ, Metric.KL)) -> dict[tuple[str, str, int], float]:
        """Every ``(metric, node, bits)`` entry for the given nodes (computed where missing)."""
        nodes, choices, metrics = list(nodes), list(choices), [Metric(m) for m in metrics]
        for m in metrics:
            for n in nodes:
                for b in choices:
                    self.score(n, b, m)
        return self.table()

    def table(self) -> dict[tuple[str, str, int], float]:
        """Every score computed so far, keyed ``(metric, node.key, bits)``."""
        return {(m.value, k, b): v for (m, k, b), v in self._scores.items()}
