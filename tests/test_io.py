"""HDF5 results and checkpoints on 1, 2 and 3 ranks (parallel HDF5 where available)."""
import os
import subprocess
import sys

import pytest

from conftest import run_cli, run_script


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_result_and_checkpoint_roundtrip(tmp_path, nranks):
    result = run_script(nranks, "io_roundtrip.py", tmp_path, timeout=120)
    assert "io-ok" in result.stdout


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_blocks_of_a_large_state(tmp_path, nranks):
    """The path a state above 2 GiB takes (MPI counts are ints): blocks of 40 bytes, rows of 24."""
    result = run_script(nranks, "io_roundtrip.py", tmp_path, 40, timeout=120)
    assert "io-ok" in result.stdout


def test_parallel_hdf5_is_available():
    """What a user's plain `python` gets once paraflow_hpc is imported (no launcher variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("H5PY", "OMPI", "PMIX"))}
    out = subprocess.run([sys.executable, "-c", "import paraflow_hpc, h5py; print(h5py.get_config().mpi)"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert out.stdout.strip() == "True", "h5py is not built against parallel HDF5: run jobs/setup.sh"


def test_info_reports_the_stack():
    result = run_cli(1, ["info", "--check"], timeout=120)
    for name in ("numpy", "torch", "mpi4py", "MPI library", "PETSc", "HDF5", "parallel HDF5"):
        assert name in result.stdout
    assert "yes (mpio driver)" in result.stdout


@pytest.mark.mpi
def test_byte_flips_of_a_checkpoint_fall_back_or_are_refused(tmp_path):
    """HDF5 never parses a damaged checkpoint: the raw bytes are checked first (200+ positions)."""
    result = run_script(2, "checkpoint_flips.py", tmp_path, 200, timeout=300)
    assert "flips-ok" in result.stdout, result.stdout[-2000:]
