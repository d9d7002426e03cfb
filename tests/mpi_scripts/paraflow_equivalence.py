"""ParaFlow on this many ranks: init (b) equals ParaFlowS-argmin, init (a) and (b) write the same
iterates on any rank count (compared against a file from another rank count), costs add up."""
import json
import sys

import torch
from mpi4py import MPI

from paraflow_hpc.algorithms.paraflow import paraflow, paraflows
from paraflow_hpc.problems.networks import make_problem
from paraflow_hpc.steppers import BatchSchedule, Coarse, Fine

comm = MPI.COMM_WORLD
out = sys.argv[1]
problem = make_problem("approximation")
W0 = problem.initial_weights(4)
fine = Fine(problem, BatchSchedule(problem.n_samples, 7, seed=5), steps=5, eta=0.02)
coarse = Coarse(problem, 5 * 0.02)
N, K = problem.n_samples, 3
report = {}
for n_g in (2, 4):
    for keep_start in (False, True):
        serial = paraflows(problem, fine, coarse, W0, n_g=n_g, selection="argmin", keep_start=keep_start, k_max=K)
        for init in ("equal", "coarse"):
            before = problem.gradient_evaluations
            par = paraflow(comm, problem, fine, coarse, W0, n_intervals=n_g, init=init, keep_start=keep_start,
                           k_max=K)
            mine = problem.gradient_evaluations - before
            total = comm.allreduce(mine, op=MPI.SUM)
            all_W = comm.allgather(par.W.numpy().tobytes())
            key = f"{n_g}-{int(keep_start)}-{init}"
            expected_cost = K * n_g * fine.cost() + N * (1 + K * n_g + (K * (n_g - 1) if init == "coarse" else 0))
            assert par.budget_used == total == expected_cost, (key, par.budget_used, total, expected_cost)
            assert len(set(all_W)) == 1, f"{key}: ranks disagree on W"
            if init == "equal":
                assert torch.equal(par.W, serial.W), f"{key}: ParaFlow(init b) != ParaFlowS-argmin"
                assert par.history["loss"] == serial.history["loss"], key
                assert par.history["selected"] == serial.history["selected"], key
            report[key] = {"W": par.W.tolist(), "loss": par.history["loss"], "selected": par.history["selected"]}
if comm.rank == 0:
    with open(out, "w") as fh:
        json.dump(report, fh)
