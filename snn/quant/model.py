r"""Quantize a spiking model layer by layer: weights, membrane potentials and thresholds at per-layer widths.

Steps of :class:`SpikingQuantizer` (post-training; the float model is left untouched):

1. **Fold BatchNorm** into the synapse before it (:func:`fold_batchnorm`): a Linear / Conv ``y = W x + b`` followed
   by BatchNorm in eval mode ``z = gamma (y - mu) / sqrt(var + eps) + beta`` is one synapse

       W' = diag(a) W,   b' = a (b - mu) + beta,   a = gamma / sqrt(var + eps)

   (exact up to float rounding), so the deployed network has no normalization and every input current of a
   neuron comes from one integer synapse. A BatchNorm is folded only when its input is exactly the output of
   the Linear / Conv that runs just before it (checked on a forward pass), per output channel.
2. **Calibrate** the membrane grid of every neuron layer on example inputs: the float network runs once with
   :class:`~snn.quant.neuron.QuantNeuron` layers recording their charges, and
   :func:`~snn.quant.neuron.membrane_range` turns them into each layer's range ``R``.
3. **Build** a quantized copy for a :class:`SpikingPrecision`: each weight named in ``weights`` is fake-quantized
   symmetrically per output row (:func:`quant.quantizer.fake_quant`: ``s_r = max_j |w_rj| / (2^(b-1) - 1)``,
   ``w_hat = s_r round(w / s_r)``; per tensor with ``per_tensor=True``), biases stay float32 (they are added
   once per timestep), and every neuron layer becomes a ``QuantNeuron`` with its membrane, threshold and decay
   widths (float state where no width is given).

Items of the search (:class:`Item`): a weight tensor (a parameter with at least 2 dimensions: Linear / Conv
weights, embeddings, position tables) or a neuron layer's membrane (with its threshold on the same grid unless a
threshold width is set). Every item belongs to a *block*: the numbered container it sits in (``blocks.3``,
``layers.0``), or ``embed`` / ``head`` for what comes before the first or after the last block.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from quant.quantizer import QuantSpec, fake_quant
from snn.quant.memory import MemoryReport, neuron_sizes, spiking_memory
from snn.quant.neuron import QuantNeuron, is_neuron, membrane_range, neuron_spec_of

__all__ = ["SpikingPrecision", "Item", "SpikingQuantizer", "fold_batchnorm", "LOIHI_WIDTHS", "BLOCK_PATTERN"]

BLOCK_PATTERN = r"^(.*?\b(?:blocks|layers|layer|h)\.\d+)\."
LOIHI_WIDTHS = {"weight_bits": 8, "membrane_bits": 24, "threshold_bits": 17, "decay_bits": 12}
"""Loihi's formats (Davies et al., IEEE Micro 2018; Lava's fixed-point LIF): 8-bit weights, 24-bit membrane,
17-bit threshold mantissa (shifted by 6 into the membrane's range), 12-bit decay. :meth:`SpikingPrecision.uniform`
with these widths simulates a model at Loihi precision; feed-forward chains that the Lava target runs also have an
exact integer simulation in :mod:`snn.quant.loihi`."""


@dataclass(frozen=True)
class SpikingPrecision:
    """Per-layer widths. Absent names stay float32.

    Attributes:
        weights: parameter name -> bits (2..16).
        membranes: neuron layer name -> membrane bits (2..32).
        thresholds: neuron layer name -> threshold bits (1..32); absent: on the membrane grid.
        decay_bits: width of every LIF decay ``1/tau`` (None: float).
        per_tensor: one weight scale per tensor (default: one per output row).
    """

    weights: Mapping[str, int] = field(default_factory=dict)
    membranes: Mapping[str, int] = field(default_factory=dict)
    thresholds: Mapping[str, int] = field(default_factory=dict)
    decay_bits: int | None = 12
    per_tensor: bool = False

    def __post_init__(self) -> None:
        for what, table, lo, hi in (("weights", self.weights, 2, 16), ("membranes", self.membranes, 2, 32),
                                    ("thresholds", self.thresholds, 1, 32)):
            bad = {k: v for k, v in table.items() if not (isinstance(v, int) and lo <= v <= hi)}
            if bad:
                raise ValueError(f"SpikingPrecision.{what}: widths must be ints in {lo}..{hi}, got {bad}")
        if self.decay_bits is not None and not (isinstance(self.decay_bits, int) and 1 <= self.decay_bits <= 24):
            raise ValueError(f"SpikingPrecision.decay_bits={self.decay_bits!r}: use an int in 1..24 or None")

    def with_bits(self, changes: Mapping[Item, int]) -> SpikingPrecision:
        """A copy with the given items set to new widths."""
        w, m = dict(self.weights), dict(self.membranes)
        for item, b in changes.items():
            (w if item.kind == "weight" else m)[item.name] = b
        return dataclasses.replace(self, weights=w, membranes=m)

    def bits_of(self, item: Item) -> int | None:
        return (self.weights if item.kind == "weight" else self.membranes).get(item.name)

    def to_dict(self) -> dict:
        return {"weights": dict(self.weights), "membranes": dict(self.membranes), "thresholds": dict(self.thresholds),
                "decay_bits": self.decay_bits, "per_tensor": self.per_tensor}

    @classmethod
    def from_dict(cls, d: Mapping) -> SpikingPrecision:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


@dataclass(frozen=True)
class Item:
    """One unit of the search: a weight tensor (``kind="weight"``, ``name`` its parameter) or a neuron layer's
    membrane (``kind="membrane"``, ``name`` the layer); ``size`` elements (neurons per sample for a membrane)."""

    kind: str
    name: str
    block: str
    size: int

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.name}"


def _bn_params(bn: nn.Module) -> nn.BatchNorm1d | nn.BatchNorm2d | None:
    inner = getattr(bn, "bn", bn)  # snn.models.blocks.SeqBN wraps a BatchNorm1d
    return inner if isinstance(inner, nn.modules.batchnorm._BatchNorm) and inner.track_running_stats else None


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` (eval mode) with every BatchNorm that directly follows a Linear / Conv folded into it
    (module docstring); returns ``(copy, folded BatchNorm names)``. BatchNorms that cannot be folded stay."""
    model = copy.deepcopy(model).eval()
    names = {m: n for n, m in model.named_modules()}
    last: dict[str, object] = {"out": None, "module": None}
    pairs: list[tuple[nn.Module, nn.Module]] = []
    hooks = []

    def synapse_hook(mod, inp, out):
        last["out"], last["module"] = out, mod

    def bn_hook(mod, inp, out):
        if inp[0] is last["out"] and _bn_params(mod) is not None and (last["module"], mod) not in pairs:
            pairs.append((last["module"], mod))

    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            hooks.append(m.register_forward_hook(synapse_hook))
        elif _bn_params(m) is not None:
            hooks.append(m.register_forward_hook(bn_hook))
    try:
        model(**example) if isinstance(example, Mapping) else model(example)
    finally:
        for h in hooks:
            h.remove()
    counts: dict[nn.Module, int] = {}
    for syn, _ in pairs:
        counts[syn] = counts.get(syn, 0) + 1
    folded = []
    for syn, bn_mod in pairs:
        if counts[syn] != 1:  # a synapse feeding two BatchNorms cannot absorb both
            continue
        bn = _bn_params(bn_mod)
        a = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        beta = bn.bias if bn.affine else torch.zeros_like(a)
        w = syn.weight
        b = syn.bias if syn.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype)
        syn.weight = nn.Parameter(w * a.view(-1, *([1] * (w.dim() - 1))))
        syn.bias = nn.Parameter(a * (b - bn.running_mean) + beta)
        parent, _, child = names[bn_mod].rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, nn.Identity())
        folded.append(names[bn_mod])
    return model, folded


