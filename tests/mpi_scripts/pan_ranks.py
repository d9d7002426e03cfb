"""PAN on the communicator it is launched with; rank 0 writes the outcome as JSON.

usage: pan_ranks.py OUT.json PROBLEM N M SUBINTERVAL TOL
"""
import json
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.algorithms.pan import pan, run_totals, subinterval_bounds
from paraflow_hpc.problems.ivp import IVP_PROBLEMS

out, name, n_coeffs, n_points, length, tol = sys.argv[1:7]
comm = MPI.COMM_WORLD
problem = IVP_PROBLEMS[name]()
times = subinterval_bounds(problem.t0, problem.tf, float(length))
result = pan(comm, problem, problem.y0, times, n_coeffs=int(n_coeffs), n_points=int(n_points),
             ls_tol=float(tol), newton_tol=float(tol))
totals = run_totals(comm, result.counters)
per_rank_batches = comm.allgather((result.counters["batches_ls"], result.counters["batches_newton"]))
per_rank_newton_points = comm.allgather(result.counters["point_evaluations_newton"])
if comm.rank == 0:
    with open(out, "w") as fh:
        json.dump({"y_end": result.y_end.tolist(), "ls": result.state.ls_iterations,
                   "newton": result.state.newton_iterations,
                   "coefficients": np.array(result.state.coefficients).tolist(),
                   "totals": totals, "per_rank_batches": per_rank_batches,
                   "per_rank_newton_points": per_rank_newton_points, "size": comm.size}, fh)
