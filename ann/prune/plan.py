r"""How much to cut, and where: prune any model :mod:`ann.prune.surgery` knows to a parameter ratio.

``prune(model, ratio, run=..., criterion=...)`` cuts in *moves*, each one structure kind of one tower (modality):

- ``blocks``: the one layer of least block influence (``1 - cos(x_in, x_out)``);
- ``heads``: one attention group per layer (a KV head with its query heads), the least important of each layer;
- ``mlp``: ``ceil(step * I_0)`` MLP channels per layer (``I_0`` the tower's original intermediate size), the least
  important of each layer, fewer on the last move so that the ratio is met to within a channel per layer.

Which units a move removes follows ``criterion`` (magnitude, Wanda or Taylor; :mod:`ann.prune.importance`) on the
model as it is at that point. *How much* of each kind in each tower follows measured sensitivity: every feasible
move is tried on a copy, and the one with the smallest increase of the calibration distance per removed parameter
is kept (greedy, hierarchy-aware across modality -> structure kind):

    D(m) = mean over calibration positions of KL(p_0 || p_m),      pick argmin_move (D(after) - D(now)) / dP

with ``p_0`` the original model's output distribution on ``run(model)`` (logits, ``(..., V)``; for a bare
encoder's features, the relative squared error instead: :func:`output_distance`). A move may not
overshoot the target by more than ``overshoot`` of the parameters while another move fits. Every layer of a
tower keeps the same counts (a HF config holds one size per tower); which units go is per layer.

Latency-aware (``speedup=S``): parameters are not time (:mod:`ann.prune.latency`), so with a
speed-up target the search fits :class:`ann.prune.latency.LatencyModel` to ``run`` on this machine and cuts until
*both* targets are met, ranking moves by distance increase per share of the unmet targets they cover:

    pick argmin_move dD / (min(1, dP / P_left) + min(1, dT / T_left)),    T = alpha F + beta N_blocks + gamma

(a met target's term is 0; a move covering more than what is left of a target gets no credit for the excess).
Once only the time target is left, an MLP move that would save more than what is left is cut down to just enough
channels (``T`` is affine in a tower's MLP width), so the search does not overshoot by a whole ``step``.
Without ``speedup`` the rule above applies unchanged. The modelled speed-up reached is reported; a real one must be
measured.

Parameters ``P``: all distinct parameters, embeddings included. ``blocks=K`` drops ``K`` blocks of the largest
tower first, by block influence, and leaves blocks out of the search. Everything is checked before the model is
touched; the model is pruned in place.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ann.finetune.lora import trainable_fraction
from ann.prune.importance import CRITERIA, block_influence, input_norms
from ann.prune.latency import LatencyModel, count_blocks, fit_latency, forward_flops
from ann.prune.surgery import (Tower, check_heads, drop_blocks, head_group_slices, mlp_channel_slices,
                               prune_head_groups, prune_mlp_channels, towers)

__all__ = ["prune", "count_params", "output_distance", "DISTANCES", "STRUCTURES", "Move"]

STRUCTURES = ("blocks", "heads", "mlp")


def count_params(model: nn.Module) -> int:
    """Distinct parameters (tied weights once)."""
    return trainable_fraction(model)[1]


DISTANCES = ("kl", "mse")


def output_distance(reference: torch.Tensor, output: torch.Tensor, kind: str = "kl") -> torch.Tensor:
    """How far ``output`` is from ``reference`` (differentiable in ``output``):

    - ``kl``: ``mean over positions of KL(softmax(reference) || softmax(output))`` in nats, for logits ``(..., V)``;
    - ``mse``: ``||output - reference||^2 / ||reference||^2``, for features (a bare encoder's hidden states).
    """
    if kind == "kl":
        p = F.log_softmax(reference.float().flatten(0, -2), -1)
        q = F.log_softmax(output.float().flatten(0, -2), -1)
        return F.kl_div(q, p, log_target=True, reduction="batchmean")
    if kind == "mse":
        r = reference.float()
        return (output.float() - r).pow(2).sum() / r.pow(2).sum().clamp_min(1e-12)
    raise ValueError(f"distance={kind!r}; choose one of {DISTANCES}")


@dataclass
class Move:
    """One cut: ``structure`` of tower ``tower`` (its index in :func:`towers`), ``keep[i]`` units kept in layer ``i``
    (for ``blocks``: ``drop`` the removed layer indices)."""

    tower: int
    structure: str
    amount: int
    keep: list[list[int]] | None = None
    drop: list[int] | None = None
    params_removed: int = 0
    distance: float = float("nan")
    seconds: float = float("nan")  # modelled seconds of the calibration forward after the move (speedup targets)

    def summary(self, ts: Sequence[Tower]) -> dict:
        return {"tower": ts[self.tower].name, "structure": self.structure, "amount": self.amount,
                "params_removed": self.params_removed, "distance": self.distance,
                **({"modelled_seconds": self.seconds} if not math.isnan(self.seconds) else {}),
                **({"dropped": self.drop} if self.drop else {})}


def _units(t: Tower, structure: str) -> int:
    return {"blocks": len(t.layers), "heads": t.kv_heads, "mlp": t.intermediate}[structure]


def _unit_params(t: Tower, structure: str) -> int:
    """Parameters one MLP channel or one attention group holds in one layer of ``t`` (weights and biases)."""
    layer = t.layers[0]
    slices = mlp_channel_slices(t, layer, torch.tensor([0])) if structure == "mlp" else head_group_slices(t, layer, 0)
    return sum(idx.numel() * (l.weight.shape[1 - axis]) + (idx.numel() if axis == 0 and l.bias is not None else 0)
               for l, axis, idx in slices)


def _scores(model: nn.Module, t: Tower, structure: str, *, run, criterion: str, loss) -> list[torch.Tensor]:
    """Importance of every unit of ``structure`` in every layer of ``t`` (higher = keep)."""
    layers = list(t.layers)
    slices_of = (lambda layer, j: mlp_channel_slices(t, layer, torch.tensor([j]))) if structure == "mlp" else \
        (lambda layer, j: head_group_slices(t, layer, j))
    norms: dict = {}
    if criterion == "wanda":
        lins = {id(l): l for layer in layers for l, _, _ in slices_of(layer, 0)}
        norms = input_norms(model, run, lins.values())
    elif criterion == "taylor":
        model.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss(model).backward()
    crit = CRITERIA[criterion]
    out = [torch.tensor([crit(slices_of(layer, j), input_norms=norms) for j in range(_units(t, structure))])
           for layer in layers]
    model.zero_grad(set_to_none=True)
    return out


def _choose(model: nn.Module, tower: int, structure: str, amount: int, *, run, criterion: str, loss) -> Move:
    """Which units ``amount`` of ``structure`` removes from tower ``tower`` of ``model`` (no change made)."""
    t = towers(model)[tower]
    if structure == "blocks":
        bi = block_influence(t.layers, model, run)
        return Move(tower, structure, amount, drop=sorted(sorted(range(len(bi)), key=bi.__getitem__)[:amount]))
    scores = _scores(model, t, structure, run=run, criterion=criterion, loss=loss)
    n = _units(t, structure)
    return Move(tower, structure, amount, keep=[sorted(torch.topk(s, n - amount).indices.tolist()) for s in scores])


def _apply(model: nn.Module, move: Move) -> None:
    t = towers(model)[move.tower]
    if move.structure == "blocks":
        drop_blocks(t, move.drop)
    elif move.structure == "heads":
        prune_head_groups(t, move.keep)
    else:
        prune_mlp_channels(t, move.keep)


def _max_removable(ts: Sequence[Tower], structures: Sequence[str], fixed: dict[int, int]) -> int:
    """Parameters removable with one block, one attention group and one MLP channel left per tower, after
    ``fixed[i]`` blocks of tower ``i`` are gone (counted too)."""
    total = 0
    for i, t in enumerate(ts):
        block = count_params(t.layers[0])
        n = len(t.layers) - fixed.get(i, 0)
        left = 1 if "blocks" in structures else n
        total += (len(t.layers) - left) * block
        per_layer = 0
        if "mlp" in structures:
            per_layer += _unit_params(t, "mlp") * (t.intermediate - 1)
        if "heads" in structures and t.kind != "bert":
            per_layer += _unit_params(t, "heads") * (t.kv_heads - 1)
        total += per_layer * left
    return total


def prune(model: nn.Module, ratio: float, *, run: Callable[[nn.Module], torch.Tensor], criterion: str = "wanda",
          loss: Callable[[nn.Module], torch.Tensor] | None = None, blocks: int | None = None,
          structures: Sequence[str] = STRUCTURES, step: float = 0.125, overshoot: float = 0.01, distance: str = "kl",
          speedup: float | None = None, latency: LatencyModel | None = None, latency_rounds: int = 3,
          progress: Callable[[str], None] | None = None) -> dict:
    """Prune ``model`` in place to about ``ratio`` fewer parameters (module docstring).

    ``run(model)``: the calibration forward, returning logits ``(..., V)`` (Wanda's activations and the distance
    both come from it; ``distance="mse"`` for features instead, see :func:`output_distance`); ``loss(model)``: a
    scalar calibration loss, needed by ``taylor``; ``structures``: the kinds the search may cut; ``step``: the MLP
    move size; ``overshoot``: how far past the target a block or head move may go; ``speedup``: also cut until the
    modelled time of ``run`` is ``speedup`` times lower (latency-aware search, module docstring), with ``latency``
    as the time model, or else one fitted here with ``latency_rounds`` timings per point; ``progress``: called with
    one line per move. Returns what was removed, move by move, and the final sizes of every tower."""
    ts = towers(model)
    if not (isinstance(ratio, (int, float)) and not isinstance(ratio, bool) and 0.0 <= ratio < 1.0):
        raise ValueError(f"ratio={ratio!r}: the fraction of parameters to remove must be in [0, 1)")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion={criterion!r}; choose one of {sorted(CRITERIA)}")
    if criterion == "taylor" and loss is None:
        raise ValueError("criterion='taylor' needs loss=(model -> scalar calibration loss) for its gradients")
    if distance not in DISTANCES:
        raise ValueError(f"distance={distance!r}; choose one of {DISTANCES}")
    bad = [s for s in structures if s not in STRUCTURES]
    if bad or not structures:
        raise ValueError(f"structures={list(structures)!r}; choose from {list(STRUCTURES)}")
    if speedup is not None and not (isinstance(speedup, (int, float)) and not isinstance(speedup, bool) and speedup >= 1):
        raise ValueError(f"speedup={speedup!r}: the latency target, a factor >= 1 (or None for parameters only)")
    if not 0 < step <= 1:
        raise ValueError(f"step={step!r}: the MLP move size, a fraction of the intermediate size in (0, 1]")
    main = max(range(len(ts)), key=lambda i: count_params(ts[i].layers))
    if blocks is not None:
        n = len(ts[main].layers)
        if not (isinstance(blocks, int) and 0 <= blocks < n):
            raise ValueError(f"blocks={blocks!r}: remove 0 to {n - 1} of the {n} blocks of {ts[main].name} (at least one must stay)")
        structures = [s for s in structures if s != "blocks"]
    structures = [s for s in structures if not (s == "heads" and all(t.kind == "bert" for t in ts))]
    p0 = count_params(model)
    most = _max_removable(ts, structures, {main: blocks or 0})
    if ratio * p0 > most + 1e-9:
        raise ValueError(f"ratio={ratio}: cutting {', '.join(structures) or 'nothing'} can remove at most "
                         f"{most / p0:.3f} of the parameters (one block, head group and channel must stay per tower); "
                         "lower the ratio or allow more structures")

    lat = (latency or fit_latency(model, run, rounds=latency_rounds)) if speedup else None
    flops0, reference = forward_flops(model, run)  # one forward: the reference output and its FLOPs
    reference = reference.detach()
    t0 = lat(flops0, count_blocks(model)) if lat else math.nan
    t_goal = t0 / speedup if lat else math.nan

    def measure(m: nn.Module) -> tuple[float, float]:
        """(distance to the reference, modelled seconds of ``run(m)``; nan without a speedup target)."""
        if lat is None:
            with torch.no_grad():
                return float(output_distance(reference, run(m), distance)), math.nan
        flops, out = forward_flops(m, run)
        return float(output_distance(reference, out, distance)), lat(flops, count_blocks(m))

    kw = dict(run=run, criterion=criterion, loss=loss)

    def attempt(mv: Move) -> Move:
        """``mv`` tried on a copy of the model: which units go, the parameters removed, distance and time after."""
        trial = copy.deepcopy(model)
        chosen = _choose(trial, mv.tower, mv.structure, mv.amount, **kw)
        before = count_params(trial)
        _apply(trial, chosen)
        chosen.params_removed = before - count_params(trial)
        chosen.distance, chosen.seconds = measure(trial)
        return chosen

    moves: list[Move] = []
    now, t_now = 0.0, t0
    if blocks:
        mv = _choose(model, main, "blocks", blocks, **kw)
        before = count_params(model)
        _apply(model, mv)
        mv.params_removed = before - count_params(model)
        mv.distance, mv.seconds = measure(model)
        now, t_now = mv.distance, mv.seconds
        moves.append(mv)
    target = ratio * p0
    mlp0 = [t.intermediate for t in towers(model)]

    def unmet() -> tuple[float, float]:
        """What is still to cut: parameters, and modelled seconds (0 when met or not asked for)."""
        return max(0.0, target - (p0 - count_params(model))), max(0.0, t_now - t_goal) if lat else 0.0

    while any(x > 1e-9 for x in unmet()):
        need, need_t = unmet()
        ts = towers(model)
        cands: list[Move] = []
        for i, t in enumerate(ts):
            for s in structures:
                if s == "heads":
                    try:
                        check_heads(t)
                    except ValueError:
                        continue
                units = _units(t, s)
                if units <= 1:
                    continue
                if s == "mlp":
                    per = _unit_params(t, s) * len(t.layers)
                    amount = min(units - 1, math.ceil(step * mlp0[i]), math.ceil(need / per) if need > 0 else units)
                else:
                    amount = 1
                cands.append(Move(i, s, amount))
        if not cands:
            if need > 1e-9:  # the capacity check above rules this out
                raise RuntimeError(f"prune: nothing left to cut at {1 - count_params(model) / p0:.3f} removed")
            break  # the latency target is out of reach: the result reports the modelled speed-up reached
        tried = []
        for mv in cands:
            chosen = attempt(mv)
            saved = t_now - chosen.seconds
            if need <= 1e-9 and mv.structure == "mlp" and saved > need_t > 0:
                # only time is left and this move saves more than needed: modelled time is affine in a tower's MLP
                # width (FLOPs are linear in it, the block count does not change), so cut just enough channels
                fewer = math.ceil(mv.amount * need_t / saved)
                if fewer < mv.amount:
                    chosen = attempt(Move(mv.tower, "mlp", fewer))
            tried.append(chosen)
        if need <= 1e-9:  # only the time target is left: moves that save no modelled time are no use
            tried = [m for m in tried if m.seconds < t_now]
            if not tried:
                break
        fits = [m for m in tried if m.params_removed <= need + overshoot * p0] if need_t <= 0 else []
        pool = fits or tried

        def covered(m: Move) -> float:
            """Parameters only: the parameters removed. With a speed-up target: the share of each unmet target the
            move covers, summed (at most 1 per target)."""
            if lat is None:
                return m.params_removed
            return (min(1.0, m.params_removed / need) if need > 0 else 0.0) + \
                (min(1.0, max(0.0, t_now - m.seconds) / need_t) if need_t > 0 else 0.0)

        best = min(pool, key=lambda m: (m.distance - now) / max(covered(m), 1e-12))
        _apply(model, best)
        now, t_now = best.distance, best.seconds
        moves.append(best)
        if progress:
            speed = f", modelled speed-up {t0 / t_now:.3f}x" if lat else ""
            progress(f"prune: {ts[best.tower].name} {best.structure} -{best.amount}: "
                     f"{1 - count_params(model) / p0:.3f} removed, {distance} {best.distance:.4f}{speed}")
    final = towers(model)
    return {"ratio_target": ratio, "ratio": 1 - count_params(model) / p0, "criterion": criterion,
            "params_before": p0, "params_after": count_params(model),
            "moves": [m.summary(final) for m in moves], "distance": now,
            **({"speedup_target": speedup, "speedup_modelled": t0 / t_now, "latency_model": lat.summary()} if lat else {}),
            "towers": {t.name: {"kind": t.kind, "layers": len(t.layers), "intermediate_size": t.intermediate,
                                "heads": t.heads, "kv_heads": t.kv_heads} for t in final}}
