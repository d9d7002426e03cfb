"""PAN: the subinterval solve (spectral convergence, exact initial condition, minimiser within the
tolerance), the error-controlled integrator (tolerance proportionality, rejections, failures,
dense output), identical decisions on 1, 2, 3 ranks, PETSc options, bad input, faults on one rank,
checkpoint/restart, and the scipy baselines of the paper's Table 1."""
import json

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI
from numpy.polynomial import chebyshev as cheb
from scipy.integrate import solve_ivp

from conftest import run_cli, run_script
from paraflow_hpc.algorithms.pan import (Evaluator, GaussNewton, PANError, clenshaw_curtis, collocation,
                                         pan_interval)
from paraflow_hpc.algorithms.pan_ivp import PANSolution, pan_ivp
from paraflow_hpc.comm import Timers
from paraflow_hpc.problems.ivp import IVP_PROBLEMS, IVP, Dahlquist, Spiral

SELF = MPI.COMM_SELF


def solve(problem, t0, t1, n_coeffs, tol=1e-10, newton_tol=0.1, options=""):
    """One subinterval from the problem's y0 (a fresh SNES, so options apply)."""
    from paraflow_hpc.algorithms.pan import insert_petsc_options, remove_petsc_options

    names = insert_petsc_options(SELF, options)
    col, timers = collocation(n_coeffs, n_coeffs), Timers()
    ev = Evaluator(SELF, problem, problem.dim, n_coeffs, timers)
    newton = GaussNewton(SELF, col, ev, newton_tol=newton_tol, max_it=20, timers=timers)
    try:
        tols = np.full(problem.dim, tol)
        out = pan_interval(col, ev, newton, problem.y0, problem.scipy_f(t0, problem.y0), t0, t1, atol=tols,
                           rtol=tols, picard_tol=1.0, picard_max_it=50)
        return out, newton.predicted_step(), newton.types
    finally:
        newton.destroy()
        remove_petsc_options(SELF, names)


def dense_error(result, problem, t0, tf, n=1001):
    grid = np.linspace(t0, tf, n)
    ref = solve_ivp(problem.scipy_f, (t0, tf), problem.y0, method="DOP853", rtol=1e-13, atol=1e-13,
                    dense_output=True).sol(grid)
    return float(np.max(np.abs(result.solution(grid) - ref)))


def test_clenshaw_curtis_integrates_polynomials_exactly():
    for m in (3, 4, 9, 20):
        x, w = clenshaw_curtis(m)
        assert x[0] == -1.0 and x[-1] == 1.0 and np.all(np.diff(x) > 0)
        for degree in range(m):
            exact = (1 - (-1) ** (degree + 1)) / (degree + 1)
            assert abs(w @ x ** degree - exact) < 1e-13


def test_spectral_convergence_on_a_smooth_problem():
    problem = Dahlquist()  # y' = (-1 + 2i) y, entire solution: error should fall geometrically in N
    exact = problem.exact(problem.tf)
    sizes = [6, 8, 10, 12, 14, 16]
    errors = [np.linalg.norm(solve(problem, 0.0, problem.tf, n, tol=1e-13)[0].y_end - exact) for n in sizes]
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse / 8, errors  # at least a constant factor per 2 more coefficients
    assert errors[-1] < 1e-9, errors
    slope = np.polyfit(sizes, np.log10(errors), 1)[0]
    assert slope < -0.8, (slope, errors)  # geometric, not algebraic: log(error) linear in N


