"""PETSc TS propagators for space-time Parareal's G and F, on distributed DMDA Vecs.

A :class:`TSPropagator` advances a state from t0 to t1 in ``steps`` equal steps of one
PETSc TS (implicit: BEULER, CN, THETA, BDF, ARKIMEX, ROSW; each stage a SNES with its KSP/PC).
G and F are two TS objects with options prefixes ``coarse_`` and ``fine_``, so every TS, SNES,
KSP and PC option reaches one of them from the command line: ``-coarse_ts_type cn``,
``-fine_ksp_type cg -fine_pc_type gamg``, ``-fine_snes_monitor`` ...

Defaults, all overridable: fixed steps (``-X_ts_adapt_type none``; with an adaptive controller
the step count is PETSc's and ``steps`` only sets the first step), Newton with
rtol 1e-10 / atol 1e-12 (KSP only for linear problems), and a parallel direct solve
(``-X_ksp_type preonly -X_pc_type lu -X_pc_factor_mat_solver_type superlu_dist``), which gives
the same answer to round-off on every number of space ranks, so Parareal's iterates do not
depend on the layout, and the same bits on every run of one layout (static pivoting and
scheduling), so a restart is bit-identical. MUMPS is not: on 2 ranks its dynamic scheduling
changed the last bit between runs. For large grids an iterative solver (cg + gamg) is the
better choice; its tolerance then enters the layout independence.

:class:`CoarseGridPropagator` runs G on a coarser grid, G(u) = P · G_c(R · u): a TSPropagator on
the problem coarsened by a factor, behind PETSc's DMDA interpolation P and the full-weighting
restriction R (:class:`GridTransfer`), still a ``prop(u_in, t0, t1, out)`` on the fine grid's Vecs.
"""
from __future__ import annotations

import ctypes
import shlex

from .petsc_options import is_number, option_names, petsc

TS_TYPES = ("beuler", "cn", "theta", "bdf", "arkimex", "rosw")


