"""Parareal's schedule and stopping rules on this many ranks, printed as JSON by rank 0.

- ``calls``: y' = 0, G exact, N = 8: fine calls per rank, iterations, for both rules, both schedules.
- ``rules``: Dahlquist (backward / forward Euler as G and F, user callables) and the
  Brusselator (RK4): iterations and error per iteration under the residual and the update rule.
"""
import json
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.algorithms.parareal import StoppingRule, parareal, serial_fine
from paraflow_hpc.problems.ode import ODE_PROBLEMS
from paraflow_hpc.propagators import make_propagator

comm = MPI.COMM_WORLD
report = {}


def euler(lam, steps, implicit):
    def phi(y, t0, t1):
        h = (t1 - t0) / steps
        for _ in range(steps):
            y = y / (1 - h * lam) if implicit else y + h * lam * y
        return y
    return phi


# finding 1: no fine solve after the decision to stop, none on exact subintervals
zero = lambda y, t0, t1: y.copy()  # noqa: E731 -- the exact flow of y' = 0
for rule in ("residual", "update"):
    for pipelined in (False, True):
        res = parareal(comm, zero, zero, np.ones(1), np.linspace(0, 1, 9), k_max=8,
                       stopping=StoppingRule(1e-12, rule), pipelined=pipelined)
        report[f"calls/{rule}" + ("/pipelined" if pipelined else "")] = {
            "fine_calls": comm.allgather(res.fine_calls), "iterations": res.iterations, "converged": res.converged}

# finding 2: the residual rule stops at the first accurate iterate, one before the update rule
lam = -1.0 + 2.0j
cases = {
    "dahlquist-be": (euler(lam, 1, True), euler(lam, 20, True), np.array([1.0 + 0j]), np.linspace(0, 5, 33)),
    "dahlquist-fe": (euler(lam, 1, False), euler(lam, 20, False), np.array([1.0 + 0j]), np.linspace(0, 5, 65)),
}
bru = ODE_PROBLEMS["brusselator"]()
cases["brusselator"] = (make_propagator("rk4", bru.f, 20), make_propagator("rk4", bru.f, 100), bru.y0(),
                        np.linspace(bru.t0, bru.tf, 17))
for name, (coarse, fine, y0, times) in cases.items():
    reference = serial_fine(comm, fine, y0, times)
    for rule in ("residual", "update"):
        for pipelined in (False, True):
            res = parareal(comm, coarse, fine, y0, times, k_max=len(times) - 1, reference=reference,
                           stopping=StoppingRule(1e-8, rule, "max"), pipelined=pipelined)
            whole = comm.allgather(np.asarray(res.boundaries).view(float).tolist())
            report[f"{name}/{rule}" + ("/pipelined" if pipelined else "")] = {
                "iterations": res.iterations, "errors": res.errors, "residuals": res.residuals, "jumps": res.jumps,
                "converged": res.converged, "boundaries": [row for part in whole for row in part]}
if comm.rank == 0:
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh)