def test_initial_condition_holds_exactly_for_any_coefficients():
    col, half = collocation(12, 15), 0.75
    y0, f0 = np.array([2.0, -1.0, 0.25]), np.array([0.3, 7.0, -4.0])
    G = col.offset(y0, f0, half)
    rng = np.random.default_rng(1)
    for _ in range(5):
        B = col.coefficients(rng.standard_normal((10, 3)), G)
        roundoff = 1e-15 * np.abs(B).sum() * 12 ** 2  # T_k'(-1) = ±k²: exact up to round-off
        assert np.allclose(cheb.chebval(-1.0, B), y0, rtol=0, atol=roundoff)
        assert np.allclose(cheb.chebval(-1.0, cheb.chebder(B)) / half, f0, rtol=0, atol=roundoff)
    out = solve(Spiral(), 0.0, 3.0, 20)[0]
    assert np.array_equal(out.y_end, out.coefficients.sum(axis=0))  # ŷ(t1): T_k(1) = 1
    assert np.max(np.abs(cheb.chebval(-1.0, out.coefficients) - Spiral().y0)) < 1e-14


def test_accepted_solve_is_a_minimiser_within_the_tolerance():
    # whatever path SNES takes (line search or full steps), the accepted point is one where the
    # next Gauss-Newton step would move ŷ by less than newton_tol x the tolerance
    for options in ("", "-snes_linesearch_type basic"):
        out, predicted, types = solve(Spiral(), 0.0, 2.5, 12, tol=1e-10, newton_tol=0.1, options=options)
        assert out.converged and predicted <= 0.1, (options, out.reason, predicted)
        if options:
            assert types["linesearch_type"] == "basic"
    a = solve(Spiral(), 0.0, 2.5, 12, tol=1e-10)[0]
    b = solve(Spiral(), 0.0, 2.5, 12, tol=1e-10, options="-snes_linesearch_type basic")[0]
    assert np.max(np.abs(a.y_nodes - b.y_nodes)) < 1e-9  # the same minimiser, to the tolerance


def test_dense_output_equals_the_collocation_solution_at_the_nodes():
    problem = Spiral()
    out = solve(problem, 1.0, 3.0, 14)[0]
    sol = PANSolution(np.array([1.0, 3.0]), out.coefficients[None])
    x = collocation(14, 14).x
    nodes = 1.0 + (x + 1.0)
    assert np.allclose(sol(nodes).T, out.y_nodes, rtol=0, atol=1e-13)
    assert np.allclose(sol(1.0), problem.y0, rtol=0, atol=1e-14) and sol(2.0).shape == (2,)
    # across a whole run: the value at every bound is the next subinterval's exact initial value
    result = pan_ivp(problem, (0.0, 10.0), problem.y0, rtol=1e-8, atol=1e-8, dense_output=True,
                     t_eval=[0.5, 2.0, 7.25])
    sol = result.sol
    assert np.array_equal(result.t, [0.5, 2.0, 7.25]) and np.array_equal(result.y, sol(result.t))
    for k in range(1, sol.n_segments):
        left = cheb.chebval(1.0, sol.coefficients[k - 1])
        right = cheb.chebval(-1.0, sol.coefficients[k])
        assert np.allclose(left, right, rtol=0, atol=1e-13)


SOLUTION_SIZE = {"spiral": 2.0, "pendulum": 2.5, "dahlquist": 1.0}  # max |y_j| over the run


@pytest.mark.parametrize("name", ["spiral", "pendulum", "dahlquist"])
def test_tolerance_controls_the_dense_grid_error(name):
    problem = IVP_PROBLEMS[name]()
    tols = [1e-4, 1e-6, 1e-8, 1e-10]
    errors = []
    for tol in tols:
        result = pan_ivp(problem, (problem.t0, problem.tf), problem.y0, rtol=tol, atol=tol)
        assert result.success and result.status == 0, result.message
        errors.append(dense_error(result, problem, problem.t0, problem.tf))
    # the tolerance as solve_ivp means it: atol + rtol |y| (|y| reaches 2.5 on the pendulum)
    allowed = 10 * np.array(tols) * (1.0 + SOLUTION_SIZE[name])
    assert np.all(np.array(errors) <= allowed), (errors, tols)      # meets the tolerance
    assert all(b < a for a, b in zip(errors, errors[1:])), errors   # and falls with it
    assert errors[-1] < errors[0] * 1e-4, errors


