"""The job scripts on a real single-node Slurm (jobs/slurm-local.sh, brought up here): a job's
result equals mpirun's; every method's script, preempted like ``--signal=B:USR1@N`` does, checkpoints,
requeues itself and resumes to the result of an uninterrupted run; a cancel stays a cancel; job
arrays (a sweep, a row of the ParaFlow grid); a strong-scaling study; ``paraflow-hpc report`` on
the jobs' results.

Jobs are polled with ``scontrol show job`` every second (``sbatch --wait`` polls at growing
intervals of up to a minute). Each test submits from its own tmp_path, so run directories
(tmp_path/runs/<jobid>) and job logs stay there.
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import ROOT, mpi_env, run_cli

pytestmark = pytest.mark.slurm

SMALL = ["--problem", "lorenz", "--intervals", "8", "--coarse-steps", "16", "--fine-steps", "100"]
# Long enough (about a second per iteration on this loaded 2-core machine) to be hit in the middle.
LONG = ["--problem", "lorenz", "--intervals", "8", "--coarse-steps", "16", "--fine-steps", "3000", "--tol", "0"]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
         "DEADLINE", "PREEMPTED"}


@pytest.fixture(scope="session")
def slurm():
    """A real single-node Slurm for the session (installed if needed), taken down afterwards so no
    daemon outlives the tests. Needs root, or sudo without a password."""
    command = ["bash", str(ROOT / "jobs" / "slurm-local.sh")]
    if os.geteuid() != 0:
        if shutil.which("sudo") is None or subprocess.run(["sudo", "-n", "true"], capture_output=True,
                                                          timeout=30).returncode != 0:
            pytest.skip("a local Slurm needs root (packages, daemons): not root and no password-less sudo")
        command = ["sudo", "-n", *command]
    up = subprocess.run([*command, "up"], capture_output=True, text=True, timeout=900)
    if up.returncode == 3:  # slurm-local.sh: the packages cannot be installed here
        pytest.skip(up.stderr.strip())
    if up.returncode != 0:
        subprocess.run([*command, "down"], capture_output=True, timeout=120)  # what did start
        pytest.fail(f"jobs/slurm-local.sh up failed:\n{up.stdout}\n{up.stderr}")
    yield
    down = subprocess.run([*command, "down"], capture_output=True, text=True, timeout=120)
    assert down.returncode == 0, down.stderr


def sbatch(cwd, script, *args, options=()) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *options, str(ROOT / "jobs" / script), *map(str, args)],
                          cwd=cwd, env={**os.environ, "PARAFLOW_ROOT": str(ROOT)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_records(job: str) -> list[dict]:
    """``scontrol show job -o``: one record per job (per array task for an array)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in proc.stdout.splitlines() if line.strip()]


def logs(cwd) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(cwd.glob("*.out")))


def wait_until(cwd, job: str, done, timeout: float, what: str, poll: float = 1.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        records = job_records(job)
        if done(records):
            return records
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job], timeout=30)
            pytest.fail(f"job {job}: no {what} after {timeout} s: {records}\n{logs(cwd)}")
        time.sleep(poll)


def wait_finished(cwd, job: str, timeout: float = 180, count: int = 1) -> list[dict]:
    records = wait_until(cwd, job, lambda rs: len(rs) == count and all(r["JobState"] in FINAL for r in rs),
                         timeout, "end")
    failed = [r for r in records if r["JobState"] != "COMPLETED"]
    assert not failed, f"{failed}\n{logs(cwd)}"
    return records


def load(path) -> dict:
    with h5py.File(path, "r") as f:
        return {"boundaries": f["solution/boundaries"][()],
                "history": {k: f["history"][k][()] for k in f["history"]},
                "iterations": int(f.attrs["iterations"]), "mpi_size": int(f.attrs["mpi_size"]),
                "config": json.loads(f.attrs["config"]), "restarted_from": f.attrs["restarted_from"]}


def direct(tmp_path, nranks, args) -> dict:
    out = tmp_path / f"direct-{nranks}.h5"
    run_cli(nranks, ["run", "parareal", "--quiet", "--output", str(out), *args])
    return load(out)


