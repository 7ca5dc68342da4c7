r"""ANN -> SNN conversion of a spike-friendly vision transformer (:class:`ann.models.sfvit.SpikeFriendlyViT`).

Every tensor that one layer hands to the next becomes a spike train of a neuron layer (a *site*), and every
operator that is not linear in its inputs is made exact in expectation:

- *Sites*: :class:`snn.multilevel.MultiLevelIF` neurons. The MLP's ReLU / QCFS is a binary IF layer
  (``theta = lambda``, QCFS's trained scale or a calibrated percentile); the signals binary spikes cannot carry
  at low ``T`` (the residual-stream contributions ``embed``, ``proj``, ``fc2``, the normalized streams ``ln1``,
  ``ln2``, ``norm``, the projections ``q``, ``k``, ``v`` and the attention output ``ctx``) are signed multi-level
  neurons with ``levels`` spikes per step. A signed site's threshold is ``theta = P_p(|a|) / levels`` (``a`` the
  ANN's activation there on calibration data, ``P_p`` its ``p``-th percentile, per channel or per layer).
- *Linear layers* (q / k / v / proj / fc1 / fc2 / head, and the residual additions) act on every step's spikes.
- *Expectation compensation* (Wang et al., ACM MM 2024; the accumulate-then-difference of SpikeZIP-TF) for
  LayerNorm and for attention ``softmax(q k^T / sqrt(hd)) v`` as one operator of the q, k, v spike trains: with
  ``A_t = (1/t) sum_{s<=t} x[s]`` the running mean of each input spike train,

      y[t] = t F(A_t) - (t - 1) F(A_{t-1}),      so that      (1/t) sum_{s<=t} y[s] = F(A_t)

  i.e. the running mean of the output is exactly ``F`` of the running means of the inputs, at every ``t``. These
  operators are dense (their multiply-accumulates are counted as such in :func:`transformer_accounting`, not as
  synaptic operations). The attention probabilities stay inside the attention operator: as a spiking site of
  their own (an unsigned neuron between softmax and the product with v) they cost accuracy at low T on
  SynthMed-VQA (measured at 4 levels, 300 test questions: 0.457 vs 0.467 at T = 8, 0.237 vs 0.287 at T = 4),
  most probabilities being ~1/N, far below any threshold that also passes the large ones.

Run for 1 step with every site an identity (ReLU sites: the ANN's activation), the network *is* the ANN, which is
how thresholds are calibrated (:meth:`SpikingViT.record_sites`) and what the tests check. As ``T`` grows each
site's running mean converges to its ANN value clipped to ``[k_min theta, levels theta]``.

Symbols: ``x[t]`` input spike value at step ``t``; ``A_t`` running mean; ``F`` the operator; ``y[t]`` output;
``theta`` threshold; ``levels`` most spikes per step; ``T`` timesteps; ``hd`` head width.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ann.models.sfvit import SpikeFriendlyViT
from conversion.threshold import ConversionConfig, NormMethod, UnsupportedLayerError, activation_scale
from quant.qcfs import QCFS
from snn.multilevel import MultiLevelIF, MultiLevelSpec
from snn.runtime import running_mean

__all__ = ["TransformerConversionConfig", "SpikingViT", "check_transformer_convertible", "convert_transformer", "ecm",
           "transformer_accounting", "ann_macs"]


@dataclass(frozen=True)
class TransformerConversionConfig:
    """Attributes:
    levels: spikes per step of each sign at the multi-level sites (1: binary signed spikes everywhere). 8 by
        measurement: SynthMed-VQA ViT at T = 8, 300 test questions: ANN 0.520, 8 levels 0.503, 4 levels 0.467.
    percentile: threshold percentile of ``|a|`` at the multi-level sites, in (0, 100].
    per_channel: one threshold per feature channel at the multi-level sites.
    relu: how a plain ReLU's ``lambda`` is calibrated (QCFS layers bring theirs); soft reset and half-threshold
        initialisation also apply to every site.
    """

    levels: int = 8
    percentile: float = 99.99
    per_channel: bool = True
    relu: ConversionConfig = field(default_factory=ConversionConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.levels, int) or self.levels < 1:
            raise ValueError(f"TransformerConversionConfig.levels={self.levels!r} must be an int >= 1")
        if not 0.0 < self.percentile <= 100.0:
            raise ValueError(f"TransformerConversionConfig.percentile={self.percentile} must be in (0, 100], e.g. 99.99")

    def spec(self, *, levels: int, signed: bool) -> MultiLevelSpec:
        return MultiLevelSpec(levels=levels, signed=signed, soft_reset=self.relu.soft_reset,
                              half_init=self.relu.half_threshold_init)


def ecm(f: Callable[..., torch.Tensor], *seqs: torch.Tensor) -> torch.Tensor:
    """Expectation compensation of ``f`` over spike trains ``seqs`` (each (T, ...)): ``y[t] = t F(A_t) - (t-1) F(A_{t-1})``.
    ``f`` must accept the leading T dimension as a batch dimension."""
    T = seqs[0].shape[0]
    t = torch.arange(1, T + 1, dtype=seqs[0].dtype)
    tf = f(*(running_mean(s) for s in seqs))  # F(A_t), the running means A_t: (T, ...)
    tf = tf * t.view(-1, *([1] * (tf.dim() - 1)))  # t F(A_t)
    return torch.cat([tf[:1], tf[1:] - tf[:-1]])


def check_transformer_convertible(ann: nn.Module) -> list[tuple[str, str]]:
    """``[(layer name, reason), ...]`` for everything :func:`convert_transformer` cannot handle in ``ann``."""
    if not isinstance(ann, SpikeFriendlyViT):
        return [("<model>", f"{type(ann).__name__} is not an ann.models.SpikeFriendlyViT (the transformer this converter "
                            "knows; MLP/CNN: conversion.convert_sequential)")]
    problems = []
    for i, blk in enumerate(ann.blocks):
        if not isinstance(blk.act, (nn.ReLU, QCFS)):
            problems.append((f"blocks.{i}.act", f"{type(blk.act).__name__} is not a ReLU: only ReLU and QCFS map onto IF "
                                                "neurons (retrain with ReLU)"))
    return problems


class SpikingViT(nn.Module):
    """The converted :class:`SpikeFriendlyViT`: ``x (B, packed) -> (B, num_classes)``, the output averaged over
    ``timesteps`` steps of direct encoding (the analog token embeddings presented at every step)."""

    def __init__(self, *, ann: SpikeFriendlyViT, neurons: dict[str, MultiLevelIF] | None, timesteps: int) -> None:
        super().__init__()
        if not isinstance(timesteps, int) or timesteps < 1:
            raise ValueError(f"SpikingViT: timesteps={timesteps!r} must be an int >= 1")
        self.ann = ann
        self.neurons = nn.ModuleDict(neurons or {})
        self.timesteps = timesteps
        self._record: dict[str, torch.Tensor] | None = None

    def sites(self) -> list[str]:
        names = ["embed"]
        for i in range(len(self.ann.blocks)):
            names += [f"blocks.{i}.{s}" for s in ("ln1", "q", "k", "v", "ctx", "proj", "ln2", "fc1", "fc2")]
        return names + ["norm"]

    def _site(self, name: str, x_seq: torch.Tensor, ann_act: nn.Module | None = None) -> torch.Tensor:
        if self._record is not None:  # ANN mode (T = 1): record the site's activation
            y = ann_act(x_seq) if ann_act is not None else x_seq
            self._record[name] = y[0]
            return y
        return self.neurons[name.replace(".", "_")](x_seq)

    def run(self, x: torch.Tensor, timesteps: int | None = None) -> torch.Tensor:
        """Logits at every step, ``(T, B, num_classes)``."""
        T = timesteps or self.timesteps
        a = self.ann
        e = a.embed(x)  # (B, N, D)
        h = self._site("embed", e.unsqueeze(0).expand(T, *e.shape))  # (T, B, N, D)
        for i, blk in enumerate(a.blocks):
            p = f"blocks.{i}."
            u = self._site(p + "ln1", ecm(blk.ln1, h))
            q, k, v = (self._site(p + n, lin(u)) for n, lin in (("q", blk.q), ("k", blk.k), ("v", blk.v)))
            c = self._site(p + "ctx", ecm(blk.attention, q, k, v))  # (T, B, N, D)
            h = h + self._site(p + "proj", blk.proj(c))
            u = self._site(p + "ln2", ecm(blk.ln2, h))
            r = self._site(p + "fc1", blk.fc1(u), ann_act=blk.act)
            h = h + self._site(p + "fc2", blk.fc2(r))
        z = self._site("norm", ecm(a.norm, h))
        return a.head(z[:, :, 0])  # (T, B, N, D) -> (T, B, D) -> (T, B, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x).mean(0)

    def prefix_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Read-out after every ``t = 1..T``, ``(T, B, C)`` (every layer is causal in time)."""
        return running_mean(self.run(x))

    @torch.no_grad()
    def record_sites(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Run as the ANN (T = 1, sites are identities, ReLU sites the ANN's activation): ``(logits, {site: activation})``."""
        self._record = {}
        try:
            out = self.run(x, timesteps=1)[0]
            return out, self._record
        finally:
            self._record = None


@torch.no_grad()
def convert_transformer(ann: SpikeFriendlyViT, x_calib: torch.Tensor, *, timesteps: int,
                        config: TransformerConversionConfig = TransformerConversionConfig()) -> SpikingViT:
    """Convert ``ann`` (not modified); thresholds from the ANN's activations on ``x_calib`` (packed inputs).
    Every layer it cannot handle is listed in one :class:`UnsupportedLayerError` before any work."""
    problems = check_transformer_convertible(ann)
    if problems:
        raise UnsupportedLayerError(f"cannot convert {type(ann).__name__}: " + "; ".join(f"{n}: {r}" for n, r in problems))
    snn = SpikingViT(ann=copy.deepcopy(ann).eval(), neurons=None, timesteps=timesteps)
    _, acts = snn.record_sites(x_calib)
    neurons: dict[str, MultiLevelIF] = {}
    for name, a in acts.items():
        kind = name.rsplit(".", 1)[-1]
        if kind == "fc1":
            act = snn.ann.get_submodule(name.replace("fc1", "act"))
            if isinstance(act, QCFS):
                theta = torch.tensor(act.threshold)
            else:
                rc = config.relu
                theta = activation_scale(a, percentile=None if rc.norm is NormMethod.MAX else rc.percentile,
                                         channel_dim=-1 if rc.per_channel else None)
            neurons[name] = MultiLevelIF(theta=theta, spec=config.spec(levels=1, signed=False), channel_dim=-1)
        else:  # signed multi-level: theta = P_p(|a|) / levels
            q = None if config.percentile >= 100 else config.percentile  # 100: the maximum
            theta = activation_scale(a.abs(), percentile=q, channel_dim=-1 if config.per_channel else None)
            neurons[name] = MultiLevelIF(theta=theta / config.levels, spec=config.spec(levels=config.levels, signed=True),
                                         channel_dim=-1)
    snn.neurons = nn.ModuleDict({n.replace(".", "_"): m for n, m in neurons.items()})
    return snn


@torch.no_grad()
def transformer_accounting(snn: SpikingViT, x: torch.Tensor) -> dict:
    """Per-site firing and synaptic operations of ``snn`` on ``x`` over its ``timesteps``, per inference.

    A site's *events* are its nonzero outputs (a graded spike is one event carrying ``|k|``); synaptic operations
    (SOPs) are events times the fan-out of the linear layer they feed (q/k/v: 3 D per ``ln1`` event; ``proj``:
    D per ``ctx`` event; ``fc1``: the MLP width per ``ln2`` event; ``fc2``: D per ``fc1`` event; the head: classes
    per class-token ``norm`` event; the ``embed``, ``q``, ``k``, ``v``, ``proj`` and ``fc2`` events feed the
    dense operators or the residual sum, not a synaptic layer). The expectation-compensated operators (LayerNorm,
    attention scores and context) run densely every step; their multiply-accumulates are ``ecm_macs``.
    """
    a, c = snn.ann, snn.ann.config
    D, N, hidden = c.dim, c.num_tokens, c.dim * c.mlp_ratio
    fanout = {"ln1": 3 * D, "ctx": D, "ln2": hidden, "fc1": D}
    stats: dict[str, dict] = {}
    hooks = []
    for key, m in snn.neurons.items():
        def hook(_m, _i, out, key=key):
            s = stats.setdefault(key, {"events": 0.0, "magnitude": 0.0, "updates": 0.0, "neurons": out[0, 0].numel()})
            k = out.detach() / _m.theta.view(*([1] * (out.dim() - 1)), -1) if _m.theta.dim() else out.detach() / _m.theta
            s["events"] += float((out != 0).sum())
            s["magnitude"] += float(k.abs().sum())
            s["updates"] += float(out.numel())
            if key == "norm":  # only the class token feeds the head
                s["head_events"] = s.get("head_events", 0.0) + float((out[:, :, 0] != 0).sum())
        hooks.append(m.register_forward_hook(hook))
    try:
        snn.run(x)
    finally:
        for h in hooks:
            h.remove()
    B, T = x.shape[0], snn.timesteps
    layers = []
    for key, s in stats.items():
        kind = key.rsplit("_", 1)[-1]
        events = s["events"] / B
        fo = c.num_classes if kind == "norm" else fanout.get(kind, 0)
        sops = (s.get("head_events", 0.0) / B if kind == "norm" else events) * fo
        layers.append({"layer": key.replace("_", "."), "neurons": s["neurons"], "firing_rate": s["events"] / s["updates"],
                       "mean_spike_level": s["magnitude"] / max(s["events"], 1.0), "events": events, "sops": sops})
    # per step: LayerNorm ~1 MAC per element (ln1, ln2 per block, the final norm), q k^T and a v N^2 D each per block
    ecm_macs = T * (len(a.blocks) * (2 * N * D + 2 * N * N * D) + N * D)
    return {"timesteps": T, "layers": layers, "sops": sum(r["sops"] for r in layers),
            "events": sum(r["events"] for r in layers),
            "firing_rate": sum(r["events"] for r in layers) / sum(r["neurons"] * T for r in layers),
            "ecm_macs": ecm_macs,
            "ann_macs": ann_macs(a)}


def ann_macs(a: SpikeFriendlyViT) -> int:
    """Multiply-accumulates of one ANN inference (linear layers and attention products)."""
    c = a.config
    D, N, hidden = c.dim, c.num_tokens, c.dim * c.mlp_ratio
    block = N * (4 * D * D + 2 * D * hidden) + 2 * N * N * D
    return c.depth * block + c.num_patches * c.channels * c.patch_size ** 2 * D + D * c.num_classes
