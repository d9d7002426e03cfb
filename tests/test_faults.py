"""Every fault ends cleanly (issue 11): no hang in a collective, no non-finite result reported as
success, every failure reported once on stderr, the last checkpoint kept. Real mpirun, timeouts."""
import math
import os
import re
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from conftest import ROOT, catches_sigusr1, mpi_env, run_cli, run_script
from paraflow_hpc.algorithms.layer_parallel import train
from paraflow_hpc.algorithms.paraflow import paraflow, paraflows
from paraflow_hpc.algorithms.paso import OptimizerSpec, paso
from paraflow_hpc.io import checkpoint
from paraflow_hpc.problems.models import make_problem
from paraflow_hpc.problems.networks import make_problem as make_network_problem
from paraflow_hpc.problems.resnet import ResNetSpec, init_params
from paraflow_hpc.steppers import BatchSchedule, Coarse, Fine

LORENZ = ["--problem", "lorenz", "--intervals", "8", "--coarse-steps", "10", "--fine-steps", "200", "--tol", "0",
          "--quiet"]


def verified(path, nranks):
    """The checkpoint at ``path`` passes every check of a restart (checksum, schema); its meta."""
    with h5py.File(path, "r") as f:
        kind = str(f.attrs["kind"])
        fields = {n: (f["fields"][n].shape, "f") for n in f["fields"]} if "fields" in f else None
    opened = checkpoint._open_verified(str(path), kind, nranks, {}, None, fields=fields)
    try:
        groups = {g: {n: opened.f[g][n][()] for n in opened.f[g]} for g in opened.f}
        return opened.meta, groups
    finally:
        opened.close()


# --- 1. an exception on one rank inside a collective section: abort, never a hang --------------------

@pytest.mark.mpi
@pytest.mark.parametrize("nranks, where, rank, extra", [
    (2, "checkpoint_write", 0, ["--checkpoint-every", "1"]),
    (3, "checkpoint_write", 0, ["--checkpoint-every", "1"]),
    (2, "result_write", 1, []),
    (3, "result_write", 2, []),
    (2, "first_evaluation", 1, ["--checkpoint-every", "1"]),
])
def test_exception_on_one_rank_aborts_all(tmp_path, nranks, where, rank, extra):
    ck = tmp_path / "ck.h5"
    proc = run_script(nranks, "fail_on_one_rank.py", where, rank, "--", "run", "parareal", *LORENZ, *extra,
                      "--checkpoint", ck, "--output", tmp_path / "r.h5", timeout=120, check=False)
    assert proc.returncode != 0
    assert proc.stderr.count(f"error: rank {rank} of {nranks} failed during") == 1, proc.stderr
    assert "injected" in proc.stderr
    if where == "checkpoint_write":   # the first checkpoint was written, the second failed: the first holds
        meta, _ = verified(ck, nranks)
        assert meta["iteration"] == 1


@pytest.mark.mpi
@pytest.mark.parametrize("nranks, space_ranks, rank", [(2, 1, 1), (2, 2, 0), (4, 2, 3)])
def test_exception_on_one_rank_in_a_parallel_field_checkpoint_aborts_all(tmp_path, nranks, space_ranks, rank):
    """Space-time checkpoints are written and read by every rank (parallel HDF5): one rank failing
    inside them aborts all with its message once, and the last complete checkpoint survives."""
    ck = tmp_path / "ck.h5"
    args = ["run", "spacetime", "--problem", "heat2d", "--nx", "6", "--intervals", "4", "--tol", "0",
            "--space-ranks", str(space_ranks), "--checkpoint-every", "1", "--checkpoint", ck]
    proc = run_script(nranks, "fail_on_one_rank.py", "fields_write", rank, "--", *args,
                      "--output", tmp_path / "a.h5", timeout=120, check=False)
    assert proc.returncode != 0 and not (tmp_path / "a.h5").exists()
    assert proc.stderr.count(f"error: rank {rank} of {nranks} failed during writing checkpoint") == 1, proc.stderr
    assert "injected: field write fails" in proc.stderr
    meta, groups = verified(ck, nranks)   # the first checkpoint, complete
    assert meta["iteration"] == 1 and groups["fields"]["boundaries"].shape == (5, 6, 6)
    proc = run_script(nranks, "fail_on_one_rank.py", "fields_read", rank, "--", *args, "--restart", ck,
                      "--output", tmp_path / "b.h5", timeout=120, check=False)
    assert proc.returncode != 0 and not (tmp_path / "b.h5").exists()
    assert proc.stderr.count(f"error: rank {rank} of {nranks} failed during reading checkpoint") == 1, proc.stderr
    assert "injected: field read fails" in proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("nranks, space_ranks, rank", [(2, 2, 1), (4, 2, 2)])