class TSPropagator:
    """``steps`` steps of a PETSc TS from t0 to t1: ``prop(u_in, t0, t1, out)`` (Vecs on the problem's DMDA).

    ``prefix`` ("coarse_" or "fine_") selects the options that configure it. The problem's
    ``ifunction``/``ijacobian`` define the ODE system (problems/pde.py). Counters per rank:
    ``calls``, ``steps_taken``, ``snes_iterations``, ``ksp_iterations``.

    A solve that fails (SNES/KSP diverged, t1 not reached) does not raise, because the other time
    groups could not learn of it: it fills ``out`` with NaN, which every later norm carries to all
    ranks (Parareal then stops on a non-finite update), and keeps the first message in ``failure``.
    """

    def __init__(self, problem, prefix: str, ts_type: str, steps: int):
        PETSc = self.PETSc = petsc(problem.comm)
        self.problem, self.prefix, self.steps = problem, prefix, steps
        ts = self.ts = PETSc.TS().create(comm=problem.comm)
        ts.setOptionsPrefix(prefix)
        # The grid lets -X_pc_type mg / -X_snes_fd_color work. A clone per TS: the DM holds the
        # TS's residual context, so G and F sharing one DM would evaluate each other's stages.
        self.dm = problem.da.clone()
        ts.setDM(self.dm)
        self.residual = problem.create_vec()
        self.jacobian = problem.L.duplicate(copy=True)
        ts.setIFunction(problem.ifunction, self.residual)
        ts.setIJacobian(problem.ijacobian, self.jacobian, self.jacobian)
        ts.setProblemType(PETSc.TS.ProblemType.LINEAR if problem.linear else PETSc.TS.ProblemType.NONLINEAR)
        ts.setType(ts_type)
        ts.setExactFinalTime(PETSc.TS.ExactFinalTime.MATCHSTEP)
        # A failed step then ends TSSolve with a negative converged reason on every rank of the
        # space group alike; a PETSc error is left for what only one rank may see (see __call__).
        ts.setErrorIfStepFails(False)
        options = PETSc.Options()
        # petsc4py 3.18 has no TSAdapt: the fixed-step default goes through the options database
        if not options.hasName(prefix + "ts_adapt_type"):
            options.setValue(prefix + "ts_adapt_type", "none")
        snes = ts.getSNES()
        snes.setTolerances(rtol=1e-10, atol=1e-12)
        ksp = snes.getKSP()
        ksp.setType("preonly")
        ksp.getPC().setType("lu")
        ksp.getPC().setFactorSolverType("superlu_dist")  # deterministic; mumps is not (see above)
        ts.setFromOptions()
        self.adapt_type = options.getString(prefix + "ts_adapt_type")
        self.adaptive = self.adapt_type != "none"
        self.calls = self.steps_taken = self.snes_iterations = self.ksp_iterations = 0
        self.failure: str | None = None

    def __call__(self, u_in, t0: float, t1: float, out) -> None:
        ts = self.ts
        u_in.copy(out)
        ts.setTime(t0)
        ts.setStepNumber(0)
        ts.setTimeStep((t1 - t0) / self.steps)
        ts.setMaxTime(t1)
        ts.setMaxSteps(10**9 if self.adaptive else self.steps)
        # A PETSc error (an exception in the problem's callbacks, a bad option value) may be
        # raised on one space rank only while the others wait inside TSSolve: it is not caught
        # here, so the uncaught-exception hook aborts every rank with its message.
        ts.solve(out)
        self.calls += 1
        self.steps_taken += ts.getStepNumber()
        self.snes_iterations += ts.getSNESIterations()
        self.ksp_iterations += ts.getKSPIterations()
        reason = ts.getConvergedReason()
        if reason < 0 or abs(ts.getTime() - t1) > 1e-9 * max(abs(t1 - t0), 1e-300):
            # Only this time group knows: NaN makes the failure everyone's at the next norm.
            out.set(float("nan"))
            if self.failure is None:
                self.failure = (
                    f"{self.prefix[:-1]} TS ({ts.getType()}) failed on [{t0:g}, {t1:g}]: "
                    f"{reason_name(self.PETSc, reason)}, reached t = "
                    f"{ts.getTime():g}; use more --{self.prefix[:-1]}-steps or other "
                    f"-{self.prefix}snes_* / -{self.prefix}ksp_* options")

    @property
    def grid(self) -> tuple[int, int]:
        """(nx, ny) of the grid it works on."""
        return self.problem.nx, self.problem.ny

    def solver_types(self) -> dict[str, str]:
        """The types PETSc actually uses after the options: {prefix + "ts_type": ..., "snes_type" ...}."""
        snes = self.ts.getSNES()
        ksp = snes.getKSP()
        return {f"{self.prefix}ts_type": self.ts.getType(), f"{self.prefix}snes_type": snes.getType(),
                f"{self.prefix}ksp_type": ksp.getType(), f"{self.prefix}pc_type": ksp.getPC().getType(),
                f"{self.prefix}ts_adapt_type": self.adapt_type}

    def describe(self) -> str:
        types = self.solver_types()
        return (f"{types[self.prefix + 'ts_type']}, {self.steps} steps"
                f"{' (adaptive)' if self.adaptive else ''}, {types[self.prefix + 'snes_type']}/"
                f"{types[self.prefix + 'ksp_type']}/{types[self.prefix + 'pc_type']}")

    def counters(self) -> dict[str, int]:
        name = self.prefix[:-1]
        return {f"{name}_calls": self.calls, f"{name}_steps": self.steps_taken,
                f"{name}_snes_iterations": self.snes_iterations, f"{name}_ksp_iterations": self.ksp_iterations}

    def destroy(self) -> None:
        for obj in (self.ts, self.residual, self.jacobian, self.dm):
            obj.destroy()


