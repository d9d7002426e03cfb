"""Reaction–diffusion PDEs on a distributed PETSc DMDA: the states of space-time Parareal.

    u_t = ν Δu + r(t, x, y, u)   on the unit square, u(t0) = u0,

discretised by second-order finite differences on an ``nx`` × ``ny`` grid (the 5-point
Laplacian), spread over the ranks of ``comm_space`` by a DMDA with a fixed process grid
``proc_sizes`` = (px, py). A state is a global DMDA Vec: each rank owns the block
[ys, ye) × [xs, xe) of the grid, stored x-fastest. The TS propagators
(``propagators_petsc.py``) see a problem through the implicit form

    F(t, u, u̇) = u̇ − ν L u − r(t, u) = 0,
    ∂F/∂u + shift·∂F/∂u̇ = shift·I − ν L − diag(∂r/∂u),

so every TS type (BEULER, CN, ARKIMEX, ROSW ...) treats the whole right-hand side implicitly.
L (the grid Laplacian, units 1/length²) is assembled once; the Jacobian is a copy of it, scaled
and shifted, plus a diagonal for a nonlinear reaction.

To bring your own problem: subclass :class:`DMDAProblem` and set ``boundary``, ``nu``, ``linear``,
``t0``/``tf``, ``initial_values`` and ``reaction``/``reaction_derivative`` (arrays over this rank's
block, shape (ye − ys, xe − xs)); override ``ifunction``/``ijacobian`` for other operators. Run it
as ``--problem my_pde.py:MyPDE`` (or ``package.module:MyPDE``, or an entry point: the one problem
door, ``contract.load_class``); ``--problem-args nu=0.5`` sets its float class attributes. A new
built-in: register it in ``PDE_PROBLEMS`` (``builtin.py`` registers those). See docs/spacetime.md.
"""
from __future__ import annotations

import numpy as np

from ..petsc_options import petsc


def process_grid(space_ranks: int) -> tuple[int, int]:
    """The (px, py) process grid of the DMDA for ``space_ranks`` ranks (MPI_Dims_create, px >= py).

    Fixed here rather than left to PETSc so that a layout can be validated before any
    collective call (``nx >= px``, ``ny >= py``) and a checkpoint can name it.
    """
    from mpi4py import MPI

    px, py = MPI.Compute_dims(space_ranks, 2)
    return int(px), int(py)


# -- coarse grids (G on a coarser grid: propagators_petsc.CoarseGridPropagator) ----------------
#
# A grid is coarsened by keeping every factor-th point, so every coarse point is a fine point:
#   periodic  (points i/n, i = 0 .. n-1):      coarse j on fine factor·j,            needs factor | n;
#   dirichlet (the n interior points (i + 1)/(n + 1) of the n + 2 points that include the boundary,
#              whose coarsening keeps both boundary points): coarse j on fine factor·(j + 1) − 1,
#              needs factor | n + 1, and leaves (n + 1)/factor − 1 interior points.
# The coarse problem is the same class on that many points, so its spacing is factor times F's.

def coarse_points(boundary: str, n: int, factor: int) -> int | None:
    """Points in one direction of the grid of ``n`` points coarsened by ``factor``; None where the
    factor does not divide the grid (see above)."""
    intervals = n if boundary == "periodic" else n + 1
    if factor < 1 or intervals % factor:
        return None
    return n // factor if boundary == "periodic" else (n + 1) // factor - 1


def coarse_to_fine(boundary: str, j: int, factor: int) -> int:
    """The index of the fine point that coarse point ``j`` lies on (one direction)."""
    return factor * j if boundary == "periodic" else factor * (j + 1) - 1


