r"""Fold a norm's affine parameters into the linear layers that are its only consumers (the ``fold-norm`` pass).

A LayerNorm computes ``y = n(x) * gamma + beta`` with ``n(x) = (x - mean(x)) / sqrt(var(x) + eps)``; an RMSNorm
(LlamaRMSNorm) computes ``y = n(x) * gamma`` with ``n(x) = x / sqrt(mean(x^2) + eps)``. When every consumer of
``y`` is a linear layer ``z = y W^T + b``,

    z = (n(x) * gamma) W^T + beta W^T + b = n(x) (W diag(gamma))^T + (b + W beta),

so the norm keeps only ``n`` and each consumer gets ``W' = W diag(gamma)`` (column j of W times ``gamma[j]``)
and ``b' = b + W beta`` (a bias is created when the linear had none and ``beta != 0``). Symbols: x (..., D) the
norm's input, gamma / beta (D,) its weight / bias, W (n, D) and b (n,) a consumer's weight and bias.
Same maths, other rounding (two products become one): ~1e-7 relative in fp32.

Exact only where the norm's output goes to those linears and nowhere else. Known sites (:data:`DEFAULT_FOLDS`):
ViTLayer ``layernorm_before`` -> q/k/v (or merged ``qkv_proj``), ``layernorm_after`` -> ``fc1``; LlamaDecoderLayer
``input_layernorm`` -> q/k/v (or ``qkv_proj``), ``post_attention_layernorm`` -> gate/up (or ``gate_up_proj``).
Refused with the reason: a consumer whose weight is shared with another module (tied weights: folding would change
the other user too), e.g. LlamaModel's final ``norm`` feeding the ``lm_head`` tied to the embedding table.
A site listed wrongly (the norm's output also feeds a residual) is caught by the framework's numerical check.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ann.fusion.framework import PatternError, Rewrite

__all__ = ["NormFold", "DEFAULT_FOLDS", "PlainRMSNorm", "rewrite_fold_norm", "make_fold_rewrite", "FOLD_PATTERNS"]


@dataclass(frozen=True)
class NormFold:
    """One foldable structure: in modules of class ``layer_type`` (class name), the norm at attribute path ``norm``
    feeds exactly the linears at ``consumers``; ``alternatives``: other consumer sets for rewritten layers (the
    first set whose paths all exist is used)."""

    pattern: str
    layer_type: str
    norm: str
    consumers: tuple[str, ...]
    alternatives: tuple[tuple[str, ...], ...] = ()

    def __post_init__(self) -> None:
        for f in ("pattern", "layer_type", "norm"):
            if not (isinstance(getattr(self, f), str) and getattr(self, f)):
                raise ValueError(f"NormFold.{f}={getattr(self, f)!r} is invalid: use a non-empty string")
        if not (isinstance(self.consumers, tuple) and self.consumers):
            raise ValueError(f"NormFold.consumers={self.consumers!r} is invalid: use a non-empty tuple of attribute paths")


DEFAULT_FOLDS: tuple[NormFold, ...] = (
    NormFold("vit-ln-qkv", "ViTLayer", "layernorm_before", ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
             (("attention.qkv_proj",),)),
    NormFold("vit-ln-fc1", "ViTLayer", "layernorm_after", ("mlp.fc1",)),
    NormFold("llama-rms-qkv", "LlamaDecoderLayer", "input_layernorm",
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), (("self_attn.qkv_proj",),)),
    NormFold("llama-rms-gate-up", "LlamaDecoderLayer", "post_attention_layernorm", ("mlp.gate_proj", "mlp.up_proj"),
             (("mlp.gate_up_proj",),)),
)
FOLD_PATTERNS = tuple(f.pattern for f in DEFAULT_FOLDS) + ("llama-final-norm-lm-head",)


class PlainRMSNorm(nn.Module):
    """RMSNorm without a weight, ``x / sqrt(mean(x^2) + eps)`` computed in fp32 like LlamaRMSNorm (the class name
    ends in ``RMSNorm``, which tells the workload tracer what it is)."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.hidden_size, self.variance_epsilon = hidden_size, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.float(), (self.hidden_size,), None, self.variance_epsilon).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.hidden_size}, eps={self.variance_epsilon}, affine folded"


