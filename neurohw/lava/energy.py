r"""Energy and time of one inference of a :class:`~neurohw.lava.network.LoihiNetwork` placed on Loihi cores
(:func:`~neurohw.lava.mapping.map_network`), from measured activity and Loihi's published per-operation figures.

Per-operation figures: :data:`neurohw.constants.LOIHI_ENERGY_PJ` / :data:`~neurohw.constants.LOIHI_TIME_NS`
(Davies et al., IEEE Micro 2018, Table 2: pre-silicon simulation of Loihi 1 at 0.75 V). No such figures are
published for Loihi 2, so both chips use Loihi 1's; for Loihi 2 (Intel 4) this over-estimates.

Activity (per inference, averaged over samples; ``T`` timesteps):
    events_in[l]   ``in_shape`` of layer l: input events per input neuron, summed over timesteps. Layer 0: the
                   graded input events (non-zero inputs); a graded event is charged as one synaptic op per synapse,
                   like a binary spike (Loihi 2's brief: 8-bit payloads cost a "negligible extra energy").
    spikes_out[l]  ``out_shape`` of layer l: spikes per neuron, summed over timesteps.

Counts (layer l, input i, core c of layer l holding neurons ``[a_c, b_c)``; ``k_c[i]`` = the (neuron of c, weight)
pairs that read input i, :func:`~neurohw.lava.mapping.fanout_counts`; zero weights count, because Loihi's dense
synapse format stores them and walks them on every event):

    synops_c     = sum_i events_in[l][i] * k_c[i]                    synops_l = sum_c synops_c
                 = sum_i events_in[l][i] * fanout_l[i]               (fanout_l = sum_c k_c, exact from the geometry)
    updates_c    = (b_c - a_c) * T                                   every neuron is updated every step
    msgs_{s->c}  = sum_{i on core s} src_l[i] * [k_c[i] > 0]         one spike message per destination core
                   src_0 = events_in[0] (from the host, 0 hops), src_l = spikes_out[l-1]; the last layer's spikes
                   (unless it is a read-out) go to the host: one message each, 0 hops
    hops(s, c)   = |x_s - x_c| east-west + |y_s - y_c| north-south tile hops (chips side by side east-west)

Energy per inference (J; ``e_*`` from the table, ``P_static`` per chip):

    E_synop  = synops * e_synop                E_neuron = updates * e_neuron_active
    E_route  = sum_{s,c} msgs_{s->c} * (e_tile + ew(s, c) * e_ew + ns(s, c) * e_ns)
    E_dynamic = E_synop + E_neuron + E_route   E_static = P_static * n_chips * t_inference (reported apart)

Time per inference (s):

    work_c    = synops_c * t_synop + updates_c * t_neuron_active
    t_step    = max_c work_c / T + t_route + t_barrier
    t_route   = max over (s, c) with messages of (t_tile + ew * t_ew + ns * t_ns)
    t_barrier = 113 + (465 - 113) * (tiles - 1) / 31 ns on one chip (Table 2 gives 113-465 ns for 1-32 tiles; the
                linear interpolation is ours), 465 ns * n_chips on several (multi-chip sync is not published for
                small systems; a conservative assumption)
    t_inference = T * t_step

Choices, stated once: every neuron update is charged at the "active" figures (81 pJ, 8.4 ns): the paper does not
define active vs inactive, so this is the upper bound (inactive: 52 pJ, 5.3 ns). ``max_c work_c / T`` spreads a
core's work evenly over the steps: activity that bunches into a few steps makes the real step time longer.
Inter-chip links are priced as tile hops (their energy is not published; real links cost more).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from neurohw.constants import LOIHI_ENERGY_PJ, LOIHI_STATIC_MW_PER_CHIP, LOIHI_TIME_NS
from neurohw.lava.mapping import ResourceMap, fanout_counts
from neurohw.lava.network import LoihiNetwork

__all__ = ["LayerEnergy", "EnergyReport", "estimate_energy", "barrier_s", "constants_used"]

_E = {k: c.value_pj * 1e-12 for k, c in LOIHI_ENERGY_PJ.items()}  # J
_T = {k: c.value_ns * 1e-9 for k, c in LOIHI_TIME_NS.items()}  # s


@dataclass(frozen=True)
class LayerEnergy:
    """One layer, per inference: counts, joules and its busiest core's time (``busy_s = max_c work_c``)."""

    index: int
    name: str
    cores: int
    synops: float
    neuron_updates: int
    spikes_out: float
    messages: float
    hops_east_west: float
    hops_north_south: float
    synop_j: float
    neuron_j: float
    routing_j: float
    busy_s: float

    @property
    def energy_j(self) -> float:
        return self.synop_j + self.neuron_j + self.routing_j

    def to_dict(self) -> dict:
        return {**asdict(self), "energy_j": self.energy_j}


