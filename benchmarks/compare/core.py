r"""The yardstick every row of ``python -m benchmarks.compare`` is measured with.

A row builder (:class:`RowSpec`) trains or loads its model (cached, :func:`cached_dir`) and returns a
:class:`Measured`: its quality on the task's test split and what the yardstick needs (the model and an example
batch to trace, the widths it runs at, its memory). :func:`finish_row` then measures, the same way for every row:

- **accelerator** (:mod:`neurohw.accel`, preset ``default``): the model traced on the example batch
  (:func:`neurohw.workload.trace`: measured spike rates for a spiking model) at the row's integer widths and mapped
  op by op: cycles, latency, energy split into compute and data movement (SRAM + DRAM), per inference. The
  accelerator computes in integers: an fp32 row, ANN or SNN, is mapped at INT16 weights and activations (and
  16-bit membranes) on the same preset with 16-bit multipliers; a row stored at integer widths (int8 PTQ, mixed
  precision, a tiered-quantized SNN, Loihi's fixed point) is mapped at those (the column ``accel bits`` says which);
- **memory**: weights at their stored widths + state (membrane potentials of one inference for spiking models,
  counted by :func:`membranes`; the key/value cache of the evaluated context for LMs; 0 for a feed-forward ANN,
  whose activations do not persist);
- **CPU latency**: median wall time of the row's forward (or decode) over ``repeats`` runs, per sample;
- **Loihi** (spiking rows that deploy, :mod:`neurohw.lava`): energy and time per inference of the fixed-point
  network on the simulated chip; rows that cannot deploy say why.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["Measured", "RowSpec", "Context", "finish_row", "accel_cost", "cpu_ms_per_sample", "dense_weight_bytes",
           "cached_dir", "membranes", "workload_cost", "mix_accel", "ACCEL_PRESET", "FP_ACCEL_BITS"]

ACCEL_PRESET = "default"
FP_ACCEL_BITS = 16  # an fp32 row runs on the integer accelerator at this width


@dataclass
class Context:
    """What every row builder gets: the CLI's settings and a memo shared by the rows of one run (trained models)."""

    profile: str
    seed: int
    cache_dir: Path
    log: Callable[[str], None]
    progress: bool = True
    latency_repeats: int = 3
    memo: dict = field(default_factory=dict)
    trained: list = field(default_factory=list)  # cache entries made (not loaded) in this run

    def once(self, key: str, make: Callable[[], object]):
        """``make()`` the first time ``key`` is asked for in this run, the same object afterwards."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]


@dataclass
class Measured:
    """What a row builder measured itself, and what :func:`finish_row` measures from it.

    ``quality``: the task's metric on its test split (``metric`` names it, ``higher_is_better`` orders it).
    ``model`` / ``example``: traced for the accelerator (None: the row has no single model, e.g. a cascade; it
    gives ``accel`` itself). ``weight_bits`` / ``act_bits``: the integer widths it runs at on the accelerator
    (None: fp32, mapped at :data:`FP_ACCEL_BITS`). ``memory``: (weight bytes, state bytes) at their widths; state
    None: the neurons the trace counts, at ``state_bits``.
    """

    task: str
    track: str
    variant: str
    metric: str
    quality: float
    params: int
    memory: tuple[float, float | None]
    cpu_ms: float | None
    model: torch.nn.Module | None = None
    example: object = None
    timesteps: int | None = None
    weight_bits: int | None = None
    act_bits: int | None = None
    state_bits: int = 16
    firing_rate: float | None = None
    higher_is_better: bool = True
    accel: dict | None = None
    loihi: dict | None = None
    notes: str = ""
    reproduce: str = ""


@dataclass(frozen=True)
class RowSpec:
    """One row (or a family of rows, e.g. one per timestep) of the table: ``build(ctx)`` -> Measured or a list."""

    id: str
    task: str
    track: str
    build: Callable[[Context], "Measured | list[Measured]"]
    description: str = ""


def dense_weight_bytes(model: torch.nn.Module, bits: float = 32) -> float:
    """Bytes of every parameter at ``bits`` bits (fp32: 32)."""
    return sum(p.numel() for p in model.parameters()) * bits / 8


def cpu_ms_per_sample(fn: Callable[[], object], samples: int, *, repeats: int) -> float:
    """Median wall time of ``fn()`` (which processes ``samples`` samples) over ``repeats`` runs, per sample, in ms."""
    with torch.no_grad():
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    times.sort()
    return 1e3 * times[len(times) // 2] / samples


def accel_cost(model: torch.nn.Module, example, *, timesteps: int | None = None, weight_bits: int | None = None,
               act_bits: int | None = None, state_bits: int = 16, name: str = "") -> dict:
    """One inference of ``model`` on the accelerator (module docstring), per sample of ``example``."""
    from neurohw.workload import Numeric, trace

    wb, ab = weight_bits or FP_ACCEL_BITS, act_bits or FP_ACCEL_BITS
    w = trace(model, example, name=name or type(model).__name__, timesteps=timesteps, numeric=Numeric.INT,
              weight_bits=wb, act_bits=ab, state_bits=state_bits)
    return workload_cost(w)


def workload_cost(workload) -> dict:
    """The accelerator columns of a traced :class:`neurohw.workload.Workload` (e.g. from
    :func:`neurohw.workload.reference.trace_decode` for a decoding LM) at its recorded integer widths; operands wider
    than the preset's 8-bit multipliers run on the same preset with 16- (or 32-) bit multipliers."""
    from dataclasses import replace

    from neurohw.accel import PRESETS, map_workload

    wb = max(op.weight_bits for op in workload.ops)
    ab = max(op.act_bits for op in workload.ops)
    cfg = PRESETS[ACCEL_PRESET]
    if max(wb, ab) > cfg.mac_bits:
        cfg = replace(cfg, mac_bits=16 if max(wb, ab) <= 16 else 32)
    s = map_workload(cfg, workload).summary()
    e = s["energy_pj"]
    return {"preset": ACCEL_PRESET, "mac_bits": cfg.mac_bits, "bits": f"W{wb}A{ab}", "cycles": s["cycles"],
            "latency_ms": 1e3 * s["latency_s"],
            "energy_uj": {"compute": e["compute"] / 1e6, "data_movement": e["data_movement"] / 1e6,
                          "total": e["total"] / 1e6},
            "macs": s["macs"], "sops": s["sops"], "utilization": s["utilization"], "firing_rate": workload.firing_rate}


