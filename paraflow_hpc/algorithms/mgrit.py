"""MGRIT: multigrid reduction in time, FAS form, time points distributed in blocks over ranks.

Falgout, Friedhoff, Kolev, MacLachlan, Schroder, "Parallel time integration with multigrid",
SIAM J. Sci. Comput. 36 (2014) C635 (MGRIT, F/FCF-relaxation, FAS for nonlinear problems), and
the conventions of PyMGRIT (Hahne, Friedhoff, Bolten, ACM TOMS 47 (2021) 19,
``src/pymgrit/core/mgrit.py``), whose iterates this code reproduces to round-off.

Level l has N_l time intervals on the grid t^l = t^0[::M_l], M_l = m_0 ... m_{l-1}; point j of
level l is a C-point if j % m_l == 0 (it lives on level l + 1 as point j / m_l), else an F-point.
Level l solves u_j = Phi_l(u_{j-1}) + g_j (g = 0 on level 0, the FAS right-hand side below) with
its own propagator Phi_l(u, t0, t1). One cycle on level l < L - 1:

    F-relaxation (first cycle on level 0, always below), then (FCF only) C- and F-relaxation;
    v = R(u at C-points);  g^{l+1}_J = R(g_j - u_j + Phi_l(u_{j-1})) + v_J - Phi_{l+1}(v_{J-1});
    cycle on level l + 1 (the coarsest level: one sequential sweep);
    u_j += P(u^{l+1}_J - v_J) at C-points;  F-relaxation;
    F-cycle only, l > 0: one more V-cycle from level l without the first F-relaxation.

Nested iteration: the initial guess is the coarsest sweep, interpolated level by level with one
V-cycle on each intermediate level. Two levels with F-relaxation and nested iteration are
Parareal with G = Phi_1 and F = Phi_0^{m_0}: the C-point values of cycle k are Parareal's U^k
(``tests/test_mgrit.py`` checks it). Stopping: the residual Phi_0(u_{j-1}) - u_j at the level-0
C-points (zero at F-points after F-relaxation) in the norm of a :class:`StoppingRule`; its fine
steps are reused by the next cycle.

Distribution: rank r owns the level-0 points (a, b] of its block [a, b) of intervals (rank 0 also
owns point 0) and, on every level, the points that sit there; a rank's block may be empty on
coarse levels. Each rank keeps one ghost point, the value before its first point, refreshed by
point-to-point messages after each relaxation; F-relaxation runs as a chain where an interval
between C-points spans ranks, the coarsest sweep as a chain through all ranks. No gather.

Spatial coarsening hooks: ``transfers[l] = (restrict, interpolate)`` between levels l and l + 1
(default: the identity); states may have different shapes per level.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..comm import Timers, block_partition, collective
from .parareal import StoppingRule

TAG_GHOST = 21
CYCLES = ("V", "F")
RELAXATIONS = ("F", "FCF")


def hierarchy(n_intervals: int, factors: Sequence[int]) -> list[int]:
    """Intervals per level, N_0 = n_intervals, N_{l+1} = N_l / m_l; ``ValueError`` on a misfit.

    ``factors``: coarsening factor m_l per level pair (len = levels - 1).
    """
    sizes = [n_intervals]
    for l, m in enumerate(factors):
        if m < 2:
            raise ValueError(f"coarsening factor m = {m} on level {l}: must be >= 2")
        if sizes[-1] < m:
            raise ValueError(f"{len(factors) + 1} levels with coarsening factors {list(factors)} need "
                             f"N >= {int(np.prod(factors))} intervals; N = {n_intervals} allows {l + 1} levels")
        if sizes[-1] % m:
            raise ValueError(f"level {l} has {sizes[-1]} intervals, not a multiple of the coarsening factor {m}: "
                             f"use N a multiple of {int(np.prod(factors))} (the product of the factors)")
        sizes.append(sizes[-1] // m)
    return sizes


@dataclass
class MgritState:
    """Everything needed to continue after cycle ``k``: this rank's level-0 values and the history."""

    k: int
    u: np.ndarray                      # ghost + owned level-0 points, shape (n_own + 1,) + state shape
    residuals: list = field(default_factory=list)
    errors: list = field(default_factory=list)


