"""Files and inputs people pass by mistake or craft: each refused with one ``error:`` line and
exit 2 on every rank (printed once), before any work, never a traceback or a hang."""
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import ROOT, mpi_env, run_cli
from paraflow_hpc.io.checkpoint import MAGIC, TRAILER

pytestmark = pytest.mark.mpi

LORENZ = ["--problem", "lorenz", "--intervals", "8", "--fine-steps", "64", "--coarse-steps", "16", "--tol", "0",
          "--k-max", "0"]


def refused(result, message, nranks=2):
    """Exit 2 on every rank, the message once, no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert message in result.stderr, result.stderr
    assert result.stderr.count("error:") == 1, result.stderr
    assert "Traceback" not in result.stderr and "MPI_ABORT" not in result.stderr, result.stderr


def parareal(nranks, *args, check=False, quiet=True, **kwargs):
    return run_cli(nranks, ["run", "parareal", *(["--quiet"] if quiet else []), *LORENZ, *map(str, args)],
                   check=check, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ck")
    parareal(2, "--checkpoint-every", "2", "--output", tmp / "r.h5", "--checkpoint", tmp / "ck.h5", check=True)
    return tmp / "ck.h5"


def seal(path):
    """What save_checkpoint appends: a crafted file that passes the checksum, to test the schema."""
    image = path.read_bytes()
    path.write_bytes(image + TRAILER.pack(MAGIC, len(image), hashlib.sha256(image).digest()))


def other_file(directory):
    other = directory / "other.h5"
    with h5py.File(other, "w") as g:
        g["x"] = np.ones((5, 3))
    return other


def _replace(f, name, **kwargs):
    del f[name]
    f.create_dataset(name, **kwargs)


def _meta(f, **changes):
    meta = json.loads(f.attrs["meta"])
    meta.update(changes)
    f.attrs["meta"] = json.dumps({k: v for k, v in meta.items() if v is not None})


def _virtual(f, name, directory):
    layout = h5py.VirtualLayout(shape=(5, 3), dtype="f8")
    layout[:] = h5py.VirtualSource(str(other_file(directory)), "x", shape=(5, 3))
    del f[name]
    f.create_virtual_dataset(name, layout)


def _external_storage(f, name, directory):
    """``name``'s data moved to a raw file outside the HDF5 file (and outside its checksum)."""
    data = f[name][()]
    raw = directory / "raw.bin"
    raw.write_bytes(np.ascontiguousarray(data).tobytes())
    del f[name]
    f.create_dataset(name, shape=data.shape, dtype=data.dtype, external=[(str(raw), 0, data.nbytes)])


def _unwritten(f, name, directory):
    """``name`` created with its shape but never written (reads return the fill value)."""
    shape, dtype = f[name].shape, f[name].dtype
    del f[name]
    f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=float("nan"))


def _partly_chunked(f, name, directory):
    """``name`` re-created chunked with only its first chunk written (the rest reads as NaN)."""
    data = f[name][()]
    del f[name]
    ds = f.create_dataset(name, shape=data.shape, dtype=data.dtype, chunks=(1,) + data.shape[1:],
                          fillvalue=float("nan"))
    ds[0] = data[0]


def _external(f, name, directory):
    del f[name]
    f[name] = h5py.ExternalLink(str(other_file(directory)), "x")