def test_exception_on_one_space_rank_inside_a_ts_solve_aborts_all(tmp_path, nranks, space_ranks, rank):
    """The user's reaction raises on one space rank inside TSSolve, where the other ranks of its
    space group wait in collectives: every rank ends with its message once (was a hang)."""
    proc = run_script(nranks, "fail_on_one_rank.py", "pde_reaction", rank, "--", "run", "spacetime", "--problem",
                      "allen-cahn", "--nx", "8", "--intervals", "4", "--space-ranks", space_ranks, "--quiet",
                      "--output", tmp_path / "r.h5", timeout=120, check=False)
    assert proc.returncode != 0 and not (tmp_path / "r.h5").exists()
    assert proc.stderr.count(f"error: rank {rank} of {nranks} failed during") == 1, proc.stderr
    assert "RuntimeError: injected: the reaction fails" in proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("method, args", [("parareal", LORENZ), ("spacetime", ["--nx", "6", "--intervals", "4"])])
def test_result_without_disk_space_is_refused_on_every_rank(tmp_path, method, args):
    """No room for the result: one error line, exit 2 on every rank, no partial file (was a crash
    or an abort when HDF5 hit the full disk mid-write)."""
    proc = run_script(2, "fail_on_one_rank.py", "disk_full", 0, "--", "run", method, *args, "--quiet",
                      "--output", tmp_path / "r.h5", timeout=120, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("error: could not write result") == 1 and "1000 free" in proc.stderr, proc.stderr
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


@pytest.mark.mpi
def test_spacetime_nan_from_a_speculative_fine_solve_keeps_a_finite_checkpoint(tmp_path):
    """Time group 1's fine TS returns NaN once in iteration 2 or later: the run exits 4 naming the
    iteration, and the checkpoint it keeps holds the last finite state (the NaN was never written)."""
    ck = tmp_path / "ck.h5"
    proc = run_script(4, "fail_on_one_rank.py", "fine_nan_at", 14, "--", "run", "spacetime", "--nx", "8",
                      "--intervals", "8", "--tol", "0", "--space-ranks", "2", "--checkpoint-every", "1",
                      "--checkpoint", ck, "--output", tmp_path / "r.h5", timeout=120, check=False)
    assert proc.returncode == 4 and not (tmp_path / "r.h5").exists(), proc.stderr
    assert proc.stderr.count("error: ") == 1 and "non-finite state after iteration" in proc.stderr, proc.stderr
    meta, groups = verified(ck, 4)
    assert meta["iteration"] >= 1
    assert all(np.isfinite(field).all() for field in groups["fields"].values())


@pytest.mark.mpi
@pytest.mark.parametrize("reference", ["true", "false"])
def test_spacetime_nan_on_one_space_rank_only_is_never_a_result(tmp_path, reference):
    """One point of one non-first space rank's part turns NaN: every norm must see it (exit 4, no
    result), not only those of the rank that reduces first (was exit 0 with NaN in /solution/u)."""
    proc = run_script(4, "fail_on_one_rank.py", "point_nan_after", 3, "--", "run", "spacetime", "--nx", "8",
                      "--intervals", "4", "--space-ranks", "2", "--tol", "5e-3", "--reference", reference,
                      "--quiet", "--output", tmp_path / "r.h5", timeout=120, check=False)
    assert proc.returncode == 4 and not (tmp_path / "r.h5").exists(), proc.stderr
    assert proc.stderr.count("error: ") == 1 and "non-finite" in proc.stderr, proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_spacetime_unconverged_exits_4_with_the_iterate_written(tmp_path, nranks):
    proc = run_cli(nranks, ["run", "spacetime", "--nx", "6", "--intervals", "4", "--tol", "0", "--k-max", "1",
                            "--quiet", "--output", tmp_path / "r.h5"], check=False, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.count("error: space-time Parareal did not converge in k_max = 1") == 1, proc.stderr
    with h5py.File(tmp_path / "r.h5") as f:
        assert not f.attrs["converged"] and f.attrs["iterations"] == 1


@pytest.mark.mpi
@pytest.mark.parametrize("method, args", [
    ("paraflow", ["--budget", "2000"]),
    ("paso", ["--steps", "8", "--device", "cpu"]),
    ("layer-parallel", ["--iterations", "4", "--depth", "4", "--coarse-iterations", "0", "--device", "cpu"]),
])
def test_first_evaluation_failing_on_one_rank_aborts_all(tmp_path, method, args):
    proc = run_script(2, "fail_on_one_rank.py", "first_evaluation", 1, "--", "run", method, *args, "--quiet",
                      "--output", tmp_path / "r.h5", timeout=180, check=False)
    assert proc.returncode != 0 and not (tmp_path / "r.h5").exists()
    assert proc.stderr.count("error: rank 1 of 2 failed during") == 1, proc.stderr
    assert "injected: a user callable fails" in proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("method, args, spec", [
    ("parareal", LORENZ, "lorenz"),
    ("paraflow", ["--budget", "2000", "--quiet"], "classification"),
    ("paso", ["--steps", "8", "--device", "cpu", "--quiet"], "mlp"),
])
def test_problem_failing_its_probe_on_one_rank_is_refused_once(tmp_path, method, args, spec):
    """The problem's probe (config validation) raises on rank 1 only: the ranks agree on the error
    before any work, rank 0 prints it once, every rank exits 2 (no abort, no hang, no output)."""
    proc = run_script(2, "fail_on_one_rank.py", "probe", 1, "--", "run", method, *args,
                      "--output", tmp_path / "r.h5", timeout=180, check=False)
    assert proc.returncode == 2 and not (tmp_path / "r.h5").exists(), proc.stderr
    assert proc.stderr.count("error: ") == 1 and "failed during" not in proc.stderr, proc.stderr
    assert proc.stderr.count(f"error: problem '{spec}': ") == 1, proc.stderr
    assert "raised TypeError: injected: a user callable fails" in proc.stderr


def test_exception_on_one_rank_alone_is_the_ordinary_error(tmp_path):
    """One rank: nobody waits, so the exception propagates (a traceback, exit 1), no abort message."""
    proc = run_script(1, "fail_on_one_rank.py", "first_evaluation", 0, "--", "run", "parareal", *LORENZ,
                      "--output", tmp_path / "r.h5", timeout=120, check=False, launcher=[])
    assert proc.returncode == 1 and "failed during" not in proc.stderr
    assert proc.stderr.count("TypeError: injected: a user callable fails") == 1, proc.stderr


@pytest.mark.mpi
def test_exception_on_one_rank_reading_a_checkpoint_aborts_all(tmp_path):
    ck = tmp_path / "ck.h5"
    run_cli(2, ["run", "parareal", *LORENZ, "--k-max", "0", "--checkpoint-every", "1", "--checkpoint", ck,
                "--output", tmp_path / "a.h5"], timeout=120)
    proc = run_script(2, "fail_on_one_rank.py", "checkpoint_read", 0, "--", "run", "parareal", *LORENZ,
                      "--k-max", "0", "--restart", ck, "--output", tmp_path / "b.h5", timeout=120, check=False)
    assert proc.returncode != 0, proc.stderr
    assert proc.stderr.count("error: rank 0 of 2 failed during reading checkpoint") == 1, proc.stderr
    assert "injected: checkpoint read fails" in proc.stderr
    verified(ck, 2)


# --- 2. non-finite values: exit 4 naming the step, the last checkpoint kept, no result -----------------

def expect_non_finite(proc, message, out, ck=None, nranks=None):
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert proc.stderr.count(message) == 1, proc.stderr[-3000:]
    assert not os.path.exists(out)
    if ck is not None:
        meta, groups = verified(ck, nranks)
        for arrays in groups.values():   # a checkpoint holds no non-finite state (weights, losses)
            for name, a in arrays.items():
                if name in ("W", "start_grad", "start_loss", "history_loss") or name.startswith("param_"):
                    assert np.all(np.isfinite(a)), name
        return meta


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2])
def test_parareal_non_finite_update_exits_4(tmp_path, nranks):
    out = tmp_path / "d.h5"
    proc = run_cli(nranks, ["run", "parareal", "--quiet", "--problem", "brusselator", "--intervals", "8",
                            "--output", out], check=False, timeout=120)
    # the default stopping rule is the residual: the first non-finite quantity it checks names the iteration
    expect_non_finite(proc, "Parareal diverged in iteration 1 (non-finite residual)", out)


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_parareal_fine_turning_nan_later_keeps_a_finite_checkpoint(tmp_path, nranks):
    """F returns NaN from some call on (every rank): after the checkpoints of the first iterations,
    the run stops with exit 4 naming the iteration, and the last checkpoint is finite and verifies."""
    out, ck = tmp_path / "r.h5", tmp_path / "ck.h5"
    proc = run_script(nranks, "fail_on_one_rank.py", "rhs_nan_after", 16000 // nranks, "--", "run", "parareal",
                      *LORENZ, "--reference", "false", "--checkpoint-every", "1", "--checkpoint", ck,
                      "--output", out, timeout=180, check=False, launcher=[])
    meta = expect_non_finite(proc, "non-finite", out)
    meta, groups = verified(ck, nranks)
    # named by the algorithm's check ("diverged in iteration k") or the checkpoint hook's ("after iteration k")
    assert meta["iteration"] >= 1, meta
    assert re.search(rf"(in|after) iteration {meta['iteration'] + 1}\b", proc.stderr), proc.stderr
    for arrays in groups.values():
        for name in ("boundaries", "fine", "coarse_old"):
            assert name not in arrays or np.isfinite(arrays[name]).all()


