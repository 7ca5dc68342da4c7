"""``python -m neurohw.lava deploy CHECKPOINT.nir --timesteps T [--data test.npz] ...``: deploy a spiking network
to simulated Loihi and print the resource map, the quantization error per layer, accuracy (deployed vs float),
energy and time per inference; ``--lava N`` also runs N samples in Lava and checks the spike trains bit for bit.

CHECKPOINT is a NIR graph (``snn.nir.export_nir(model, input_shape=...)`` then ``nir.write(path, graph)``); the
data file an ``.npz`` with ``x`` (float, ``(N, *input_shape)``, values in ``[0, --input-max]``) and optional ``y``
(int labels). Exit status 2 on bad input or a network that does not fit, with the reason.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from neurohw.io import atomic_write_json


def _load_data(path: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise FileNotFoundError(f"--data {path}: no such file (an .npz with x (N, ...) and optional y (N,))")
    with np.load(path, allow_pickle=False) as z:
        if "x" not in z:
            raise ValueError(f"--data {path}: no array 'x' (found {sorted(z.files)}); save inputs as x=..., labels as y=...")
        x = z["x"][:limit]
        y = z["y"][:limit] if "y" in z else None
    if y is not None and len(y) != len(x):
        raise ValueError(f"--data {path}: {len(x)} inputs but {len(y)} labels")
    return x, y


def main(argv: list[str] | None = None) -> int:
    from neurohw.lava.mapping import CHIPS

    chips = {name.lower(): chip for name, chip in CHIPS.items()}
    p = argparse.ArgumentParser(prog="python -m neurohw.lava", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("deploy", help="export, map, evaluate (and optionally run in Lava) a NIR spiking network")
    d.add_argument("checkpoint", type=Path, help="a .nir file (feed-forward Affine/Linear/Conv2d/Flatten/LIF/IF chain)")
    d.add_argument("--timesteps", type=int, required=True, help="timesteps T of the float network (Loihi runs T + layers)")
    d.add_argument("--data", type=Path, help=".npz with x (and y): evaluate accuracy, activity, energy and time")
    d.add_argument("--limit", type=int, default=None, help="evaluate only the first N samples of --data")
    d.add_argument("--input-max", type=float, default=1.0, help="largest input value (8-bit graded input scale; default 1)")
    d.add_argument("--input-levels", type=int, default=None,
                   help="graded input levels over [0, --input-max] (<= 255; default 255; digits: 16, exact)")
    d.add_argument("--dt", type=float, default=1e-4, help="seconds per timestep in the NIR graph (snn.nir's default 1e-4)")
    d.add_argument("--chip", choices=sorted(chips), default="loihi2", help="core limits and placement (default loihi2)")
    d.add_argument("--max-chips", type=int, default=1, help="refuse networks needing more chips (default 1)")
    d.add_argument("--lava", type=int, default=0, metavar="N",
                   help="also run the first N samples of --data in Lava (sidecar .venv-lava) and compare bit for bit")
    d.add_argument("--lava-timeout", type=float, default=600.0, help="seconds before the Lava sidecar is stopped")
    d.add_argument("--save", type=Path, help="write the fixed-point network here (network.json + weights.npz)")
    d.add_argument("--report", type=Path, help="write the whole report as JSON here")
    args = p.parse_args(argv)

    from neurohw.lava.deploy import check_against_lava, deploy, evaluate
    from neurohw.lava.export import ExportError
    from neurohw.lava.mapping import MappingError
    from neurohw.lava.sidecar import LavaSidecarError

    try:
        if args.lava and args.data is None:
            raise ValueError("--lava N needs --data (the samples to run)")
        dep = deploy(args.checkpoint, timesteps=args.timesteps, chip=chips[args.chip], max_chips=args.max_chips,
                     input_max=args.input_max, input_levels=args.input_levels, dt=args.dt)
        data = _load_data(args.data, args.limit) if args.data else None
    except (ExportError, MappingError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    net = dep.network
    report = {"checkpoint": str(args.checkpoint), "timesteps": args.timesteps, "loihi_steps": dep.steps,
              "quantization": net.source["quantization"], "resource_map": dep.resource_map.to_dict()}
    print(dep.resource_map.table())
    print("\nquantization (relative RMS error of the represented weights / biases; threshold and leak relative error):")
    for name, q in net.source["quantization"].items():
        th = "-" if q["threshold_rel_error"] is None else f"{q['threshold_rel_error']:.2e}"
        print(f"  {name:<16} weights {q['weight_rel_rms_error']:.2e}  bias {q['bias_rel_rms_error']:.2e}  threshold {th}  "
              f"leak {q['leak_rel_error']:.2e}  (scale bound by: {q['binding_limit']})")
    if data is not None:
        x, y = data
        try:
            ev = evaluate(dep, x, y)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        report["evaluation"] = ev
        e = ev["energy"]
        print(f"\n{ev['samples']} samples, T = {args.timesteps} ({dep.steps} Loihi steps)")
        if y is not None:
            print(f"  accuracy: deployed {ev['accuracy_deployed']:.4f}, float {ev['accuracy_float']:.4f}")
        print(f"  decisions equal to the float network's: {ev['decision_agreement']:.4f}")
        print(f"  per inference: energy {e['total_j'] * 1e6:.3f} uJ (dynamic {e['dynamic_j'] * 1e6:.3f} uJ), "
              f"time {e['time_s'] * 1e6:.1f} us")
        if args.lava:
            try:
                lv = check_against_lava(dep, x[: args.lava], timeout_s=args.lava_timeout)
            except LavaSidecarError as err:
                print(f"  Lava: failed ({err}); the other results stand", file=sys.stderr)
                report["lava"] = {"error": str(err)}
            else:
                report["lava"] = lv
                print(f"  Lava ({lv['samples']} samples): bit-exact {lv['bit_exact']}, "
                      f"{lv['lava_steps_per_second']:.0f} steps/s vs simulator {lv['sim_steps_per_second']:.0f} steps/s")
    if args.save:
        net.save(args.save)
        print(f"\nfixed-point network written to {args.save}")
    if args.report:
        atomic_write_json(args.report, json.loads(json.dumps(report, default=float)))
        print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