def coarse_ownership(boundary: str, fine_counts, factor: int) -> list[int]:
    """Coarse points per rank in one direction: each coarse point goes to the rank that owns the fine
    point it lies on, so the grid transfers need only neighbouring (ghost) points. A rank whose fine
    range is at least ``factor`` points wide gets at least one; with PETSc's even split of the fine
    grid that holds whenever the coarse grid has at least as many points as ranks in that direction."""
    starts = np.cumsum([0, *fine_counts])
    nc = coarse_points(boundary, int(starts[-1]), factor)
    under = [coarse_to_fine(boundary, j, factor) for j in range(nc or 0)]
    owners = np.searchsorted(starts, under, side="right") - 1
    return [int(np.count_nonzero(owners == r)) for r in range(len(fine_counts))]


class DMDAProblem:
    """u_t = ν Δ_h u + r(t, x, y, u) on a 2-D DMDA over ``comm`` (an mpi4py communicator).

    ``boundary``: "dirichlet" (u = 0 on the boundary of the unit square; the grid holds the
    ``nx`` × ``ny`` interior points, spacing 1/(nx + 1)) or "periodic" (spacing 1/nx).
    Counters ``nfev`` (residual evaluations) and ``njev`` (Jacobian evaluations) are per rank.
    The float class attributes (``nu``, ``t0``, ``tf``, a subclass's own) are the problem's
    parameters: keywords after the grid's set them on the instance (``--problem-args nu=0.5``).
    """

    name = "dmda"
    t0 = 0.0
    tf = 1.0
    nu = 1.0
    boundary = "dirichlet"
    linear = True           # r does not depend on u: TS may solve one linear system per stage

    def __new__(cls, *args, **kwargs):
        # The keywords after the grid's (--problem-args), whatever a subclass's own __init__ does with
        # them: coarsened() constructs the coarse problem with the same ones.
        self = super().__new__(cls)
        self.problem_args = {key: value for key, value in kwargs.items() if key != "ownership_ranges"}
        return self

    @classmethod
    def parameters(cls) -> dict[str, float]:
        """The problem's parameters and their defaults: its public float class attributes."""
        return {key: getattr(cls, key) for key in dir(cls)
                if not key.startswith("_") and isinstance(getattr(cls, key), float)}

    @classmethod
    def check_parameters(cls, params: dict) -> dict[str, float]:
        """``params`` as floats; ValueError on a name that is not a parameter or a value that is not a
        finite number (what ``contract.load_class`` checks before any rank constructs the problem)."""
        known = cls.parameters()
        out = {}
        for key, value in params.items():
            if key not in known:
                raise ValueError(f"{cls.__name__} has no parameter {key!r}; its parameters (float class "
                                 f"attributes): {', '.join(sorted(known))}")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise ValueError(f"{cls.__name__} parameter {key} = {value!r}: must be a finite number")
            out[key] = float(value)
        return out

    def __init__(self, comm, nx: int, ny: int, proc_sizes: tuple[int, int], ownership_ranges=None, **params):
        for key, value in self.check_parameters(params).items():
            setattr(self, key, value)
        PETSc = petsc(comm)
        self.comm, self.nx, self.ny, self.proc_sizes = comm, nx, ny, tuple(proc_sizes)
        periodic = self.boundary == "periodic"
        btype = PETSc.DM.BoundaryType.PERIODIC if periodic else PETSc.DM.BoundaryType.NONE
        self.da = PETSc.DMDA().create(dim=2, dof=1, sizes=(nx, ny), proc_sizes=proc_sizes,
                                      boundary_type=(btype, btype), stencil_type=PETSc.DMDA.StencilType.STAR,
                                      stencil_width=1, ownership_ranges=ownership_ranges, comm=comm)
        self.hx, self.hy = (1.0 / nx, 1.0 / ny) if periodic else (1.0 / (nx + 1), 1.0 / (ny + 1))
        (self.xs, self.xe), (self.ys, self.ye) = self.da.getRanges()
        offset = 0.0 if periodic else 1.0
        self.x = (np.arange(self.xs, self.xe) + offset) * self.hx     # this rank's grid lines
        self.y = (np.arange(self.ys, self.ye) + offset) * self.hy
        self.X, self.Y = np.meshgrid(self.x, self.y)                 # shape (ye - ys, xe - xs)
        self.L = self._laplacian(PETSc)
        self.nfev = self.njev = 0
        self._diagonal = None

    @property
    def block_shape(self) -> tuple[int, int]:
        return (self.ye - self.ys, self.xe - self.xs)

    def _laplacian(self, PETSc):
        """The 5-point Laplacian, assembled once by rows in ghosted local numbering."""
        L = self.da.createMatrix()
        (gxs, gxe), (gys, gye) = self.da.getGhostRanges()
        gnx = gxe - gxs
        periodic = self.boundary == "periodic"
        stencil = ((-1, 0, 1.0 / self.hx**2), (1, 0, 1.0 / self.hx**2),
                   (0, -1, 1.0 / self.hy**2), (0, 1, 1.0 / self.hy**2))
        centre = -2.0 / self.hx**2 - 2.0 / self.hy**2
        for j in range(self.ys, self.ye):
            for i in range(self.xs, self.xe):
                row = (j - gys) * gnx + (i - gxs)
                cols, vals = [row], [centre]
                for di, dj, w in stencil:
                    ii, jj = i + di, j + dj
                    if not periodic and not (0 <= ii < self.nx and 0 <= jj < self.ny):
                        continue  # a Dirichlet boundary value, zero
                    cols.append((jj - gys) * gnx + (ii - gxs))
                    vals.append(w)
                # ADD: on a periodic grid of width 2 both neighbours are the same point
                L.setValuesLocal([row], cols, vals, addv=PETSc.InsertMode.ADD_VALUES)
        L.assemble()
        return L

    # -- what a problem defines ------------------------------------------------------------
    def initial_values(self) -> np.ndarray:
        """u(t0) on this rank's block, shape (ye − ys, xe − xs)."""
        raise NotImplementedError

    def reaction(self, t: float, u: np.ndarray) -> np.ndarray:
        """r(t, x, y, u) on this rank's block (same shape as ``u``)."""
        return np.zeros_like(u)

    def reaction_derivative(self, t: float, u: np.ndarray) -> np.ndarray | None:
        """∂r/∂u on this rank's block, or None where r does not depend on u."""
        return None

    exact_values = None  # exact_values(t) -> block, where a closed form exists

    # -- PETSc side ------------------------------------------------------------------------
    def create_vec(self):
        return self.da.createGlobalVec()

    def initial(self):
        """u(t0) as a new global Vec."""
        u = self.create_vec()
        with u as arr:
            arr[:] = self.initial_values().ravel()
        return u

    def exact(self, t: float, out) -> bool:
        """Write the exact solution at t into ``out``; False where the problem has none."""
        if self.exact_values is None:
            return False
        with out as arr:
            arr[:] = self.exact_values(t).ravel()
        return True

    def ifunction(self, ts, t, u, udot, f) -> None:
        """F = u̇ − ν L u − r(t, u) (PETSc TSIFunction)."""
        self.nfev += 1
        self.L.mult(u, f)
        f.aypx(-self.nu, udot)
        r = self.reaction(t, u.getArray(readonly=True).reshape(self.block_shape))
        with f as arr:
            arr -= r.ravel()

    def ijacobian(self, ts, t, u, udot, shift, J, P) -> None:
        """P = shift·I − ν L − diag(∂r/∂u) (PETSc TSIJacobian); J is P."""
        PETSc = petsc(self.comm)
        self.njev += 1
        self.L.copy(P, structure=PETSc.Mat.Structure.SAME_NONZERO_PATTERN)
        P.scale(-self.nu)
        P.shift(shift)
        dr = self.reaction_derivative(t, u.getArray(readonly=True).reshape(self.block_shape))
        if dr is not None:
            if self._diagonal is None:
                self._diagonal = self.create_vec()
            with self._diagonal as arr:
                arr[:] = -dr.ravel()
            P.setDiagonal(self._diagonal, addv=PETSc.InsertMode.ADD_VALUES)

    def coarsened(self, factor: int) -> "DMDAProblem":
        """The same problem (class and ``problem_args``) on this grid coarsened by ``factor`` in each
        direction, on the same process grid, each coarse point on the rank that owns the fine point
        under it (collective)."""
        sizes = [coarse_points(self.boundary, n, factor) for n in (self.nx, self.ny)]
        if None in sizes:
            raise ValueError(f"coarsening factor {factor} does not fit the {self.nx} x {self.ny} "
                             f"{self.boundary} grid")
        ranges = [coarse_ownership(self.boundary, counts, factor) for counts in self.da.getOwnershipRanges()]
        if min(min(r) for r in ranges) < 1:
            raise ValueError(f"coarsening the {self.nx} x {self.ny} grid by {factor} leaves a rank of the "
                             f"{self.proc_sizes[0]} x {self.proc_sizes[1]} process grid without coarse points "
                             f"(coarse ownership {ranges})")
        return type(self)(self.comm, sizes[0], sizes[1], self.proc_sizes, ownership_ranges=ranges,
                          **self.problem_args)

    def destroy(self) -> None:
        if self._diagonal is not None:
            self._diagonal.destroy()
        self.L.destroy()
        self.da.destroy()


