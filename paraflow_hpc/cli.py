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
    """The module of ``name``, or None if there is no such method / benchmark."""
    if name not in registry:
        return None
    return importlib.import_module(registry[name])


def _agree(comm, error: str | None) -> str | None:
    """The first error of any rank (lowest rank first), on every rank; None if there is none."""
    errors = comm.allgather(error)
    return next((e for e in errors if e), None)


def _fail(comm, message: str) -> int:
    """One ``error:`` line (rank 0 only: ranks never interleave it) and exit code 2 on every rank."""
    if comm.rank == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_INPUT


def _run(kind: str, name: str, config_file: str | None, rest: list[str]) -> int:
    from mpi4py import MPI

    from .comm import EXIT_NON_FINITE, NonFiniteError, abort_on_uncaught_exception, check_launch, collective
    from .config import ConfigError, build_config, describe, parse_overrides, read_config_file
    from .io.checkpoint import CheckpointError, verify_checkpoint
    from .io.results import ResultError
    from .io.paths import agree_paths
    from .runners.common import checkpoint_meta

    comm = MPI.COMM_WORLD
    abort_on_uncaught_exception(comm)
    if kind == "run":
        from .runners import RUNNERS as registry
    else:
        from .bench import BENCHES as registry
    what = "method" if kind == "run" else "benchmark"
    module = _load(registry, name, what)
    if module is None:
        return _fail(comm, f"unknown {what} {name!r}; choose one of: {', '.join(sorted(registry))}")
    if "-h" in rest or "--help" in rest:
        if comm.rank == 0:
            print(f"paraflow-hpc {kind} {name} [--config FILE.toml] [--key value ...]\n\noptions:")
            print(describe(module.Config))
        return 0
    # Every check below ends every rank with one error line and exit 2, before any work: rank 0
    # reads the config file (ranks may have different working directories), every rank
    # validates the same text, and the first error of any rank is agreed on.
    error, cfg = None, None
    try:
        check_launch(comm)
    except RuntimeError as err:
        error = str(err)
    text, read_error = None, None
    if comm.rank == 0 and config_file:
        try:
            text = read_config_file(config_file)
        except ConfigError as err:
            read_error = str(err)
    text, read_error = comm.bcast((text, read_error), root=0)
    error = error or read_error
    if error is None:
        try:
            cfg = build_config(module.Config, config_file, parse_overrides(rest), comm.size, config_bytes=text)
        except ConfigError as err:
            error = str(err)
    error = _agree(comm, error)
    if error:
        return _fail(comm, error)
    lock = None
    try:
        lock = agree_paths(comm, cfg)
        if cfg.restart:   # refuse a checkpoint that cannot be resumed before any expensive work
            identity = cfg.identity() if hasattr(cfg, "identity") else {}
            verify_checkpoint(comm, cfg.restart, cfg.method, identity, getattr(cfg, "checkpoint_spec", None),
                              meta_types=checkpoint_meta(cfg), nranks=getattr(cfg, "checkpoint_ranks", None),
                              fields=cfg.checkpoint_fields() if hasattr(cfg, "checkpoint_fields") else None)
    except (ConfigError, CheckpointError) as err:
        if lock is not None:
            lock.release()
        return _fail(comm, str(err))
    try:
        # Anything a rank raises alone (a user callable's first evaluation, a set-up step) ends every
        # rank with that rank's traceback; agreed errors pass through and are reported once below.
        with collective(comm, f"paraflow-hpc {kind} {name}"):
            return module.main(cfg, comm)
    except (CheckpointError, ResultError, ConfigError) as err:   # raised on every rank alike (agreed)
        return _fail(comm, str(err))
    except NonFiniteError as err:
        if comm.rank == 0:
            kept = [p for p in (cfg.checkpoint, cfg.checkpoint + ".prev") if os.path.exists(p)]
            note = f"; the last checkpoint {kept[0]} is kept" if kept else ""
            print(f"error: {err}{note}", file=sys.stderr, flush=True)
        return EXIT_NON_FINITE
    finally:
        if lock is not None:
            lock.release()


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
