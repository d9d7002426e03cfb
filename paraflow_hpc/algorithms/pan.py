"""PAN on one subinterval: polynomial-approximation numerical integration (Panagiotopoulos, §5, Alg. 1).

On [t0, t1] the solution is approximated by ŷ(t) = Bᵀφ(t), φ the Chebyshev polynomials of
the first kind T_0 .. T_{N-1} mapped to [t0, t1], B ∈ R^{N×L}. B minimises the quadrature of
the squared ODE residual at M Chebyshev–Gauss–Lobatto nodes t_m (ascending, t_0 = t0):

    e(B) = Σ_m w_m ‖Bᵀφ̇(t_m) − f(t_m, Bᵀφ(t_m))‖²,   w_m Clenshaw–Curtis weights.

Initial condition (§5.2.1): ŷ(t0) = y0 and ŷ'(t0) = f(t0, y0) fix rows 0 and 1 of B given the
others, B = E C + G(y0, (h/2) f0) with C ∈ R^{(N-2)×L} free, so both hold exactly for every C.

Phase 1 (eq. 37), the zero-order fixed point: freeze f at the current iterate and solve the
weighted linear least-squares problem for the derivative, C_{k+1} = h/2 · K (F(C_k) − ŷ'_G),
K = (DᵀWD)⁻¹DᵀW on the reference interval (computed once per N, M).

Phase 2: Gauss–Newton on the least-squares form, solved by PETSc SNES (newtonls, line search on
the objective e/2) on the square system ∇(e/2) = AᵀR = 0, R = √W r, A = ∂R/∂C, Jacobian AᵀA.

Convergence is measured in units of the caller's error tolerance (``scale`` = atol + rtol·|y|
per component): Phase 1 stops when the change of ŷ at the nodes is below ``picard_tol``·scale,
Phase 2 when the predicted Gauss–Newton step moves ŷ by at most ``newton_tol``·scale (the
Newton test of scipy's Radau, on the least-squares problem). Anything else — the fixed point
diverging and SNES then failing, a non-finite f — is an unconverged solve, which the step
controller (``pan_ivp.py``) rejects. The error estimate of the subinterval (:func:`estimate`)
is the Chebyshev tail plus the integrated residual.

MPI: the M nodes are split into contiguous blocks; each rank evaluates f (and its Jacobian) at
its own nodes only, then one Allgatherv makes the values at all nodes known on every rank. All
linear algebra and every decision is computed from those gathered arrays, in the same order on
every rank, by a SNES on COMM_SELF: iterates, decisions and counts are the same bits on any
number of ranks (provided f's value at a point does not depend on which other points share
its batch). The collective per iteration is that one Allgatherv.
"""
from __future__ import annotations

import ctypes
import shlex
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from mpi4py import MPI
from numpy.polynomial import chebyshev as cheb

from ..comm import Timers, block_partition, collective
from ..config import ConfigError
from ..petsc_options import option_names, petsc

# Picard-type updates may grow like (Lip·h)^k / k! before they shrink; only far larger growth
# means the fixed point diverges.
PICARD_GROWTH = 1e8


class PANError(ConfigError):
    """Bad input to PAN (sizes, interval, tolerances, PETSc options, a right-hand side that fails
    or has the wrong shape): a ``ConfigError``, as every input check of the package (validation.py)."""


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


