"""MGRIT beside PyMGRIT on this many ranks: every iterate (gathered on rank 0) and the residual
history for the cases given as JSON in argv[2]; rank 0 writes the differences to argv[1] as JSON.

Both codes get the same propagators (this package's RK4 / Euler steps) through PyMGRIT's
``Application`` interface, identity grid transfers and the 2-norm stopping rule (PyMGRIT's default).
"""
import json
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.algorithms.mgrit import mgrit
from paraflow_hpc.algorithms.parareal import StoppingRule
from paraflow_hpc.bench.mgrit import pymgrit_classes
from paraflow_hpc.problems.ode import ODE_PROBLEMS
from paraflow_hpc.propagators import make_propagator

comm = MPI.COMM_WORLD
Mgrit, Wrapped = pymgrit_classes()   # the bench's PyMGRIT application: one definition


def gather(points, values):
    """Rank 0: the whole trajectory in time order from every rank's (points, values)."""
    parts = comm.gather((np.asarray(points), np.asarray(values)))
    if comm.rank:
        return None
    order = {int(p): v for pts, vals in parts for p, v in zip(pts, vals)}
    return np.array([order[p] for p in sorted(order)])


def run_case(case):
    problem = ODE_PROBLEMS[case["problem"]]()
    tf = case.get("tf", problem.tf)
    times = np.linspace(problem.t0, tf, case["intervals"] + 1)
    factors = [case["m"]] * (case["levels"] - 1)
    steps = case["steps"] if isinstance(case["steps"], list) else [case["steps"]] * case["levels"]
    phis = [make_propagator(case.get("propagator", "rk4"), problem.f, s) for s in steps]
    y0 = problem.y0()
    rule = StoppingRule(case["tol"], "residual", "l2")

    mine = []

    def after(state):
        lev0 = state.u
        mine.append(lev0[1:].copy())
        return False

    res = mgrit(comm, phis, y0, times, factors, stopping=rule, max_iter=case["max_iter"],
                relaxation=case["relax"], cycle=case["cycle"], after_iteration=after)
    iterates = [gather(res.points, it) for it in mine] + [gather(res.points, res.values)]

    theirs = []

    def output(solver):
        idx = solver.index_local[0]
        pts = np.searchsorted(times, solver.t[0][idx])
        theirs.append(gather(pts, [solver.u[0][i].get_values() for i in idx]))

    steps = np.cumprod([1] + factors)
    apps = [Wrapped(phis[l], y0, times[::steps[l]]) for l in range(case["levels"])]
    solver = Mgrit(apps, tol=case["tol"], max_iter=case["max_iter"], cf_iter=1 if case["relax"] == "FCF" else 0,
                   cycle_type=case["cycle"], comm_time=comm, logging_lvl=30, output_fcn=output, output_lvl=2,
                   nested_iteration=True)
    solver.solve()  # its returned history drops residuals that are exactly 0: read conv itself
    out = {"iterations": res.iterations, "pymgrit_iterations": solver.solve_iter,
           "residuals": res.residuals, "pymgrit_residuals": solver.conv[1:solver.solve_iter + 1].tolist()}
    if comm.rank == 0:
        theirs = theirs[1:]  # the first call is after the set-up (nested iteration)
        scale = max(np.max(np.abs(t)) for t in theirs)
        out["max_diff"] = [float(np.max(np.abs(a - b))) / scale for a, b in zip(iterates, theirs)]
        out["compared"] = min(len(iterates), len(theirs))
    return out


cases = json.loads(sys.argv[2])
report = [run_case(case) for case in cases]
if comm.rank == 0:
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh)