def assert_same_run(a: dict, b: dict) -> None:
    np.testing.assert_array_equal(a["boundaries"], b["boundaries"])
    assert a["history"].keys() == b["history"].keys()
    for name in a["history"]:
        np.testing.assert_array_equal(a["history"][name], b["history"][name], err_msg=name)
    assert a["iterations"] == b["iterations"]


def test_parareal_job_equals_mpirun(slurm, tmp_path):
    args = [*SMALL, "--tol", "1e-8"]
    job = sbatch(tmp_path, "parareal.sbatch", *args, options=["--ntasks-per-node=2"])
    wait_finished(tmp_path, job, timeout=120)
    result = load(tmp_path / "runs" / job / "result.h5")
    assert result["mpi_size"] == 2 and result["config"]["tol"] == 1e-8
    assert "srun --mpi=pmix" in (tmp_path / "runs" / job / "job.log").read_text()
    assert_same_run(result, direct(tmp_path, 2, args))


def test_user_problem_job_equals_mpirun(slurm, tmp_path):
    """A user's problem file (docs/examples/pendulum.py, beside the job script's submit directory,
    named by a relative path) and its arguments pass through the job script to srun."""
    shutil.copy(ROOT / "docs" / "examples" / "pendulum.py", tmp_path / "pendulum.py")
    args = ["--problem", "pendulum.py:Pendulum", "--problem-args", "damping=0.3,theta0=1.5", "--intervals", "8",
            "--coarse-steps", "4", "--fine-steps", "40"]
    job = sbatch(tmp_path, "parareal.sbatch", *args, options=["--ntasks-per-node=2"])
    wait_finished(tmp_path, job, timeout=120)
    result = load(tmp_path / "runs" / job / "result.h5")
    assert result["config"]["problem"] == "pendulum.py:Pendulum"
    assert result["config"]["problem_args"] == {"damping": 0.3, "theta0": 1.5}
    out = tmp_path / "direct.h5"
    run_cli(2, ["run", "parareal", "--quiet", "--output", str(out), *args], cwd=tmp_path)
    assert_same_run(result, load(out))


# Space-time Parareal (jobs/spacetime.sbatch): a heat2d run of about a second under mpirun.
SPACETIME = ["--problem", "heat2d", "--nx", "8", "--intervals", "4", "--fine-steps", "4"]


def test_spacetime_job_equals_mpirun(slurm, tmp_path, monkeypatch):
    """jobs/spacetime.sbatch on two layouts, each equal to ``mpirun paraflow-hpc run spacetime`` on the
    same P x S (everything computed, timings aside): 4 tasks with PARAFLOW_SPACE_RANKS=2 (P = 2 time
    groups of S = 2 space ranks), and ``sbatch -n 2`` with the default S, which must fit the 2 tasks
    (the script's header asks for --ntasks-per-node=4): S = 2. The second job also runs the
    ``bench spacetime`` step on the same options."""
    monkeypatch.delenv("PARAFLOW_SPACE_RANKS", raising=False)
    monkeypatch.delenv("PARAFLOW_BENCH", raising=False)
    split = sbatch(tmp_path, "spacetime.sbatch", *SPACETIME,
                   options=["--ntasks-per-node=4", "--export=ALL,PARAFLOW_SPACE_RANKS=2,PARAFLOW_BENCH=0"])
    default = sbatch(tmp_path, "spacetime.sbatch", *SPACETIME, options=["--ntasks=2"])
    # while the jobs run: the same runs under mpirun (the script adds --checkpoint-every 1; no --quiet)
    direct = {}
    for job, (nranks, space_ranks) in ((split, (4, 2)), (default, (2, 2))):
        direct[job] = tmp_path / f"direct-{nranks}x{space_ranks}.h5"
        run_cli(nranks, ["run", "spacetime", "--space-ranks", str(space_ranks), "--checkpoint-every",
                         "1", "--output", str(direct[job]), *SPACETIME], timeout=180)
    for job, layout in ((split, (2, 2)), (default, (1, 2))):
        wait_finished(tmp_path, job, timeout=240)
        result = tmp_path / "runs" / job / "result.h5"
        with h5py.File(result, "r") as f:
            assert (int(f.attrs["time_groups"]), int(f.attrs["space_ranks"])) == layout
            assert int(f.attrs["mpi_size"]) == layout[0] * layout[1]
            assert int(f.attrs["iterations"]) == 4 and f["solution/u"].shape == (4, 8, 8)
        a, b = computed(direct[job]), computed(result)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_equal(b[key], a[key], err_msg=f"job {job}: {key}")
    log = (tmp_path / "runs" / split / "job.log").read_text()
    assert "--space-ranks 2" in log and "srun --mpi=pmix" in log and "bench spacetime" not in log
    log = (tmp_path / "runs" / default / "job.log").read_text()
    assert "[paraflow] S = 2 space ranks of the 2 tasks (P = 1 time groups" in log, log
    assert "[paraflow] step bench done" in log, log

    # the benchmark step: space-only (1 x 2) and space-time (2 x 1) on the job's 2 tasks, same problem
    bench = tmp_path / "runs" / default / "bench.h5"
    with h5py.File(bench, "r") as f:
        assert f.attrs["method"] == "bench-spacetime" and int(f.attrs["mpi_size"]) == 2
        config = json.loads(f.attrs["config"])
        assert (config["problem"], config["nx"], config["intervals"], config["fine_steps"]) == ("heat2d", 8, 4, 4)
        data = {k: f["data"][k][()] for k in f["data"]}
    assert list(data["space_ranks"]) == [2, 1] and list(data["time_groups"]) == [1, 2]
    assert data["iterations"][0] == 0 and 1 <= data["iterations"][1] <= 4
    assert data["speedup"][0] == 1.0 and data["error"][1] < 1e-5   # the benchmark's default tol
    for key in ("seconds", "model_seconds", "tau_fine", "serial_fine_seconds"):
        assert np.all(np.isfinite(data[key]) & (data[key] > 0)), key
    table = (bench.parent / "bench.md").read_text()
    assert "heat2d on 8 x 8, N = 4" in table and "| 1 x 2 (space-only) |" in table and "| 2 x 1 |" in table
    assert (bench.parent / "bench.png").stat().st_size > 0