class VertexGrid:
    """A problem's grid as PETSc's DMDA interpolation and injection see it, for :class:`GridTransfer`.

    ``DMCreateInterpolation``/``DMCreateInjection`` on DMDAs place point i at i/M (periodic) or at
    i/(M − 1), both ends included (otherwise), and coarsen by keeping every factor-th point. The
    periodic problems fit that as they are. The Dirichlet problems hold only the nx interior points
    (i + 1)/(nx + 1); here they become the interior of an (nx + 2)-point DMDA whose boundary points
    are zero, each boundary line on the rank next to it, so a state moves in (:meth:`load`) and out
    (:meth:`store`) of it by a local array slice. Both use a BOX stencil: Q1 interpolation reads the
    diagonal coarse neighbour, which a STAR DMDA's ghost map leaves out. Same ownership as the
    problem's DMDA (plus the boundary points), so the matrices act on the problem's Vecs directly.
    """

    def __init__(self, problem):
        PETSc = petsc(problem.comm)
        self.problem = problem
        self.extended = problem.boundary != "periodic"
        lx, ly = ([int(n) for n in counts] for counts in problem.da.getOwnershipRanges())
        if self.extended:
            for counts in (lx, ly):
                counts[0] += 1
                counts[-1] += 1
            sizes, btype = (problem.nx + 2, problem.ny + 2), PETSc.DM.BoundaryType.NONE
        else:
            sizes, btype = (problem.nx, problem.ny), PETSc.DM.BoundaryType.PERIODIC
        self.da = PETSc.DMDA().create(dim=2, dof=1, sizes=sizes, proc_sizes=problem.proc_sizes,
                                      boundary_type=(btype, btype), stencil_type=PETSc.DMDA.StencilType.BOX,
                                      stencil_width=1, ownership_ranges=(lx, ly), comm=problem.comm)
        self.work = None
        if self.extended:
            (xs, xe), (ys, ye) = self.da.getRanges()
            ny, nx = problem.block_shape
            oy, ox = problem.ys + 1 - ys, problem.xs + 1 - xs   # the interior block inside this rank's box
            self.shape, self.interior = (ye - ys, xe - xs), (slice(oy, oy + ny), slice(ox, ox + nx))
            self.work = self.da.createGlobalVec()

    def load(self, u):
        """``u`` (a Vec of the problem) as a Vec of this grid: itself, or the work Vec with zero boundary."""
        if not self.extended:
            return u
        with self.work as arr:
            grid = arr.reshape(self.shape)
            grid[...] = 0.0
            grid[self.interior] = u.getArray(readonly=True).reshape(self.problem.block_shape)
        return self.work

    def target(self, u):
        """Where to put a result meant for ``u``: ``u`` itself, or the work Vec (then :meth:`store` it)."""
        return self.work if self.extended else u

    def store(self, w, u) -> None:
        if self.extended:
            with u as arr:
                arr[:] = w.getArray(readonly=True).reshape(self.shape)[self.interior].ravel()

    def destroy(self) -> None:
        for obj in (self.work, self.da):
            if obj is not None:
                obj.destroy()


