"""comm.space_time_split on every divisor of the world size, and result boxes written per rank."""
import os
import sys

import h5py
import numpy as np
from mpi4py import MPI

from paraflow_hpc.comm import space_time_split
from paraflow_hpc.io.results import write_result

world = MPI.COMM_WORLD.Split(0, MPI.COMM_WORLD.rank)  # the library works on any communicator
r, w = world.rank, world.size
for s in [d for d in range(1, w + 1) if w % d == 0]:
    comm_time, comm_space = space_time_split(world, s)
    assert (comm_time.size, comm_space.size) == (w // s, s)
    assert (comm_time.rank, comm_space.rank) == (r // s, r % s)  # rank r is (t, s) = (r // S, r % S)
    # time neighbours (t ± 1, s) are world ranks r ± S
    assert comm_time.allgather(r) == [t * s + r % s for t in range(w // s)]
    assert comm_space.allgather(r) == [(r // s) * s + j for j in range(s)]
    comm_time.Free()
    comm_space.Free()
if w > 2:
    try:
        space_time_split(world, w - 1)
        raise AssertionError("a space_ranks that does not divide the world size was accepted")
    except ValueError as err:
        assert f"does not divide the {w} MPI ranks" in str(err)

# boxes: rank r owns rows [r, r + 1) x all columns of a (w, 3) array, except the last rank,
# which owns an empty box (it must still join the collective write)
out = os.path.join(sys.argv[1], "boxes.h5")
rows = 1 if r < w - 1 else 0
box = np.full((rows, 3), float(r))
write_result(world, out, method="test", config={}, blocks={"u": ((max(w - 1, 1), 3), (r, 0), box)})
if r == 0:
    with h5py.File(out, "r") as f:
        expected = np.repeat(np.arange(max(w - 1, 1), dtype=float)[:, None], 3, axis=1)
        if w == 1:
            expected[:] = 0.0  # one rank: its box is empty, the dataset keeps its fill value
        assert np.array_equal(f["solution/u"][...], expected), f["solution/u"][...]
print(f"rank {r}: ok")
