r"""Lava side of the sidecar: run a saved :class:`~neurohw.lava.network.LoihiNetwork` in Lava's bit-accurate CPU
simulation (``Loihi2SimCfg(select_tag="fixed_pt")``) and write every layer's spikes and the last layer's final ``v``.

Run by :func:`neurohw.lava.sidecar.run_lava` in the Python 3.10 environment ``.venv-lava`` (numpy + lava-nc only)::

    .venv-lava/bin/python neurohw/lava/_lava_runner.py REQUEST_DIR

Protocol (version 1; every file written atomically, no pickle):

* in ``REQUEST_DIR``: ``request.json`` ``{"format": "neuromfm-lava-request", "version": 1, "timesteps": T}``,
  ``net/`` (``LoihiNetwork.save``), ``inputs.npz`` with ``x``: int32 ``(N, *input_shape)`` (the same graded input
  at every step) or ``(N, T, *input_shape)``.
* out, on success (exit code 0): ``outputs.npz`` with ``spikes_l{i}`` uint8 ``(N, T, n_out_i)`` (flattened in torch
  ``(C, H, W)`` order) and ``v_final`` int32 ``(N, n_out_last)``; then ``result.json`` ``{"format":
  "neuromfm-lava-result", "version": 1, "lava_version", "samples", "timesteps", "run_seconds", "total_seconds",
  "strategy"}`` (``run_seconds``: wall time of the ``run`` calls only, without compiling and starting processes).
* out, on failure (exit code 2): ``error.json`` ``{"error": "Type: message", "stage": "import" | "request" |
  "build" | "run" | "write", "traceback": str}``.

The Lava network, per layer ``l``: ``Dense`` (``weight_exp`` as a process parameter, ``num_message_bits =
input_bits`` for layer 0's graded input and 0 for spikes) or ``Conv`` (``num_message_bits`` likewise; Lava's
fixed-point Conv ignores ``weight_exp``), then ``LIF(shape, du, dv, vth, bias_mant, bias_exp)``. Input: a
``lava.proc.io.source.RingBuffer`` (int32) holding the samples one after the other (column ``s * T + t``). All
layers' ``s_out`` go to one recorder process (``_recorder_classes``). The maths these processes compute, as measured
against lava-nc 0.10.0, is in :mod:`neurohw.lava.network`.

Layouts: Lava's ``Conv`` works on ``(W, H, C)`` ("WHC", x first) tensors with ``(out, kW, kH, in/groups)`` kernels
applied as a true convolution (``scipy.signal.convolve2d``), with ``padding``/``stride``/``dilation`` in (x, y)
order, so a torch ``(O, I, kH, kW)`` kernel is flipped in both spatial axes and transposed to ``(O, kW, kH, I)``.
Every tensor that a conv produces or consumes is held in WHC order, dense weights and biases are permuted to match
(``_Layout``) and everything read back is permuted to torch order.

Samples run one after another in ONE compiled network (compiling and starting the ~2L+2 processes costs ~0.7 s,
resetting ~3 set calls per layer a few ms): after each sample's ``T`` steps every state that the models carry from
step to step (LIF ``u``, ``v``; Dense ``a_buff``; Conv ``a_buf``, the one-step synaptic delay) is set back to 0,
which makes the next sample run exactly as in a fresh network (no message is in flight between steps: each
step's messages are consumed in that step; checked against fresh per-sample runs).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

REQUEST_FORMAT, RESULT_FORMAT, PROTOCOL_VERSION = "neuromfm-lava-request", "neuromfm-lava-result", 1
EXIT_ERROR = 2


class _Stage:
    """Which part of the run is going on, reported in ``error.json`` so the caller can say what to fix."""

    def __init__(self) -> None:
        self.name = "import"


# -------------------------------------------------------------------------------------------------- atomic writes
def _atomic_write(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_json(path: Path, obj: dict) -> None:
    _atomic_write(path, lambda f: f.write(json.dumps(obj, indent=1, allow_nan=False).encode()))


# -------------------------------------------------------------------------------------------------- layouts
def _whc_perm(chw: tuple[int, ...]) -> np.ndarray:
    """Torch flat indices in Lava's WHC order: ``lava_flat[j] = torch_flat[perm[j]]`` for a ``(C, H, W)`` tensor."""
    c, h, w = chw
    return np.arange(c * h * w).reshape(c, h, w).transpose(2, 1, 0).reshape(-1)  # (C,H,W) -> (W,H,C) -> flat


@dataclass(frozen=True)
class _Layout:
    """How one tensor (the input or a layer's output) is held in Lava: ``shape`` of its population / port and
    ``perm`` with ``lava_flat[j] = torch_flat[perm[j]]``."""

    shape: tuple[int, ...]
    perm: np.ndarray

    @classmethod
    def of(cls, n: int, chw: tuple[int, ...] | None) -> _Layout:
        if chw is None:
            return cls((n,), np.arange(n))
        return cls((chw[2], chw[1], chw[0]), _whc_perm(chw))


