"""``paraflow-hpc bench mgrit``: Parareal vs MGRIT (2-4 levels, F vs FCF) vs PyMGRIT, one run.

Problems: ``heat`` (diffusive; the 1-D heat equation on 511 points with one backward Euler step per interval
on every level, a user propagator built here) and ``brusselator`` (oscillatory: a limit cycle;
RK4 with enough steps per interval to be stable on every level). Every method solves
the same level-0 problem u_j = Phi_0(u_{j-1}) on the same ranks to the same residual tolerance;
Parareal is the two-level method with G = Phi_1 and F = Phi_0 over m fine intervals.

Columns: cycles K, fine-propagator calls (all ranks), measured seconds on these ranks, speed-up
against the serial fine sweep (N tau_0, timed in the same run), and the cost model's speed-up at
2, 64 and 1024 ranks from the measured per-call costs tau_l and call counts:

    T(P) = sum_l calls_l tau_l / min(P, N_l)  +  S N_{L-1} tau_{L-1},

where S is the number of sequential coarsest sweeps (for Parareal: K + 1 coarse sweeps and the
fine calls of the busiest rank, :func:`algorithms.parareal.model_seconds`); communication is free.
PyMGRIT (same propagators, identity transfers, nested iteration) runs the same MGRIT cases; the
table gives our wall time over PyMGRIT's, solve only and including its set-up (nested iteration,
which is part of our solve: both sides of that ratio include it).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from ..algorithms.mgrit import mgrit
from ..algorithms.parareal import StoppingRule, model_seconds, parareal, serial_fine
from ..comm import Progress, Timers
from ..config import option, require
from ..io.results import write_result
from ..problems.ode import ODE_PROBLEMS
from ..propagators import make_propagator
from . import BenchConfig

CASES = {  # N fine intervals, coarsening m, tf, the stepper (RK4: its stable step size)
    "heat": dict(intervals=256, m=4, tf=0.5, stepper="backward-euler", args={"n_points": 511}),
    "brusselator": dict(intervals=1024, m=4, tf=20.0, stepper="rk4", h_max=0.3),
}
METHODS = [("parareal", 2, "F"), ("mgrit", 2, "F"), ("mgrit", 2, "FCF"), ("mgrit", 3, "F"), ("mgrit", 3, "FCF"),
           ("mgrit", 4, "F"), ("mgrit", 4, "FCF")]
MODEL_RANKS = (2, 64, 1024)


@dataclass
class Config(BenchConfig):
    method = "bench-mgrit"
    problems: list[str] = field(default_factory=lambda: list(CASES),
                                metadata={"help": "problems to run", "choices": None})
    tol: float = option(1e-8, "residual tolerance (absolute, l2 over time points) for every method")
    scale: float = option(1.0, "multiply the fine interval count N by this (kept a multiple of m^3)")
    pymgrit: bool = option(True, "run PyMGRIT on the MGRIT cases too (if installed)")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        for name in self.problems:
            require(name in CASES, f"problems: {name!r} has no benchmark case; choose from {', '.join(CASES)}")
        require(self.scale > 0, f"scale = {self.scale}: must be > 0")
        require(self.tol > 0, f"tol = {self.tol}: must be > 0")

    def default_output(self) -> str:
        return os.path.join("results", "bench-mgrit.h5")


class BackwardEuler:
    """One backward Euler step of y' = A y (A sparse) over an interval of length ``h``.

    (I - h A) is factorised once; the step size is the level's nominal one, so every rank
    applies exactly the same operator whatever the round-off in t1 - t0.
    """

    def __init__(self, A, h: float):
        import scipy.sparse as sp
        from scipy.sparse.linalg import splu

        self.lu = splu((sp.identity(A.shape[0], format="csc") - h * A).tocsc())

    def __call__(self, y, t0, t1):
        return self.lu.solve(y)


def pymgrit_classes():
    """PyMGRIT's vector and application for numpy states and our propagators (None if absent)."""
    try:
        from pymgrit.core.application import Application
        from pymgrit.core.mgrit import Mgrit
        from pymgrit.core.vector import Vector
    except ImportError:
        return None

    class NumpyVector(Vector):
        def __init__(self, value):
            super().__init__()
            self.value = np.array(value)

        def __add__(self, other):
            return NumpyVector(self.value + other.value)

        def __sub__(self, other):
            return NumpyVector(self.value - other.value)

        def __mul__(self, other):
            return NumpyVector(self.value * other)

        def norm(self):
            return np.linalg.norm(self.value)

        def clone(self):
            return NumpyVector(self.value.copy())

        def clone_zero(self):
            return NumpyVector(np.zeros_like(self.value))

        def clone_rand(self):
            return NumpyVector(np.random.rand(*self.value.shape))

        def set_values(self, value):
            self.value = value

        def get_values(self):
            return self.value

        def pack(self):
            return self.value

        def unpack(self, value):
            self.value = value

    class Wrapped(Application):
        def __init__(self, phi, y0, t):
            super().__init__(t_interval=t)
            self.phi = phi
            self.vector_template = NumpyVector(np.zeros_like(y0))
            self.vector_t_start = NumpyVector(y0.copy())

        def step(self, u_start, t_start, t_stop):
            return NumpyVector(self.phi(u_start.get_values(), t_start, t_stop))

    return Mgrit, Wrapped