class Heat2D(DMDAProblem):
    """u_t = ν Δu + f with the manufactured solution u = x(1 − x) y(1 − y) cos(2πt), u = 0 on the boundary.

    The 5-point Laplacian is exact on this quadratic profile, so the semi-discrete solution is
    the exact one at the grid points: the error against ``exact_values`` is the time
    integrator's alone and shrinks at its order (1 for BEULER, 2 for CN).
    """

    name = "heat2d"
    tf = 1.0
    nu = 1.0

    def _profile(self):
        return self.X * (1.0 - self.X) * self.Y * (1.0 - self.Y)

    def exact_values(self, t: float) -> np.ndarray:
        return self._profile() * np.cos(2.0 * np.pi * t)

    def initial_values(self) -> np.ndarray:
        return self.exact_values(self.t0)

    def reaction(self, t, u):
        """The forcing f = u_t − ν Δu of the manufactured solution (independent of u)."""
        laplacian = -2.0 * (self.X * (1.0 - self.X) + self.Y * (1.0 - self.Y))
        return (-2.0 * np.pi * np.sin(2.0 * np.pi * t) * self._profile()
                - self.nu * laplacian * np.cos(2.0 * np.pi * t))


class AllenCahn2D(DMDAProblem):
    """u_t = Δu + (u − u³)/ε², periodic, a disc of radius R0 = 0.25 (u ≈ +1 inside, −1 outside).

    The disc shrinks by mean curvature, R(t)² = R0² − 2t in the sharp-interface limit
    (the classic pySDC / Allen–Cahn benchmark), so t must stay below R0²/2 = 0.03125.
    Nonlinear: Newton (SNES) in every implicit stage.
    """

    name = "allen-cahn"
    tf = 0.01
    nu = 1.0
    boundary = "periodic"
    linear = False
    eps = 0.04
    radius0 = 0.25

    def initial_values(self) -> np.ndarray:
        r = np.hypot(self.X - 0.5, self.Y - 0.5)
        return np.tanh((self.radius0 - r) / (np.sqrt(2.0) * self.eps))

    def reaction(self, t, u):
        return (u - u**3) / self.eps**2

    def reaction_derivative(self, t, u):
        return (1.0 - 3.0 * u**2) / self.eps**2

    def radius(self, u) -> float:
        """Disc radius from the area where u > 0 (collective over the space communicator)."""
        from mpi4py import MPI

        inside = float(np.count_nonzero(u.getArray(readonly=True) > 0.0)) * self.hx * self.hy
        return float(np.sqrt(self.comm.allreduce(inside, op=MPI.SUM) / np.pi))

    def sharp_interface_radius(self, t: float) -> float:
        return float(np.sqrt(max(self.radius0**2 - 2.0 * (t - self.t0), 0.0)))


PDE_PROBLEMS = {cls.name: cls for cls in (Heat2D, AllenCahn2D)}
