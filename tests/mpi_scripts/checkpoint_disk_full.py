"""On a nearly full filesystem a checkpoint write fails clearly and the last good one survives."""
import os
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

comm = MPI.COMM_WORLD
path = os.path.join(sys.argv[1], "ck.h5")
small = np.full(1000, float(comm.rank))
save_checkpoint(comm, path, "test", {"step": 1}, {"w": small})
too_big = np.ones(400_000)  # 3.2 MB per rank: more than the filesystem holds
try:
    save_checkpoint(comm, path, "test", {"step": 2}, {"w": too_big})
    raise AssertionError("a checkpoint larger than the disk was reported as written")
except CheckpointError as err:
    assert "could not write checkpoint" in str(err) and "previous checkpoint is kept" in str(err), err
meta, mine, _ = load_checkpoint(comm, path, "test")
assert meta["step"] == 1 and np.array_equal(mine["w"], small)
if comm.rank == 0:
    assert not [f for f in os.listdir(sys.argv[1]) if ".partial-" in f], "temporary file left behind"
    print("disk-full-ok")
