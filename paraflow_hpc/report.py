"""``paraflow-hpc report RESULT.h5 [...]``: tables and PNG plots from result files of any method.

Works from the common layout (docs/results.md): root attributes, ``/history``,
``/timings`` (one entry per rank) and ``/config``. Runs that differ only in their rank
count (and output paths) form a scaling study: speed-up and efficiency against ranks
are plotted with the ideal line, relative to the smallest rank count present.
"""
from __future__ import annotations

import csv
import json
import os

import h5py
import numpy as np

WAIT_CATEGORIES = ("wait", "send", "comm")  # time blocked in or spent on communication
PATH_OPTIONS = ("output", "checkpoint", "restart", "table", "quiet")


def load_run(path: str) -> dict:
    """One result file as plain Python/numpy values."""
    with h5py.File(path, "r") as f:
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        run = {
            "file": path,
            "attrs": attrs,
            "config": json.loads(attrs.get("config", "{}")),
            "history": {k: f["history"][k][()] for k in f.get("history", {})},
            "timings": {k: f["timings"][k][()] for k in _leaf_names(f.get("timings"))},
        }
    run["ranks"] = int(attrs.get("mpi_size", len(next(iter(run["timings"].values()), [1]))))
    totals = run["timings"].get("total")
    run["wall_seconds"] = float(np.max(totals)) if totals is not None else float("nan")
    wait = sum((v for k, v in run["timings"].items() if k.split("/")[-1] in WAIT_CATEGORIES),
               np.zeros(run["ranks"]))
    run["wait_seconds"] = np.asarray(wait, dtype=float)
    run["compute_seconds"] = (np.asarray(totals, dtype=float) - run["wait_seconds"]
                              if totals is not None else np.full(run["ranks"], np.nan))
    return run


def _leaf_names(group) -> list[str]:
    if group is None:
        return []
    names = []
    group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def to_rows(runs: list[dict]) -> list[dict]:
    """One flat summary row per run (also what ``pandas.DataFrame(to_rows(runs))`` takes)."""
    rows = []
    for run in runs:
        row = {"file": os.path.basename(run["file"]), "method": run["attrs"].get("method", ""),
               "problem": run["config"].get("problem", ""), "ranks": run["ranks"],
               "wall_seconds": run["wall_seconds"],
               "compute_seconds_mean": float(np.mean(run["compute_seconds"])),
               "wait_seconds_mean": float(np.mean(run["wait_seconds"]))}
        for key in ("iterations", "converged", "speedup"):
            if key in run["attrs"]:
                row[key] = run["attrs"][key]
        for name, series in run["history"].items():
            if series.ndim == 1 and series.size and np.issubdtype(series.dtype, np.number):
                row[f"{name}_final"] = float(series[-1])
        rows.append(row)
    return rows


def scaling_groups(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs with the same method and options except the rank count and paths."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        key_cfg = {k: v for k, v in run["config"].items() if k not in PATH_OPTIONS}
        key = json.dumps([run["attrs"].get("method"), key_cfg], sort_keys=True)
        groups.setdefault(key, []).append(run)
    return {k: sorted(v, key=lambda r: r["ranks"]) for k, v in groups.items()
            if len({r["ranks"] for r in v}) > 1}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_tables(rows: list[dict], out_dir: str) -> tuple[str, str]:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    md = os.path.join(out_dir, "summary.md")
    with open(md, "w") as fh:
        fh.write("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n")
        for row in rows:
            fh.write("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |\n")
    csv_path = os.path.join(out_dir, "summary.csv")
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return md, csv_path


def plot_convergence(runs, path):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        for name, series in run["history"].items():
            if series.ndim == 1 and series.size > 1 and np.any(np.isfinite(series)):
                positive = np.where(np.isfinite(series) & (series > 0), series, np.nan)
                ax.semilogy(np.arange(series.size), positive, marker="o", ms=3,
                            label=f"{os.path.basename(run['file'])}: {name} ({run['ranks']} ranks)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("value (log scale)")
    ax.set_title("Convergence per iteration")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scaling(groups, path):
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(10, 4.2))
    base_ranks = min(runs[0]["ranks"] for runs in groups.values())
    max_ranks = max(runs[-1]["ranks"] for runs in groups.values())
    for runs in groups.values():
        base = runs[0]
        ranks = np.array([r["ranks"] for r in runs])
        speedup = base["wall_seconds"] * base["ranks"] / base_ranks / np.array([r["wall_seconds"] for r in runs])
        ideal = ranks / base_ranks
        label = f"{base['attrs'].get('method')} {base['config'].get('problem', '')}".strip()
        ax_s.plot(ranks, speedup, marker="o", label=label)
        ax_e.plot(ranks, speedup / ideal, marker="o", label=label)
    line = np.array([base_ranks, max_ranks])
    ax_s.plot(line, line / base_ranks, "k--", label="ideal")
    ax_e.axhline(1.0, color="k", ls="--", label="ideal")
    ax_s.set(xlabel="MPI ranks", ylabel=f"speed-up vs {base_ranks} rank(s)", title="Strong scaling")
    ax_e.set(xlabel="MPI ranks", ylabel="parallel efficiency", title="Efficiency", ylim=(0, 1.2))
    for ax in (ax_s, ax_e):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_timings(runs, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * sum(r["ranks"] for r in runs) + 2), 4.2))
    x, labels = 0, []
    for run in runs:
        positions = np.arange(x, x + run["ranks"])
        ax.bar(positions, run["compute_seconds"], color="tab:blue",
               label="compute" if x == 0 else None)
        ax.bar(positions, run["wait_seconds"], bottom=run["compute_seconds"], color="tab:orange",
               label="communication / wait" if x == 0 else None)
        labels += [f"{os.path.basename(run['file'])[:18]}\nrank {r}" for r in range(run["ranks"])]
        x += run["ranks"] + 1
        labels.append("")
    ticks = [i for i, lab in enumerate(labels) if lab]
    ax.set_xticks(ticks)
    ax.set_xticklabels([labels[i] for i in ticks], fontsize=7, rotation=45, ha="right")
    ax.set_ylabel("seconds")
    ax.set_title("Per-rank time: compute vs communication")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(files: list[str], out_dir: str) -> int:
    import matplotlib

    matplotlib.use("Agg")
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        print(f"error: no such result file: {', '.join(missing)}")
        return 2
    try:
        runs = [load_run(f) for f in files]
    except (OSError, KeyError, json.JSONDecodeError) as err:
        print(f"error: cannot read result file ({err}); is it a paraflow_hpc result?")
        return 2
    os.makedirs(out_dir, exist_ok=True)
    md, csv_path = write_tables(to_rows(runs), out_dir)
    outputs = [md, csv_path]
    plot_convergence(runs, os.path.join(out_dir, "convergence.png"))
    plot_timings(runs, os.path.join(out_dir, "timings.png"))
    outputs += [os.path.join(out_dir, "convergence.png"), os.path.join(out_dir, "timings.png")]
    groups = scaling_groups(runs)
    if groups:
        plot_scaling(groups, os.path.join(out_dir, "scaling.png"))
        outputs.append(os.path.join(out_dir, "scaling.png"))
    with open(md) as fh:
        print(fh.read())
    print("written: " + ", ".join(outputs))
    return 0
