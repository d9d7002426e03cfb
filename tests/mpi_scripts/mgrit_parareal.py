"""Two-level MGRIT with F-relaxation beside Parareal (G = Phi_1, F = Phi_0 over the m fine
intervals) on this many ranks: iterates after every cycle k = 1..N/m (gathered on rank 0),
residual norms and the error vs the serial fine solution; rank 0 writes JSON to argv[1]."""
import json
import sys

import numpy as np
from mpi4py import MPI

from paraflow_hpc.algorithms.mgrit import mgrit
from paraflow_hpc.algorithms.parareal import StoppingRule, parareal, serial_fine
from paraflow_hpc.comm import block_partition
from paraflow_hpc.problems.ode import ODE_PROBLEMS
from paraflow_hpc.propagators import make_propagator

comm = MPI.COMM_WORLD
report = {}
for name, m, n_coarse, tf in (("dahlquist", 4, 6, 5.0), ("brusselator", 4, 6, 6.0)):
    problem = ODE_PROBLEMS[name]()
    times = np.linspace(problem.t0, tf, m * n_coarse + 1)
    phi0, phi1 = make_propagator("rk4", problem.f, 1), make_propagator("rk4", problem.f, 2)
    y0 = problem.y0()
    index = {t: j for j, t in enumerate(times)}

    def fine(y, ta, tb):  # F = Phi_0 over the fine intervals of [ta, tb]
        for j in range(index[ta] + 1, index[tb] + 1):
            y = phi0(y, times[j - 1], times[j])
        return y

    out = {"mgrit": [], "parareal": [], "mgrit_residuals": [], "parareal_residuals": []}
    for k in range(1, n_coarse + 1):
        res = mgrit(comm, [phi0, phi1], y0, times, [m], stopping=StoppingRule(0.0), max_iter=k)
        c_points = [(int(p), v) for p, v in zip(res.points, res.values) if p % m == 0 and p > 0]
        gathered = comm.gather(c_points)
        par = parareal(comm, phi1, fine, y0, times[::m], k_max=k, stopping=StoppingRule(0.0))
        a, _ = block_partition(n_coarse, comm.size, comm.rank)
        rows = comm.gather([(a + 1 + i, v) for i, v in enumerate(par.boundaries)])
        if comm.rank == 0:
            out["mgrit"].append(np.array([v for _, v in sorted(sum(gathered, []), key=lambda x: x[0])]).tolist())
            out["parareal"].append(np.array([v for _, v in sorted(sum(rows, []), key=lambda x: x[0])]).tolist())
        out["mgrit_residuals"] = res.residuals
        out["parareal_residuals"] = par.residuals
    chain = serial_fine(comm, phi0, y0, times)
    ref = comm.gather(chain[1:])
    final = comm.gather(res.values)
    if comm.rank == 0:
        whole = np.concatenate([final[0][1:]] + final[1:])
        out["error_at_k_equal_n"] = float(np.max(np.abs(whole - np.concatenate(ref))))
        out["scale"] = float(np.max(np.abs(np.concatenate(ref))))
        for key in ("mgrit", "parareal"):
            out[key] = np.array(out[key]).view(float).tolist() if np.iscomplexobj(out[key]) else out[key]
    report[name] = out
if comm.rank == 0:
    with open(sys.argv[1], "w") as fh:
        json.dump(report, fh, default=lambda z: [z.real, z.imag])
