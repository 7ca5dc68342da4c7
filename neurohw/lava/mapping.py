r"""Placing a :class:`~neurohw.lava.network.LoihiNetwork` on Loihi cores: which core holds which neurons, and how
full each core's neuron slots, synaptic memory and axon tables are.

Chips are :class:`ChipSpec` values (frozen; every limit carries its source): :data:`LOIHI1`, :data:`LOIHI2`.
Derive variants with ``dataclasses.replace(LOIHI2, ...)``.

Placement (:func:`map_network`): greedy, layer by layer; a core holds neurons of one layer only, a contiguous range
``[a, a + m)`` of the layer's flattened neurons (torch order). The range fits on one core when

    m                                     <= N_core          neurons_per_core
    m * s_b + ceil(S(a, m) * w_b / 8)     <= M_core          memory_bytes_per_core
    A_in(a, m)                            <= X_in            axons_in_per_core
    sum_{i in [a, a+m)} D_i               <= X_out           axons_out_per_core

and each core takes the largest ``m`` that fits. Symbols:

    S(a, m)   synapses stored on the core = the sum of its neurons' in-degrees (dense: n_in each; conv: the kernel
              taps that land inside the input, fewer at the borders). Dense-expanded: zero weights are stored
              (Loihi's dense synapse format keeps the whole matrix) and a conv kernel is stored once per output
              neuron: Loihi 1's synapse formats have no convolutional weight sharing (its population connectivity
              can share synapse lists between populations, which NxTF's compiler exploits by hand; not modelled).
              With ``conv_weight_sharing=True`` (off for both chips: no memory figure for Loihi 2's convolutional
              connectivity is published) a conv core stores one kernel per output channel it holds instead:
              S = channels(a, m) * fan_in, an optimistic bound.
    A_in      input axons: distinct presynaptic neurons (previous layer, or the input for layer 0) feeding at
              least one of the core's neurons.
    D_i       fan-out edges of neuron i: the number of cores of the next layer that it feeds (one spike message
              per destination core). 0 for the last layer, whose output the host reads.
    s_b       state bytes per neuron charged to the core's memory pool (0 where neuron state has its own memory).
    w_b       bits per stored synapse.

Layers are split from the last to the first (so that ``D_i`` is known), then numbered first to last. Cores fill
chips in that order; a new chip starts when the current one has no core left or when its neuron or synapse
total would pass the chip's limit. A network that cannot be placed raises :class:`MappingError` naming the layer,
the quantity, the limit and a fix.

Not modelled: synapse-list headers and alignment (Loihi 1's 128 KB limit is "subject to compression and list
alignment considerations"), routing-table memory, sparse or compressed synapse formats.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from neurohw.lava.network import LoihiLayer, LoihiNetwork

__all__ = ["ChipSpec", "LOIHI1", "LOIHI2", "CHIPS", "MappingError", "CoreUse", "LayerUse", "ResourceMap",
           "map_network", "in_degree", "fanout_counts", "input_fanout"]

FORMAT = "neuromfm-loihi-resource-map"
VERSION = 1


class MappingError(ValueError):
    """The network does not fit: the message names the layer, the quantity, the limit it breaks and a fix."""


@dataclass(frozen=True)
class ChipSpec:
    """Capacity of one neuromorphic chip and of its cores. Counts are per core unless named ``_per_chip``.

    Attributes:
        name: the chip's name, used in every message and report.
        cores_per_chip: neuromorphic cores on one chip.
        neurons_per_core: neurons (LIF compartments) one core can hold.
        memory_bytes_per_core: the memory pool (bytes) that holds a core's synapses, and its neuron state when
            ``state_bytes_per_neuron > 0``.
        state_bytes_per_neuron: neuron-state bytes charged to that pool per neuron (0: state has its own memory).
        synapse_bits: bits per stored synapse (dense format: the weight only, no index).
        axons_in_per_core: input axons (distinct presynaptic sources) one core can receive.
        axons_out_per_core: core-to-core fan-out edges one core can send.
        neurons_per_chip, synapses_per_chip: chip totals.
        cores_per_tile, mesh_tiles: the network-on-chip: tiles of ``cores_per_tile`` cores on a grid of
            ``(east-west, north-south)`` tiles per chip (spike hops are counted between tiles).
        conv_weight_sharing: a conv core stores one kernel per output channel (True) or per neuron (False).
        sources: ``(field, source)`` for every limit.
    """

    name: str
    cores_per_chip: int
    neurons_per_core: int
    memory_bytes_per_core: int
    state_bytes_per_neuron: int
    synapse_bits: int
    axons_in_per_core: int
    axons_out_per_core: int
    neurons_per_chip: int
    synapses_per_chip: int
    cores_per_tile: int
    mesh_tiles: tuple[int, int]
    conv_weight_sharing: bool = False
    sources: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "mesh_tiles", tuple(int(v) for v in self.mesh_tiles))
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "int" and (not isinstance(v, int) or v < (0 if f.name == "state_bytes_per_neuron" else 1)):
                raise ValueError(f"ChipSpec {self.name!r}: {f.name}={v!r}; use a positive integer")
        if len(self.mesh_tiles) != 2 or min(self.mesh_tiles) < 1:
            raise ValueError(f"ChipSpec {self.name!r}: mesh_tiles={self.mesh_tiles}; use (east-west, north-south) > 0")
        if self.mesh_tiles[0] * self.mesh_tiles[1] * self.cores_per_tile < self.cores_per_chip:
            raise ValueError(f"ChipSpec {self.name!r}: mesh_tiles {self.mesh_tiles} x cores_per_tile "
                             f"{self.cores_per_tile} hold fewer than cores_per_chip={self.cores_per_chip} cores")

    def source_of(self, field_name: str) -> str:
        return dict(self.sources).get(field_name, "")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mesh_tiles"] = list(self.mesh_tiles)
        d["sources"] = dict(self.sources)
        return d


_DAVIES18 = "Davies et al., 'Loihi: A Neuromorphic Manycore Processor with On-Chip Learning', IEEE Micro 38(1), 2018"
_DAVIES21 = ("Davies et al., 'Advancing Neuromorphic Computing With Loihi: A Survey of Results and Outlook', "
             "Proc. IEEE 109(5), 2021")
_BRIEF = ("Intel, 'Taking Neuromorphic Computing to the Next Level with Loihi 2', technology brief, 2021, "
          "comparison table")
_TILES = ("inferred: Davies 2018 Table 2 quotes barrier sync for '1-32 tiles' on a 128-core chip, i.e. 4 cores per "
          "tile; the 8 x 4 tile grid is SANA-FE's Loihi model (Boyle et al., IEEE TCAD 2025), not stated by Intel")

LOIHI1 = ChipSpec(
    name="LOIHI1",
    # Davies 2018 p. 86: "a manycore mesh comprising 128 neuromorphic cores".
    cores_per_chip=128,
    # Davies 2018 p. 89, constraint 1: "The total number of neurons assigned to any core may not exceed 1,024 (Ncx)"
    # (one compartment per LIF neuron).
    neurons_per_core=1024,
    # Davies 2018 p. 89, constraint 2: "The total synaptic fan-in state mapped to any core must not exceed 128 KB
    # (Nsyn x 64b, subject to compression and list alignment considerations)"; KB read as KiB, as nengo-loihi's
    # MAX_SYNAPSE_BITS = 1,048,576 bits does.
    memory_bytes_per_core=128 * 1024,
    # Loihi 1 neuron state has its own memory, "fixed at 24 bytes per neuron" (Intel Loihi 2 brief, Loihi column),
    # outside the 128 KB synaptic memory.
    state_bytes_per_neuron=0,
    # Davies 2018 p. 87: "any weight precision between one and nine bits"; the exporter writes 8-bit weights.
    synapse_bits=8,
    # Davies 2018 p. 89, constraint 4: distribution lists per core "must not exceed 4,096 (Naxin)".
    axons_in_per_core=4096,
    # Davies 2018 p. 89, constraint 3: "core-to-core fan-out edges mapped to any given core must not exceed 4,096
    # (Naxout)".
    axons_out_per_core=4096,
    # Davies 2021 p. 913: "Loihi implements 131 072 leaky-integrate-and-fire neurons ... over 128 cores".
    neurons_per_chip=131_072,
    # Intel Loihi 2 brief, Loihi column: "Max # synapses/chip 128 million" (the 1-bit capacity of the 16 MB of
    # synaptic memory, Davies 2018 p. 95; with 8-bit synapses the per-core memory limit binds first).
    synapses_per_chip=128_000_000,
    cores_per_tile=4,
    mesh_tiles=(8, 4),
    sources=(
        ("cores_per_chip", f"{_DAVIES18}, p. 86: 128 neuromorphic cores"),
        ("neurons_per_core", f"{_DAVIES18}, p. 89, constraint 1: 1,024 (Ncx)"),
        ("memory_bytes_per_core", f"{_DAVIES18}, p. 89, constraint 2: 128 KB synaptic state per core"),
        ("state_bytes_per_neuron", f"{_BRIEF}: Loihi neuron state fixed at 24 bytes, separate from synaptic memory"),
        ("synapse_bits", f"{_DAVIES18}, p. 87: 1-9 bit weights; the exporter's weights are 8-bit"),
        ("axons_in_per_core", f"{_DAVIES18}, p. 89, constraint 4: 4,096 (Naxin)"),
        ("axons_out_per_core", f"{_DAVIES18}, p. 89, constraint 3: 4,096 (Naxout)"),
        ("neurons_per_chip", f"{_DAVIES21}, p. 913: 131,072 neurons"),
        ("synapses_per_chip", f"{_BRIEF}: 128 million (Loihi)"),
        ("cores_per_tile", _TILES),
        ("mesh_tiles", _TILES),
    ),
)

LOIHI2 = ChipSpec(
    name="LOIHI2",
    # Intel Loihi 2 brief: "Max # neuron cores/chip 128"; Orchard et al., "Efficient Neuromorphic Signal Processing
    # with Loihi 2", SiPS 2021.
    cores_per_chip=128,
    # "up to 1 million neurons/chip" (brief) over 128 cores = 8,192 = 2^13 per core, the per-core figure of
    # Orchard et al. 2021 and later Loihi 2 papers.
    neurons_per_core=8192,
    # Brief: "Memory per neuron core: 192 KB, flexible allocation" (Loihi: 208 KB, fixed), shared by synapses,
    # neuron state and routing tables.
    memory_bytes_per_core=192 * 1024,
    # Brief: neuron state "variable from 0 to 4096 bytes per neuron depending on neuron model requirements", taken
    # from the same pool. The LIF's figure is not published: we charge Loihi 1's fixed 24 bytes per neuron
    # (an assumption). Routing tables also live in the pool and are not charged (not published).
    state_bytes_per_neuron=24,
    # Loihi 2 synaptic weights are 8-bit by default (wider ones chain 8-bit synapses); the exporter writes 8 bits.
    synapse_bits=8,
    # Not published for Loihi 2: Loihi 1's 4,096 input axons and 4,096 fan-out edges per core are assumed.
    axons_in_per_core=4096,
    axons_out_per_core=4096,
    # Brief: "Max # neurons/chip: 1 million" (read as 10^6, the conservative reading), "Max # synapses/chip:
    # 120 million".
    neurons_per_chip=1_000_000,
    synapses_per_chip=120_000_000,
    # Not published per tile for Loihi 2: Loihi 1's 4 cores per tile on 8 x 4 tiles is assumed (the hop energies
    # used are Loihi 1's too, see neurohw.constants).
    cores_per_tile=4,
    mesh_tiles=(8, 4),
    sources=(
        ("cores_per_chip", f"{_BRIEF}: 128 neuron cores; Orchard et al., SiPS 2021"),
        ("neurons_per_core", f"{_BRIEF}: 1 million neurons / 128 cores = 8,192; Orchard et al., SiPS 2021"),
        ("memory_bytes_per_core", f"{_BRIEF}: 192 KB per core, flexible allocation"),
        ("state_bytes_per_neuron", "assumption: Loihi 1's fixed 24 bytes per neuron (Loihi 2: 0-4096, model-dependent, "
                                   "not published for LIF)"),
        ("synapse_bits", "8-bit weights (Loihi 2 default; the exporter's weights are 8-bit)"),
        ("axons_in_per_core", "assumption: Loihi 1's 4,096 (not published for Loihi 2)"),
        ("axons_out_per_core", "assumption: Loihi 1's 4,096 (not published for Loihi 2)"),
        ("neurons_per_chip", f"{_BRIEF}: 1 million"),
        ("synapses_per_chip", f"{_BRIEF}: 120 million"),
        ("cores_per_tile", "assumption: as Loihi 1 (" + _TILES + ")"),
        ("mesh_tiles", "assumption: as Loihi 1 (" + _TILES + ")"),
    ),
)

CHIPS: dict[str, ChipSpec] = {c.name: c for c in (LOIHI1, LOIHI2)}


# ----------------------------------------------------------------------------------------------- connectivity
def _conv_geometry(layer: LoihiLayer):
    """``layer``'s conv geometry, checked against its shapes and weight: (C_in, H, W), (C_out, Ho, Wo), g."""
    g, where = layer.conv, f"layer {layer.name!r}"
    if len(layer.in_shape) != 3 or len(layer.out_shape) != 3:
        raise ValueError(f"{where}: a conv layer needs (C, H, W) shapes, got in {layer.in_shape} out {layer.out_shape}")
    (cin, h, w), (cout, ho, wo) = layer.in_shape, layer.out_shape
    if cin % g.groups or cout % g.groups or layer.weight.shape != (cout, cin // g.groups, *g.kernel):
        raise ValueError(f"{where}: weight {layer.weight.shape} does not match (C_out={cout}, C_in/groups="
                         f"{cin}/{g.groups}, kernel {g.kernel})")
    expect = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                   for n, p, d, k, s in zip((h, w), g.padding, g.dilation, g.kernel, g.stride))
    if expect != (ho, wo):
        raise ValueError(f"{where}: geometry {g} on input {layer.in_shape} gives output {expect}, not the declared "
                         f"{(ho, wo)}")
    return (cin, h, w), (cout, ho, wo), g


