"""Space-time Parareal: pipelined Parareal over ``comm_time`` whose states are distributed PETSc Vecs.

The world of P·S ranks is a P × S grid (``comm.space_time_split``): time group t owns a block
of consecutive subintervals [a, b), as in ``parareal.py``, and its S ranks share every state of
that block as one Vec on ``comm_space`` (a DMDA: each rank owns a piece of the grid). Iteration k:

    U_0^k = u0,   U_{n+1}^k = G(U_n^k) + F(U_n^{k-1}) − G(U_n^{k-1}),

with U_{n+1}^k = F(U_n^{k-1}) itself on the boundaries that are exact after iteration k (n < k),
so at k = N the result *is* the sequential fine solution (Gander & Vandewalle 2007, Thm 4.9).
G and F are callables ``prop(u_in, t0, t1, out)`` on Vecs (PETSc TS: ``propagators_petsc.py``).

The pieces of a state travel without PETSc: rank (t, s) sends the raw local array of U_b to
rank (t + 1, s) on ``comm_time``; every time group has the same DMDA layout, so rank s of the
next group owns exactly the same grid points. Norms are global over space first (:func:`max_norm`,
collective on ``comm_space``, identical on the S ranks, a NaN on any rank kept), then the maximum over time groups
(an allreduce on ``comm_time``), so every one of the P·S ranks takes the same decisions.
The schedule (speculative fine solves while the convergence reduction is in flight) is the
one of ``parareal.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from mpi4py import MPI

from ..comm import Timers, block_partition

TAG_BOUNDARY = 12


@dataclass
class SpaceTimeState:
    """Everything needed to continue after iteration ``k`` (checkpointed between iterations).

    Lists of global Vecs on ``comm_space``: ``boundaries`` U_a .. U_b (m + 1), ``coarse_old``
    G(U_n^k) and ``fine`` F(U_n^k) (valid where n >= k) for the block's m subintervals.
    """

    k: int
    boundaries: list
    coarse_old: list
    fine: list
    jumps: list = field(default_factory=list)
    errors: list = field(default_factory=list)

    def local_arrays(self) -> dict[str, np.ndarray]:
        """This rank's pieces as arrays of shape (m + 1 or m, local size), for a checkpoint."""
        return {name: np.array([v.getArray(readonly=True) for v in getattr(self, name)])
                for name in ("boundaries", "coarse_old", "fine")}

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Inverse of :meth:`local_arrays` (the same layout); raises ValueError on a shape mismatch."""
        for name in ("boundaries", "coarse_old", "fine"):
            vecs, data = getattr(self, name), arrays[name]
            if data.shape != (len(vecs), vecs[0].getLocalSize()):
                raise ValueError(f"{name}: stored shape {data.shape}, this layout needs "
                                 f"{(len(vecs), vecs[0].getLocalSize())}")
            for vec, row in zip(vecs, data):
                with vec as arr:
                    arr[:] = row


@dataclass
class SpaceTimeResult:
    iterations: int
    converged: bool
    interrupted: bool
    first_subinterval: int
    boundaries: list            # Vecs U_{a+1} .. U_b: the end values of this time group's subintervals
    jumps: list                 # max-norm update per iteration 1..k (identical on all ranks)
    errors: list                # max-norm error against the sequential fine solution, iterations 0..k
    timings: dict
    fine_calls: int
    coarse_calls: int


def zero_vecs(template, count: int) -> list:
    """``count`` new Vecs shaped like ``template``, all zero."""
    out = [template.duplicate() for _ in range(count)]
    for v in out:
        v.zeroEntries()
    return out


def new_state(k: int, template, m: int) -> SpaceTimeState:
    """A zero state for a block of ``m`` subintervals, Vecs shaped like ``template``."""
    return SpaceTimeState(k, zero_vecs(template, m + 1), zero_vecs(template, m), zero_vecs(template, m))


def max_norm(vec) -> float:
    """max |v_i| over the whole distributed Vec (collective on its communicator); inf if any entry on
    any rank is NaN or inf. Not VecNorm: its MPI_MAX reduction may drop a NaN that only a rank
    other than the first holds, and a NaN that no norm sees would be reported as a result."""
    arr = vec.getArray(readonly=True)
    local = float(np.max(np.abs(arr))) if arr.size else 0.0
    return vec.getComm().tompi4py().allreduce(local if np.isfinite(local) else np.inf, op=MPI.MAX)


def _recv(comm_time, vec, source: int) -> None:
    with vec as arr:  # the context marks the Vec changed, so no stale cached norm survives
        comm_time.Recv(arr, source=source, tag=TAG_BOUNDARY)


def _send(comm_time, vec, dest: int) -> None:
    comm_time.Send(vec.getArray(readonly=True), dest=dest, tag=TAG_BOUNDARY)


def serial_fine_st(comm_time, fine: Callable, u0, times: np.ndarray, timers: Timers | None = None, *,
                   out: list | None = None, start: int = 0,
                   after_subinterval: Callable[[int], bool] | None = None) -> tuple[list, int]:
    """The sequential fine solution at this time group's boundaries U_a .. U_b: (Vecs, subintervals done).

    A chain through the time groups (each applies F to its block after receiving its start
    value), so it costs as long as one space-parallel group doing all N fine solves: the
    reference for the error and the space-only baseline. The groups step through the N
    subintervals in lock-step (the one owning subinterval n computes, the others pass), so that
    ``after_subinterval(n)``, called on every rank between subintervals n - 1 and n (n = 1 .. N - 1),
    may be collective over all P·S ranks; returning True stops the sweep there, with n done.

    ``out``: this group's m + 1 Vecs to fill (new zero Vecs if None); a sweep continued from
    ``start`` > 0 (a checkpoint) must hold U_n correctly for a <= n <= min(b, start): the value
    the next subinterval starts from, in the group that owns it.
    """
    timers = timers or Timers()
    n_intervals = len(times) - 1
    a, b = block_partition(n_intervals, comm_time.size, comm_time.rank)
    out = zero_vecs(u0, b - a + 1) if out is None else out
    if comm_time.rank == 0 and start == 0:
        u0.copy(out[0])
    for n in range(start, n_intervals):
        if a <= n < b:
            with timers("fine"):
                fine(out[n - a], times[n], times[n + 1], out[n - a + 1])
        # U_{n+1} starts the next group's block: handed on within this step, before any collective
        if n + 1 == b and comm_time.rank < comm_time.size - 1:
            _send(comm_time, out[-1], comm_time.rank + 1)
        if n + 1 == a:
            with timers("wait"):
                _recv(comm_time, out[0], comm_time.rank - 1)
        if n + 1 < n_intervals and after_subinterval is not None and after_subinterval(n + 1):
            return out, n + 1
    return out, n_intervals


def parareal_st(comm_time, coarse: Callable, fine: Callable, u0, times: np.ndarray, *,
                tol: float, k_max: int, reference: list | None = None,
                resume: SpaceTimeState | None = None,
                after_iteration: Callable[[SpaceTimeState], bool] | None = None,
                progress: Callable[[str], None] | None = None) -> SpaceTimeResult:
    """Run Parareal on ``comm_time`` over the boundaries ``times`` (N + 1 points, N >= comm_time.size).

    ``u0``: the initial state, a global Vec on this rank's space communicator (all Vecs share its
    layout). ``coarse``/``fine``: ``prop(u_in, t0, t1, out)``, collective on the space communicator.
    ``reference``: this group's sequential fine boundaries (from :func:`serial_fine_st`) to record
    the error per iteration. ``resume``: a state from :func:`new_state` filled from a checkpoint.
    ``after_iteration(state)`` is called collectively (all P·S ranks) after every iteration that does
    not end the run; returning True stops the run there (preemption), with ``interrupted`` set.
    Raises FloatingPointError (on every rank alike) when an update is not finite.
    """
    n_intervals = len(times) - 1
    if n_intervals < comm_time.size:
        raise ValueError(f"{n_intervals} subintervals cannot be spread over {comm_time.size} time groups")
    a, b = block_partition(n_intervals, comm_time.size, comm_time.rank)
    m = b - a
    timers = Timers()
    calls = {"fine": 0, "coarse": 0}
    first, last = comm_time.rank == 0, comm_time.rank == comm_time.size - 1
    k_stop = min(k_max, n_intervals)
    g, new = u0.duplicate(), u0.duplicate()  # work Vecs

    def run_fine(state: SpaceTimeState):
        """F(U_n^k) for every subinterval not yet exact (n >= k)."""
        with timers("fine"):
            for n in range(max(a, state.k), b):
                fine(state.boundaries[n - a], times[n], times[n + 1], state.fine[n - a])
                calls["fine"] += 1

    def error_of(state) -> float:
        if reference is None:
            return 0.0
        worst = 0.0
        for u, r in zip(state.boundaries[1:], reference[1:]):
            new.waxpy(-1.0, r, u)
            e = max_norm(new)
            worst = max(worst, e) if np.isfinite(e) else np.inf   # Python's max drops a NaN
        return worst

    def sweep(state: SpaceTimeState) -> float:
        """Coarse sweep of iteration state.k; returns this block's max-norm update (global over space)."""
        k, U = state.k, state.boundaries
        if first:
            u0.copy(U[0])
        elif a >= k:  # U_a changes in this iteration only while it is not yet exact
            with timers("wait"):
                _recv(comm_time, U[0], comm_time.rank - 1)
        jump = 0.0
        for n in range(a, b):
            i = n - a
            if k == 0:
                with timers("coarse"):
                    coarse(U[i], times[n], times[n + 1], state.coarse_old[i])
                    calls["coarse"] += 1
                state.coarse_old[i].copy(U[i + 1])
                continue
            if n < k - 1:
                continue  # U_{n+1} exact since an earlier iteration
            state.fine[i].copy(new)
            if n >= k:
                with timers("coarse"):
                    coarse(U[i], times[n], times[n + 1], g)
                    calls["coarse"] += 1
                new.axpy(-1.0, state.coarse_old[i])
                new.axpy(1.0, g)
                g.copy(state.coarse_old[i])
            U[i + 1].aypx(-1.0, new)  # U_{n+1} := new − U_{n+1}, the update, then U_{n+1} := new
            change = max_norm(U[i + 1])
            jump = max(jump, change) if np.isfinite(change) else np.inf
            new.copy(U[i + 1])
        if not last and b >= k:
            with timers("send"):
                _send(comm_time, U[-1], comm_time.rank + 1)
        return jump

    if resume is None:
        state = new_state(0, u0, m)
        sweep(state)
        state.errors.append(comm_time.allreduce(error_of(state), op=MPI.MAX))
        if progress:
            progress("iteration 0 (coarse prediction)" +
                     (f" error vs sequential fine {state.errors[0]:.3e}" if reference is not None else ""))
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
        request = comm_time.Iallreduce(local, total, op=MPI.MAX)
        if state.k < k_stop:
            run_fine(state)  # speculative: overlaps the later groups' coarse sweeps
        with timers("wait"):
            request.Wait()
        if not np.isfinite(total[0]):  # every rank sees the same reduced value, so all raise
            raise FloatingPointError(
                f"space-time Parareal diverged in iteration {state.k} (non-finite update): the coarse or "
                "fine propagator is unstable at this step size; increase coarse_steps / fine_steps")
        state.jumps.append(float(total[0]))
        state.errors.append(float(total[1]))
        converged = total[0] <= tol or state.k >= n_intervals
        if progress:
            progress(f"iteration {state.k}: max update {total[0]:.3e}" +
                     (f", error vs sequential fine {total[1]:.3e}" if reference is not None else ""))
        if not converged and state.k < k_stop and after_iteration is not None:
            if after_iteration(state):
                interrupted = True
                break

    g.destroy()
    new.destroy()
    return SpaceTimeResult(
        iterations=state.k, converged=bool(converged), interrupted=interrupted, first_subinterval=a,
        boundaries=state.boundaries[1:], jumps=state.jumps,
        errors=state.errors if reference is not None else [], timings=timers.as_dict(),
        fine_calls=calls["fine"], coarse_calls=calls["coarse"])
