"""Parareal under a real mpirun: exactness at k = N, rank-count independence, restart, bad input."""
import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import run_cli, run_script
from paraflow_hpc.problems.ode import ODE_PROBLEMS
from paraflow_hpc.propagators import make_propagator

pytestmark = pytest.mark.mpi

SMALL = {  # problem: (intervals, coarse steps, fine steps) small enough for 2 oversubscribed cores
    "dahlquist": (8, 1, 20), "lorenz": (8, 16, 100), "brusselator": (8, 20, 100),
    "heat": (8, 20, 100), "quadratic": (8, 4, 40),
}


def serial_fine(problem_name, intervals, fine_steps):
    problem = ODE_PROBLEMS[problem_name]()
    fine = make_propagator("rk4", problem.f, fine_steps)
    times = np.linspace(problem.t0, problem.tf, intervals + 1)
    u, out = problem.y0(), []
    for n in range(intervals):
        u = fine(u, times[n], times[n + 1])
        out.append(u)
    return np.array(out)


def run_parareal(tmp_path, nranks, name="run", extra=(), exit_code=0, **opts):
    """The run's result file; ``exit_code`` 4: stopped unconverged at k_max (written, not a success)."""
    out = tmp_path / f"{name}-{nranks}.h5"
    args = ["run", "parareal", "--quiet", "--output", str(out)]
    for key, value in opts.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = run_cli(nranks, args + list(extra), check=False)
    assert proc.returncode == exit_code, proc.stderr[-3000:]
    if exit_code == 4:
        assert proc.stderr.count("error: Parareal did not converge") == 1, proc.stderr[-3000:]
    with h5py.File(out, "r") as f:
        return {"boundaries": f["solution/boundaries"][()], "update": f["history/update_norm"][()],
                "residual": f["history/residual_norm"][()], "attrs": dict(f.attrs),
                "error": f["history/error"][()], "iterations": int(f.attrs["iterations"]),
                "converged": bool(f.attrs["converged"]), "config": json.loads(f.attrs["config"]),
                "timings": {k: f["timings"][k][()] for k in f["timings"]}, "mpi_size": int(f.attrs["mpi_size"])}


@pytest.mark.parametrize("problem", sorted(SMALL))
def test_k_equal_n_reproduces_serial_fine(tmp_path, problem):
    intervals, coarse_steps, fine_steps = SMALL[problem]
    result = run_parareal(tmp_path, 4, problem=problem, intervals=intervals, coarse_steps=coarse_steps,
                          fine_steps=fine_steps, tol=0, k_max=0)
    # tol = 0 runs to k = N unless a residual is exactly zero (a fixed point reached earlier)
    assert result["iterations"] == intervals or result["residual"][-1] == 0.0
    reference = serial_fine(problem, intervals, fine_steps)
    scale = np.max(np.abs(reference))
    assert np.max(np.abs(result["boundaries"] - reference)) <= 1e-12 * scale
    assert result["error"][-1] <= 1e-12 * scale


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_iterates_do_not_depend_on_rank_count(tmp_path, nranks):
    opts = dict(problem="brusselator", intervals=12, coarse_steps=4, fine_steps=30, tol=1e-9)
    result = run_parareal(tmp_path, nranks, **opts)
    baseline = run_parareal(tmp_path, 3, name="baseline", **opts)
    assert result["mpi_size"] == nranks and result["converged"]
    assert result["iterations"] == baseline["iterations"] < 12
    np.testing.assert_array_equal(result["boundaries"], baseline["boundaries"])
    np.testing.assert_array_equal(result["update"], baseline["update"])
    assert set(result["timings"]) >= {"coarse", "fine", "wait", "total"}
    assert all(len(v) == nranks for v in result["timings"].values())


def test_dahlquist_error_decreases_monotonically(tmp_path):
    result = run_parareal(tmp_path, 2, problem="dahlquist", intervals=10, coarse_steps=1, fine_steps=50,
                          tol=0, k_max=0)
    errors = result["error"]
    assert len(errors) == 11 and errors[0] > 1e-3
    assert np.all(np.diff(errors[:-1]) < 0), errors
    assert errors[-1] < 1e-14


