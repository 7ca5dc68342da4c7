import dataclasses
import json

import numpy as np
import pytest

from neurohw.constants import LOIHI_ENERGY_PJ, LOIHI_STATIC_MW_PER_CHIP, LOIHI_TIME_NS
from neurohw.lava.energy import barrier_s, estimate_energy
from neurohw.lava.mapping import LOIHI1, LOIHI2, map_network
from neurohw.lava.network import ConvGeometry, LoihiLayer, LoihiNetwork

PJ, NS = 1e-12, 1e-9


def dense(name, n_in, n_out, readout=False):
    return LoihiLayer(name=name, kind="dense", in_shape=(n_in,), out_shape=(n_out,), weight=np.zeros((n_out, n_in)),
                      weight_exp=0, bias_mant=0, bias_exp=0, du=4095, dv=0, vth=10, readout=readout)


def net_of(*layers):
    return LoihiNetwork(input_shape=layers[0].in_shape, layers=list(layers))


def test_published_figures_and_their_sources():
    e = {k: c.value_pj for k, c in LOIHI_ENERGY_PJ.items()}
    t = {k: c.value_ns for k, c in LOIHI_TIME_NS.items()}
    assert (e["synop"], e["neuron_update_active"], e["neuron_update_inactive"]) == (23.6, 81.0, 52.0)
    assert (e["spike_within_tile"], e["hop_east_west"], e["hop_north_south"]) == (1.7, 3.0, 4.0)
    assert (e["synaptic_update"], t["synaptic_update"], t["neuron_update_inactive"]) == (120.0, 6.1, 5.3)
    assert (t["synop"], t["neuron_update_active"], t["spike_within_tile"]) == (3.5, 8.4, 2.1)
    assert (t["hop_east_west"], t["hop_north_south"]) == (4.1, 6.5)
    assert (t["barrier_1_tile"], t["barrier_32_tiles"]) == (113.0, 465.0)
    table2 = [*LOIHI_ENERGY_PJ.values(), *LOIHI_TIME_NS.values()]
    assert all("Davies" in c.source and "Table 2" in c.source for c in table2)
    assert LOIHI_STATIC_MW_PER_CHIP.value_mw == pytest.approx(3340 / 32) and "Frady" in LOIHI_STATIC_MW_PER_CHIP.source
    assert barrier_s(1, 1) == pytest.approx(113 * NS) and barrier_s(32, 1) == pytest.approx(465 * NS)
    assert barrier_s(2, 3) == pytest.approx(3 * 465 * NS)


def test_dense_energy_is_counts_times_constants_by_hand():
    net = net_of(dense("fc1", 64, 100), dense("fc2", 100, 10, readout=True))
    rmap = map_network(net, LOIHI1)
    T = 4
    ev = [np.full(64, 2.0), np.full(100, 1.0)]
    sp = [np.full(100, 1.0), np.zeros(10)]
    r = estimate_energy(net, rmap, events_in=ev, spikes_out=sp, timesteps=T)
    syn = (64 * 2 * 100, 100 * 1 * 10)
    assert [x.synops for x in r.layers] == list(syn)
    assert r.neuron_updates == 110 * T and r.spikes == 100
    assert [x.messages for x in r.layers] == [128, 100]  # one message per event per destination core, 0 hops
    assert r.synop_j == pytest.approx(sum(syn) * 23.6 * PJ, rel=1e-12)
    assert r.neuron_j == pytest.approx(440 * 81 * PJ, rel=1e-12)
    assert r.routing_j == pytest.approx(228 * 1.7 * PJ, rel=1e-12)
    assert r.dynamic_j == pytest.approx((13800 * 23.6 + 440 * 81 + 228 * 1.7) * PJ, rel=1e-12)
    work0 = 12800 * 3.5 * NS + 100 * T * 8.4 * NS  # the busier core
    step = work0 / T + 2.1 * NS + 113 * NS  # + one within-tile message latency + 1-tile barrier
    assert r.step_s == pytest.approx(step, rel=1e-12) and r.time_s == pytest.approx(T * step, rel=1e-12)
    assert r.static_j == pytest.approx(3.34 / 32 * T * step, rel=1e-12)
    assert r.total_j == pytest.approx(r.dynamic_j + r.static_j, rel=1e-12)


