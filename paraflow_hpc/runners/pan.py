"""``paraflow-hpc run pan``: PAN stepped over subintervals, PETSc options passed through, HDF5 out.

PETSc options reach SNES two ways: ``--petsc "-snes_monitor -snes_linesearch_type basic"`` (one
quoted string; the CLI only takes ``--key value`` pairs), or the ``PETSC_OPTIONS`` environment
variable, which PETSc reads itself when it starts.
"""
from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Optional

import numpy as np
from mpi4py import MPI

from ..algorithms.pan import COUNTERS, PANDiverged, PANError, PANState, pan, run_totals, subinterval_bounds
from ..comm import Progress, Timers, block_partition
from ..config import RunConfig, option, require
from ..io.results import write_result
from .common import EXIT_PREEMPTED, CheckpointHook, configured_problem, problem_args_option, problem_option

EXIT_FAILED = 1  # SNES diverged or f misbehaved: the message says which and why


@dataclass
class Config(RunConfig):
    method = "pan"
    problem: str = problem_option("spiral", "ivp")
    problem_args: dict = problem_args_option()
    t0: Optional[float] = option(None, "start time (default: the problem's)")
    tf: Optional[float] = option(None, "end time (default: the problem's)")
    subinterval: Optional[float] = option(None, "length of the consecutive subintervals "
                                                "(default: the problem's; 0: one interval)")
    n_coeffs: int = option(50, "Chebyshev coefficients N per component (N >= 3)")
    n_points: int = option(0, "collocation points M per subinterval (M >= N; 0: M = N)")
    tol: float = option(1e-9, "tolerance of both phases (paper: tol_ls = tol_newton)")
    ls_tol: Optional[float] = option(None, "Phase 1 stop: max |C_k+1 - C_k| <= ls_tol (default: tol)")
    newton_tol: Optional[float] = option(None, "Phase 2 stop: ||grad e/2|| <= newton_tol, PETSc -snes_atol "
                                               "(default: tol)")
    ls_max_it: int = option(500, "Phase 1 iteration limit per subinterval")
    newton_max_it: int = option(50, "Phase 2 Newton iteration limit per subinterval (-snes_max_it)")
    petsc: str = option("", "PETSc options for SNES/KSP/PC, one quoted string, e.g. "
                            "\"-snes_monitor -snes_linesearch_type basic\"")
    reference: bool = option(True, "error at the final time against DOP853 at rtol = atol = 1e-13")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        problem = configured_problem(self, "ivp")
        t0 = problem.t0 if self.t0 is None else self.t0
        tf = problem.tf if self.tf is None else self.tf
        require(tf > t0, f"tf = {tf} must be greater than t0 = {t0}")
        require(self.n_coeffs >= 3, f"n_coeffs = {self.n_coeffs}: PAN needs N >= 3 (the initial condition "
                                    "fixes two coefficient rows)")
        require(self.n_points == 0 or self.n_points >= self.n_coeffs,
                f"n_points = {self.n_points} is fewer than n_coeffs = {self.n_coeffs}: use n_points >= "
                f"{self.n_coeffs} (or 0 for n_points = n_coeffs)")
        require(self.subinterval is None or self.subinterval >= 0,
                f"subinterval = {self.subinterval}: must be >= 0 (0: one interval)")
        for key in ("tol", "ls_tol", "newton_tol"):
            value = getattr(self, key)
            require(value is None or value > 0, f"{key} = {value}: must be > 0")
        for key in ("ls_max_it", "newton_max_it"):
            require(getattr(self, key) >= 1, f"{key} = {getattr(self, key)}: must be >= 1")
        try:
            tokens = shlex.split(self.petsc)
        except ValueError as err:
            require(False, f"petsc = {self.petsc!r} cannot be parsed ({err}); quote it as one string")
        require(not tokens or tokens[0].startswith("-"),
                f"petsc = {self.petsc!r}: PETSc options start with '-', e.g. \"-snes_type newtonls\"")

    def resolved(self) -> dict:
        problem = configured_problem(self, "ivp")
        return {"t0": problem.t0 if self.t0 is None else self.t0,
                "tf": problem.tf if self.tf is None else self.tf,
                "subinterval": problem.subinterval if self.subinterval is None else self.subinterval,
                "n_points": self.n_points or self.n_coeffs,
                "ls_tol": self.tol if self.ls_tol is None else self.ls_tol,
                "newton_tol": self.tol if self.newton_tol is None else self.newton_tol}

    def identity(self) -> dict:
        """The options that define the solution: a checkpoint must match them to be resumed."""
        keys = ("problem", "problem_args", "n_coeffs", "ls_max_it", "newton_max_it", "petsc")
        return {**{key: getattr(self, key) for key in keys}, **self.resolved()}