def test_lorenz_reference_iteration_counts(tmp_path):
    """Gander–Hairer check: N = 180, G = 1 RK4 step, F = 80 RK4 steps: k = 8 / 11 reach 1e-2 / 1e-6."""
    result = run_parareal(tmp_path, 2, problem="lorenz", intervals=180, coarse_steps=1, fine_steps=80,
                          tol=1e-9)
    errors = result["error"]
    assert int(np.argmax(errors < 1e-2)) == 8
    assert int(np.argmax(errors < 1e-6)) == 11


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    """tests/mpi_scripts/parareal_rules.py on 1, 2 and 3 ranks."""
    out = {}
    for nranks in (1, 2, 3):
        path = tmp_path_factory.mktemp("rules") / "rules.json"
        run_script(nranks, "parareal_rules.py", path, timeout=240)
        out[nranks] = json.loads(path.read_text())
    return out


def test_no_fine_solve_after_the_decision_to_stop(rules):
    """y' = 0 with exact G, N = 8: each rank solves F once per subinterval (the serial fine work
    spread over the ranks), and none after the decision: [4, 4] on 2 ranks, not [7, 8]."""
    for nranks, expected in ((1, [8]), (2, [4, 4]), (3, [3, 3, 2])):
        res, upd = rules[nranks]["calls/residual"], rules[nranks]["calls/update"]
        assert res["fine_calls"] == expected and res["iterations"] == 0 and res["converged"]
        assert upd["fine_calls"] == expected and upd["iterations"] == 1 and upd["converged"]
    # pipelined: the next iteration's fine sweep (on subintervals n >= 1) runs ahead and is dropped
    assert rules[2]["calls/residual/pipelined"]["fine_calls"] == [7, 8]
    assert rules[2]["calls/update/pipelined"]["fine_calls"] == [7, 8]


@pytest.mark.parametrize("case", ["dahlquist-be", "dahlquist-fe", "brusselator"])
def test_residual_rule_stops_before_the_update_rule(rules, case):
    """The update ||U^K - U^{K-1}|| measures the error of U^{K-1}, so the update rule stops one
    iteration after an accurate iterate; the residual rule stops at the first iterate with a small
    residual, whose error is bounded by N times it (F stable). Same decisions on 1, 2, 3 ranks."""
    tol = 1e-8
    res, upd = rules[2][f"{case}/residual"], rules[2][f"{case}/update"]
    k_res, k_upd = res["iterations"], upd["iterations"]
    assert res["converged"] and upd["converged"]
    assert upd["errors"][k_upd - 1] <= tol  # the update rule's last iteration was not needed
    assert k_res <= k_upd - 1
    assert res["residuals"][k_res] <= tol < res["residuals"][k_res - 1]
    n_intervals = {"dahlquist-be": 32, "dahlquist-fe": 64, "brusselator": 16}[case]
    assert res["errors"][k_res] <= n_intervals * tol
    for nranks in (1, 2, 3):  # the same iterates and decisions on any rank count, either schedule
        for rule in ("residual", "update"):
            assert rules[nranks][f"{case}/{rule}"] == rules[2][f"{case}/{rule}"]
            assert rules[nranks][f"{case}/{rule}/pipelined"] == rules[2][f"{case}/{rule}"]


def test_speedup_bound_is_reported(tmp_path):
    result = run_parareal(tmp_path, 2, problem="brusselator", intervals=8, coarse_steps=20, fine_steps=100)
    attrs = result["attrs"]
    np.testing.assert_allclose(attrs["efficiency"], attrs["speedup"] / attrs["model_speedup"])
    # P / (fine sweeps) with K + 1 sweeps on 2 ranks, less the coarse work
    assert 0 < attrs["model_speedup"] <= 2 / (result["iterations"] + 1) * 1.0001