class StiffLinear(IVP):
    """y' = M y, eigenvalues -1 ± 2i and -50: mildly stiff (the case where a fixed h = 0.5 once
    returned success with errors far above the tolerance)."""

    name = "stiff-linear"
    tf = 5.0

    def __init__(self):
        self.M_np = np.array([[-1.0, -2.0, 0.0], [2.0, -1.0, 0.0], [1.0, 0.0, -50.0]])
        self.M = torch.from_numpy(self.M_np.copy())
        self.y0 = np.array([1.0, 0.0, 2.0])

    def f(self, t, Y):
        return Y @ self.M.T

    def scipy_f(self, t, y):
        return self.M_np @ y


def test_a_too_coarse_first_step_is_rejected_and_the_tolerance_met():
    problem = StiffLinear()
    for tol in (1e-6, 1e-9):
        result = pan_ivp(problem, (0.0, 5.0), problem.y0, rtol=tol, atol=tol, first_step=2.5, n_coeffs=12)
        assert result.success, result.message
        assert result.n_rejected >= 1 and result.state.history["h"][0] < 2.5
        assert dense_error(result, problem, 0.0, 5.0) <= 10 * tol


def test_an_unconverged_solve_is_a_rejection_not_an_answer():
    # one fixed-point and one Gauss-Newton iteration are not enough on long subintervals: those
    # solves must be rejected (counted) and the steps shortened until they converge
    problem = IVP_PROBLEMS["brusselator"]()
    result = pan_ivp(problem, (0.0, 20.0), problem.y0, rtol=1e-8, atol=1e-8, picard_max_it=3, newton_max_it=1,
                     first_step=5.0)
    assert result.success, result.message
    assert result.state.counts["failed_solves"] >= 1 and result.n_rejected >= result.state.counts["failed_solves"]
    assert dense_error(result, problem, 0.0, 20.0) <= 10 * 1e-8


class BlowsUp(Spiral):
    def f(self, t, Y):
        out = super().f(t, Y)
        return torch.where(t[:, None] > 0.5, torch.full_like(out, float("nan")), out)


class Singular(IVP):
    """y' = y², y(0) = 1: y = 1 / (1 - t) leaves every bound at t = 1."""

    name = "singular"
    tf = 2.0

    def __init__(self):
        self.y0 = np.array([1.0])

    def f(self, t, Y):
        return Y * Y


@pytest.mark.parametrize("problem", [BlowsUp(), Singular()])
def test_failure_at_the_minimum_step_is_reported_never_success(problem):
    result = pan_ivp(problem, (0.0, 2.0), problem.y0, rtol=1e-6, atol=1e-6)
    assert result.status == -1 and not result.success
    assert "step size" in result.message or "non-finite" in result.message, result.message
    assert result.state.t < 1.0 + 1e-6  # no step beyond the singularity was accepted
    assert result.t[-1] == result.state.t


def test_a_plain_torch_callable_and_integer_y0():
    A = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    result = pan_ivp(lambda t, Y: Y @ A.T, (0, np.pi), [1, 0], rtol=1e-9, atol=1e-9, t_eval=[np.pi])
    assert result.success and result.y.dtype == float
    assert np.allclose(result.y[:, -1], [-1.0, 0.0], atol=1e-8)


@pytest.mark.parametrize("kwargs, message", [
    (dict(rtol=0.0, atol=0.0), "no tolerance"), (dict(rtol=-1e-6), "finite and >= 0"),
    (dict(atol=[1e-6, 1e-6, 1e-6]), "one value per component"),
    (dict(n_coeffs=2), "n_coeffs = 2: need an integer >= 3"), (dict(n_coeffs=10, n_points=8), "n_points = 8"),
    (dict(t_span=(1.0, 1.0)), "t0 < tf"), (dict(t_span=(2.0, 1.0)), "forward only"),
    (dict(y0=[1 + 1j, 0]), "complex"), (dict(first_step=20.0), "first_step"),
    (dict(t_eval=[5.0, 1.0]), "t_eval"), (dict(n_coeffs=100000), "GiB per rank")])
