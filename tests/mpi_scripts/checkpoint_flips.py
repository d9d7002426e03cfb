"""Single-byte flips of a checkpoint: each is refused and the valid ``.prev`` is used, or,
without a ``.prev``, refused on every rank with a CheckpointError; never a crash or a hang.

Arguments: directory, number of flipped positions (a seeded sample over the whole file,
always including the first bytes and the trailer)."""
import contextlib
import io
import os
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.io.checkpoint import TRAILER, CheckpointError, load_checkpoint, save_checkpoint

comm = MPI.COMM_WORLD
directory, count = sys.argv[1], int(sys.argv[2])
ck = os.path.join(directory, "ck.h5")
state = {v: np.arange(12, dtype=float).reshape(4, 3) * (comm.rank + 1) * v for v in (1, 2)}
for version in (1, 2):
    save_checkpoint(comm, ck, "parareal", {"problem": "lorenz", "iteration": version},
                    {"boundaries": state[version]}, {"jumps": np.full(version, 0.5)})
pristine = open(ck, "rb").read() if comm.rank == 0 else None
positions = None
if comm.rank == 0:
    rng = np.random.default_rng(12)
    size = len(pristine)
    sample = rng.choice(size, size=min(count, size), replace=False)
    positions = sorted(set(sample.tolist()) | set(range(8)) | set(range(size - TRAILER.size, size, 7)))
positions = comm.bcast(positions, root=0)
flips = comm.bcast(np.random.default_rng(5).integers(1, 256, size=len(positions)).tolist(), root=0)


def flipped(position, mask):
    data = bytearray(pristine)
    data[position] ^= mask
    with open(ck, "wb") as fh:
        fh.write(data)


fallbacks = refusals = 0
for i, (position, mask) in enumerate(zip(positions, flips)):
    without_prev = i % 10 == 0   # every tenth: no previous checkpoint to fall back on
    if comm.rank == 0:
        flipped(position, mask)
        if without_prev:
            os.replace(ck + ".prev", ck + ".prev.kept")
    comm.Barrier()
    try:
        with contextlib.redirect_stdout(io.StringIO()):   # the fallback warning, once per flip
            meta, mine, root = load_checkpoint(comm, ck, "parareal", {"problem": "lorenz"})
        assert not without_prev, f"flip of byte {position} (mask {mask}) was accepted"
        assert meta["iteration"] == 1 and np.array_equal(mine["boundaries"], state[1]), position
        assert np.array_equal(root["jumps"], [0.5])
        fallbacks += 1
    except CheckpointError as err:
        assert without_prev, f"flip of byte {position}: {err}"
        assert "fails its checksum" in str(err), err
        refusals += 1
    if comm.rank == 0 and without_prev:
        os.replace(ck + ".prev.kept", ck + ".prev")
    comm.Barrier()
if comm.rank == 0:
    print(f"flips-ok {len(positions)} flipped files: {fallbacks} fell back to .prev, {refusals} refused")
