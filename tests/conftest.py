"""Test helpers: run code under a real ``mpirun`` with a timeout, so a deadlock fails.

MPI tests start ``mpirun -n P python -m mpi4py ...``: ``-m mpi4py`` makes an uncaught
exception on one rank abort all ranks instead of leaving the others in a collective.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"


def mpi_env() -> dict[str, str]:
    env = dict(os.environ)
    if os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    env.setdefault("OMPI_MCA_btl", "self,vader")
    env.setdefault("OMPI_MCA_pml", "ob1")
    env.setdefault("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
    env.setdefault("H5PY_ALWAYS_USE_MPI", "1")
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_mpi(nranks: int, args: list[str], timeout: float = 180, cwd=None, check: bool = True,
            env: dict | None = None, launcher=("-m", "mpi4py")) -> subprocess.CompletedProcess:
    """``mpirun -n nranks python -m mpi4py ARGS``; fails the test on a timeout (deadlock)."""
    if shutil.which("mpirun") is None:
        pytest.fail("mpirun not found: run jobs/setup.sh first")
    cmd = ["mpirun", "-n", str(nranks), sys.executable, *launcher, *map(str, args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**mpi_env(), **(env or {})}, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timeout after {timeout}s (deadlock?) running {' '.join(cmd)}\n{out[-3000:]}\n{err[-3000:]}")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        pytest.fail(f"exit {proc.returncode}: {' '.join(cmd)}\nstdout:\n{out[-4000:]}\nstderr:\n{err[-4000:]}")
    return result


def run_cli(nranks: int, cli_args: list[str], **kwargs) -> subprocess.CompletedProcess:
    """``mpirun -n nranks paraflow-hpc CLI_ARGS``, as a user runs it: the CLI aborts all ranks on an
    uncaught exception itself, and a clean non-zero exit (bad input) is not turned into MPI_Abort."""
    return run_mpi(nranks, ["-m", "paraflow_hpc", *cli_args], launcher=[], **kwargs)


def run_script(nranks: int, script: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """Run ``tests/mpi_scripts/<script>`` under mpirun."""
    return run_mpi(nranks, [str(SCRIPTS / script), *args], **kwargs)


def catches_sigusr1(pid: int) -> bool:
    """The rank ``pid`` runs paraflow_hpc and has installed its SIGUSR1 handler. Between fork and
    exec a child of mpirun is a copy of mpirun (its command line too), which catches SIGUSR1 to
    forward it to every rank: a signal sent then reached ranks without a handler yet (exit 138),
    hence the check that the process is the exec'd Python, not mpirun."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            argv = fh.read().split(b"\0")
        if os.path.basename(argv[0]) == b"mpirun" or b"paraflow_hpc" not in argv:
            return False
        with open(f"/proc/{pid}/status") as fh:
            caught = int(next(line for line in fh if line.startswith("SigCgt:")).split()[1], 16)
    except (FileNotFoundError, ProcessLookupError, StopIteration):   # not started or already gone
        return False
    return bool(caught >> (signal.SIGUSR1 - 1) & 1)