class Collocation:
    """Basis, nodes, weights and the initial-condition elimination on the reference interval [-1, 1].

    Independent of the subinterval: on [t0, t0 + h] the nodes are t0 + h/2 (x + 1), d/dt = 2/h d/dx
    and the weights scale by h/2, so one instance serves every step (:func:`collocation` caches it).
    With B = E C + G, G's rows 0 and 1 = Q [y0; (h/2) f0] (Q = P⁻¹, P the lower-triangular 2×2
    block of the conditions): ŷ(t_m) = Φ C + Φ_G G[:2], (h/2) ŷ'(t_m) = D C + D_G G[:2].
    """

    def __init__(self, n_coeffs: int, n_points: int):
        N, M = n_coeffs, n_points
        if N < 3:
            raise PANError(f"N = {N} coefficients: PAN needs N >= 3 (two rows of B are fixed by the "
                           "initial condition)")
        if M < N:
            raise PANError(f"M = {M} collocation points is fewer than N = {N} coefficients: use M >= N")
        self.n_coeffs, self.n_points = N, M
        self.x, self.w = clenshaw_curtis(M)
        vander = cheb.chebvander(self.x, N - 1)                                   # (M, N)
        derivative = cheb.chebder(np.eye(N), axis=0)                              # (N-1, N)
        dvander = cheb.chebvander(self.x, N - 2) @ derivative                     # d/dx, (M, N)
        start_value = cheb.chebvander(np.array([-1.0]), N - 1)[0]
        start_slope = (cheb.chebvander(np.array([-1.0]), N - 2) @ derivative)[0]
        P = np.array([start_value[:2], start_slope[:2]])
        Rc = np.array([start_value[2:], start_slope[2:]])
        self.Q = np.linalg.inv(P)
        self.E = np.vstack([-self.Q @ Rc, np.eye(N - 2)])                         # B = E C + G
        self.phi, self.dphi = vander @ self.E, dvander @ self.E                   # (M, N-2)
        self.phi_q, self.dphi_q = vander[:, :2], dvander[:, :2]                     # (M, 2)
        DW = self.dphi.T * self.w
        self.K = np.linalg.solve(DW @ self.dphi, DW)                              # (N-2, M)

    def offset(self, y0: np.ndarray, f0: np.ndarray, half: float) -> np.ndarray:
        """G: rows 0 and 1 of B from the initial value and slope, (N, L)."""
        G = np.zeros((self.n_coeffs, y0.shape[0]))
        G[:2] = self.Q @ np.array([y0, half * f0])
        return G

    def coefficients(self, C: np.ndarray, G: np.ndarray) -> np.ndarray:
        return self.E @ C + G


@lru_cache(maxsize=8)
def collocation(n_coeffs: int, n_points: int) -> Collocation:
    return Collocation(n_coeffs, n_points)


def check_shape(out, shape) -> np.ndarray:
    """``out`` as a float64 numpy array of the given shape (a torch tensor without a copy)."""
    if not hasattr(out, "shape") or tuple(out.shape) != tuple(shape):
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise PANError(f"f returned {got} for {shape[0]} points of dimension {shape[1]}: a batched "
                       f"f(t, Y) must return an array of Y's shape {tuple(shape)}")
    if hasattr(out, "detach"):  # torch: .numpy() is a view, np.asarray goes through __array__ (slow)
        out = out.detach().numpy()
    return out if out.dtype == np.float64 else np.asarray(out, dtype=np.float64)


