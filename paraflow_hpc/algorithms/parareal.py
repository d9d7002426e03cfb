"""Parareal, pipelined, one rank per block of consecutive time subintervals.

Subinterval n is [T_n, T_{n+1}], boundary values U_n. Iteration k:

    U_0^k = y0,   U_{n+1}^k = G(U_n^k) + F(U_n^{k-1}) - G(U_n^{k-1}).

After iteration k the first k boundaries are exact (U_n^k = serial fine for n <= k):
there U_{n+1}^k is set to F(U_n^{k-1}) itself, so no coarse or fine work is
spent on them and at k = N the result *is* the serial fine solution.

Schedule on rank r (owning subintervals [a, b)): receive U_a^k from rank r-1,
sweep G through the block, send U_b^k to rank r+1, start a non-blocking
max-reduction of the update norm, then compute the fine solves for the next
iteration while the later ranks are still sweeping (the pipeline), and only then
wait for the reduction. If the reduction says "converged", that speculative fine
work is dropped: it costs nothing on the critical path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from mpi4py import MPI

from .. import validation
from ..comm import Timers, block_partition

TAG_BOUNDARY = 11


@dataclass
class PararealState:
    """Everything needed to continue after iteration ``k`` (checkpointed between iterations)."""

    k: int
    boundaries: np.ndarray      # U_a .. U_b of this rank's block, shape (m + 1, d)
    coarse_old: np.ndarray      # G(U_n^k) for this block, shape (m, d)
    fine: np.ndarray            # F(U_n^k) for this block (valid where n >= k), shape (m, d)
    jumps: list = field(default_factory=list)
    errors: list = field(default_factory=list)


@dataclass
class PararealResult:
    iterations: int
    converged: bool
    interrupted: bool
    first_subinterval: int
    boundaries: np.ndarray      # U_{a+1} .. U_b: the end values of this rank's subintervals
    jumps: list                 # max-norm update per iteration 1..k (identical on all ranks)
    errors: list                # max error against the serial fine solution, iterations 0..k
    timings: dict
    fine_calls: int
    coarse_calls: int


def subinterval_bounds(t0: float, tf: float, n_intervals: int) -> np.ndarray:
    return np.linspace(t0, tf, n_intervals + 1)


def serial_fine(comm, fine: Callable, y0: np.ndarray, times: np.ndarray, timers: Timers | None = None):
    """The serial fine solution at every boundary, computed as a chain through the ranks.

    Each rank applies F to its own block only after receiving its start value, so
    the chain costs exactly as long as one process doing all N fine solves: it is
    both the reference for the error and the serial baseline of the benchmark.
    Returns this rank's boundary values U_a .. U_b.
    """
    timers = timers or Timers()
    a, b = block_partition(len(times) - 1, comm.size, comm.rank)
    out = np.empty((b - a + 1,) + y0.shape, dtype=y0.dtype)
    if comm.rank == 0:
        out[0] = y0
    else:
        with timers("wait"):
            comm.Recv(out[0], source=comm.rank - 1, tag=TAG_BOUNDARY)
    with timers("fine"):
        for i, n in enumerate(range(a, b)):
            out[i + 1] = fine(out[i], times[n], times[n + 1])
    if comm.rank < comm.size - 1:
        comm.Send(out[-1], dest=comm.rank + 1, tag=TAG_BOUNDARY)
    return out


def parareal(comm, coarse: Callable, fine: Callable, y0: np.ndarray, times: np.ndarray, *,
             tol: float, k_max: int, reference: np.ndarray | None = None,
             resume: PararealState | None = None,
             after_iteration: Callable[[PararealState], bool] | None = None,
             progress: Callable[[str], None] | None = None) -> PararealResult:
    """Run Parareal on ``comm`` over the boundaries ``times`` (N + 1 points, N >= comm.size).

    ``reference``: this rank's serial fine boundary values (from :func:`serial_fine`) to
    record the error per iteration. ``after_iteration(state)`` is called collectively after
    every iteration that does not end the run (for checkpoints); returning True stops
    the run there (preemption), with ``interrupted`` set. ``y0`` is promoted as scipy's
    ``solve_ivp`` does (integers to float64); a non-finite ``y0``, ``tol < 0`` or ``k_max < 1``
    raise ConfigError (a ValueError, :mod:`paraflow_hpc.validation`).
    """
    n_intervals = len(times) - 1
    if n_intervals < comm.size:
        raise ValueError(f"{n_intervals} subintervals cannot be spread over {comm.size} ranks")
    a, b = block_partition(n_intervals, comm.size, comm.rank)
    m = b - a
    y0 = validation.state("y0", y0)   # ints promoted to float64, as solve_ivp does
    validation.nonnegative("tol", tol)
    validation.count("k_max", k_max, 1)
    timers = Timers()
    calls = {"fine": 0, "coarse": 0}
    first, last = comm.rank == 0, comm.rank == comm.size - 1
    k_stop = min(k_max, n_intervals)

    def run_fine(state: PararealState):
        """F(U_n^k) for every subinterval not yet exact (n >= k)."""
        with timers("fine"):
            for n in range(max(a, state.k), b):
                state.fine[n - a] = fine(state.boundaries[n - a], times[n], times[n + 1])
                calls["fine"] += 1

    def error_of(state):
        if reference is None or m == 0:
            return 0.0
        return float(np.max(np.abs(state.boundaries[1:] - reference[1:])))

    def sweep(state: PararealState) -> float:
        """Coarse sweep of iteration state.k; returns this block's max-norm update."""
        k, U = state.k, state.boundaries
        if first:
            U[0] = y0
        elif a >= k:  # U_a changes in this iteration only while it is not yet exact
            with timers("wait"):
                comm.Recv(U[0], source=comm.rank - 1, tag=TAG_BOUNDARY)
        jump = 0.0
        for n in range(a, b):
            i = n - a
            if k == 0:
                with timers("coarse"):
                    state.coarse_old[i] = coarse(U[i], times[n], times[n + 1])
                    calls["coarse"] += 1
                U[i + 1] = state.coarse_old[i]
                continue
            if n < k - 1:
                continue  # U_{n+1} exact since an earlier iteration
            new = state.fine[i].copy()
            if n >= k:
                with timers("coarse"):
                    g = coarse(U[i], times[n], times[n + 1])
                    calls["coarse"] += 1
                new = g + (state.fine[i] - state.coarse_old[i])
                state.coarse_old[i] = g
            change = float(np.max(np.abs(new - U[i + 1])))
            jump = max(jump, change) if np.isfinite(change) else np.inf
            U[i + 1] = new
        if not last and b >= k:
            with timers("send"):
                comm.Send(U[-1], dest=comm.rank + 1, tag=TAG_BOUNDARY)
        return jump

    if resume is None:
        shape = y0.shape
        state = PararealState(0, np.zeros((m + 1,) + shape, y0.dtype), np.zeros((m,) + shape, y0.dtype),
                              np.zeros((m,) + shape, y0.dtype))
        sweep(state)
        state.errors.append(comm.allreduce(error_of(state), op=MPI.MAX))
        if progress:
            progress(f"iteration 0 (coarse prediction)" +
                     (f" error vs serial fine {state.errors[0]:.3e}" if reference is not None else ""))
        if k_stop > 0:
            run_fine(state)
    else:
        state = resume

    converged = state.k >= n_intervals
    interrupted = False
    while state.k < k_stop and not converged:
        state.k += 1
        local = np.array([sweep(state), error_of(state)])
        total = np.empty(2)
        request = comm.Iallreduce(local, total, op=MPI.MAX)
        if state.k < k_stop:
            run_fine(state)  # speculative: overlaps the later ranks' coarse sweeps
        with timers("wait"):
            request.Wait()
        if not np.isfinite(total[0]):  # every rank sees the same reduced value, so all raise
            raise FloatingPointError(
                f"Parareal diverged in iteration {state.k} (non-finite update): the coarse or fine "
                "propagator is unstable at this step size; increase coarse_steps / fine_steps or intervals")
        state.jumps.append(float(total[0]))
        state.errors.append(float(total[1]))
        converged = total[0] <= tol or state.k >= n_intervals
        if progress:
            progress(f"iteration {state.k}: max update {total[0]:.3e}" +
                     (f", error vs serial fine {total[1]:.3e}" if reference is not None else ""))
        if not converged and state.k < k_stop and after_iteration is not None:
            if after_iteration(state):
                interrupted = True
                break

    return PararealResult(
        iterations=state.k, converged=bool(converged), interrupted=interrupted, first_subinterval=a,
        boundaries=state.boundaries[1:].copy(), jumps=state.jumps,
        errors=state.errors if reference is not None else [], timings=timers.as_dict(),
        fine_calls=calls["fine"], coarse_calls=calls["coarse"])
