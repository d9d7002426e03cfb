"""PAN: polynomial-approximation numerical integration (Panagiotopoulos, §5, Alg. 1).

On [t0, t1] the solution is approximated by ŷ(t) = Bᵀφ(t), φ the Chebyshev polynomials of
the first kind T_0 .. T_{N-1} mapped to [t0, t1], B ∈ R^{N×L}. B minimises the quadrature of
the squared ODE residual at M Chebyshev–Gauss–Lobatto nodes t_m (ascending, t_0 = t0):

    e(B) = Σ_m w_m ‖Bᵀφ̇(t_m) − f(t_m, Bᵀφ(t_m))‖²,   w_m Clenshaw–Curtis weights.

Initial condition (§5.2.1): ŷ(t0) = y0 and ŷ'(t0) = f(t0, y0) fix rows 0 and 1 of B given the
others, B = E C + G(y0, f0) with C ∈ R^{(N-2)×L} free, so both hold exactly for every C.

Phase 1 (eq. 37), the zero-order fixed point: freeze f at the current iterate and solve the
weighted linear least-squares problem for the derivative,
    C_{k+1} = (ΨᵀWΨ)⁻¹ ΨᵀW (F(C_k) − Ψ_G),   Ψ = φ̇(t)ᵀE,
with ΨᵀWΨ Cholesky-factorised once. Stops when max|C_{k+1} − C_k| <= ls_tol.

Phase 2: Gauss–Newton on the least-squares form, solved by PETSc SNES (newtonls) on the
square system ∇(e/2) = AᵀR = 0 with R = √W r the weighted residual vector and A = ∂R/∂C.
The SNES Jacobian is the Gauss–Newton matrix AᵀA (symmetric positive definite, so every step
is a descent direction for e and no Hessian modification is needed), and e/2 is registered as
SNES objective so the line search backtracks on e itself. Every PETSc option (-snes_*, -ksp_*,
-pc_*) is applied through setFromOptions after our defaults.

MPI: the M nodes are split into contiguous blocks; each rank evaluates f (and its Jacobian,
batched with torch.func) at its own nodes only. Phase 1 needs one Allreduce of an (N-2)×L
matrix per iteration; in Phase 2 R is a distributed PETSc Vec and A a distributed PETSc Mat
(rows = this rank's nodes), and PETSc forms AᵀR and AᵀA across ranks. The coefficients C
(a few hundred numbers) are the only thing every rank holds in full.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.linalg
from mpi4py import MPI
from numpy.polynomial import chebyshev as cheb

from ..comm import Timers, block_partition


ROUNDOFF_FLOOR = 1e-13  # relative change of e below which a line search cannot see a decrease
# Picard-type updates may grow like (Lip·h)^k / k! before they shrink; only far larger growth
# means the fixed point diverges.
PICARD_GROWTH = 1e8


class PANError(ValueError):
    """Bad input to PAN (sizes, interval, a right-hand side of the wrong shape or non-finite)."""


class PANDiverged(RuntimeError):
    """SNES did not converge; ``reason`` is PETSc's converged-reason name."""

    def __init__(self, reason: str, iterations: int, t0: float, t1: float):
        super().__init__(f"SNES diverged on [{t0:g}, {t1:g}] after {iterations} Newton iterations: "
                         f"PETSc reason {reason}")
        self.reason = reason


def petsc(comm):
    """petsc4py's PETSc module, initialised on ``comm`` if nothing initialised it before."""
    if "petsc4py.PETSc" not in sys.modules:
        import petsc4py

        petsc4py.init(comm=comm)
    from petsc4py import PETSc

    return PETSc