class GridTransfer:
    """Prolongation P (coarse → fine) and restriction R (fine → coarse) between a problem and its
    ``coarsened(factor)`` copy, from PETSc's DMDA machinery on the :class:`VertexGrid` of each.

    P: ``createInterpolation``, bilinear (Q1) interpolation, exact at the coarse points.
    R (default ``"full_weighting"``): the scaled transpose of P, R = diag(1/(Pᵀ1)) Pᵀ, with the
    scale PETSc returns alongside P (the [1 2 1]ᵀ[1 2 1]/16 stencil for factor 2). That is what the
    MGRIT codes use for spatial coarsening (XBraid's drive-diffusion-2D: "1/4 times the transpose
    of bilinear interpolation"; PyMGRIT's example_spatial_coarsening: full weighting), and why it
    suits Parareal too: an error mode too fine for the coarse grid is damped by F (diffusion) and
    averaged away by full weighting, so F − G is small on it, whereas injection aliases it onto a
    smooth coarse mode that G_c carries on. ``"injection"`` (``createInjection``, the value at the
    fine point under each coarse point, R·P = I; pySDC's PFASST on DMDAs uses it) is kept for
    comparison. Measured on heat2d 31 x 31, N = 16, tol 1e-6 (docs/spacetime.md): K = 8/7/8 with full
    weighting at factors 2/4/8, 8/8/9 with injection; on allen-cahn the update norms fall faster too.
    """

    def __init__(self, fine_problem, coarse_problem, restriction: str = "full_weighting"):
        if restriction not in ("full_weighting", "injection"):
            raise ValueError(f"restriction = {restriction!r}: use full_weighting or injection")
        self.restriction = restriction
        self.fine, self.coarse = VertexGrid(fine_problem), VertexGrid(coarse_problem)
        self.P, self.scale = self.coarse.da.createInterpolation(self.fine.da)   # scale = 1/(Pᵀ1)
        self.R = self.coarse.da.createInjection(self.fine.da) if restriction == "injection" else None

    def prolong(self, uc, uf) -> None:
        """uf := P uc."""
        out = self.fine.target(uf)
        self.P.mult(self.coarse.load(uc), out)
        self.fine.store(out, uf)

    def restrict(self, uf, uc) -> None:
        """uc := R uf."""
        out = self.coarse.target(uc)
        if self.R is not None:
            self.R.mult(self.fine.load(uf), out)
        else:
            self.P.multTranspose(self.fine.load(uf), out)
            out.pointwiseMult(out, self.scale)
        self.coarse.store(out, uc)

    def destroy(self) -> None:
        for obj in (self.P, self.scale, self.R, self.fine, self.coarse):
            if obj is not None:
                obj.destroy()


class CoarseGridPropagator:
    """G on a coarser grid: ``prop(u_in, t0, t1, out)`` = P · G_c(R · u_in), with G_c a
    :class:`TSPropagator` on ``problem.coarsened(factor)`` (the same problem class, every spacing
    ``factor`` times F's) and P, R from :class:`GridTransfer`. Vecs in and out are on F's grid, so
    Parareal sees an ordinary propagator. ``prefix`` configures G_c as for :class:`TSPropagator`.
    """

    def __init__(self, problem, prefix: str, ts_type: str, steps: int, factor: int):
        self.factor = factor
        self.problem = problem.coarsened(factor)
        self.inner = TSPropagator(self.problem, prefix, ts_type, steps)
        self.transfer = GridTransfer(problem, self.problem)
        self.u_coarse, self.v_coarse = self.problem.create_vec(), self.problem.create_vec()

    def __call__(self, u_in, t0: float, t1: float, out) -> None:
        self.transfer.restrict(u_in, self.u_coarse)
        self.inner(self.u_coarse, t0, t1, self.v_coarse)  # NaN on failure, which P carries to out
        self.transfer.prolong(self.v_coarse, out)

    @property
    def failure(self) -> str | None:
        return self.inner.failure

    @property
    def grid(self) -> tuple[int, int]:
        """(nx, ny) of the coarse grid G_c works on."""
        return self.inner.grid

    def solver_types(self) -> dict[str, str]:
        return self.inner.solver_types()

    def describe(self) -> str:
        return f"{self.inner.describe()} on the {self.problem.nx} x {self.problem.ny} grid (factor {self.factor})"

    def counters(self) -> dict[str, int]:
        name = self.inner.prefix[:-1]
        return {**self.inner.counters(), f"{name}_ifunction_evaluations": self.problem.nfev,
                f"{name}_ijacobian_evaluations": self.problem.njev}

    def destroy(self) -> None:
        for obj in (self.u_coarse, self.v_coarse, self.transfer, self.inner, self.problem):
            obj.destroy()


def reason_name(PETSc, reason: int) -> str:
    names = {v: k for k, v in vars(PETSc.TS.ConvergedReason).items() if k.isupper()}
    return names.get(reason, str(reason))


def insert_options(PETSc, options: str) -> list[str]:
    """Put the ``-key value`` pairs into PETSc's options database; returns their names."""
    tokens = shlex.split(options or "")
    if tokens:
        PETSc.Options().insertString(" ".join(shlex.quote(t) for t in tokens))
    return option_names(options)


