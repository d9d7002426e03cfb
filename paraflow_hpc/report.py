"""``paraflow-hpc report RESULT.h5 [...]``: tables and PNG plots from result files of any method.

Works from the common layout (docs/results.md): root attributes, ``/history``,
``/timings`` (one entry per rank) and ``/config``. Runs that differ only in their rank
count (and output paths) form a scaling study: speed-up and efficiency against ranks
are plotted with the ideal line, relative to the smallest rank count present.
``bench paraflows`` results are also merged into one copy of the paper's Tables 1-3.
"""
from __future__ import annotations

import csv
import json
import os

import h5py
import numpy as np

from .io.schema import SchemaError, check_tree, int_attr, numeric, text_attr

# Timing categories (last path component) that are time blocked in or spent on communication,
# as the methods name them; any ``*_wait`` counts too. ``cpu_*`` entries are CPU (not wall)
# seconds and are left out of the breakdown.
COMM_CATEGORIES = ("wait", "send", "comm", "bcast", "reduce", "allreduce", "scan")
# Per method, the /history series that show convergence (the others, such as budgets, strides or
# counts, go to the table only); a method not listed gets all its 1-D float series plotted.
CONVERGENCE_SERIES = {
    "parareal": ("error", "update_norm"),
    "paraflow": ("loss", "fine_loss"),
    "paraflows": ("loss", "fine_loss"),
    "paso": ("delta", "batch_loss", "sequential_batch_loss"),
    "pan": ("error_norm", "h"),
    "layer-parallel": ("loss", "accuracy"),
}
# What the convergence panel's x axis counts, where it is not an iteration.
X_AXIS = {"pan": "accepted step", "paraflow": "window", "paraflows": "window",
          "paso": "iteration (delta) / optimizer step (losses)"}
PATH_OPTIONS = ("output", "checkpoint", "restart", "table", "quiet")
# Result attributes a method's table shows beside iterations/converged/speedup: what tells a user
# whether the run succeeded and what it cost (PAN has no iterations: status, steps, error).
SUMMARY_ATTRS = {
    "parareal": ("restarted_from",),
    "pan": ("status", "n_steps", "n_rejected", "depth", "nfev", "error"),
    "spacetime": ("time_groups", "space_ranks", "nx", "ny", "coarse_grid_factor", "exact_error",
                  "segment_parareal_seconds", "restarted_from"),
    "paso": ("paso_train_loss", "final_max_abs_diff"),
    "layer-parallel": ("final_test_accuracy",),
}


def is_comm(category: str) -> bool:
    name = category.split("/")[-1]
    return not name.startswith("cpu_") and (name in COMM_CATEGORIES or name.endswith("_wait"))


def load_run(path: str) -> dict:
    """One result file as plain Python/numpy values, after :func:`check_result` (SchemaError)."""
    with h5py.File(path, "r") as f:
        check_result(f, os.path.getsize(path))
        attrs = {k: (v.item() if hasattr(v, "item") else v) for k, v in f.attrs.items()}
        run = {
            "file": path,
            "attrs": attrs,
            "config": json.loads(attrs.get("config", "{}")),
            "history": {k: f["history"][k][()] for k in f.get("history", {})},
            "timings": {k: f["timings"][k][()] for k in _leaf_names(f.get("timings"))},
            # a benchmark's measurements: one entry per configuration it ran (bench/*.py)
            "data": ({k: f["data"][k][()] for k in f.get("data", {})}
                     if str(attrs.get("method", "")).startswith("bench-") else {}),
        }
    run["ranks"] = int(attrs["mpi_size"])
    totals = run["timings"].get("total")
    run["wall_seconds"] = float(np.max(totals)) if totals is not None and totals.size else float("nan")
    wait = sum((v for k, v in run["timings"].items() if is_comm(k)), np.zeros(run["ranks"]))
    run["wait_seconds"] = np.asarray(wait, dtype=float)
    run["compute_seconds"] = (np.asarray(totals, dtype=float) - run["wait_seconds"]
                              if totals is not None else np.full(run["ranks"], np.nan))
    return run