def test_bad_input_is_refused_before_any_work(kwargs, message):
    args = {"t_span": (0.0, 10.0), "y0": [2.0, 1.0], **kwargs}
    with pytest.raises(PANError, match=message):
        pan_ivp(Spiral(), args.pop("t_span"), args.pop("y0"), **args)


class WrongShape(Spiral):
    def f(self, t, Y):
        return super().f(t, Y)[:, :1]


class ReturnsNumpy(Spiral):
    def f(self, t, Y):
        return super().f(t, Y).detach().numpy()


def test_bad_right_hand_sides_give_clear_errors():
    with pytest.raises(PANError, match=r"f returned \(1, 1\) .* must return .* \(1, 2\)"):
        pan_ivp(WrongShape(), (0.0, 1.0), [2.0, 1.0])
    with pytest.raises(PANError, match="f\\(t0, y0\\) is not finite"):
        pan_ivp(BlowsUp(), (0.6, 1.0), [2.0, 1.0])
    with pytest.raises(PANError, match="or its Jacobian failed at t0 = 0: TypeError: .* must compute in torch"):
        pan_ivp(ReturnsNumpy(), (0.0, 1.0), [2.0, 1.0])
    # with finite-difference Jacobians a numpy-returning f is fine
    assert pan_ivp(ReturnsNumpy(), (0.0, 1.0), [2.0, 1.0], jacobian="fd").success


def run_ranks(tmp_path, nranks, *args):
    out = tmp_path / f"run-{nranks}.json"
    run_script(nranks, "pan_ranks.py", out, *args)
    return json.loads(out.read_text())


@pytest.mark.mpi
def test_identical_decisions_and_counts_on_1_2_and_3_ranks(tmp_path):
    # Brusselator at tol 1e-8 with N = 16: rejections (error and unconverged solves) and
    # Gauss-Newton iterations occur; every decision must be the same bit for bit
    runs = [run_ranks(tmp_path, p, "brusselator", 16, 1e-8) for p in (1, 2, 3)]
    base = runs[0]
    assert base["counts"]["rejected"] >= 1 and base["counts"]["newton_iterations"] >= 1
    for run in runs[1:]:
        assert run["size"] > 1
        assert run["ts"] == base["ts"] and run["history"] == base["history"]
        assert run["counts"] == base["counts"]
        assert run["coefficients"] == base["coefficients"]  # exact: same bits
        assert run["per_rank_depth"] == [base["counts"]["batches"]] * run["size"]


@pytest.mark.mpi
def test_an_exception_on_one_rank_at_the_first_evaluation_ends_every_rank(tmp_path):
    proc = run_script(2, "pan_ranks.py", tmp_path / "x.json", "fail-on-rank-1", 16, 1e-6, check=False,
                      timeout=120)
    assert proc.returncode != 0
    assert "on rank 1: f(t0, y0) or its Jacobian failed at t0 = 0: RuntimeError: injected on rank 1" in proc.stderr


@pytest.mark.mpi
def test_an_exception_on_one_rank_later_aborts_every_rank(tmp_path):
    proc = run_script(2, "pan_ranks.py", tmp_path / "x.json", "fail-later-on-rank-1", 16, 1e-6, check=False,
                      timeout=120)
    assert proc.returncode != 0
    assert "rank 1 of 2 failed during an evaluation of f" in proc.stderr and "injected later" in proc.stderr


