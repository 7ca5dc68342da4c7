import dataclasses
import json

import numpy as np
import pytest

from neurohw.lava.mapping import (LOIHI1, LOIHI2, ChipSpec, MappingError, fanout_counts, in_degree, input_fanout,
                                  map_network)
from neurohw.lava.network import ConvGeometry, LoihiLayer, LoihiNetwork


def dense(name, n_in, n_out, readout=False):
    return LoihiLayer(name=name, kind="dense", in_shape=(n_in,), out_shape=(n_out,), weight=np.zeros((n_out, n_in)),
                      weight_exp=0, bias_mant=0, bias_exp=0, du=4095, dv=0, vth=10, readout=readout)


def conv(name, in_shape, out_ch, kernel, stride=1, padding=0, dilation=1, groups=1):
    c, h, w = in_shape
    ho = (h + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    geo = ConvGeometry(kernel=(kernel, kernel), stride=(stride, stride), padding=(padding, padding),
                       dilation=(dilation, dilation), groups=groups)
    return LoihiLayer(name=name, kind="conv", in_shape=in_shape, out_shape=(out_ch, ho, wo),
                      weight=np.zeros((out_ch, c // groups, kernel, kernel)), weight_exp=0, bias_mant=0, bias_exp=0,
                      du=4095, dv=0, vth=10, conv=geo)


def net_of(*layers):
    return LoihiNetwork(input_shape=layers[0].in_shape, layers=list(layers))


def brute_force_counts(layer, start=0, stop=None):
    """(n_in,) number of (output neuron in [start, stop), weight) pairs reading each input, by enumeration."""
    cin, h, w = layer.in_shape
    cout, ho, wo = layer.out_shape
    g = layer.conv
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = g.kernel, g.stride, g.padding, g.dilation
    per_group_in, per_group_out = cin // g.groups, cout // g.groups
    counts = np.zeros((cin, h, w))
    for o in range(start, layer.n_out if stop is None else stop):
        co, rem = divmod(o, ho * wo)
        y, x = divmod(rem, wo)
        for ci in range(per_group_in):
            c_global = (co // per_group_out) * per_group_in + ci
            for ky in range(kh):
                for kx in range(kw):
                    iy, ix = y * sh - ph + ky * dh, x * sw - pw + kx * dw
                    if 0 <= iy < h and 0 <= ix < w:
                        counts[c_global, iy, ix] += 1
    return counts.reshape(-1)


def test_dense_64_100_10_by_hand_on_both_chips():
    net = net_of(dense("fc1", 64, 100), dense("fc2", 100, 10, readout=True))
    r1 = map_network(net, LOIHI1)
    assert (r1.n_cores, r1.n_chips, r1.tiles_used) == (2, 1, 1)
    fc1, fc2 = r1.layers
    assert (fc1.synapses, fc1.memory_bytes, fc1.axons_in_max, fc1.axons_out) == (6400, 6400, 64, 100)  # 8-bit synapses
    assert (fc2.synapses, fc2.memory_bytes, fc2.axons_in_max, fc2.axons_out) == (1000, 1000, 100, 0)
    assert fc1.bound_by == fc2.bound_by == "layer"
    core = r1.cores[0]
    assert core.util_neurons == 100 / 1024 and core.util_memory == 6400 / (128 * 1024)
    assert core.util_axons_in == 64 / 4096 and core.util_axons_out == 100 / 4096
    r2 = map_network(net, LOIHI2)  # Loihi 2 charges 24 state bytes per neuron to the 192 KiB pool
    assert [x.memory_bytes for x in r2.layers] == [100 * 24 + 6400, 10 * 24 + 1000]
    assert r2.cores[0].util_memory == 8800 / (192 * 1024)


def test_memory_bound_split_and_fan_out_edges():
    # 1000 inputs x 8 bits = 1000 B per neuron; 131072 // 1000 = 131 neurons per Loihi 1 core
    net = net_of(dense("fc1", 1000, 200), dense("fc2", 200, 10))
    r = map_network(net, LOIHI1)
    cores = r.layer_cores(0)
    assert [(c.start, c.stop) for c in cores] == [(0, 131), (131, 200)]
    assert r.layers[0].bound_by == "memory"
    assert [c.memory_bytes for c in cores] == [131_000, 69_000]
    assert [c.axons_out for c in cores] == [131, 69]  # each neuron feeds the one core of fc2
    assert r.layers[0].synapses == 200 * 1000


def test_fan_out_edge_limit_sizes_the_source_layer():
    # b: 2000 B per neuron -> 65 per core -> 16 cores, so every neuron of a has 16 edges -> 4096 // 16 = 256 per core
    net = net_of(dense("a", 8, 2000), dense("b", 2000, 1000))
    r = map_network(net, LOIHI1)
    b_cores, a_cores = r.layer_cores(1), r.layer_cores(0)
    assert len(b_cores) == 16 and r.layers[1].bound_by == "memory"
    assert [c.neurons for c in a_cores] == [256] * 7 + [2000 - 7 * 256]
    assert r.layers[0].bound_by == "axons_out" and a_cores[0].axons_out == 4096
    assert all(c.axons_out <= LOIHI1.axons_out_per_core for c in r.cores)


@pytest.mark.parametrize("kw", [dict(kernel=3, stride=2, padding=1), dict(kernel=3, dilation=2, padding=2, groups=2),
                                dict(kernel=2, stride=1)])
def test_conv_fanout_and_in_degree_are_exact(kw):
    layer = conv("c", (4, 7, 6), 6, **kw)
    bf = brute_force_counts(layer)
    assert np.array_equal(input_fanout(layer).reshape(-1), bf)
    assert in_degree(layer).sum() == bf.sum()  # every (neuron, weight) pair inside the input, counted both ways
    ranges = [(0, 5), (5, 40), (40, layer.n_out)]
    for (a, b), counts in zip(ranges, fanout_counts(layer, ranges)):
        assert np.array_equal(counts, brute_force_counts(layer, a, b))


def test_conv_split_by_input_axons_is_greedy_and_exact():
    # 64 x 16 x 16 = 16384 inputs; a 3x3 kernel reads 576 of them per neuron, a range of rows many more
    layer = conv("c", (64, 16, 16), 4, kernel=3, padding=1)
    r = map_network(net_of(layer), LOIHI1)
    cores = r.layer_cores(0)
    assert r.layers[0].bound_by == "axons_in"
    assert cores[-1].stop == layer.n_out and all(c.axons_in <= 4096 for c in cores)
    for c in cores[:-1]:  # maximal: one more neuron would break a limit
        assert c.axons_in == np.count_nonzero(brute_force_counts(layer, c.start, c.stop))
        grown = np.count_nonzero(brute_force_counts(layer, c.start, c.stop + 1))
        assert grown > 4096 or c.neurons == 1024 or (c.neurons + 1) * 576 > 128 * 1024


def test_conv_weight_sharing_stores_one_kernel_per_channel():
    layer = conv("c", (3, 8, 8), 4, kernel=3, padding=1)
    dense_expanded = map_network(net_of(layer), LOIHI2).layers[0].synapses
    shared = map_network(net_of(layer), dataclasses.replace(LOIHI2, conv_weight_sharing=True)).layers[0].synapses
    assert dense_expanded == in_degree(layer).sum()
    assert shared == 4 * 27  # 4 output channels x (3 x 3 x 3) weights


def test_cores_fill_chips_and_tiles_in_order():
    chip = dataclasses.replace(LOIHI1, neurons_per_core=10)
    r = map_network(net_of(dense("a", 4, 45), dense("b", 45, 30)), chip)
    assert r.n_cores == 8 and r.n_chips == 1 and r.tiles_used == 2
    assert [c.tile_xy for c in r.cores] == [(0, 0)] * 4 + [(1, 0)] * 4
    assert r.layers[1].cores == (5, 6, 7)


def test_refuses_fan_in_above_the_axon_limit():
    with pytest.raises(MappingError, match=r"layer 'wide'.*fan-in.*5000 input axons.*4096.*Fix"):
        map_network(net_of(dense("wide", 5000, 10)), LOIHI1)


def test_refuses_too_many_neurons_for_one_chip_and_names_the_fix():
    net = net_of(dense("small", 8, 16), dense("huge", 16, 140_000))
    with pytest.raises(MappingError, match=r"layer 'huge'.*needs 2 chips.*max_chips=1.*Fix: pass max_chips=2"):
        map_network(net, LOIHI1)
    r = map_network(net, LOIHI1, max_chips=2)
    assert r.n_chips == 2 and r.n_cores == 1 + 137  # ceil(140000 / 1024) = 137
    assert isinstance(MappingError("x"), ValueError)


def test_chip_spec_is_validated_and_sourced():
    with pytest.raises(ValueError, match="neurons_per_core=0"):
        dataclasses.replace(LOIHI1, neurons_per_core=0)
    with pytest.raises(ValueError, match="mesh_tiles"):
        dataclasses.replace(LOIHI1, mesh_tiles=(2, 2))
    for chip in (LOIHI1, LOIHI2):
        for f in dataclasses.fields(ChipSpec):
            if f.type == "int":
                assert chip.source_of(f.name), f"{chip.name}.{f.name} has no source"
    assert (LOIHI1.cores_per_chip, LOIHI1.neurons_per_core, LOIHI1.memory_bytes_per_core) == (128, 1024, 131072)
    assert (LOIHI2.neurons_per_core, LOIHI2.memory_bytes_per_core) == (8192, 192 * 1024)
    assert (LOIHI2.neurons_per_chip, LOIHI2.synapses_per_chip) == (1_000_000, 120_000_000)


def test_resource_map_is_json_and_prints_a_table():
    net = net_of(conv("c1", (2, 8, 8), 4, kernel=3, stride=2, padding=1), dense("fc", 64, 10, readout=True))
    r = map_network(net, LOIHI2)
    d = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert d["n_cores"] == 2 and d["chip"]["name"] == "LOIHI2" and d["layers"][0]["n_cores"] == 1
    assert d["chip"]["sources"]["memory_bytes_per_core"].startswith("Intel")
    text = r.table()
    assert "LOIHI2: 2 cores on 1 chip(s)" in text and "c1" in text and "fc" in text
