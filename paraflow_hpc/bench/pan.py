"""``paraflow-hpc bench pan``: work-precision of error-controlled PAN against solve_ivp.

For each problem and tolerance tol, in one run: solve_ivp RK45, DOP853, Radau, LSODA with
rtol = atol = tol on a plain-numpy right-hand side (``scipy_f``, what a scipy user writes), each
also timed on the torch field called point by point (``numpy_f``, the cost the old baseline
had); and ``pan_ivp`` with rtol = atol = tol. Error: the maximum over a dense grid of 1001
points (scipy's dense output, PAN's piecewise Chebyshev series) against DOP853 at rtol = atol =
1e-13. Work: for scipy every f call (counted by a wrapper: Radau's ``nfev`` leaves out the
finite-difference Jacobian calls); for PAN the parallel depth (batched evaluations in sequence)
and the total point evaluations. PAN is timed on all ranks and, right after, on rank 0 alone,
so the 1-vs-P times are measured side by side; scipy runs on rank 0. Beside every PAN row: the
NFE and time DOP853 needs for the same dense-grid error (log-log interpolation of its curve),
the baselines of the issue's goals. A PNG holds the work-precision diagrams.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from ..algorithms.pan import PANError, parse_petsc_options
from ..algorithms.pan_ivp import pan_ivp, validate
from ..comm import Progress, Timers
from ..config import option, require
from ..io.results import write_result
from ..problems.contract import load_problem
from ..runners.common import configured_problem, problem_args_option
from . import BenchConfig

SCIPY_METHODS = ("RK45", "DOP853", "Radau", "LSODA")

# Paper Tables 1 (spiral) and 2 (Lorenz): (method, tol) -> (error at T, NFE as printed); the
# paper ran scipy with atol = tol, rtol = 1e-14 (``scipy_rows(..., paper=True)``).
PAPER = {
    "spiral": {("RK45", 1e-6): (4.14e-7, "212"), ("Radau", 1e-6): (6.97e-8, "599"),
               ("BDF", 1e-6): (4.56e-6, "250"), ("LSODA", 1e-6): (4.34e-6, "171"),
               ("PAN(50)", 1e-6): (1.86e-10, "37 + 5"), ("PAN(100)", 1e-6): (4.17e-14, "36 + 5"),
               ("RK45", 1e-9): (6.28e-10, "716"), ("Radau", 1e-9): (1.05e-10, "2994"),
               ("BDF", 1e-9): (1.66e-8, "656"), ("LSODA", 1e-9): (4.48e-10, "361"),
               ("PAN(50)", 1e-9): (1.86e-10, "42 + 5"), ("PAN(100)", 1e-9): (2.25e-15, "55 + 5")},
    "lorenz": {("RK45", 1e-6): (5.75e-2, "5174"), ("Radau", 1e-6): (2.17e-2, "16476"),
               ("BDF", 1e-6): (2.09e-1, "4794"), ("LSODA", 1e-6): (4.86e-2, "2803"),
               ("PAN(50)", 1e-6): (1.60e-7, "1180 + 250"), ("PAN(100)", 1e-6): (1.60e-7, "1231 + 250"),
               ("RK45", 1e-9): (6.58e-5, "19532"), ("Radau", 1e-9): (4.19e-6, "89999"),
               ("BDF", 1e-9): (5.65e-4, "15184"), ("LSODA", 1e-9): (5.45e-6, "4735"),
               ("PAN(50)", 1e-9): (1.61e-7, "1399 + 262"), ("PAN(100)", 1e-9): (1.61e-7, "1450 + 390")},
}


@dataclass
class Config(BenchConfig):
    method = "bench-pan"
    problems: list[str] = field(default_factory=lambda: ["spiral", "lorenz", "pendulum", "brusselator",
                                                         "vdp-mild"],
                                metadata={"help": "problems to run", "choices": None})
    tols: list[float] = field(default_factory=lambda: [1e-4, 1e-6, 1e-8, 1e-10],
                              metadata={"help": "tolerances (rtol = atol, for scipy and PAN)", "choices": None})
    n_coeffs: int = option(32, "PAN's N (M = N points)")
    tf: float = option(0.0, "end time for every problem (0: each problem's own)")
    petsc: str = option("", "PETSc options for PAN's SNES (as for run pan)")
    plot: bool = option(True, "write the work-precision diagrams as PNG beside the table")
    problem: str = option("", "one problem instead of problems: package.module:name, path/to/file.py:name "
                              "or a built-in name")
    problem_args: dict = problem_args_option()

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        if self.problem:
            self.problems = [self.problem]
        for name in self.problems:   # loaded and probed through the one door (an error names the fix)
            self.load(name)
        require(self.tols and all(0 < t < 1 for t in self.tols), f"tols = {self.tols}: need 0 < tol < 1")
        require(self.tf >= 0, f"tf = {self.tf}: need tf >= 0 (0: each problem's own)")
        for name in self.problems:  # the checks of run pan and pan_ivp, for every problem and tolerance
            problem = self.load(name)
            try:
                validate((problem.t0, self.tf or problem.tf), problem.y0, min(self.tols), min(self.tols),
                         self.n_coeffs, self.n_coeffs, None, np.inf, None, comm_size)
                parse_petsc_options(self.petsc)
            except PANError as err:
                require(False, str(err))

    def load(self, name: str):
        """Problem ``name``: ``--problem`` with ``--problem-args``, or a built-in."""
        return configured_problem(self, "ivp") if name == self.problem else load_problem(name, "ivp")

    def default_output(self) -> str:
        return os.path.join("results", "bench-pan.h5")


class Counted:
    """f for scipy, counting every call (finite-difference Jacobian columns included)."""

    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.f(t, y)


def scipy_rows(problem, tol: float, grid: np.ndarray, reference: np.ndarray, paper: bool = False,
               methods=SCIPY_METHODS) -> list[dict]:
    """One row per solve_ivp method: numpy f timed and counted, the torch f point by point timed.
    ``paper``: atol = tol, rtol = 1e-14 as the paper's tables; else rtol = atol = tol."""
    from scipy.integrate import solve_ivp

    rtol = 1e-14 if paper else tol
    rows = []
    for method in methods:
        seconds = {}
        for kind, f in (("numpy", problem.scipy_f), ("torch", problem.numpy_f)):
            counted = Counted(f)
            start = time.perf_counter()
            with warnings.catch_warnings():  # "rtol too small, raised to 100 eps" (paper rows): intended
                warnings.simplefilter("ignore", UserWarning)
                sol = solve_ivp(counted, (grid[0], grid[-1]), problem.y0, method=method, atol=tol, rtol=rtol,
                                dense_output=True)
            seconds[kind] = time.perf_counter() - start
            if kind == "numpy":
                calls, nfev, dense, end = counted.calls, int(sol.nfev), sol.sol(grid), sol.y[:, -1]
        rows.append({"method": method, "tol": tol, "error": float(np.max(np.abs(dense - reference))),
                     "error_end": float(np.linalg.norm(end - reference[:, -1])), "depth": calls, "points": calls,
                     "scipy_nfev": nfev, "seconds": seconds["numpy"], "seconds_1": seconds["numpy"],
                     "seconds_torch_f": seconds["torch"], "success": bool(sol.success)})
    return rows


