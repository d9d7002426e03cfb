"""One HDF5 result file per run, readable with plain h5py (layout: docs/results.md).

``/``               attrs: method, created, command, mpi_size, mpi_library, versions (JSON),
                    git_revision, hostnames (JSON), config (JSON)
``/config``         attrs: every resolved option, one attribute each
``/history/<name>`` per-iteration series, identical on all ranks (written by rank 0)
``/timings/<name>`` one entry per rank: seconds spent in each category
``/counters/<name>`` one entry per rank: work counts (function evaluations, messages ...)
``/solution/<name>`` distributed arrays: each rank owns a contiguous slice along axis 0, or
                    (``blocks``) an n-d box of the array, e.g. its piece of a grid at some times
``/data/<name>``    other arrays (written by rank 0)

With parallel h5py (``mpio`` driver) and more than one rank every rank writes its own
slice collectively; otherwise slices are gathered to rank 0. The file is written under
a temporary name and renamed when complete, so a crash never leaves a half result.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import socket
import subprocess
import sys

import h5py
import numpy as np

from mpi4py import MPI

from ..comm import AgreedError, allgather_per_rank, collective, mpi_library_version
from . import boxes as _boxes
from .boxes import parallel_hdf5_available, row_blocks
from .files import describe_arrays, fsync_dir, fsync_file, placeholders, require_room

CHUNK_BYTES = 64 * 2**20   # largest MPI message / MPI-IO write; a test lowers it to check the blocks


def library_versions() -> dict[str, str]:
    import mpi4py
    import scipy
    from mpi4py import MPI

    from .. import __version__

    versions = {
        "paraflow_hpc": __version__,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi_library": mpi_library_version(),
        "mpi_standard": "%d.%d" % MPI.Get_version(),
        "h5py": h5py.__version__,
        "hdf5": h5py.version.hdf5_version,
        "hdf5_parallel": str(parallel_hdf5_available()),
    }
    if "torch" in sys.modules:
        versions["torch"] = sys.modules["torch"].__version__
    if "petsc4py" in sys.modules:
        from petsc4py import PETSc

        versions["petsc"] = "%d.%d.%d" % PETSc.Sys.getVersion()
        versions["petsc4py"] = sys.modules["petsc4py"].__version__
    return versions


def git_revision() -> str:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _scalar_attr(value):
    if isinstance(value, (bool, int, float, str, np.generic)):
        return value
    return json.dumps(value)


def write_result(comm, path: str, *, method: str, config: dict, history: dict | None = None,
                 timings: dict[str, float] | None = None, counters: dict[str, float] | None = None,
                 solution: dict | None = None, blocks: dict | None = None,
                 data: dict | None = None, attrs: dict | None = None) -> None:
    """Collective. ``solution`` maps names to this rank's slice (axis 0) of a distributed array;
    ``blocks`` maps names to ``(shape, offset, array)``: this rank's box ``array`` at index
    ``offset`` of a distributed array of global ``shape`` (same shape and dtype on every rank;
    the boxes of all ranks tile it; an empty box is allowed), also stored under ``/solution``;
    ``history``/``data``/``attrs`` are taken from rank 0. Slices and boxes of any size: written (or sent
    to rank 0) in blocks of at most :data:`CHUNK_BYTES`. The file appears under ``path`` only
    when complete (written as ``path.partial-<pid>``, fsync'ed, renamed, directory fsync'ed)."""
    solution = {k: np.ascontiguousarray(v) for k, v in (solution or {}).items()}
    blocks = {k: (tuple(shape), tuple(offset), np.ascontiguousarray(arr))
              for k, (shape, offset, arr) in (blocks or {}).items()}
    per_rank = {"timings": allgather_per_rank(comm, timings or {}),
                "counters": allgather_per_rank(comm, counters or {})}
    hostnames = comm.allgather(socket.gethostname())
    layout = {name: comm.allgather(arr.shape[0]) for name, arr in solution.items()}
    meta = None
    if comm.rank == 0:
        meta = {
            "method": method, "created": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(sys.argv), "mpi_size": comm.size,
            "mpi_library": mpi_library_version(),
            "versions": json.dumps(library_versions()), "git_revision": git_revision(),
            "hostnames": json.dumps(hostnames), "config": json.dumps(config, sort_keys=True),
            **{k: _scalar_attr(v) for k, v in (attrs or {}).items()},
        }
        history = {k: np.asarray(v) for k, v in (history or {}).items()}
        data = {k: np.asarray(v) for k, v in (data or {}).items()}
    # Other ranks create the same datasets (collective metadata) but write none of rank 0's
    # data: they get names, shapes and dtypes only, never a pickled copy of the arrays.
    shapes = comm.bcast((meta, describe_arrays(history), describe_arrays(data)) if comm.rank == 0 else None, root=0)
    if comm.rank != 0:
        meta, history, data = shapes[0], placeholders(shapes[1]), placeholders(shapes[2])
    tmp = partial_name(path, comm.bcast(os.getpid(), root=0))
    _check_space(comm, path, solution, blocks, history, data)
    parallel = comm.size > 1 and parallel_hdf5_available()
    # Any failure on one rank while the others sit in a collective write/close ends all ranks.
    with collective(comm, f"writing result {path}"):
        if comm.rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        comm.Barrier()
        if parallel:
            with h5py.File(tmp, "w", driver="mpio", comm=comm) as f:
                with collective(comm, f"writing result {path}"):
                    _write_layout(f, comm, meta, config, history, per_rank, solution, layout, data,
                                  own_rank=True)
                    _boxes.write_parallel(f["solution"], comm, blocks, CHUNK_BYTES)
        else:
            _write_gathered(comm, tmp, meta, config, history, per_rank, solution, layout, data, blocks)
        comm.Barrier()
        if comm.rank == 0:
            fsync_file(tmp)   # the data is on disk before the rename makes it the result
            os.replace(tmp, path)
            fsync_dir(path)
        comm.Barrier()


class ResultError(AgreedError, OSError):
    """The result cannot be written (its file system lacks the space); raised on every rank alike."""


def _check_space(comm, path: str, solution: dict, blocks: dict, history: dict, data: dict) -> None:
    """Collective: refuse, on every rank alike, to start a write the file system has no room for
    (HDF5 may crash rather than fail when the disk fills up mid-write)."""
    local = sum(a.nbytes for a in solution.values()) + sum(a.nbytes for _, _, a in blocks.values())
    need = comm.allreduce(local)
    error = None
    if comm.rank == 0:
        try:
            require_room(path, need + sum(a.nbytes for a in (*history.values(), *data.values())))
        except OSError as err:
            error = (f"could not write result {path!r}: {err}; free some space or choose another --output (a "
                     "checkpoint, if any, is kept)")
    error = comm.bcast(error, root=0)
    if error:
        raise ResultError(error)


def partial_name(path: str, pid: int) -> str:
    """The temporary name a result is written under: never mistaken for a result, and removed
    by the next run that writes ``path`` (see :mod:`paraflow_hpc.io.paths`)."""
    return f"{path}.partial-{pid}"


def _write_gathered(comm, tmp, meta, config, history, per_rank, solution, layout, data, boxes) -> None:
    """Without parallel HDF5 (or on one rank): rank 0 writes the file, receiving every other
    rank's slices and boxes as numpy buffers in blocks of at most CHUNK_BYTES (no pickles, any
    size; only the boxes' offsets and shapes travel as objects)."""
    f = h5py.File(tmp, "w") if comm.rank == 0 else None
    try:
        if comm.rank == 0:
            _write_layout(f, comm, meta, config, history, per_rank, {}, {}, data, own_rank=False)
            sol = f.create_group("solution")
        for name, arr in solution.items():
            counts = layout[name]
            if comm.rank == 0:
                ds = sol.create_dataset(name, shape=(sum(counts),) + arr.shape[1:], dtype=arr.dtype)
            row_bytes = math.prod(arr.shape[1:]) * arr.itemsize
            start = 0
            for r, count in enumerate(counts):
                for rows in row_blocks(count, row_bytes, CHUNK_BYTES):
                    if comm.rank == 0:
                        block = arr[rows] if r == 0 else np.empty((rows.stop - rows.start,) + arr.shape[1:],
                                                                  dtype=arr.dtype)
                        if r != 0:
                            comm.Recv(block.reshape(-1).view(np.uint8), source=r, tag=11)
                        ds[start + rows.start:start + rows.stop] = block
                    elif comm.rank == r:
                        comm.Send(np.ascontiguousarray(arr[rows]).reshape(-1).view(np.uint8), dest=0, tag=11)
                start += count
        _boxes.write_gathered(sol if comm.rank == 0 else None, comm, boxes, CHUNK_BYTES)
    finally:
        if f is not None:
            f.close()