def test_cancelled_or_killed_job_ends_and_scontrol_requeue_resumes_it(slurm, tmp_path):
    """scancel sends SIGTERM: the ranks may still checkpoint, but the job must not requeue itself
    (scontrol requeue would also take the cancelled job back). kill -9 of one rank: Slurm's PMIx
    plugin aborts the step at once (no MPI hang) and the job fails. Either way the last complete
    checkpoint stays, and ``scontrol requeue`` resumes the job to an uninterrupted run's result."""
    cancelled = sbatch(tmp_path, "parareal.sbatch", *LONG, options=["--ntasks-per-node=2"])
    killed = sbatch(tmp_path, "parareal.sbatch", *LONG, options=["--ntasks-per-node=2"])
    run_dir = {job: tmp_path / "runs" / job for job in (cancelled, killed)}
    # Each is hit right after its first periodic checkpoint (iteration 1 of 8; polled often).
    for job in run_dir:
        wait_until(tmp_path, job, lambda rs, j=job: (run_dir[j] / "result.ckpt.h5").exists()
                   or rs[0]["JobState"] in FINAL, 120, "checkpoint", poll=0.1)
        if job == cancelled:
            subprocess.run(["scancel", cancelled], check=True, timeout=30)
        else:
            pids = ranks(run_dir[killed] / "result.h5")
            assert len(pids) == 2, (pids, logs(tmp_path))
            os.kill(max(pids), signal.SIGKILL)
    for job, last_words in ((cancelled, "[paraflow] stopped on SIGTERM"), (killed, "failed with exit code")):
        wait_until(tmp_path, job, lambda rs: rs[0]["JobState"] in FINAL, 60, "end")
        # the batch shell's last words come after the state change: give it KillWait (5 s) to write them
        log = run_dir[job] / "job.log"
        wait_until(tmp_path, job, lambda rs: last_words in log.read_text()
                   or "failed with exit code" in log.read_text(), 15, "last log line")
    time.sleep(2)
    states = {job: (job_records(job)[0]["JobState"], job_records(job)[0]["Restarts"]) for job in run_dir}
    assert states == {cancelled: ("CANCELLED", "0"), killed: ("FAILED", "0")}, logs(tmp_path)
    assert not any((d / "result.h5").exists() for d in run_dir.values())

    for job in run_dir:
        subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
    reference = direct(tmp_path, 2, LONG)  # while the requeued jobs wait to be started again
    for job, directory in run_dir.items():
        (record,) = wait_finished(tmp_path, job, timeout=240)
        assert record["Restarts"] == "1"
        assert f"restarting from {directory / 'result.ckpt.h5'} after iteration" in (directory / "job.log").read_text()
        assert_same_run(load(directory / "result.h5"), reference)