def test_hops_are_priced_per_direction():
    # 10-neuron cores on a 1-tile-wide mesh: fc1's 4 cores fill tile (0, 0), fc2 sits on tile (0, 1): one N-S hop
    chip = dataclasses.replace(LOIHI1, neurons_per_core=10, mesh_tiles=(1, 32))
    net = net_of(dense("fc1", 8, 40), dense("fc2", 40, 10))
    rmap = map_network(net, chip)
    assert [c.tile_xy for c in rmap.cores] == [(0, 0)] * 4 + [(0, 1)]
    sp = [np.full(40, 3.0), np.full(10, 1.0)]
    r = estimate_energy(net, rmap, events_in=[np.zeros(8), sp[0]], spikes_out=sp, timesteps=5)
    fc2 = r.layers[1]
    assert fc2.messages == 120 + 10 and fc2.hops_north_south == 120 and fc2.hops_east_west == 0  # + 10 to the host
    assert fc2.routing_j == pytest.approx((120 * (1.7 + 4.0) + 10 * 1.7) * PJ, rel=1e-12)
    assert r.route_s == pytest.approx((2.1 + 6.5) * NS, rel=1e-12)
    assert r.barrier_s == pytest.approx((113 + (465 - 113) / 31) * NS, rel=1e-12)  # 2 tiles
    east = dataclasses.replace(chip, mesh_tiles=(8, 4))
    r_e = estimate_energy(net, map_network(net, east), events_in=[np.zeros(8), sp[0]], spikes_out=sp, timesteps=5)
    assert r_e.layers[1].hops_east_west == 120 and r_e.layers[1].routing_j == pytest.approx(
        (120 * (1.7 + 3.0) + 10 * 1.7) * PJ, rel=1e-12)


def test_conv_synops_match_a_brute_force_count_over_any_split():
    rng = np.random.default_rng(0)
    geo = ConvGeometry(kernel=(3, 3), stride=(2, 2), padding=(1, 1))
    layer = LoihiLayer(name="c", kind="conv", in_shape=(3, 9, 9), out_shape=(5, 5, 5), weight=np.zeros((5, 3, 3, 3)),
                       weight_exp=0, bias_mant=0, bias_exp=0, du=4095, dv=0, vth=10, conv=geo)
    net = net_of(layer, dense("fc", 125, 4, readout=True))
    ev0 = rng.integers(0, 6, size=(3, 9, 9)).astype(float)
    brute = 0.0  # every (output neuron, kernel tap) pair inside the input, zero weights included
    for co in range(5):
        for y in range(5):
            for x in range(5):
                for ci in range(3):
                    for ky in range(3):
                        for kx in range(3):
                            iy, ix = 2 * y - 1 + ky, 2 * x - 1 + kx
                            if 0 <= iy < 9 and 0 <= ix < 9:
                                brute += ev0[ci, iy, ix]
    sp = [rng.integers(0, 6, size=125).astype(float), np.zeros(4)]
    for chip in (LOIHI2, dataclasses.replace(LOIHI2, neurons_per_core=7)):
        rmap = map_network(net, chip)
        r = estimate_energy(net, rmap, events_in=[ev0, sp[0]], spikes_out=sp, timesteps=8)
        assert r.layers[0].synops == brute  # exact: integer counts
        assert r.layers[1].synops == sp[0].sum() * 4
    assert len(rmap.layer_cores(0)) == 18  # ceil(125 / 7): the split changes messages, never synops


def test_bad_activity_is_refused_with_the_fix():
    net = net_of(dense("fc1", 4, 3), dense("fc2", 3, 2))
    rmap = map_network(net, LOIHI2)
    ok = dict(events_in=[np.ones(4), np.ones(3)], spikes_out=[np.ones(3), np.ones(2)], timesteps=2)
    with pytest.raises(ValueError, match=r"events_in: 1 arrays for 2 layers"):
        estimate_energy(net, rmap, **{**ok, "events_in": [np.ones(4)]})
    with pytest.raises(ValueError, match=r"spikes_out\[1\]: 3 values for a layer with 2"):
        estimate_energy(net, rmap, **{**ok, "spikes_out": [np.ones(3), np.ones(3)]})
    with pytest.raises(ValueError, match=r"events_in\[0\].*outside \[0, timesteps=2\]"):
        estimate_energy(net, rmap, **{**ok, "events_in": [np.full(4, 3.0), np.ones(3)]})
    with pytest.raises(ValueError, match="timesteps=0"):
        estimate_energy(net, rmap, **{**ok, "timesteps": 0})
    other = map_network(net_of(dense("x", 4, 3), dense("fc2", 3, 2)), LOIHI2)
    with pytest.raises(ValueError, match="another network"):
        estimate_energy(net, other, **ok)


def test_report_is_json_and_names_its_constants():
    net = net_of(dense("fc1", 4, 3), dense("fc2", 3, 2, readout=True))
    r = estimate_energy(net, map_network(net, LOIHI2), events_in=[np.ones(4), np.ones(3)],
                        spikes_out=[np.ones(3), np.zeros(2)], timesteps=3)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["chip"] == "LOIHI2" and len(d["layers"]) == 2
    assert d["dynamic_j"] == pytest.approx(sum(x["energy_j"] for x in d["layers"]), rel=1e-12)
    assert d["constants"]["e_synop"]["value"] == 23.6 and "Table 2" in d["constants"]["e_synop"]["source"]
    assert "Loihi 2" in d["constants"]["note"]
