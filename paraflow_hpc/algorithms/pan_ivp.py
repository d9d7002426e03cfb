"""PAN as an error-controlled integrator: step-size control, dense output, a ``solve_ivp``-shaped front.

The subinterval solve (``pan.py``) returns an error estimate per component; this module steps
with it as scipy's ``solve_ivp`` does (``scipy/integrate/_ivp/rk.py``): a subinterval [t, t + h]
is accepted if its estimate meets atol + rtol·max|ŷ| in every component, otherwise rejected
and retried with a smaller h; after an accepted step h grows by at most ``MAX_FACTOR``. An
unconverged solve (Gauss–Newton stalled or diverged, f non-finite) is a rejection too; once h
would fall below the spacing of floating-point numbers at t, the integration fails with the
reason (``status = -1``), never success. Every decision is computed from values that are the
same bits on every rank (see ``pan.py``), so 1, 2 or 3 ranks take the same steps.

The result keeps every accepted subinterval's Chebyshev coefficients: :class:`PANSolution`
evaluates the piecewise polynomial anywhere, like scipy's ``OdeSolution``.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from mpi4py import MPI
from numpy.polynomial import chebyshev as cheb

from ..comm import Timers
from .pan import (Evaluator, GaussNewton, PANError, collocation, insert_petsc_options, pan_interval, petsc,
                  probe, remove_petsc_options, unused_petsc_options)

EPS = np.finfo(float).eps
SAFETY = 0.9
MIN_FACTOR = 0.2   # most an error-based rejection shrinks h (scipy's rk.py)
MAX_FACTOR = 10.0  # most an accepted step grows h
FAIL_FACTOR = 0.5  # h after an unconverged solve


class PANSolution:
    """Piecewise Chebyshev dense output: ``sol(t)`` for scalar t gives (L,), for an array (L, len(t)).

    ``ts`` (n + 1,) are the subinterval bounds, ``coefficients`` (n, N, L) their B. As scipy's
    ``OdeSolution``, a t on a bound uses the subinterval to its left, except at ts[0]; t outside
    [ts[0], ts[-1]] extrapolates the first or last polynomial.
    """

    def __init__(self, ts: np.ndarray, coefficients: np.ndarray):
        self.ts = np.asarray(ts, dtype=float)
        self.coefficients = np.asarray(coefficients, dtype=float)
        self.t_min, self.t_max = self.ts[0], self.ts[-1]
        self.n_segments = len(self.ts) - 1

    def __call__(self, t):
        t = np.asarray(t, dtype=float)
        flat = np.atleast_1d(t)
        seg = np.clip(np.searchsorted(self.ts, flat, side="left") - 1, 0, self.n_segments - 1)
        a, b = self.ts[seg], self.ts[seg + 1]
        x = 2.0 * (flat - a) / (b - a) - 1.0
        y = np.empty((self.coefficients.shape[2], flat.size))
        for s in np.unique(seg):
            mask = seg == s
            y[:, mask] = cheb.chebval(x[mask], self.coefficients[s])
        return y[:, 0] if t.ndim == 0 else y


@dataclass
class StepperState:
    """Everything the stepping needs to continue (checkpointed between accepted steps)."""

    t: float
    y: np.ndarray
    f: np.ndarray                               # f(t, y)
    h: float                                    # the next step to try
    ts: list = field(default_factory=list)      # accepted bounds, ts[0] = t0
    coefficients: list = field(default_factory=list)
    history: dict = field(default_factory=dict)  # per accepted step: picard, newton, error_norm, h
    counts: dict = field(default_factory=dict)   # batches, points, jacobians, rejected, failed_solves


@dataclass
class PANIVPResult:
    """solve_ivp's result fields plus PAN's counts.

    t (n_points,), y (L, n_points): t_eval if given, else the accepted bounds. sol: PANSolution
    if dense_output else None. status: 0 reached the end, 1 stopped by ``after_step``, -1 failed.
    nfev: point evaluations of f summed over ranks; njev: point Jacobians; nlu: Gauss–Newton
    iterations (each one Cholesky of AᵀA); depth: batched evaluations in sequence (the parallel
    depth); n_steps, n_rejected: accepted and rejected subintervals.
    """

    t: np.ndarray
    y: np.ndarray
    sol: PANSolution | None
    status: int
    message: str
    success: bool
    nfev: int
    njev: int
    nlu: int
    depth: int
    n_steps: int
    n_rejected: int
    state: StepperState
    solution: PANSolution
    timings: dict
    solver_types: dict
    options_left: list         # PETSc options in the database that no PETSc object used
    t_events: None = None
    y_events: None = None


def _tolerances(rtol, atol, dim: int) -> tuple[np.ndarray, np.ndarray]:
    rtol = np.asarray(rtol, dtype=float)
    atol = np.asarray(atol, dtype=float)
    for name, value in (("rtol", rtol), ("atol", atol)):
        if value.ndim > 1 or (value.ndim == 1 and value.shape[0] != dim):
            raise PANError(f"{name} has shape {value.shape}: give a number or one value per component ({dim})")
        if not np.all(np.isfinite(value)) or np.any(value < 0):
            raise PANError(f"{name} = {value}: tolerances must be finite and >= 0")
    if np.any(rtol <= 0) and np.any(atol[...] <= 0):
        raise PANError(f"rtol = {rtol}, atol = {atol}: a component with rtol = 0 and atol = 0 has no "
                       "tolerance; give rtol > 0 or atol > 0")
    if np.any(rtol < 100 * EPS):
        warnings.warn(f"rtol = {rtol} is below 100 eps, raised to {100 * EPS:.3g} (as solve_ivp does)")
        rtol = np.maximum(rtol, 100 * EPS)
    return np.broadcast_to(rtol, (dim,)).copy(), np.broadcast_to(atol, (dim,)).copy()


def memory_estimate(n_coeffs: int, n_points: int, dim: int) -> int:
    """Bytes PAN's Gauss–Newton arrays take on each rank (A and its einsum temporaries, AᵀA, the
    PETSc copy and its factor), the dominant allocation."""
    rows, cols = n_points * dim, (n_coeffs - 2) * dim
    return 8 * (3 * rows * cols + 4 * cols * cols)


def available_memory() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def validate(t_span, y0, rtol, atol, n_coeffs: int, n_points: int, first_step, max_step, t_eval,
             comm_size: int = 1):
    """Checks solve_ivp-style inputs before any work; returns (t0, tf, y0, rtol, atol, t_eval).
    Raises PANError naming the value and the fix."""
    try:
        t0, tf = map(float, t_span)
    except (TypeError, ValueError):
        raise PANError(f"t_span = {t_span!r}: give two numbers (t0, tf)") from None
    if not (np.isfinite(t0) and np.isfinite(tf) and tf > t0):
        raise PANError(f"t_span = ({t0}, {tf}): need finite t0 < tf (PAN integrates forward only)")
    y0 = np.asarray(y0)
    if np.iscomplexobj(y0):
        raise PANError("y0 is complex: PAN integrates real systems; split it into real and imaginary parts")
    y0 = np.array(y0, dtype=float).reshape(-1) if y0.ndim <= 1 else None
    if y0 is None or y0.size == 0 or not np.all(np.isfinite(y0)):
        raise PANError("y0 must be a non-empty, finite 1-D array")
    for name, value, low in (("n_coeffs", n_coeffs, 3), ("n_points", n_points, n_coeffs)):
        if int(value) != value or value < low:
            raise PANError(f"{name} = {value}: need an integer >= {low}")
    need = memory_estimate(n_coeffs, n_points, y0.size)
    have = available_memory()
    if need > 0.5 * have / max(comm_size, 1):
        raise PANError(f"n_coeffs = {n_coeffs}, n_points = {n_points} with {y0.size} components need about "
                       f"{need / 2**30:.1f} GiB per rank ({comm_size} ranks, {have / 2**30:.1f} GiB free): "
                       "use fewer coefficients (PAN adapts the subinterval length instead)")
    rtol, atol = _tolerances(rtol, atol, y0.size)
    if first_step is not None and not (np.isfinite(first_step) and 0 < first_step <= tf - t0):
        raise PANError(f"first_step = {first_step}: need 0 < first_step <= tf - t0 = {tf - t0:g}")
    if not (max_step > 0):
        raise PANError(f"max_step = {max_step}: need max_step > 0")
    if t_eval is not None:
        t_eval = np.asarray(t_eval, dtype=float).reshape(-1)
        if np.any(t_eval < t0) or np.any(t_eval > tf) or np.any(np.diff(t_eval) < 0):
            raise PANError(f"t_eval must be sorted and inside t_span = ({t0:g}, {tf:g})")
    return t0, tf, y0, rtol, atol, t_eval


class _Callable:
    """A batched torch callable f(t, Y) as a problem object (f and f_and_jacobian)."""

    def __init__(self, fun):
        self.f = fun

    def f_and_jacobian(self, t, Y):
        from ..problems.ivp import batched_jacobian

        return batched_jacobian(self.f, t, Y)


def initial_step(t0: float, tf: float, y0, f0, rtol, atol, max_step: float) -> float:
    """The solution's time scale ‖y0/sc‖ / ‖f0/sc‖ (scipy's d0/d1), at most the span and max_step:
    a degree-(N−1) polynomial resolves about one such scale; the controller adapts from there."""
    scale = atol + rtol * np.abs(y0)
    d0, d1 = np.linalg.norm(y0 / scale), np.linalg.norm(f0 / scale)
    h = tf - t0 if d1 <= 1e-5 or d0 <= 1e-5 else d0 / d1
    return float(min(h, max_step, tf - t0))


def pan_ivp(fun, t_span, y0, *, rtol=1e-3, atol=1e-6, first_step: float | None = None,
            max_step: float = np.inf, t_eval=None, dense_output: bool = False, n_coeffs: int = 32,
            n_points: int | None = None, comm=None, petsc_options: str = "", picard_tol: float = 1.0,
            picard_max_it: int = 50, newton_tol: float = 0.1, newton_max_it: int = 10, jacobian: str = "autograd",
            resume: StepperState | None = None, after_step: Callable[[StepperState], bool] | None = None,
            progress: Callable[[str], None] | None = None, monitor=None) -> PANIVPResult:
    """Solve y' = f(t, y), y(t0) = y0 on t_span with PAN under error control (collective on ``comm``).

    ``fun``: a batched right-hand side, either an object with ``f(t, Y)`` and
    ``f_and_jacobian(t, Y)`` (``problems/ivp.py``) or a callable ``fun(t, Y)`` on torch float64
    tensors, t (m,), Y (m, L) -> (m, L), row m depending on row m only (its Jacobian by autograd).
    rtol, atol (scalars or (L,)), first_step, max_step, t_eval, dense_output: as in
    scipy.integrate.solve_ivp; accepted subintervals meet max_j err_j / (atol_j + rtol_j
    max|ŷ_j|) <= 1 (``pan.estimate``). n_coeffs N (>= 3) and n_points M (>= N, default N) per
    subinterval. picard_tol, newton_tol: the solves' stopping thresholds in units of that
    tolerance; picard_max_it, newton_max_it: their iteration limits per subinterval. jacobian:
    "autograd" (exact, one forward and L backward passes) or "fd" (forward differences, f on
    M (L + 1) points in the same batch: cheaper for small L; the extra points count in nfev).
    petsc_options: PETSc options for the Gauss–Newton SNES (``-snes_linesearch_type basic`` …),
    in the options database for this call; those no PETSc object used are in ``options_left``
    (PETSc's ``-options_left``). ``comm``: the communicator the points are spread over
    (default COMM_SELF). ``after_step(state)`` after each accepted step but the last; True
    stops there (status 1). Raises PANError for bad input or a right-hand side that fails at
    (t0, y0); every later failure is a result with ``success = False``.
    """
    comm = MPI.COMM_SELF if comm is None else comm
    n_points = n_coeffs if n_points is None else n_points
    t0, tf, y0, rtol, atol, t_eval = validate(t_span, y0, rtol, atol, n_coeffs, n_points, first_step, max_step,
                                              t_eval, comm.size)
    rhs = fun if hasattr(fun, "f_and_jacobian") else _Callable(fun)
    timers = Timers()
    col = collocation(n_coeffs, n_points)
    ev = Evaluator(comm, rhs, y0.size, n_points, timers, jacobian)
    if resume is None:
        f0 = probe(comm, rhs, t0, y0, jacobian=jacobian == "autograd")
        h = first_step if first_step is not None else initial_step(t0, tf, y0, f0, rtol, atol, max_step)
        state = StepperState(t0, y0.copy(), f0, h, [t0], [],
                             {k: [] for k in ("picard", "newton", "error_norm", "h")},
                             {"batches": 1, "points": 1, "jacobians": 0, "rejected": 0, "failed_solves": 0,
                              "newton_iterations": 0})
    else:
        state = resume
    with timers("setup"):
        PETSc = petsc(comm)
        names = insert_petsc_options(comm, petsc_options)
        try:
            newton = GaussNewton(comm, col, ev, newton_tol=newton_tol, max_it=newton_max_it, timers=timers)
        except PETSc.Error as err:
            remove_petsc_options(comm, names)
            raise PANError(f"PETSc rejected the options {petsc_options!r} (error {err.ierr}): check each "
                           "value's type, e.g. -snes_max_it takes an integer") from None
    newton.monitor = monitor
    counts = state.counts
    status, message, last_reason = None, "", "no solve yet"
    try:
        while status is None:
            t, h = state.t, min(state.h, max_step, tf - state.t)
            if tf - (t + h) < 10 * EPS * max(abs(tf), 1.0):
                h = tf - t  # do not leave a sliver at the end
            min_step = 10 * abs(np.nextafter(t, np.inf) - t)
            if h < min_step:
                status, message = -1, (f"required step size is less than spacing between numbers at t = {t:.17g}: "
                                       f"the last solve on [{t:g}, {t + h:.3g}] was not accepted "
                                       f"({last_reason})")
                break
            before = dict(ev.counts)
            out = pan_interval(col, ev, newton, state.y, state.f, t, t + h, atol=atol, rtol=rtol,
                               picard_tol=picard_tol, picard_max_it=picard_max_it)
            for k in ("batches", "points", "jacobians"):
                counts[k] += ev.counts[k] - before[k]
            counts["newton_iterations"] += out.newton_iterations
            accepted = out.converged and out.error_norm <= 1.0
            if not out.converged:
                counts["failed_solves"] += 1
                last_reason = f"Gauss-Newton {out.reason} after {out.picard_iterations} fixed-point iterations"
                factor = FAIL_FACTOR
            else:
                last_reason = f"error estimate {out.error_norm:.3g} x tolerance"
                exponent = -1.0 / max(2.0, 0.5 * (n_coeffs - 1))
                factor = SAFETY * out.error_norm ** exponent if out.error_norm > 0 else MAX_FACTOR
                factor = min(MAX_FACTOR, max(MIN_FACTOR, factor))
                if accepted and out.newton_iterations > 2:
                    factor = min(factor, 1.0)  # a hard solve: do not grow
            if not accepted:
                counts["rejected"] += 1
                state.h = h * min(factor, FAIL_FACTOR if not out.converged else 0.9)
                if progress:
                    progress(f"rejected [{t:g}, {t + h:g}]: {last_reason}; h -> {state.h:.3g}")
                continue
            state.t = tf if h == tf - t else t + h
            state.y, state.f = out.y_end, out.f_end
            state.h = h * factor
            state.ts.append(state.t)
            state.coefficients.append(out.coefficients)
            for key, value in (("picard", out.picard_iterations), ("newton", out.newton_iterations),
                               ("error_norm", out.error_norm), ("h", h)):
                state.history[key].append(value)
            if not np.all(np.isfinite(state.y)):
                status, message = -1, f"non-finite solution at t = {state.t:g} (step {len(state.ts) - 1})"
                break
            if progress:
                progress(f"step {len(state.ts) - 1} [{t:g}, {state.t:g}]: {out.picard_iterations} fixed-point + "
                         f"{out.newton_iterations} Gauss-Newton iterations, error {out.error_norm:.2e} x tol")
            if state.t >= tf:
                status, message = 0, "The solver successfully reached the end of the integration interval."
            elif after_step is not None and after_step(state):
                status, message = 1, f"stopped after step {len(state.ts) - 1} at t = {state.t:g}"
    finally:
        solver_types = newton.types
        newton.destroy()
        options_left = unused_petsc_options(comm)  # PETSc's -options_left, before ours leave the database
        remove_petsc_options(comm, names)
    solution = PANSolution(np.array(state.ts), np.array(state.coefficients).reshape(
        len(state.coefficients), n_coeffs, y0.size))
    if t_eval is None:
        t_out, y_out = np.array(state.ts), np.column_stack([y0] + [c.sum(axis=0) for c in state.coefficients])
    else:
        t_out = t_eval[t_eval <= state.t]
        y_out = solution(t_out) if len(state.coefficients) else np.empty((y0.size, 0))
    return PANIVPResult(t_out, y_out, solution if dense_output else None, status, message, status == 0,
                        counts["points"], counts["jacobians"], counts["newton_iterations"], counts["batches"],
                        len(state.ts) - 1, counts["rejected"], state, solution, timers.as_dict(), solver_types,
                        options_left)
