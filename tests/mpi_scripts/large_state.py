"""A state above 2 GiB per rank through a checkpoint and a result file (the check by hand of
docs/checkpoint.md; MPI counts are ints, so a single message of this size fails).

Arguments: directory, GiB per rank. Each rank's float64 state is arange(n) + rank / 2: every
value differs, and the comparison after loading needs no second copy in memory.
"""
import os
import sys
import time

import h5py
import numpy as np
from mpi4py import MPI

from paraflow_hpc.io.checkpoint import load_checkpoint, save_checkpoint
from paraflow_hpc.io.results import write_result

comm = MPI.COMM_WORLD
directory, gib = sys.argv[1], float(sys.argv[2])
n = int(gib * 2**30 / 8)
BLOCK = 2**24


def expected(start, stop, rank):
    return np.arange(start, stop, dtype=np.float64) + rank / 2


def same(arr, rank):
    return all(np.array_equal(arr[i:i + BLOCK], expected(i, min(i + BLOCK, n), rank)) for i in range(0, n, BLOCK))


state = np.arange(n, dtype=np.float64)
state += comm.rank / 2
ck = os.path.join(directory, "large.ckpt.h5")
t0 = time.perf_counter()
save_checkpoint(comm, ck, "large", {"iteration": 1}, {"state": state})
t_save = time.perf_counter() - t0
out = os.path.join(directory, "large.h5")
t0 = time.perf_counter()
write_result(comm, out, method="large", config={}, solution={"state": state})
t_result = time.perf_counter() - t0
del state
t0 = time.perf_counter()
_, mine, _ = load_checkpoint(comm, ck, "large")
t_load = time.perf_counter() - t0
assert mine["state"].shape == (n,) and same(mine["state"], comm.rank), "checkpoint state differs"
del mine
if comm.rank == 0:
    with h5py.File(out, "r") as f:
        ds = f["solution/state"]
        assert ds.shape == (n * comm.size,)
        for r in range(comm.size):
            for i in range(0, n, BLOCK):
                stop = min(i + BLOCK, n)
                assert np.array_equal(ds[r * n + i:r * n + stop], expected(i, stop, r)), (r, i)
    print(f"large-state-ok {comm.size} ranks x {n * 8 / 2**30:.2f} GiB: checkpoint "
          f"{os.path.getsize(ck) / 2**30:.2f} GiB written in {t_save:.0f} s, read back in {t_load:.0f} s; "
          f"result {os.path.getsize(out) / 2**30:.2f} GiB written in {t_result:.0f} s")
