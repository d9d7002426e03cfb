"""``paraflow-hpc run mgrit``: the level hierarchy and propagators from the config, HDF5 out."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from mpi4py import MPI

from ..algorithms.mgrit import CYCLES, RELAXATIONS, MgritState, hierarchy, mgrit
from ..algorithms.parareal import NORMS, StoppingRule, serial_fine, subinterval_bounds
from ..comm import EXIT_NON_FINITE, NonFiniteError, Progress, Timers, block_partition
from ..config import ConfigError, RunConfig, option, require
from ..io.results import write_result
from ..propagators import make_propagator
from .common import (EXIT_PREEMPTED, CheckpointHook, configured_problem, problem_args_option, problem_option,
                     time_span)


def per_level(values: list[int], count: int, name: str) -> list[int]:
    """One value for every level, or exactly ``count`` values."""
    if len(values) == 1:
        return values * count
    require(len(values) == count, f"{name} = {values}: give one value or {count} (one per level"
                                  f"{' pair' if name == 'coarsening' else ''})")
    return values


@dataclass
class Config(RunConfig):
    method = "mgrit"
    problem: str = problem_option("brusselator", "ode")
    problem_args: dict = problem_args_option()
    t0: Optional[float] = option(None, "start time (default: the problem's)")
    tf: Optional[float] = option(None, "end time (default: the problem's)")
    intervals: int = option(1024, "fine time intervals N (a multiple of the product of the coarsening factors)")
    levels: int = option(3, "number of time levels L >= 2")
    coarsening: list[int] = field(default_factory=lambda: [4], metadata={
        "help": "coarsening factor m per level pair: one value for all, or L - 1 values", "choices": None})
    propagator: str = option("rk4", "time stepper on every level", choices=["euler", "rk4"])
    steps: list[int] = field(default_factory=lambda: [1], metadata={
        "help": "steps of the stepper per interval on each level: one value for all, or L values", "choices": None})
    relaxation: str = option("FCF", "relaxation", choices=list(RELAXATIONS))
    cycle: str = option("V", "cycle", choices=list(CYCLES))
    nested: bool = option(True, "nested iteration for the initial guess")
    tol: float = option(1e-8, "stop when the residual norm is <= tol")
    norm: str = option("l2", "residual norm over time points: l2 (of per-point 2-norms) or max", choices=list(NORMS))
    relative: bool = option(False, "divide the residual norm by the same norm of the iterate")
    max_iter: int = option(50, "cycle limit")
    reference: bool = option(True, "compute the serial fine solution to record the error per cycle")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        problem = configured_problem(self, "ode")
        time_span(self, problem)
        require(self.levels >= 2, f"levels = {self.levels}: must be >= 2 (two levels with F-relaxation is Parareal)")
        require(self.intervals >= comm_size,
                f"intervals = {self.intervals} is smaller than the {comm_size} MPI ranks; "
                f"use intervals >= {comm_size} or fewer ranks")
        factors = per_level(self.coarsening, self.levels - 1, "coarsening")
        for m in factors:
            require(m >= 2, f"coarsening = {self.coarsening}: every factor m must be >= 2")
        try:
            hierarchy(self.intervals, factors)
        except ValueError as err:
            raise ConfigError(f"intervals = {self.intervals}, levels = {self.levels}, coarsening = "
                              f"{self.coarsening}: {err}") from None
        for s in per_level(self.steps, self.levels, "steps"):
            require(s >= 1, f"steps = {self.steps}: every value must be >= 1")
        require(self.tol >= 0, f"tol = {self.tol}: must be >= 0")
        require(self.max_iter >= 1, f"max_iter = {self.max_iter}: must be >= 1")

    def checkpoint_limits(self) -> dict:
        """Counts a checkpoint of this run can hold: cycles up to its limit."""
        return {"iteration": self.max_iter}

    def checkpoint_spec(self, rank, nranks: int) -> dict:
        """The arrays a checkpoint of this run holds: rank ``rank``'s level-0 points (a ghost and its
        block, :class:`~paraflow_hpc.algorithms.mgrit.MgritState`), or the shared histories."""
        if rank == "root":
            return {"residuals": ((None,), "f"), "errors": ((None,), "f")}
        d = np.shape(configured_problem(self, "ode").y0())
        a, b = block_partition(self.intervals, nranks, rank)
        return {"u": ((b + 2 if rank == 0 else b - a + 1,) + d, "f")}

    def identity(self) -> dict:
        """The options that define the solution: a checkpoint must match them to be resumed."""
        keys = ("problem", "problem_args", "t0", "tf", "intervals", "levels", "coarsening", "propagator", "steps", "relaxation",
                "cycle", "nested", "tol", "norm", "relative", "max_iter", "reference")
        return {key: getattr(self, key) for key in keys}


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    problem = configured_problem(cfg, "ode")
    t0, tf = time_span(cfg, problem)
    times = subinterval_bounds(t0, tf, cfg.intervals)
    factors = per_level(cfg.coarsening, cfg.levels - 1, "coarsening")
    phis = [make_propagator(cfg.propagator, problem.f, s) for s in per_level(cfg.steps, cfg.levels, "steps")]
    y0 = problem.y0()
    progress(f"MGRIT on {comm.size} ranks: {problem.name}, t in [{t0}, {tf}], N = {cfg.intervals}, "
             f"{cfg.levels} levels, m = {factors}, {cfg.relaxation}-relaxation, {cfg.cycle}-cycle, "
             f"Phi_l = {', '.join(p.describe() for p in phis)}")

    reference, serial_seconds = None, float("nan")
    if cfg.reference:
        ref_timers = Timers()
        comm.Barrier()
        chain = serial_fine(comm, phis[0], y0, times, ref_timers)
        comm.Barrier()
        serial_seconds = comm.allreduce(ref_timers.elapsed(), op=MPI.MAX)
        reference = chain if comm.rank == 0 else chain[1:]  # this rank's points: (a, b], and 0 on rank 0
        progress(f"serial fine solution: {serial_seconds:.3f} s")

    hook = CheckpointHook(comm, cfg, "mgrit", cfg.identity(), progress)
    resume = None
    if cfg.restart:
        meta, arrays, root = hook.load(cfg.restart)
        resume = MgritState(int(meta["iteration"]), arrays["u"], list(root["residuals"]), list(root["errors"]))
        progress(f"restarting from {cfg.restart} after cycle {resume.k}")

    def after_iteration(state: MgritState) -> bool:
        return hook(state.k, lambda: {"u": state.u},
                    lambda: {"residuals": np.array(state.residuals), "errors": np.array(state.errors)})

    problem.nfev = 0
    comm.Barrier()
    run_timers = Timers()
    stopping = StoppingRule(cfg.tol, "residual", cfg.norm, cfg.relative)
    try:
        result = mgrit(comm, phis, y0, times, factors, stopping=stopping,
                       max_iter=cfg.max_iter, relaxation=cfg.relaxation, cycle=cfg.cycle, nested=cfg.nested,
                       reference=reference, resume=resume, after_iteration=after_iteration, progress=progress)
    except FloatingPointError as err:   # raised on every rank alike, from the reduced residual
        raise NonFiniteError(str(err)) from None
    comm.Barrier()
    mgrit_seconds = comm.allreduce(run_timers.elapsed(), op=MPI.MAX)
    if result.interrupted:
        progress(f"stopped after cycle {result.iterations}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED

    counters = {f"calls_level{l}": c for l, c in enumerate(result.calls)} | {"rhs_evaluations": problem.nfev}
    write_result(
        comm, cfg.output, method="mgrit", config=cfg.as_dict(),
        # indexed by cycle k = 0..K; nothing is measured before the first cycle
        history={"residual_norm": np.array([np.nan] + result.residuals, dtype=float),
                 "error": np.array([np.nan] + result.errors if result.errors else [np.nan] * (result.iterations + 1),
                                   dtype=float)},
        timings=result.timings, counters=counters,
        solution={"u": result.values}, data={"times": times, "y0": y0},
        attrs={"iterations": result.iterations, "converged": result.converged,
               "serial_fine_seconds": serial_seconds, "mgrit_seconds": mgrit_seconds,
               "speedup": serial_seconds / mgrit_seconds, "restarted_from": cfg.restart})
    final = comm.bcast(result.values[-1] if comm.rank == comm.size - 1 else None, root=comm.size - 1)
    progress(f"done: {result.iterations} cycles, converged = {result.converged}, "
             f"final error vs serial fine = {result.errors[-1] if result.errors else float('nan'):.3e}, "
             f"time {mgrit_seconds:.3f} s (serial fine {serial_seconds:.3f} s)")
    progress(f"y({tf}) = {np.array2string(final, precision=8)}; result written to {cfg.output}")
    if not result.converged:   # written for inspection, but never reported as a success
        if comm.rank == 0:
            print(f"error: MGRIT did not converge in {result.iterations} cycles (residual "
                  f"{result.residuals[-1] if result.residuals else float('nan'):.3e} > tol = {cfg.tol:g}); "
                  f"the unconverged iterate is in {cfg.output}: raise --max-iter or loosen --tol",
                  file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    return 0
