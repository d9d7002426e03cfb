"""``paraflow-hpc run spacetime``: Parareal over P time groups × S space ranks on a PETSc DMDA, HDF5 out.

``mpirun -n P·S paraflow-hpc run spacetime --space-ranks S --problem heat2d --nx 64 ...``; the problem
is a built-in or the user's ``DMDAProblem`` subclass (``--problem my_pde.py:MyPDE --problem-args
nu=0.5``), a class resolved and checked on every rank before any collective work
(``contract.load_class``), constructed on each space communicator and probed there. Every
state is a DMDA Vec spread over S ranks (process grid ``process_grid(S)``); G and F are PETSc TS
solvers configured from ``--petsc "-coarse_ts_type cn -fine_ksp_type cg ..."`` (prefixes
``coarse_`` and ``fine_``; options nobody read are reported at the end, as ``-options_left`` does).
``--coarse-grid-factor c`` runs G on the grid coarsened by c (G = P G_c R, ``propagators_petsc``).
The boundary states go to ``/solution/u`` (N, ny, nx), each rank writing its own box through
parallel HDF5. Checkpoints hold the global fields (boundaries, G and F values, the sequential fine
solution: (N + 1 or N, ny, nx)), each rank writing and reading its own box through parallel HDF5,
so a run restarts on any (P, S) layout: bit-identically on the one that wrote it, and on another
one with the same iterates up to the round-off of its other space decomposition (the
redistribution is the reading). A stop request is honoured between iterations and between the
subintervals of the sequential fine sweep, which a restart continues; the result's seconds and
``total_*`` counters cover all segments of a restarted run (``timings_cover``). A failed TS
solve or a non-finite update or state ends the run with NonFiniteError (exit 4) naming the first
failure, before the state reaches a checkpoint; a run that stops unconverged (``--k-max`` < N, tol
unmet) writes its iterate and exits 4 too, as Parareal does.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
from mpi4py import MPI

from ..algorithms.parareal_st import max_norm, new_state, parareal_st, serial_fine_st, zero_vecs
from ..comm import (EXIT_NON_FINITE, AgreedConfigError, NonFiniteError, Progress, Timers, block_partition,
                    collective, raise_agreed, space_time_split)
from ..config import ConfigError, RunConfig, option, require
from ..io.checkpoint import CheckpointError
from ..io.results import write_result
from ..problems.contract import load_class, probe
from ..problems.pde import coarse_points, petsc, process_grid
from ..propagators_petsc import (TS_TYPES, CoarseGridPropagator, TSPropagator, check_options, insert_options,
                                 option_names, prefixed_options, unused_options)
from .common import EXIT_PREEMPTED, CheckpointHook, problem_args_option, problem_option


MAX_STEPS = 10**9   # TS step counts are PETSc ints (32-bit); the adaptive limit is also 10^9


@dataclass
class Config(RunConfig):
    method = "spacetime"
    problem: str = problem_option("heat2d", "pde")
    problem_args: dict = problem_args_option()
    space_ranks: int = option(1, "ranks S per state (the DMDA's communicator); P = world size / S time groups")
    nx: int = option(32, "grid points in x")
    ny: int = option(0, "grid points in y (0: nx)")
    t0: Optional[float] = option(None, "start time (default: the problem's)")
    tf: Optional[float] = option(None, "end time (default: the problem's)")
    intervals: int = option(8, "number of time subintervals N (>= P; a whole multiple of P is best)")
    coarse: str = option("beuler", "PETSc TS type of G (-coarse_ts_type overrides)", choices=list(TS_TYPES))
    coarse_steps: int = option(1, "steps of G per subinterval")
    coarse_grid_factor: int = option(1, "G on F's grid coarsened by this factor in x and y, G = P G_c R "
                                        "(1: F's grid); a Dirichlet problem (heat2d) needs it to divide nx + 1 "
                                        "and ny + 1, a periodic one (allen-cahn) nx and ny")
    fine: str = option("cn", "PETSc TS type of F (-fine_ts_type overrides)", choices=list(TS_TYPES))
    fine_steps: int = option(16, "steps of F per subinterval")
    petsc: str = option("", "PETSc options, one quoted string, prefixed coarse_ or fine_, e.g. "
                            "\"-coarse_ts_type cn -fine_ksp_type cg -fine_pc_type gamg\"")
    tol: float = option(1e-8, "stop when the max-norm update of all boundaries is <= tol")
    k_max: int = option(0, "iteration limit (0: N, where Parareal is exact)")
    reference: bool = option(True, "compute the sequential fine solution to record the error per iteration")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        require(self.space_ranks >= 1, f"space_ranks = {self.space_ranks}: must be >= 1")
        require(comm_size % self.space_ranks == 0,
                f"space_ranks = {self.space_ranks} does not divide the {comm_size} MPI ranks: the world is "
                f"P time groups x S space ranks; use a divisor of {comm_size} or mpirun -n a multiple of "
                f"{self.space_ranks}")
        problem = self.problem_class()
        r = self.resolved()
        require(r["tf"] > r["t0"], f"tf = {r['tf']} must be greater than t0 = {r['t0']}")
        require(self.nx >= 1, f"nx = {self.nx}: the grid needs at least 1 point in x (e.g. --nx 32)")
        require(self.ny >= 0, f"ny = {self.ny}: must be >= 1, or 0 for ny = nx")
        px, py = process_grid(self.space_ranks)
        ny = self.ny or self.nx
        for axis, n, p in (("nx", self.nx, px), ("ny", ny, py)):
            require(n >= p, f"{axis} = {n} is smaller than the {p} space ranks in that direction (process "
                            f"grid {px} x {py} for space_ranks = {self.space_ranks}); use {axis} >= {p} "
                            f"or fewer space ranks")
        time_groups = comm_size // self.space_ranks
        require(self.intervals >= time_groups,
                f"intervals = {self.intervals} is smaller than the {time_groups} time groups "
                f"({comm_size} ranks / space_ranks = {self.space_ranks}); use intervals >= {time_groups}")
        for key in ("coarse_steps", "fine_steps"):
            require(1 <= getattr(self, key) <= MAX_STEPS,
                    f"{key} = {getattr(self, key)}: must be between 1 and {MAX_STEPS} (steps per subinterval)")
        self._validate_coarse_grid(problem.boundary, ny, px, py)
        require(self.tol >= 0, f"tol = {self.tol}: must be >= 0")
        require(self.k_max >= 0, f"k_max = {self.k_max}: must be >= 0 (0 means N)")
        try:
            tokens = shlex.split(self.petsc)
        except ValueError as err:
            require(False, f"petsc = {self.petsc!r} cannot be parsed ({err}); quote it as one string")
        require(not tokens or tokens[0].startswith("-"),
                f"petsc = {self.petsc!r}: PETSc options start with '-', e.g. \"-fine_ksp_type cg\"")

    def _validate_coarse_grid(self, boundary: str, ny: int, px: int, py: int) -> None:
        factor = self.coarse_grid_factor
        require(factor >= 1, f"coarse_grid_factor = {factor}: must be >= 1 (1: G on F's grid)")
        if factor == 1:
            return
        periodic = boundary == "periodic"
        for axis, n, p in (("nx", self.nx, px), ("ny", ny, py)):
            if periodic:  # points i/n: keeps every factor-th point
                require(n % factor == 0,
                        f"coarse_grid_factor = {factor} does not divide {axis} = {n}: the {self.problem} grid "
                        f"(periodic) is coarsened by keeping one point in {factor}; use {axis} a multiple of "
                        f"{factor} (e.g. {axis} = {max(factor, n - n % factor)}) or a factor dividing {n}")
                smallest = factor * p
            else:  # the interior points of n + 1 intervals: keeps the boundary and every factor-th point
                require((n + 1) % factor == 0,
                        f"coarse_grid_factor = {factor} does not divide {axis} + 1 = {n + 1}: the {self.problem} "
                        f"grid holds the interior points of {n + 1} intervals (Dirichlet), coarsened by keeping "
                        f"one point in {factor}; use {axis} + 1 a multiple of {factor} (e.g. {axis} = "
                        f"{max(2 * factor, (n + 1) - (n + 1) % factor) - 1}) or a factor dividing {n + 1}")
                smallest = factor * (p + 1) - 1
            coarse = coarse_points(boundary, n, factor)
            # PETSc's DMDA interpolation needs two points per periodic direction
            require(not periodic or coarse >= 2,
                    f"coarse_grid_factor = {factor} leaves {coarse} coarse grid point in the {axis[1]} direction "
                    f"({axis} = {n}, periodic): the grid transfers need at least 2; use {axis} >= {2 * factor} or "
                    "a smaller factor")
            require(coarse >= p, f"coarse_grid_factor = {factor} leaves {coarse} coarse grid point(s) in the "
                                 f"{axis[1]} direction ({axis} = {n}), fewer than the {p} space ranks in that "
                                 f"direction (process grid {px} x {py} for space_ranks = {self.space_ranks}); use "
                                 f"{axis} >= {smallest}, a smaller factor or fewer space ranks")

    def problem_class(self):
        """The problem's class (``contract.load_class``: resolved and checked, not constructed; the
        same on every rank), kept on the config."""
        key = (self.problem, repr(sorted(self.problem_args.items())))
        cached = self.__dict__.get("_problem_class")
        if cached is None or cached[0] != key:
            cached = self.__dict__["_problem_class"] = (key, load_class(self.problem, "pde", self.problem_args))
        return cached[1]

    def resolved(self) -> dict:
        """t0, tf (the options, else the problem's: its class attributes or problem_args) and ny."""
        problem = self.problem_class()
        span = {}
        for key in ("t0", "tf"):
            value = getattr(self, key)
            if value is not None and key in self.problem_args and not _same_number(self.problem_args[key], value):
                raise ConfigError(f"{key} = {value} and problem_args {key} = {self.problem_args[key]!r} disagree; "
                                  f"give the time span once (--{key} or --problem-args {key}=...)")
            if value is None:
                value = self.problem_args.get(key, getattr(problem, key))
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ConfigError(f"problem {self.problem!r}: {key} = {value!r} is not a number; set it to "
                                      "a float") from None
            span[key] = value
        return {**span, "ny": self.ny or self.nx}

    def identity(self) -> dict:
        """What a checkpoint must match to be resumed: the options that define the solution. Not the
        layout: the checkpoint holds global fields that every layout reads its boxes of."""
        keys = ("problem", "problem_args", "nx", "intervals", "coarse", "coarse_steps", "coarse_grid_factor", "fine",
                "fine_steps", "petsc", "tol", "k_max", "reference")
        return {**{key: getattr(self, key) for key in keys}, **self.resolved()}

    # What a checkpoint carries besides the state, so that a restart (on any layout) neither
    # recomputes the reference nor forgets the work done: the subintervals of the sequential fine
    # solution done (N once complete, 0 without --reference), and the wall seconds so far of it and
    # of Parareal (max over ranks, summed over segments); meta "counters" sums the counters over all
    # ranks and segments (checked by _Totals.carried).
    checkpoint_meta = {"reference_done": int, "reference_seconds": float, "parareal_seconds": float}

    def checkpoint_limits(self) -> dict:
        """Counts a checkpoint of this run can hold: iterations up to its limit, reference subintervals up to N."""
        return {"iteration": min(self.k_max or self.intervals, self.intervals), "reference_done": self.intervals}

    def checkpoint_spec(self, rank, nranks: int) -> dict:
        """The shared arrays a checkpoint holds (``rank == "root"``): the histories of the update
        norm and the error; no per-rank arrays (the state is in :meth:`checkpoint_fields`)."""
        return {"jumps": ((None,), "f"), "errors": ((None,), "f")} if rank == "root" else {}

    def checkpoint_fields(self) -> dict:
        """The global fields a checkpoint holds, ``{name: (shape, dtype kinds)}``: the boundary
        states U_0 .. U_N and the latest G and F values of the N subintervals on the ny x nx grid,
        and with ``reference`` the sequential fine solution at the N + 1 boundaries."""
        n, grid = self.intervals, (self.ny or self.nx, self.nx)
        return {"boundaries": ((n + 1, *grid), "f"), "coarse_old": ((n, *grid), "f"), "fine": ((n, *grid), "f"),
                **({"reference": ((n + 1, *grid), "f")} if self.reference else {})}


def _same_number(raw, value: float) -> bool:
    try:
        return float(raw) == value
    except (TypeError, ValueError):
        return False


WHOLE = ("boundaries", "reference")  # the checkpoint fields of N + 1 boundary values (the others: N subintervals)
TIMINGS_COVER = ("timings/ and counters/: this segment of the run only (since its start or restart), per rank; "
                 "serial_fine_seconds, parareal_seconds, speedup and the total_* counters: all segments together "
                 "(seconds: wall, max over ranks; total_*: summed over all ranks); segment_*_seconds: this segment")


@dataclass
class _Totals:
    """The work of a run's earlier segments, as its checkpoint carries it, free of the layout (a
    restart may run on another (P, S)): the wall seconds of the sequential fine solution and of
    Parareal (each the max over ranks) and every counter summed over all ranks."""

    reference_seconds: float = 0.0
    parareal_seconds: float = 0.0
    counters: dict = field(default_factory=dict)

    @classmethod
    def carried(cls, meta: dict, cfg) -> "_Totals":
        """From a checkpoint's meta (whose entries of ``Config.checkpoint_meta`` were checked on
        load). Raises CheckpointError, on every rank alike (the meta is everyone's), if its counters
        are not counts or an iteration's checkpoint lacks part of the reference."""
        counts = meta.get("counters")
        if not isinstance(counts, dict) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                                   for n in counts.values()):
            raise CheckpointError(f"checkpoint {cfg.restart!r} is refused: meta entry 'counters' = {counts!r} is "
                                  "not a table of counts")
        if cfg.reference and meta["iteration"] > 0 and meta["reference_done"] != cfg.intervals:
            raise CheckpointError(f"checkpoint {cfg.restart!r} is refused: it holds iteration {meta['iteration']} "
                                  f"but only {meta['reference_done']} of the {cfg.intervals} subintervals of the "
                                  "sequential fine solution")
        return cls(float(meta["reference_seconds"]), float(meta["parareal_seconds"]), counts)

    def so_far(self, comm, reference_done: int, reference_seconds: float, parareal_seconds: float,
               counters: dict) -> dict:
        """Collective: a checkpoint's meta entries (and the result's totals): these totals plus this
        segment's seconds (max over ranks already) and this rank's ``counters`` summed over all ranks."""
        summed = np.array(list(counters.values()), dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, summed, op=MPI.SUM)
        return {"reference_done": reference_done, "reference_seconds": self.reference_seconds + reference_seconds,
                "parareal_seconds": self.parareal_seconds + parareal_seconds,
                "counters": {name: self.counters.get(name, 0) + int(n) for name, n in zip(counters, summed)}}


