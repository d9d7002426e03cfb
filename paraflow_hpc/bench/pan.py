"""``paraflow-hpc bench pan``: scipy's solvers against PAN(N = 50, 100), beside the paper's Tables 1-2.

For each problem and tolerance, in one run: solve_ivp RK45, DOP853, Radau, BDF and LSODA with
atol = tol, rtol = 1e-14 (scipy raises it to 100 eps; this reproduces the paper's scipy rows),
and PAN with tol_ls = tol_newton = tol. Error: 2-norm at the final time against DOP853 at
rtol = atol = 1e-13. NFE is counted by a wrapper around f (Radau/BDF's ``nfev`` leaves out
the finite-difference Jacobian calls, LSODA's includes them). For PAN: the parallel depth
(batched evaluations in sequence, Phase 1 + Phase 2, the paper's "37 + 5") and the total
number of point evaluations. PAN is timed on all ranks of the run and, right after, on rank 0
alone, so the 1-vs-P times are measured side by side. scipy runs on rank 0 only.
"""
from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from ..algorithms.pan import pan, run_totals, subinterval_bounds
from ..comm import Progress, Timers
from ..config import option, require
from ..io.results import write_result
from ..problems.ivp import IVP_PROBLEMS
from . import BenchConfig

SCIPY_METHODS = ("RK45", "DOP853", "Radau", "BDF", "LSODA")

# Paper Tables 1 (spiral) and 2 (Lorenz): (method, N or None, tol) -> (error, NFE as printed)
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
    problems: list[str] = field(default_factory=lambda: ["spiral", "lorenz"],
                                metadata={"help": "problems to run", "choices": None})
    tols: list[float] = field(default_factory=lambda: [1e-6, 1e-9],
                              metadata={"help": "tolerances (scipy atol; PAN tol_ls = tol_newton)", "choices": None})
    n_coeffs: list[int] = field(default_factory=lambda: [50, 100],
                                metadata={"help": "PAN sizes N (M = N points)", "choices": None})
    petsc: str = option("", "PETSc options for PAN's SNES (as for run pan)")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        for name in self.problems:
            require(name in IVP_PROBLEMS, f"problems: {name!r} is unknown; choose from {', '.join(IVP_PROBLEMS)}")
        require(self.tols and all(t > 0 for t in self.tols), f"tols = {self.tols}: need positive tolerances")
        require(self.n_coeffs and all(n >= 3 for n in self.n_coeffs), f"n_coeffs = {self.n_coeffs}: need N >= 3")

    def default_output(self) -> str:
        return os.path.join("results", "bench-pan.h5")


class Counted:
    """f for scipy, counting every call (finite-difference Jacobian columns included)."""

    def __init__(self, problem):
        self.problem, self.calls = problem, 0

    def __call__(self, t, y):
        self.calls += 1
        return self.problem.numpy_f(t, y)


def scipy_rows(problem, tol: float, reference: np.ndarray) -> list[dict]:
    from scipy.integrate import solve_ivp

    rows = []
    for method in SCIPY_METHODS:
        f = Counted(problem)
        start = time.perf_counter()
        with warnings.catch_warnings():  # "rtol too small, raised to 100 eps": intended, as in the paper
            warnings.simplefilter("ignore", UserWarning)
            sol = solve_ivp(f, (problem.t0, problem.tf), problem.y0, method=method, atol=tol, rtol=1e-14)
        seconds = time.perf_counter() - start
        rows.append({"method": method, "tol": tol, "error": float(np.linalg.norm(sol.y[:, -1] - reference)),
                     "nfe": str(f.calls), "scipy_nfev": int(sol.nfev), "points": f.calls, "seconds": seconds,
                     "seconds_1": seconds})
    return rows


def timed_pan(comm, problem, n: int, tol: float, petsc: str):
    times = subinterval_bounds(problem.t0, problem.tf, problem.subinterval)
    comm.Barrier()
    start = time.perf_counter()
    result = pan(comm, problem, problem.y0, times, n_coeffs=n, n_points=n, ls_tol=tol, newton_tol=tol,
                 petsc_options=petsc)
    seconds = comm.allreduce(time.perf_counter() - start, op=MPI.MAX)
    return result, seconds, run_totals(comm, result.counters)


