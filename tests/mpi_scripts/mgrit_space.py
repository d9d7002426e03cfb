"""MGRIT with spatial coarsening on this many ranks: the heat equation on 31 points, backward
Euler on every level, levels >= 1 on 15 points (injection / linear interpolation through the
``transfers`` hook). Rank 0 writes JSON to argv[1]: per case the cycles, residuals, the whole
solution, and its distance to the serial fine sweep."""
import json
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.algorithms.mgrit import mgrit
from paraflow_hpc.algorithms.parareal import StoppingRule, serial_fine
from paraflow_hpc.bench.mgrit import BackwardEuler
from paraflow_hpc.problems.ode import Heat1D

comm = MPI.COMM_WORLD
fine_problem, coarse_problem = Heat1D(n_points=31), Heat1D(n_points=15)
n, m, tf = 64, 4, 0.2
dt = tf / n
times = np.linspace(0.0, tf, n + 1)


def restrict(u):  # injection: coarse point i is fine point 2 i + 1
    return u[1::2].copy()


def interpolate(c):  # linear, zero boundary values
    u = np.zeros(2 * len(c) + 1)
    u[1::2] = c
    padded = np.concatenate([[0.0], c, [0.0]])
    u[0::2] = 0.5 * (padded[:-1] + padded[1:])
    return u


report = {}
for relaxation, levels, max_iter in (("F", 2, 20), ("FCF", 2, 50), ("FCF", 3, 50)):
    phis = [BackwardEuler(fine_problem.laplacian, dt)] + \
           [BackwardEuler(coarse_problem.laplacian, dt * m ** l) for l in range(1, levels)]
    transfers = [(restrict, interpolate)] + [(lambda u: u, lambda u: u)] * (levels - 2)
    res = mgrit(comm, phis, fine_problem.y0(), times, [m] * (levels - 1), stopping=StoppingRule(1e-10),
                max_iter=max_iter, relaxation=relaxation, transfers=transfers)
    chain = serial_fine(comm, phis[0], fine_problem.y0(), times)
    reference = chain if comm.rank == 0 else chain[1:]
    parts = comm.gather(res.values)
    error = max(comm.allgather(float(np.max(np.abs(res.values - reference)))))
    if comm.rank == 0:
        report[f"{relaxation}-L{levels}"] = {"iterations": res.iterations, "converged": res.converged,
                                            "residuals": res.residuals, "error": error,
                                            "u": np.concatenate(parts).tolist()}
if comm.rank == 0:
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh)