def _write_layout(f, comm, meta, config, history, per_rank, solution, layout, data, own_rank):
    """Creates every object on all participating ranks (collective metadata); writes data by owner."""
    is_root = comm.rank == 0
    for key, value in meta.items():
        f.attrs[key] = value
    cfg = f.create_group("config")
    for key, value in config.items():
        cfg.attrs[key] = _scalar_attr(value)
    for group_name, arrays in (("history", history), ("data", data)):
        group = f.create_group(group_name)
        for name, arr in arrays.items():
            ds = group.create_dataset(name, shape=arr.shape, dtype=arr.dtype)
            if is_root and arr.size:
                ds[...] = arr
    for group_name, arrays in per_rank.items():
        group = f.create_group(group_name)
        for name, arr in arrays.items():
            ds = group.create_dataset(name, shape=arr.shape, dtype=arr.dtype)
            if own_rank:
                ds[comm.rank] = arr[comm.rank]
            elif is_root:
                ds[...] = arr
    f["timings"].attrs["unit"] = "seconds"
    if not own_rank:
        return   # the solution is written by _write_gathered
    sol = f.create_group("solution")
    for name, arr in solution.items():
        counts = layout[name]
        ds = sol.create_dataset(name, shape=(sum(counts),) + arr.shape[1:], dtype=arr.dtype)
        start = sum(counts[:comm.rank])
        row_bytes = math.prod(arr.shape[1:]) * arr.itemsize
        blocks = row_blocks(arr.shape[0], row_bytes, CHUNK_BYTES)
        # every rank makes the same number of collective writes; a rank out of rows writes nothing
        rounds = comm.allreduce(len(blocks), op=MPI.MAX)
        with ds.collective:
            for i in range(rounds):
                if i < len(blocks):
                    ds[start + blocks[i].start:start + blocks[i].stop] = arr[blocks[i]]
                else:
                    _boxes.empty_collective(ds, write=True)
