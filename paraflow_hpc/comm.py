"""MPI plumbing shared by every method.

The library never reaches for ``MPI.COMM_WORLD``: every function takes the
communicator it works on, so the same code runs on a sub-communicator and in
tests. Only the command-line entry point (``cli.py``) picks the world.
"""
from __future__ import annotations

import os
import sys
import time
import traceback
from contextlib import contextmanager

import numpy as np
from mpi4py import MPI

from .config import ConfigError
from .stop import StopRequest  # noqa: F401  (re-exported: the runners take it from here)


EXIT_ABORTED = 1  # MPI_Abort error code when one rank fails inside a collective section
EXIT_NON_FINITE = 4  # a non-finite value where a result was expected (NonFiniteError)


def abort_on_uncaught_exception(comm) -> None:
    """An exception on one rank must end every rank, never leave them waiting in a collective."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if comm.size == 1:   # nobody waits: the ordinary traceback (once), exit 1
            previous(exc_type, exc, tb)
            return
        sys.stderr.write(f"[rank {comm.rank}] uncaught exception, aborting all {comm.size} ranks:\n")
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(EXIT_ABORTED)

    sys.excepthook = hook


class AgreedError(Exception):
    """An error every rank raises alike, from values they agree on (a reduction, a broadcast).

    Nobody is left waiting in a collective, so :func:`collective` lets it pass and the CLI
    reports it once, from rank 0, with its own exit code instead of aborting.
    """


class NonFiniteError(AgreedError, FloatingPointError):
    """A non-finite (diverged) loss, state or update: the run cannot give a result.

    The message names the quantity and the step (iteration, window, time step) where it
    first appeared, and the fix. Raise it only on values every rank agrees on (after a
    reduction or broadcast), so that every rank raises it alike: the CLI then ends the run
    with exit code ``EXIT_NON_FINITE`` (4) and one ``error:`` line, without a collective.
    The run writes no result; its last checkpoint, written before the value appeared, stays.
    """


class AgreedConfigError(AgreedError, ConfigError):
    """Bad input that only shows once the run has begun (a user problem's first evaluation on its
    part of the grid), raised on every rank alike by :func:`raise_agreed`: the CLI reports it as any
    other bad input, with one ``error:`` line and exit code 2."""


def raise_agreed(comm, error: str | None) -> None:
    """Raise :class:`AgreedConfigError` with the first error of any rank (lowest rank first) on every
    rank, if any rank has one. Collective on ``comm``: call it where every rank gets to, with the
    message of what went wrong on this rank (None: nothing)."""
    errors = [e for e in comm.allgather(error) if e]
    if errors:
        raise AgreedConfigError(errors[0])


@contextmanager
def collective(comm, what: str):
    """Guard a collective section: an exception on any rank ends every rank, never a hang.

    Inside a collective section (a parallel HDF5 write or read, a checkpoint, the first
    evaluation of a user callable, PETSc object set-up) the other ranks may already wait
    in a collective call that the failing rank will never join, so the exception cannot
    be agreed on (:func:`raise_agreed` does that where every rank gets to) or unwound (an
    ``h5py.File`` exit would even run the collective close). The failing rank prints its
    traceback once, prefixed with ``what``, and calls ``MPI_Abort`` (exit code 1) on ``comm``.
    On one rank there is nobody to wait: the exception propagates unchanged, so callers and
    tests see the ordinary error.

    Use it *inside* any ``with h5py.File(..., driver="mpio")`` block. ``SystemExit`` and
    ``KeyboardInterrupt`` pass through on one rank and abort on several. An
    :class:`AgreedError` (raised on every rank alike) passes through unchanged.
    """
    try:
        yield
    except BaseException as exc:
        if comm.size == 1 or isinstance(exc, AgreedError):
            raise
        sys.stderr.write(f"error: rank {comm.rank} of {comm.size} failed during {what}: "
                         f"{type(exc).__name__}: {exc}\n[rank {comm.rank}] traceback (aborting all "
                         f"{comm.size} ranks):\n")
        traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        comm.Abort(EXIT_ABORTED)


def mpi_library_version() -> str:
    """First line of the MPI library's version string (which may end in NUL bytes)."""
    return MPI.Get_library_version().replace("\x00", "").strip().splitlines()[0]