class Evaluator:
    """Batched f (and its Jacobian) at all nodes of a subinterval, the points spread over ranks.

    Each rank evaluates its contiguous block of the nodes; one Allgatherv gives every rank the
    values at all nodes. Counts are global and identical on every rank: ``batches`` (evaluations
    in sequence: the parallel depth), ``points``, ``jacobians`` (point evaluations summed over
    ranks). ``rhs`` has ``f(t, Y)`` (torch, (m,) and (m, L) -> (m, L)) and
    ``f_and_jacobian(t, Y)`` -> ((m, L), (m, L, L)).
    """

    def __init__(self, comm, rhs, dim: int, n_points: int, timers: Timers, jacobian: str = "autograd"):
        import torch

        if jacobian not in ("autograd", "fd"):
            raise PANError(f"jacobian = {jacobian!r}: choose 'autograd' (exact, torch) or 'fd' (finite "
                           "differences in the same batch)")
        self.torch, self.comm, self.rhs, self.dim, self.timers = torch, comm, rhs, dim, timers
        self.jacobian = jacobian
        self.n_points = n_points
        self.a, self.b = block_partition(n_points, comm.size, comm.rank)
        blocks = [block_partition(n_points, comm.size, r) for r in range(comm.size)]
        self.sizes = np.array([b - a for a, b in blocks])
        self.counts = {"batches": 0, "points": 0, "jacobians": 0, "probe_points": 0}

    def _gather(self, local: np.ndarray, row: int) -> np.ndarray:
        if self.comm.size == 1:
            return local
        out = np.empty((self.n_points,) + local.shape[1:])
        counts = self.sizes * row
        with self.timers("comm"):  # report counts "comm" as communication
            self.comm.Allgatherv(np.ascontiguousarray(local), [out, counts, np.cumsum(counts) - counts, MPI.DOUBLE])
        return out

    def _local(self, t: np.ndarray, Y: np.ndarray):
        """This rank's rows as torch tensors (the times converted once per subinterval)."""
        torch = self.torch
        if t is not getattr(self, "_t", None):
            self._t, self._t_local = t, torch.from_numpy(np.ascontiguousarray(t[self.a:self.b]))
        return self._t_local, torch.from_numpy(np.ascontiguousarray(Y[self.a:self.b]))

    def f(self, t: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """f at all M nodes (every rank gets all of them); t (M,), Y (M, L)."""
        tl, Yl = self._local(t, Y)
        with self.timers("f"), collective(self.comm, "an evaluation of f"):
            with self.torch.no_grad():
                out = self.rhs.f(tl, Yl)
            local = check_shape(out, Yl.shape)
        self.counts["batches"] += 1
        self.counts["points"] += self.n_points
        return self._gather(local, self.dim)

    def f_and_jacobian(self, t: np.ndarray, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tl, Yl = self._local(t, Y)
        with self.timers("f"), collective(self.comm, "an evaluation of f and its Jacobian"):
            if self.jacobian == "fd":
                value, jac = self.finite_differences(tl, Yl)
            else:
                value, jac = self.rhs.f_and_jacobian(tl, Yl)
            value = check_shape(value, Yl.shape)
            jac = check_shape(jac, (Yl.shape[0], self.dim, self.dim))
        self.counts["batches"] += 1
        self.counts["points"] += self.n_points * (self.dim + 1 if self.jacobian == "fd" else 1)
        self.counts["jacobians"] += self.n_points
        both = self._gather(np.concatenate([value, jac.reshape(-1, self.dim * self.dim)], axis=1),
                            self.dim * (1 + self.dim))
        return both[:, :self.dim], both[:, self.dim:].reshape(-1, self.dim, self.dim)


    def finite_differences(self, t, Y):
        """f and forward-difference Jacobians at m points in one call of f on m (L + 1) points:
        column j from Y + δ e_j, δ = √eps · max(1, |y_j|) (relative error ~1e-8: Gauss–Newton's
        direction changes by that much, its minimiser by that times the residual)."""
        torch, (m, L) = self.torch, Y.shape
        delta = 1.4901161193847656e-08 * torch.clamp(Y.abs(), min=1.0)              # (m, L)
        shifted = Y.repeat(L + 1, 1).reshape(L + 1, m, L)
        shifted[1:] += torch.eye(L, dtype=Y.dtype)[:, None, :] * delta.T[:, :, None]  # block j+1: + δ_j e_j
        with torch.no_grad():
            out = self.rhs.f(t.repeat(L + 1), shifted.reshape(-1, L))
        out = torch.as_tensor(check_shape(out, ((L + 1) * m, L))).reshape(L + 1, m, L)
        jac = ((out[1:] - out[0]) / delta.T[:, :, None]).permute(1, 2, 0)            # (m, i, j)
        return out[0], jac


def probe(comm, rhs, t0: float, y0: np.ndarray, jacobian: bool = True) -> np.ndarray:
    """f(t0, y0) (and, with ``jacobian``, its Jacobian) on every rank, before any collective
    work: a failing, ill-shaped or non-finite f fails on every rank alike with the lowest failing
    rank's message (no rank waits in a collective). Not counted: it checks, it does not solve."""
    import torch

    error = None
    t, y = torch.tensor([t0], dtype=torch.float64), torch.from_numpy(y0[None].copy())
    try:
        with torch.no_grad():
            out = rhs.f(t, y)
        out = check_shape(out, (1, y0.shape[0]))[0].copy()
        if not np.all(np.isfinite(out)):
            raise PANError(f"f(t0, y0) is not finite at t0 = {t0:g}: {out}")
        if jacobian:
            check_shape(rhs.f_and_jacobian(t, y)[1], (1, y0.shape[0], y0.shape[0]))
    except Exception as exc:  # noqa: BLE001 - any failure of the user's f is reported on every rank
        error = exc if isinstance(exc, PANError) else PANError(
            f"f(t0, y0) {'or its Jacobian ' if jacobian else ''}failed at t0 = {t0:g}: {type(exc).__name__}: {exc}")
    errors = comm.allgather(None if error is None else str(error))
    failed = [(r, e) for r, e in enumerate(errors) if e is not None]
    if failed:
        rank, message = failed[0]
        raise PANError(f"on rank {rank}: {message}" if comm.size > 1 else message)
    return out


def scaled_max(values: np.ndarray, scale: np.ndarray) -> float:
    return float(np.max(np.abs(values) / scale)) if values.size else 0.0


def phase1(col: Collocation, ev: Evaluator, t: np.ndarray, y_off: np.ndarray, dy_off: np.ndarray,
           half: float, scale: np.ndarray, *, tol: float, max_it: int) -> tuple[np.ndarray, int, bool]:
    """Zero-order fixed point (eq. 37) from C = 0 (the forward-Euler line); returns (C, iterations,
    converged). Stops early when the updates grow (the fixed point diverges) or f is non-finite."""
    C = np.zeros((col.n_coeffs - 2, y_off.shape[1]))
    best_update, best = np.inf, C
    for k in range(1, max_it + 1):
        Y = col.phi @ C + y_off
        F = ev.f(t, Y)
        if not np.all(np.isfinite(F)):
            return best, k, False
        C_new = col.K @ (half * F - dy_off)
        update = scaled_max(col.phi @ (C_new - C), scale)
        C = C_new
        if update < best_update:
            best_update, best = update, C
        if update <= tol:
            return C, k, True
        if update > PICARD_GROWTH * best_update:
            break
    return best, k, False


class GaussNewton:
    """Phase 2: SNES (COMM_SELF, on every rank alike) on AᵀR = 0, Jacobian AᵀA, objective ½‖R‖².

    Built once per integration and reused for every subinterval: :meth:`start` sets the
    subinterval, :meth:`solve` runs from a starting C (skipping SNES when that is already a
    minimiser to the tolerance).
    The convergence test is the predicted Gauss–Newton step in units of the tolerance; PETSc's own
    ``-snes_atol`` / ``-snes_rtol`` are honoured beside it when set.
    """

    def __init__(self, comm, col: Collocation, ev: Evaluator, *, newton_tol: float, max_it: int, timers: Timers):
        PETSc = self.PETSc = petsc(comm)
        self.col, self.ev, self.timers = col, ev, timers
        self.newton_tol = newton_tol
        self.n_free, self.dim = col.n_coeffs - 2, ev.dim
        n = self.n_free * self.dim
        self.x = PETSc.Vec().createSeq(n, comm=PETSc.COMM_SELF)
        self.J = PETSc.Mat().createDense((n, n), comm=PETSc.COMM_SELF)
        self.J.setUp()
        self.J.assemble()
        snes = self.snes = PETSc.SNES().create(comm=PETSc.COMM_SELF)
        snes.setFunction(self.function, self.x.duplicate())
        snes.setJacobian(self.jacobian, self.J, self.J)
        snes.setObjective(self.objective)
        # Defaults; every -snes_*/-ksp_*/-pc_* option given by the user overrides them.
        snes.setType("newtonls")  # its default line search is bt (backtracking on the objective)
        snes.setTolerances(atol=0.0, rtol=0.0, stol=0.0, max_it=max_it)
        ksp = snes.getKSP()
        ksp.setType("preonly")
        ksp.getPC().setType("cholesky")  # AᵀA is symmetric positive definite
        snes.setFromOptions()
        snes.setConvergenceTest(self.converged)
        self.linesearch = PETSc.Options().getString("snes_linesearch_type", "bt")
        self.types = {"snes_type": snes.getType(), "linesearch_type": self.linesearch,
                      "ksp_type": ksp.getType(), "pc_type": ksp.getPC().getType()}
        self.key = None
        self.monitor = None

    def start(self, t: np.ndarray, y_off: np.ndarray, dy_off: np.ndarray, half: float, scale: np.ndarray):
        self.t, self.y_off, self.dy_off, self.half, self.scale = t, y_off, dy_off, half, scale
        self.sqrt_w = np.sqrt(half * self.col.w)
        self.key = None

    def evaluate(self, X) -> None:
        """R, g = AᵀR and H = AᵀA at X (one batched f-and-Jacobian call), cached for repeated X."""
        C = X.getArray(readonly=True).reshape(self.n_free, self.dim)
        key = C.tobytes()
        if key == self.key:
            return
        col, L = self.col, self.dim
        with self.timers("newton_eval"):
            self.C = C.copy()
            self.Y = col.phi @ C + self.y_off
            dY = (col.dphi @ C + self.dy_off) / self.half
            F, Jf = self.ev.f_and_jacobian(self.t, self.Y)
            sw = self.sqrt_w
            self.R = sw[:, None] * (dY - F)                                             # (M, L)
            # ∂r_{m,i}/∂C_{k,j} = ψ_{m,k} δ_ij − (∂f_i/∂y_j)(t_m) φ_{m,k}
            A = (np.einsum("mk,ij->mikj", col.dphi / self.half, np.eye(L))
                 - np.einsum("mij,mk->mikj", Jf, col.phi)) * sw[:, None, None, None]
            self.A = A.reshape(-1, self.n_free * L)
            self.g = self.A.T @ self.R.ravel()
            self.H = self.A.T @ self.A
            self.F = F
            self.key = key

    def objective(self, snes, X) -> float:
        self.evaluate(X)
        value = 0.5 * float(np.sum(self.R * self.R))
        return value if np.isfinite(value) else np.inf

    def function(self, snes, X, G) -> None:
        self.evaluate(X)
        G.setArray(self.g)

    def jacobian(self, snes, X, J, P) -> None:
        self.evaluate(X)
        P.getDenseArray()[:] = self.H
        P.assemble()

    def predicted_step(self) -> float:
        """max |Φ s| / scale for the Gauss–Newton step s = −(AᵀA)⁻¹AᵀR at the cached point."""
        if not (np.all(np.isfinite(self.H)) and np.all(np.isfinite(self.g))):
            return np.inf
        try:
            s = np.linalg.solve(self.H, self.g).reshape(self.n_free, self.dim)
        except np.linalg.LinAlgError:
            return np.inf
        return scaled_max(self.col.phi @ s, self.scale)

    def converged(self, snes, its, norms):
        _, _, fnorm = norms
        if self.monitor is not None:
            self.monitor(its, fnorm)
        reasons = self.PETSc.SNES.ConvergedReason
        if not np.isfinite(fnorm):
            return reasons.DIVERGED_FNORM_NAN
        rtol, atol, _, _ = snes.getTolerances()
        if its == 0:
            self.fnorm0 = fnorm
        if fnorm <= atol:
            return reasons.CONVERGED_FNORM_ABS
        if its > 0 and fnorm <= rtol * self.fnorm0:
            return reasons.CONVERGED_FNORM_RELATIVE
        self.evaluate(snes.getSolution())  # cached: F and the Jacobian at the current iterate
        if self.predicted_step() <= self.newton_tol:
            return reasons.CONVERGED_SNORM_RELATIVE  # the next step would not change ŷ measurably
        return reasons.ITERATING

    def solve(self, C0: np.ndarray) -> tuple[np.ndarray, int, str, bool]:
        """Returns (C, Newton iterations, PETSc reason name, converged)."""
        PETSc = self.PETSc
        self.x.setArray(C0.ravel())
        self.evaluate(self.x)
        if np.isfinite(np.sum(self.R)) and self.predicted_step() <= self.newton_tol:
            # Phase 1 already reached the minimiser to the tolerance (the usual case on non-stiff
            # problems): SNES's iteration-0 test would stop here, so do not pay for calling it
            return self.C.copy(), 0, "CONVERGED_PREDICTED_STEP", True
        with self.timers("snes"):
            self.snes.solve(None, self.x)
        reason = self.snes.getConvergedReason()
        self.evaluate(self.x)
        return self.C.copy(), self.snes.getIterationNumber(), reason_name(PETSc, reason), reason > 0

    def destroy(self):
        for obj in (self.snes, self.x, self.J):
            obj.destroy()


def reason_name(PETSc, reason: int) -> str:
    names = {v: k for k, v in vars(PETSc.SNES.ConvergedReason).items() if k.isupper() and k != "ITERATING"}
    name = names.get(reason, str(reason))
    return "CONVERGED_PREDICTED_STEP" if name == "CONVERGED_SNORM_RELATIVE" else name


def parse_petsc_options(options: str) -> list[str]:
    """Tokens of a PETSc options string; malformed ones (``-key=value``, no leading '-') raise PANError."""
    try:
        tokens = shlex.split(options or "")
    except ValueError as err:
        raise PANError(f"PETSc options {options!r} cannot be parsed ({err}); quote them as one string")
    if tokens and not tokens[0].startswith("-"):
        raise PANError(f"PETSc options {options!r}: options start with '-', e.g. \"-snes_type newtonls\"")
    for tok in tokens:
        if tok.startswith("-") and "=" in tok:
            key, value = tok.split("=", 1)
            raise PANError(f"PETSc option {tok!r}: PETSc takes '{key} {value}' (a space, not '=')")
    return tokens


def insert_petsc_options(comm, options: str) -> list[str]:
    """Put the user's options into PETSc's database for one run; returns their names (to remove)."""
    tokens = parse_petsc_options(options)
    if tokens:
        petsc(comm).Options().insertString(" ".join(shlex.quote(t) for t in tokens))
    return option_names(" ".join(shlex.quote(t) for t in tokens))


def remove_petsc_options(comm, names: list[str]) -> None:
    options = petsc(comm).Options()
    for name in names:
        options.delValue(name)


def unused_petsc_options(comm) -> list[str]:
    """Options in PETSc's database that no PETSc object queried (PETSc's ``-options_left``)."""
    PETSc = petsc(comm)
    try:
        lib = ctypes.CDLL(f"libpetsc_real.so.{'.'.join(map(str, PETSc.Sys.getVersion()[:2]))}")
    except OSError:
        return []
    count = ctypes.c_int(0)
    names = ctypes.POINTER(ctypes.c_char_p)()
    values = ctypes.POINTER(ctypes.c_char_p)()
    if lib.PetscOptionsLeftGet(None, ctypes.byref(count), ctypes.byref(names), ctypes.byref(values)):
        return []
    left = [f"-{names[i].decode()}" + (f" {values[i].decode()}" if values[i] else "") for i in range(count.value)]
    lib.PetscOptionsLeftRestore(None, ctypes.byref(count), ctypes.byref(names), ctypes.byref(values))
    return left


@dataclass
class IntervalResult:
    """One subinterval's solve. ``coefficients`` B (N, L); ``error`` the estimate per component
    (Chebyshev tail + integrated residual, (L,)); ``error_norm`` max(error / scale)."""

    coefficients: np.ndarray
    y_end: np.ndarray
    f_end: np.ndarray          # f(t1, ŷ(t1)) from the last evaluation (the next subinterval's f0)
    picard_iterations: int
    newton_iterations: int
    reason: str
    converged: bool
    residual: float            # e(B): quadrature of the squared residual
    error: np.ndarray
    error_norm: float
    y_nodes: np.ndarray        # ŷ at the nodes (M, L)


def estimate(B: np.ndarray, R: np.ndarray, h: float) -> np.ndarray:
    """Error estimate per component of one subinterval, (L,).

    Chebyshev tail |B_{N-2}| + |B_{N-1}|: what the degree-(N-1) series leaves unresolved (for a
    function analytic near the interval the coefficients decay geometrically, and the first
    omitted ones are of the size of the last two kept; two, because odd and even coefficients
    can vanish separately). Plus the integrated residual: |∫ r_j dt| <= √h · ‖r_j‖_{L²} =
    √(h e_j), the defect the solve leaves in the ODE itself (R = √W r, so e_j = Σ_m R_mj²).
    """
    return np.abs(B[-1]) + np.abs(B[-2]) + np.sqrt(h * np.sum(R * R, axis=0))


def pan_interval(col: Collocation, ev: Evaluator, newton: GaussNewton, y0: np.ndarray, f0: np.ndarray,
                 t0: float, t1: float, *, atol: np.ndarray, rtol: np.ndarray, picard_tol: float,
                 picard_max_it: int) -> IntervalResult:
    """One PAN solve on [t0, t1] from y(t0) = y0, f(t0, y0) = f0 (collective on the evaluator's comm).

    ``atol``, ``rtol`` (L,) define the scale atol + rtol·max|ŷ| in which convergence and the
    error estimate are measured.
    """
    half = 0.5 * (t1 - t0)
    t = t0 + half * (col.x + 1.0)
    G = col.offset(y0, f0, half)
    y_off, dy_off = col.phi_q @ G[:2], col.dphi_q @ G[:2]
    scale = atol + rtol * np.abs(y0)
    C, picard_its, _ = phase1(col, ev, t, y_off, dy_off, half, scale, tol=picard_tol, max_it=picard_max_it)
    scale = atol + rtol * np.maximum(np.abs(y0), np.max(np.abs(col.phi @ C + y_off), axis=0))
    newton.start(t, y_off, dy_off, half, scale)
    C, newton_its, reason, converged = newton.solve(C)
    B = col.coefficients(C, G)
    Y = newton.Y
    finite = bool(np.all(np.isfinite(B)) and np.all(np.isfinite(newton.F)))
    scale = atol + rtol * np.max(np.abs(Y), axis=0) if finite else scale
    error = estimate(B, newton.R, 2.0 * half)
    error_norm = float(np.max(error / scale)) if finite else np.inf
    return IntervalResult(B, B.sum(axis=0), newton.F[-1].copy(), picard_its, newton_its, reason,
                          converged and finite, float(np.sum(newton.R ** 2)), error, error_norm, Y)  # T_k(1) = 1