def _layouts(net) -> list[_Layout]:
    """Layout of tensor ``k`` (``k = 0``: the input, ``k = l + 1``: layer ``l``'s output): WHC with the conv's
    ``(C, H, W)`` view when a conv produces or consumes it, flat otherwise."""
    layers = net.layers
    out = []
    for k in range(len(layers) + 1):
        producer = layers[k - 1] if k > 0 else None
        consumer = layers[k] if k < len(layers) else None
        n = math.prod(net.input_shape) if producer is None else producer.n_out
        chw = None
        if consumer is not None and consumer.kind == "conv":
            chw = consumer.in_shape
        if producer is not None and producer.kind == "conv":
            if chw is not None and tuple(chw) != tuple(producer.out_shape):
                raise ValueError(f"layer {consumer.name!r}: conv input shape {consumer.in_shape} differs from the "
                                 f"previous conv's output shape {producer.out_shape}")
            chw = producer.out_shape
        if chw is not None and len(chw) != 3:
            raise ValueError(f"tensor {k}: a conv needs a (C, H, W) shape, got {chw}")
        out.append(_Layout.of(n, tuple(chw) if chw is not None else None))
    return out


def _to_lava(flat_torch: np.ndarray, layout: _Layout) -> np.ndarray:
    """``(n, ...)`` in torch order -> ``(*layout.shape, ...)`` in Lava order."""
    return flat_torch[layout.perm].reshape(layout.shape + flat_torch.shape[1:])


def _to_torch(lava: np.ndarray, layout: _Layout) -> np.ndarray:
    """``(*layout.shape, ...)`` in Lava order -> ``(n, ...)`` in torch order."""
    n = layout.perm.size
    flat = lava.reshape((n,) + lava.shape[len(layout.shape):])
    out = np.empty_like(flat)
    out[layout.perm] = flat
    return out


# -------------------------------------------------------------------------------------------------- network
def _recorder_classes(n_ports: int):
    """A spike recorder process + its model with ports ``in_0 .. in_{n_ports-1}``: each step it writes what port
    ``i`` receives (``!= 0``) into row ``time_step - 1`` of ``paths[i]``, a ``(steps, n_i)`` uint8 ``.npy`` file shared
    with the parent (``np.load(mmap_mode="r+")``).

    Exactly what the LIFs send, like ``lava.proc.io.sink.RingBuffer``, but one process for all layers and without
    reading the data back through ``Var.get`` (which moves one float64 per message: ~17 us per element, 3x the whole
    run on a 266-neuron network). It reaches the compiler through ``exception_proc_model_map``, so Lava does not
    search this module's folder for process models (it would execute every module there).
    """
    from lava.magma.core.decorator import implements, requires
    from lava.magma.core.model.py.model import PyLoihiProcessModel
    from lava.magma.core.model.py.ports import PyInPort
    from lava.magma.core.model.py.type import LavaPyType
    from lava.magma.core.process.ports.ports import InPort
    from lava.magma.core.process.process import AbstractProcess
    from lava.magma.core.resources import CPU
    from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

    class SpikeRecorder(AbstractProcess):
        def __init__(self, *, shapes: list[tuple[int, ...]], paths: list[str]) -> None:
            super().__init__(shapes=shapes, paths=paths, name="spike_recorder")
            for i, shape in enumerate(shapes):
                setattr(self, f"in_{i}", InPort(shape=shape))

    def run_spk(self) -> None:
        if self._rows is None:  # opened in the process that runs the model
            self._rows = [np.load(p, mmap_mode="r+") for p in self.proc_params["paths"]]
        for i, rows in enumerate(self._rows):
            rows[self.time_step - 1] = getattr(self, f"in_{i}").recv().reshape(-1) != 0

    ports = {f"in_{i}": LavaPyType(PyInPort.VEC_DENSE, np.int32) for i in range(n_ports)}
    model = type("PySpikeRecorderModel", (PyLoihiProcessModel,), {**ports, "_rows": None, "run_spk": run_spk})
    model = implements(proc=SpikeRecorder, protocol=LoihiProtocol)(requires(CPU)(model))
    return SpikeRecorder, model


@dataclass
class _Built:
    source: object
    synapses: list
    lifs: list
    recorder: object
    layouts: list[_Layout]
    model_map: dict