def in_degree(layer: LoihiLayer) -> np.ndarray:
    """Synapses into each neuron, ``(n_out,)`` int64: ``n_in`` (dense) or the kernel taps inside the input (conv)."""
    if layer.kind == "dense":
        return np.full(layer.n_out, layer.n_in, dtype=np.int64)
    (cin, h, w), (cout, ho, wo), g = _conv_geometry(layer)

    def valid(n_in, n_out, k, s, p, d):  # (n_out,): taps of one kernel axis that land inside the input
        pos = np.arange(n_out)[:, None] * s - p + np.arange(k)[None, :] * d  # (n_out, k) input coordinates
        return ((pos >= 0) & (pos < n_in)).sum(axis=1)

    vy = valid(h, ho, g.kernel[0], g.stride[0], g.padding[0], g.dilation[0])
    vx = valid(w, wo, g.kernel[1], g.stride[1], g.padding[1], g.dilation[1])
    per_plane = (cin // g.groups) * vy[:, None] * vx[None, :]  # (Ho, Wo)
    return np.broadcast_to(per_plane, (cout, ho, wo)).reshape(-1).astype(np.int64)


def fanout_counts(layer: LoihiLayer, ranges: Sequence[tuple[int, int]]) -> Iterator[np.ndarray]:
    """For each neuron range ``[a, b)`` of ``layer``: ``(n_in,)`` float64, the number of (neuron in the range,
    weight) pairs that read input ``i`` (zero weights included). Yields one array per range, in order.

    Conv: a transposed convolution of the range's indicator with a kernel of ones. The indicator is summed over
    the output channels of each group, then every kernel tap ``(ky, kx)`` adds it, strided, at offset
    ``(ky * dilation, kx * dilation)`` of a canvas whose origin is the input at ``-padding``; the canvas cropped to
    the input is the count, the same for every input channel of the group. Exact (integer sums)."""
    if layer.kind == "dense":
        for a, b in ranges:
            yield np.full(layer.n_in, float(b - a))
        return
    (cin, h, w), (cout, ho, wo), g = _conv_geometry(layer)
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    hc, wc = max((ho - 1) * sh + (kh - 1) * dh + 1, ph + h), max((wo - 1) * sw + (kw - 1) * dw + 1, pw + w)
    batch = max(1, (1 << 22) // (g.groups * hc * wc + layer.n_in + layer.n_out))  # bounds one batch's memory
    for lo in range(0, len(ranges), batch):
        chunk = ranges[lo:lo + batch]
        masks = np.zeros((len(chunk), layer.n_out))
        for k, (a, b) in enumerate(chunk):
            masks[k, a:b] = 1.0
        m = masks.reshape(len(chunk), g.groups, cout // g.groups, ho, wo).sum(axis=2)  # (k, G, Ho, Wo)
        canvas = np.zeros((len(chunk), g.groups, hc, wc))  # input coordinates shifted by +padding
        for ky in range(kh):
            for kx in range(kw):
                canvas[:, :, ky * dh:ky * dh + (ho - 1) * sh + 1:sh, kx * dw:kx * dw + (wo - 1) * sw + 1:sw] += m
        counts = canvas[:, :, ph:ph + h, pw:pw + w]  # (k, G, H, W)
        yield from np.repeat(counts, cin // g.groups, axis=1).reshape(len(chunk), layer.n_in)  # (k, C_in * H * W)


def input_fanout(layer: LoihiLayer) -> np.ndarray:
    """Exact fan-out of every input neuron, ``in_shape`` float64: the (output neuron, weight) pairs it feeds
    (dense: ``n_out``; conv: fewer at the borders, by stride and padding)."""
    return next(fanout_counts(layer, [(0, layer.n_out)])).reshape(layer.in_shape)


def _axons_in(layer: LoihiLayer, a: int, b: int) -> int:
    if layer.kind == "dense":
        return layer.n_in
    return int(np.count_nonzero(next(fanout_counts(layer, [(a, b)]))))


# ------------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class CoreUse:
    """One core: the neurons ``[start, stop)`` of one layer and its use of the core's limits (``util_*`` in [0, 1])."""

    core: int
    chip: int
    tile_xy: tuple[int, int]
    layer_index: int
    layer: str
    start: int
    stop: int
    synapses: int
    memory_bytes: int
    axons_in: int
    axons_out: int
    util_neurons: float
    util_memory: float
    util_axons_in: float
    util_axons_out: float

    @property
    def neurons(self) -> int:
        return self.stop - self.start

    def to_dict(self) -> dict:
        return {**asdict(self), "tile_xy": list(self.tile_xy), "neurons": self.neurons}


@dataclass(frozen=True)
class LayerUse:
    """One layer's totals. ``bound_by``: the limit that sized its first core (``"layer"`` when one core holds it)."""

    index: int
    name: str
    kind: str
    neurons: int
    fan_in: int
    cores: tuple[int, ...]
    synapses: int
    memory_bytes: int
    axons_in_max: int
    axons_out: int
    bound_by: str
    util_neurons_max: float
    util_memory_max: float
    util_axons_in_max: float
    util_axons_out_max: float

    def to_dict(self) -> dict:
        return {**asdict(self), "cores": list(self.cores), "n_cores": len(self.cores)}


@dataclass(frozen=True)
class ResourceMap:
    """Where every neuron sits. ``cores`` in placement order; ``layers`` in network order."""

    chip: ChipSpec
    max_chips: int
    cores: tuple[CoreUse, ...]
    layers: tuple[LayerUse, ...]

    @property
    def n_cores(self) -> int:
        return len(self.cores)

    @property
    def n_chips(self) -> int:
        return 1 + max(c.chip for c in self.cores)

    @property
    def tiles_used(self) -> int:
        return len({(c.chip, c.tile_xy) for c in self.cores})

    @property
    def totals(self) -> dict:
        return {"cores": self.n_cores, "chips": self.n_chips, "tiles": self.tiles_used,
                "neurons": sum(x.neurons for x in self.layers), "synapses": sum(x.synapses for x in self.layers),
                "memory_bytes": sum(x.memory_bytes for x in self.layers)}

    def layer_cores(self, index: int) -> tuple[CoreUse, ...]:
        return tuple(self.cores[k] for k in self.layers[index].cores)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "chip": self.chip.to_dict(), "max_chips": self.max_chips,
                "n_cores": self.n_cores, "n_chips": self.n_chips, "tiles_used": self.tiles_used, "totals": self.totals,
                "layers": [x.to_dict() for x in self.layers], "cores": [c.to_dict() for c in self.cores]}

    def table(self) -> str:
        """Plain text: the totals, one row per layer, one row per core (utilisation in percent)."""
        c = self.chip
        t = self.totals
        lines = [f"{c.name}: {self.n_cores} cores on {self.n_chips} chip(s) (max_chips {self.max_chips}, "
                 f"{c.cores_per_chip} cores/chip), {self.tiles_used} tiles; {t['neurons']} neurons, "
                 f"{t['synapses']} synapses, {t['memory_bytes'] / 1024:.1f} KiB",
                 f"per core: {c.neurons_per_core} neurons, {c.memory_bytes_per_core // 1024} KiB memory, "
                 f"{c.axons_in_per_core} axons in, {c.axons_out_per_core} axons out", "",
                 f"{'layer':<16} {'kind':<5} {'neurons':>8} {'fan_in':>6} {'cores':>5} {'synapses':>10} "
                 f"{'mem KiB':>8} {'ax_in':>6} {'ax_out':>7} {'bound by':<10} {'%neu':>5} {'%mem':>5} {'%in':>5} "
                 f"{'%out':>5}"]
        for x in self.layers:
            lines.append(f"{x.name[:16]:<16} {x.kind:<5} {x.neurons:>8} {x.fan_in:>6} {len(x.cores):>5} "
                         f"{x.synapses:>10} {x.memory_bytes / 1024:>8.1f} {x.axons_in_max:>6} {x.axons_out:>7} "
                         f"{x.bound_by:<10} {100 * x.util_neurons_max:>5.1f} {100 * x.util_memory_max:>5.1f} "
                         f"{100 * x.util_axons_in_max:>5.1f} {100 * x.util_axons_out_max:>5.1f}")
        lines += ["", f"{'core':>5} {'chip':>4} {'tile':>7} {'layer':<16} {'neurons':>13} {'synapses':>9} "
                      f"{'mem B':>7} {'ax_in':>6} {'ax_out':>6} {'%neu':>5} {'%mem':>5} {'%in':>5} {'%out':>5}"]
        for k in self.cores:
            lines.append(f"{k.core:>5} {k.chip:>4} {str(k.tile_xy):>7} {k.layer[:16]:<16} "
                         f"{f'{k.start}:{k.stop}':>13} {k.synapses:>9} {k.memory_bytes:>7} {k.axons_in:>6} "
                         f"{k.axons_out:>6} {100 * k.util_neurons:>5.1f} {100 * k.util_memory:>5.1f} "
                         f"{100 * k.util_axons_in:>5.1f} {100 * k.util_axons_out:>5.1f}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- placement
def _stored_synapses(layer: LoihiLayer, chip: ChipSpec, cum_deg: np.ndarray, a: int, stops: np.ndarray) -> np.ndarray:
    """Synapses stored on a core holding ``[a, stop)`` for every ``stop`` in ``stops``."""
    if layer.kind == "conv" and chip.conv_weight_sharing:
        plane = layer.out_shape[1] * layer.out_shape[2]
        return ((stops - 1) // plane - a // plane + 1) * layer.fan_in  # one kernel per output channel held
    return cum_deg[stops] - cum_deg[a]


def _memory_bytes(chip: ChipSpec, neurons, synapses):
    return neurons * chip.state_bytes_per_neuron + -(-synapses * chip.synapse_bits // 8)


def _split_layer(layer: LoihiLayer, chip: ChipSpec, deg: np.ndarray, edges: np.ndarray) -> list[tuple[int, int, str]]:
    """Greedy ranges ``(start, stop, bound_by)`` of ``layer`` on cores of ``chip`` (see the module docstring);
    ``deg``: in-degree per neuron, ``edges``: fan-out edges per neuron."""
    where = f"layer {layer.name!r}"
    if layer.fan_in > chip.axons_in_per_core:
        raise MappingError(
            f"{where}: fan-in of one neuron is {layer.fan_in} input axons, above {chip.name}'s limit of "
            f"{chip.axons_in_per_core} input axons per core; no split of the layer can fit it. Fix: reduce the "
            f"neuron's fan-in (fewer inputs, a smaller kernel or grouped conv, or pool the previous layer).")
    shared = layer.kind == "conv" and chip.conv_weight_sharing
    one_mem = _memory_bytes(chip, 1, layer.fan_in if shared else int(deg.max()))
    if one_mem > chip.memory_bytes_per_core:
        raise MappingError(
            f"{where}: one neuron needs {one_mem} bytes of core memory ({layer.fan_in} synapses x "
            f"{chip.synapse_bits} bits + {chip.state_bytes_per_neuron} state bytes), above {chip.name}'s "
            f"{chip.memory_bytes_per_core} bytes per core. Fix: reduce the neuron's fan-in.")
    if edges.size and edges.max() > chip.axons_out_per_core:
        raise MappingError(
            f"{where}: one neuron fans out to {int(edges.max())} cores of the next layer, above {chip.name}'s "
            f"limit of {chip.axons_out_per_core} fan-out edges per core. Fix: make the next layer smaller.")
    cum_deg = np.concatenate([[0], np.cumsum(deg)])
    cum_out = np.concatenate([[0], np.cumsum(edges)])
    ranges, a, n = [], 0, layer.n_out
    while a < n:
        stops = np.arange(a + 1, min(a + chip.neurons_per_core, n) + 1)
        mem = _memory_bytes(chip, stops - a, _stored_synapses(layer, chip, cum_deg, a, stops))
        mem_ok = mem <= chip.memory_bytes_per_core
        out_ok = cum_out[stops] - cum_out[a] <= chip.axons_out_per_core
        ok = mem_ok & out_ok  # each is a prefix of Trues: every quantity grows with the range
        m = len(stops) if ok.all() else int(np.argmin(ok))  # >= 1: one neuron fits (checked above)
        if m < len(stops):
            bound = "memory" if not mem_ok[m] else "axons_out"
        elif a + m == n:
            bound = "layer" if a == 0 else "layer end"
        else:
            bound = "neurons"
        if _axons_in(layer, a, a + m) > chip.axons_in_per_core:  # grows with the range: bisect the largest fit
            lo, hi = 1, m  # one neuron reads at most fan_in <= the limit (checked above)
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if _axons_in(layer, a, a + mid) <= chip.axons_in_per_core else (lo, mid - 1)
            m, bound = lo, "axons_in"
        ranges.append((a, a + m, bound))
        a += m
    return ranges


def map_network(net: LoihiNetwork, chip: ChipSpec = LOIHI2, *, max_chips: int = 1) -> ResourceMap:
    """Place ``net`` on cores of ``chip``, on at most ``max_chips`` chips; see the module docstring for the rules.
    Raises :class:`MappingError` when it does not fit."""
    if not isinstance(max_chips, int) or max_chips < 1:
        raise ValueError(f"max_chips={max_chips!r}; use a positive integer")
    layers = net.layers
    degs = [in_degree(layer) for layer in layers]
    splits: list[list[tuple[int, int, str]]] = [[] for _ in layers]
    edges: list[np.ndarray] = [np.zeros(0)] * len(layers)
    for li in range(len(layers) - 1, -1, -1):  # last to first: a layer's fan-out edges need the next one's cores
        edges[li] = np.zeros(layers[li].n_out, dtype=np.int64)
        if li + 1 < len(layers):
            for counts in fanout_counts(layers[li + 1], [(a, b) for a, b, _ in splits[li + 1]]):
                edges[li] += counts > 0  # neuron i feeds this core of the next layer
        splits[li] = _split_layer(layers[li], chip, degs[li], edges[li])

    cores: list[CoreUse] = []
    layer_uses: list[LayerUse] = []
    chip_i, on_chip, neurons_on_chip, syn_on_chip = 0, 0, 0, 0
    for li, layer in enumerate(layers):
        cum_deg = np.concatenate([[0], np.cumsum(degs[li])])
        ids = []
        for (a, b, _), counts in zip(splits[li], fanout_counts(layer, [(a, b) for a, b, _ in splits[li]])):
            syn = int(_stored_synapses(layer, chip, cum_deg, a, np.array([b]))[0])
            if (on_chip == chip.cores_per_chip or neurons_on_chip + (b - a) > chip.neurons_per_chip
                    or syn_on_chip + syn > chip.synapses_per_chip):
                chip_i, on_chip, neurons_on_chip, syn_on_chip = chip_i + 1, 0, 0, 0
            tile = on_chip // chip.cores_per_tile
            mem = int(_memory_bytes(chip, b - a, syn))
            ax_in, ax_out = int(np.count_nonzero(counts)), int(edges[li][a:b].sum())
            ids.append(len(cores))
            cores.append(CoreUse(
                core=len(cores), chip=chip_i, tile_xy=(tile % chip.mesh_tiles[0], tile // chip.mesh_tiles[0]),
                layer_index=li, layer=layer.name, start=a, stop=b, synapses=syn, memory_bytes=mem, axons_in=ax_in,
                axons_out=ax_out, util_neurons=(b - a) / chip.neurons_per_core,
                util_memory=mem / chip.memory_bytes_per_core, util_axons_in=ax_in / chip.axons_in_per_core,
                util_axons_out=ax_out / chip.axons_out_per_core))
            on_chip, neurons_on_chip, syn_on_chip = on_chip + 1, neurons_on_chip + (b - a), syn_on_chip + syn
        mine = [cores[k] for k in ids]
        layer_uses.append(LayerUse(
            index=li, name=layer.name, kind=layer.kind, neurons=layer.n_out, fan_in=layer.fan_in, cores=tuple(ids),
            synapses=sum(c.synapses for c in mine), memory_bytes=sum(c.memory_bytes for c in mine),
            axons_in_max=max(c.axons_in for c in mine), axons_out=sum(c.axons_out for c in mine),
            bound_by=splits[li][0][2], util_neurons_max=max(c.util_neurons for c in mine),
            util_memory_max=max(c.util_memory for c in mine), util_axons_in_max=max(c.util_axons_in for c in mine),
            util_axons_out_max=max(c.util_axons_out for c in mine)))

    rmap = ResourceMap(chip=chip, max_chips=max_chips, cores=tuple(cores), layers=tuple(layer_uses))
    if rmap.n_chips > max_chips:
        lu = layer_uses[next(c for c in cores if c.chip >= max_chips).layer_index]
        raise MappingError(
            f"layer {lu.name!r}: does not fit on {max_chips} {chip.name} chip(s): the network needs {rmap.n_chips} "
            f"chips ({rmap.n_cores} cores; this layer {len(lu.cores)} cores for {lu.neurons} neurons and "
            f"{lu.synapses} synapses, bound by {lu.bound_by}); the limit is max_chips={max_chips} x "
            f"{chip.cores_per_chip} cores, {chip.neurons_per_chip} neurons and {chip.synapses_per_chip} synapses "
            f"per chip. Fix: pass max_chips={rmap.n_chips}, or shrink the layer.")
    return rmap