def timed_pan(comm, problem, t_span, tol: float, n: int, petsc: str):
    comm.Barrier()
    start = time.perf_counter()
    result = pan_ivp(problem, t_span, problem.y0, rtol=tol, atol=tol, n_coeffs=n, comm=comm, petsc_options=petsc)
    return result, comm.allreduce(time.perf_counter() - start, op=MPI.MAX)


def pan_row(comm, solo, problem, t_span, tol: float, n: int, petsc: str, grid, reference) -> dict:
    result, seconds = timed_pan(comm, problem, t_span, tol, n, petsc)
    seconds_1 = same = None
    if solo is not None:  # rank 0 alone, right after: the same solve on one process
        result_1, seconds_1 = timed_pan(solo, problem, t_span, tol, n, petsc)
        same = bool(np.array_equal(result_1.solution.coefficients, result.solution.coefficients))
    comm.Barrier()
    return {"method": f"PAN({n})", "tol": tol, "error": float(np.max(np.abs(result.solution(grid) - reference))),
            "error_end": float(np.linalg.norm(result.solution(grid[-1]) - reference[:, -1])),
            "depth": result.depth, "points": result.nfev, "steps": result.n_steps, "rejected": result.n_rejected,
            "newton": result.nlu, "seconds": seconds, "seconds_1": comm.bcast(seconds_1, root=0),
            "same_bits_1_vs_p": comm.bcast(same, root=0), "success": bool(result.success),
            "message": result.message}


def at_equal_error(rows: list[dict], method: str, error: float, key: str) -> float:
    """``key`` of ``method`` interpolated (log-log) to the given dense-grid error; nan outside its range."""
    curve = sorted((r["error"], r[key]) for r in rows if r["method"] == method and r["error"] > 0)
    if len(curve) < 2 or not (curve[0][0] <= error <= curve[-1][0]):
        return float("nan")
    e, v = np.log10([c[0] for c in curve]), np.log10([c[1] for c in curve])
    return float(10 ** np.interp(np.log10(error), e, v))