def run_problem(comm, name: str, case: dict, tol: float, scale: float, use_pymgrit: bool, progress) -> list[dict]:
    problem = ODE_PROBLEMS[name](**case.get("args", {}))
    m = case["m"]
    n = max(m ** 3, int(round(case["intervals"] * scale / m ** 3)) * m ** 3)
    times = np.linspace(problem.t0, case["tf"], n + 1)
    dt = (case["tf"] - problem.t0) / n
    if case["stepper"] == "backward-euler":
        phis = [BackwardEuler(problem.laplacian, dt * m ** l) for l in range(4)]
    else:
        phis = [make_propagator("rk4", problem.f, max(1, math.ceil(dt * m ** l / case["h_max"]))) for l in range(4)]
    y0 = problem.y0()
    stopping = StoppingRule(tol)

    wall = Timers()
    comm.Barrier()
    serial_fine(comm, phis[0], y0, times)
    comm.Barrier()
    serial = comm.allreduce(wall.elapsed(), op=MPI.MAX)
    pym = pymgrit_classes() if use_pymgrit else None
    rows = []
    for method, levels, relax in METHODS:
        index = {t: j for j, t in enumerate(times)}

        def fine(y, ta, tb):  # F = Phi_0 over the fine intervals of [ta, tb]
            for j in range(index[ta] + 1, index[tb] + 1):
                y = phis[0](y, times[j - 1], times[j])
            return y

        comm.Barrier()
        wall = Timers()
        if method == "parareal":
            res = parareal(comm, phis[1], fine, y0, times[::m], k_max=n // m, stopping=stopping)
            calls = [comm.allreduce(res.fine_calls) * m, comm.allreduce(res.coarse_calls)]
            critical = max(comm.allgather(res.fine_calls))
            iterations, converged, timings = res.iterations, res.converged, res.timings
        else:
            res = mgrit(comm, phis[:levels], y0, times, [m] * (levels - 1), stopping=stopping, max_iter=50,
                        relaxation=relax)
            calls = [comm.allreduce(c) for c in res.calls]
            level_seconds = [comm.allreduce(x) for x in res.seconds]
            iterations, converged, timings = res.iterations, res.converged, res.timings
        comm.Barrier()
        seconds = comm.allreduce(wall.elapsed(), op=MPI.MAX)
        fine_seconds = comm.allreduce(timings.get("fine", 0.0))
        coarse_seconds = comm.allreduce(timings.get("coarse", 0.0))
        row = {"problem": name, "method": f"{method} L={levels} {relax}" if method == "mgrit" else "parareal",
               "ranks": comm.size, "intervals": n, "iterations": iterations, "converged": converged,
               "fine_calls": calls[0], "seconds": seconds, "speedup": serial / seconds}
        if method == "parareal":
            tau_f = fine_seconds / max(1, calls[0] // m)  # per call of F (m fine intervals)
            tau_g = coarse_seconds / max(1, calls[1])
            for p in MODEL_RANKS:
                per_rank = -(-(n // m) // min(p, n // m))
                fine_crit = min(critical, per_rank * (iterations + 1)) if p != comm.size else critical
                t = model_seconds(n // m, tau_f, tau_g, iterations + 1, fine_crit)
                row[f"model_speedup_{p}"] = (n // m) * tau_f / t
        else:
            tau = [x / max(1, c) for x, c in zip(level_seconds, calls)]
            sizes = [n // m ** l for l in range(levels)]
            serial_part = comm.allreduce(res.coarsest_sweeps, op=MPI.MAX) * sizes[-1] * tau[-1]
            for p in MODEL_RANKS:
                parallel = sum(calls[l] * tau[l] / min(p, sizes[l]) for l in range(levels))
                row[f"model_speedup_{p}"] = n * tau[0] / (parallel + serial_part)
        row["ratio_solve"] = row["ratio_setup"] = row["seconds_per_cycle_ratio"] = float("nan")
        row["pymgrit_iterations"] = float("nan")
        if method == "mgrit" and pym is not None:
            Mgrit, Wrapped = pym
            ours_solve = seconds - comm.allreduce(timings.get("nested", 0.0), op=MPI.MAX)
            apps = [Wrapped(phis[l], y0, times[::m ** l]) for l in range(levels)]
            solver = Mgrit(apps, tol=tol, max_iter=50, cf_iter=1 if relax == "FCF" else 0, comm_time=comm,
                           logging_lvl=30, nested_iteration=True)
            info = solver.solve()
            row["pymgrit_iterations"] = solver.solve_iter
            row["ratio_solve"] = ours_solve / info["time_solve"]
            row["ratio_setup"] = seconds / (info["time_solve"] + info["time_setup"])
            row["seconds_per_cycle_ratio"] = (ours_solve / iterations) / (info["time_solve"] / solver.solve_iter)
        progress(f"{name} {row['method']}: K = {iterations}, fine calls {calls[0]}, {seconds:.3f} s "
                 f"(serial fine {serial:.3f} s), model speed-up at 1024 ranks {row['model_speedup_1024']:.1f}")
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| problem | method | ranks | N | K | fine calls | time [s] | speed-up | model S(2) | model S(64) | "
            "model S(1024) | ours/PyMGRIT solve | ours/PyMGRIT incl. set-up | per cycle |\n|" + "---|" * 14 + "\n")
    return head + "".join(
        f"| {r['problem']} | {r['method']} | {r['ranks']} | {r['intervals']} | {r['iterations']} | {r['fine_calls']} | "
        f"{r['seconds']:.3f} | {r['speedup']:.2f} | {r['model_speedup_2']:.2f} | {r['model_speedup_64']:.1f} | "
        f"{r['model_speedup_1024']:.1f} | {r['ratio_solve']:.2f} | {r['ratio_setup']:.2f} | "
        f"{r['seconds_per_cycle_ratio']:.2f} |\n" for r in rows)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    rows = []
    for name in cfg.problems:
        rows += run_problem(comm, name, CASES[name], cfg.tol, cfg.scale, cfg.pymgrit, progress)
    numeric = [k for k in rows[0] if k not in ("problem", "method")]
    write_result(comm, cfg.output, method="bench-mgrit", config=cfg.as_dict(),
                 data={k: np.array([r.get(k, np.nan) for r in rows], dtype=float) for k in numeric} |
                 {"problem": np.array([r["problem"] for r in rows], dtype="S"),
                  "method": np.array([r["method"] for r in rows], dtype="S")})
    table = markdown(rows)
    path = cfg.write_table(comm, table)
    progress("\n" + table + f"\nHDF5: {cfg.output}, table: {path}")
    return 0