@dataclass(frozen=True)
class EnergyReport:
    """Energy (J) and time (s) of one inference. ``dynamic_j`` is the per-operation sum; ``static_j`` (leakage
    over the inference) is kept apart; ``total_j`` adds them. ``constants``: every figure used, with its source."""

    chip: str
    timesteps: int
    n_cores: int
    n_chips: int
    tiles: int
    layers: tuple[LayerEnergy, ...]
    step_s: float
    compute_step_s: float
    route_s: float
    barrier_s: float
    static_j: float
    constants: dict

    @property
    def synops(self) -> float:
        return sum(x.synops for x in self.layers)

    @property
    def neuron_updates(self) -> int:
        return sum(x.neuron_updates for x in self.layers)

    @property
    def spikes(self) -> float:
        return sum(x.spikes_out for x in self.layers)

    @property
    def messages(self) -> float:
        return sum(x.messages for x in self.layers)

    @property
    def synop_j(self) -> float:
        return sum(x.synop_j for x in self.layers)

    @property
    def neuron_j(self) -> float:
        return sum(x.neuron_j for x in self.layers)

    @property
    def routing_j(self) -> float:
        return sum(x.routing_j for x in self.layers)

    @property
    def dynamic_j(self) -> float:
        return self.synop_j + self.neuron_j + self.routing_j

    @property
    def total_j(self) -> float:
        return self.dynamic_j + self.static_j

    @property
    def time_s(self) -> float:
        return self.timesteps * self.step_s

    def to_dict(self) -> dict:
        totals = {k: getattr(self, k) for k in ("synops", "neuron_updates", "spikes", "messages", "synop_j", "neuron_j",
                                                "routing_j", "dynamic_j", "static_j", "total_j", "time_s")}
        return {"chip": self.chip, "timesteps": self.timesteps, "n_cores": self.n_cores, "n_chips": self.n_chips,
                "tiles": self.tiles, "step_s": self.step_s, "compute_step_s": self.compute_step_s,
                "route_s": self.route_s, "barrier_s": self.barrier_s, **totals,
                "layers": [x.to_dict() for x in self.layers], "constants": self.constants}


def barrier_s(tiles: int, chips: int) -> float:
    """Barrier sync time per step (s): see the module docstring."""
    lo, hi = _T["barrier_1_tile"], _T["barrier_32_tiles"]
    if chips > 1:
        return hi * chips
    return lo + (hi - lo) * (min(max(tiles, 1), 32) - 1) / 31


def constants_used(chip: str) -> dict:
    """Every figure :func:`estimate_energy` uses, as ``name -> {value, unit, per, source}``."""
    out = {f"e_{k}": {"value": c.value_pj, "unit": "pJ", "per": c.per, "source": c.source}
           for k, c in LOIHI_ENERGY_PJ.items() if k in ("synop", "neuron_update_active", "spike_within_tile",
                                                        "hop_east_west", "hop_north_south")}
    out.update({f"t_{k}": {"value": c.value_ns, "unit": "ns", "per": c.per, "source": c.source}
                for k, c in LOIHI_TIME_NS.items() if k not in ("synaptic_update", "neuron_update_inactive")})
    s = LOIHI_STATIC_MW_PER_CHIP
    out["p_static"] = {"value": s.value_mw, "unit": "mW", "per": s.per, "source": s.source}
    out["note"] = ("Loihi 1 figures" + (" used for Loihi 2 (none published for it)" if chip != "LOIHI1" else "")
                   + "; every neuron update charged as active (upper bound)")
    return out


def _activity(name: str, arrays: Sequence, sizes: list[int], timesteps: int) -> list[np.ndarray]:
    if len(arrays) != len(sizes):
        raise ValueError(f"{name}: {len(arrays)} arrays for {len(sizes)} layers; give one per layer")
    out = []
    for li, (a, n) in enumerate(zip(arrays, sizes)):
        v = np.asarray(a, dtype=np.float64).reshape(-1)
        if v.size != n:
            raise ValueError(f"{name}[{li}]: {v.size} values for a layer with {n}; give one count per neuron")
        if v.size and (not np.isfinite(v).all() or v.min() < 0 or v.max() > timesteps * (1 + 1e-9)):
            raise ValueError(f"{name}[{li}]: counts in [{v.min()}, {v.max()}] outside [0, timesteps={timesteps}]; "
                             "give per-inference counts per neuron, summed over timesteps")
        out.append(v)
    return out


