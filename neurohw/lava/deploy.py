r"""Deploy a spiking network (NIR) to simulated Loihi: export to fixed point, map onto cores, evaluate with the
bit-exact torch simulator (accuracy, activity, energy and time per inference) and, on a few samples, in Lava.

Timing. Every synapse delays spikes by one step (Lava's ``Dense`` / ``Conv`` send the previous step's sums), so
for ``T`` timesteps of the float network a chain of ``L`` layers runs ``T + L`` steps on Loihi: the input is
presented on every step and the read-out layer integrates exactly the ``T`` steps that the float network's
read-out averages. (Hidden layers with a bias integrate it during the first steps, before their first input
arrives; that and the quantization are what separate the deployed network from the float one.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from neurohw.lava.export import DT, FloatLayer, float_layers, float_reference, quantize
from neurohw.lava.mapping import LOIHI2, ChipSpec, ResourceMap, map_network
from neurohw.lava.network import LoihiNetwork
from neurohw.lava.sim import SimResult, simulate

__all__ = ["Deployment", "deploy", "evaluate", "check_against_lava"]


@dataclass
class Deployment:
    """A network ready to run: ``timesteps`` of the float network = ``steps`` Loihi steps."""

    network: LoihiNetwork
    float_layers: list[FloatLayer]
    resource_map: ResourceMap
    timesteps: int

    @property
    def steps(self) -> int:
        return self.timesteps + len(self.network.layers)


def deploy(nir_graph_or_path, *, timesteps: int, chip: ChipSpec = LOIHI2, max_chips: int = 1, input_max: float = 1.0,
           input_levels: int | None = None, dt: float = DT) -> Deployment:
    """Read a NIR graph (object or ``.nir`` file), export it to fixed point (``neurohw.lava.export``) for
    ``timesteps + L`` Loihi steps (inputs: ``input_levels`` graded levels over ``[0, input_max]``, see
    ``neurohw.lava.export.quantize``) and map it onto cores (``neurohw.lava.mapping``). A network that does not fit
    raises ``ExportError`` / ``MappingError`` naming the layer and the limit, before anything runs."""
    import nir

    if not isinstance(timesteps, int) or timesteps < 1:
        raise ValueError(f"deploy: timesteps={timesteps!r} must be an int >= 1")
    source = {}
    if isinstance(nir_graph_or_path, (str, os.PathLike)):
        if not os.path.isfile(nir_graph_or_path):
            raise FileNotFoundError(f"{nir_graph_or_path}: no such NIR file (snn.nir.export_nir + nir.write make one)")
        graph, source = nir.read(str(nir_graph_or_path)), {"nir_file": str(nir_graph_or_path)}
    else:
        graph = nir_graph_or_path
    shape, layers = float_layers(graph, dt=dt)
    net = quantize(shape, layers, timesteps=timesteps + len(layers), input_max=input_max, input_levels=input_levels,
                   source=source)
    return Deployment(network=net, float_layers=layers, resource_map=map_network(net, chip, max_chips=max_chips),
                      timesteps=timesteps)


def _batches(n: int, batch: int):
    return ((i, min(n, i + batch)) for i in range(0, n, batch))


def evaluate(dep: Deployment, x: np.ndarray, y: np.ndarray | None = None, *, batch: int = 512) -> dict:
    """Run the deployed network (torch simulator) and the float network on float inputs ``x`` (B, *input_shape).

    Returns accuracies (when labels ``y`` are given), the agreement of the two networks' decisions, mean activity
    per inference, energy and time per inference (``neurohw.lava.energy``) and the simulator's speed.
    """
    from neurohw.lava.energy import estimate_energy

    net = dep.network
    x = np.asarray(x, dtype=np.float64)
    if x.shape[1:] != net.input_shape:
        raise ValueError(f"evaluate: inputs have shape {x.shape[1:]} per sample; the network takes {net.input_shape}")
    xq = net.quantize_input(x)
    outs, floats = [], []
    events = np.zeros(net.layers[0].n_in)
    spikes = [np.zeros(layer.n_out) for layer in net.layers]
    sim_s = 0.0
    for a, b in _batches(len(x), batch):
        t0 = time.perf_counter()
        r = simulate(net, xq[a:b], dep.steps)
        sim_s += time.perf_counter() - t0
        outs.append(r.output.numpy())
        events += r.input_events.sum(0).numpy()
        for i, c in enumerate(r.spike_counts):
            spikes[i] += c.sum(0).numpy()
        floats.append(float_reference(dep.float_layers, x[a:b], dep.timesteps))
    out, ref = np.concatenate(outs), np.concatenate(floats)
    n = len(x)
    events_in = [events / n] + [s / n for s in spikes[:-1]]
    energy = estimate_energy(net, dep.resource_map, events_in=[e.reshape(layer.in_shape) for e, layer in zip(events_in, net.layers)],
                             spikes_out=[(s / n).reshape(layer.out_shape) for s, layer in zip(spikes, net.layers)],
                             timesteps=dep.steps)
    res = {"samples": n, "timesteps": dep.timesteps, "loihi_steps": dep.steps,
           "decision_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
           "firing_rate_per_layer": {layer.name: float(s.sum() / (n * layer.n_out * dep.steps)) for s, layer in zip(spikes, net.layers)},
           "energy": energy.to_dict(), "sim_seconds": sim_s, "sim_steps_per_second": n * dep.steps / sim_s}
    if y is not None:
        y = np.asarray(y)
        res["accuracy_deployed"] = float(np.mean(out.argmax(1) == y))
        res["accuracy_float"] = float(np.mean(ref.argmax(1) == y))
    return res


def check_against_lava(dep: Deployment, x: np.ndarray, *, timeout_s: float = 600.0) -> dict:
    """Run the first samples ``x`` (float, ``(N, *input_shape)``) in Lava (sidecar) and in the torch simulator;
    compare every layer's spike train and the final read-out ``v`` bit for bit, and time both on the same work."""
    from neurohw.lava.sidecar import run_lava

    net = dep.network
    xq = net.quantize_input(np.asarray(x, dtype=np.float64))
    lava = run_lava(net, xq, dep.steps, timeout_s=timeout_s)
    t0 = time.perf_counter()
    sim: SimResult = simulate(net, xq, dep.steps, record=True)
    sim_s = time.perf_counter() - t0
    mismatched = {}
    for layer, ours, theirs in zip(net.layers, sim.spikes, lava.spikes):
        ours = ours.permute(1, 0, 2).numpy()  # (N, T, n) like the sidecar's
        diff = int(np.sum(ours != theirs))
        if diff:
            mismatched[layer.name] = diff
    v_equal = bool(np.array_equal(sim.v_final.numpy(), lava.v_final.astype(np.int64)))
    n = xq.shape[0]
    return {"samples": n, "loihi_steps": dep.steps, "bit_exact": not mismatched and v_equal, "spike_mismatches": mismatched,
            "v_final_equal": v_equal, "spikes_compared": int(sum(s.numel() for s in sim.spikes)),
            "lava_spike_count": int(sum(int(s.sum()) for s in lava.spikes)),
            "lava_run_seconds": lava.run_seconds, "lava_total_seconds": lava.total_seconds,
            "lava_steps_per_second": lava.steps_per_second, "sim_seconds": sim_s,
            "sim_steps_per_second": n * dep.steps / sim_s, "lava_version": lava.lava_version,
            "torch_threads": torch.get_num_threads()}