def markdown(problem: str, rows: list[dict], ranks: int) -> str:
    out = [f"| {problem} | tol | dense error | error / tol | depth (scipy: NFE) | point evaluations | steps "
           f"(rejected) | time {ranks} ranks [s] | time 1 rank [s] | scipy, torch f [s] | DOP853 NFE at "
           f"this error | DOP853 time at this error [s] |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pan = r["method"].startswith("PAN")
        dop_nfe = at_equal_error(rows, "DOP853", r["error"], "depth") if pan else float("nan")
        dop_time = at_equal_error(rows, "DOP853", r["error"], "seconds") if pan else float("nan")
        out.append(f"| {r['method']} | {r['tol']:.0e} | {r['error']:.2e} | {r['error'] / r['tol']:.2g} | "
                   f"{r['depth']} | {r['points']} | "
                   + (f"{r['steps']} ({r['rejected']})" if pan else "") + " | "
                   f"{r['seconds']:.4f} | {r['seconds_1']:.4f} | "
                   + ("" if pan else f"{r['seconds_torch_f']:.4f}") + " | "
                   + ("" if np.isnan(dop_nfe) else f"{dop_nfe:.0f}") + " | "
                   + ("" if np.isnan(dop_time) else f"{dop_time:.4f}") + " |")
    return "\n".join(out) + "\n"


def plot(path: str, all_rows: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(all_rows), 2, figsize=(10, 3.2 * len(all_rows)), squeeze=False)
    for (name, rows), (ax_depth, ax_points) in zip(all_rows.items(), axes):
        for method in dict.fromkeys(r["method"] for r in rows):
            sel = [r for r in rows if r["method"] == method]
            style = "o-" if method.startswith("PAN") else "s--"
            label = f"{method} (depth)" if method.startswith("PAN") else f"{method} (NFE)"
            ax_depth.loglog([r["depth"] for r in sel], [r["error"] for r in sel], style, label=label)
            ax_points.loglog([r["points"] for r in sel], [r["error"] for r in sel], style, label=method)
        ax_depth.set(title=f"{name}: error vs sequential evaluations", xlabel="parallel depth / NFE",
                     ylabel="max dense-grid error")
        ax_points.set(title=f"{name}: error vs total evaluations", xlabel="point evaluations")
        ax_depth.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(cfg: Config, comm) -> int:
    from scipy.integrate import solve_ivp

    progress = Progress(comm, cfg.quiet)
    solo = comm.Split(0 if comm.rank == 0 else MPI.UNDEFINED, 0)
    solo = None if solo == MPI.COMM_NULL else solo
    timings = Timers()
    tables, all_rows = [], {}
    for name in cfg.problems:
        problem = cfg.load(name)
        t_span = (problem.t0, cfg.tf or problem.tf)
        grid = np.linspace(*t_span, 1001)
        reference = None
        if comm.rank == 0:
            reference = solve_ivp(problem.scipy_f, t_span, problem.y0, method="DOP853", rtol=1e-13, atol=1e-13,
                                  dense_output=True).sol(grid)
        reference = comm.bcast(reference, root=0)
        # untimed warm-up: torch and PETSc set up their first-call paths
        pan_ivp(problem, (t_span[0], t_span[0] + 1e-3), problem.y0, n_coeffs=8, comm=comm)
        rows = []
        for tol in cfg.tols:
            with timings("scipy"):
                scipy_part = scipy_rows(problem, tol, grid, reference) if comm.rank == 0 else None
            rows += comm.bcast(scipy_part, root=0)
            with timings("pan"):
                rows.append(pan_row(comm, solo, problem, t_span, tol, cfg.n_coeffs, cfg.petsc, grid, reference))
            r = rows[-1]
            progress(f"{name} tol {tol:g} PAN({cfg.n_coeffs}): dense error {r['error']:.2e}, depth {r['depth']}, "
                     f"{r['seconds']:.3f} s on {comm.size} ranks, {r['seconds_1']:.3f} s on 1")
        order = {m: i for i, m in enumerate(SCIPY_METHODS)}
        rows.sort(key=lambda r: (order.get(r["method"], len(order)), -r["tol"]))
        all_rows[name] = rows
        tables.append(markdown(name, rows, comm.size))
    text = (f"PAN benchmark on {comm.size} MPI ranks (scipy on one, rtol = atol = tol). Dense error: max over "
            f"1001 points of |y - y_DOP853(1e-13)|. Depth: PAN's batched evaluations in sequence, scipy's "
            f"f calls. Times: scipy on a numpy f (the baseline), and on the torch f point by point. "
            f"DOP853 at this error: its curve interpolated log-log to PAN's error.\n\n" + "\n".join(tables))
    table_path = cfg.write_table(comm, text)
    if cfg.plot and comm.rank == 0:
        plot(cfg.output_stem() + ".png", all_rows)
    write_result(comm, cfg.output, method="bench-pan", config=cfg.as_dict(), timings=timings.as_dict(),
                 data={f"{name}/{key}": np.array([r[key] for r in rows], dtype=float)
                       for name, rows in all_rows.items() for key in ("tol", "error", "depth", "points", "seconds",
                                                                      "seconds_1")},
                 attrs={"rows": json.dumps(all_rows), "table": text})
    if solo is not None:
        solo.Free()
    progress("\n" + text + f"\ntable written to {table_path}, results to {cfg.output}")
    return 0