CHECKPOINT_EDITS = {
    "huge shape": (lambda f, d: _replace(f, "rank_00000/boundaries", shape=(2**40, 3), dtype="f8"),
                   "more data than the whole file holds"),
    "missing iteration": (lambda f, d: _meta(f, iteration=None), "meta entry 'iteration' = None"),
    "string iteration": (lambda f, d: _meta(f, iteration="3"), "meta entry 'iteration' = '3'"),
    "iteration beyond the run's limit": (lambda f, d: _meta(f, iteration=100),
                                         "meta entry 'iteration' = 100 is outside 0..8"),
    "string rank count": (lambda f, d: f.attrs.__setitem__("nranks", "2"), "@nranks = '2' is not an integer"),
    "group for dataset": (lambda f, d: (f.__delitem__("rank_00000/fine"), f.create_group("rank_00000/fine")),
                          "/rank_00000/fine is not a dataset"),
    "wrong shape": (lambda f, d: _replace(f, "rank_00001/coarse_old", data=np.zeros((3, 3))),
                    "/rank_00001/coarse_old has shape (3, 3), this run expects (4, 3)"),
    "integers": (lambda f, d: _replace(f, "rank_00000/boundaries", data=np.zeros((5, 3), dtype=int)),
                 "this run expects floats"),
    "pickled opaque": (lambda f, d: _replace(f, "rank_00000/fine", data=np.void(pickle.dumps(print))),
                       "/rank_00000/fine has dtype"),
    "pickled bytes": (lambda f, d: _replace(f, "rank_00000/fine", data=np.array([pickle.dumps(print)])),
                      "checkpoints hold numbers only"),
    "variable length": (lambda f, d: _replace(f, "rank_00000/fine", shape=(4,), dtype=h5py.vlen_dtype("f8")),
                        "/rank_00000/fine has dtype"),
    "virtual dataset": (lambda f, d: _virtual(f, "rank_00000/boundaries", d), "is a virtual dataset"),
    "external link": (lambda f, d: _external(f, "rank_00000/boundaries", d), "is an external link"),
    "external storage": (lambda f, d: _external_storage(f, "rank_00000/boundaries", d), "external raw files"),
    "unwritten dataset": (lambda f, d: _unwritten(f, "rank_00000/boundaries", d), "was never (completely) written"),
    "partly written chunks": (lambda f, d: _partly_chunked(f, "rank_00000/boundaries", d), "is chunked"),
    "extra group": (lambda f, d: f.create_group("evil"), "are not /root and /rank_00000"),
}


def crafted_checkpoint(checkpoint, directory, edit):
    bad = directory / "crafted.h5"
    bad.write_bytes(checkpoint.read_bytes()[:-TRAILER.size])
    with h5py.File(bad, "r+") as f:
        edit(f, directory)
    seal(bad)
    return bad


