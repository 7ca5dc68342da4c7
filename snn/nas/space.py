r"""The cell-based search space of spiking classifiers: a typed genotype, the space of choices, and the network.

Dimension letters: T timesteps, B batch, C channels, H x W image, p patch size, N = (H/p)(W/p) tokens, D width,
K classes, L the number of (non-skip) cells.

A :class:`Genotype` describes one spiking vision transformer-like network (the macro skeleton of
:class:`snn.models.Spikformer`, the cells searched, in the spirit of SNASNet (Kim et al., ECCV 2022) and SpikeNAS
(Putra & Shafique, 2024)):

    x (B, C, H, W) -> direct encoding over ``timesteps`` T -> (T, B, C, H, W)
    stem  (``conv_stem``):   Conv3x3(C -> D) + BN -> LIF, then Conv(p x p, stride p) + BN   -> tokens (T, B, N, D)
          (no conv stem):    Conv(p x p, stride p)(C -> D) + BN straight on the pixels
          + a learned position embedding
    L cells, each one op of :mod:`snn.nas.cells` (attn / mlp / conv; skip cells are the identity and are dropped
    from the genotype) with its own MLP ratio; attn cells share ``heads``
    head: mean over tokens of LIF(u) -> Linear -> (T, B, K), averaged over T -> logits (B, K)

with neurons of kind ``neuron`` (LIF or PLIF, tau and threshold fixed by the space). With the module names of
:class:`snn.models.Spikformer`, the hand-designed spiking ViT is a point of the space
(:func:`spikformer_genotype`): its state dict loads into :func:`build` of that point unchanged and gives the same
logits, so a comparison between the two is a comparison inside one space.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import torch
from torch import nn

from snn.nas.cells import CellContext, CellOp, build_cell
from snn.neurons import Engine, NeuronKind, NeuronSpec, build_neuron, check_time_layout

__all__ = ["Cell", "Genotype", "SearchSpace", "SpikingCellNet", "build", "spikformer_genotype"]


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, kw_only=True)
class Cell:
    """One cell: its op (not skip: a skip cell is the identity and is left out of a genotype) and MLP ratio r."""

    op: CellOp
    mlp_ratio: int

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "op", CellOp(self.op))
        except ValueError:
            raise ValueError(f"Cell.op={self.op!r} is invalid: use one of {[o.value for o in CellOp]}") from None
        if self.op is CellOp.SKIP:
            raise ValueError("Cell.op='skip' is invalid in a genotype: a skip cell is the identity; leave it out")
        if not _is_int(self.mlp_ratio) or self.mlp_ratio < 1:
            raise ValueError(f"Cell.mlp_ratio={self.mlp_ratio!r} is invalid: use an int >= 1")


@dataclass(frozen=True, kw_only=True)
class Genotype:
    """One point of the search space (module docstring); JSON round-trip with :meth:`to_dict` / :meth:`from_dict`.

    Attributes:
        timesteps: T (>= 1).
        conv_stem: a full-resolution Conv3x3 + LIF stem before the patch embedding.
        patch_size: p (>= 1; must divide the image size, checked by :func:`build`).
        dim: D (>= 1).
        heads: attention heads of the attn cells (must divide ``dim``); None when there is no attn cell.
        neuron: LIF or PLIF.
        cells: the non-skip cells, in order (may be empty).
    """

    timesteps: int
    conv_stem: bool
    patch_size: int
    dim: int
    heads: int | None
    neuron: NeuronKind
    cells: tuple[Cell, ...]

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"Genotype.{name}={getattr(self, name)!r} is invalid: {fix}")

        for name in ("timesteps", "patch_size", "dim"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "use an int >= 1")
        need(isinstance(self.conv_stem, bool), "conv_stem", "use True or False")
        try:
            object.__setattr__(self, "neuron", NeuronKind(self.neuron))
        except ValueError:
            raise ValueError(f"Genotype.neuron={self.neuron!r} is invalid: use one of {[k.value for k in NeuronKind]}") from None
        object.__setattr__(self, "cells", tuple(c if isinstance(c, Cell) else Cell(**c) for c in self.cells))
        has_attn = any(c.op is CellOp.ATTN for c in self.cells)
        if has_attn:
            need(_is_int(self.heads) and self.heads >= 1 and self.dim % self.heads == 0, "heads",
                 f"attn cells need an int >= 1 that divides dim={self.dim}")
        else:
            need(self.heads is None, "heads", "use None: there is no attn cell for heads to apply to")

    @property
    def depth(self) -> int:
        return len(self.cells)

    def to_dict(self) -> dict:
        return {"timesteps": self.timesteps, "conv_stem": self.conv_stem, "patch_size": self.patch_size,
                "dim": self.dim, "heads": self.heads, "neuron": self.neuron.value,
                "cells": [{"op": c.op.value, "mlp_ratio": c.mlp_ratio} for c in self.cells]}

    @classmethod
    def from_dict(cls, d: dict) -> "Genotype":
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise ValueError(f"Genotype.from_dict: expected the keys {sorted(names)}, got {sorted(d)}")
        return cls(**{**d, "cells": tuple(Cell(**c) for c in d["cells"])})

    def key(self) -> str:
        """A canonical string of the genotype (equal strings <=> the same network)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def describe(self) -> str:
        cells = " ".join(f"{c.op.value}x{c.mlp_ratio}" for c in self.cells) or "(no cells)"
        heads = f" h{self.heads}" if self.heads else ""
        return (f"T{self.timesteps} {'stem ' if self.conv_stem else ''}p{self.patch_size} D{self.dim}{heads} "
                f"{self.neuron.value}: {cells}")


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """The choices of the search (tuples of allowed values) and what every network of the space shares.

    Attributes:
        image_size, channels, num_classes: the task's square images (H = W) and classes.
        timesteps, conv_stem, patch_size, dim, heads, neuron: the allowed values of the genotype fields
            (every patch size must divide ``image_size``; every heads value must divide every dim).
        max_cells: cell slots; each slot picks one of ``ops`` (``"skip"`` leaves it empty, so with skip the
            depth ranges over 0..max_cells, without it every network has exactly max_cells cells).
        mlp_ratio: the allowed MLP ratios (per cell).
        tau, attn_threshold: LIF time constant (timesteps; PLIF's initial tau) and the attention neurons'
            threshold, as in :class:`snn.models.SpikformerConfig`.
        engine: neuron engine of the built networks (``fused`` trains fastest on CPU).
    """

    image_size: int = 8
    channels: int = 1
    num_classes: int = 10
    timesteps: tuple[int, ...] = (2, 4)
    conv_stem: tuple[bool, ...] = (False, True)
    patch_size: tuple[int, ...] = (2, 4)
    dim: tuple[int, ...] = (16, 32, 48, 64, 96)
    heads: tuple[int, ...] = (1, 2, 4)
    neuron: tuple[NeuronKind, ...] = (NeuronKind.LIF, NeuronKind.PLIF)
    max_cells: int = 4
    ops: tuple[CellOp, ...] = (CellOp.ATTN, CellOp.MLP, CellOp.CONV, CellOp.SKIP)
    mlp_ratio: tuple[int, ...] = (1, 2, 4)
    tau: float = 2.0
    attn_threshold: float = 0.5
    engine: Engine = Engine.FUSED

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, fix: str) -> None:
            if not ok:
                raise ValueError(f"SearchSpace.{name}={getattr(self, name)!r} is invalid: {fix}")

        for name in ("image_size", "channels", "num_classes", "max_cells"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "use an int >= 1")
        for name in ("timesteps", "patch_size", "dim", "heads", "mlp_ratio"):
            v = getattr(self, name)
            need(isinstance(v, Sequence) and len(v) > 0 and all(_is_int(x) and x >= 1 for x in v)
                 and len(set(v)) == len(v), name, "use a non-empty tuple of distinct ints >= 1")
            object.__setattr__(self, name, tuple(v))
        need(isinstance(self.conv_stem, Sequence) and len(self.conv_stem) > 0 and all(isinstance(x, bool) for x in self.conv_stem)
             and len(set(self.conv_stem)) == len(self.conv_stem), "conv_stem", "use (False,), (True,) or (False, True)")
        object.__setattr__(self, "conv_stem", tuple(self.conv_stem))
        for name, enum_type in (("neuron", NeuronKind), ("ops", CellOp)):
            try:
                object.__setattr__(self, name, tuple(enum_type(x) for x in getattr(self, name)))
            except (ValueError, TypeError):
                raise ValueError(f"SearchSpace.{name}={getattr(self, name)!r} is invalid: use values of "
                                 f"{[k.value for k in enum_type]}") from None
            need(len(getattr(self, name)) > 0 and len(set(getattr(self, name))) == len(getattr(self, name)), name,
                 "use a non-empty tuple of distinct values")
        need(any(o is not CellOp.SKIP for o in self.ops), "ops", "add at least one op other than 'skip'")
        need(all(self.image_size % p == 0 for p in self.patch_size), "patch_size",
             f"every patch size must divide image_size={self.image_size}")
        need(all(d % h == 0 for d in self.dim for h in self.heads), "heads", f"every value must divide every dim {self.dim}")
        need(isinstance(self.tau, (int, float)) and self.tau > 1, "tau", "use a number > 1 (timesteps)")
        need(isinstance(self.attn_threshold, (int, float)) and self.attn_threshold > 0, "attn_threshold", "use a number > 0")
        try:
            object.__setattr__(self, "engine", Engine(self.engine))
        except ValueError:
            raise ValueError(f"SearchSpace.engine={self.engine!r} is invalid: use one of {[e.value for e in Engine]}") from None

    # ------------------------------------------------------------------------------------------- the networks
    def neuron_spec(self, kind: NeuronKind | str) -> NeuronSpec:
        """The neurons of every network of the space (those of :class:`snn.models.SpikformerConfig`'s default)."""
        return NeuronSpec(kind=kind, tau=self.tau, v_reset=0.0, detach_reset=True)

    def contains(self, g: Genotype) -> bool:
        """True when every field of ``g`` is one of the allowed values (and its depth fits the cell slots)."""
        return not self.violations(g)

    def violations(self, g: Genotype) -> list[str]:
        """Why ``g`` is not a point of the space (empty when it is)."""
        out = [f"{name}={getattr(g, name)!r} not in {getattr(self, name)!r}"
               for name in ("timesteps", "conv_stem", "patch_size", "dim", "neuron") if getattr(g, name) not in getattr(self, name)]
        if g.heads is not None and g.heads not in self.heads:
            out.append(f"heads={g.heads!r} not in {self.heads!r}")
        n_min = 0 if CellOp.SKIP in self.ops else self.max_cells
        if not n_min <= g.depth <= self.max_cells:
            out.append(f"{g.depth} cells, the space has {n_min}..{self.max_cells}")
        out += [f"cell {i}: op {c.op.value!r} not in {[o.value for o in self.ops]}" for i, c in enumerate(g.cells) if c.op not in self.ops]
        out += [f"cell {i}: mlp_ratio={c.mlp_ratio} not in {self.mlp_ratio!r}" for i, c in enumerate(g.cells) if c.mlp_ratio not in self.mlp_ratio]
        return out

    # ------------------------------------------------------------------------------------------- sampling
    def _from_choice(self, choose: Callable[[str, tuple], object]) -> Genotype:
        """A genotype from ``choose(name, choices)`` called once per decision, in a fixed order (optuna or random)."""
        g = {name: choose(name, getattr(self, name)) for name in ("timesteps", "conv_stem", "patch_size", "dim")}
        g["neuron"] = choose("neuron", tuple(k.value for k in self.neuron))
        cells = []
        for i in range(self.max_cells):
            op = CellOp(choose(f"cell{i}_op", tuple(o.value for o in self.ops)))
            if op is not CellOp.SKIP:
                cells.append(Cell(op=op, mlp_ratio=choose(f"cell{i}_mlp_ratio", self.mlp_ratio)))
        g["heads"] = choose("heads", self.heads) if any(c.op is CellOp.ATTN for c in cells) else None
        return Genotype(**g, cells=tuple(cells))

    def suggest(self, trial) -> Genotype:
        """The genotype an optuna trial proposes (categorical parameters ``timesteps``, ..., ``cell<i>_op``,
        ``cell<i>_mlp_ratio`` (non-skip cells only), ``heads`` (only with an attn cell))."""
        return self._from_choice(lambda name, choices: trial.suggest_categorical(name, list(choices)))

    def params_of(self, g: Genotype) -> dict:
        """The optuna parameters under which :meth:`suggest` proposes ``g`` (its cells first, then skip slots), e.g.
        to enqueue a known design (``study.enqueue_trial``) so that the search evaluates it like any candidate."""
        bad = self.violations(g)
        if bad:
            raise ValueError(f"SearchSpace.params_of: the genotype is not a point of the space: {'; '.join(bad)}")
        out = {"timesteps": g.timesteps, "conv_stem": g.conv_stem, "patch_size": g.patch_size, "dim": g.dim,
               "neuron": g.neuron.value}
        for i in range(self.max_cells):
            if i < g.depth:
                out[f"cell{i}_op"], out[f"cell{i}_mlp_ratio"] = g.cells[i].op.value, g.cells[i].mlp_ratio
            else:
                out[f"cell{i}_op"] = CellOp.SKIP.value
        if g.heads is not None:
            out["heads"] = g.heads
        return out

    def sample(self, rng: random.Random) -> Genotype:
        """A genotype drawn uniformly per decision (the same decisions as :meth:`suggest`)."""
        return self._from_choice(lambda name, choices: rng.choice(choices))

    def smallest(self, memory_fn: Callable[[Genotype], float]) -> tuple[Genotype, float]:
        """The point of least memory and its memory (bytes), by ``memory_fn(genotype)``.

        Memory (weights + membrane state, :func:`snn.quant.memory.spiking_memory`) does not depend on T or on
        heads (the q, k, v projections are D x 3D for every head count), grows with D, with every MLP ratio and
        with every cell (cells add their own weights and state; a cell's cost does not depend on its
        neighbours), and PLIF only adds one parameter per neuron layer to LIF. So the least-memory point has
        the smallest D, LIF neurons, the fewest cells (0 with skip), the smallest ratio and one cheapest op in
        every slot; the remaining choices (conv stem, patch size, op), whose cost is not monotone, are
        enumerated (at most 2 |patch_size| (|ops| + 1) memory evaluations).
        """
        n_cells = 0 if CellOp.SKIP in self.ops else self.max_cells
        ops = [o for o in self.ops if o is not CellOp.SKIP] if n_cells else [None]
        best: tuple[Genotype, float] | None = None
        for stem, p, op in itertools.product(self.conv_stem, self.patch_size, ops):
            cells = tuple(Cell(op=op, mlp_ratio=min(self.mlp_ratio)) for _ in range(n_cells))
            g = Genotype(timesteps=min(self.timesteps), conv_stem=stem, patch_size=p, dim=min(self.dim),
                         heads=min(self.heads) if op is CellOp.ATTN else None,
                         neuron=NeuronKind.LIF if NeuronKind.LIF in self.neuron else self.neuron[0], cells=cells)
            m = float(memory_fn(g))
            if best is None or m < best[1]:
                best = (g, m)
        assert best is not None
        return best

    def to_dict(self) -> dict:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = [x.value if hasattr(x, "value") else x for x in v] if isinstance(v, tuple) else (
                v.value if hasattr(v, "value") else v)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "SearchSpace":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"SearchSpace.from_dict: unknown keys {unknown}; known: {sorted(names)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class SpikingCellNet(nn.Module):
    """The network of a genotype (module docstring); ``forward``: images (B, C, H, W) -> logits (B, K).

    Module names follow :class:`snn.models.Spikformer` (``stem``, ``patch``, ``pos``, ``blocks.<i>``, ``head``),
    so the hand-designed ViT's weights load into the equivalent point of the space."""

    def __init__(self, genotype: Genotype, space: SearchSpace) -> None:
        super().__init__()
        g, sp = genotype, space
        if sp.image_size % g.patch_size:
            raise ValueError(f"Genotype.patch_size={g.patch_size} must divide SearchSpace.image_size={sp.image_size}")
        self.genotype, self.space = g, sp
        D, neuron = g.dim, sp.neuron_spec(g.neuron)
        grid = (sp.image_size // g.patch_size,) * 2
        self.tokens = grid[0] * grid[1]
        if g.conv_stem:
            self.stem = nn.Conv2d(sp.channels, D, 3, padding=1, bias=False)
            self.stem_bn = nn.BatchNorm2d(D)
            self.stem_lif = build_neuron(neuron, engine=sp.engine)
        self.patch = nn.Conv2d(D if g.conv_stem else sp.channels, D, g.patch_size, stride=g.patch_size, bias=False)
        self.patch_bn = nn.BatchNorm2d(D)
        self.pos = nn.Parameter(torch.zeros(1, 1, self.tokens, D))
        ctx = CellContext(dim=D, grid=grid, heads=g.heads, neuron=neuron, attn_threshold=sp.attn_threshold, engine=sp.engine)
        self.blocks = nn.ModuleList(build_cell(c.op, ctx, c.mlp_ratio) for c in g.cells)
        self.head_lif = build_neuron(neuron, engine=sp.engine)
        self.head = nn.Linear(D, sp.num_classes)

    @property
    def timesteps(self) -> int:
        return self.genotype.timesteps

    def forward_sequence(self, x_seq: torch.Tensor) -> torch.Tensor:
        """(T, B, C, H, W) input currents -> (T, B, K) logits per timestep."""
        g, sp = self.genotype, self.space
        check_time_layout(x_seq, "SpikingCellNet")
        if x_seq.dim() != 5 or tuple(x_seq.shape[2:]) != (sp.channels, sp.image_size, sp.image_size):
            raise ValueError(f"SpikingCellNet: expected (T, B, {sp.channels}, {sp.image_size}, {sp.image_size}), "
                             f"got {tuple(x_seq.shape)}")
        if sp.engine is Engine.SPIKINGJELLY:
            from spikingjelly.activation_based import functional

            functional.reset_net(self)  # SpikingJelly neurons keep state between calls; every call starts at rest
        T, B = x_seq.shape[:2]
        z = x_seq.flatten(0, 1)  # (T B, C, H, W)
        if g.conv_stem:
            z = self.stem_bn(self.stem(z))  # (T B, D, H, W)
            z = self.stem_lif(z.view(T, B, *z.shape[1:])).flatten(0, 1)
        z = self.patch_bn(self.patch(z))  # (T B, D, H/p, W/p)
        u = z.flatten(2).transpose(1, 2).reshape(T, B, self.tokens, g.dim) + self.pos  # (T, B, N, D)
        for block in self.blocks:
            u = block(u)
        return self.head(self.head_lif(u).mean(dim=2))  # (T, B, N, D) -> (T, B, D) -> (T, B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) (or flat (B, C*H*W)) -> logits (B, K), averaged over T."""
        sp = self.space
        if x.dim() == 2 and x.shape[1] == sp.channels * sp.image_size ** 2:
            x = x.view(-1, sp.channels, sp.image_size, sp.image_size)
        if x.dim() != 4:
            raise ValueError(f"SpikingCellNet: expected images (B, {sp.channels}, {sp.image_size}, {sp.image_size}) "
                             f"or flat (B, {sp.channels * sp.image_size ** 2}), got {tuple(x.shape)}")
        x_seq = x.unsqueeze(0).expand(self.timesteps, *x.shape)  # direct encoding: (B, ...) -> (T, B, ...)
        return self.forward_sequence(x_seq).mean(dim=0)


def build(genotype: Genotype, space: SearchSpace) -> SpikingCellNet:
    """The network of ``genotype`` for the images, classes, neurons and engine of ``space``."""
    return SpikingCellNet(genotype, space)


def spikformer_genotype(config) -> Genotype:
    """The point of the space equivalent to a :class:`snn.models.SpikformerConfig` (the hand-designed ViT):
    ``depth`` attn cells of ratio ``mlp_ratio``. The space that builds it must have the same image size, channels,
    classes, tau and attention threshold; the config's neurons must be those of :meth:`SearchSpace.neuron_spec`."""
    spec = config.neuron
    expected = NeuronSpec(kind=spec.kind, tau=spec.tau, v_reset=0.0, detach_reset=True)
    if spec != expected:
        raise ValueError(f"spikformer_genotype: the search space's neurons are {expected}; the config has {spec}")
    if not config.num_classes:
        raise ValueError("spikformer_genotype: the config has no head (num_classes=0); the space builds classifiers")
    return Genotype(timesteps=config.timesteps, conv_stem=config.conv_stem, patch_size=config.patch_size, dim=config.dim,
                    heads=config.heads if config.depth else None, neuron=spec.kind,
                    cells=tuple(Cell(op=CellOp.ATTN, mlp_ratio=config.mlp_ratio) for _ in range(config.depth)))