def clenshaw_curtis(n_points: int) -> tuple[np.ndarray, np.ndarray]:
    """Chebyshev–Gauss–Lobatto nodes on [-1, 1] in ascending order and their Clenshaw–Curtis
    weights (exact for polynomials of degree n_points - 1; Trefethen, Spectral Methods, clencurt)."""
    n = n_points - 1
    theta = np.pi * np.arange(n + 1) / n
    w = np.zeros(n + 1)
    v = np.ones(n - 1)
    inner = theta[1:-1]
    if n % 2 == 0:
        w[0] = w[n] = 1.0 / (n * n - 1)
        for k in range(1, n // 2):
            v -= 2.0 * np.cos(2 * k * inner) / (4 * k * k - 1)
        v -= np.cos(n * inner) / (n * n - 1)
    else:
        w[0] = w[n] = 1.0 / (n * n)
        for k in range(1, (n - 1) // 2 + 1):
            v -= 2.0 * np.cos(2 * k * inner) / (4 * k * k - 1)
    w[1:-1] = 2.0 * v / n
    return -np.cos(theta), w  # -cos: ascending, so node 0 is the initial time


@dataclass
class Collocation:
    """Basis, nodes, weights and the initial-condition elimination on [t0, t1] (rank-independent)."""

    n_coeffs: int
    n_points: int
    t0: float
    t1: float

    def __post_init__(self):
        N, M = self.n_coeffs, self.n_points
        if N < 3:
            raise PANError(f"N = {N} coefficients: PAN needs N >= 3 (two rows of B are fixed by the "
                           "initial condition)")
        if M < N:
            raise PANError(f"M = {M} collocation points is fewer than N = {N} coefficients: use M >= N")
        if not (np.isfinite(self.t0) and np.isfinite(self.t1) and self.t1 > self.t0):
            raise PANError(f"interval [{self.t0}, {self.t1}]: need finite t0 < t1")
        x, w = clenshaw_curtis(M)
        half = 0.5 * (self.t1 - self.t0)
        self.t = self.t0 + half * (x + 1.0)
        self.w = half * w
        self.phi = cheb.chebvander(x, N - 1)                                      # (M, N)
        derivative = cheb.chebder(np.eye(N), axis=0)                              # (N-1, N)
        self.dphi = cheb.chebvander(x, N - 2) @ derivative / half                 # d/dt, (M, N)
        # ŷ(t0) = y0 and ŷ'(t0) = f0 as P [B0; B1] + R C = [y0; f0]; P is lower triangular.
        start_value = cheb.chebvander(np.array([-1.0]), N - 1)[0]
        start_slope = (cheb.chebvander(np.array([-1.0]), N - 2) @ derivative)[0] / half
        P = np.array([start_value[:2], start_slope[:2]])
        R = np.array([start_value[2:], start_slope[2:]])
        self.p_inv = np.linalg.inv(P)
        self.E = np.vstack([-self.p_inv @ R, np.eye(N - 2)])                      # B = E C + G

    def offset(self, y0: np.ndarray, f0: np.ndarray) -> np.ndarray:
        G = np.zeros((self.n_coeffs, y0.shape[0]))
        G[:2] = self.p_inv @ np.array([y0, f0])
        return G


class LocalNodes:
    """This rank's block of nodes: ŷ and ŷ' there as affine functions of C, and counted f calls."""

    def __init__(self, comm, col: Collocation, G: np.ndarray, rhs, counters: dict, timers: Timers):
        import torch

        self.torch = torch
        a, b = block_partition(col.n_points, comm.size, comm.rank)
        self.count = b - a
        self.dim = G.shape[1]
        self.t = col.t[a:b]
        self.sqrt_w = np.sqrt(col.w[a:b])
        self.phi = col.phi[a:b] @ col.E          # ŷ(t_m) = phi C + y_off
        self.psi = col.dphi[a:b] @ col.E         # ŷ'(t_m) = psi C + dy_off
        self.y_off = col.phi[a:b] @ G
        self.dy_off = col.dphi[a:b] @ G
        self.w = col.w[a:b]
        self.rhs, self.counters, self.timers = rhs, counters, timers
        self.t_torch = torch.from_numpy(self.t.copy())

    def states(self, C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.phi @ C + self.y_off, self.psi @ C + self.dy_off

    def f(self, Y: np.ndarray, phase: str) -> np.ndarray:
        """f at all local nodes in one batched call."""
        if self.count == 0:
            return np.zeros((0, self.dim))
        with self.timers("f"), self.torch.no_grad():
            out = self.rhs.f(self.t_torch, self.torch.from_numpy(Y))
        self.counters[f"point_evaluations_{phase}"] += self.count
        return check_shape(out, Y.shape).numpy()

    def f_and_jacobian(self, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.count == 0:
            return np.zeros((0, self.dim)), np.zeros((0, self.dim, self.dim))
        with self.timers("f"):
            value, jac = self.rhs.f_and_jacobian(self.t_torch, self.torch.from_numpy(Y))
        self.counters["point_evaluations_newton"] += self.count
        self.counters["point_jacobians"] += self.count
        check_shape(value, Y.shape)
        return value.detach().numpy(), jac.detach().numpy()


def check_shape(out, shape) -> object:
    if tuple(out.shape) != tuple(shape):
        raise PANError(f"f returned shape {tuple(out.shape)} for {shape[0]} points of dimension "
                       f"{shape[1]}: a batched f(t, Y) must return an array of Y's shape {tuple(shape)}")
    return out


def initial_slope(comm, rhs, t0: float, y0: np.ndarray, counters: dict) -> np.ndarray:
    """f(t0, y0), evaluated once on rank 0 and broadcast (a bad f fails on every rank alike)."""
    import torch

    result = None
    if comm.rank == 0:
        try:
            with torch.no_grad():
                out = rhs.f(torch.tensor([t0], dtype=torch.float64), torch.from_numpy(y0[None].copy()))
            out = check_shape(out, (1, y0.shape[0])).numpy()[0]
            if not np.all(np.isfinite(out)):
                raise PANError(f"f(t0, y0) is not finite at t0 = {t0}: {out}")
            result = out
        except PANError as err:
            result = err
        counters["point_evaluations_ls"] += 1
    result = comm.bcast(result, root=0)
    counters["batches_ls"] += 1
    if isinstance(result, Exception):
        raise result
    return result


def phase1(comm, nodes: LocalNodes, C: np.ndarray, interval: tuple[float, float], *, tol: float, max_it: int,
           counters: dict, timers: Timers) -> tuple[np.ndarray, int, float]:
    """Zero-order fixed point (eq. 37); returns (C, iterations, last update)."""
    normal = np.empty((C.shape[0], C.shape[0]))
    with timers("allreduce"):
        comm.Allreduce(nodes.psi.T @ (nodes.w[:, None] * nodes.psi), normal, op=MPI.SUM)
    factor = scipy.linalg.cho_factor(normal)
    best_update, best = np.inf, C
    for k in range(1, max_it + 1):
        Y, _ = nodes.states(C)
        F = nodes.f(Y, "ls")
        counters["batches_ls"] += 1
        local = nodes.psi.T @ (nodes.w[:, None] * (F - nodes.dy_off))
        total = np.empty_like(local)
        with timers("allreduce"):
            comm.Allreduce(local, total, op=MPI.SUM)
        if not np.all(np.isfinite(total)):
            if k == 1:
                raise PANError(f"f returned non-finite values on [{interval[0]:g}, {interval[1]:g}] at the "
                               "starting guess y0 + f(t0, y0)(t - t0): the solution blows up there, or f is "
                               "not defined along that line; try shorter subintervals")
            break  # the fixed point overflowed: Newton takes over from the best iterate
        C_new = scipy.linalg.cho_solve(factor, total)
        update = float(np.max(np.abs(C_new - C)))
        C = C_new
        if update < best_update:
            best_update, best = update, C
        if update <= tol:
            return C, k, update
        if update > PICARD_GROWTH * best_update:
            break  # diverging (stiff, or Lipschitz constant × length too large): Newton takes over
    return best, k, best_update


class GaussNewton:
    """Phase 2: SNES on AᵀR = 0 with Jacobian AᵀA and objective ½‖R‖², on distributed PETSc objects."""

    def __init__(self, comm, nodes: LocalNodes, n_free: int, counters: dict, timers: Timers):
        self.PETSc = PETSc = petsc(comm)
        self.comm, self.nodes, self.counters, self.timers = comm, nodes, counters, timers
        self.n_free, self.dim = n_free, nodes.dim
        n = n_free * self.dim
        self.x = PETSc.Vec().createMPI(n, comm=comm)
        self.scatter, self.x_all = PETSc.Scatter.toAll(self.x)
        rows = nodes.count * self.dim
        self.R = PETSc.Vec().createMPI((rows, PETSc.DECIDE), comm=comm)
        cols_local = self.x.getLocalSize()
        self.A = PETSc.Mat().createAIJ(((rows, PETSc.DECIDE), (cols_local, n)), comm=comm)
        self.A.setPreallocationNNZ((cols_local, n - cols_local))  # dense rows: every coefficient
        self.A.setUp()
        self.row0 = self.A.getOwnershipRange()[0]
        self.cache_key = None
        self.J = None

    def gathered(self, X) -> np.ndarray:
        self.scatter.scatter(X, self.x_all, addv=self.PETSc.InsertMode.INSERT,
                             mode=self.PETSc.ScatterMode.FORWARD)
        return self.x_all.getArray().reshape(self.n_free, self.dim).copy()

    def evaluate(self, X) -> None:
        """R and A at X (one batched f-and-Jacobian call on each rank), cached for repeated X."""
        C = self.gathered(X)
        key = C.tobytes()
        if key == self.cache_key:
            return
        nodes = self.nodes
        Y, dY = nodes.states(C)
        F, Jf = nodes.f_and_jacobian(Y)
        self.counters["batches_newton"] += 1
        sw = nodes.sqrt_w
        self.R.setArray((sw[:, None] * (dY - F)).ravel())
        # ∂r_{m,i}/∂C_{k,j} = ψ_{m,k} δ_ij − (∂f_i/∂y_j)(t_m) φ_{m,k}
        eye = np.eye(self.dim)
        dR = (nodes.psi[:, None, :, None] * eye[None, :, None, :]
              - nodes.phi[:, None, :, None] * Jf[:, :, None, :]) * sw[:, None, None, None]
        dR = dR.reshape(nodes.count * self.dim, self.n_free * self.dim)
        if nodes.count:
            rows = np.arange(self.row0, self.row0 + dR.shape[0], dtype=self.PETSc.IntType)
            cols = np.arange(dR.shape[1], dtype=self.PETSc.IntType)
            self.A.setValues(rows, cols, dR, addv=self.PETSc.InsertMode.INSERT_VALUES)
        self.A.assemble()
        self.cache_key = key

    def objective(self, snes, X) -> float:
        with self.timers("newton_eval"):
            self.evaluate(X)
        value = 0.5 * self.R.norm() ** 2
        return value if np.isfinite(value) else np.inf

    def function(self, snes, X, F) -> None:
        with self.timers("newton_eval"):
            self.evaluate(X)
        self.A.multTranspose(self.R, F)

    def jacobian(self, snes, X, J, P) -> None:
        with self.timers("newton_eval"):
            self.evaluate(X)
        self.A.transposeMatMult(self.A, result=P)

    def solve(self, C0: np.ndarray, *, atol: float, max_it: int, options: str, monitor=None):
        """Returns (C, newton iterations, PETSc reason name, final ‖AᵀR‖)."""
        PETSc = self.PETSc
        rstart, rend = self.x.getOwnershipRange()
        self.x.setArray(C0.ravel()[rstart:rend])
        self.evaluate(self.x)
        self.J = self.A.transposeMatMult(self.A)
        snes = PETSc.SNES().create(comm=self.comm)
        F = self.x.duplicate()
        snes.setFunction(self.function, F)
        snes.setJacobian(self.jacobian, self.J, self.J)
        snes.setObjective(self.objective)
        # Defaults (paper: stop when ‖∇e‖ < tol_newton); the command line overrides all of them.
        snes.setType("newtonls")  # its default line search is bt (backtracking on the objective)
        snes.setTolerances(atol=atol, rtol=1e-30, stol=1e-15, max_it=max_it)
        ksp = snes.getKSP()
        ksp.setType("preonly")
        pc = ksp.getPC()
        pc.setType("lu")
        pc.setFactorSolverType("mumps")  # parallel direct solve: same answer on any rank count
        names = apply_options(PETSc, options)
        try:
            snes.setFromOptions()
            if monitor is not None:
                snes.setMonitor(lambda s, it, norm: monitor(it, norm))
            snes.solve(None, self.x)
            # petsc4py 3.18 has no SNES.getLineSearch: read the type from the options database
            linesearch = PETSc.Options().getString("snes_linesearch_type", "bt")
        finally:
            for name in names:
                PETSc.Options().delValue(name)
        reason = snes.getConvergedReason()
        iterations = snes.getIterationNumber()
        gnorm = snes.getFunctionNorm()
        name = reason_name(PETSc, reason)
        if reason == PETSc.SNES.ConvergedReason.DIVERGED_LINE_SEARCH and self.at_roundoff_floor(ksp):
            name, reason = "CONVERGED_ROUNDOFF (PETSc: DIVERGED_LINE_SEARCH)", 0
        self.solver_types = {"snes_type": snes.getType(), "linesearch_type": linesearch,
                             "ksp_type": ksp.getType(), "pc_type": ksp.getPC().getType()}
        C = self.gathered(self.x)
        snes.destroy()
        return C, iterations, name, reason, gnorm

    def at_roundoff_floor(self, ksp) -> bool:
        """True when the Gauss–Newton step at x cannot change e = ‖R‖² by a representable amount.

        A line search on e stalls once the predicted decrease gᵀ(AᵀA)⁻¹g falls below the rounding
        error of e itself: x is then a minimiser to working precision, whatever ‖g‖ is.
        """
        self.evaluate(self.x)
        g, step = self.x.duplicate(), self.x.duplicate()
        self.A.multTranspose(self.R, g)
        self.A.transposeMatMult(self.A, result=self.J)
        ksp.setOperators(self.J)
        ksp.solve(g, step)
        decrease, e = g.dot(step), self.R.norm() ** 2
        g.destroy()
        step.destroy()
        return decrease <= ROUNDOFF_FLOOR * e

    def destroy(self):
        for obj in (self.x, self.x_all, self.R, self.A, self.J, self.scatter):
            if obj is not None:
                obj.destroy()


def apply_options(PETSc, options: str) -> list[str]:
    """Put ``-key value`` pairs into PETSc's options database; returns the names to remove later."""
    tokens = shlex.split(options or "")
    names = []
    for i, tok in enumerate(tokens):
        if tok.startswith("-") and not _is_number(tok):
            names.append(tok.lstrip("-"))
    if tokens:
        PETSc.Options().insertString(" ".join(shlex.quote(t) for t in tokens))
    return names


def _is_number(token: str) -> bool:
    try:
        float(token)
        return True
    except ValueError:
        return False


def reason_name(PETSc, reason: int) -> str:
    names = {v: k for k, v in vars(PETSc.SNES.ConvergedReason).items() if k.isupper() and k != "ITERATING"}
    return names.get(reason, str(reason))


@dataclass
class IntervalResult:
    coefficients: np.ndarray   # B, (N, L)
    y_end: np.ndarray          # ŷ(t1)
    ls_iterations: int
    newton_iterations: int
    reason: str
    residual: float            # e(B) at the end (quadrature of the squared residual)
    solver_types: dict         # the SNES/line-search/KSP/PC types PETSc actually used


def pan_interval(comm, rhs, y0: np.ndarray, t0: float, t1: float, *, n_coeffs: int, n_points: int,
                 ls_tol: float, ls_max_it: int, newton_tol: float, newton_max_it: int,
                 petsc_options: str = "", counters: dict, timers: Timers, monitor=None) -> IntervalResult:
    """One PAN solve on [t0, t1] from y(t0) = y0 (collective on ``comm``)."""
    y0 = np.asarray(y0, dtype=float)
    col = Collocation(n_coeffs, n_points, t0, t1)
    f0 = initial_slope(comm, rhs, t0, y0, counters)
    G = col.offset(y0, f0)
    nodes = LocalNodes(comm, col, G, rhs, counters, timers)
    C = np.zeros((n_coeffs - 2, y0.shape[0]))  # ŷ = y0 + f0 (t − t0): the forward-Euler line
    with timers("phase1"):
        C, ls_its, _ = phase1(comm, nodes, C, (t0, t1), tol=ls_tol, max_it=ls_max_it, counters=counters,
                              timers=timers)
    solver = GaussNewton(comm, nodes, n_coeffs - 2, counters, timers)
    try:
        with timers("phase2"):
            C, its, reason, code, _ = solver.solve(C, atol=newton_tol, max_it=newton_max_it,
                                                   options=petsc_options, monitor=monitor)
        solver_types = solver.solver_types
        residual = 2.0 * solver.objective(None, solver.x)
    finally:
        solver.destroy()
    if code < 0:
        raise PANDiverged(reason, its, t0, t1)
    B = col.E @ C + G
    return IntervalResult(B, B.sum(axis=0), ls_its, its, reason, residual, solver_types)  # T_k(1) = 1 for all k


@dataclass
class PANState:
    """Progress of the stepping after ``done`` subintervals (checkpointed between them)."""

    done: int
    y: np.ndarray                              # ŷ at the start of subinterval ``done``
    coefficients: list = field(default_factory=list)
    ls_iterations: list = field(default_factory=list)
    newton_iterations: list = field(default_factory=list)
    residuals: list = field(default_factory=list)
    counters: dict = field(default_factory=dict)


@dataclass
class PANResult:
    y_end: np.ndarray
    times: np.ndarray
    state: PANState
    interrupted: bool
    counters: dict
    timings: dict
    solver_types: dict


BATCH_COUNTERS = ("batches_ls", "batches_newton")
POINT_COUNTERS = ("point_evaluations_ls", "point_evaluations_newton", "point_jacobians")
COUNTERS = BATCH_COUNTERS + POINT_COUNTERS


def run_totals(comm, counters: dict) -> dict:
    """The run's counts, independent of the rank count: the parallel depth (batched evaluations
    in sequence; every rank takes part in every batch, so each rank holds the same count and a
    sum over ranks would only measure P) and the point evaluations summed over ranks."""
    totals = {k: comm.allreduce(counters[k], op=MPI.MAX) for k in BATCH_COUNTERS}
    totals.update({k: comm.allreduce(counters[k], op=MPI.SUM) for k in POINT_COUNTERS})
    return totals


def subinterval_bounds(t0: float, tf: float, length: float) -> np.ndarray:
    """Consecutive subintervals of the given length (the last one may be shorter); 0: one interval."""
    if not length or length >= tf - t0:
        return np.array([t0, tf])
    count = int(np.ceil((tf - t0) / length - 1e-9))
    return np.minimum(t0 + length * np.arange(count + 1), tf)


def pan(comm, rhs, y0: np.ndarray, times: np.ndarray, *, n_coeffs: int, n_points: int, ls_tol: float,
        ls_max_it: int = 500, newton_tol: float, newton_max_it: int = 50, petsc_options: str = "",
        resume: PANState | None = None, after_interval: Callable[[PANState], bool] | None = None,
        progress: Callable[[str], None] | None = None, monitor=None) -> PANResult:
    """PAN stepped over the subintervals [times[s], times[s+1]], each from the previous end value.

    Collective on ``comm``. ``after_interval(state)`` is called after each subinterval but the
    last (for checkpoints); returning True stops there with ``interrupted`` set. Counters:
    ``batches_*`` are batched evaluations in sequence (the parallel depth, identical on all
    ranks); ``point_*`` count this rank's own point evaluations. :func:`run_totals` combines them.
    """
    times = np.asarray(times, dtype=float)
    if np.any(np.diff(times) <= 0):
        raise PANError(f"subinterval bounds must increase strictly, got {times}")
    state = resume or PANState(0, np.asarray(y0, dtype=float).copy(), counters=dict.fromkeys(COUNTERS, 0))
    counters = state.counters
    timers = Timers()
    interrupted = False
    solver_types = {}
    while state.done < len(times) - 1:
        s = state.done
        out = pan_interval(comm, rhs, state.y, times[s], times[s + 1], n_coeffs=n_coeffs, n_points=n_points,
                           ls_tol=ls_tol, ls_max_it=ls_max_it, newton_tol=newton_tol,
                           newton_max_it=newton_max_it, petsc_options=petsc_options, counters=counters,
                           timers=timers, monitor=monitor)
        state.y = out.y_end
        solver_types = out.solver_types
        state.coefficients.append(out.coefficients)
        state.ls_iterations.append(out.ls_iterations)
        state.newton_iterations.append(out.newton_iterations)
        state.residuals.append(out.residual)
        state.done += 1
        if progress:
            progress(f"subinterval {state.done}/{len(times) - 1} [{times[s]:g}, {times[s + 1]:g}]: "
                     f"{out.ls_iterations} fixed-point + {out.newton_iterations} Newton iterations "
                     f"({out.reason}), e = {out.residual:.2e}")
        if state.done < len(times) - 1 and after_interval is not None and after_interval(state):
            interrupted = True
            break
    return PANResult(state.y, times, state, interrupted, dict(counters), timers.as_dict(), solver_types)