def _input_data(x: np.ndarray, t_steps: int, layout: _Layout) -> np.ndarray:
    """Samples ``(S, *input_shape)`` or ``(S, T, *input_shape)`` -> the source buffer ``(*layout.shape, S * T)``
    (sample ``s``, step ``t`` at column ``s * T + t``)."""
    n = layout.perm.size
    flat = x.reshape(x.shape[0], -1, n)  # (S, 1 or T, n)
    flat = np.broadcast_to(flat, (x.shape[0], t_steps, n)).reshape(-1, n).T  # (S*T, n) -> (n, S*T)
    return np.ascontiguousarray(_to_lava(flat, layout), dtype=np.int32)


def build(net, t_steps: int, x: np.ndarray, record_dir: Path) -> _Built:
    """Build the Lava processes of ``net`` (connected, not compiled), the source holding the samples ``x`` one after
    the other and layer ``i``'s spikes recorded into ``record_dir / f"l{i}.npy"`` (``(S * T, n_out_i)``, Lava order)."""
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF

    recorder_cls, recorder_model = _recorder_classes(len(net.layers))
    layouts = _layouts(net)
    steps = x.shape[0] * t_steps
    source = Source(data=_input_data(x, t_steps, layouts[0]))
    port, synapses, lifs = source.s_out, [], []
    for i, layer in enumerate(net.layers):
        lin, lout = layouts[i], layouts[i + 1]
        message_bits = int(net.input_bits) if i == 0 else 0  # > 0: graded payload, 0: binary spikes
        if layer.kind == "dense":
            w = layer.weight[lout.perm][:, lin.perm]  # (out, in) torch order -> Lava order of both tensors
            syn = Dense(weights=np.ascontiguousarray(w, dtype=np.int32), weight_exp=int(layer.weight_exp),
                        num_message_bits=message_bits, name=f"{layer.name}.dense")
            (port if len(lin.shape) == 1 else port.flatten()).connect(syn.s_in)
            a_out = syn.a_out if len(lout.shape) == 1 else syn.a_out.reshape(lout.shape)
        else:
            g = layer.conv
            # (O, I/g, kH, kW) torch correlation -> (O, kW, kH, I/g) Lava convolution (flip both spatial axes)
            w = layer.weight[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)
            syn = Conv(weight=np.ascontiguousarray(w, dtype=np.int32), input_shape=lin.shape,
                       padding=g.padding[::-1], stride=g.stride[::-1], dilation=g.dilation[::-1], groups=g.groups,
                       weight_exp=int(layer.weight_exp), num_message_bits=message_bits, name=f"{layer.name}.conv")
            if tuple(int(v) for v in syn.output_shape) != lout.shape:
                raise ValueError(f"layer {layer.name!r}: Lava's Conv gives a (W, H, C) output "
                                 f"{tuple(syn.output_shape)}, the network says (C, H, W) {layer.out_shape}")
            port.connect(syn.s_in)
            a_out = syn.a_out
        lif = LIF(shape=lout.shape, du=int(layer.du), dv=int(layer.dv), vth=int(layer.vth),
                  bias_mant=_to_lava(layer.bias_mant.reshape(-1), lout), bias_exp=int(layer.bias_exp),
                  name=f"{layer.name}.lif")
        a_out.connect(lif.a_in)
        synapses.append(syn)
        lifs.append(lif)
        port = lif.s_out
    paths = [str(record_dir / f"l{i}.npy") for i in range(len(net.layers))]
    for path, layer in zip(paths, net.layers):
        np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(steps, layer.n_out)).flush()
    recorder = recorder_cls(shapes=[layout.shape for layout in layouts[1:]], paths=paths)
    for i, lif in enumerate(lifs):
        lif.s_out.connect(getattr(recorder, f"in_{i}"))
    return _Built(source, synapses, lifs, recorder, layouts, {recorder: recorder_model})


def _reset(built: _Built) -> None:
    """Back to a fresh network: every state that the models carry from step to step set to 0."""
    for syn, lif in zip(built.synapses, built.lifs):
        buf = syn.a_buff if hasattr(syn, "a_buff") else syn.a_buf  # Dense / Conv: the one-step synaptic delay
        buf.set(np.zeros(buf.shape, dtype=np.int32))
        lif.u.set(np.zeros(lif.u.shape, dtype=np.int32))
        lif.v.set(np.zeros(lif.v.shape, dtype=np.int32))


def _run_chunk(net, x: np.ndarray, t_steps: int, work: Path,
               stage: _Stage) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Samples ``x`` (``S`` of them) in one compiled network, state reset between them."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    stage.name = "build"
    built = build(net, t_steps, x, work)
    last = built.lifs[-1]
    last.create_runtime(run_cfg=Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map=built.model_map))
    n = x.shape[0]
    v_final = np.zeros((n, net.layers[-1].n_out), dtype=np.int32)
    run_seconds = 0.0
    try:
        stage.name = "run"
        for s in range(n):
            if s:
                _reset(built)
            t0 = time.perf_counter()
            last.run(condition=RunSteps(num_steps=t_steps))
            run_seconds += time.perf_counter() - t0
            v_final[s] = _to_torch(np.asarray(last.v.get()).astype(np.int32), built.layouts[-1])
    finally:
        last.stop()
    spikes = []
    for i, layer in enumerate(net.layers):
        rows = np.load(work / f"l{i}.npy")  # (S*T, n) in Lava order
        torch_rows = np.empty_like(rows)
        torch_rows[:, built.layouts[i + 1].perm] = rows  # (S*T, n) in torch order
        spikes.append(torch_rows.reshape(n, t_steps, layer.n_out))
    return spikes, v_final, run_seconds


