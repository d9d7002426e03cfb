"""``paraflow-hpc run parareal``: options, problem and propagators from the config, HDF5 out."""
from __future__ import annotations

import sys

from dataclasses import dataclass
from typing import Optional

import numpy as np
from mpi4py import MPI

from ..algorithms.parareal import (NORMS, STOP_RULES, PararealState, StoppingRule, model_seconds, parareal,
                                   serial_fine, subinterval_bounds)
from ..comm import EXIT_NON_FINITE, NonFiniteError, Progress, Timers, block_partition
from ..config import ConfigError, RunConfig, option, require
from ..io.results import write_result
from ..propagators import PROPAGATORS, make_propagator
from .common import (EXIT_PREEMPTED, CheckpointHook, configured_problem, problem_args_option, problem_option,
                     time_span)


@dataclass
class Config(RunConfig):
    method = "parareal"
    problem: str = problem_option("lorenz", "ode")
    problem_args: dict = problem_args_option()
    t0: Optional[float] = option(None, "start time (default: the problem's)")
    tf: Optional[float] = option(None, "end time (default: the problem's)")
    intervals: int = option(180, "number of time subintervals N (a whole multiple of the ranks is best)")
    coarse: str = option("rk4", "coarse propagator G", choices=["euler", "rk4"])
    coarse_steps: int = option(1, "steps of G per subinterval")
    fine: str = option("rk4", "fine propagator F", choices=list(PROPAGATORS))
    fine_steps: int = option(80, "steps of F per subinterval (euler/rk4)")
    fine_rtol: float = option(1e-10, "relative tolerance of F (rk45/dop853)")
    fine_atol: float = option(1e-12, "absolute tolerance of F (rk45/dop853)")
    tol: float = option(1e-8, "stop when the stopping measure (see stop, norm, relative) is <= tol")
    stop: str = option("residual", "stop on the residual F(U_n) - U_{n+1} of the iterate, or on the update "
                       "U^k - U^{k-1} (one iteration later)", choices=list(STOP_RULES))
    norm: str = option("l2", "norm of the stopping measure over boundaries: l2 (of per-point 2-norms) or max",
                       choices=list(NORMS))
    relative: bool = option(False, "divide the stopping measure by the same norm of the iterate")
    pipelined: bool = option(False, "overlap each iteration's decision with the next iteration's work (pays "
                             "on many ranks, roughly when K (P - 1) tau_G > tau_F; that work is lost once)")
    k_max: int = option(0, "iteration limit (0: N, where Parareal is exact)")
    reference: bool = option(True, "compute the serial fine solution to record the error per iteration")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        problem = configured_problem(self, "ode")
        time_span(self, problem)
        require(self.intervals >= 1, f"intervals = {self.intervals}: must be >= 1")
        require(self.intervals >= comm_size,
                f"intervals = {self.intervals} is smaller than the {comm_size} MPI ranks; "
                f"use intervals >= {comm_size} or fewer ranks")
        for key in ("coarse_steps", "fine_steps"):
            require(getattr(self, key) >= 1, f"{key} = {getattr(self, key)}: must be >= 1")
        for key in ("fine_rtol", "fine_atol"):
            require(getattr(self, key) > 0, f"{key} = {getattr(self, key)}: must be > 0")
        require(self.tol >= 0, f"tol = {self.tol}: must be >= 0")
        require(self.k_max >= 0, f"k_max = {self.k_max}: must be >= 0 (0 means N)")
        if self.fine in ("euler", "rk4") and self.fine == self.coarse and self.fine_steps <= self.coarse_steps:
            raise ConfigError(f"fine_steps = {self.fine_steps} must exceed coarse_steps = {self.coarse_steps} "
                              "when F and G are the same method, or F is no finer than G")

    def identity(self) -> dict:
        """The options that define the solution: a checkpoint must match them to be resumed."""
        keys = ("problem", "problem_args", "t0", "tf", "intervals", "coarse", "coarse_steps", "fine", "fine_steps",
                "fine_rtol", "fine_atol", "tol", "stop", "norm", "relative", "k_max", "reference")
        return {key: getattr(self, key) for key in keys}

    def checkpoint_limits(self) -> dict:
        """Counts a checkpoint of this run can hold: iterations up to its limit."""
        return {"iteration": min(self.k_max or self.intervals, self.intervals)}

    def checkpoint_spec(self, rank, nranks: int) -> dict:
        """The arrays a checkpoint of this run holds: rank ``rank``'s block (m subintervals) of
        values of the problem's shape d, or the shared histories (``rank == "root"``)."""
        if rank == "root":
            return {"jumps": ((None,), "f"), "errors": ((None,), "f"), "residuals": ((None,), "f")}
        d = np.shape(configured_problem(self, "ode").y0())
        a, b = block_partition(self.intervals, nranks, rank)
        return {"boundaries": ((b - a + 1,) + d, "f"), "coarse_old": ((b - a,) + d, "f"),
                "fine": ((b - a,) + d, "f"),
                # fine calls, coarse calls, rhs evaluations, seconds: this rank's totals so far
                "counters": ((4,), "f")}


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    problem = configured_problem(cfg, "ode")
    t0, tf = time_span(cfg, problem)
    times = subinterval_bounds(t0, tf, cfg.intervals)
    coarse = make_propagator(cfg.coarse, problem.f, cfg.coarse_steps)
    fine = make_propagator(cfg.fine, problem.f, cfg.fine_steps, cfg.fine_rtol, cfg.fine_atol)
    y0 = problem.y0()
    progress(f"Parareal on {comm.size} ranks: {problem.name}, t in [{t0}, {tf}], N = {cfg.intervals}, "
             f"G = {coarse.describe()}, F = {fine.describe()}")

    reference, serial_seconds = None, float("nan")
    if cfg.reference:
        ref_timers = Timers()
        comm.Barrier()
        reference = serial_fine(comm, fine, y0, times, ref_timers)
        comm.Barrier()
        serial_seconds = comm.allreduce(ref_timers.elapsed(), op=MPI.MAX)
        progress(f"serial fine solution: {serial_seconds:.3f} s")

    hook = CheckpointHook(comm, cfg, "parareal", cfg.identity(), progress,
                          fix="F or G is unstable at this step size; increase fine_steps / coarse_steps or intervals")
    # Counters and the run time so far of this rank, checkpointed so that a restarted run reports
    # totals over all its segments: fine_calls, coarse_calls, rhs_evaluations, seconds.
    done = np.zeros(4)
    resume = None
    if cfg.restart:
        meta, arrays, root = hook.load(cfg.restart)
        resume = PararealState(int(meta["iteration"]), arrays["boundaries"], arrays["coarse_old"],
                               arrays["fine"], list(root["jumps"]), list(root["errors"]), list(root["residuals"]))
        done = arrays["counters"].astype(float)
        progress(f"restarting from {cfg.restart} after iteration {resume.k}")

    calls = {"fine": 0, "coarse": 0}

    def counted(propagator, key):
        def call(*args):
            calls[key] += 1
            return propagator(*args)
        return call

    def so_far() -> np.ndarray:
        return done + [calls["fine"], calls["coarse"], problem.nfev, run_timers.elapsed()]

    def after_iteration(state: PararealState) -> bool:
        # F's values for the next iteration are computed by now: a non-finite one stops every rank
        # here, before it reaches a checkpoint
        finite = bool(np.isfinite(state.boundaries).all() and np.isfinite(state.fine).all())
        return hook(state.k, lambda: {"boundaries": state.boundaries, "coarse_old": state.coarse_old,
                                      "fine": state.fine, "counters": so_far()},
                    lambda: {"jumps": np.array(state.jumps), "errors": np.array(state.errors),
                             "residuals": np.array(state.residuals)}, finite=finite)

    problem.nfev = 0
    comm.Barrier()
    run_timers = Timers()
    try:
        stopping = StoppingRule(cfg.tol, cfg.stop, cfg.norm, cfg.relative)
        result = parareal(comm, counted(coarse, "coarse"), counted(fine, "fine"), y0, times, stopping=stopping, pipelined=cfg.pipelined,
                          k_max=cfg.k_max or cfg.intervals,
                          reference=reference, resume=resume, after_iteration=after_iteration,
                          progress=progress)
    except FloatingPointError as err:   # raised on every rank alike, from the reduced norms
        raise NonFiniteError(str(err)) from None
    comm.Barrier()
    total = so_far()
    parareal_seconds = comm.allreduce(total[3], op=MPI.MAX)
    if result.interrupted:
        progress(f"stopped after iteration {result.iterations}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED

    # the schedule's bound with free communication, from this run's per-call costs (algorithms.parareal)
    timings = result.timings
    fine_calls = comm.allgather(result.fine_calls)
    tau_f = comm.allreduce(timings.get("fine", 0.0)) / max(1, sum(fine_calls))
    tau_g = comm.allreduce(timings.get("coarse", 0.0)) / max(1, comm.allreduce(result.coarse_calls))
    model = model_seconds(cfg.intervals, tau_f, tau_g, result.iterations + 1, max(fine_calls), cfg.pipelined)
    # a segment that only finishes a restarted run may have made no propagator call: no bound to give
    bound = cfg.intervals * tau_f / model if model > 0 else float("nan")
    speedup = serial_seconds / parareal_seconds
    counters = {"fine_calls": int(total[0]), "coarse_calls": int(total[1]), "rhs_evaluations": int(total[2])}
    write_result(
        comm, cfg.output, method="parareal", config=cfg.as_dict(),
        # indexed by iteration k = 0..K; the update is undefined at k = 0
        history={"update_norm": np.array([np.nan] + result.jumps), "error": np.array(result.errors, dtype=float),
                 "residual_norm": np.array(result.residuals if result.residuals else
                                           [np.nan] * (result.iterations + 1), dtype=float)},
        timings=result.timings, counters=counters,
        solution={"boundaries": result.boundaries},
        data={"times": times, "y0": y0},
        attrs={"iterations": result.iterations, "converged": result.converged,
               "serial_fine_seconds": serial_seconds, "parareal_seconds": parareal_seconds,
               "speedup": speedup, "model_speedup": bound, "efficiency": speedup / bound,
               "restarted_from": cfg.restart,
               "timings_cover": "timings/ and model_speedup: this segment of the run only (since its start "
                                "or restart); counters, parareal_seconds and speedup: all segments together"})
    final = comm.bcast(result.boundaries[-1] if comm.rank == comm.size - 1 else None, root=comm.size - 1)
    progress(f"done: {result.iterations} iterations, converged = {result.converged}, "
             f"final error vs serial fine = {result.errors[-1] if result.errors else float('nan'):.3e}, "
             f"time {parareal_seconds:.3f} s (serial fine {serial_seconds:.3f} s)")
    if cfg.reference and not cfg.restart:
        progress(f"speed-up {speedup:.2f} vs the schedule's bound {bound:.2f} on {comm.size} ranks "
                 f"(about P/(fine sweeps) = {comm.size}/{max(fine_calls) / -(-cfg.intervals // comm.size):.0f}, "
                 f"from tau_F/tau_G = {tau_f / tau_g:.0f}): efficiency {speedup / bound:.2f}")
    progress(f"y({tf}) = {np.array2string(final, precision=8)}; result written to {cfg.output}")
    if not result.converged:   # written for inspection, but never reported as a success
        if comm.rank == 0:
            print(f"error: Parareal did not converge in k_max = {result.iterations} iterations (tol = {cfg.tol:g}); "
                  f"the unconverged iterate is in {cfg.output}: raise --k-max (k = N is exact) or loosen --tol",
                  file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    return 0