def check_launch(comm) -> None:
    """Under srun without PMI, Open MPI silently starts singletons: refuse that."""
    expected = os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE")
    if expected is None and "SLURM_STEP_NUM_TASKS" in os.environ:
        expected = os.environ["SLURM_STEP_NUM_TASKS"]
    if expected and expected.isdigit() and int(expected) != comm.size:
        raise RuntimeError(
            f"the launcher asked for {expected} ranks but MPI sees {comm.size}: "
            "under srun use --mpi=pmix (Open MPI) or --mpi=pmi2 (MPICH), or launch with mpirun")


def local_rank(comm) -> int:
    """Rank among the processes sharing this node (for one-GPU-per-rank binding)."""
    for var in ("SLURM_LOCALID", "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID"):
        if var in os.environ:
            return int(os.environ[var])
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return node.rank
    finally:
        node.Free()


def torch_device(comm, prefer: str = "auto"):
    """One GPU per rank by local rank when GPUs exist, the CPU otherwise."""
    import torch

    if prefer == "cpu" or (prefer == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"device={prefer!r} asked for but torch sees no CUDA device; use device=cpu")
    return torch.device("cuda", local_rank(comm) % torch.cuda.device_count())


class Timers:
    """Per-rank wall-clock accounting by category (compute kinds vs waiting for messages)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - t0)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def as_dict(self) -> dict[str, float]:
        return {**self.seconds, "total": self.elapsed()}


class Progress:
    """Rank 0 prints progress lines; every other rank (and --quiet) stays silent."""

    def __init__(self, comm, quiet: bool = False, stream=None):
        self.enabled = comm.rank == 0 and not quiet
        self.stream = stream or sys.stdout
        self.t0 = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self.enabled:
            print(f"[{time.perf_counter() - self.t0:8.2f}s] {message}", file=self.stream, flush=True)


def block_partition(n_items: int, size: int, rank: int) -> tuple[int, int]:
    """Contiguous block [start, stop) of ``n_items`` owned by ``rank``; sizes differ by at most one."""
    base, extra = divmod(n_items, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def allgather_per_rank(comm, per_rank: dict[str, float]) -> dict[str, np.ndarray]:
    """Every rank's scalars (timings, counters), one array entry per rank, union of the names."""
    gathered = comm.allgather(per_rank)
    names = sorted(set().union(*gathered))
    return {name: np.array([t.get(name, 0.0) for t in gathered]) for name in names}
def space_time_split(comm, space_ranks: int):
    """Split ``comm`` (size P·S) into P time groups of S space ranks: ``(comm_time, comm_space)``.

    A Cartesian communicator of dims (P, S), not reordered, puts rank r at (t, s) =
    (r // S, r % S): the S ranks of one time group are consecutive, so a space group
    stays on one node when S divides the ranks per node (its halo exchanges and norms are
    the frequent messages). ``comm_space`` holds the ranks (t, 0..S-1) that share one
    distributed state; ``comm_time`` holds (0..P-1, s), the ranks that exchange the pieces
    of boundary states with their time neighbours (t ± 1, s). ``comm_time.rank`` is t and
    ``comm_space.rank`` is s. Collective on ``comm``; raises ValueError (on every rank
    alike) if ``space_ranks`` does not divide ``comm.size``.
    """
    if space_ranks < 1 or comm.size % space_ranks:
        raise ValueError(f"space_ranks = {space_ranks} does not divide the {comm.size} MPI ranks; "
                         f"use a divisor of {comm.size}")
    cart = comm.Create_cart([comm.size // space_ranks, space_ranks], periods=[False, False], reorder=False)
    try:
        return cart.Sub([True, False]), cart.Sub([False, True])
    finally:
        cart.Free()