def test_job_arrays_sweep_and_paraflows_grid(slurm, tmp_path):
    sweep = tmp_path / "tols.sweep"
    sweep.write_text("# one line per array task\n--tol 1e-2\n\n--tol 1e-10\n"
                     "--problem lorenz --coarse-steps 16 --tol 1e-6\n")
    common = ["--problem", "brusselator", "--intervals", "8", "--coarse-steps", "20", "--fine-steps", "100"]
    # Row 5 of the ParaFlow paper's grid (classification, full batch, eta_F 0.01) with a small budget
    # and two N_F instead of the row's own (later options win).
    grid = sbatch(tmp_path, "paraflows_grid.sbatch", "--budgets", "2000", "--n-fs", "10,50", "--n-g", "4",
                  options=["--array=5"])
    job = sbatch(tmp_path, "sweep.sbatch", sweep.name, *common, options=["--array=0-2"])
    records = wait_finished(tmp_path, job, timeout=240, count=3)
    assert sorted(int(r["ArrayTaskId"]) for r in records) == [0, 1, 2]
    results = [load(tmp_path / "runs" / f"{job}_{task}" / "result.h5") for task in range(3)]
    # each task's line overrides the common options
    assert [(r["config"]["problem"], r["config"]["coarse_steps"], r["config"]["tol"]) for r in results] == \
        [("brusselator", 20, 1e-2), ("brusselator", 20, 1e-10), ("lorenz", 16, 1e-6)]
    assert results[0]["iterations"] < results[1]["iterations"]

    wait_finished(tmp_path, grid, timeout=240)
    with h5py.File(tmp_path / "runs" / f"{grid}_5" / "result.h5", "r") as f:
        assert json.loads(f.attrs["rows"]) == [["classification", "full", 0.01, 2000]]
        assert f["data/ratio"].shape == (1, 2) and np.all(np.isfinite(f["data/ratio"][()]))
    assert "| full | 0.01 | 2e+03 |" in (tmp_path / "runs" / f"{grid}_5" / "result.md").read_text()


def test_scaling_study_runs_each_rank_count_and_reports(slurm, tmp_path):
    job = sbatch(tmp_path, "parareal_scaling.sbatch", *SMALL, "--tol", "1e-8", options=["--ntasks-per-node=4"])
    wait_finished(tmp_path, job, timeout=240)
    run_dir = tmp_path / "runs" / job
    results = {p: load(run_dir / f"ranks-{p}.h5") for p in (1, 2, 4)}
    assert [r["mpi_size"] for r in results.values()] == [1, 2, 4]
    assert_same_run(results[1], results[4])  # Parareal's iterates do not depend on the rank count
    summary = (run_dir / "report" / "summary.md").read_text()
    assert all(f"ranks-{p}.h5" in summary for p in (1, 2, 4))
    assert (run_dir / "report" / "scaling.png").stat().st_size > 0


# Every method's script with a small config (from the method's own tests) of a few iterations:
# name -> (script, args, method attribute). Parareal imports no torch, so its start-up is short:
# its iterations must leave the signal time to arrive.
METHOD_JOBS = {
    "parareal": ("parareal.sbatch", ["--problem", "lorenz", "--intervals", "8", "--coarse-steps", "16",
                                     "--fine-steps", "1500", "--tol", "0"], "parareal"),
    "paraflow": ("paraflow.sbatch", ["--problem", "approximation", "--k-max", "3", "--budget", "0"], "paraflow"),
    "paraflows": ("paraflows.sbatch", ["--problem", "approximation", "--k-max", "3", "--n-g", "4",
                                       "--baseline", "false", "--budget", "0"], "paraflows"),
    "paso": ("paso.sbatch", ["--problem", "mlp", "--optimizer", "adam", "--lr", "0.01", "--steps", "30",
                             "--window", "4"], "paso"),
    "pan": ("pan.sbatch", ["--problem", "lorenz", "--tf", "0.6", "--n-coeffs", "12"], "pan"),
    "layer_parallel": ("layer_parallel.sbatch", ["--problem", "ellipses", "--samples", "400", "--depth", "8",
                                                 "--width", "4", "--lr", "0.5", "--batch-size", "32",
                                                 "--iterations", "30", "--coarse-iterations", "8"], "layer-parallel"),
    # the script's default layout on --ntasks-per-node=2: S = 2 space ranks, P = 1 (a checkpoint of
    # each rank's piece of the DMDA states); 4 iterations, stopped after the first
    "spacetime": ("spacetime.sbatch", ["--problem", "heat2d", "--nx", "16", "--intervals", "4",
                                       "--fine-steps", "64", "--tol", "0"], "spacetime"),
}
# Metadata that differs between any two runs, and paths that differ between these two.
RUN_SPECIFIC = {"created", "command", "hostnames", "git_revision", "versions", "restarted_from", "config"}
PATHS = {"output", "checkpoint", "restart"}


