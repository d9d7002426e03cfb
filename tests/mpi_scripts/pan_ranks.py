"""pan_ivp on the communicator it is launched with; rank 0 writes the outcome as JSON.

usage: pan_ranks.py OUT.json PROBLEM N TOL
PROBLEM ``fail-on-rank-1`` / ``fail-later-on-rank-1``: the spiral with an f that raises an
ordinary exception on rank 1 only, at the first evaluation / after t = 1.
"""
import json
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.algorithms.pan_ivp import pan_ivp
from paraflow_hpc.problems.ivp import IVP_PROBLEMS, Spiral

out, name, n_coeffs, tol = sys.argv[1:5]
comm = MPI.COMM_WORLD


class FailsOnRank1(Spiral):
    def __init__(self, later: bool):
        super().__init__()
        self.later = later

    def f(self, t, Y):
        if comm.rank == 1 and not self.later:
            raise RuntimeError("injected on rank 1")
        if comm.rank == 1 and len(t) and float(t.max()) > 1.0:
            raise RuntimeError("injected later on rank 1")
        return super().f(t, Y)


if name.startswith("fail"):
    problem = FailsOnRank1(later=name == "fail-later-on-rank-1")
else:
    problem = IVP_PROBLEMS[name]()
result = pan_ivp(problem, (problem.t0, problem.tf), problem.y0, rtol=float(tol), atol=float(tol),
                 n_coeffs=int(n_coeffs), comm=comm)
per_rank_depth = comm.allgather(result.depth)
if comm.rank == 0:
    state = result.state
    with open(out, "w") as fh:
        json.dump({"ts": [float(t).hex() for t in state.ts], "history": {k: [float(v).hex() for v in vals]
                                                                         for k, vals in state.history.items()},
                   "counts": state.counts, "coefficients": [float(c).hex() for c in
                                                            np.array(state.coefficients).ravel()],
                   "per_rank_depth": per_rank_depth, "size": comm.size, "status": result.status}, fh)