def _get(m: nn.Module, path: str):
    for part in path.split("."):
        m = getattr(m, part, None)
        if m is None:
            return None
    return m


def _affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None, nn.Module] | None:
    """(gamma, beta or None, the affine-free replacement) of a LayerNorm / RMSNorm, or None (no affine, unknown)."""
    if isinstance(norm, nn.LayerNorm):
        if not norm.elementwise_affine or norm.weight is None:
            return None
        plain = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, elementwise_affine=False)
        return norm.weight, norm.bias, plain
    if type(norm).__name__.endswith("RMSNorm") and isinstance(getattr(norm, "weight", None), torch.Tensor):
        eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
        if eps is None or norm.weight.dim() != 1:
            return None
        return norm.weight, None, PlainRMSNorm(norm.weight.numel(), eps)
    return None


def _shared(model: nn.Module, p: torch.Tensor) -> bool:
    return sum(1 for m in model.modules() for q in m._parameters.values() if q is p) > 1


@torch.no_grad()
def _fold_into(lin: nn.Module, gamma: torch.Tensor, beta: torch.Tensor | None) -> None:
    w = lin.weight  # (n, D)
    if beta is not None and bool(beta.ne(0).any()):
        shift = w @ beta.to(w.dtype)  # (n, D) x (D,) -> (n,)
        if lin.bias is None:
            lin.bias = nn.Parameter(shift, requires_grad=w.requires_grad)
        else:
            lin.bias.add_(shift)
    w.mul_(gamma.to(w.dtype))  # W diag(gamma): (n, D) * (D,)


def make_fold_rewrite(folds: tuple[NormFold, ...]):
    """The rewrite ``(model, only) -> list[Rewrite]`` of the ``fold-norm`` pass for these structures (plus the
    refusal of a final norm feeding a tied LM head)."""

    def rewrite(model: nn.Module, only: frozenset[str] | None = None) -> list[Rewrite]:
        out: list[Rewrite] = []
        for where, layer in list(model.named_modules()):
            for f in folds:
                if type(layer).__name__ != f.layer_type or (only is not None and f.pattern not in only):
                    continue
                at = f"{where}.{f.norm}" if where else f.norm
                norm = _get(layer, f.norm)
                aff = _affine(norm) if norm is not None else None
                if aff is None:
                    continue  # no affine left (already folded) or not a norm
                cons = next(([_get(layer, c) for c in group] for group in (f.consumers, *f.alternatives)
                             if all(_get(layer, c) is not None for c in group)), None)
                if cons is None:
                    continue
                if any(not (isinstance(getattr(c, "weight", None), torch.Tensor) and c.weight.dim() == 2
                            and c.weight.shape[1] == aff[0].numel()) for c in cons):
                    out.append(Rewrite(f.pattern, at, refused="a consumer is not a linear layer over the norm's width"))
                    continue
                if any(_shared(model, c.weight) for c in cons):
                    out.append(Rewrite(f.pattern, at, refused="a consumer's weight is tied to another module"))
                    continue
                try:
                    gamma, beta, plain = aff
                    for c in cons:
                        _fold_into(c, gamma, beta)
                    parent, _, attr = f.norm.rpartition(".")
                    setattr(_get(layer, parent) if parent else layer, attr, plain)
                except Exception as e:  # noqa: BLE001
                    raise PatternError(f.pattern, at, f"{type(e).__name__}: {e}") from e
                out.append(Rewrite(f.pattern, at))
        head = getattr(model, "lm_head", None)
        emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
        if (only is None or "llama-final-norm-lm-head" in only) and head is not None and emb is not None and getattr(head, "weight", None) is getattr(emb, "weight", 0):
            finals = [n for n, m in model.named_modules() if type(m).__name__ == "LlamaModel"]
            out += [Rewrite("llama-final-norm-lm-head", f"{n}.norm",
                            refused="lm_head is tied to the token embedding: W diag(gamma) would change the embeddings")
                    for n in finals]
        return out

    return rewrite


rewrite_fold_norm = make_fold_rewrite(DEFAULT_FOLDS)
