"""Writes a result and a checkpoint from every rank, reads them back, checks slices and fallback.

An optional second argument lowers the block size of both modules (bytes), so that every
array crosses MPI and HDF5 in many blocks, as a state above 2 GiB per rank does."""
import json
import os
import sys

import h5py
import numpy as np
from mpi4py import MPI

from paraflow_hpc.comm import block_partition
from paraflow_hpc.io import checkpoint, results
from paraflow_hpc.io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from paraflow_hpc.io.results import write_result

comm = MPI.COMM_WORLD.Split(0, MPI.COMM_WORLD.rank)  # the library works on any communicator
out = sys.argv[1]
if len(sys.argv) > 2:
    checkpoint.CHUNK_BYTES = results.CHUNK_BYTES = int(sys.argv[2])
a, b = block_partition(10, comm.size, comm.rank)
rows = np.arange(a, b, dtype=float)[:, None] * np.ones((1, 3))
write_result(comm, os.path.join(out, "r.h5"), method="test", config={"x": 1, "name": "a"},
             history={"h": [1.0, 2.0]}, timings={"work": float(comm.rank)}, counters={"calls": comm.rank + 1},
             solution={"rows": rows}, data={"d": np.eye(2)}, attrs={"answer": 42})
if comm.rank == 0:
    with h5py.File(os.path.join(out, "r.h5"), "r") as f:
        assert np.array_equal(f["solution/rows"][:, 0], np.arange(10.0))
        assert list(f["timings/work"][()]) == list(range(comm.size))
        assert list(f["counters/calls"][()]) == list(range(1, comm.size + 1))
        assert json.loads(f.attrs["config"]) == {"name": "a", "x": 1} and f.attrs["answer"] == 42
        assert f.attrs["mpi_size"] == comm.size and f["config"].attrs["name"] == "a"
        assert np.array_equal(f["history/h"][()], [1.0, 2.0])

ck = os.path.join(out, "ck.h5")
odd = np.arange(comm.rank * 7, dtype=np.int32).reshape(comm.rank, 7)   # another dtype, one rank empty
for version in (1, 2):
    save_checkpoint(comm, ck, "test", {"problem": "p", "version": version},
                    {"w": rows * version, "odd": odd, "scalar": np.float64(comm.rank)},
                    {"shared": np.array([version]), "long": np.linspace(0, 1, 1000)})
meta, mine, root = load_checkpoint(comm, ck, "test", {"problem": "p"})
assert meta["version"] == 2 and np.array_equal(mine["w"], rows * 2) and root["shared"][0] == 2
assert mine["odd"].dtype == np.int32 and np.array_equal(mine["odd"], odd) and mine["scalar"] == comm.rank
assert np.array_equal(root["long"], np.linspace(0, 1, 1000))
if comm.rank == 0:  # corrupt the newest: loading falls back to the previous one
    with open(ck, "r+b") as fh:
        fh.truncate(os.path.getsize(ck) // 3)
comm.Barrier()
meta, mine, _ = load_checkpoint(comm, ck, "test")
assert meta["version"] == 1 and np.array_equal(mine["w"], rows)
try:
    load_checkpoint(comm, ck, "other-method")
    raise AssertionError("a checkpoint of another method was accepted")
except CheckpointError as err:
    assert "from method 'test'" in str(err)
if comm.rank == 0:
    assert not [f for f in os.listdir(out) if ".partial-" in f], "temporary file left behind"
    print("io-ok")