MAX_SOURCE_ELEMENTS = 2 ** 24  # input values held by one source (64 MiB); more samples run in further networks


def run_network(net, x: np.ndarray, t_steps: int, work: Path,
                stage: _Stage | None = None) -> tuple[list[np.ndarray], np.ndarray, float]:
    """Run every sample of ``x`` for ``t_steps`` steps: (spikes per layer ``(N, T, n_out)`` uint8, final ``v`` of the
    last layer ``(N, n_out)`` int32, seconds spent in ``run``). ``work``: a folder for the spike recordings."""
    stage = stage or _Stage()
    per_chunk = max(1, MAX_SOURCE_ELEMENTS // (t_steps * math.prod(net.input_shape)))
    parts = [_run_chunk(net, x[i:i + per_chunk], t_steps, work, stage) for i in range(0, x.shape[0], per_chunk)]
    spikes = [np.concatenate([p[0][i] for p in parts]) for i in range(len(net.layers))]
    return spikes, np.concatenate([p[1] for p in parts]), sum(p[2] for p in parts)


# -------------------------------------------------------------------------------------------------- entry point
def _read_request(req: Path):
    from neurohw.lava.network import LoihiNetwork

    meta = json.loads((req / "request.json").read_text())
    if meta.get("format") != REQUEST_FORMAT or meta.get("version") != PROTOCOL_VERSION:
        raise ValueError(f"request.json: format {meta.get('format')!r} version {meta.get('version')!r}; this runner "
                         f"reads {REQUEST_FORMAT!r} version {PROTOCOL_VERSION}")
    t_steps = meta.get("timesteps")
    if not isinstance(t_steps, int) or t_steps < 1:
        raise ValueError(f"request.json: timesteps={t_steps!r}; need an integer >= 1")
    net = LoihiNetwork.load(req / "net")
    with np.load(req / "inputs.npz", allow_pickle=False) as z:
        x = np.asarray(z["x"])
    if x.dtype.kind not in "iu":
        raise ValueError(f"inputs.npz: x has dtype {x.dtype}; need integer graded spikes (int32)")
    shape = tuple(net.input_shape)
    if x.shape[1:] not in (shape, (t_steps,) + shape):
        raise ValueError(f"inputs.npz: x has shape {x.shape}; need (N, *{shape}) or (N, {t_steps}, *{shape})")
    return net, x.astype(np.int32), t_steps


def _lava_version() -> str:
    from importlib.metadata import version

    return version("lava-nc")


def main(argv: list[str]) -> int:
    t_start = time.perf_counter()
    if len(argv) != 2:
        print(f"usage: {argv[0]} REQUEST_DIR", file=sys.stderr)
        return EXIT_ERROR
    req = Path(argv[1]).resolve()
    stage = _Stage()
    try:
        import lava.magma.core.run_configs  # noqa: F401  (fails here when the environment has no working Lava)
        lava_version = _lava_version()
        stage.name = "request"
        net, x, t_steps = _read_request(req)
        with tempfile.TemporaryDirectory(dir=req, prefix=".lava-work-") as work:
            spikes, v_final, run_seconds = run_network(net, x, t_steps, Path(work), stage)
        stage.name = "write"
        arrays = {f"spikes_l{i}": s for i, s in enumerate(spikes)}
        arrays["v_final"] = v_final
        _atomic_write(req / "outputs.npz", lambda f: np.savez(f, **arrays))
        _write_json(req / "result.json", {
            "format": RESULT_FORMAT, "version": PROTOCOL_VERSION, "lava_version": lava_version,
            "samples": int(x.shape[0]), "timesteps": t_steps, "run_seconds": run_seconds,
            "total_seconds": time.perf_counter() - t_start, "strategy": "one compiled network, state reset per sample"})
        return 0
    except BaseException as e:  # noqa: BLE001  (everything goes to error.json; the caller reads it)
        traceback.print_exc()
        try:
            _write_json(req / "error.json", {"error": f"{type(e).__name__}: {e}", "stage": stage.name,
                                             "traceback": traceback.format_exc()})
        except OSError as write_error:  # e.g. REQUEST_DIR is gone: stderr and the exit code still tell
            print(f"could not write error.json: {write_error}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv))