def check_result(f: h5py.File, file_size: int) -> None:
    """What :func:`load_run` reads, checked before any data is: the whole file by
    :func:`paraflow_hpc.io.schema.check_tree` (no links to other files, virtual datasets,
    object/opaque dtypes or shapes larger than the file), the root attributes ``method``
    (text), ``mpi_size`` (an integer >= 1) and ``config`` (a JSON object), ``/history`` a group
    of numeric datasets, ``/timings`` a group of numeric datasets with one entry per rank."""
    datasets = check_tree(f, file_size)
    text_attr(f.attrs, "method")
    ranks = int_attr(f.attrs, "mpi_size")
    if ranks < 1:
        raise SchemaError(f"attribute /@mpi_size = {ranks} is not a rank count")
    try:
        config = json.loads(text_attr(f.attrs, "config", required=False) or "{}")
    except json.JSONDecodeError as err:
        raise SchemaError(f"attribute /@config is not JSON ({err})") from None
    if not isinstance(config, dict):
        raise SchemaError("attribute /@config is not a JSON object of options")
    for group in ("history", "timings"):
        if group in f and not isinstance(f[group], h5py.Group):
            raise SchemaError(f"/{group} is not a group")
    for path, ds in datasets.items():
        if path.startswith("history/") and "/" not in path[len("history/"):]:
            numeric(ds, path)
        if path.startswith("timings/"):
            numeric(ds, path)
            if ds.shape != (ranks,):
                raise SchemaError(f"/{path} has shape {ds.shape}; one entry per rank ({ranks}) was expected")
    if str(f.attrs.get("method", "")).startswith("bench-") and isinstance(f.get("data"), h5py.Group):
        for name, ds in f["data"].items():
            if not isinstance(ds, h5py.Dataset):
                raise SchemaError(f"/data/{name} is not a dataset")
            numeric(ds, f"data/{name}")
    for name in f.get("history", {}):
        if not isinstance(f["history"][name], h5py.Dataset):
            raise SchemaError(f"/history/{name} is not a dataset")


def _leaf_names(group) -> list[str]:
    if group is None:
        return []
    names = []
    group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names


