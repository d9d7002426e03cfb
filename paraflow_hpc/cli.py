"""Command-line interface: ``paraflow-hpc info | run METHOD | bench NAME | report FILES``.

This is the only place that picks ``MPI.COMM_WORLD``; everything below takes a communicator.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .stop import StopRequest

EXIT_BAD_INPUT = 2


def _info(check: bool) -> int:
    import platform

    import h5py
    import numpy as np
    import scipy
    from mpi4py import MPI

    rows = [("python", platform.python_version()), ("numpy", np.__version__), ("scipy", scipy.__version__)]
    try:
        import torch

        rows.append(("torch", f"{torch.__version__} (CUDA devices: {torch.cuda.device_count()})"))
    except ImportError as err:
        rows.append(("torch", f"missing ({err})"))
    import mpi4py

    from .comm import mpi_library_version

    rows += [("mpi4py", mpi4py.__version__), ("MPI library", mpi_library_version()),
             ("MPI standard", "%d.%d" % MPI.Get_version())]
    try:
        import petsc4py
        from petsc4py import PETSc

        rows.append(("PETSc", "%d.%d.%d (petsc4py %s)" % (*PETSc.Sys.getVersion(), petsc4py.__version__)))
    except ImportError as err:
        rows.append(("PETSc", f"missing ({err})"))
    parallel = bool(h5py.get_config().mpi)
    rows += [("h5py", h5py.__version__), ("HDF5", h5py.version.hdf5_version),
             ("parallel HDF5", "yes (mpio driver)" if parallel else "no (serial h5py)")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    missing = [k for k, v in rows if v.startswith("missing")]
    if check and (missing or not parallel):
        print(f"stack incomplete: {', '.join(missing) or 'parallel HDF5'}; run jobs/setup.sh", file=sys.stderr)
        return 1
    return 0


def _load(registry: dict, name: str, what: str):
    if name not in registry:
        raise SystemExit(f"error: unknown {what} {name!r}; choose one of: {', '.join(sorted(registry))}")
    return importlib.import_module(registry[name])


def _run(kind: str, name: str, config_file: str | None, rest: list[str]) -> int:
    from mpi4py import MPI

    from .comm import EXIT_NON_FINITE, NonFiniteError, abort_on_uncaught_exception, check_launch, collective
    from .config import ConfigError, build_config, describe, parse_overrides
    from .io.checkpoint import CheckpointError
    from .io.results import check_writable

    comm = MPI.COMM_WORLD
    abort_on_uncaught_exception(comm)
    if kind == "run":
        from .runners import RUNNERS as registry
    else:
        from .bench import BENCHES as registry
    module = _load(registry, name, "method" if kind == "run" else "benchmark")
    if "-h" in rest or "--help" in rest:
        if comm.rank == 0:
            print(f"paraflow-hpc {kind} {name} [--config FILE.toml] [--key value ...]\n\noptions:")
            print(describe(module.Config))
        return 0
    try:
        check_launch(comm)
        cfg = build_config(module.Config, config_file, parse_overrides(rest), comm.size)
        error = check_writable(comm, cfg.output)
        if error:
            raise ConfigError(error)
    except (ConfigError, RuntimeError) as err:
        # Every rank validated the same input, so every rank stops here with this message.
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    try:
        # Anything a rank raises alone (a user callable's first evaluation, a set-up step) ends every
        # rank with that rank's traceback; agreed errors pass through and are reported once below.
        with collective(comm, f"paraflow-hpc {kind} {name}"):
            return module.main(cfg, comm)
    except (NonFiniteError, CheckpointError) as err:
        if comm.rank == 0:
            kept = [p for p in (cfg.checkpoint, cfg.checkpoint + ".prev") if os.path.exists(p)]
            note = f"; the last checkpoint {kept[0]} is kept" if kept and isinstance(err, NonFiniteError) else ""
            print(f"error: {err}{note}", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE if isinstance(err, NonFiniteError) else EXIT_BAD_INPUT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="paraflow-hpc", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    info = sub.add_parser("info", help="versions of the stack and whether parallel HDF5 works")
    info.add_argument("--check", action="store_true", help="exit non-zero if something is missing")
    for kind in ("run", "bench"):
        p = sub.add_parser(kind, help=f"{kind} a method under MPI (mpirun -n P paraflow-hpc {kind} NAME ...)",
                           add_help=False)
        p.add_argument("name")
        p.add_argument("--config", default=None, help="TOML file; --key value options override it")
    report = sub.add_parser("report", help="tables and plots from result files")
    report.add_argument("files", nargs="+")
    report.add_argument("--out", default="report", help="directory for the table and PNG plots")
    args, rest = parser.parse_known_args(argv)
    if args.command == "info":
        return _info(args.check)
    if args.command == "report":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        from .report import main as report_main

        return report_main(args.files, args.out)
    # Before numpy, torch and MPI are imported (a second or more): a SIGUSR1/SIGTERM from now on sets
    # the stop flag (the run checkpoints and exits 3 at its first safe point) instead of killing it.
    StopRequest.install()
    return _run(args.command, args.name, args.config, rest)


if __name__ == "__main__":
    sys.exit(main())
