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
import os
import socket
import subprocess
import sys

import h5py
import numpy as np

from ..comm import allgather_per_rank, collective, mpi_library_version


def parallel_hdf5_available() -> bool:
    return bool(h5py.get_config().mpi)


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


def check_writable(comm, path: str) -> str | None:
    """Rank 0 checks that ``path`` can be created; every rank gets the same verdict."""
    error = None
    if comm.rank == 0:
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, exist_ok=True)
            probe = os.path.join(directory, f".paraflow-write-test-{os.getpid()}")
            with open(probe, "wb") as fh:
                fh.write(b"x")
            os.remove(probe)
        except OSError as err:
            error = f"output path {path!r} is not writable ({err.strerror}); choose another with --output"
    return comm.bcast(error, root=0)


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
    ``offset`` of a distributed array of global ``shape`` (same shape on every rank; the boxes
    of all ranks tile it, an empty box is allowed), also stored under ``/solution``;
    ``history``/``data``/``attrs`` are taken from rank 0."""
    from mpi4py import MPI

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
    meta, history, data = comm.bcast((meta, history, data) if comm.rank == 0 else None, root=0)
    tmp = f"{path}.tmp"
    parallel = comm.size > 1 and parallel_hdf5_available()
    if comm.rank == 0:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    comm.Barrier()
    # Any failure on one rank while the others sit in a collective write/close ends all ranks.
    with collective(comm, f"writing result {path}"):
        if parallel:
            with h5py.File(tmp, "w", driver="mpio", comm=comm) as f:
                with collective(comm, f"writing result {path}"):
                    _write_layout(f, comm, meta, config, history, per_rank, solution, layout, data,
                                  own_rank=True)
                    _write_blocks(f, blocks, collective_write=True)
        else:
            gathered = comm.gather((solution, blocks), root=0)
            if comm.rank == 0:
                whole = {name: np.concatenate([g[0][name] for g in gathered]) for name in solution}
                with h5py.File(tmp, "w") as f:
                    _write_layout(f, comm, meta, config, history, per_rank, whole,
                                  {n: [sum(layout[n])] for n in layout}, data, own_rank=False)
                    for _, rank_blocks in gathered:
                        _write_blocks(f, rank_blocks, collective_write=False)
    comm.Barrier()
    if comm.rank == 0:
        os.replace(tmp, path)
    comm.Barrier()


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
    sol = f.create_group("solution")
    for name, arr in solution.items():
        counts = layout[name]
        ds = sol.create_dataset(name, shape=(sum(counts),) + arr.shape[1:], dtype=arr.dtype)
        start = sum(counts[:comm.rank]) if own_rank else 0
        if own_rank:
            with ds.collective:
                if arr.shape[0]:
                    ds[start:start + arr.shape[0]] = arr
                else:
                    _empty_collective_write(ds)
        else:
            ds[...] = arr


def _write_blocks(f, blocks: dict, collective_write: bool) -> None:
    """Each rank's box of the ``blocks`` arrays under /solution (created once, by the first call)."""
    for name, (shape, offset, arr) in blocks.items():
        path = f"solution/{name}"
        ds = f[path] if path in f else f.create_dataset(path, shape=shape, dtype=arr.dtype)
        box = tuple(slice(o, o + n) for o, n in zip(offset, arr.shape))
        if not collective_write:
            if arr.size:
                ds[box] = arr
            continue
        with ds.collective:
            if arr.size:
                ds[box] = arr
            else:
                _empty_collective_write(ds)


def _empty_collective_write(ds) -> None:
    """A rank that owns no rows still takes part in the collective write (h5py skips empty
    selections, which would leave the other ranks waiting)."""
    file_space = ds.id.get_space()
    file_space.select_none()
    memory_space = h5py.h5s.create_simple((1,))
    memory_space.select_none()
    ds.id.write(memory_space, file_space, np.zeros(1, dtype=ds.dtype), dxpl=ds._dxpl)