@pytest.mark.parametrize("case", sorted(CHECKPOINT_EDITS))
def test_crafted_checkpoint_is_refused_before_any_work(tmp_path, checkpoint, case):
    edit, message = CHECKPOINT_EDITS[case]
    bad = crafted_checkpoint(checkpoint, tmp_path, edit)
    result = parareal(2, "--restart", bad, "--output", tmp_path / "out.h5", quiet=False)
    refused(result, message)
    assert "serial fine solution" not in result.stdout   # checked before the serial reference
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.mpi
def test_spacetime_checkpoint_without_a_layout_record_restarts(tmp_path):
    """The layout in a space-time checkpoint's meta is informational (any layout reads its fields):
    a checkpoint without it, or with a garbled one, restarts and says it does not record one."""
    ck, args = tmp_path / "ck.h5", ["run", "spacetime", "--nx", "6", "--intervals", "4", "--tol", "0"]
    run_cli(2, [*args, "--checkpoint-every", "1", "--checkpoint", ck, "--output", tmp_path / "a.h5"],
            check=True, timeout=120)
    for case, edit in (("missing", dict(process_grid=None, time_groups=None, space_ranks=None)),
                       ("garbled", dict(process_grid="2x1"))):
        bad = crafted_checkpoint(ck, tmp_path, lambda f, d: _meta(f, **edit))
        done = run_cli(2, [*args, "--restart", bad, "--output", tmp_path / f"{case}.h5"], check=False, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "(written on a layout it does not record, read into this layout)" in done.stdout, done.stdout
    # an iteration count that its history contradicts (an edited file) would end "converged" on a wrong state
    bad = crafted_checkpoint(ck, tmp_path, lambda f, d: _meta(f, iteration=4))
    refused(run_cli(2, [*args, "--restart", bad, "--output", tmp_path / "k.h5"], check=False, timeout=120),
            "it holds iteration 4 but 3 updates and 4 errors in its history")

    def nan_boundary(f, d):   # a boundary the last iteration does not recompute: it went into the result
        field = f["fields/boundaries"][()]
        field[1, 5, 5] = np.nan
        f["fields/boundaries"][...] = field
    bad = crafted_checkpoint(ck, tmp_path, nan_boundary)
    refused(run_cli(2, [*args, "--restart", bad, "--output", tmp_path / "n.h5"], check=False, timeout=120),
            "it holds non-finite values (NaN or inf)")
    bad = crafted_checkpoint(ck, tmp_path, lambda f, d: _meta(f, petsc_options=None))
    refused(run_cli(2, [*args, "--restart", bad, "--output", tmp_path / "p.h5"], check=False, timeout=120),
            "meta entry 'petsc_options' = None is not a table of options")


@pytest.mark.mpi
def test_spacetime_restart_with_other_petsc_options_from_the_environment_is_refused(tmp_path):
    """PETSC_OPTIONS (or a .petscrc) changed between the runs changes G or F without changing
    --petsc: the checkpoint records every option they read, and a restart with others is refused."""
    ck, args = tmp_path / "ck.h5", ["run", "spacetime", "--nx", "6", "--intervals", "4", "--tol", "0"]
    env = {"PETSC_OPTIONS": "-fine_ksp_type gmres -fine_pc_type jacobi -fine_ksp_rtol 1e-12"}
    run_cli(2, [*args, "--checkpoint-every", "1", "--checkpoint", ck, "--output", tmp_path / "a.h5"],
            env=env, timeout=120)
    done = run_cli(2, [*args, "--restart", ck, "--output", tmp_path / "b.h5"], check=False, timeout=120)
    refused(done, "was written with other PETSc options for G and F: -fine_ksp_rtol 1e-12 there, (unset) now")
    assert not (tmp_path / "b.h5").exists()
    run_cli(2, [*args, "--restart", ck, "--output", tmp_path / "c.h5"], env=env, timeout=120)   # the same: resumes
    # the same options in other case and number format, plus a viewer: the same solver, so it resumes
    same = {"PETSC_OPTIONS": "-FINE_KSP_TYPE gmres -Fine_PC_Type jacobi -fine_ksp_rtol 1.0e-12 -fine_ksp_view"}
    run_cli(2, [*args, "--restart", ck, "--output", tmp_path / "d.h5"], env=same, timeout=120)
    bad = crafted_checkpoint(ck, tmp_path, lambda f, d: _meta(f, petsc_options=["x"]))
    refused(run_cli(2, [*args, "--restart", bad, "--output", tmp_path / "e.h5"], env=env, check=False, timeout=120),
            "meta entry 'petsc_options' = ['x'] is not a table of options")


def test_crafted_checkpoint_falls_back_to_previous(tmp_path, checkpoint):
    bad = crafted_checkpoint(checkpoint, tmp_path, CHECKPOINT_EDITS["huge shape"][0])
    shutil.copy(checkpoint, str(bad) + ".prev")
    result = parareal(2, "--restart", bad, "--output", tmp_path / "out.h5", check=True, quiet=False)
    assert "using the previous checkpoint" in result.stdout and "more data than the whole file" in result.stdout
    with h5py.File(tmp_path / "out.h5") as f:   # the file read, not the damaged one given
        assert f.attrs["restarted_from"] == str(bad) + ".prev"


@pytest.mark.parametrize("nranks", [1, 3])
def test_refused_restarts_exit_2_once(tmp_path, checkpoint, nranks):
    """Missing file, another rank count, problem, configuration or method: one line, exit 2."""
    out = ["--output", tmp_path / "out.h5"]
    refused(parareal(nranks, "--restart", tmp_path / "none.h5", *out), "does not exist")
    refused(parareal(nranks, "--restart", checkpoint, *out), "restart with mpirun -n 2")
    other = run_cli(nranks, ["run", "paso", "--quiet", "--restart", str(checkpoint), "--output",
                             str(tmp_path / "p.h5")], check=False, timeout=120)
    refused(other, "is from method 'parareal', not 'paso'")


def test_refused_restart_of_other_configuration(tmp_path, checkpoint):
    result = parareal(2, "--restart", checkpoint, "--output", tmp_path / "out.h5", "--fine-steps", "65")
    refused(result, "has fine_steps = 64, this run has 65")
    result = parareal(2, "--restart", checkpoint, "--output", tmp_path / "out.h5", "--problem", "brusselator")
    refused(result, "has problem = 'lorenz', this run has 'brusselator'")


# --- outputs never destroyed silently ---------------------------------------------------------

def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "r.h5"
    parareal(2, "--output", out, check=True)
    before = out.read_bytes()
    refused(parareal(2, "--output", out, "--problem", "brusselator"), "exists (an earlier result); pass --overwrite")
    assert out.read_bytes() == before
    parareal(2, "--output", out, "--overwrite", check=True)
    assert not [p for p in os.listdir(tmp_path) if ".partial-" in p or p.endswith(".lock")]


def test_output_may_not_be_a_checkpoint_directory_or_the_checkpoint(tmp_path, checkpoint):
    refused(parareal(2, "--output", tmp_path, "--overwrite"), "is a directory")
    refused(parareal(2, "--output", checkpoint, "--overwrite"), "is a checkpoint")
    refused(parareal(2, "--output", tmp_path / "x.h5", "--checkpoint", tmp_path / "x.h5"),
            "--output and --checkpoint are the same file")
    refused(parareal(2, "--output", checkpoint, "--restart", checkpoint), "is the checkpoint to restart from")
    assert not (tmp_path / "x.h5").exists()


def test_concurrent_run_on_the_same_output_refuses(tmp_path):
    """A live lock (here: this test process) makes a second run refuse; a dead one is taken over."""
    out = tmp_path / "r.h5"
    lock = tmp_path / "r.h5.lock"
    import socket

    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": ""}))
    refused(parareal(2, "--output", out), "is being written by process")
    assert not out.exists()
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "slurm_job": ""}))
    (tmp_path / "r.h5.partial-99999").write_bytes(b"half a result")
    result = parareal(2, "--output", out, check=True, quiet=False)
    assert out.exists() and not lock.exists() and not (tmp_path / "r.h5.partial-99999").exists()
    assert "removed" in result.stdout and "left by an interrupted run" in result.stdout