def test_scipy_baselines_reproduce_the_papers_table_1():
    from paraflow_hpc.bench.pan import PAPER, scipy_rows

    problem = Spiral()
    grid = np.linspace(0.0, 10.0, 1001)
    reference = solve_ivp(problem.scipy_f, (0.0, 10.0), problem.y0, method="DOP853", rtol=1e-13,
                          atol=1e-13, dense_output=True).sol(grid)
    rows = {r["method"]: r for r in scipy_rows(problem, 1e-6, grid, reference, paper=True,
                                                        methods=("RK45", "Radau", "BDF", "LSODA"))}
    for method in ("RK45", "Radau", "BDF", "LSODA"):
        error, nfe = PAPER["spiral"][(method, 1e-6)]
        assert rows[method]["scipy_nfev"] == int(nfe), method
        assert f"{rows[method]['error_end']:.2e}" == f"{error:.2e}", method
        # our own count adds the finite-difference Jacobian calls that Radau's and BDF's nfev omit
        assert rows[method]["points"] >= rows[method]["scipy_nfev"]


def read(path):
    with h5py.File(path, "r") as f:
        return {"attrs": dict(f.attrs), "coefficients": f["solution/coefficients"][()],
                "ts": f["data/ts"][()], "dense_t": f["data/dense_t"][()], "dense_y": f["data/dense_y"][()],
                "h": f["history/h"][()], "timings": {k: f["timings"][k][()] for k in f["timings"]}}


@pytest.mark.mpi
def test_cli_writes_the_piecewise_chebyshev_solution(tmp_path):
    out = tmp_path / "spiral.h5"
    proc = run_cli(2, ["run", "pan", "--problem", "spiral", "--rtol", "1e-8", "--atol", "1e-8", "--output",
                       str(out), "--petsc", "-snes_monitor -snes_linesearh_type basic"])
    assert "warning: PETSc option -snes_linesearh_type basic was not used" in proc.stderr
    assert proc.stderr.count("snes_linesearh_type") == 1
    result = read(out)
    attrs = result["attrs"]
    assert attrs["error"] <= 1e-7 and attrs["mpi_size"] == 2 and attrs["status"] == 0
    assert result["coefficients"].shape == (attrs["n_steps"], 32, 2)
    sol = PANSolution(result["ts"], result["coefficients"])
    assert np.allclose(sol(result["dense_t"]), result["dense_y"], rtol=0, atol=1e-14)
    assert attrs["depth"] > 0 and attrs["nfev"] > attrs["depth"]


@pytest.mark.parametrize("overrides, message", [
    ({"n_coeffs": "8", "n_points": "5"}, "n_points = 5: need an integer >= 8"),
    ({"n_coeffs": "2"}, "n_coeffs = 2: need an integer >= 3"),
    ({"tf": "-1"}, "need finite t0 < tf"),
    ({"rtol": "0", "atol": "0"}, "no tolerance"), ({"atol": "-1"}, "finite and >= 0"),
    ({"n_coeffs": "100000"}, "GiB per rank"),
    ({"petsc": "snes_monitor"}, "options start with '-'"),
    ({"petsc": "-snes_type 'newtonls"}, "cannot be parsed"),
    ({"petsc": "-snes_max_it=1"}, "PETSc takes '-snes_max_it 1'"),
    ({"problem": "nope"}, "choose one of"),
])
def test_bad_options_are_refused_with_the_fix(overrides, message):
    from paraflow_hpc.config import ConfigError, build_config
    from paraflow_hpc.runners.pan import Config

    with pytest.raises(ConfigError, match=message):
        build_config(Config, None, overrides, 1)


@pytest.mark.mpi
def test_cli_reports_a_failure_on_stderr_once_even_when_quiet(tmp_path):
    proc = run_script(2, "pan_cli.py", "run", "pan", "--problem", "singular", "--quiet", "--output",
                      str(tmp_path / "x.h5"), check=False)
    assert proc.returncode == 4, proc.stderr   # unconverged: never a success, and not a crash (1)
    assert proc.stderr.count("error: PAN failed") == 1 and proc.stdout == ""
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.mpi
def test_cli_refuses_a_petsc_value_of_the_wrong_type(tmp_path):
    proc = run_cli(1, ["run", "pan", "--output", str(tmp_path / "x.h5"), "--petsc", "-snes_max_it many"],
                   check=False)
    assert proc.returncode == 2 and "PETSc rejected the options '-snes_max_it many'" in proc.stderr


