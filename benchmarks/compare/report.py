"""The report of :mod:`benchmarks.compare`: one table, notes, errors, reproduction commands, and two plots."""

from __future__ import annotations

from pathlib import Path

from benchmarks.common import format_table, format_targets, save_figure

__all__ = ["COLUMNS", "table_rows", "text_table", "markdown", "plot_pareto", "plot_energy"]

COLUMNS = ("task", "track", "variant", "metric", "quality", "params", "memory kB (w + state)", "CPU ms/sample",
           "accel bits", "accel cycles", "accel ms", "E compute uJ", "E data movement uJ", "E total uJ", "Loihi uJ (dynamic)",
           "Loihi ms", "firing rate", "T")


LEFT_OUT = (
    "the code cascade (small code LM -> SmolLM2 with self-tests in the sandbox): its quality is pass@1 on generated "
    "programs, not the code rows' held-out bits per byte, and it trains for about 50 minutes and evaluates for about "
    "25 on 2 cores; `python -m benchmarks.cascade` measures it (and the SynthMed cascade, which is a row here)",
    "speculative decoding and a cascade on digits: a one-pass classifier has no decode to speculate on, and the "
    "digits models are small enough that a cheaper tier would save next to nothing",
)


def _get(d: dict | None, *keys):
    for k in keys:
        if d is None:
            return None
        d = d.get(k)
    return d


def _loihi_uj(loihi: dict | None) -> str | None:
    if not loihi:
        return None
    if "energy_uj" not in loihi:
        return "n/a (see notes)"
    return f"{loihi['energy_uj']:.3g} ({loihi['dynamic_uj']:.3g} dyn.)"


def table_rows(rows: list[dict]) -> list[list[object]]:
    out = []
    for r in rows:
        if r.get("error"):
            out.append([r["task"], r["track"], r["variant"], "FAILED", r["error"][:80], *[None] * (len(COLUMNS) - 5)])
            continue
        m = r["memory_bytes"]
        a = r["accel"]
        out.append([r["task"], r["track"], r["variant"], r["metric"], r["quality"], r["params"],
                    f"{m['total'] / 1e3:.1f} ({m['weights'] / 1e3:.1f} + {m['state'] / 1e3:.1f})", r["cpu_ms_per_sample"],
                    _get(a, "bits"), _get(a, "cycles"), _get(a, "latency_ms"), _get(a, "energy_uj", "compute"),
                    _get(a, "energy_uj", "data_movement"), _get(a, "energy_uj", "total"), _loihi_uj(r["loihi"]), _get(r["loihi"], "time_ms"), r["firing_rate"], r["timesteps"]])
    return out


def text_table(rows: list[dict]) -> str:
    return format_table(COLUMNS, table_rows(rows))


def markdown(payload: dict, targets) -> str:
    rows, meta = payload["rows"], payload["meta"]
    lines = ["# neuromfm compare", "",
             f"`{meta['command']}`: profile `{meta['profile']}`, seed {meta['seed']}, {meta['wall_time_s']:.0f} s on "
             f"{meta['machine'].get('cpu_count')} CPU cores"
             + (f"; trained this run: {', '.join(meta['trained_this_run'])}" if meta["trained_this_run"] else
                "; every checkpoint came from the cache") + ".", "",
             "Accelerator: the `default` preset of `neurohw.accel`, one inference, at the row's integer widths (fp32 rows, "
             "ANN or spiking, at INT16). A language model's inference (the SynthMed MFMs, every code row) is the greedy "
             "decode it runs with its cache (key/value, or key/value spikes), one accelerator call per step. Energy is "
             "split into compute (MACs, synaptic ops, vector units) and data movement (SRAM + DRAM). Memory is weights + "
             "state (membranes, a language model's cache) at their stored widths. Loihi: the fixed-point network on the "
             "simulated Loihi 2 (`neurohw.lava`), only for spiking rows that deploy.", "",
             format_table(COLUMNS, table_rows(rows), markdown=True), "", "## Targets", "",
             format_targets(targets, markdown=True), "", "## Notes per row", ""]
    for r in rows:
        if not r.get("error") and (r.get("notes") or _get(r, "loihi", "reason")):
            why = _get(r, "loihi", "reason")
            lines.append(f"- **{r['variant']}** ({r['task']}): {r['notes']}" + (f" Loihi: {why}." if why else ""))
    errors = [r for r in rows if r.get("error")]
    if errors:
        lines += ["", "## Failed rows", ""] + [f"- `{r['id']}`: {r['error']}" for r in errors]
    lines += ["", "## Not in this table", ""] + [f"- {x}" for x in LEFT_OUT]
    lines += ["", "## Reproduce", "", f"- everything: `{meta['command']}`"]
    for cmd in dict.fromkeys(r.get("reproduce") for r in rows if r.get("reproduce")):
        lines.append(f"- `{cmd}`")
    return "\n".join(lines) + "\n"


