"""Boxes of distributed n-d arrays in HDF5, written and read by the ranks that own them.

A *box* is one rank's piece of a global array: ``(shape, offset, array)`` with ``shape`` the
global shape, ``offset`` the index of the box's first element and ``array`` its values (for a
PETSc DMDA: the ownership range ``ys:ye, xs:xe`` at some times). The boxes of all ranks tile the
global array; an empty box is allowed. Used by result files (``/solution``) and by checkpoints
whose state is a global field (``/fields``), which any process layout can read back.

Two transports: with parallel HDF5 (h5py's ``mpio`` driver) every rank writes or reads its own
box collectively; without it rank 0 does the file I/O and the boxes travel as numpy buffers.
Either way in row blocks of at most ``chunk`` bytes, since MPI and MPI-IO counts are C ints (a
single message or write above 2 GiB fails), and every rank makes the same number of collective
calls (a rank out of rows takes part with an empty selection).
"""
from __future__ import annotations

import math

import h5py
import numpy as np
from mpi4py import MPI


def parallel_hdf5_available() -> bool:
    return bool(h5py.get_config().mpi)


def row_blocks(n_rows: int, row_bytes: int, chunk: int) -> list[slice]:
    """Row ranges of at most ``chunk`` bytes (at least one row)."""
    step = max(1, chunk // max(row_bytes, 1))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def box_index(offset: tuple, shape: tuple, first_row: int = 0) -> tuple[slice, ...]:
    """The index of a box of ``shape`` at ``offset``, its rows starting ``first_row`` further."""
    start = (offset[0] + first_row,) + tuple(offset[1:])
    return tuple(slice(o, o + n) for o, n in zip(start, shape))


def _row_bytes(shape: tuple, itemsize: int) -> int:
    return math.prod(shape[1:]) * itemsize


def empty_collective(ds, write: bool) -> None:
    """Take part in a collective read or write with nothing selected (h5py skips empty
    selections, which would leave the other ranks waiting)."""
    file_space = ds.id.get_space()
    file_space.select_none()
    memory_space = h5py.h5s.create_simple((1,))
    memory_space.select_none()
    buf = np.zeros(1, dtype=ds.dtype)
    (ds.id.write if write else ds.id.read)(memory_space, file_space, buf, dxpl=ds._dxpl)


def write_parallel(group, comm, boxes: dict, chunk: int) -> None:
    """Collective on ``comm`` (``group`` in a file every rank opened with the mpio driver): creates
    one dataset per name and writes each rank's box into it. ``boxes``: ``{name: (shape, offset,
    array)}``, same names, shapes and dtypes on every rank."""
    for name, (shape, offset, arr) in boxes.items():
        ds = group.create_dataset(name, shape=shape, dtype=arr.dtype)
        rows = row_blocks(arr.shape[0], _row_bytes(arr.shape, arr.itemsize), chunk) if arr.ndim else []
        rounds = comm.allreduce(len(rows), op=MPI.MAX)
        with ds.collective:
            for i in range(rounds):
                if i < len(rows) and arr[rows[i]].size:
                    ds[box_index(offset, arr[rows[i]].shape, rows[i].start)] = arr[rows[i]]
                else:
                    empty_collective(ds, write=True)


def write_gathered(group, comm, boxes: dict, chunk: int, tag: int = 12) -> None:
    """Collective: rank 0 (``group`` open there, None elsewhere) creates the datasets and writes
    every rank's box, received as raw buffers; only offsets and shapes travel as objects."""
    for name, (shape, offset, arr) in boxes.items():
        places = comm.gather((offset, arr.shape), root=0)
        ds = group.create_dataset(name, shape=shape, dtype=arr.dtype) if comm.rank == 0 else None
        row_bytes = _row_bytes(arr.shape, arr.itemsize)
        for r in range(comm.size):
            if comm.rank == 0:
                r_offset, r_shape = places[r]
                for rows in row_blocks(r_shape[0], row_bytes, chunk):
                    if r == 0:
                        block = arr[rows]
                    else:
                        block = np.empty((rows.stop - rows.start,) + tuple(r_shape[1:]), dtype=arr.dtype)
                        comm.Recv(block.reshape(-1).view(np.uint8), source=r, tag=tag)
                    ds[box_index(r_offset, block.shape, rows.start)] = block
            elif comm.rank == r:
                for rows in row_blocks(arr.shape[0], row_bytes, chunk):
                    comm.Send(np.ascontiguousarray(arr[rows]).reshape(-1).view(np.uint8), dest=0, tag=tag)


def read_parallel(group, comm, wanted: dict, chunk: int) -> dict[str, np.ndarray]:
    """Collective on ``comm`` (``group`` in a file every rank opened with the mpio driver):
    ``wanted`` ``{name: (offset, shape)}``, the same names on every rank; returns this rank's boxes
    (dtype of the dataset)."""
    out = {}
    for name, (offset, shape) in wanted.items():
        ds = group[name]
        arr = np.empty(shape, dtype=ds.dtype)
        rows = row_blocks(shape[0], _row_bytes(shape, arr.itemsize), chunk) if arr.size else []
        rounds = comm.allreduce(len(rows), op=MPI.MAX)
        with ds.collective:
            for i in range(rounds):
                if i < len(rows):   # read_direct honours the collective transfer (ds[...] reads do not)
                    ds.read_direct(arr, box_index(offset, arr[rows[i]].shape, rows[i].start), rows[i])
                else:
                    empty_collective(ds, write=False)
        out[name] = arr
    return out


def read_scattered(group, comm, wanted: dict, chunk: int, tag: int = 13) -> dict[str, np.ndarray]:
    """Collective: rank 0 (``group`` open there, None elsewhere) reads every rank's box of
    ``wanted`` ``{name: (offset, shape)}`` and sends it as raw buffers; returns this rank's boxes."""
    out = {}
    for name, (offset, shape) in wanted.items():
        dtype = comm.bcast(group[name].dtype.str if comm.rank == 0 else None, root=0)
        places = comm.gather((offset, shape), root=0)
        arr = np.empty(shape, dtype=dtype)
        row_bytes = _row_bytes(shape, arr.itemsize)
        for r in range(comm.size):
            if comm.rank == 0:
                r_offset, r_shape = places[r]
                if not math.prod(r_shape):
                    continue
                for rows in row_blocks(r_shape[0], row_bytes, chunk):
                    block = group[name][box_index(r_offset, (rows.stop - rows.start,) + tuple(r_shape[1:]),
                                                  rows.start)]
                    if r == 0:
                        arr[rows] = block
                    else:
                        comm.Send(np.ascontiguousarray(block).reshape(-1).view(np.uint8), dest=r, tag=tag)
            elif comm.rank == r and arr.size:
                for rows in row_blocks(shape[0], row_bytes, chunk):
                    comm.Recv(arr[rows].reshape(-1).view(np.uint8), source=0, tag=tag)
        out[name] = arr
    return out
