"""Operations: a killed rank, a full disk, and the report command."""
import json
import os
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import mpi_env, run_cli, run_script

LONG_RUN = ["--problem", "lorenz", "--intervals", "8", "--coarse-steps", "16", "--fine-steps", "5000",
            "--tol", "0", "--checkpoint-every", "1", "--quiet"]


def _result(path):
    with h5py.File(path, "r") as f:
        return f["solution/boundaries"][()], f["history/update_norm"][()], f["history/error"][()]


@pytest.mark.mpi
def test_kill_one_rank_ends_job_and_restart_matches(tmp_path):
    ck = tmp_path / "ck.h5"
    cmd = ["mpirun", "-n", "2", sys.executable, "-m", "paraflow_hpc", "run", "parareal", *LONG_RUN,
           "--output", str(tmp_path / "killed.h5"), "--checkpoint", str(ck)]
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not ck.exists() and time.time() < deadline:
            time.sleep(0.2)
        assert ck.exists(), "no checkpoint written within 120 s"
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(ranks) == 2, ranks
        os.kill(int(ranks[-1]), signal.SIGKILL)
        t0 = time.time()
        proc.wait(timeout=60)  # bounded: no MPI hang after a rank dies
        assert proc.returncode != 0
        assert time.time() - t0 < 60
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert not (tmp_path / "killed.h5").exists()
    with h5py.File(ck, "r") as f:
        saved = json.loads(f.attrs["meta"])["iteration"]
    assert saved >= 1
    run_cli(2, ["run", "parareal", *LONG_RUN, "--restart", str(ck), "--checkpoint", str(tmp_path / "ck2.h5"),
                "--output", str(tmp_path / "restarted.h5")], timeout=300)
    run_cli(2, ["run", "parareal", *LONG_RUN, "--checkpoint-every", "0",
                "--output", str(tmp_path / "full.h5")], timeout=300)
    for restarted, full in zip(_result(tmp_path / "restarted.h5"), _result(tmp_path / "full.h5")):
        np.testing.assert_array_equal(restarted, full)