@pytest.mark.parametrize("pipelined", [False, True])
def test_restart_is_bit_identical(tmp_path, pipelined):
    opts = dict(problem="lorenz", intervals=12, coarse_steps=12, fine_steps=40, tol=1e-10, pipelined=pipelined)
    full = run_parareal(tmp_path, 2, name="full", **opts,
                        checkpoint=tmp_path / "ck.h5", checkpoint_every=3)
    assert full["iterations"] > 6
    with h5py.File(tmp_path / "ck.h5", "r") as f:
        saved = json.loads(f.attrs["meta"])["iteration"]
    assert 3 <= saved < full["iterations"] and saved % 3 == 0
    restarted = run_parareal(tmp_path, 2, name="restarted", **opts, restart=tmp_path / "ck.h5",
                             checkpoint=tmp_path / "ck2.h5")
    np.testing.assert_array_equal(restarted["boundaries"], full["boundaries"])
    np.testing.assert_array_equal(restarted["update"], full["update"])
    np.testing.assert_array_equal(restarted["residual"], full["residual"])
    np.testing.assert_array_equal(restarted["error"], full["error"])
    assert restarted["iterations"] == full["iterations"]


def _expect_failure(nranks, args, message, tmp_path):
    result = run_cli(nranks, ["run", "parareal", "--quiet", "--output", str(tmp_path / "bad.h5"), *args],
                     check=False, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ck")
    run_cli(2, ["run", "parareal", "--quiet", "--problem", "lorenz", "--intervals", "8", "--fine-steps", "64",
                "--coarse-steps", "16", "--tol", "0", "--checkpoint-every", "2", "--k-max", "0",
                "--output", str(tmp / "r.h5"), "--checkpoint", str(tmp / "ck.h5")])
    return tmp / "ck.h5"


def test_truncated_checkpoint_is_refused(tmp_path, checkpoint):
    bad = tmp_path / "truncated.h5"
    data = checkpoint.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    _expect_failure(2, ["--problem", "lorenz", "--intervals", "8", "--fine-steps", "64", "--coarse-steps", "16",
                        "--tol", "0", "--k-max", "0", "--restart", str(bad)], "fails its checksum", tmp_path)


def test_edited_checkpoint_is_refused(tmp_path, checkpoint):
    bad = tmp_path / "edited.h5"
    shutil.copy(checkpoint, bad)
    with h5py.File(bad, "r+") as f:
        f["rank_00000/boundaries"][1, 0] += 1e-9
    _expect_failure(2, ["--problem", "lorenz", "--intervals", "8", "--fine-steps", "64", "--coarse-steps", "16",
                        "--tol", "0", "--k-max", "0", "--restart", str(bad)], "fails its checksum", tmp_path)


def test_checkpoint_from_other_rank_count_or_problem_is_refused(tmp_path, checkpoint):
    common = ["--intervals", "8", "--fine-steps", "64", "--coarse-steps", "16", "--tol", "0", "--k-max", "0",
              "--restart", str(checkpoint)]
    _expect_failure(3, ["--problem", "lorenz", *common], "restart with mpirun -n 2", tmp_path)
    _expect_failure(2, ["--problem", "brusselator", *common], "problem = 'lorenz'", tmp_path)


@pytest.mark.parametrize("args, message", [
    (["--problem", "kepler"], "problem = 'kepler' is not allowed; choose one of"),
    (["--t0", "1", "--tf", "1"], "tf = 1.0 must be greater than t0 = 1.0"),
    (["--intervals", "1"], "intervals = 1 is smaller than the 2 MPI ranks"),
    (["--fine-steps", "0"], "fine_steps = 0: must be >= 1"),
    (["--coarse-steps", "-3"], "coarse_steps = -3: must be >= 1"),
    (["--tol", "nan"], "tol = 'nan': must be a finite number"),
    (["--tf", "inf"], "tf = 'inf': must be a finite number"),
    (["--colour", "red"], "unknown option 'colour' for parareal; allowed:"),
    (["--fine-stpes", "3"], "unknown option 'fine_stpes' for parareal; did you mean --fine-steps? allowed:"),
    (["--intervals", "ten"], "intervals = 'ten': expected int"),
    (["--fine-steps"], "--fine-steps needs a value: --fine-steps VALUE"),
    (["--stop", "jump"], "stop = 'jump' is not allowed; choose one of: residual, update"),
    (["--norm", "l1"], "norm = 'l1' is not allowed; choose one of: max, l2"),
])
def test_bad_input_fails_on_every_rank(tmp_path, args, message):
    result = _expect_failure(2, args, message, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count(message) == 1  # one message (from rank 0) for both ranks, no hang


def test_unstable_coarse_propagator_is_reported(tmp_path):
    result = run_cli(2, ["run", "parareal", "--quiet", "--problem", "brusselator", "--intervals", "8",
                         "--output", str(tmp_path / "d.h5")], check=False)
    assert result.returncode == 4 and "Parareal diverged in iteration 1" in result.stderr


def test_unwritable_output_path(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    result = run_cli(2, ["run", "parareal", "--quiet", "--output", str(blocked / "out.h5")], check=False)
    assert result.returncode == 2 and "is not writable" in result.stderr


def test_missing_config_file_and_toml_overrides(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text('problem = "brusselator"\nintervals = 6\nfine_steps = 60\n[parareal]\ncoarse_steps = 20\n')
    out = tmp_path / "t.h5"
    run_cli(2, ["run", "parareal", "--config", str(cfg), "--intervals", "4", "--quiet", "--output", str(out)])
    with h5py.File(out, "r") as f:
        config = json.loads(f.attrs["config"])
    assert (config["problem"], config["intervals"], config["fine_steps"], config["coarse_steps"]) == \
        ("brusselator", 4, 60, 20)
    result = run_cli(2, ["run", "parareal", "--config", str(tmp_path / "none.toml")], check=False)
    assert result.returncode == 2 and "does not exist" in result.stderr


def test_scipy_fine_propagator(tmp_path):
    """F = solve_ivp(DOP853): at k = N Parareal reproduces the serial chain of the same solver."""
    result = run_parareal(tmp_path, 2, problem="dahlquist", intervals=4, coarse_steps=2, fine="dop853",
                          fine_rtol=1e-9, fine_atol=1e-12, tol=0, k_max=0)
    problem = ODE_PROBLEMS["dahlquist"]()
    fine = make_propagator("dop853", problem.f, rtol=1e-9, atol=1e-12)
    times = np.linspace(problem.t0, problem.tf, 5)
    u, reference = problem.y0(), []
    for n in range(4):
        u = fine(u, times[n], times[n + 1])
        reference.append(u)
    assert np.max(np.abs(result["boundaries"] - np.array(reference))) <= 1e-12


def test_bench_writes_hdf5_and_table(tmp_path):
    """``paraflow-hpc bench parareal`` on small cases: consistent numbers in HDF5 and the table."""
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "parareal", "--problems", "brusselator,lorenz", "--scale", "0.25", "--quiet",
                "--output", out], timeout=240)
    with h5py.File(out) as f:
        data = {k: f["data"][k][()] for k in f["data"]}
        assert f.attrs["method"] == "bench-parareal"
    assert [p.decode() for p in data["problem"]] == ["brusselator", "lorenz"]
    assert list(data["intervals"]) == [4, 8]
    assert np.all((data["iterations"] >= 1) & (data["iterations"] <= data["intervals"]))
    assert np.all(data["final_error"] < 1e-6)  # converged to tol 1e-8 on the update
    np.testing.assert_allclose(data["speedup"], data["serial_seconds"] / data["parareal_seconds"])
    np.testing.assert_allclose(data["efficiency"], data["speedup"] / data["model_speedup"])
    table = (tmp_path / "bench.md").read_text().splitlines()
    assert table[0].startswith("| problem | ranks | N | K |") and len(table) == 4
    assert table[2].startswith("| brusselator | 2 | 4 |")


@pytest.mark.parametrize("norm", ["l2", "max"])
def test_relative_measure_divides_by_the_iterate(tmp_path, norm):
    opts = dict(problem="brusselator", intervals=8, coarse_steps=20, fine_steps=100, tol=0, k_max=3, norm=norm)
    absolute = run_parareal(tmp_path, 2, name="abs", exit_code=4, **opts)
    relative = run_parareal(tmp_path, 2, name="rel", exit_code=4, **opts, relative="true")
    np.testing.assert_array_equal(relative["boundaries"], absolute["boundaries"])
    U = absolute["boundaries"]
    size = np.linalg.norm(np.linalg.norm(U, axis=1)) if norm == "l2" else np.max(np.abs(U))
    np.testing.assert_allclose(relative["residual"][-1], absolute["residual"][-1] / size, rtol=1e-12)