def estimate_energy(net: LoihiNetwork, resource_map: ResourceMap, *, events_in: Sequence[np.ndarray],
                    spikes_out: Sequence[np.ndarray], timesteps: int) -> EnergyReport:
    """Energy and time of one inference of ``net`` as placed by ``resource_map``; formulas in the module docstring."""
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"timesteps={timesteps!r}; use a positive integer")
    layers, rmap = net.layers, resource_map
    if [(x.name, x.n_out) for x in layers] != [(u.name, u.neurons) for u in rmap.layers]:
        raise ValueError("resource_map was made for another network; map this one with map_network(net, chip)")
    ev = _activity("events_in", events_in, [x.n_in for x in layers], timesteps)
    sp = _activity("spikes_out", spikes_out, [x.n_out for x in layers], timesteps)
    chip = rmap.chip
    xy = {c.core: (c.chip * chip.mesh_tiles[0] + c.tile_xy[0], c.tile_xy[1]) for c in rmap.cores}
    route_s = 0.0
    out: list[LayerEnergy] = []
    for li, layer in enumerate(layers):
        mine = rmap.layer_cores(li)
        src = ev[0] if li == 0 else sp[li - 1]
        prev = rmap.layer_cores(li - 1) if li else ()
        starts = [c.start for c in prev]
        synops = msgs = ew = ns = route_j = busy = 0.0
        for core, k in zip(mine, fanout_counts(layer, [(c.start, c.stop) for c in mine])):
            syn_c = float(ev[li] @ k)
            work = syn_c * _T["synop"] + core.neurons * timesteps * _T["neuron_update_active"]
            synops, busy = synops + syn_c, max(busy, work)
            reach = src * (k > 0)  # (n_in,): messages from each input neuron to this core
            if li == 0:  # graded input from the host: 0 hops
                m = float(reach.sum())
                msgs, route_j = msgs + m, route_j + m * _E["spike_within_tile"]
                route_s = max(route_s, _T["spike_within_tile"] if m else 0.0)
                continue
            per_src = np.add.reduceat(reach, starts)  # (n_prev_cores,): messages from each source core
            for s, m in zip(prev, per_src):
                if m == 0:
                    continue
                dx, dy = abs(xy[s.core][0] - xy[core.core][0]), abs(xy[s.core][1] - xy[core.core][1])
                msgs, ew, ns = msgs + m, ew + m * dx, ns + m * dy
                route_j += m * (_E["spike_within_tile"] + dx * _E["hop_east_west"] + dy * _E["hop_north_south"])
                route_s = max(route_s, _T["spike_within_tile"] + dx * _T["hop_east_west"] + dy * _T["hop_north_south"])
        if li == len(layers) - 1 and not layer.readout and sp[li].sum():  # output spikes to the host: 0 hops
            m = float(sp[li].sum())
            msgs, route_j = msgs + m, route_j + m * _E["spike_within_tile"]
            route_s = max(route_s, _T["spike_within_tile"])
        updates = layer.n_out * timesteps
        out.append(LayerEnergy(
            index=li, name=layer.name, cores=len(mine), synops=synops, neuron_updates=updates,
            spikes_out=float(sp[li].sum()), messages=msgs, hops_east_west=ew, hops_north_south=ns,
            synop_j=synops * _E["synop"], neuron_j=updates * _E["neuron_update_active"], routing_j=route_j,
            busy_s=busy))
    compute_step = max(x.busy_s for x in out) / timesteps
    bar = barrier_s(rmap.tiles_used, rmap.n_chips)
    step = compute_step + route_s + bar
    static = LOIHI_STATIC_MW_PER_CHIP.value_mw * 1e-3 * rmap.n_chips * timesteps * step
    return EnergyReport(chip=chip.name, timesteps=timesteps, n_cores=rmap.n_cores, n_chips=rmap.n_chips,
                        tiles=rmap.tiles_used, layers=tuple(out), step_s=step, compute_step_s=compute_step,
                        route_s=route_s, barrier_s=bar, static_j=static, constants=constants_used(chip.name))
