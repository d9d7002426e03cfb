"""``paraflow-hpc bench parareal``: serial fine vs Parareal on the same ranks, in one run.

For each problem: the serial fine solution (the chain of N fine solves, which is
exactly what one process would do) and Parareal are timed back to back. Besides the
measured speed-up, the table gives the speed-up the schedule would reach with free
communication, from the measured per-call costs tau_F, tau_G, the K + 1 coarse sweeps
and the fine calls of the busiest rank (``algorithms.parareal.model_seconds``):

    T_model = (K + 1) N tau_G + fine_calls_max tau_F,      S_model = N tau_F / T_model,

and their ratio S / S_model, the efficiency of the implementation. With the residual
rule the speed-up is bounded by about P / (K + 1), so on 2 ranks it cannot exceed 1
once K >= 1: the interesting numbers there are K and the efficiency; speed-ups need
more ranks (jobs/parareal_scaling.sbatch).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from ..algorithms.parareal import STOP_RULES, StoppingRule, model_seconds, parareal, serial_fine, subinterval_bounds
from ..comm import Progress, Timers
from ..config import option, require
from ..io.results import write_result
from ..problems.contract import load_problem
from ..propagators import make_propagator
from ..runners.common import configured_problem, problem_args_option
from . import BenchConfig

# Fine work dominates (fine_steps / coarse_steps = 100); G is stable at its step size.
CASES = {
    "brusselator": dict(intervals=16, coarse_steps=20, fine_steps=2000),
    "lorenz": dict(intervals=32, coarse_steps=16, fine_steps=1600),
    "heat": dict(intervals=16, coarse_steps=10, fine_steps=1000),
}
USER_CASE = dict(intervals=16, coarse_steps=10, fine_steps=1000)  # --problem: change with --case


@dataclass
class Config(BenchConfig):
    method = "bench-parareal"
    problems: list[str] = field(default_factory=lambda: list(CASES),
                                metadata={"help": "problems to run", "choices": None})
    tol: float = option(1e-8, "Parareal tolerance (absolute, l2 over boundaries)")
    stop: str = option("residual", "stopping rule: the residual or the update", choices=list(STOP_RULES))
    scale: float = option(1.0, "multiply the subinterval count N by this (whole multiples of the ranks)")
    problem: str = option("", "one problem instead of problems: package.module:name, path/to/file.py:name "
                              "or a built-in name")
    problem_args: dict = problem_args_option()
    case: dict = field(default_factory=dict, metadata={
        "help": "intervals, coarse_steps, fine_steps of --problem's case (default 16, 10, 1000), e.g. fine_steps=400",
        "choices": None})

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        if self.problem:
            configured_problem(self, "ode")
            self.problems = [self.problem]
            self.case = {**USER_CASE, **self.case}
            require(set(self.case) == set(USER_CASE)
                    and all(isinstance(v, int) and v >= 1 for v in self.case.values()),
                    f"case = {self.case}: give positive integers intervals, coarse_steps, fine_steps")
        for name in self.problems:
            require(name in CASES or name == self.problem,
                    f"problems: {name!r} has no benchmark case; choose from {', '.join(CASES)} or give --problem")
        require(self.scale > 0, f"scale = {self.scale}: must be > 0")
        require(self.tol >= 0, f"tol = {self.tol}: must be >= 0")

    def default_output(self) -> str:
        return os.path.join("results", "bench-parareal.h5")


def run_case(comm, name: str, case: dict, tol: float, scale: float, stop: str = "residual", problem=None) -> dict:
    problem = problem or load_problem(name, "ode")
    n = max(comm.size, int(round(case["intervals"] * scale)))
    times = subinterval_bounds(problem.t0, problem.tf, n)
    coarse = make_propagator("rk4", problem.f, case["coarse_steps"])
    fine = make_propagator("rk4", problem.f, case["fine_steps"])
    y0 = problem.y0()

    serial_timers = Timers()
    comm.Barrier()
    reference = serial_fine(comm, fine, y0, times, serial_timers)
    comm.Barrier()
    serial_seconds = comm.allreduce(serial_timers.elapsed(), op=MPI.MAX)

    comm.Barrier()
    wall = Timers()
    result = parareal(comm, coarse, fine, y0, times, stopping=StoppingRule(tol, stop), k_max=n,
                      reference=reference)
    comm.Barrier()
    parareal_seconds = comm.allreduce(wall.elapsed(), op=MPI.MAX)

    fine_seconds = comm.allreduce(result.timings.get("fine", 0.0), op=MPI.SUM)
    fine_calls = comm.allreduce(result.fine_calls, op=MPI.SUM)
    coarse_seconds = comm.allreduce(result.timings.get("coarse", 0.0), op=MPI.SUM)
    coarse_calls = comm.allreduce(result.coarse_calls, op=MPI.SUM)
    tau_f, tau_g = fine_seconds / fine_calls, coarse_seconds / coarse_calls
    k = result.iterations
    critical = max(comm.allgather(result.fine_calls))
    speedup = serial_seconds / parareal_seconds
    model_speedup = n * tau_f / model_seconds(n, tau_f, tau_g, k + 1, critical)
    return {
        "problem": name, "ranks": comm.size, "intervals": n, "iterations": k,
        "final_error": result.errors[-1], "serial_seconds": serial_seconds,
        "parareal_seconds": parareal_seconds, "speedup": speedup, "model_speedup": model_speedup,
        "efficiency": speedup / model_speedup, "tau_fine": tau_f, "tau_coarse": tau_g,
        "timings": result.timings,
    }


def markdown(rows: list[dict]) -> str:
    head = ("| problem | ranks | N | K | error vs serial F | serial F [s] | Parareal [s] | speed-up | "
            "model speed-up | efficiency S/S_model | tau_F/tau_G |\n|" + "---|" * 11 + "\n")
    return head + "".join(
        f"| {r['problem']} | {r['ranks']} | {r['intervals']} | {r['iterations']} | {r['final_error']:.1e} | "
        f"{r['serial_seconds']:.3f} | {r['parareal_seconds']:.3f} | {r['speedup']:.2f} | "
        f"{r['model_speedup']:.2f} | {r['efficiency']:.2f} | {r['tau_fine'] / r['tau_coarse']:.0f} |\n"
        for r in rows)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    rows = []
    for name in cfg.problems:
        user = name == cfg.problem
        row = run_case(comm, name, cfg.case if user else CASES[name], cfg.tol, cfg.scale, cfg.stop,
                       configured_problem(cfg, "ode") if user else None)
        progress(f"{name}: K = {row['iterations']}, speed-up {row['speedup']:.2f} "
                 f"(model {row['model_speedup']:.2f}, efficiency {row['efficiency']:.2f})")
        rows.append(row)
    numeric = [k for k in rows[0] if k not in ("problem", "timings")]
    write_result(comm, cfg.output, method="bench-parareal", config=cfg.as_dict(),
                 data={k: np.array([r[k] for r in rows], dtype=float) for k in numeric} |
                 {"problem": np.array([r["problem"] for r in rows], dtype="S")},
                 timings={f"{r['problem']}/{k}": v for r in rows for k, v in r["timings"].items()})
    table = markdown(rows)
    path = cfg.write_table(comm, table)
    progress("\n" + table + f"\nHDF5: {cfg.output}, table: {path}")
    return 0