def _pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """The points no other point beats on both energy (lower) and quality."""
    sign = 1 if higher_is_better else -1
    front, best = [], float("-inf")
    for e, q in sorted(points, key=lambda p: (p[0], -sign * p[1])):
        if sign * q > best:
            front.append((e, q))
            best = sign * q
    return front


def plot_pareto(rows: list[dict], path: Path) -> None:
    """Quality vs accelerator energy per inference, one panel per task (ANN squares, SNN circles, numbered, with a
    key under each panel), and the Pareto front (lower energy, better quality)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows if r.get("accel")))
    if not tasks:
        return
    n_max = max(sum(1 for r in rows if r["task"] == t and r.get("accel")) for t in tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.5 + 0.17 * n_max), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        pts = [r for r in rows if r["task"] == task and r.get("accel")]
        for track, marker, color in (("ann", "s", "tab:blue"), ("snn", "o", "tab:orange")):
            sel = [(i, r) for i, r in enumerate(pts, 1) if r["track"] == track]
            ax.scatter([r["accel"]["energy_uj"]["total"] for _, r in sel], [r["quality"] for _, r in sel], marker=marker,
                       color=color, label=track.upper())
            for i, r in sel:
                ax.annotate(str(i), (r["accel"]["energy_uj"]["total"], r["quality"]), textcoords="offset points",
                            xytext=(4, 3), fontsize=8)
        front = _pareto([(r["accel"]["energy_uj"]["total"], r["quality"]) for r in pts], pts[0]["higher_is_better"])
        ax.plot(*zip(*front), color="grey", linestyle="--", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("accelerator energy per inference (uJ)")
        ax.set_ylabel(pts[0]["metric"] + ("" if pts[0]["higher_is_better"] else " (lower is better)"))
        ax.set_title(task)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        key = "\n".join(f"{i}: {r['track'].upper()} {r['variant']}" for i, r in enumerate(pts, 1))
        ax.text(0.0, -0.16, key, transform=ax.transAxes, va="top", fontsize=7, family="monospace")
    fig.tight_layout()
    save_figure(fig, path)


def plot_energy(rows: list[dict], path: Path) -> None:
    """Accelerator energy per inference of every row: compute and data movement side by side (log scale: they
    differ by orders of magnitude), one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in rows if r.get("accel")]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    if not tasks:
        return
    heights = [sum(1 for r in rows if r["task"] == t) for t in tasks]
    fig, axes = plt.subplots(len(tasks), 1, figsize=(11, 0.45 * sum(heights) + 1.2 * len(tasks)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, task in zip(axes[:, 0], tasks):
        sel = [r for r in rows if r["task"] == task]
        y = np.arange(len(sel))
        comp = [r["accel"]["energy_uj"]["compute"] for r in sel]
        data = [r["accel"]["energy_uj"]["data_movement"] for r in sel]
        ax.barh(y - 0.2, comp, height=0.4, label="compute")
        ax.barh(y + 0.2, data, height=0.4, label="data movement (SRAM + DRAM)")
        ax.set_yticks(y, [f"{r['track'].upper()} {r['variant']} ({r['accel']['energy_uj']['total']:.3g} uJ)" for r in sel],
                      fontsize=7)
        ax.set_xscale("log")
        ax.invert_yaxis()
        ax.set_title(task, fontsize=9)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("accelerator energy per inference (uJ, log)")
    fig.tight_layout()
    save_figure(fig, path)