@pytest.fixture
def small_filesystem(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to simulate a full disk: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.mpi
def test_full_disk_keeps_last_checkpoint(small_filesystem):
    result = run_script(2, "checkpoint_disk_full.py", small_filesystem, timeout=120)
    assert "disk-full-ok" in result.stdout


def test_report_tables_and_plots(tmp_path):
    files = []
    for n in (1, 2):
        out = tmp_path / f"bru-{n}.h5"
        run_cli(n, ["run", "parareal", "--problem", "brusselator", "--intervals", "8", "--coarse-steps", "20",
                    "--fine-steps", "200", "--quiet", "--output", str(out), "--checkpoint-every", "1"])
        files.append(str(out))
    # `report results/*.h5` also matches the checkpoints beside the results: they are skipped, said once
    checkpoints = sorted(str(p) for p in tmp_path.glob("*.ckpt.h5"))
    assert checkpoints
    done = subprocess.run([sys.executable, "-m", "paraflow_hpc", "report", *files, *checkpoints,
                           "--out", str(tmp_path / "rep")], capture_output=True, text=True, env=mpi_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert all(done.stdout.count(f"note: {c} is a checkpoint") == 1 for c in checkpoints), done.stdout
    summary = (tmp_path / "rep" / "summary.md").read_text().splitlines()
    assert len(summary) == 4 and "bru-2.h5 | parareal | brusselator | 2" in summary[3]
    assert "wall_seconds" in summary[0] and "error_final" in summary[0]
    csv_lines = (tmp_path / "rep" / "summary.csv").read_text().splitlines()
    assert len(csv_lines) == 3
    import matplotlib.image as mpimg

    for name in ("convergence.png", "timings.png", "scaling.png"):
        image = mpimg.imread(tmp_path / "rep" / name)
        assert image.shape[0] > 300 and image.shape[1] > 500 and image.std() > 0.01, name
    # a PAN run: its table says whether it succeeded and what it cost (it has no iterations)
    pan = tmp_path / "pan.h5"
    run_cli(1, ["run", "pan", "--problem", "spiral", "--rtol", "1e-6", "--atol", "1e-6", "--quiet", "--output", str(pan)])
    done = subprocess.run([sys.executable, "-m", "paraflow_hpc", "report", files[0], str(pan), "--out",
                           str(tmp_path / "rep2")], capture_output=True, text=True, env=mpi_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    pan_table = (tmp_path / "rep2" / "summary.md").read_text().split("## pan")[1].splitlines()
    header = [c.strip() for c in pan_table[2].strip("|").split("|")]
    row = dict(zip(header, (c.strip() for c in pan_table[4].strip("|").split("|"))))
    assert row["status"] == "0" and int(row["n_steps"]) >= 1 and int(row["n_rejected"]) >= 0
    assert 0 < float(row["error"]) < 1e-4 and int(row["depth"]) >= 1, row
    bad = subprocess.run([sys.executable, "-m", "paraflow_hpc", "report", str(tmp_path / "none.h5")],
                         capture_output=True, text=True, env=mpi_env(), timeout=60)
    assert bad.returncode == 2 and "no such result file" in bad.stdout


@pytest.mark.mpi
def test_signal_to_one_rank_checkpoints_all_and_resumes_identically(tmp_path):
    """Preemption: SIGUSR1 reaching one rank only; the ranks agree, checkpoint, exit 3; resume is exact."""
    ck = tmp_path / "ck.h5"
    args = [a for a in LONG_RUN if a != "--quiet"]
    args[args.index("--checkpoint-every") + 1] = "0"  # only the signal triggers a checkpoint
    cmd = ["mpirun", "-n", "2", sys.executable, "-m", "paraflow_hpc", "run", "parareal", *args,
           "--output", str(tmp_path / "pre.h5"), "--checkpoint", str(ck)]
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        line = ""
        while "iteration 1:" not in line and time.time() < deadline:
            line = proc.stdout.readline()
        ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        os.kill(int(ranks[-1]), signal.SIGUSR1)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, err
    assert "stop requested" in out and "resume with --restart" in out
    assert ck.exists() and not (tmp_path / "pre.h5").exists()
    run_cli(2, ["run", "parareal", *LONG_RUN, "--checkpoint-every", "0", "--restart", str(ck),
                "--checkpoint", str(tmp_path / "ck2.h5"), "--output", str(tmp_path / "resumed.h5")], timeout=300)
    run_cli(2, ["run", "parareal", *LONG_RUN, "--checkpoint-every", "0", "--output", str(tmp_path / "full.h5")],
            timeout=300)
    for resumed, full in zip(_result(tmp_path / "resumed.h5"), _result(tmp_path / "full.h5")):
        np.testing.assert_array_equal(resumed, full)


def test_main_job_runs_end_to_end():
    """The README's first command (set-up is a no-op once done)."""
    # env from os.environ, not the C environment: once this pytest process has initialised MPI
    # as a singleton, Open MPI's variables in the latter make a child mpirun exit 1 silently.
    done = subprocess.run(["bash", "jobs/main.sh", "--quiet"], capture_output=True, text=True, timeout=600,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=mpi_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "summary of results/parareal-lorenz.h5: method=parareal ranks=2 iterations=11 converged=True" \
        in done.stdout
    assert "the schedule's bound" in done.stdout and "P/(K+1) = 2/12" in done.stdout


@pytest.mark.mpi
def test_report_of_a_benchmark_shows_its_configurations(tmp_path):
    """A bench file times configurations, not one run: report shows one row per configuration (not a
    row of NaN timings), and a scaling legend names the options that tell runs apart."""
    bench = tmp_path / "b.h5"
    run_cli(2, ["bench", "spacetime", "--nx", "8", "--intervals", "2", "--quiet", "--output", bench], timeout=180)
    done = subprocess.run([sys.executable, "-m", "paraflow_hpc", "report", str(bench), "--out", str(tmp_path / "rep")],
                          capture_output=True, text=True, env=mpi_env(), timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert "nan" not in summary.split("## ")[0], summary        # the file's own row: no timings to show
    rows = summary.split("one row per configuration")[1].strip().splitlines()
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    layouts = [dict(zip(header, (c.strip() for c in row.strip("|").split("|")))) for row in rows[2:]]
    assert sorted((r["time_groups"], r["space_ranks"]) for r in layouts) == [("1", "2"), ("2", "1")], summary
    with h5py.File(bench) as f:   # which solvers were measured
        assert (f.attrs["fine_ts_type"], f.attrs["fine_pc_type"], f.attrs["coarse_ts_type"]) == ("cn", "lu", "beuler")
    # an iterative F: G's factorization in the space-only run is never used (PETSc 3.18 failed destroying it)
    run_cli(2, ["bench", "spacetime", "--nx", "8", "--intervals", "2", "--quiet", "--petsc",
                "-fine_ksp_type gmres -fine_pc_type bjacobi", "--output", tmp_path / "it.h5"], timeout=180)
    # --out naming a file: one error line, exit 2 (was a FileExistsError traceback)
    done = subprocess.run([sys.executable, "-m", "paraflow_hpc", "report", str(bench), "--out", str(bench)],
                          capture_output=True, text=True, env=mpi_env(), timeout=120)
    assert done.returncode == 2 and "cannot be used as the report's directory" in done.stdout, done.stdout
    assert "Traceback" not in done.stderr, done.stderr