@pytest.mark.mpi
def test_paraflow_nan_stops_with_the_window_named(tmp_path):
    out, ck = tmp_path / "p.h5", tmp_path / "p.ckpt.h5"
    proc = run_cli(2, ["run", "paraflow", "--problem", "pinn", "--eta", "1e30", "--n-f", "2", "--budget", "60000",
                       "--checkpoint-every", "1", "--quiet", "--output", out], check=False, timeout=300)
    meta = expect_non_finite(proc, "ParaFlow: non-finite loss L = nan in window 3", out, ck, 2)
    assert meta["iteration"] == 2 and "last checkpoint" in proc.stderr


@pytest.mark.mpi
def test_paraflows_nan_stops_with_the_window_named(tmp_path):
    out, ck = tmp_path / "s.h5", tmp_path / "s.ckpt.h5"
    proc = run_cli(1, ["run", "paraflows", "--problem", "pinn", "--eta", "1e30", "--n-f", "2", "--n-g", "3",
                       "--budget", "60000", "--baseline", "false", "--checkpoint-every", "1", "--quiet",
                       "--output", out], check=False, timeout=300)
    meta = expect_non_finite(proc, "ParaFlowS: non-finite loss L = nan in window", out, ck, 1)
    assert f"in window {meta['iteration'] + 1}:" in proc.stderr


