r"""Linear + activation as one oneDNN call (the ``bias-act`` pass).

``y = act(x W^T + b)`` with ``act`` exact-erf GELU, ``gelu(z) = z / 2 * (1 + erf(z / sqrt(2)))`` (what HF's
``GELUActivation`` and ``nn.GELU()`` compute), or SiLU, ``silu(z) = z * sigmoid(z)`` (oneDNN calls it ``swish``),
computed by ``torch.ops.mkldnn._linear_pointwise(x2d, W_packed, b, attr, [], algorithm)`` on the pre-packed
weight of :class:`ann.fusion.packed.PackedLinear`: the activation runs in the GEMM's epilogue, on the output tile
still in registers, instead of a second pass over the (rows, n) output in memory.

Rewritten structures (the activation module becomes ``nn.Identity``, the parent's forward is unchanged):

- ``vit-fc1-gelu``: ViTMLP ``fc1`` -> ``activation_fn`` (GELU);
- ``projector-gelu``: a LLaVA-style projector ``linear_1`` -> ``act`` (GELU) (MergeProjector, LlavaMultiModalProjector);
- ``llama-gate-silu``: LlamaMLP ``act_fn(gate_proj(x))`` (SiLU), when gate and up are not merged (after
  ``merge-qkv`` the SiLU covers only half of the merged GEMM's output, so the pattern no longer matches).

Without oneDNN (or for a dtype this CPU cannot pack, or calls that need gradients) :class:`PackedLinearAct`
computes ``act(F.linear(x, W, b))``: same result, no fusion; the pass warns when that happens.
"""

from __future__ import annotations

import enum
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ann.fusion.framework import FusionWarning, PatternError, Rewrite
from ann.fusion.packed import PackedLinear, dtype_packable, packing_available

__all__ = ["Activation", "PackedLinearAct", "activation_of", "rewrite_bias_act", "BIAS_ACT_PATTERNS"]

BIAS_ACT_PATTERNS = ("vit-fc1-gelu", "projector-gelu", "llama-gate-silu")


class Activation(enum.Enum):
    """An activation oneDNN can fuse: (oneDNN post-op name, algorithm, the unfused function)."""

    GELU = ("gelu", "none", F.gelu)  # "none": exact erf; "tanh" would be the tanh approximation
    SILU = ("swish", "none", F.silu)

    @property
    def attr(self) -> str:
        return self.value[0]

    @property
    def algorithm(self) -> str:
        return self.value[1]

    @property
    def function(self):
        return self.value[2]


def activation_of(module: nn.Module) -> Activation | None:
    """The fusable activation ``module`` computes exactly, or None (tanh-approximated GELU, anything else)."""
    if isinstance(module, nn.GELU):
        return Activation.GELU if module.approximate == "none" else None
    if isinstance(module, nn.SiLU):
        return Activation.SILU
    name = type(module).__name__
    if name == "GELUActivation":  # HF: F.gelu or its exact-erf Python twin
        fn = getattr(module, "act", None)
        return Activation.GELU if fn is F.gelu or getattr(fn, "__name__", "") == "_gelu_python" else None
    if name == "SiLUActivation" and not list(module.children()):
        return Activation.SILU
    return None


class PackedLinearAct(PackedLinear):
    """``act(linear(x))`` with a oneDNN-packed weight and the activation fused into the GEMM (module docstring)."""

    def __init__(self, linear: nn.Linear, *, activation: Activation, batch_hint: int = 8) -> None:
        super().__init__(linear, batch_hint=batch_hint)
        if not isinstance(activation, Activation):
            raise TypeError(f"activation must be an ann.fusion.bias_act.Activation, got {activation!r}")
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if ((torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or x.dtype != w.dtype
                or x.device.type != "cpu" or not packing_available() or not dtype_packable(w.dtype)):
            return self.activation.function(F.linear(x, w, self.bias))
        shape = x.shape
        y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, shape[-1]).contiguous(), self._pack(), self.bias,
                                               self.activation.attr, [], self.activation.algorithm)  # (rows, n)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", activation={self.activation.name.lower()} (fused)"


def _sites(model: nn.Module):
    """(pattern, where, parent, linear attr, activation attr, Activation) for every matching structure."""
    for where, m in model.named_modules():
        name = type(m).__name__
        if name == "ViTMLP":
            pair = ("vit-fc1-gelu", "fc1", "activation_fn")
        elif name == "LlamaMLP":
            pair = ("llama-gate-silu", "gate_proj", "act_fn")
        elif all(hasattr(m, a) for a in ("linear_1", "act", "linear_2")):
            pair = ("projector-gelu", "linear_1", "act")
        else:
            continue
        pattern, lin, act = pair
        a = activation_of(getattr(m, act))
        if type(getattr(m, lin)) is nn.Linear and a is not None:
            yield pattern, where, m, lin, act, a


def rewrite_bias_act(model: nn.Module, only: frozenset[str] | None = None) -> list[Rewrite]:
    """Swap each matched (linear, activation) pair for a :class:`PackedLinearAct` and an ``nn.Identity``."""
    sites = [s for s in _sites(model) if only is None or s[0] in only]
    if sites and not packing_available():
        warnings.warn("bias-act: this torch build has no oneDNN; linear + activation run as F.linear + activation "
                      "(same result, no fusion)", FusionWarning, stacklevel=3)
    out = []
    for pattern, where, m, lin, act, a in sites:
        try:
            setattr(m, lin, PackedLinearAct(getattr(m, lin), activation=a))
            setattr(m, act, nn.Identity())
        except Exception as e:  # noqa: BLE001
            raise PatternError(pattern, where, f"{type(e).__name__}: {e}") from e
        out.append(Rewrite(pattern, where))
    return out