def _blocks(names: list[str]) -> dict[str, str]:
    """name -> block (module docstring), for names in module order."""
    rx = re.compile(BLOCK_PATTERN)
    found = {n: m.group(1) for n in names if (m := rx.match(n + "."))}
    first = next((i for i, n in enumerate(names) if n in found), len(names))
    return {n: found.get(n, "embed" if i < first else "head") for i, n in enumerate(names)}


class SpikingQuantizer:
    """Folds, calibrates and builds quantized copies of one spiking model (module docstring).

    Args:
        model: the float spiking model (any of :mod:`snn.models`, or any network of :mod:`snn.neurons` layers).
        calib: calibration inputs (one batch: a tensor or a dict of keyword inputs), also the example for memory.
    """

    def __init__(self, model: nn.Module, calib) -> None:
        self.float_model, self.folded_bn = fold_batchnorm(model, calib)
        self.calib = calib
        self._neurons = [n for n, m in self.float_model.named_modules() if is_neuron(m)]
        if not self._neurons:
            raise ValueError(f"{type(model).__name__} has no spiking neuron layers (snn.neurons engines); "
                             "quantize ANNs with the quant package")
        self.specs = {n: neuron_spec_of(self.float_model.get_submodule(n)) for n in self._neurons}
        recorder = self._with_neurons(self.float_model, lambda n, spec, inv: QuantNeuron(spec, inv_tau=inv, record=True))
        with torch.no_grad():
            recorder(**calib) if isinstance(calib, Mapping) else recorder(calib)
        self.ranges = {n: membrane_range(self.specs[n][0], torch.cat(recorder.get_submodule(n).charges)
                                         if recorder.get_submodule(n).charges else torch.zeros(0)) for n in self._neurons}
        one = {k: v[:1] for k, v in calib.items()} if isinstance(calib, Mapping) else calib[:1]
        self.sizes = neuron_sizes(self.float_model, one)
        params = dict(self.float_model.named_parameters())
        weights = [n for n, p in params.items() if p.dim() >= 2]
        order = [n for n, _ in self.float_model.named_modules() if n]
        pos = {n: i for i, n in enumerate(order)}
        owner = {w: w.rpartition(".")[0] for w in weights}
        ordered = sorted([(pos.get(owner[w], -1) if owner[w] else -1, "weight", w) for w in weights]
                         + [(pos[n], "membrane", n) for n in self._neurons])
        block = _blocks([n for _, _, n in ordered])
        self.items = [Item(kind, n, block[n], params[n].numel() if kind == "weight" else self.sizes.get(n, 0))
                      for _, kind, n in ordered]

    @staticmethod
    def _with_neurons(model: nn.Module, make: Callable) -> nn.Module:
        model = copy.deepcopy(model)
        for name, m in list(model.named_modules()):
            if is_neuron(m) and name:
                spec, inv = neuron_spec_of(m)
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent) if parent else model, child, make(name, spec, inv))
        return model

    @property
    def blocks(self) -> list[str]:
        return list(dict.fromkeys(i.block for i in self.items))

    def build(self, precision: SpikingPrecision) -> nn.Module:
        """The quantized copy for ``precision`` (eval mode)."""
        known_w = {i.name for i in self.items if i.kind == "weight"}
        for what, table, known in (("weights", precision.weights, known_w), ("membranes", precision.membranes, set(self._neurons)),
                                   ("thresholds", precision.thresholds, set(self._neurons))):
            unknown = sorted(set(table) - known)
            if unknown:
                raise KeyError(f"SpikingPrecision.{what} names {unknown[:4]}, which this model does not have "
                               f"(known: {sorted(known)[:6]}...)")
        model = self._with_neurons(self.float_model, lambda n, spec, inv: QuantNeuron(
            spec, inv_tau=inv, membrane_bits=precision.membranes.get(n), threshold_bits=precision.thresholds.get(n),
            decay_bits=precision.decay_bits, v_range=self.ranges[n]))
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, bits in precision.weights.items():
                p = params[name]
                spec = QuantSpec(bits=bits, granularity="tensor" if precision.per_tensor else "channel")
                p.copy_(fake_quant(p.reshape(p.shape[0], -1) if p.dim() > 2 else p, spec).view_as(p))
        return model.eval()

    def memory(self, precision: SpikingPrecision | None = None) -> MemoryReport:
        """Weights + state of ``precision`` (None: the folded float model at 32 bits)."""
        precision = precision or SpikingPrecision(decay_bits=None)
        state_model = self._with_neurons(self.float_model, lambda n, spec, inv: QuantNeuron(
            spec, inv_tau=inv, membrane_bits=precision.membranes.get(n), threshold_bits=precision.thresholds.get(n),
            v_range=self.ranges[n]))
        return spiking_memory(state_model, None, weight_bits=precision.weights, per_tensor=precision.per_tensor,
                              sizes=self.sizes)

    def uniform(self, *, weight_bits: int | None, membrane_bits: int | None, threshold_bits: int | None = None,
                decay_bits: int | None = 12, per_tensor: bool = False) -> SpikingPrecision:
        """Every weight at ``weight_bits`` and every membrane at ``membrane_bits`` (None: float)."""
        w = {i.name: weight_bits for i in self.items if i.kind == "weight"} if weight_bits else {}
        m = {i.name: membrane_bits for i in self.items if i.kind == "membrane"} if membrane_bits else {}
        t = {n: threshold_bits for n in m} if threshold_bits else {}
        return SpikingPrecision(weights=w, membranes=m, thresholds=t, decay_bits=decay_bits, per_tensor=per_tensor)