@dataclass
class MgritResult:
    iterations: int
    converged: bool
    interrupted: bool
    points: np.ndarray          # global indices of this rank's level-0 time points
    values: np.ndarray          # the solution there, shape (len(points),) + state shape
    residuals: list             # residual norm after cycles 1..K (identical on all ranks)
    errors: list                # max error vs the reference at every point, cycles 1..K
    timings: dict
    calls: list                 # propagator calls per level on this rank (calls[0]: fine work)
    seconds: list               # seconds in each level's propagator on this rank
    coarsest_sweeps: int        # sequential sweeps over the coarsest level (the serial part of the cost)


class _Level:
    """One level's points on this rank: owned [lo, hi) plus a ghost at local index 0."""

    def __init__(self, comm, n_intervals: int, step: int, m: int | None, y0: np.ndarray):
        self.m = m

        def block(rank):  # level-0 points (a, b] of the rank, point 0 on rank 0, seen on this level
            a, b = block_partition(n_intervals, comm.size, rank)
            return (0 if rank == 0 else -(-(a + 1) // step)), b // step + 1

        self.lo, self.hi = block(comm.rank)
        owners = [r for r in range(comm.size) if block(r)[1] > block(r)[0]]
        self.empty = self.hi <= self.lo
        self.prev = max((r for r in owners if r < comm.rank), default=None)
        self.next = min((r for r in owners if r > comm.rank), default=None)
        shape = (max(self.hi - self.lo, 0) + 1,) + y0.shape
        self.u = np.zeros(shape, y0.dtype)
        self.v = np.zeros(shape, y0.dtype)
        self.g = np.zeros(shape, y0.dtype)
        if self.lo == 0 and not self.empty:
            self.u[1] = y0

    def idx(self, j: int) -> int:
        return j - self.lo + 1

    def c_points(self):
        """Owned C-points j >= 1 (all owned points on the coarsest level)."""
        step = self.m or 1
        start = max(self.lo, 1)
        return range(start + (-start) % step, self.hi, step)

    def is_c(self, j: int) -> bool:
        return self.m is None or j % self.m == 0


def mgrit(comm, phis: Sequence[Callable], y0: np.ndarray, times: np.ndarray, factors: Sequence[int], *,
          stopping: StoppingRule, max_iter: int, relaxation: str = "F", cycle: str = "V",
          nested: bool = True, transfers: Sequence[tuple[Callable, Callable]] | None = None,
          reference: np.ndarray | None = None, resume: MgritState | None = None,
          after_iteration: Callable[[MgritState], bool] | None = None,
          progress: Callable[[str], None] | None = None) -> MgritResult:
    """Solve u_j = Phi_0(u_{j-1}), u_0 = y0, on the level-0 grid ``times`` (N + 1 points) by MGRIT.

    ``phis[l](u, t0, t1)``: the propagator of level l (L = len(phis) >= 2 levels; pure functions of
    numpy arrays). ``factors``: m_l per level pair (len L - 1, each >= 2, N divisible by their
    product). ``relaxation``: "F" or "FCF"; ``cycle``: "V" or "F"; ``nested``: nested iteration for
    the initial guess (else y0 and zeros). ``transfers[l] = (restrict, interpolate)`` maps states
    between levels l and l + 1 (default identity). ``stopping``: residual rule (``rule`` must be
    "residual"). ``reference``: serial fine values at this rank's points for the error per cycle.
    ``after_iteration(state)`` is called collectively after every cycle that does not end the run
    (checkpoints); returning True stops there with ``interrupted``.

    Raises ``ValueError`` for a hierarchy that does not fit (see :func:`hierarchy`), more ranks than
    intervals or an unknown option; ``FloatingPointError`` on every rank when the residual is not
    finite.
    """
    n_levels = len(phis)
    if n_levels < 2 or len(factors) != n_levels - 1:
        raise ValueError(f"{n_levels} propagators and {len(factors)} coarsening factors: need L >= 2 "
                         "propagators and L - 1 factors")
    if relaxation not in RELAXATIONS or cycle not in CYCLES or stopping.rule != "residual":
        raise ValueError(f"relaxation {relaxation!r} (F, FCF), cycle {cycle!r} (V, F), stopping rule "
                         f"{stopping.rule!r} (residual)")
    n_intervals = len(times) - 1
    if n_intervals < comm.size:
        raise ValueError(f"{n_intervals} intervals cannot be spread over {comm.size} ranks")
    hierarchy(n_intervals, factors)  # raises on a misfit
    transfers = transfers or [(lambda u: u, lambda u: u)] * (n_levels - 1)
    steps = np.cumprod([1] + list(factors))
    grids = [np.asarray(times)[::s] for s in steps]
    levels, y0_l = [], np.asarray(y0)
    for l in range(n_levels):
        if l:
            y0_l = np.asarray(transfers[l - 1][0](y0_l))
        levels.append(_Level(comm, n_intervals, int(steps[l]), factors[l] if l < n_levels - 1 else None, y0_l))
    timers = Timers()
    calls = [0] * n_levels
    seconds = [0.0] * n_levels
    sweeps = [0]
    cf_iter = 1 if relaxation == "FCF" else 0

    # Phi_0(u_{j-1}) at the C-points from the residual check, for the next cycle's first use
    # (C-relaxation or restriction) if u_{j-1} is unchanged: saves N / m_0 fine steps per cycle
    residual_phi: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def phi(l: int, u: np.ndarray, j: int) -> np.ndarray:
        """Phi_l from point j - 1 to point j of level l."""
        if l == 0 and j in residual_phi:
            start, out = residual_phi.pop(j)
            if np.array_equal(start, u):
                return out
        calls[l] += 1
        start = time.perf_counter()
        if calls[l] > 1:
            out = phis[l](u, grids[l][j - 1], grids[l][j])
        else:  # a user callable failing on one rank must end all ranks, not leave them in a receive
            with collective(comm, f"the first evaluation of the level-{l} propagator"):
                out = phis[l](u, grids[l][j - 1], grids[l][j])
        elapsed = time.perf_counter() - start
        seconds[l] += elapsed
        timers.add("fine" if l == 0 else "coarse", elapsed)
        return out

    def exchange(lev: _Level, arr: np.ndarray):
        """Refresh the ghost: the last owned value goes to the next rank holding points."""
        if lev.empty:
            return
        with timers("wait"):
            request = comm.Isend(arr[-1], dest=lev.next, tag=TAG_GHOST) if lev.next is not None else None
            if lev.prev is not None:
                comm.Recv(arr[0], source=lev.prev, tag=TAG_GHOST)
            if request is not None:
                request.Wait()

    def f_relax(l: int):
        lev = levels[l]
        if not lev.empty:
            u, g = lev.u, lev.g
            if lev.lo > 0 and not lev.is_c(lev.lo) and not lev.is_c(lev.lo - 1):
                with timers("wait"):  # the interval between C-points began on an earlier rank
                    comm.Recv(u[0], source=lev.prev, tag=TAG_GHOST)
            for j in range(max(lev.lo, 1), lev.hi):
                if not lev.is_c(j):
                    i = lev.idx(j)
                    u[i] = phi(l, u[i - 1], j) if l == 0 else g[i] + phi(l, u[i - 1], j)
            if lev.next is not None and not lev.is_c(lev.hi - 1) and not lev.is_c(lev.hi):
                comm.Send(u[-1], dest=lev.next, tag=TAG_GHOST)
        exchange(lev, lev.u)

    def c_relax(l: int):
        lev = levels[l]
        for j in lev.c_points():
            i = lev.idx(j)
            lev.u[i] = phi(l, lev.u[i - 1], j) if l == 0 else lev.g[i] + phi(l, lev.u[i - 1], j)
        exchange(lev, lev.u)

    def coarsest_solve():
        sweeps[0] += 1
        lev = levels[-1]
        if lev.empty:
            return
        if lev.prev is not None:
            with timers("wait"):
                comm.Recv(lev.u[0], source=lev.prev, tag=TAG_GHOST)
        for j in lev.c_points():
            i = lev.idx(j)
            lev.u[i] = lev.g[i] + phi(n_levels - 1, lev.u[i - 1], j)
        if lev.next is not None:
            comm.Send(lev.u[-1], dest=lev.next, tag=TAG_GHOST)

    def restrict(l: int):
        """FAS: the restricted iterate v and the coarse right-hand side g on level l + 1."""
        fine, coarse = levels[l], levels[l + 1]
        restriction = transfers[l][0]
        m = fine.m
        for J in range(coarse.lo, coarse.hi):
            coarse.v[coarse.idx(J)] = restriction(fine.u[fine.idx(J * m)])
        exchange(coarse, coarse.v)
        coarse.u[:] = coarse.v
        for J in range(max(coarse.lo, 1), coarse.hi):
            j, i, I = J * m, fine.idx(J * m), coarse.idx(J)
            if l == 0:
                fas = restriction(phi(l, fine.u[i - 1], j) - fine.u[i])
            else:
                fas = restriction(fine.g[i] - fine.u[i] + phi(l, fine.u[i - 1], j))
            coarse.g[I] = fas + coarse.v[I] - phi(l + 1, coarse.v[I - 1], J)

    def correct(l: int):
        fine, coarse = levels[l], levels[l + 1]
        for J in range(max(coarse.lo, 1), coarse.hi):
            i, I = fine.idx(J * fine.m), coarse.idx(J)
            fine.u[i] = fine.u[i] + transfers[l][1](coarse.u[I] - coarse.v[I])
        exchange(fine, fine.u)

    def iteration(l: int, kind: str, it: int, first_f: bool):
        if l == n_levels - 1:
            coarsest_solve()
            return
        if (l > 0 or it == 0) and first_f:
            f_relax(l)
        for _ in range(cf_iter):
            c_relax(l)
            f_relax(l)
        restrict(l)
        iteration(l + 1, kind, it, True)
        correct(l)
        f_relax(l)
        if l != 0 and kind == "F":
            iteration(l, "V", it, False)

    def residual_norm() -> float:
        lev = levels[0]
        res, vals = [], []
        for j in range(max(lev.lo, 1), lev.hi):
            if lev.is_c(j):
                i = lev.idx(j)
                value = phi(0, lev.u[i - 1], j)
                residual_phi[j] = (lev.u[i - 1].copy(), value)
                res.append(value - lev.u[i])
                vals.append(lev.u[i])
        with timers("wait"):
            return stopping.measure(comm, res, vals)

    def error() -> float:
        if reference is None:
            return float("nan")
        lev = levels[0]
        local = float(np.max(np.abs(lev.u[1:] - reference))) if not lev.empty else 0.0
        return max(comm.allgather(local))

    if resume is None:
        state = MgritState(0, levels[0].u)
        if nested:
            nested_start = Timers()
            coarsest_solve()
            for l in range(n_levels - 2, -1, -1):
                fine, coarse = levels[l], levels[l + 1]
                for J in range(max(coarse.lo, 1), coarse.hi):
                    fine.u[fine.idx(J * fine.m)] = transfers[l][1](coarse.u[coarse.idx(J)])
                exchange(fine, fine.u)
                if l > 0:
                    iteration(l, "V", 0, True)
            timers.add("nested", nested_start.elapsed())  # wall time of the initial guess (PyMGRIT's set-up)
    else:
        state = resume
        levels[0].u[:] = resume.u
        state.u = levels[0].u
    converged = interrupted = False
    while state.k < max_iter:
        iteration(0, cycle, state.k, True)
        state.k += 1
        state.residuals.append(residual_norm())
        state.errors.append(error())
        if not np.isfinite(state.residuals[-1]):  # the same gathered value on every rank: all raise
            raise FloatingPointError(f"MGRIT diverged in cycle {state.k} (non-finite residual): a propagator "
                                     "is unstable at its step size; use more steps or fewer levels")
        converged = state.residuals[-1] <= stopping.tol
        if progress:
            progress(f"cycle {state.k}: residual {state.residuals[-1]:.3e}" +
                     (f", error vs serial fine {state.errors[-1]:.3e}" if reference is not None else ""))
        if converged or state.k >= max_iter:
            break
        if after_iteration is not None and after_iteration(state):
            interrupted = True
            break
    lev = levels[0]
    return MgritResult(
        iterations=state.k, converged=bool(converged), interrupted=interrupted,
        points=np.arange(lev.lo, lev.hi), values=lev.u[1:].copy(), residuals=state.residuals,
        errors=state.errors if reference is not None else [], timings=timers.as_dict(), calls=calls, seconds=seconds,
        coarsest_sweeps=sweeps[0])
