"""PASO against torch.optim under mpirun: w_T, K and the trajectory difference per optimizer.

Usage: paso_check.py OUT.npz — rank 0 writes, for every case, PASO's w_T, K, the
sequential w_T, and the mean squared trajectory difference (accumulated by the ranks
that accept each step, then reduced).
"""
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.algorithms.paso import OptimizerSpec, paso, sequential_reference
from paraflow_hpc.problems.models import make_problem

comm = MPI.COMM_WORLD
T = 24
# (problem, optimizer, lr, weight decay, window p): p = 6 is a multiple of 1, 2 and 3 ranks,
# p = 5 is not (uneven work); near the end the window shrinks below 3 steps, so some ranks
# own no step and only take part in the collectives.
CASES = [
    ("mlp", "sgd", 0.2, 0.01, 6), ("mlp", "momentum", 0.05, 0.01, 6), ("mlp", "adam", 0.01, 0.01, 6),
    ("mlp", "adamw", 0.01, 0.05, 6), ("cnn", "adam", 0.01, 0.0, 6), ("lm", "adamw", 0.003, 0.01, 6),
    ("logreg", "momentum", 0.1, 0.0, 5),
]
out = {}
for problem_name, opt_name, lr, wd, window in CASES:
    problem = make_problem(problem_name, 3, 8)
    w0 = problem.initial_weights()
    opt = OptimizerSpec(opt_name, lr, T, schedule="cosine", weight_decay=wd)
    trajectory = [w0]
    w_seq, _ = sequential_reference(problem, opt, w0, T, on_step=lambda t, w: trajectory.append(w))
    for label, tol, adapt in (("exact", 0.0, "fixed"), ("adaptive", 1e-10, "median")):
        sq = [0.0, 0]

        def compare(step, w):
            sq[0] += float(np.sum((w - trajectory[step]) ** 2))
            sq[1] += 1

        result = paso(comm, problem, opt, w0, total_steps=T, window=window, tol=tol, adapt=adapt,
                      ema_decay=0.99, on_converged=compare)
        total = comm.allreduce(np.array(sq), op=MPI.SUM)
        key = f"{problem_name}_{opt_name}_{label}"
        out[key + "_w"] = result.w_final
        out[key + "_K"] = result.iterations
        out[key + "_seq"] = w_seq
        out[key + "_msd"] = total[0] / total[1]
        out[key + "_accepted"] = total[1]
        out[key + "_gradients"] = comm.allreduce(result.state.gradients)
if comm.rank == 0:
    np.savez(sys.argv[1], **out)