def pan_row(comm, solo, problem, n: int, tol: float, petsc: str, reference: np.ndarray, timings: Timers):
    with timings(f"pan{n}_{comm.size}ranks"):
        result, seconds, totals = timed_pan(comm, problem, n, tol, petsc)
    seconds_1 = difference = None
    with timings(f"pan{n}_1rank"):
        if solo is not None:  # rank 0 alone, right after: the same solve on one process
            result_1, seconds_1, _ = timed_pan(solo, problem, n, tol, petsc)
            difference = float(np.linalg.norm(result_1.y_end - result.y_end))
        comm.Barrier()
    return {"method": f"PAN({n})", "tol": tol, "error": float(np.linalg.norm(result.y_end - reference)),
            "nfe": f"{totals['batches_ls']} + {totals['batches_newton']}",
            "points": totals["point_evaluations_ls"] + totals["point_evaluations_newton"],
            "newton_iterations": int(sum(result.state.newton_iterations)), "seconds": seconds,
            "seconds_1": comm.bcast(seconds_1, root=0), "difference_1_vs_p": comm.bcast(difference, root=0)}


def markdown(problem: str, rows: list[dict], ranks: int) -> str:
    paper = PAPER.get(problem, {})
    out = [f"| {problem} | tol | error(T) | NFE (PAN: depth ls + newton) | scipy nfev | point evaluations | "
           f"paper error | paper NFE | time {ranks} ranks [s] | time 1 rank [s] |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        err, nfe = paper.get((r["method"], r["tol"]), (None, ""))
        out.append(f"| {r['method']} | {r['tol']:.0e} | {r['error']:.2e} | {r['nfe']} | "
                   f"{r.get('scipy_nfev', '')} | {r['points']} | "
                   f"{'' if err is None else f'{err:.2e}'} | {nfe} | "
                   f"{r['seconds']:.3f} | {r['seconds_1']:.3f} |")
    return "\n".join(out) + "\n"


def main(cfg: Config, comm) -> int:
    from scipy.integrate import solve_ivp

    progress = Progress(comm, cfg.quiet)
    solo = comm.Split(0 if comm.rank == 0 else MPI.UNDEFINED, 0)
    solo = None if solo == MPI.COMM_NULL else solo
    timings = Timers()
    tables, all_rows = [], {}
    for name in cfg.problems:
        problem = IVP_PROBLEMS[name]()
        reference = None
        if comm.rank == 0:
            reference = solve_ivp(problem.numpy_f, (problem.t0, problem.tf), problem.y0, method="DOP853",
                                  rtol=1e-13, atol=1e-13).y[:, -1]
        reference = comm.bcast(reference, root=0)
        # untimed warm-up: torch.func compiles its vmap/jacrev path on first use
        pan(comm, problem, problem.y0, [problem.t0, problem.t0 + 1e-3], n_coeffs=5, n_points=5,
            ls_tol=1e-8, newton_tol=1e-8)
        rows = []
        for tol in cfg.tols:
            with timings("scipy"):
                scipy_part = scipy_rows(problem, tol, reference) if comm.rank == 0 else None
            rows += comm.bcast(scipy_part, root=0)
            for n in cfg.n_coeffs:
                rows.append(pan_row(comm, solo, problem, n, tol, cfg.petsc, reference, timings))
                progress(f"{name} tol {tol:g} PAN({n}): error {rows[-1]['error']:.2e}, depth {rows[-1]['nfe']}, "
                         f"{rows[-1]['seconds']:.2f} s on {comm.size} ranks, {rows[-1]['seconds_1']:.2f} s on 1")
        all_rows[name] = rows
        tables.append(markdown(name, rows, comm.size))
    text = (f"PAN benchmark on {comm.size} MPI ranks (scipy on one). Error: 2-norm at the final time "
            f"vs DOP853 at rtol = atol = 1e-13.\n\n" + "\n".join(tables))
    table_path = cfg.write_table(comm, text)
    write_result(comm, cfg.output, method="bench-pan", config=cfg.as_dict(), timings=timings.as_dict(),
                 data={f"{name}/{key}": np.array([r[key] for r in rows], dtype=float)
                       for name, rows in all_rows.items() for key in ("tol", "error", "points", "seconds",
                                                                      "seconds_1")},
                 attrs={"rows": json.dumps(all_rows), "table": text})
    if solo is not None:
        solo.Free()
    progress("\n" + text + f"\ntable written to {table_path}, results to {cfg.output}")
    return 0
