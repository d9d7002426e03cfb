"""A checkpoint of global fields: written by one number of ranks, read back by another.

``checkpoint_fields.py DIR write|read [CHUNK_BYTES [gathered]]``: ``write`` stores a (7, 5, 6) field split
in boxes over the ranks (rows of time x a 2-D split of the grid) and a root history; ``read`` loads
it on this run's ranks (any count) with its own boxes and checks every value, then checks that a
file whose field has another shape is refused, and that a per-rank checkpoint is not taken for one
of fields. A third argument lowers the block size so that every box crosses in many blocks; a fourth,
``gathered``, takes the path of an h5py without parallel HDF5 (boxes sent to and from rank 0)."""
import os
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.comm import block_partition
from paraflow_hpc.io import checkpoint
from paraflow_hpc.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

comm = MPI.COMM_WORLD.Split(0, MPI.COMM_WORLD.rank)   # any communicator
out, mode = sys.argv[1], sys.argv[2]
if len(sys.argv) > 3:
    checkpoint.CHUNK_BYTES = int(sys.argv[3])
if len(sys.argv) > 4 and sys.argv[4] == "gathered":
    checkpoint.parallel_hdf5_available = lambda: False
SHAPE = (7, 5, 6)
FULL = np.arange(np.prod(SHAPE), dtype=float).reshape(SHAPE) * 0.5 - 3.0
ck = os.path.join(out, "fields.h5")


def my_box():
    """Rows of the time axis over ranks / 2, the x axis split in two when the rank count is even."""
    halves = 2 if comm.size % 2 == 0 else 1
    group, part = divmod(comm.rank, halves)
    a, b = block_partition(SHAPE[0], comm.size // halves, group)
    x0, x1 = block_partition(SHAPE[2], halves, part)
    return (a, 0, x0), (b - a, SHAPE[1], x1 - x0)


offset, shape = my_box()
box = FULL[tuple(slice(o, o + n) for o, n in zip(offset, shape))]
spec = {"u": (SHAPE, "f")}
if mode == "write":
    for version in (1, 2):
        save_checkpoint(comm, ck, "fields-test", {"iteration": version}, {},
                        {"history": np.arange(3.0) * version}, fields={"u": (SHAPE, offset, box * version)})
    save_checkpoint(comm, os.path.join(out, "ranks.h5"), "fields-test", {"iteration": 1}, {"u": box})
    if comm.rank == 0:
        print("written")
else:
    meta, mine, root = load_checkpoint(comm, ck, "fields-test", fields=spec, boxes={"u": (offset, shape)})
    assert meta["iteration"] == 2 and np.array_equal(root["history"], np.arange(3.0) * 2)
    assert mine["u"].shape == shape and np.array_equal(mine["u"], box * 2), (comm.rank, mine["u"], box)
    for wrong, why in (({"u": ((7, 5, 7), "f")}, "has shape (7, 5, 6), this run expects (7, 5, 7)"),
                       ({"u": (SHAPE, "f"), "v": (SHAPE, "f")}, "/fields holds ['u'], this run expects ['u', 'v']"),
                       ({"u": (SHAPE, "i")}, "this run expects integers")):
        try:
            load_checkpoint(comm, ck, "fields-test", fields=wrong, boxes={"u": (offset, shape)})
            raise AssertionError(f"{wrong} accepted")
        except CheckpointError as err:
            assert why in str(err), str(err)
    try:   # a per-rank checkpoint where fields are expected: refused by its structure
        load_checkpoint(comm, os.path.join(out, "ranks.h5"), "fields-test", fields=spec, boxes={"u": (offset, shape)})
        raise AssertionError("a per-rank checkpoint was read as fields")
    except CheckpointError as err:
        assert "are not /fields and /root" in str(err) or "written by" in str(err), str(err)
    if comm.rank == 0:
        print("read-ok")