def layout_of(comm, space_ranks: int) -> dict:
    px, py = process_grid(space_ranks)
    return {"time_groups": comm.size // space_ranks, "space_ranks": space_ranks, "process_grid": [px, py]}


def _describe(layout: dict) -> str:
    """The layout in words; a checkpoint's record of it is informational (any layout reads the
    fields), so one that lacks or garbles it is described as such rather than refused."""
    try:
        px, py = (int(n) for n in layout["process_grid"])
    except (KeyError, TypeError, ValueError):
        return "a layout it does not record"
    return f"P = {layout['time_groups']} time groups x S = {layout['space_ranks']} space ranks (grid {px} x {py})"


def make_solvers(comm, comm_space, cfg, layout: dict):
    """(problem, G, F, u0) on ``comm_space``, set up under the collective guard of ``comm`` (the world).

    ``cfg`` needs problem, problem_args, nx, ny, t0, coarse, coarse_steps, coarse_grid_factor, fine,
    fine_steps (a :class:`Config`); PETSc options must already be in the options database. With
    ``coarse_grid_factor`` c > 1, G is a :class:`CoarseGridPropagator`: the same problem class (and
    problem_args) on the grid coarsened by c, behind DMDA interpolation and injection. The problem's
    arrays are probed on every rank's block (``contract.probe``) before anything uses them: a wrong
    one raises :class:`~paraflow_hpc.comm.AgreedConfigError` (exit 2) on every rank alike.
    """
    r = cfg.resolved()
    cls = cfg.problem_class()
    with collective(comm, "PETSc set-up"):
        problem = cls(comm_space, cfg.nx, r["ny"], tuple(layout["process_grid"]), **cfg.problem_args)
        if cfg.coarse_grid_factor > 1:
            coarse = CoarseGridPropagator(problem, "coarse_", cfg.coarse, cfg.coarse_steps, cfg.coarse_grid_factor)
        else:
            coarse = TSPropagator(problem, "coarse_", cfg.coarse, cfg.coarse_steps)
        fine = TSPropagator(problem, "fine_", cfg.fine, cfg.fine_steps)
    probes = [(problem, cfg.problem)]
    if cfg.coarse_grid_factor > 1:  # a block shape that only the coarse grid gets wrong
        probes.append((coarse.problem, f"{cfg.problem} on G's grid (coarsened by {cfg.coarse_grid_factor})"))
    raise_agreed(comm, next(filter(None, (_probe_error(p, spec) for p, spec in probes)), None))
    with collective(comm, "PETSc set-up"):
        u0 = problem.initial()
        residual = u0.duplicate()
        problem.ifunction(None, r["t0"], u0, u0, residual)  # the first PETSc evaluation, inside the guard
        residual.destroy()
        if cfg.coarse_grid_factor > 1:  # and the coarse problem's
            uc = coarse.problem.initial()
            fc = uc.duplicate()
            coarse.problem.ifunction(None, r["t0"], uc, uc, fc)
            uc.destroy()
            fc.destroy()
    return problem, coarse, fine, u0


def _probe_error(problem, spec: str) -> str | None:
    """What is wrong with ``problem``'s arrays on this rank's block (``contract.probe``); None if nothing.
    Local: no communication, so every rank gets to the agreement after it."""
    try:
        probe(problem, "pde", spec)
    except ConfigError as err:
        return str(err)
    except Exception as err:  # e.g. no block_shape: a class not derived from DMDAProblem
        return (f"problem {spec!r}: probing it failed: {type(err).__name__}: {err}; subclass "
                "paraflow_hpc.problems.pde.DMDAProblem (docs/spacetime.md, 'Bring your own PETSc problem')")
    return None


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    r = cfg.resolved()
    layout = layout_of(comm, cfg.space_ranks)
    comm_time, comm_space = space_time_split(comm, cfg.space_ranks)
    with collective(comm, "PETSc initialisation"):
        PETSc = petsc(comm)
        insert_options(PETSc, cfg.petsc)
    check_before_setup(comm, PETSc, cfg, layout)
    problem, coarse, fine, u0 = make_solvers(comm, comm_space, cfg, layout)
    for counted in (problem, coarse.problem):  # the solves' evaluations, not the set-up's probe: every
        counted.nfev = counted.njev = 0         # segment of a restarted run then adds up to the whole run
    times = np.linspace(r["t0"], r["tf"], cfg.intervals + 1)
    progress(f"space-time Parareal on {comm.size} ranks = {_describe(layout)}: {cfg.problem} on "
             f"{cfg.nx} x {r['ny']}, t in [{r['t0']}, {r['tf']}], N = {cfg.intervals}, "
             f"G = {coarse.describe()}, F = {fine.describe()}")
    if layout["time_groups"] == 1:   # Parareal's iterations then run one after the other: no gain in time
        progress("note: P = 1 time group: every Parareal iteration costs a full fine sweep on the same ranks, so "
                 "this run is slower than the sequential fine solve; use more ranks than --space-ranks")

    def failed(what: str) -> NonFiniteError:
        """Collective: ``what`` and the first TS failure message of any rank, to raise on every rank."""
        messages = [m for m in comm.allgather(coarse.failure or fine.failure) if m]
        return NonFiniteError(what + (f"; first TS failure: {messages[0]}" if messages else ""))

    # every option G and F read, from --petsc, PETSC_OPTIONS or .petscrc alike: part of what a
    # checkpoint must match (--petsc alone is in the identity the CLI checks up front)
    solver_options = prefixed_options(PETSc, ("coarse_", "fine_"))
    hook = CheckpointHook(comm, cfg, "spacetime", cfg.identity(), progress,
                          fix="more --fine-steps / --coarse-steps or other -fine_/-coarse_ solver options")
    a, b = block_partition(cfg.intervals, comm_time.size, comm_time.rank)
    ny_loc, nx_loc = problem.block_shape
    reference = zero_vecs(u0, b - a + 1) if cfg.reference else None  # U_a .. U_b of the sequential fine solution
    reference_done, resume, carried = 0, None, _Totals()
    if cfg.restart:  # verified by the CLI: same options, any layout
        boxes = {name: ((a, problem.ys, problem.xs), (b - a + (name in WHOLE), ny_loc, nx_loc))
                 for name in cfg.checkpoint_fields()}
        meta, arrays, root = hook.load(cfg.restart, boxes)
        _check_solver_options(meta.get("petsc_options"), solver_options, cfg.restart)
        carried = _Totals.carried(meta, cfg)
        # a non-finite value anywhere in the state (on any rank) would be carried into the result
        finite = all(np.isfinite(a).all() for a in (*arrays.values(), *root.values()))
        if not comm.allreduce(int(finite), op=MPI.MIN):
            raise CheckpointError(f"checkpoint {cfg.restart!r} is refused: it holds non-finite values (NaN or inf), "
                                  "which no run writes; it was edited or damaged")
        if reference is not None:
            reference_done = int(meta["reference_done"])
            for vec, box in zip(reference, arrays.pop("reference")):
                with vec as arr:
                    arr[:] = box.reshape(-1)
        k = int(meta["iteration"])
        if (len(root["jumps"]), len(root["errors"])) != ((k, k + 1) if k > 0 else (0, 0)):
            raise CheckpointError(f"checkpoint {cfg.restart!r} is refused: it holds iteration {k} but "
                                  f"{len(root['jumps'])} updates and {len(root['errors'])} errors in its history "
                                  f"(a consistent one has {k} and {k + 1 if k else 0}); it was edited")
        if k > 0:  # else a checkpoint of the reference sweep: Parareal starts afresh
            resume = new_state(int(meta["iteration"]), u0, b - a)
            resume.load_arrays({name: box.reshape(len(box), -1) for name, box in arrays.items()})
            resume.jumps, resume.errors = list(root["jumps"]), list(root["errors"])
        written = {key: meta.get(key) for key in layout}
        progress(f"restarting from {cfg.restart} " +
                 (f"after iteration {resume.k}" if resume else
                  f"in the sequential fine solution, after subinterval {reference_done} of {cfg.intervals}") +
                 ("" if written == layout else f" (written on {_describe(written)}, read into this layout)"))

    def counters() -> dict:
        """This rank's work in this segment (the result's /counters)."""
        return {**coarse.counters(), **fine.counters(), "ifunction_evaluations": problem.nfev,
                "ijacobian_evaluations": problem.njev}

    def fields(state) -> dict:
        """This rank's boxes of the checkpoint's global fields: U_a .. U_b of the iterate and of the
        reference (U_a only in the first time group: the others' U_a is the previous group's U_b,
        written once), G and F of [a, b). Without a state (a checkpoint of the reference sweep) its
        boxes are empty: the fields exist, filled with zeros."""
        arrays = state.local_arrays() if state is not None else {name: np.empty((0, ny_loc * nx_loc))
                                                     for name in ("boundaries", "coarse_old", "fine")}
        if reference is not None:
            arrays["reference"] = np.array([v.getArray(readonly=True) for v in reference])
        out = {}
        for name, arr in arrays.items():
            skip = int(name in WHOLE and comm_time.rank > 0 and len(arr) > 0)
            out[name] = ((cfg.intervals + (name in WHOLE), r["ny"], cfg.nx), (a + skip, problem.ys, problem.xs),
                         arr[skip:].reshape(-1, ny_loc, nx_loc))
        return out

    def histories(state) -> dict:
        return {"jumps": np.array(state.jumps if state is not None else [], dtype=float),
                "errors": np.array(state.errors if state is not None else [], dtype=float)}

    serial_seconds = 0.0  # this segment's, max over ranks; the reference may come (whole) from the checkpoint
    if reference is not None and reference_done < cfg.intervals:
        ref_timers = Timers()
        comm.Barrier()
        reference, reference_done = serial_fine_st(comm_time, fine, u0, times, ref_timers, out=reference,
                                                   start=reference_done,
                                                   after_subinterval=lambda n: hook.stop_requested())
        comm.Barrier()
        serial_seconds = comm.allreduce(ref_timers.elapsed(), op=MPI.MAX)
        computed = reference[:max(0, min(b, reference_done) - a + 1)]  # U_a .. U_done where this group has them
        if not comm.allreduce(int(all(np.isfinite(max_norm(v)) for v in computed)), op=MPI.MIN):
            raise failed("the sequential fine solution is not finite")
        if reference_done < cfg.intervals or hook.stop_requested():  # its last check is after the whole sweep
            meta = {**layout, "petsc_options": solver_options,
                    **carried.so_far(comm, reference_done, serial_seconds, 0.0, counters())}
            hook.save(0, lambda: {}, lambda: histories(None), meta=meta, fields=lambda: fields(None), stopped=True,
                      what=f"of the sequential fine solution after subinterval {reference_done} of {cfg.intervals}")
            progress(f"stopped in the sequential fine solution; resume with --restart {cfg.checkpoint}")
            return EXIT_PREEMPTED
        progress(f"sequential fine solution (space-parallel on {cfg.space_ranks} ranks): {serial_seconds:.3f} s")
    elif reference is not None:
        progress(f"sequential fine solution read from {cfg.restart}")

    def after_iteration(state) -> bool:
        # a NaN from a failed speculative F solve must not reach the checkpoint: the hook raises instead
        finite = all(np.isfinite(arr).all() for arr in state.local_arrays().values())
        meta = {**layout, "petsc_options": solver_options,
                **carried.so_far(comm, reference_done, serial_seconds, comm.allreduce(run_timers.elapsed(), op=MPI.MAX),
                                 counters())}
        return hook(state.k, lambda: {}, lambda: histories(state), meta=meta, finite=finite,
                    fields=lambda: fields(state))

    comm.Barrier()
    run_timers = Timers()
    try:
        result = parareal_st(comm_time, coarse, fine, u0, times, tol=cfg.tol, k_max=cfg.k_max or cfg.intervals,
                             reference=reference, resume=resume, after_iteration=after_iteration,
                             progress=progress)
    except FloatingPointError as err:  # raised on every rank alike, from the reduced update norm
        raise failed(str(err)) from None
    comm.Barrier()
    parareal_seconds = comm.allreduce(run_timers.elapsed(), op=MPI.MAX)
    if result.interrupted:
        progress(f"stopped after iteration {result.iterations}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED

    exact_error, final_exact_error = _exact_errors(comm_time, problem, result.boundaries, times[a + 1:b + 1])
    # those of --petsc and every G or F option from PETSC_OPTIONS or .petscrc
    unused = unused_options(sorted(set(option_names(cfg.petsc)) | set(solver_options)))
    if unused and comm.rank == 0:  # even with --quiet, as PETSc's -options_left
        print(f"warning: PETSc options set but not used by G or F: {_unused_hint(unused)}", file=sys.stderr,
              flush=True)
    segment = counters()
    totals = carried.so_far(comm, reference_done, serial_seconds, parareal_seconds, segment)
    total_serial = totals["reference_seconds"] if cfg.reference else float("nan")
    total_parareal = totals["parareal_seconds"]
    attrs = {"iterations": result.iterations, "converged": result.converged, **layout,
             "nx": cfg.nx, "ny": r["ny"], "coarse_grid_factor": cfg.coarse_grid_factor,
             "coarse_nx": coarse.grid[0], "coarse_ny": coarse.grid[1],
             "serial_fine_seconds": total_serial, "parareal_seconds": total_parareal,
             "speedup": total_serial / total_parareal,
             "segment_serial_fine_seconds": serial_seconds if cfg.reference else float("nan"),
             "segment_parareal_seconds": parareal_seconds,
             **{f"total_{name}": count for name, count in totals["counters"].items()},
             "timings_cover": TIMINGS_COVER,
             "exact_error": exact_error, "final_exact_error": final_exact_error,
             "petsc_options_unused": "unknown" if unused is None else " ".join(unused),
             "restarted_from": cfg.restart, **coarse.solver_types(), **fine.solver_types()}
    if hasattr(problem, "radius"):
        last = comm_time.size - 1  # rank (last, 0) of the world has the final state's radius
        radius = comm.bcast(problem.radius(result.boundaries[-1]) if comm_time.rank == last else None,
                            root=last * cfg.space_ranks)
        attrs.update(radius=radius, sharp_interface_radius=problem.sharp_interface_radius(r["tf"]))
    field = np.array([u.getArray(readonly=True).reshape(ny_loc, nx_loc) for u in result.boundaries])
    field = field.reshape(b - a, ny_loc, nx_loc)
    with collective(comm, f"writing result {cfg.output}"):
        write_result(
            comm, cfg.output, method="spacetime", config=cfg.as_dict(),
            history={"update_norm": np.array([np.nan] + result.jumps), "error": np.array(result.errors, dtype=float)},
            timings=result.timings, counters=segment,
            blocks={"u": ((cfg.intervals, r["ny"], cfg.nx), (a, problem.ys, problem.xs), field)},
            data={"times": times}, attrs=attrs)
    exact = result.iterations >= cfg.intervals and not (result.jumps and result.jumps[-1] <= cfg.tol)
    progress(f"done: {result.iterations} iterations, converged = {result.converged}"
             + (" (k = N: the sequential fine solution, exactly; tol was not met before)" if exact else "")
             + ", final error vs "
             f"sequential fine = {result.errors[-1] if result.errors else float('nan'):.3e}"
             + (f", max error vs exact solution {exact_error:.3e}" if np.isfinite(exact_error) else "")
             + f", time {total_parareal:.3f} s (sequential fine {total_serial:.3f} s)"
             + (" over all segments" if cfg.restart else "") + f"; result written to {cfg.output}")
    if not result.converged:   # written for inspection, but never reported as a success
        if comm.rank == 0:
            print(f"error: space-time Parareal did not converge in k_max = {result.iterations} iterations "
                  f"(tol = {cfg.tol:g}); the unconverged iterate is in {cfg.output}: raise --k-max (k = N is "
                  "exact) or loosen --tol", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    return 0


def check_before_setup(comm, PETSc, cfg: Config, layout: dict) -> None:
    """Collective: raise :class:`~paraflow_hpc.comm.AgreedConfigError` on every rank, before any PETSc
    object exists, for G and F options that PETSc refuses or that would not solve
    (:func:`~paraflow_hpc.propagators_petsc.check_options`, from every source of options), and for a
    grid beyond PETSc's indices or the memory of the ranks' nodes. PETSc's options database must hold
    the run's options."""
    refusal = (check_options(PETSc, {"coarse_": cfg.coarse, "fine_": cfg.fine}, cfg.space_ranks)
               or _index_refusal(PETSc, cfg))   # the same on every rank: no agreement needed
    if refusal:
        raise AgreedConfigError(refusal)
    raise_agreed(comm, _memory_refusal(comm, cfg, layout))


def _index_refusal(PETSc, cfg: Config) -> str | None:
    """A grid with more points than PETSc's integers (PetscInt: 32-bit unless built otherwise) count."""
    points, limit = cfg.nx * cfg.resolved()["ny"], int(np.iinfo(PETSc.IntType).max)
    if points <= limit:
        return None
    return (f"nx x ny = {cfg.nx} x {cfg.resolved()['ny']} = {points} grid points: more than this PETSc's "
            f"{8 * np.dtype(PETSc.IntType).itemsize}-bit indices count ({limit}); use a smaller grid or a PETSc "
            "configured --with-64-bit-indices")


def _memory_refusal(comm, cfg: Config, layout: dict) -> str | None:
    """Collective: a message if the states alone (a lower bound: no solver workspace, no LU fill) of
    the ranks on this node exceed its available memory, else None. Each rank holds, for its m
    subintervals and its block of the grid, U_a .. U_b, G and F values, the reference and ~10
    vectors and 3 five-point matrices inside G and F."""
    px, py = layout["process_grid"]
    points = -(-cfg.nx // px) * -(-cfg.resolved()["ny"] // py)
    m = -(-cfg.intervals // layout["time_groups"])
    vectors = 3 * m + 2 + (m + 1 if cfg.reference else 0) + 10
    need = 8 * points * vectors + 3 * 5 * 12 * points + 8 * (cfg.intervals + 1)
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    node_need = node.allreduce(need)
    node.Free()
    try:
        with open("/proc/meminfo") as fh:
            available = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    if node_need <= available:
        return None
    return (f"the states of nx x ny = {cfg.nx} x {cfg.resolved()['ny']}, N = {cfg.intervals} need at least "
            f"{node_need / 2**30:.1f} GiB on this node ({need / 2**30:.2f} GiB per rank, {m} subintervals of a "
            f"{points}-point block), {available / 2**30:.1f} GiB are available; use a smaller grid or fewer "
            "subintervals, or more nodes (ranks) for the same problem")


def _unused_hint(unused: list[str]) -> str:
    """The unused option names, each with the likely reason."""
    bare = [n for n in unused if not n.startswith(("coarse_", "fine_"))]
    read = [n for n in unused if n not in bare]
    parts = []
    if bare:
        parts.append(f"{' '.join('-' + n for n in bare)} (options of G or F need the coarse_ or fine_ prefix)")
    if read:
        parts.append(f"{' '.join('-' + n for n in read)} (not read by the solver types in use, e.g. a KSP "
                     "tolerance with -fine_ksp_type preonly, or misspelt; see the types in the result's attributes)")
    return "; ".join(parts)


def _check_solver_options(written, current: dict, path: str) -> None:
    """Refuse (on every rank alike: the meta is broadcast) a checkpoint whose G and F read other PETSc
    options than this run's, e.g. after PETSC_OPTIONS or a .petscrc changed between the runs."""
    if not isinstance(written, dict):   # every space-time checkpoint records them
        raise CheckpointError(f"checkpoint {path!r} is refused: meta entry 'petsc_options' = {written!r} is not a "
                              "table of options; it was edited")
    if written == current:
        return
    changed = sorted(k for k in set(written) | set(current) if written.get(k) != current.get(k))
    raise CheckpointError(
        f"checkpoint {path!r} was written with other PETSc options for G and F: "
        + ", ".join(f"-{k} {written.get(k, '(unset)')} there, {current.get(k, '(unset)')} now" for k in changed)
        + "; they come from --petsc, PETSC_OPTIONS or .petscrc: restart with the same ones")


def _exact_errors(comm_time, problem, boundaries: list, times: np.ndarray) -> tuple[float, float]:
    """(max over the boundaries, at the final time) of the max-norm error against the exact solution;
    NaN where the problem has none; inf where a state is not finite. Collective on the whole world."""
    if problem.exact_values is None:
        return float("nan"), float("nan")
    exact = problem.create_vec()
    errors = []
    for u, t in zip(boundaries, times):
        problem.exact(t, exact)
        exact.aypx(-1.0, u)
        errors.append(max_norm(exact))
    exact.destroy()
    last = comm_time.size - 1
    final = comm_time.bcast(errors[-1] if comm_time.rank == last else None, root=last)
    return comm_time.allreduce(max(errors, default=0.0), op=MPI.MAX), final   # inf, never NaN: max keeps it
