"""Parareal, one rank per block of consecutive time subintervals.

Subinterval n is [T_n, T_{n+1}], boundary values U_n. Iteration k:

    U_0^k = y0,   U_{n+1}^k = G(U_n^k) + F(U_n^{k-1}) - G(U_n^{k-1}).

After iteration k the first k boundaries are exact (U_n^k = serial fine for n <= k):
there U_{n+1}^k is set to F(U_n^{k-1}) itself, so no coarse or fine work is
spent on them and at k = N the result *is* the serial fine solution.

Stopping (:class:`StoppingRule`): by default on the residual of the iterate,
r_{n+1}^k = F(U_n^k) - U_{n+1}^k, as MGRIT codes do (Falgout et al., SIAM J. Sci.
Comput. 36 (2014) C635, sec. 3; PyMGRIT's ``convergence_criterion``). Its fine
solves F(U_n^k) are the ones iteration k + 1 needs anyway, so the test costs no
extra fine work and stops at the first iterate that is accurate, one iteration
before the classical rule on the update ||U^k - U^{k-1}||, which is kept as
``rule="update"``.

Schedule on rank r (owning subintervals [a, b)), iteration k: receive U_a^k from
rank r-1, sweep G through the block, send U_b^k to rank r+1; then, synchronous
(default):
- residual rule: F(U_n^k) on the block's subintervals that are not yet exact, then
  the gather of the residual norms decides;
- update rule: the gather of the update norms decides first, and F(U_n^k) is
  computed only if another iteration follows.
No fine solve is spent after the decision to stop, and none on a subinterval that
is already exact (a rank whose block is exact does no fine work at all). The price
is one synchronisation per iteration: the fine sweeps of iteration k + 1 start after
the last rank's work of iteration k, so an iteration costs about N tau_G + m tau_F on
the critical path (m = subintervals per rank). ``pipelined=True`` instead posts the
gather non-blocking and runs ahead (update rule: F(U^k); residual rule: the coarse
sweep and F of iteration k + 1) before waiting for it, so rank r's fine solves overlap
the later ranks' coarse sweeps and an iteration costs about m (tau_F + tau_G); that
work is dropped once, after the last iteration. Pipelining pays when the
synchronisations cost more than one fine sweep, roughly K (P - 1) tau_G > tau_F; see
:func:`model_seconds`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .. import validation
from ..comm import Timers, block_partition

TAG_BOUNDARY = 11
STOP_RULES = ("residual", "update")
NORMS = ("max", "l2")


@dataclass(frozen=True)
class StoppingRule:
    """When an iteration stops; shared by Parareal and MGRIT.

    ``rule``: "residual" (||F(U_n) - U_{n+1}||, the default) or "update" (||U^k - U^{k-1}||,
    Parareal only). ``norm``: "max" (largest component over all time points) or "l2" (the
    2-norm over time points of the per-point 2-norms, PyMGRIT's ``t_norm=2``). ``relative``
    divides by the same norm of the iterate at the same time points. Converged when the
    measure is <= ``tol``.
    """

    tol: float
    rule: str = "residual"
    norm: str = "l2"
    relative: bool = False

    def __post_init__(self):
        if self.rule not in STOP_RULES:
            raise ValueError(f"stopping rule {self.rule!r}: choose one of {', '.join(STOP_RULES)}")
        if self.norm not in NORMS:
            raise ValueError(f"norm {self.norm!r}: choose one of {', '.join(NORMS)}")
        if not self.tol >= 0:
            raise ValueError(f"tol = {self.tol}: must be >= 0")

    def point_norm(self, v: np.ndarray) -> float:
        """Norm of one state (any shape, real or complex)."""
        if v.size == 0:
            return 0.0
        return float(np.max(np.abs(v))) if self.norm == "max" else float(np.linalg.norm(np.ravel(v)))

    def time_norm(self, point_norms: np.ndarray) -> float:
        """Combine per-time-point norms, given in global time order."""
        if len(point_norms) == 0:
            return 0.0
        return float(np.max(point_norms)) if self.norm == "max" else float(np.linalg.norm(point_norms))

    def measure(self, comm, diffs: Sequence[np.ndarray], values: Sequence[np.ndarray] | None = None) -> float:
        """Collective: the norm of this rank's ``diffs`` joined over ranks in time order.

        Per-point norms are gathered and combined in global order, so the value (and every
        decision taken on it) is bit-identical for any number of ranks. With ``relative``,
        ``values`` are the iterate at the same points.
        """
        local = [self.point_norm(d) for d in diffs]
        if self.relative:
            local += [self.point_norm(v) for v in values]
        gathered = comm.allgather(local)
        if not self.relative:
            return self.time_norm(np.concatenate([np.asarray(g, float) for g in gathered]))
        halves = [(g[:len(g) // 2], g[len(g) // 2:]) for g in gathered]
        top = self.time_norm(np.concatenate([np.asarray(h[0], float) for h in halves]))
        bottom = self.time_norm(np.concatenate([np.asarray(h[1], float) for h in halves]))
        return top / bottom if bottom > 0 else top

    def describe(self) -> str:
        return f"{'relative' if self.relative else 'absolute'} {self.norm}-norm {self.rule} <= {self.tol:g}"


@dataclass
class PararealState:
    """Everything needed to continue after iteration ``k`` (checkpointed between iterations)."""

    k: int
    boundaries: np.ndarray      # U_a .. U_b of this rank's block, shape (m + 1, d)
    coarse_old: np.ndarray      # G(U_n^k) for this block, shape (m, d)
    fine: np.ndarray            # F(U_n^k) for this block (valid where n >= k), shape (m, d)
    jumps: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    residuals: list = field(default_factory=list)


@dataclass
class PararealResult:
    iterations: int
    converged: bool
    interrupted: bool
    first_subinterval: int
    boundaries: np.ndarray      # U_{a+1} .. U_b: the end values of this rank's subintervals
    jumps: list                 # update norm per iteration 1..K (identical on all ranks)
    residuals: list             # residual norm per iteration 0..K (residual rule; else empty)
    errors: list                # max error against the serial fine solution, iterations 0..K
    timings: dict
    fine_calls: int
    coarse_calls: int


def subinterval_bounds(t0: float, tf: float, n_intervals: int) -> np.ndarray:
    return np.linspace(t0, tf, n_intervals + 1)


def model_seconds(n_intervals: int, tau_fine: float, tau_coarse: float, coarse_sweeps: int,
                  fine_calls_critical: int, pipelined: bool = False) -> float:
    """Run time of the schedule with free communication [s].

    Synchronous (default): every iteration's decision synchronises the ranks, so each coarse
    sweep is a chain through all N subintervals, and the fine sweeps cost the fine calls of
    the busiest rank: T = coarse_sweeps N tau_G + fine_calls_critical tau_F. Pipelined: one
    chain N tau_G fills the pipeline, then each of the busiest rank's subintervals costs
    tau_F + tau_G: T = N tau_G + fine_calls_critical (tau_F + tau_G). The serial fine solve
    costs N tau_F, so the speed-up bound is about P / (fine sweeps): P / (K + 1) for the
    residual rule, P / K for the update rule, one sweep more when pipelined.
    """
    if pipelined:
        return n_intervals * tau_coarse + fine_calls_critical * (tau_fine + tau_coarse)
    return coarse_sweeps * n_intervals * tau_coarse + fine_calls_critical * tau_fine


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
             tol: float | None = None, k_max: int, stopping: StoppingRule | None = None,
             pipelined: bool = False, reference: np.ndarray | None = None, resume: PararealState | None = None,
             after_iteration: Callable[[PararealState], bool] | None = None,
             progress: Callable[[str], None] | None = None) -> PararealResult:
    """Run Parareal on ``comm`` over the boundaries ``times`` (N + 1 points, N >= comm.size).

    ``coarse``/``fine``: G and F, ``phi(y, t0, t1) -> y`` on arrays of ``y0``'s shape and
    dtype. ``stopping``: the rule (default: absolute l2-norm residual <= ``tol``).
    ``pipelined``: overlap the decision of iteration k with the work of iteration k + 1
    (update rule: F(U^k); residual rule: the coarse sweep and F of iteration k + 1), which
    keeps the pipeline full on many ranks at the price of that work once, after the last
    iteration; the iterates are the same. ``reference``: this rank's serial fine boundary
    values (from :func:`serial_fine`) to record the max error per iteration.
    ``after_iteration(state)`` is called collectively after every iteration k >= 1 that does not end
    the run (for checkpoints); returning True stops the run there (preemption), with
    ``interrupted`` set.

    ``y0`` is promoted as scipy's ``solve_ivp`` does (integers to float64); a non-finite ``y0``,
    ``tol < 0`` or ``k_max < 1`` raise ConfigError (a ValueError, :mod:`paraflow_hpc.validation`).

    Raises ``ValueError`` for fewer subintervals than ranks and ``FloatingPointError`` (on
    every rank alike) when an iterate becomes non-finite.
    """
    stopping = stopping or StoppingRule(tol)
    n_intervals = len(times) - 1
    if n_intervals < comm.size:
        raise ValueError(f"{n_intervals} subintervals cannot be spread over {comm.size} ranks")
    a, b = block_partition(n_intervals, comm.size, comm.rank)
    m = b - a
    # per rank: update, residual and iterate norms per boundary, and the error
    counts = [3 * (hi - lo) + 1 for lo, hi in (block_partition(n_intervals, comm.size, r) for r in range(comm.size))]
    y0 = validation.state("y0", y0)   # ints promoted to float64, as solve_ivp does
    validation.nonnegative("tol", stopping.tol)
    validation.count("k_max", k_max, 1)
    timers = Timers()
    calls = {"fine": 0, "coarse": 0}
    first, last = comm.rank == 0, comm.rank == comm.size - 1
    k_stop = min(k_max, n_intervals)
    residual_rule = stopping.rule == "residual"

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

    def sweep(state: PararealState) -> list:
        """Coarse sweep of iteration state.k; returns the changes U_{n+1}^k - U_{n+1}^{k-1}."""
        k, U = state.k, state.boundaries
        if first:
            U[0] = y0
        elif a >= k:  # U_a changes in this iteration only while it is not yet exact
            with timers("wait"):
                comm.Recv(U[0], source=comm.rank - 1, tag=TAG_BOUNDARY)
        changes = [np.zeros_like(y0)] * m
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
            changes[i] = new - U[i + 1]
            U[i + 1] = new
        if not last and b >= k:
            with timers("send"):
                comm.Send(U[-1], dest=comm.rank + 1, tag=TAG_BOUNDARY)
        return changes

    def start_measure(state: PararealState, changes):
        """Post the gather of this iterate's per-boundary norms (F(U^k) computed if residual rule)."""
        k, U = state.k, state.boundaries
        norm = stopping.point_norm
        residual = [norm(state.fine[n - a] - U[n - a + 1]) if residual_rule and n >= k else 0.0
                    for n in range(a, b)]  # exact subintervals (n < k): F(U_n^k) = U_{n+1}^k
        values = [norm(u) for u in U[1:]] if stopping.relative else [0.0] * m
        send = np.array([norm(c) for c in changes] + residual + values + [error_of(state)], dtype=float)
        recv = np.empty(sum(counts))
        return comm.Iallgatherv(send, [recv, counts]), recv

    def finish_measure(state: PararealState, k: int, pending) -> bool:
        """Complete the gather for iterate k, record its norms and decide whether it is the last."""
        request, recv = pending
        with timers("wait"):
            request.Wait()
        parts = np.split(recv, np.cumsum(counts)[:-1])
        sizes = [(c - 1) // 3 for c in counts]
        joined = [np.concatenate([p[j * n:(j + 1) * n] for p, n in zip(parts, sizes)]) for j in range(3)]
        scale = stopping.time_norm(joined[2]) if stopping.relative else 1.0
        scale = scale if scale > 0 else 1.0
        error = float(max(p[-1] for p in parts))
        state.errors.append(error)
        if k > 0:
            state.jumps.append(stopping.time_norm(joined[0]) / scale)
        if residual_rule:
            state.residuals.append(stopping.time_norm(joined[1]) / scale)
            value = state.residuals[-1]
        else:
            value = state.jumps[-1] if k > 0 else np.inf
        if k > 0 and not np.isfinite(value):  # the same gathered value on every rank: all raise
            raise FloatingPointError(
                f"Parareal diverged in iteration {k} (non-finite {stopping.rule}): the coarse or fine "
                "propagator is unstable at this step size; increase coarse_steps / fine_steps or intervals")
        if progress:
            progress(f"iteration {k}" + (" (coarse prediction)" if k == 0 else "") +
                     (f": update {state.jumps[-1]:.3e}" if k > 0 else "") +
                     (f", residual {state.residuals[-1]:.3e}" if residual_rule else "") +
                     (f", error vs serial fine {error:.3e}" if reference is not None else ""))
        return bool(value <= stopping.tol or k >= n_intervals)

    def advance(state: PararealState) -> list:
        state.k += 1
        return sweep(state)

    if resume is None:
        shape = y0.shape
        state = PararealState(0, np.zeros((m + 1,) + shape, y0.dtype), np.zeros((m,) + shape, y0.dtype),
                              np.zeros((m,) + shape, y0.dtype))
        changes = sweep(state)
    else:  # the resumed state was checkpointed after its iteration: continue with the next
        state = resume
        changes = advance(state)
    fine_done = False  # F(U^k) of the current iterate already computed (pipelined, residual rule)
    interrupted = False
    while True:
        k = state.k
        if residual_rule and k < n_intervals and not fine_done:
            run_fine(state)  # the residual's fine solves: also the ones iteration k + 1 needs
        pending = start_measure(state, changes)
        ahead = None  # pipelined, residual rule: iterate k kept while iteration k + 1 runs ahead
        if pipelined and k < k_stop:
            if residual_rule:
                ahead = PararealState(k, state.boundaries.copy(), state.coarse_old.copy(), state.fine.copy(),
                                      state.jumps, state.errors, state.residuals)
                ahead_changes = advance(state)
                if state.k < n_intervals:
                    run_fine(state)
            else:
                run_fine(state)  # speculative: overlaps the later ranks' coarse sweeps
        converged = finish_measure(state, k, pending)
        if not pipelined and not residual_rule and not converged and k < k_stop:
            run_fine(state)  # needed by iteration k + 1, computed only now that it will run
        stop = converged or k >= k_stop
        if not stop and k > 0 and after_iteration is not None and after_iteration(ahead or state):
            stop = interrupted = True
        if stop:
            if ahead is not None:  # back to iterate k
                state.k = k
                state.boundaries[:], state.coarse_old[:], state.fine[:] = \
                    ahead.boundaries, ahead.coarse_old, ahead.fine
            break
        if ahead is not None:
            changes, fine_done = ahead_changes, True
        else:
            changes, fine_done = advance(state), False

    return PararealResult(
        iterations=state.k, converged=converged, interrupted=interrupted, first_subinterval=a,
        boundaries=state.boundaries[1:].copy(), jumps=state.jumps, residuals=state.residuals,
        errors=state.errors if reference is not None else [], timings=timers.as_dict(),
        fine_calls=calls["fine"], coarse_calls=calls["coarse"])