def computed(path) -> dict:
    """Everything a run computed: config (without paths), attributes and the /solution, /data and
    /history datasets, without timings (anything named *seconds*, *speedup* or efficiency)."""
    out = {}

    def take(name, obj):
        if isinstance(obj, h5py.Dataset) and "seconds" not in name:
            out[name] = obj[()]

    with h5py.File(path, "r") as f:
        for group in ("solution", "data", "history"):
            if group in f:
                f[group].visititems(lambda name, obj, g=group: take(f"{g}/{name}", obj))
        out["config"] = {k: v for k, v in json.loads(f.attrs["config"]).items() if k not in PATHS}
        out["attrs"] = {k: v for k, v in f.attrs.items()
                        if k not in RUN_SPECIFIC and "seconds" not in k and "speedup" not in k
                        and k != "efficiency"}   # timing-derived, like the speed-ups
    return out


def all_records() -> dict[str, dict]:
    proc = subprocess.run(["scontrol", "show", "job", "-o"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in proc.stdout.splitlines() if line.strip()]
    return {r["JobId"]: r for r in records}


def ranks(output) -> dict[int, bool]:
    """The ranks writing ``output`` (the local Slurm runs them on this machine): pid -> whether its
    SIGUSR1 handler is installed (``SigCgt`` in /proc/PID/status). Before that, SIGUSR1 would kill
    a rank; from then on a stop request is kept until the run's next iteration boundary."""
    found = {}
    for status in glob.glob("/proc/[0-9]*/status"):
        pid = int(status.split("/")[2])
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                argv = fh.read().decode().split("\0")
            with open(status) as fh:
                caught = int(re.search(r"SigCgt:\s*([0-9a-f]+)", fh.read())[1], 16)
        except (OSError, TypeError):  # the process ended meanwhile
            continue
        if "python" in os.path.basename(argv[0]) and str(output) in argv:  # not srun, which names it too
            found[pid] = bool(caught >> (signal.SIGUSR1 - 1) & 1)
    return found


def test_every_method_script_preempted_resumes_to_the_same_result(slurm, tmp_path, monkeypatch):
    """Each method's script twice with the same config: once uninterrupted, once signalled like
    ``--signal=B:USR1@N`` does (``scancel --signal=USR1 --batch``) while it runs: it must
    checkpoint, requeue itself, resume from the checkpoint and end with the same result. Then
    ``paraflow-hpc report`` over all of them."""
    monkeypatch.setenv("PAN_BENCH", "0")  # pan.sbatch's optional benchmark step
    monkeypatch.setenv("PARAFLOW_BENCH", "0")  # spacetime.sbatch's
    monkeypatch.delenv("PARAFLOW_SPACE_RANKS", raising=False)
    # The preempted jobs go first: the references run while they wait to be started again.
    preempted = {name: sbatch(tmp_path, script, *args, options=["--ntasks-per-node=2"])
                 for name, (script, args, _) in METHOD_JOBS.items()}
    plain = {name: sbatch(tmp_path, script, *args, options=["--ntasks-per-node=2"])
             for name, (script, args, _) in METHOD_JOBS.items()}
    run_dir = {job: tmp_path / "runs" / job for job in [*preempted.values(), *plain.values()]}

    # Each preempted job is signalled as soon as both its ranks catch SIGUSR1, so the stop comes at
    # the run's first iteration boundary whatever the machine's speed, and most of it runs after
    # the requeue.
    unsignalled, deadline = dict(preempted), time.monotonic() + 300
    while unsignalled:
        records = all_records()
        for name, job in list(unsignalled.items()):
            if sum(ranks(run_dir[job] / "result.h5").values()) == 2:
                subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True, timeout=30)
                del unsignalled[name]
            elif records[job]["JobState"] in FINAL:
                pytest.fail(f"{name} job {job} ended before it was signalled: {records[job]}\n{logs(tmp_path)}")
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *run_dir], timeout=30)
            pytest.fail(f"ranks of {unsignalled} not started after 300 s\n{logs(tmp_path)}")
        time.sleep(0.2)

    deadline = time.monotonic() + 400
    while True:
        records = all_records()
        ended = {job: (records[job]["JobState"], records[job]["Restarts"]) for job in run_dir
                 if records[job]["JobState"] in FINAL}
        expected = {**{job: ("COMPLETED", "0") for job in plain.values()},
                    **{job: ("COMPLETED", "1") for job in preempted.values()}}
        wrong = {job: state for job, state in ended.items() if state != expected[job]}
        if wrong or len(ended) == len(run_dir):
            break
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *run_dir], timeout=30)
            pytest.fail(f"jobs not finished after 400 s: { {j: records[j]['JobState'] for j in run_dir} }\n"
                        f"{logs(tmp_path)}")
        time.sleep(1)
    if wrong:
        subprocess.run(["scancel", *run_dir], timeout=30)
    assert not wrong, f"(state, restarts) of {wrong}, expected {expected}\n{logs(tmp_path)}"

    results = []
    for name, (script, _, method) in METHOD_JOBS.items():
        uninterrupted, resumed = run_dir[plain[name]] / "result.h5", run_dir[preempted[name]] / "result.h5"
        checkpoint = run_dir[preempted[name]] / "result.ckpt.h5"
        log = (run_dir[preempted[name]] / "job.log").read_text()
        assert "(stop requested by SIGUSR1)" in log and f"restarting from {checkpoint}" in log, f"{name}:\n{log}"
        assert f"preempted (step result stopped after writing {checkpoint})" in log, f"{name}:\n{log}"
        with h5py.File(resumed, "r") as f:
            assert (f.attrs["method"], int(f.attrs["mpi_size"])) == (method, 2), script
            assert f.attrs["restarted_from"] == str(checkpoint), script
            # no GPU allocated to the job: the torch methods run on the CPU
            assert json.loads(f.attrs["config"]).get("device", "cpu") == "cpu", script
            if method == "spacetime":  # the script's default S: the 2 tasks of the node
                assert (int(f.attrs["time_groups"]), int(f.attrs["space_ranks"])) == (1, 2)
        a, b = computed(uninterrupted), computed(resumed)
        assert a.keys() == b.keys(), name
        for key in a:
            np.testing.assert_equal(b[key], a[key], err_msg=f"{name}: {key}")
        results += [uninterrupted, resumed]
    check_report(tmp_path, results)