@pytest.mark.mpi
def test_finite_blow_up_is_flagged_not_hidden(tmp_path):
    """PINN at eta = 1000: both losses grow by > 1e100 but stay finite; R is printed in %g, flagged."""
    out = tmp_path / "b.h5"
    proc = run_cli(2, ["run", "paraflows", "--problem", "pinn", "--eta", "1000", "--n-f", "2", "--n-g", "3",
                       "--budget", "30000", "--output", out], timeout=300)
    assert "warning: ParaFlowS blew up" in proc.stderr and "warning: the GD/SGD baseline blew up" in proc.stderr
    assert "R = 0.0000" not in proc.stdout
    with h5py.File(out) as f:
        assert f.attrs["blew_up"] and f.attrs["baseline_blew_up"]
        assert f.attrs["final_loss"] > 10 * f["history/loss"][0]
        r = float(proc.stdout.split("R = ")[1].split(";")[0])
        assert math.isclose(r, f.attrs["ratio"], rel_tol=1e-3)


@pytest.mark.mpi
@pytest.mark.parametrize("method, budget, minimum", [("paraflow", 100, 240), ("paraflows", 50, 130)])
def test_budget_below_one_window_is_refused(tmp_path, method, budget, minimum):
    proc = run_cli(2, ["run", method, "--budget", str(budget), "--output", tmp_path / "x.h5"], check=False,
                   timeout=120)
    assert proc.returncode == 2
    # an agreed config error: printed once, by rank 0
    assert proc.stderr.count(f"error: budget = {budget} is less than") == 1, proc.stderr
    assert proc.stderr.count("error: ") == 1 and f"--budget {minimum} or more" in proc.stderr


