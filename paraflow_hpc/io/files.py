"""Small file-system operations shared by checkpoints, results and the output lock.

Durability (a rename is only as durable as the fsync of the file before it and of its directory
after it), room on the file system before a write, whether the process that owns a temporary or a lock is still alive, and the
zero-memory placeholder arrays (from their description) with which ranks that hold no data join a
collective HDF5 dataset creation.
"""
from __future__ import annotations

import os
import shutil

import numpy as np

SPACE_MARGIN = 2**20   # HDF5 metadata, attributes and timings on top of the arrays' bytes


def fsync_file(path: str) -> None:
    """Flush ``path`` (a file or a directory) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Flush the directory entry of ``path`` (after a rename into it)."""
    fsync_file(os.path.dirname(os.path.abspath(path)) or ".")


def require_room(path: str, nbytes: int) -> None:
    """Create ``path``'s directory and raise OSError unless its file system has room for ``nbytes``
    of arrays plus SPACE_MARGIN: HDF5 1.10 may crash rather than fail when the disk fills up."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    need, free = nbytes + SPACE_MARGIN, shutil.disk_usage(directory).free
    if free < need:
        raise OSError(f"{need} bytes needed, {free} free on that file system")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host is alive. A zombie is not: a rank that called
    MPI_Abort stays one until its launcher reaps it, and its lock or temporary is stale."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # a live process of another user
        return True
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def describe_arrays(arrays: dict) -> list[tuple[str, str, tuple]]:
    """``[(name, dtype str, shape)]`` of numpy arrays: what other ranks need to create the same
    datasets, sent instead of the data (no pickled arrays)."""
    return [(name, arr.dtype.str, arr.shape) for name, arr in arrays.items()]


def placeholders(layout) -> dict[str, np.ndarray]:
    """``{name: array}`` for ``layout`` = [(name, dtype str, shape)]: arrays of that shape and dtype
    that take no memory (read-only broadcasts of one zero)."""
    return {name: np.broadcast_to(np.zeros((), dtype=dt), shape) for name, dt, shape in layout}