@pytest.mark.mpi
def test_restart_is_bit_identical(tmp_path):
    opts = ["run", "pan", "--problem", "brusselator", "--tf", "6", "--n-coeffs", "16", "--quiet"]
    full = tmp_path / "full.h5"
    run_cli(2, opts + ["--output", str(full), "--checkpoint-every", "2"])
    restarted = tmp_path / "restarted.h5"
    run_cli(2, opts + ["--output", str(restarted), "--restart", str(tmp_path / "full.ckpt.h5")])
    a, b = read(full), read(restarted)
    assert np.array_equal(a["ts"], b["ts"]) and np.array_equal(a["h"], b["h"])
    assert np.array_equal(a["coefficients"], b["coefficients"])
    assert np.array_equal(a["dense_y"], b["dense_y"])
    assert a["attrs"]["depth"] == b["attrs"]["depth"] and a["attrs"]["nfev"] == b["attrs"]["nfev"]
    assert b["attrs"]["restarted_from"].endswith("full.ckpt.h5")


def test_petsc_options_apply_to_one_call_and_unused_ones_are_reported():
    problem = Spiral()
    result = pan_ivp(problem, (0.0, 2.0), problem.y0, rtol=1e-8, atol=1e-8,
                     petsc_options="-snes_linesearch_type basic -snes_linesearh_type cp")
    assert result.success and result.solver_types["linesearch_type"] == "basic"
    assert result.options_left == ["-snes_linesearh_type cp"]
    again = pan_ivp(problem, (0.0, 2.0), problem.y0, rtol=1e-8, atol=1e-8)
    assert again.solver_types["linesearch_type"] == "bt" and again.options_left == []
    with pytest.raises(PANError, match="PETSc rejected the options '-snes_max_it many'"):
        pan_ivp(problem, (0.0, 2.0), problem.y0, petsc_options="-snes_max_it many")
    with pytest.raises(PANError, match="PETSc takes '-snes_max_it 1'"):
        pan_ivp(problem, (0.0, 2.0), problem.y0, petsc_options="-snes_max_it=1")


def test_finite_difference_jacobians_give_the_same_solution_within_the_tolerance():
    problem = IVP_PROBLEMS["brusselator"]()
    kw = dict(rtol=1e-8, atol=1e-8, t_eval=np.linspace(0.0, 20.0, 201))
    exact = pan_ivp(problem, (0.0, 20.0), problem.y0, **kw)
    fd = pan_ivp(problem, (0.0, 20.0), problem.y0, jacobian="fd", **kw)
    assert exact.success and fd.success and exact.nlu > 0
    assert np.max(np.abs(exact.y - fd.y)) < 1e-7
    assert fd.nfev > exact.nfev  # the shifted points are counted
    with pytest.raises(PANError, match="jacobian = 'numeric'"):
        pan_ivp(problem, (0.0, 1.0), problem.y0, jacobian="numeric")


@pytest.mark.parametrize("overrides, message", [
    ({"tols": "0"}, "need 0 < tol < 1"), ({"n_coeffs": "2"}, "n_coeffs = 2: need an integer >= 3"),
    ({"problems": "spiral,nope"}, "problem = 'nope' is not allowed"), ({"petsc": "-snes_max_it=1"}, "PETSc takes"),
    ({"tf": "-1"}, "tf = -1.0: need tf >= 0")])
def test_bench_options_go_through_the_same_checks(overrides, message):
    from paraflow_hpc.bench.pan import Config
    from paraflow_hpc.config import ConfigError, build_config

    with pytest.raises(ConfigError, match=message):
        build_config(Config, None, overrides, 1)