@pytest.mark.mpi
@pytest.mark.parametrize("nranks", [1, 3])
def test_layer_parallel_nan_exits_4_and_keeps_a_finite_checkpoint(tmp_path, nranks):
    out, ck = tmp_path / "l.h5", tmp_path / "l.ckpt.h5"
    proc = run_cli(nranks, ["run", "layer-parallel", "--coarse-iterations", "0", "--lr", "1e300", "--depth", "6",
                            "--iterations", "20", "--checkpoint-every", "1", "--quiet", "--device", "cpu",
                            "--output", out], check=False, timeout=300)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert proc.stderr.count("error: ") == 1 and "non-finite" in proc.stderr and "iteration" in proc.stderr
    assert not out.exists()
    if ck.exists():   # written before the weights became non-finite
        expect_non_finite(proc, "non-finite", out, ck, nranks)


@pytest.mark.mpi
def test_layer_parallel_default_run_diverging_in_the_global_prediction(tmp_path):
    out = tmp_path / "l.h5"
    proc = run_cli(2, ["run", "layer-parallel", "--lr", "1e4", "--iterations", "5", "--quiet", "--device", "cpu",
                       "--output", out], check=False, timeout=300)
    expect_non_finite(proc, "training loss after iteration 0 (the coarse model's global prediction)", out)


def test_train_refuses_a_nan_learning_rate():
    spec = ResNetSpec(2, 4, 2, 4, "verlet", 4.0)
    params = init_params(spec, 0, torch.float64, torch.device("cpu"))
    data = {"x_train": torch.zeros(20, 2, dtype=torch.float64), "y_train": torch.zeros(20, dtype=torch.long),
            "x_test": torch.zeros(5, 2, dtype=torch.float64), "y_test": torch.zeros(5, dtype=torch.long)}
    with pytest.raises(ValueError, match="lr = nan"):
        train(MPI.COMM_SELF, spec, params, data, iterations=2, lr=math.nan, batch_size=4, seed=0)


@pytest.mark.mpi
def test_paso_runaway_is_flagged(tmp_path):
    out = tmp_path / "s.h5"
    proc = run_cli(2, ["run", "paso", "--lr", "1e4", "--steps", "60", "--device", "cpu", "--quiet",
                       "--output", out], timeout=300)
    assert "warning: PASO blew up" in proc.stderr and "warning: the sequential torch.optim run blew up" in proc.stderr
    with h5py.File(out) as f:
        assert f.attrs["blew_up"] and f.attrs["sequential_blew_up"]


# --- 3. Parareal restart reports totals -------------------------------------------------------------

@pytest.mark.mpi
def test_parareal_restart_reports_totals(tmp_path):
    """A run resumed from the last periodic checkpoint of a full run reports the full run's counters."""
    ck = tmp_path / "ck.h5"
    run_cli(2, ["run", "parareal", *LORENZ, "--checkpoint-every", "3", "--checkpoint", ck,
                "--output", tmp_path / "full.h5"], timeout=120)
    run_cli(2, ["run", "parareal", *LORENZ, "--restart", ck, "--checkpoint", tmp_path / "ck2.h5",
                "--output", tmp_path / "resumed.h5"], timeout=120)
    with h5py.File(tmp_path / "full.h5") as full, h5py.File(tmp_path / "resumed.h5") as resumed:
        assert resumed.attrs["restarted_from"] == str(ck)
        for name in ("fine_calls", "coarse_calls", "rhs_evaluations"):
            np.testing.assert_array_equal(full[f"counters/{name}"][()], resumed[f"counters/{name}"][()])
        assert "all segments" in resumed.attrs["timings_cover"]


# --- 4. signals and temporaries --------------------------------------------------------------------