# TS types that take the problems' implicit form F(t, u, u') = 0 (an IFunction); explicit ones refuse it
IMPLICIT_TS_TYPES = (*TS_TYPES, "alpha", "glle", "irk", "radau5")
# PC types that solve exactly on their own, so that -X_ksp_type preonly (one application) is a solve
EXACT_PCS = ("lu", "cholesky", "qr", "svd")   # not redundant: its inner PC may be anything
# factorizations with no parallel (MPIAIJ) implementation: on S > 1 space ranks PCSetUp fails
SEQUENTIAL_PCS = ("ilu", "icc")
PARALLEL_FACTOR_SOLVERS = ("superlu_dist", "mumps", "pastix", "strumpack", "mkl_cpardiso", "elemental", "scalapack")


def check_options(PETSc, ts_types: dict[str, str], space_ranks: int) -> str | None:
    """Whether G's and F's options, as PETSc's database holds them (``--petsc``, ``PETSC_OPTIONS``,
    ``.petscrc``), make solvers that work and solve, tried before any collective work. For each
    prefix in ``ts_types`` (``{"coarse_": "beuler", "fine_": "cn"}``: the default types) a TS with
    the propagators' defaults reads the options on COMM_SELF, as the real one will; then the types
    it ends up with are checked: an implicit TS type, a KSP that solves (``preonly`` only with a
    direct PC) and, on ``space_ranks`` > 1, factorizations that exist in parallel. Returns None, or
    one message naming the first refused option. The same on every rank (no communication).

    The options are read under a private copy of the prefix (``check<prefix>``), so the flags by
    which :func:`unused_options` tells which options G and F read stay untouched.
    """
    pairs = [(n, v) for n, v in sorted(PETSc.Options().getAll().items()) if n.lower().startswith(tuple(ts_types))]
    solvers = {v for k, v in vars(PETSc.Mat.SolverType).items() if not k.startswith("_")}
    for name, value in pairs:
        if name.endswith("_type") and not value:
            return f"PETSc option -{name} needs a value (a type name), e.g. \"-{name} <type>\""
        if name.endswith("pc_factor_mat_solver_type") and value not in solvers:
            return (f"PETSc option -{name} {value}: unknown solver package; one of {', '.join(sorted(solvers))} "
                    "(and only those this PETSc was built with)")

    def dry_run(subset) -> tuple[int, dict]:
        """(PETSc's error code for reading ``subset`` under the private prefixes, 0 if accepted;
        {prefix: (ts, ksp, pc, factor solver) types} the options give)."""
        db = PETSc.Options()
        copies = [("check" + name, value) for name, value in subset]
        for name, value in copies:
            db.setValue(name, "" if value is None else value)
        code, types = 0, {}
        PETSc.Sys.pushErrorHandler("ignore")   # our message names the option; PETSc's would be per rank
        try:
            for prefix, ts_type in ts_types.items():
                ts = PETSc.TS().create(comm=PETSc.COMM_SELF)
                try:
                    ts.setOptionsPrefix("check" + prefix)
                    ts.setType(ts_type)
                    ksp = ts.getSNES().getKSP()
                    ksp.setType("preonly")
                    ksp.getPC().setType("lu")
                    ksp.getPC().setFactorSolverType("superlu_dist")
                    ts.setFromOptions()
                    ts.getSNES().setFromOptions()
                    ksp.setFromOptions()
                    ksp.getPC().setFromOptions()
                    pc = ksp.getPC()
                    types[prefix] = (ts.getType(), ksp.getType(), pc.getType(),
                                     pc.getFactorSolverType() if pc.getType() in ("lu", "cholesky") else None)
                except PETSc.Error as err:
                    code = code or err.ierr
                finally:
                    ts.destroy()
        finally:
            PETSc.Sys.popErrorHandler()
            for name, _ in copies:
                db.delValue(name)
        return code, types

    code, types = dry_run(pairs)
    if code:
        def culprit(subset):
            """An option without which PETSc accepts the rest of ``subset``, preferring a value over a
            type (-X_ksp_rtol abc is read only once -X_ksp_type cg replaces preonly: both qualify)."""
            found = [(n, v) for i, (n, v) in enumerate(subset) if not dry_run(subset[:i] + subset[i + 1:])[0]]
            return sorted(found, key=lambda pair: pair[0].endswith("_type"))[0] if found else None

        name, value = culprit(pairs) or (None, None)
        if name is None:   # several refused options: look in the shortest refused head of the list
            j = next(j for j in range(len(pairs)) if dry_run(pairs[:j + 1])[0])
            code = dry_run(pairs[:j + 1])[0]
            name, value = culprit(pairs[:j + 1]) or pairs[j]
        what = {86: "unknown type (misspelt, or from a package this PETSc lacks)", 62: "a value of the wrong kind",
                63: "a value PETSc cannot read or out of range"}
        return (f"PETSc refused -{name}{'' if value is None else ' ' + value}: {what.get(code, f'error code {code}')}; "
                "see the PETSc manual page of that TS/SNES/KSP/PC type or option")
    for p, (ts_type, ksp_type, pc_type, factor) in types.items():
        if ts_type not in IMPLICIT_TS_TYPES:
            return (f"-{p}ts_type {ts_type} is an explicit method, but the problems give PETSc the implicit form "
                    f"F(t, u, u') = 0; use an implicit one: {', '.join(IMPLICIT_TS_TYPES)}")
        if ksp_type in ("preonly", "none") and pc_type not in EXACT_PCS:   # "none": PETSc's alias
            return (f"-{p}pc_type {pc_type} with -{p}ksp_type preonly (the default, meant for a direct solve) "
                    "applies the preconditioner once instead of solving: a wrong answer, not a slow one; add a "
                    f"Krylov method, e.g. -{p}ksp_type gmres (cg for symmetric problems such as heat2d)")
        if space_ranks > 1 and pc_type in SEQUENTIAL_PCS:
            return (f"-{p}pc_type {pc_type} has no parallel implementation in PETSc, and the states are spread "
                    f"over {space_ranks} space ranks; use -{p}pc_type bjacobi with -{p}sub_pc_type {pc_type} "
                    f"(the same per rank), asm or gamg")
        if space_ranks > 1 and factor is not None and factor not in PARALLEL_FACTOR_SOLVERS:
            return (f"-{p}pc_factor_mat_solver_type {factor} factorizes on one rank only, and the states are "
                    f"spread over {space_ranks} space ranks; use superlu_dist (the default) or mumps")
    return None