def test_two_runs_at_once(tmp_path):
    """Both started together: one writes the result, the other refuses (or, if it starts after the
    first finished, finds the result there); never two exit codes 0."""
    cmd = [sys.executable, "-m", "paraflow_hpc", "run", "parareal", "--quiet", *LORENZ, "--output",
           str(tmp_path / "r.h5")]
    procs = [subprocess.Popen(["mpirun", "-n", "1", *cmd], env=mpi_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outputs
    loser = outputs[[p.returncode for p in procs].index(2)][1]
    assert "is being written by" in loser or "exists (an earlier result)" in loser


# --- paths seen by every rank -----------------------------------------------------------------

def _mpmd(contexts, timeout=120):
    cmd = ["mpirun"]
    for i, (wdir, prefix, args) in enumerate(contexts):
        cmd += ([":"] if i else []) + ["-n", "1", "--wdir", str(wdir), *prefix, sys.executable, "-m",
                                       "paraflow_hpc", *args]
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"timeout (hang) running {' '.join(cmd)}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_ranks_with_different_working_directories(tmp_path):
    """A relative --output means rank 0's directory on every rank (before: a hang in the open)."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    args = ["run", "parareal", "--quiet", *LORENZ, "--output", "rel.h5"]
    result = _mpmd([(a, [], args), (b, [], args)])
    assert result.returncode == 0, result.stderr
    assert (a / "rel.h5").exists() and not (b / "rel.h5").exists()
    with h5py.File(a / "rel.h5") as f:
        assert f.attrs["mpi_size"] == 2


def _can_unshare() -> bool:
    try:
        return subprocess.run(["unshare", "-m", "true"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@pytest.mark.skipif(not _can_unshare(), reason="needs unshare -m (root) to give one rank its own directory")
def test_rank_that_does_not_see_the_output_directory(tmp_path):
    """Rank 1 gets a private tmpfs over the output directory (a node-local directory): refused."""
    out = tmp_path / "shared"
    out.mkdir()
    args = ["run", "parareal", "--quiet", *LORENZ, "--output", str(out / "r.h5")]
    private = ["unshare", "-m", "sh", "-c", f"mount -t tmpfs none {out} && exec \"$0\" \"$@\""]
    result = _mpmd([(tmp_path, [], args), (tmp_path, private, args)])
    refused(result, "rank 1 (host")
    assert "does not see the directory" in result.stderr
    assert not (out / "r.h5").exists() and not [p for p in os.listdir(out) if p.startswith(".paraflow-probe")]


# --- command line and config checked up front ----------------------------------------------

def test_config_file_problems(tmp_path):
    bad = tmp_path / "latin1.toml"
    bad.write_bytes("problem = 'lorenz' # caf\xe9\n".encode("latin-1"))
    refused(run_cli(2, ["run", "parareal", "--config", str(bad)], check=False, timeout=120), "is not UTF-8")
    refused(run_cli(2, ["run", "parareal", "--config", str(tmp_path)], check=False, timeout=120),
            "is a directory; give a TOML file")
    twice = tmp_path / "twice.toml"
    twice.write_text('problem = "lorenz"\n[problem]\nsigma = 10.0\n')
    refused(run_cli(2, ["run", "parareal", "--config", str(twice)], check=False, timeout=120),
            'put the spec inside the table as name = "..."')
    number = tmp_path / "number.toml"
    number.write_text("output = 5\n")
    refused(run_cli(2, ["run", "parareal", "--config", str(number)], check=False, timeout=120, cwd=tmp_path),
            "output = 5: expected a string")
    assert not (tmp_path / "5").exists()


def test_checkpoint_on_read_only_file_system(tmp_path):
    """/proc stands for a read-only file system: refused before the first iteration."""
    result = parareal(2, "--output", tmp_path / "r.h5", "--checkpoint", "/proc/paraflow/ck.h5",
                      "--checkpoint-every", "1", quiet=False)
    refused(result, "is not writable")
    assert "iteration" not in result.stdout


def test_bad_option_printed_once_on_three_ranks(tmp_path):
    result = parareal(3, "--output", tmp_path / "r.h5", "--fine-steps", "0")
    refused(result, "fine_steps = 0: must be >= 1")
    refused(run_cli(2, ["bench", "parareal", "--checkpoint-every", "1"], check=False, timeout=120),
            "checkpoint_every = 1: benchmarks write no checkpoints")
    refused(run_cli(3, ["run", "pararael"], check=False, timeout=120), "unknown method 'pararael'; choose one of")


# --- report of crafted result files ----------------------------------------------------------

@pytest.fixture(scope="module")
def result_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("res")
    parareal(1, "--output", tmp / "good.h5", check=True)
    return tmp / "good.h5"


RESULT_EDITS = {
    "config list": (lambda f, d: f.attrs.__setitem__("config", "[1, 2]"), "not a JSON object"),
    "string history": (lambda f, d: _replace(f, "history/error", data=np.array([b"1.0", b"x"])),
                       "numbers were expected"),
    "object history": (lambda f, d: _replace(f, "history/error", shape=(2,), dtype=h5py.string_dtype()),
                       "has dtype object"),
    "huge history": (lambda f, d: _replace(f, "history/error", shape=(2**40,), dtype="f8"), "more data"),
    "external link": (lambda f, d: _external(f, "history/error", d), "is an external link"),
    "virtual dataset": (lambda f, d: _virtual(f, "history/error", d), "is a virtual dataset"),
    "external storage": (lambda f, d: _external_storage(f, "history/error", d), "external raw files"),
    "string size": (lambda f, d: f.attrs.__setitem__("mpi_size", "one"), "@mpi_size = 'one' is not an integer"),
    "timings shape": (lambda f, d: _replace(f, "timings/total", data=np.zeros(7)), "one entry per rank"),
}


def test_report_of_crafted_result_files(tmp_path, result_file):
    files = [str(result_file)]
    for case, (edit, _) in sorted(RESULT_EDITS.items()):
        bad = tmp_path / f"{case.replace(' ', '_')}.h5"
        shutil.copy(result_file, bad)
        with h5py.File(bad, "r+") as f:
            edit(f, tmp_path)
        files.append(str(bad))
    (tmp_path / "text.h5").write_text("not HDF5")
    files.append(str(tmp_path / "text.h5"))
    done = subprocess.run([sys.executable, "-m", "paraflow_hpc", "report", *files, "--out", str(tmp_path / "rep")],
                          capture_output=True, text=True, env=mpi_env(), timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("error:")]
    assert len(lines) == len(files) - 1, done.stdout
    for case, (_, message) in RESULT_EDITS.items():
        line = next(x for x in lines if f"{case.replace(' ', '_')}.h5" in x)
        assert message in line, line
    assert any("text.h5: cannot be read as HDF5" in x for x in lines)


# --- one validation layer: Python API, run and bench alike -----------------------------------

def test_parareal_promotes_integer_y0_like_solve_ivp():
    """y0 = [1, 0] once integrated in int64 (y(20) = [0 0], converged); now as floats, as scipy does."""
    from mpi4py import MPI

    from paraflow_hpc.algorithms.parareal import parareal, subinterval_bounds
    from paraflow_hpc.propagators import make_propagator

    def f(t, y):
        return np.array([y[1], -y[0]])

    times = subinterval_bounds(0.0, 20.0, 8)
    result = parareal(MPI.COMM_SELF, make_propagator("rk4", f, 2), make_propagator("rk4", f, 50), np.array([1, 0]),
                      times, tol=0.0, k_max=8)
    assert result.boundaries.dtype == np.float64
    np.testing.assert_allclose(result.boundaries[-1], [np.cos(20.0), -np.sin(20.0)], atol=1e-6)
    for bad, message in ((dict(tol=-1.0), "tol = -1.0: must be >= 0"), (dict(k_max=0), "k_max = 0: must be >= 1")):
        kwargs = {"tol": 0.0, "k_max": 8, **bad}
        with pytest.raises(ValueError, match=message):
            parareal(MPI.COMM_SELF, make_propagator("rk4", f, 2), make_propagator("rk4", f, 50), [1.0, 0.0],
                     times, **kwargs)
    with pytest.raises(ValueError, match="y0 contains NaN"):
        parareal(MPI.COMM_SELF, make_propagator("rk4", f, 2), make_propagator("rk4", f, 50), [np.nan, 0.0],
                 times, tol=0.0, k_max=8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-0.1), "lr = -0.1: the learning rate must be > 0"),
    (dict(lr=0.0), "lr = 0.0: the learning rate must be > 0"),
    (dict(betas=(0.9, 1.0)), r"beta2 = 1.0: must be in \[0, 1\)"),
    (dict(betas=(1.2, 0.9)), r"beta1 = 1.2: must be in \[0, 1\)"),
    (dict(eps=-1e-8), "eps = -1e-08: must be > 0"),
    (dict(momentum=1.0), r"momentum = 1.0: must be in \[0, 1\)"),
    (dict(weight_decay=-1.0), "weight_decay = -1.0: must be >= 0"),
    (dict(schedule="linear"), "lr_schedule = 'linear' is not allowed"),
])
def test_optimizer_spec_refuses_what_the_cli_refuses(kwargs, message):
    from paraflow_hpc.algorithms.paso import OptimizerSpec

    with pytest.raises(ValueError, match=message):
        OptimizerSpec("adam", kwargs.pop("lr", 0.01), 10, **kwargs)


def test_paso_python_api_checks_and_defaults():
    import inspect

    from mpi4py import MPI

    from paraflow_hpc.algorithms.paso import OptimizerSpec, paso
    from paraflow_hpc.runners.paso import Config

    defaults = inspect.signature(paso).parameters
    assert (defaults["adapt"].default, defaults["ema_decay"].default) == (Config.tol_adapt, Config.ema_decay)
    opt = OptimizerSpec("sgd", 0.1, 4)
    for kwargs, message in ((dict(tol=-1.0), "tol = -1.0: must be >= 0"),
                            (dict(tol=0.0, window=0), "window = 0: must be >= 1"),
                            (dict(tol=0.0, ema_decay=1.5), r"ema_decay = 1.5: must be in \[0, 1\]"),
                            (dict(tol=0.0, adapt="max"), "tol_adapt = 'max' is not allowed")):
        with pytest.raises(ValueError, match=message):
            paso(MPI.COMM_SELF, None, opt, np.zeros(3), total_steps=4, **{"window": 2, **kwargs})


@pytest.mark.parametrize("kind, args, message", [
    ("run", ["paso", "--batch", "5000"], "batch = 5000 exceeds the 1437 training images"),
    ("run", ["paso", "--beta2", "1"], "beta2 = 1.0: must be in [0, 1)"),
    ("bench", ["paso", "--batch", "5000"], "batch = 5000 exceeds the 1437 training images"),
    ("bench", ["layer-parallel", "--lr", "-1"], "lr = -1.0: must be > 0"),
    ("bench", ["layer-parallel", "--lr", "0"], "lr = 0.0: must be > 0"),
    ("bench", ["layer-parallel", "--final-time", "0"], "final_time = 0.0: must be > 0"),
    ("bench", ["layer-parallel", "--coarse-iterations", "-5"], "coarse_iterations = -5: must be >= 0"),
    ("bench", ["layer-parallel", "--ridge", "-1"], "ridge = -1.0: must be >= 0"),
    ("bench", ["layer-parallel", "--batch-size", "5000"], "batch_size = 5000 exceeds"),
])
def test_run_and_bench_share_the_checks(tmp_path, kind, args, message):
    result = run_cli(2, [kind, *args, "--output", str(tmp_path / "b.h5")], check=False, timeout=120)
    refused(result, message)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=-1.0), "lr = -1.0: must be > 0"),
    (dict(batch_size=5000), "batch_size = 5000 exceeds the 240 training samples"),
    (dict(ridge=-1.0), "ridge = -1.0: must be >= 0"),
    (dict(iterations=0), "iterations = 0: must be >= 1"),
])
def test_layer_parallel_train_refuses_what_the_cli_refuses(kwargs, message):
    import torch
    from mpi4py import MPI

    from paraflow_hpc.algorithms.layer_parallel import train
    from paraflow_hpc.problems.datasets import load_dataset
    from paraflow_hpc.problems.resnet import ResNetSpec, init_params

    ds = load_dataset("ellipses", 300, 0)
    data = {k: torch.from_numpy(getattr(ds, k)) for k in ("x_train", "y_train", "x_test", "y_test")}
    spec = ResNetSpec(ds.in_dim, 3, 2, 6, "euler", final_time=2.0)
    options = {"iterations": 2, "lr": 0.3, "batch_size": 16, "seed": 5, "coupling": "exact", **kwargs}
    with pytest.raises(ValueError, match=message):
        train(MPI.COMM_SELF, spec, init_params(spec, seed=3), data, **options)


@pytest.mark.parametrize("method, args, name", [
    ("layer-parallel", ["--problem", "ellipses", "--samples", "200", "--depth", "8", "--width", "4",
                        "--batch-size", "16", "--iterations", "4", "--coarse-iterations", "2"], "param_"),
    ("mgrit", ["--problem", "dahlquist", "--intervals", "64", "--levels", "2", "--tol", "1e-14",
               "--max-iter", "3"], "u"),
])
def test_checkpoint_with_arrays_that_do_not_fit_is_refused(tmp_path, method, args, name):
    """Right names, wrong shapes: refused once with exit 2 on every rank (a schema or the state's
    constructors say so), never a traceback from one rank."""
    ck = tmp_path / "ck.h5"
    run_cli(2, ["run", method, *args, "--checkpoint-every", "1", "--checkpoint", ck, "--quiet",
                "--output", tmp_path / "r.h5"], check=False, timeout=240)
    assert ck.exists()
    def shrink(f, directory):
        group = f["rank_00001"]
        target = next(n for n in group if n.startswith(name))
        _replace(f, f"rank_00001/{target}", data=np.zeros((1,) * group[target].ndim))
    bad = crafted_checkpoint(ck, tmp_path, shrink)
    result = run_cli(2, ["run", method, *args, "--restart", bad, "--output", tmp_path / "out.h5"],
                     check=False, timeout=240)
    refused(result, str(bad))
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize("option", ["--output", "--restart", "--config"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_special_files_are_refused_never_opened(tmp_path, option, kind):
    """A FIFO would block every read or write forever; a device (as root) would be replaced by the
    result. Refused up front: one line, exit 2, within the timeout; the node is left as it was."""
    import stat

    node = tmp_path / "node"
    if kind == "fifo":
        os.mkfifo(node)
    else:
        try:
            os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))   # like /dev/null
        except PermissionError:
            pytest.skip("creating a device node needs root")
    args = [option, node] if option != "--output" else ["--output", node, "--overwrite"]
    if option != "--output":
        args += ["--output", tmp_path / "out.h5"]
    result = parareal(2, *args)
    refused(result, "not a regular file")
    mode = os.stat(node).st_mode
    assert stat.S_ISFIFO(mode) if kind == "fifo" else stat.S_ISCHR(mode)