def mix_accel(parts: list[tuple[float, dict]], bits: str | None = None) -> dict:
    """The expected accelerator columns of a row that runs several models, e.g. a cascade: ``sum_i w_i * cost_i``
    over ``(w_i, cost_i)`` (w_i: the fraction of inputs that run model i, or 1 for a model every input runs)."""
    out = {"preset": ACCEL_PRESET, "bits": bits or "/".join(dict.fromkeys(c["bits"] for _, c in parts)),
           "mac_bits": max(c["mac_bits"] for _, c in parts), "firing_rate": None, "utilization": None,
           "energy_uj": {k: sum(w * c["energy_uj"][k] for w, c in parts) for k in ("compute", "data_movement", "total")}}
    for k in ("cycles", "latency_ms", "macs", "sops"):
        out[k] = sum(w * c[k] for w, c in parts)
    return out


def membranes(model: torch.nn.Module, example, timesteps: int | None) -> int:
    """Membrane potentials one inference keeps: the per-sample output size of every spiking-neuron module
    (:func:`neurohw.workload.default_is_neuron`), seen on the first sample of ``example`` (a tensor, or a dict of
    keyword inputs); a multi-step module's
    (T, 1, ...) output counts once, not T times."""
    from neurohw.workload import default_is_neuron

    first: dict[str, torch.Size] = {}

    def hook(name: str):
        def record(_m, _i, out) -> None:
            first.setdefault(name, out.shape)
        return record

    hooks = [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if default_is_neuron(m)]
    try:
        with torch.no_grad():
            if isinstance(example, dict):  # keyword inputs (the first sample of each)
                model(**{k: v[:1] if torch.is_tensor(v) else v for k, v in example.items()})
            else:
                model(example[:1])
    finally:
        for h in hooks:
            h.remove()
    total = 0
    for shape in first.values():
        n = math.prod(shape)
        total += n // timesteps if timesteps and len(shape) > 1 and shape[0] == timesteps and shape[1] == 1 else n
    return total


def finish_row(m: Measured) -> dict:
    """The row of the table for ``m``: its own measurements plus the accelerator's (module docstring)."""
    accel = m.accel
    if accel is None and m.model is not None:
        accel = accel_cost(m.model, m.example, timesteps=m.timesteps, weight_bits=m.weight_bits, act_bits=m.act_bits,
                           state_bits=min(m.state_bits, FP_ACCEL_BITS), name=m.variant)
    w, s = m.memory
    if s is None:  # the membranes of one inference, at the row's state width
        s = membranes(m.model, m.example, m.timesteps) * m.state_bits / 8
    firing = m.firing_rate if m.firing_rate is not None else (accel or {}).get("firing_rate")
    return {"task": m.task, "track": m.track, "variant": m.variant, "metric": m.metric, "quality": float(m.quality),
            "higher_is_better": m.higher_is_better, "params": int(m.params),
            "memory_bytes": {"weights": float(w), "state": float(s), "total": float(w + s)},
            "cpu_ms_per_sample": m.cpu_ms, "accel": accel, "loihi": m.loihi, "firing_rate": firing,
            "timesteps": m.timesteps, "notes": m.notes, "reproduce": m.reproduce, "error": None}


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached_dir(ctx: Context, name: str, config: dict, make: Callable[[Path], None], *,
               code: tuple[str, ...] = ()) -> tuple[Path, bool]:
    """The folder ``cache_dir/<name>-<hash of config>``: made by ``make(folder)`` into a temporary folder that is
    renamed into place only when ``make`` returns (an interrupted run leaves no half-written entry); returns
    (folder, cached). ``config`` must hold everything that shapes the result (a changed config retrains); ``code``:
    the repository paths whose source ``make`` runs (:func:`benchmarks.models.code_fingerprint` joins the config as
    ``"code"``, so an edit there retrains too)."""
    if code:
        from benchmarks.models import code_fingerprint

        config = {**config, "code": code_fingerprint(code)}
    out = ctx.cache_dir / f"{name}-{config_key(config)}"
    if (out / "done.json").is_file():
        ctx.log(f"{name}: cached ({out})")
        return out, True
    ctx.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=ctx.cache_dir))
    try:
        make(tmp)
        (tmp / "done.json").write_text(json.dumps({"config": config}, sort_keys=True, default=str))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ctx.trained.append(name)
    return out, False