def prefixed_options(PETSc, prefixes: tuple[str, ...]) -> dict[str, str]:
    """``{name: value}`` of every option in PETSc's database (from the command line, PETSC_OPTIONS,
    .petscrc or set here) whose name starts with one of ``prefixes`` and that can change a solution:
    names in lower case (PETSc reads them so), numbers as floats (1e-3 = 0.001), monitors and viewers
    left out."""
    options = {name.lower(): repr(float(value)) if value is not None and is_number(value) else str(value)
               for name, value in PETSc.Options().getAll().items()}
    return {name: value for name, value in sorted(options.items())
            if name.startswith(prefixes) and not any(word in name for word in OBSERVING)}


OBSERVING = ("monitor", "view", "converged_reason", "log")   # options that only report on a solve


def unused_options(names: list[str]) -> list[str] | None:
    """The names no PETSc object read (as ``-options_left`` reports at exit), or None if unknown.

    petsc4py 3.18 has no wrapper for PetscOptionsUsed, so it is called through ctypes in the
    PETSc library this process has loaded.
    """
    path = _loaded_petsc_library()
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    unused = []
    for name in names:
        used = ctypes.c_int(0)
        if lib.PetscOptionsUsed(None, name.encode(), ctypes.byref(used)) != 0:
            return None
        if not used.value:
            unused.append(name)
    return unused


def _loaded_petsc_library() -> str | None:
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "libpetsc" in line and ".so" in line}
    except OSError:
        return None
    return min(paths) if paths else None