def check_report(tmp_path, results):
    """``paraflow-hpc report`` over every method's results: a table per method, readable plots."""
    out = tmp_path / "report"
    # the console script beside this interpreter: the test command does not put .venv/bin on PATH
    script = os.path.join(os.path.dirname(sys.executable), "paraflow-hpc")
    done = subprocess.run([script, "report", *map(str, results), "--out", str(out)],
                          capture_output=True, text=True, env=mpi_env(), timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    sections = (out / "summary.md").read_text().split("## ")[1:]
    assert [s.split("\n")[0] for s in sections] == [method for _, _, method in METHOD_JOBS.values()]
    for section, pair in zip(sections, zip(results[::2], results[1::2])):
        rows = [line for line in section.splitlines() if line.startswith("| ") and "/result.h5" in line]
        # runs are told apart by their job directory, not just "result.h5"
        assert [row.split(" | ")[0] for row in rows] == [f"| {p.parent.name}/result.h5" for p in pair], section
    assert len((out / "summary.csv").read_text().splitlines()) == 1 + len(results)
    import matplotlib.image as mpimg

    for name, min_height in (("convergence.png", 300 * len(METHOD_JOBS)), ("timings.png", 300)):
        image = mpimg.imread(out / name)
        assert image.shape[0] > min_height and image.shape[1] > 500 and image.std() > 0.01, name