def labels(runs: list[dict]) -> list[str]:
    """The shortest trailing parts of the paths that tell the runs apart: the file name, or
    ``<jobid>/result.h5`` for job run directories."""
    parts = [os.path.normpath(os.path.abspath(run["file"])).split(os.sep) for run in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [run["file"] for run in runs]  # the same file given twice


def to_rows(runs: list[dict]) -> list[dict]:
    """One flat summary row per run (also what ``pandas.DataFrame(to_rows(runs))`` takes)."""
    rows = []
    for run, label in zip(runs, labels(runs)):
        row = {"file": label, "method": run["attrs"].get("method", ""),
               "problem": run["config"].get("problem", ""), "ranks": run["ranks"]}
        if run["timings"]:   # benchmarks time their configurations in /data instead (bench_tables)
            row.update(wall_seconds=run["wall_seconds"], compute_seconds_mean=float(np.mean(run["compute_seconds"])),
                       wait_seconds_mean=float(np.mean(run["wait_seconds"])))
        for key in ("iterations", "converged", "speedup", *SUMMARY_ATTRS.get(row["method"], ())):
            if key in run["attrs"]:
                row[key] = run["attrs"][key]
        for name, series in run["history"].items():
            if series.ndim == 1 and series.size and np.issubdtype(series.dtype, np.number):
                row[f"{name}_final"] = float(series[-1])
        rows.append(row)
    return rows


def bench_tables(runs: list[dict], names: list[str]) -> str:
    """Markdown: per benchmark file, its measurements, one row per configuration it ran (the 1-D
    datasets of /data that share the configurations' count)."""
    parts = []
    for run, name in zip(runs, names):
        data = {k: v for k, v in run["data"].items() if v.ndim == 1}
        if not data:
            continue
        n = max(len(v) for v in data.values())
        columns = {k: v for k, v in data.items() if len(v) == n}
        rows = [{k: (v[i].item() if hasattr(v[i], "item") else v[i]) for k, v in columns.items()} for i in range(n)]
        parts.append(f"## {name}: {run['attrs'].get('method')}, one row per configuration\n\n" + _markdown_table(rows))
    return "\n".join(parts)


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


def _markdown_table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(rows: list[dict], out_dir: str) -> tuple[str, str]:
    """summary.md: one table, or one per method (each with that method's columns) when the runs
    are of several methods; summary.csv: every run in one table (columns of all methods)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    md = os.path.join(out_dir, "summary.md")
    with open(md, "w") as fh:
        if len(methods) == 1:
            fh.write(_markdown_table(rows))
        else:
            fh.write("\n".join(f"## {method}\n\n" + _markdown_table([r for r in rows if r["method"] == method])
                               for method in methods))
    csv_path = os.path.join(out_dir, "summary.csv")
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return md, csv_path


def convergence_series(run: dict) -> dict[str, np.ndarray]:
    history = run["history"]
    names = CONVERGENCE_SERIES.get(run["attrs"].get("method"))
    if names is None:
        names = [n for n, v in history.items() if np.issubdtype(v.dtype, np.floating)]
    return {n: history[n] for n in names if n in history and history[n].ndim == 1 and history[n].size > 1
            and np.any(np.isfinite(history[n]) & (history[n] > 0))}


def plot_convergence(runs, names, path):
    """One panel per method, since their series have different meanings and scales."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    methods = list(dict.fromkeys(run["attrs"].get("method", "") for run in runs))
    fig, axes = plt.subplots(len(methods), 1, figsize=(7, 4.5 * len(methods)), squeeze=False)
    for ax, method in zip(axes[:, 0], methods):
        for run, name in zip(runs, names):
            if run["attrs"].get("method", "") != method:
                continue
            for series_name, series in convergence_series(run).items():
                positive = np.where(np.isfinite(series) & (series > 0), series, np.nan)
                ax.semilogy(np.arange(series.size), positive, marker="o", ms=3,
                            label=f"{name}: {series_name} ({run['ranks']} ranks)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(X_AXIS.get(method, "iteration"))
        ax.set_ylabel("value (log scale)")
        ax.set_title(f"Convergence per iteration: {method}" if len(methods) > 1 else "Convergence per iteration")
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_scaling(groups, path):
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_e) = plt.subplots(1, 2, figsize=(10, 4.2))
    base_ranks = min(runs[0]["ranks"] for runs in groups.values())
    max_ranks = max(runs[-1]["ranks"] for runs in groups.values())
    configs = [{k: v for k, v in runs[0]["config"].items() if k not in PATH_OPTIONS} for runs in groups.values()]
    # the options that tell the groups apart (e.g. space_ranks, coarse_grid_factor) go into the legend
    differ = sorted(k for k in set().union(*configs) if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1
                    and k not in ("method", "problem"))
    for runs, config in zip(groups.values(), configs):
        base = runs[0]
        ranks = np.array([r["ranks"] for r in runs])
        speedup = base["wall_seconds"] * base["ranks"] / base_ranks / np.array([r["wall_seconds"] for r in runs])
        ideal = ranks / base_ranks
        label = " ".join([f"{base['attrs'].get('method')} {base['config'].get('problem', '')}".strip(),
                          *(f"{k}={config.get(k)}" for k in differ)])
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


def plot_timings(runs, names, path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * sum(r["ranks"] for r in runs) + 2), 4.2))
    x, ticks = 0, []
    for run, name in zip(runs, names):
        positions = np.arange(x, x + run["ranks"])
        ax.bar(positions, run["compute_seconds"], color="tab:blue",
               label="compute" if x == 0 else None)
        ax.bar(positions, run["wait_seconds"], bottom=run["compute_seconds"], color="tab:orange",
               label="communication / wait" if x == 0 else None)
        ticks += [(x + r, f"{name[-18:]}\nrank {r}") for r in range(run["ranks"])]
        x += run["ranks"] + 1
    ax.set_xticks([t for t, _ in ticks])
    ax.set_xticklabels([label for _, label in ticks], fontsize=7, rotation=45, ha="right")
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
    from .io.paths import is_checkpoint

    checkpoints = [f for f in files if is_checkpoint(f)]
    for path in checkpoints:   # `results/*.h5` also matches the runs' checkpoints: not results
        print(f"note: {path} is a checkpoint, not a result file: skipped")
    files = [f for f in files if f not in checkpoints]
    if not files:
        print("error: no result files given (only checkpoints)")
        return 2
    runs, bad = [], 0
    for path in files:   # one error line per unusable file, no traceback
        try:
            runs.append(load_run(path))
        except SchemaError as err:
            print(f"error: {path}: not a paraflow_hpc result file: {err}")
            bad += 1
        except OSError as err:
            print(f"error: {path}: cannot be read as HDF5 ({err}); is it a paraflow_hpc result?")
            bad += 1
        except Exception as err:   # whatever else HDF5 or numpy make of a damaged file
            print(f"error: {path}: cannot be read ({type(err).__name__}: {err}); is it a paraflow_hpc result?")
            bad += 1
    if bad:
        return 2
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as err:   # an existing file, a path through a file, no permission
        print(f"error: --out {out_dir}: cannot be used as the report's directory ({err.strerror or err}); "
              "give a new or existing directory")
        return 2
    md, csv_path = write_tables(to_rows(runs), out_dir)
    outputs = [md, csv_path]
    names = labels(runs)
    benches = bench_tables(runs, names)
    if benches:
        with open(md, "a") as fh:
            fh.write("\n" + benches)
    plot_convergence(runs, names, os.path.join(out_dir, "convergence.png"))
    plot_timings(runs, names, os.path.join(out_dir, "timings.png"))
    outputs += [os.path.join(out_dir, "convergence.png"), os.path.join(out_dir, "timings.png")]
    groups = scaling_groups(runs)
    if groups:
        plot_scaling(groups, os.path.join(out_dir, "scaling.png"))
        outputs.append(os.path.join(out_dir, "scaling.png"))
    with open(md) as fh:
        print(fh.read())
    tables = [run["file"] for run in runs if run["attrs"].get("method") == "bench-paraflows"]
    if tables:   # e.g. the array tasks of jobs/paraflows_grid.sbatch: one merged copy of Tables 1-3
        from .bench.paraflows import merged_markdown

        path = os.path.join(out_dir, "paraflows_tables.md")
        try:
            text = merged_markdown(tables)
        except ValueError as err:   # files from runs with different N_G, selection or seed
            print(f"error: {err}")
            return 2
        with open(path, "w") as fh:
            fh.write(text + "\n")
        print(text)
        outputs.append(path)
    print("written: " + ", ".join(outputs))
    return 0
