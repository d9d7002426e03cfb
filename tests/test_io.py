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


@pytest.mark.mpi
@pytest.mark.parametrize("writers,readers,extra", [(1, 3, []), (2, 1, []), (2, 4, []), (4, 3, ["40"]),
                                                   (3, 2, ["40", "gathered"]), (2, 3, ["1000000", "gathered"])])
def test_checkpoint_fields_are_read_back_by_any_layout(tmp_path, writers, readers, extra):
    """A checkpoint of global fields: each rank writes its box (parallel HDF5, or sent to rank 0),
    another number of ranks reads its own boxes; wrong field shapes and per-rank files refused."""
    written = run_script(writers, "checkpoint_fields.py", tmp_path, "write", *extra, timeout=120)
    assert "written" in written.stdout
    read = run_script(readers, "checkpoint_fields.py", tmp_path, "read", *extra, timeout=120)
    assert "read-ok" in read.stdout


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


@pytest.mark.mpi
@pytest.mark.skipif(not os.environ.get("PARAFLOW_LARGE_STATE_GIB"),
                    reason="by hand: PARAFLOW_LARGE_STATE_GIB=2.2 (needs ~3x that in memory and disk per rank)")
def test_state_above_2_gib_per_rank(tmp_path):
    gib = os.environ["PARAFLOW_LARGE_STATE_GIB"]
    result = run_script(2, "large_state.py", tmp_path, gib, timeout=3600)
    assert "large-state-ok" in result.stdout
    print(result.stdout)


def _ckpt(path, iteration):
    import numpy as np
    from mpi4py import MPI

    from paraflow_hpc.io.checkpoint import save_checkpoint
    save_checkpoint(MPI.COMM_SELF, str(path), "test", {"iteration": iteration}, {"x": np.full(4, float(iteration))})


def _iteration(path):
    from mpi4py import MPI

    from paraflow_hpc.io.checkpoint import load_checkpoint
    meta, arrays, _ = load_checkpoint(MPI.COMM_SELF, str(path), "test")
    assert (arrays["x"] == meta["iteration"]).all()
    return meta["iteration"]


def test_a_restart_from_prev_keeps_prev_until_a_new_checkpoint_is_complete(tmp_path):
    """The newest checkpoint is damaged, the restart uses .prev: the next write must not rotate the
    damaged file over .prev (a failure of that write would leave no usable checkpoint)."""
    ck = tmp_path / "ck.h5"
    _ckpt(ck, 1)
    _ckpt(ck, 2)
    ck.write_bytes(ck.read_bytes()[:-100])           # newest truncated
    assert _iteration(ck) == 1                       # from .prev
    _ckpt(ck, 3)
    assert _iteration(ck) == 3
    assert _iteration(str(ck) + ".prev") == 1        # the good one survived, not the damaged one
    _ckpt(ck, 4)                                     # and rotation is normal again
    assert _iteration(str(ck) + ".prev") == 3


def test_a_writer_killed_between_its_renames_loses_nothing(tmp_path):
    """Killed after moving the checkpoint to .prev and before renaming its sealed temporary into
    place: the temporary is the last complete checkpoint; the next run recovers it (not deletes it)."""
    ck = tmp_path / "ck.h5"
    _ckpt(ck, 1)
    _ckpt(tmp_path / "new.h5", 2)
    os.replace(ck, str(ck) + ".prev")
    os.replace(tmp_path / "new.h5", str(ck) + ".partial-999999999")   # no such process
    assert _iteration(ck) == 2 and not os.path.exists(str(ck) + ".partial-999999999")
    ck.unlink()
    (tmp_path / "ck.h5.partial-999999998").write_bytes(b"half written")   # unsealed: never recovered
    assert _iteration(ck) == 1


def test_a_zombie_writer_is_not_alive():
    """A rank that called MPI_Abort stays a zombie until its launcher reaps it: its lock and
    temporaries are stale, so an immediate rerun may take them over."""
    import time

    from paraflow_hpc.io.files import pid_alive
    child = subprocess.Popen(["true"])
    deadline = time.time() + 10
    while pid_alive(child.pid) and time.time() < deadline:   # exited, not yet reaped: a zombie
        time.sleep(0.05)
    assert not pid_alive(child.pid)
    assert os.path.exists(f"/proc/{child.pid}")               # still in the process table
    child.wait()
    assert pid_alive(os.getpid())


@pytest.mark.mpi
def test_a_sealed_checkpoint_left_between_renames_survives_a_restart_onto_itself(tmp_path):
    """--restart and --checkpoint the same file (a requeued job): the run's clean-up of leftover
    temporaries must not delete the complete checkpoint a killed writer had not yet renamed."""
    ck = tmp_path / "ck.h5"
    args = ["run", "parareal", "--problem", "lorenz", "--intervals", "8", "--coarse-steps", "10",
            "--fine-steps", "200", "--tol", "0", "--checkpoint-every", "1", "--checkpoint", str(ck)]
    run_cli(2, [*args, "--quiet", "--output", str(tmp_path / "a.h5")], timeout=120)
    os.replace(ck, str(ck) + ".partial-999999999")   # killed after rotating .prev, before the last rename
    done = run_cli(2, [*args, "--restart", str(ck), "--output", str(tmp_path / "b.h5")], timeout=120)
    assert "recovered the complete checkpoint" in done.stdout, done.stdout
    assert "restarting from" in done.stdout and "after iteration 7" in done.stdout, done.stdout