def reference_solution(comm, problem, t0: float, tf: float) -> np.ndarray:
    """DOP853 at rtol = atol = 1e-13 on rank 0, broadcast."""
    from scipy.integrate import solve_ivp

    y = None
    if comm.rank == 0:
        y = solve_ivp(problem.numpy_f, (t0, tf), problem.y0, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    return comm.bcast(y, root=0)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    problem = configured_problem(cfg, "ivp")
    r = cfg.resolved()
    times = subinterval_bounds(r["t0"], r["tf"], r["subinterval"])
    progress(f"PAN on {comm.size} ranks: {problem.name}, t in [{r['t0']}, {r['tf']}], {len(times) - 1} "
             f"subinterval(s), N = {cfg.n_coeffs}, M = {r['n_points']}, tol_ls = {r['ls_tol']:g}, "
             f"tol_newton = {r['newton_tol']:g}" + (f", PETSc options {cfg.petsc!r}" if cfg.petsc else ""))

    hook = CheckpointHook(comm, cfg, "pan", cfg.identity(), progress)
    resume = None
    if cfg.restart:
        meta, arrays, root = hook.load(cfg.restart)
        resume = PANState(int(meta["iteration"]), root["y"], list(root["coefficients"]),
                          list(root["ls_iterations"]), list(root["newton_iterations"]), list(root["residuals"]),
                          dict(zip(COUNTERS, (int(c) for c in arrays["counters"]))))
        progress(f"restarting from {cfg.restart} after subinterval {resume.done}")

    def after_interval(state: PANState) -> bool:
        return hook(state.done, lambda: {"counters": np.array([state.counters[k] for k in COUNTERS])},
                    lambda: {"y": state.y, "coefficients": np.array(state.coefficients),
                             "ls_iterations": np.array(state.ls_iterations),
                             "newton_iterations": np.array(state.newton_iterations),
                             "residuals": np.array(state.residuals)})

    comm.Barrier()
    run_timers = Timers()
    try:
        result = pan(comm, problem, problem.y0, times, n_coeffs=cfg.n_coeffs, n_points=r["n_points"],
                     ls_tol=r["ls_tol"], ls_max_it=cfg.ls_max_it, newton_tol=r["newton_tol"],
                     newton_max_it=cfg.newton_max_it, petsc_options=cfg.petsc, resume=resume,
                     after_interval=after_interval, progress=progress)
    except (PANDiverged, PANError) as err:
        progress(f"error: {err}")
        return EXIT_FAILED
    pan_seconds = comm.allreduce(run_timers.elapsed(), op=MPI.MAX)
    if result.interrupted:
        progress(f"stopped after subinterval {result.state.done}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED

    state = result.state
    error = float("nan")
    if cfg.reference:
        error = float(np.linalg.norm(result.y_end - reference_solution(comm, problem, r["t0"], r["tf"])))
    totals = run_totals(comm, result.counters)
    a, b = block_partition(len(state.coefficients), comm.size, comm.rank)
    coefficients = np.array(state.coefficients)[a:b].reshape(b - a, cfg.n_coeffs, problem.dim)
    write_result(
        comm, cfg.output, method="pan", config=cfg.as_dict(),
        history={"ls_iterations": np.array(state.ls_iterations), "newton_iterations":
                 np.array(state.newton_iterations), "residual": np.array(state.residuals)},
        timings=result.timings, counters=result.counters,
        solution={"coefficients": coefficients},
        data={"times": times, "y0": problem.y0, "y_end": result.y_end},
        attrs={"error": error, "pan_seconds": pan_seconds, "restarted_from": cfg.restart,
               "batches_ls": totals["batches_ls"], "batches_newton": totals["batches_newton"],
               "nfe_ls": totals["point_evaluations_ls"], "nfe_newton": totals["point_evaluations_newton"],
               "jacobian_evaluations": totals["point_jacobians"], **result.solver_types,
               "n_points": r["n_points"], "subinterval": r["subinterval"]})
    progress(f"done: parallel depth {totals['batches_ls']} + {totals['batches_newton']} "
             f"batched evaluations, {totals['point_evaluations_ls']} + {totals['point_evaluations_newton']} "
             f"point evaluations, time {pan_seconds:.3f} s"
             + (f", error at t = {r['tf']:g} vs DOP853 {error:.3e}" if cfg.reference else ""))
    progress(f"y({r['tf']:g}) = {np.array2string(result.y_end, precision=10)}; result written to {cfg.output}")
    return 0
