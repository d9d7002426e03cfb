"""Run ``paraflow-hpc ARGS`` with an exception injected on ONE rank only, at one collective section.

Usage: fail_on_one_rank.py WHERE RANK -- CLI ARGS. WHERE is one of
  checkpoint_write   the second checkpoint write raises (on rank 0, which writes; the others wait)
  checkpoint_read    reading the restart checkpoint raises (rank 0 reads; the others wait): the
                     CLI's check up front (verify_checkpoint) passes, the load's open raises
  fields_write       on RANK, writing its boxes of the second checkpoint of global fields raises
                     (space-time: the other ranks are inside collective parallel-HDF5 writes)
  fields_read        on RANK, reading its boxes of the restart checkpoint's fields raises
  result_write       writing a dataset of the parallel HDF5 result raises OSError on RANK
  first_evaluation   on RANK, the method's first call of its user-level callable raises: the
                     right-hand side (Parareal), the loss gradient (ParaFlow), the window
                     gradients (PASO), the forward pass of a block of layers (layer-parallel).
                     The calls of the problem's probe (problems.contract.probe, run while the
                     config is validated) do not count: the method's own first call fails
  probe              on RANK, the same callables raise inside the probe (config validation):
                     an agreed ConfigError, one error line from rank 0, exit 2
  pde_reaction       on RANK, the PDE problem's reaction raises from its 40th call on (inside a TS
                     solve of the space-time run, while the other space ranks wait in TSSolve)
  fine_nan_at        on every rank of time group 1 (world ranks S .. 2S - 1), the RANK-th call of the fine
                     TS propagator returns NaN (a failed speculative F solve, space-time)
  point_nan_after    on RANK only, from the 6th coarse TS call on, one point of that rank's part of the
                     output is NaN (a NaN that only a non-first space rank holds: VecNorm's MPI_MAX may
                     drop it)
  disk_full          on RANK, the file system reports 1000 bytes free (shutil.disk_usage)
  rhs_nan_after      on EVERY rank, the right-hand side returns NaN after RANK calls (a diverging F
                     in a later iteration, after checkpoints were written)
The exit code is the CLI's (or MPI_Abort's); the test asserts no hang and one message.
"""
import sys

from mpi4py import MPI

import h5py

from paraflow_hpc import cli
from paraflow_hpc.io import checkpoint
from paraflow_hpc.problems import contract, models, networks, ode, pde, resnet

where, rank = sys.argv[1], int(sys.argv[2])
args = sys.argv[sys.argv.index("--") + 1:]
me = MPI.COMM_WORLD.rank
calls = {"n": 0}
probing = {"on": False}


def failing(original, after: int, exc, count_probe: bool = True):
    def wrapper(*a, **k):
        if probing["on"] and not count_probe:
            return original(*a, **k)
        calls["n"] += 1
        if calls["n"] > after:
            raise exc
        return original(*a, **k)
    return wrapper


if where == "checkpoint_write" and me == rank:
    checkpoint._seal = failing(checkpoint._seal, 1, RuntimeError("injected: checkpoint write fails"))
elif where == "checkpoint_read" and me == rank:
    checkpoint._open_verified = failing(checkpoint._open_verified, 1, ValueError("injected: checkpoint read fails"))
elif where == "fields_write" and me == rank:
    checkpoint.write_parallel = failing(checkpoint.write_parallel, 1, OSError("injected: field write fails"))
elif where == "fields_read" and me == rank:
    checkpoint.read_parallel = failing(checkpoint.read_parallel, 0, OSError("injected: field read fails"))
elif where == "result_write" and me == rank:
    h5py.Dataset.__setitem__ = failing(h5py.Dataset.__setitem__, 0, OSError("injected: dataset write fails"))
elif where in ("first_evaluation", "probe") and me == rank:
    error = TypeError("injected: a user callable fails")
    in_probe = where == "probe"
    for cls in ode.ODE_PROBLEMS.values():
        cls.f = failing(cls.f, 0, error, in_probe)
    networks.NetworkProblem.value_and_grad = failing(networks.NetworkProblem.value_and_grad, 0, error, in_probe)
    models.TrainingProblem.window_gradients = failing(models.TrainingProblem.window_gradients, 0, error, in_probe)
    resnet.Subnetwork.forward = failing(resnet.Subnetwork.forward, 0, error, in_probe)
    probe = contract.probe

    def probe_uncounted(*a, **k):
        probing["on"] = True
        try:
            return probe(*a, **k)
        finally:
            probing["on"] = False
    contract.probe = probe_uncounted
elif where == "pde_reaction" and me == rank:
    for cls in pde.PDE_PROBLEMS.values():
        cls.reaction = failing(cls.reaction, 40, RuntimeError("injected: the reaction fails"))
elif where == "fine_nan_at":
    from paraflow_hpc import propagators_petsc
    space_ranks = int(args[args.index("--space-ranks") + 1])
    if me // space_ranks == 1:
        solve = propagators_petsc.TSPropagator.__call__

        def nan_once(self, u_in, t0, t1, out):
            solve(self, u_in, t0, t1, out)
            if self.prefix == "fine_":
                calls["n"] += 1
                if calls["n"] == rank:
                    out.set(float("nan"))
        propagators_petsc.TSPropagator.__call__ = nan_once
elif where == "point_nan_after" and me == rank:
    from paraflow_hpc import propagators_petsc
    solve = propagators_petsc.TSPropagator.__call__

    def nan_point(self, u_in, t0, t1, out):
        solve(self, u_in, t0, t1, out)
        if self.prefix == "coarse_":
            calls["n"] += 1
            if calls["n"] > 5:
                with out as arr:
                    arr[-1] = float("nan")
    propagators_petsc.TSPropagator.__call__ = nan_point
elif where == "disk_full" and me == rank:
    import collections
    import shutil
    usage = collections.namedtuple("usage", "total used free")
    shutil.disk_usage = lambda path: usage(10**12, 10**12 - 1000, 1000)
elif where == "rhs_nan_after":
    def nan_later(original):
        def f(self, t, y):
            calls["n"] += 1
            return original(self, t, y) * (float("nan") if calls["n"] > rank else 1.0)
        return f
    for cls in ode.ODE_PROBLEMS.values():
        cls.f = nan_later(cls.f)
sys.exit(cli.main(args))