LONG = ["run", "parareal", "--problem", "lorenz", "--intervals", "40", "--coarse-steps", "20", "--fine-steps",
        "1000", "--tol", "0", "--reference", "false"]


def test_sigusr1_in_the_first_moments_is_not_fatal(tmp_path):
    """One rank (a singleton): SIGUSR1 the moment its handler is installed, while numpy, torch and
    MPI are still being imported (before, the handler came ~0.5 s later: such a signal killed it)."""
    ck = tmp_path / "ck.h5"
    proc = subprocess.Popen([sys.executable, "-m", "paraflow_hpc", *LONG, "--quiet", "--checkpoint", ck,
                             "--output", tmp_path / "o.h5"], env=mpi_env(), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        started = time.time()
        while not catches_sigusr1(proc.pid) and time.time() - started < 60:
            time.sleep(0.002)
        proc.send_signal(signal.SIGUSR1)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, err
    meta, _ = verified(ck, 1)
    assert meta["iteration"] >= 1


def test_stop_handler_comes_before_the_heavy_imports():
    """What makes an early signal harmless: when the CLI installs the handlers, neither numpy nor
    mpi4py nor torch is imported yet (they take about a second on a loaded machine)."""
    code = ("import signal, sys\n"
            "install = signal.signal\n"
            "def spy(sig, handler):\n"
            "    print(sorted(m for m in ('numpy', 'mpi4py', 'torch') if m in sys.modules))\n"
            "    return install(sig, handler)\n"
            "signal.signal = spy\n"
            "from paraflow_hpc import cli\n"
            "cli.main(['run', 'parareal', '--help'])\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=mpi_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == ["[]", "[]"], done.stdout   # SIGUSR1, SIGTERM


def _signal_mpirun(tmp_path, sig, env=None):
    """Start LONG under mpirun -n 2, send ``sig`` to mpirun after iteration 0; (proc, stdout, stderr)."""
    proc = subprocess.Popen(["mpirun", "-n", "2", sys.executable, "-m", "paraflow_hpc", *LONG, "--checkpoint",
                             tmp_path / "ck.h5", "--output", tmp_path / "o.h5"], env={**mpi_env(), **(env or {})},
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        line, deadline = "", time.time() + 120
        while "iteration 0" not in line and time.time() < deadline:
            line = proc.stdout.readline()
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return proc, out, err


@pytest.mark.mpi
def test_sigusr1_to_mpirun_checkpoints_and_exits_3(tmp_path):
    proc, out, err = _signal_mpirun(tmp_path, signal.SIGUSR1)
    assert proc.returncode == 3 and "stop requested by SIGUSR1" in out, out + err
    verified(tmp_path / "ck.h5", 2)


@pytest.mark.mpi
def test_sigterm_to_mpirun_with_a_kill_timeout_keeps_a_checkpoint(tmp_path):
    """Open MPI 4.1: SIGTERM reaches the ranks odls_base_sigkill_timeout s after mpirun gets it, and
    SIGKILL as long again later; within that the ranks checkpoint. mpirun itself exits 1 (docs)."""
    proc, out, err = _signal_mpirun(tmp_path, signal.SIGTERM, {"OMPI_MCA_odls_base_sigkill_timeout": "8"})
    assert proc.returncode != 0 and "stop requested by SIGTERM" in out, out + err
    verified(tmp_path / "ck.h5", 2)


def test_stale_temporaries_are_removed(tmp_path):
    path = tmp_path / "ck.h5"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"ck.h5.partial-{dead.pid}"   # what a killed writer leaves (checkpoint._seal)
    stale.write_bytes(b"partial")
    other = tmp_path / "other.h5.partial-1"   # another checkpoint's temporary: not ours to remove
    other.write_bytes(b"x")
    checkpoint.save_checkpoint(MPI.COMM_SELF, str(path), "test", {}, {"w": np.zeros(3)})
    assert not stale.exists() and other.exists()
    verified(path, 1)


def test_paso_names_the_first_non_finite_accepted_step():
    """Losses non-finite from step 5 on at finite weights and gradients (a loss that overflows alone):
    the first window accepts steps 0..7 at once, and the run stops naming step 5, not the next
    window's left end 8 (the off-by-one this replaces)."""
    problem = make_problem("logreg", 1, 16)
    exact = problem.window_gradients

    def losses_nan_from_step_5(weights, steps, chunk=0):
        grads, losses = exact(weights, steps, chunk)
        return grads, np.where(np.asarray(steps) >= 5, np.nan, losses)

    problem.window_gradients = losses_nan_from_step_5
    w0 = problem.initial_weights()
    result = paso(MPI.COMM_SELF, problem, OptimizerSpec("sgd", 0.1, 16), w0, total_steps=16, window=8,
                  tol=1e30, adapt="fixed")
    assert result.diverged_at == 5 and result.state.t == 0


@pytest.mark.parametrize("left", ["result.ckpt.h5", "result.ckpt.h5.prev", None])
def test_slurm_step_restarts_from_a_checkpoint_or_its_prev(tmp_path, left):
    """paraflow_step (jobs/slurm-common.sh) with a stand-in srun that prints its arguments: a requeued
    job left with only NAME.ckpt.h5.prev (killed between the two renames) restarts from it too."""
    bin_dir, run_dir = tmp_path / "bin", tmp_path / "runs" / "42"
    bin_dir.mkdir()
    run_dir.mkdir(parents=True)
    (bin_dir / "srun").write_text('#!/bin/sh\necho "srun $*"\n')
    (bin_dir / "srun").chmod(0o755)
    if left:
        (run_dir / left).write_bytes(b"checkpoint")
    else:
        (run_dir / "job.log").write_text("")
    env = {**mpi_env(), "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "1",
           "SLURM_SUBMIT_DIR": str(tmp_path), "PARAFLOW_ROOT": str(ROOT)}
    done = subprocess.run(["bash", "-c", "source jobs/slurm-common.sh && paraflow_step run parareal --quiet"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    launched = next(line for line in done.stdout.splitlines() if line.startswith("srun --mpi"))
    assert ("--restart " + str(run_dir / "result.ckpt.h5") in launched) == (left is not None), launched


def _nan_at_evaluation(problem, which: int, grad_too: bool):
    """Make the ``which``-th full-batch evaluation (0-based) of ``problem`` return a NaN loss (and,
    with ``grad_too``, a NaN gradient: what NaN weights give; without, a loss that overflowed alone)."""
    exact, count = problem.value_and_grad, {"n": 0}

    def value_and_grad(W, idx=None):
        loss, g = exact(W, idx)
        if idx is None:
            count["n"] += 1
            if count["n"] - 1 == which:
                return math.nan, g * math.nan if grad_too else g
        return loss, g

    problem.value_and_grad = value_and_grad


@pytest.mark.parametrize("selection", ["break", "argmin"])
def test_paraflows_never_selects_a_nan_candidate(selection):
    """Evaluations of window 0: W_0, F(W_0) (candidate 1), then candidates 2, 3, ...: candidate 2 NaN.
    Before, ``loss >= previous`` was False for NaN, so "break" accepted it and went on from it."""
    problem = make_network_problem("classification")
    fine = Fine(problem, BatchSchedule(problem.n_samples, 5, 0), 5, 0.05)
    W0 = problem.initial_weights(0)
    _nan_at_evaluation(problem, 2, grad_too=True)
    result = paraflows(problem, fine, Coarse(problem, 5 * 0.05), W0, n_g=4, selection=selection, k_max=1)
    assert math.isfinite(result.loss) and result.stop_reason == "k_max"
    assert result.history["selected"][0] != 2


def test_paraflow_never_selects_a_nan_candidate():
    """One rank, N_G = 3, init coarse: evaluations W_0, W_{1,0}, W_{2,0}, then the candidates
    W_{1,1}, W_{2,1}, W_{3,1}; W_{1,1}'s loss is NaN and must not win (before, a NaN first in the
    argmin always did: every comparison with it is False)."""
    problem = make_network_problem("classification")
    fine = Fine(problem, BatchSchedule(problem.n_samples, 5, 0), 5, 0.05)
    W0 = problem.initial_weights(0)
    _nan_at_evaluation(problem, 3, grad_too=False)
    result = paraflow(MPI.COMM_SELF, problem, fine, Coarse(problem, 5 * 0.05), W0, n_intervals=3, k_max=1)
    assert math.isfinite(result.loss) and result.history["selected"][0] in (2, 3)
