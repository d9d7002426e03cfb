"""``paraflow-hpc run pan``: PAN under error control (``pan_ivp``), PETSc options passed through, HDF5 out.

The user sets tolerances (``--rtol``, ``--atol``); the subintervals are chosen by the step
controller. PETSc options reach the Gauss–Newton SNES two ways: ``--petsc "-snes_monitor
-snes_linesearch_type basic"`` (one quoted string; the CLI only takes ``--key value`` pairs), or
the ``PETSC_OPTIONS`` environment variable, which PETSc reads itself when it starts. Options no
PETSc object used are reported on stderr at the end (PETSc's ``-options_left``).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional

import numpy as np
from mpi4py import MPI

from ..algorithms.pan import PANError, parse_petsc_options
from ..algorithms.pan_ivp import StepperState, pan_ivp, validate
from ..comm import NonFiniteError, Progress, Timers, block_partition
from ..config import RunConfig, option, require
from ..io.results import write_result
from .common import EXIT_PREEMPTED, CheckpointHook, configured_problem, problem_args_option, problem_option

EXIT_FAILED = 4     # unconverged, as every method: no step size above the spacing of numbers was accepted
EXIT_BAD_INPUT = 2  # as the CLI's: f fails or has the wrong shape at (t0, y0)
# A non-finite solution raises NonFiniteError: the CLI names the step and exits with 4.
HISTORY = ("picard", "newton", "error_norm", "h")
COUNTS = ("batches", "points", "jacobians", "rejected", "failed_solves", "newton_iterations")


@dataclass
class Config(RunConfig):
    method = "pan"
    problem: str = problem_option("spiral", "ivp")
    problem_args: dict = problem_args_option()
    t0: Optional[float] = option(None, "start time (default: the problem's)")
    tf: Optional[float] = option(None, "end time (default: the problem's)")
    rtol: float = option(1e-6, "relative tolerance (as solve_ivp's): each subinterval's error estimate "
                               "<= atol + rtol |y|")
    atol: float = option(1e-9, "absolute tolerance (as solve_ivp's)")
    first_step: Optional[float] = option(None, "first subinterval length (default: the solution's time scale)")
    max_step: float = option(float("inf"), "longest subinterval")
    n_coeffs: int = option(32, "Chebyshev coefficients N per component and subinterval (N >= 3)")
    n_points: int = option(0, "collocation points M per subinterval (M >= N; 0: M = N)")
    picard_tol: float = option(1.0, "Phase 1 stop: change of y at the nodes <= picard_tol x tolerance")
    newton_tol: float = option(0.1, "Phase 2 stop: predicted Gauss-Newton step <= newton_tol x tolerance")
    picard_max_it: int = option(50, "Phase 1 iteration limit per subinterval")
    newton_max_it: int = option(10, "Phase 2 Gauss-Newton iteration limit per subinterval (-snes_max_it); "
                                    "a solve that does not converge is a rejected step")
    jacobian: str = option("autograd", "Jacobian of f for Gauss-Newton: autograd (exact) or fd (forward "
                                       "differences in the same batch)", choices=["autograd", "fd"])
    petsc: str = option("", "PETSc options for SNES/KSP/PC, one quoted string, e.g. "
                            "\"-snes_monitor -snes_linesearch_type basic\"")
    dense_points: int = option(1001, "points of the dense grid on which the solution is stored and the "
                                     "error measured")
    reference: bool = option(True, "dense-grid error against DOP853 at rtol = atol = 1e-13")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        r = self.resolved()
        try:
            validate((r["t0"], r["tf"]), self.make_problem().y0, self.rtol, self.atol, self.n_coeffs, r["n_points"],
                     self.first_step, self.max_step, None, comm_size)
            parse_petsc_options(self.petsc)
        except PANError as err:
            require(False, str(err))
        for key in ("picard_tol", "newton_tol"):
            require(getattr(self, key) > 0, f"{key} = {getattr(self, key)}: must be > 0")
        for key in ("picard_max_it", "newton_max_it"):
            require(getattr(self, key) >= 1, f"{key} = {getattr(self, key)}: must be >= 1")
        require(self.dense_points >= 2, f"dense_points = {self.dense_points}: must be >= 2")

    def make_problem(self):
        """The problem instance (the one place a problem is looked up: ``load_problem``, probed once)."""
        return configured_problem(self, "ivp")

    def resolved(self) -> dict:
        problem = self.make_problem()
        return {"t0": problem.t0 if self.t0 is None else self.t0,
                "tf": problem.tf if self.tf is None else self.tf,
                "n_points": self.n_points or self.n_coeffs}

    def checkpoint_spec(self, rank, nranks: int) -> dict:
        """The arrays a checkpoint of this run holds: all in /root (the stepping is replicated)."""
        if rank != "root":
            return {}
        L, N = self.make_problem().y0.size, self.n_coeffs
        return {"t": ((2,), "f"), "y": ((L,), "f"), "f": ((L,), "f"), "ts": ((None,), "f"),
                "coefficients": ((None, N, L), "f"), "counts": ((len(COUNTS),), "i"),
                **{f"history_{k}": ((None,), "f") for k in HISTORY}}

    def identity(self) -> dict:
        """The options that define the solution: a checkpoint must match them to be resumed."""
        keys = ("problem", "problem_args", "rtol", "atol", "first_step", "max_step", "n_coeffs", "picard_tol", "newton_tol",
                "picard_max_it", "newton_max_it", "jacobian", "petsc")
        return {**{key: getattr(self, key) for key in keys}, **self.resolved()}


def reference_solution(comm, problem, t0: float, tf: float, grid: np.ndarray) -> np.ndarray:
    """DOP853 at rtol = atol = 1e-13 on rank 0 (numpy f), dense output on ``grid``, broadcast."""
    from scipy.integrate import solve_ivp

    y = None
    if comm.rank == 0:
        y = solve_ivp(problem.scipy_f, (t0, tf), problem.y0, method="DOP853", rtol=1e-13, atol=1e-13,
                      dense_output=True).sol(grid)
    return comm.bcast(y, root=0)


def state_arrays(state: StepperState) -> dict:
    return {"t": np.array([state.t, state.h]), "y": state.y, "f": state.f, "ts": np.array(state.ts),
            "coefficients": np.array(state.coefficients),
            **{f"history_{k}": np.array(state.history[k], dtype=float) for k in HISTORY},
            "counts": np.array([state.counts[k] for k in COUNTS])}


def load_state(root: dict) -> StepperState:
    return StepperState(float(root["t"][0]), root["y"], root["f"], float(root["t"][1]), list(root["ts"]),
                        list(root["coefficients"]),
                        {k: list(root[f"history_{k}"]) for k in HISTORY},
                        dict(zip(COUNTS, (int(c) for c in root["counts"]))))


def fail(comm, message: str) -> None:
    """A failure goes to stderr once (rank 0), whatever --quiet says."""
    if comm.rank == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    problem = cfg.make_problem()
    r = cfg.resolved()
    progress(f"PAN on {comm.size} ranks: {problem.name}, t in [{r['t0']}, {r['tf']}], rtol = {cfg.rtol:g}, "
             f"atol = {cfg.atol:g}, N = {cfg.n_coeffs}, M = {r['n_points']}"
             + (f", PETSc options {cfg.petsc!r}" if cfg.petsc else ""))

    hook = CheckpointHook(comm, cfg, "pan", cfg.identity(), progress)
    resume = None
    if cfg.restart:
        meta, _, root = hook.load(cfg.restart)
        resume = load_state(root)
        progress(f"restarting from {cfg.restart} after step {len(resume.ts) - 1} (t = {resume.t:g})")

    def after_step(state: StepperState) -> bool:
        return hook(len(state.ts) - 1, lambda: {}, lambda: state_arrays(state))

    comm.Barrier()
    run_timers = Timers()
    try:
        result = pan_ivp(problem, (r["t0"], r["tf"]), problem.y0, rtol=cfg.rtol, atol=cfg.atol,
                         first_step=cfg.first_step, max_step=cfg.max_step, n_coeffs=cfg.n_coeffs,
                         n_points=r["n_points"], comm=comm, petsc_options=cfg.petsc, picard_tol=cfg.picard_tol,
                         newton_tol=cfg.newton_tol, picard_max_it=cfg.picard_max_it,
                         newton_max_it=cfg.newton_max_it, jacobian=cfg.jacobian, resume=resume,
                         after_step=after_step, progress=progress)
    except PANError as err:
        fail(comm, str(err))
        return EXIT_BAD_INPUT
    pan_seconds = comm.allreduce(run_timers.elapsed(), op=MPI.MAX)
    for left in result.options_left if comm.rank == 0 else []:
        print(f"warning: PETSc option {left} was not used by any PETSc object (misspelt, or not one of "
              "SNES/KSP/PC's?)", file=sys.stderr, flush=True)
    if result.status == 1:
        progress(f"stopped after step {result.n_steps}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED
    if result.status < 0 and "non-finite" in result.message:
        raise NonFiniteError(f"PAN failed: {result.message}")  # agreed: the CLI reports it once, exit 4
    if result.status < 0:
        fail(comm, f"PAN failed: {result.message}")
        return EXIT_FAILED

    state, sol = result.state, result.solution
    grid = np.linspace(r["t0"], r["tf"], cfg.dense_points)
    y_grid = sol(grid)
    error = float("nan")
    if cfg.reference:
        error = float(np.max(np.abs(y_grid - reference_solution(comm, problem, r["t0"], r["tf"], grid))))
    a, b = block_partition(result.n_steps, comm.size, comm.rank)
    counts = state.counts
    write_result(
        comm, cfg.output, method="pan", config=cfg.as_dict(),
        history={k: np.array(state.history[k], dtype=float) for k in HISTORY},
        timings=result.timings, counters={k: counts[k] for k in COUNTS},
        solution={"coefficients": sol.coefficients[a:b]},
        data={"ts": sol.ts, "y0": problem.y0, "y_end": y_grid[:, -1], "dense_t": grid, "dense_y": y_grid},
        attrs={"error": error, "error_grid": "max |y - y_DOP853(1e-13)| over dense_t", "pan_seconds": pan_seconds,
               "restarted_from": cfg.restart, "depth": result.depth, "nfev": result.nfev, "njev": result.njev,
               "nlu": result.nlu, "n_steps": result.n_steps, "n_rejected": result.n_rejected,
               "failed_solves": counts["failed_solves"], "status": result.status, "message": result.message,
               **result.solver_types, "n_points": r["n_points"],
               "representation": "piecewise Chebyshev: on [ts[s], ts[s+1]] y(t) = sum_k "
                                 "coefficients[s, k] T_k(2 (t - ts[s]) / (ts[s+1] - ts[s]) - 1)"})
    progress(f"done: {result.n_steps} steps ({result.n_rejected} rejected), parallel depth {result.depth} "
             f"batched evaluations, {result.nfev} point evaluations, {result.nlu} Gauss-Newton iterations, "
             f"time {pan_seconds:.3f} s"
             + (f", max error on {cfg.dense_points} points vs DOP853 {error:.3e}" if cfg.reference else ""))
    progress(f"y({r['tf']:g}) = {np.array2string(y_grid[:, -1], precision=10)}; result written to {cfg.output}")
    return 0
