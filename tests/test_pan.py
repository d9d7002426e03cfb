"""PAN: spectral convergence, exact initial condition, SNES from the Phase-1 guess, the round-off
floor, rank-count independence, PETSc options, bad input and SNES divergence, checkpoint/restart,
and the scipy baselines of the paper's Table 1."""
import json

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI
from numpy.polynomial import chebyshev as cheb

from conftest import run_cli, run_script
from paraflow_hpc.algorithms.pan import (Collocation, PANDiverged, PANError, clenshaw_curtis, pan,
                                         pan_interval)
from paraflow_hpc.comm import Timers, block_partition
from paraflow_hpc.problems.ivp import IVP_PROBLEMS, Dahlquist, Spiral

SELF = MPI.COMM_SELF


def counters():
    return dict.fromkeys(("batches_ls", "batches_newton", "point_evaluations_ls", "point_evaluations_newton",
                          "point_jacobians"), 0)


def solve(problem, t0, t1, n_coeffs, n_points=None, tol=1e-10, **kw):
    return pan_interval(SELF, problem, problem.y0, t0, t1, n_coeffs=n_coeffs, n_points=n_points or n_coeffs,
                        ls_tol=tol, ls_max_it=kw.pop("ls_max_it", 500), newton_tol=tol,
                        newton_max_it=kw.pop("newton_max_it", 50), counters=counters(), timers=Timers(), **kw)


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
    errors = [np.linalg.norm(solve(problem, 0.0, problem.tf, n).y_end - exact) for n in sizes]
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < coarse / 8, errors  # at least a constant factor per 2 more coefficients
    assert errors[-1] < 1e-9, errors
    slope = np.polyfit(sizes, np.log10(errors), 1)[0]
    assert slope < -0.8, (slope, errors)  # geometric, not algebraic: log(error) linear in N


def test_initial_condition_holds_exactly_for_any_coefficients():
    col = Collocation(12, 15, 0.5, 2.0)
    y0, f0 = np.array([2.0, -1.0, 0.25]), np.array([0.3, 7.0, -4.0])
    G = col.offset(y0, f0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        B = col.E @ rng.standard_normal((10, 3)) + G
        roundoff = 1e-15 * np.abs(B).sum() * 12 ** 2  # T_k'(-1) = ±k²: exact up to round-off
        assert np.allclose(cheb.chebval(-1.0, B), y0, rtol=0, atol=roundoff)
        assert np.allclose(cheb.chebval(-1.0, cheb.chebder(B)) / 0.75, f0, rtol=0, atol=roundoff)
    # the solved coefficients too, and ŷ(t1) is the value PAN steps on with
    problem = Spiral()
    out = solve(problem, 0.0, 3.0, 20)
    assert np.array_equal(out.y_end, out.coefficients.sum(axis=0))
    assert np.max(np.abs(cheb.chebval(-1.0, out.coefficients) - problem.y0)) < 1e-14


def test_snes_converges_from_the_phase_one_guess():
    norms = []
    out = solve(Spiral(), 0.0, 10.0, 30, tol=1e-9, monitor=lambda it, norm: norms.append(norm))
    assert out.reason.startswith("CONVERGED"), out.reason
    assert out.newton_iterations >= 1 and norms[0] > 1e-9 >= norms[-1]
    assert out.ls_iterations > 5  # Phase 1 did the bulk of the work and handed over
    assert norms[-1] < 1e-3 * norms[0]


def test_stepping_matches_a_reference_on_lorenz():
    from scipy.integrate import solve_ivp

    problem = IVP_PROBLEMS["lorenz"]()
    times = np.arange(0.0, 1.2 + 1e-12, 0.3)
    result = pan(SELF, problem, problem.y0, times, n_coeffs=20, n_points=20, ls_tol=1e-10, newton_tol=1e-10)
    ref = solve_ivp(problem.numpy_f, (0.0, 1.2), problem.y0, method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    assert np.linalg.norm(result.y_end - ref) < 1e-6 * np.linalg.norm(ref)
    assert result.state.done == 4 and len(result.state.coefficients) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_coeffs=2), "N >= 3"), (dict(n_coeffs=10, n_points=8), "M >= N"),
    (dict(n_coeffs=10, t0=1.0, t1=1.0), "t0 < t1"), (dict(n_coeffs=10, t0=2.0, t1=1.0), "t0 < t1")])
def test_bad_sizes_and_intervals_are_refused(kwargs, message):
    t0, t1 = kwargs.pop("t0", 0.0), kwargs.pop("t1", 1.0)
    with pytest.raises(PANError, match=message):
        solve(Spiral(), t0, t1, **kwargs)


class WrongShape(Spiral):
    def f(self, t, Y):
        return super().f(t, Y)[:, :1]


class BlowsUp(Spiral):
    def f(self, t, Y):
        out = super().f(t, Y)
        return torch.where(t[:, None] > 0.5, torch.full_like(out, float("nan")), out)


def test_bad_right_hand_sides_give_clear_errors():
    with pytest.raises(PANError, match=r"f returned shape \(1, 1\) .* must return .* \(1, 2\)"):
        solve(WrongShape(), 0.0, 1.0, 10)
    with pytest.raises(PANError, match="non-finite values on \\[0, 1\\]"):
        solve(BlowsUp(), 0.0, 1.0, 10)


def test_snes_divergence_is_reported_with_the_petsc_reason():
    with pytest.raises(PANDiverged, match="DIVERGED_MAX_IT") as info:
        solve(Spiral(), 0.0, 10.0, 30, tol=1e-30, ls_max_it=3, petsc_options="-snes_max_it 1")
    assert info.value.reason == "DIVERGED_MAX_IT"
    # the option was removed again: the next solve uses the defaults
    assert solve(Spiral(), 0.0, 10.0, 20, tol=1e-9).reason.startswith("CONVERGED")


def test_round_off_floor_is_accepted_only_at_a_minimiser():
    # N = 7 with tol 1e-10: the line search on e stalls (the decrease is below e's rounding error)
    floor = solve(Spiral(), 0.0, 2.5, 7, tol=1e-10)
    assert floor.reason == "CONVERGED_ROUNDOFF (PETSc: DIVERGED_LINE_SEARCH)"
    full_steps = solve(Spiral(), 0.0, 2.5, 7, tol=1e-10, petsc_options="-snes_linesearch_type basic")
    assert full_steps.reason == "CONVERGED_FNORM_ABS"  # the same minimiser, reached without a line search
    assert np.max(np.abs(floor.coefficients - full_steps.coefficients)) < 1e-10
    # away from a minimiser a line-search failure is still an error
    with pytest.raises(PANDiverged, match="DIVERGED_LINE_SEARCH"):
        solve(IVP_PROBLEMS["lorenz"](), 0.0, 1.5, 20, tol=1e-9, ls_max_it=1,
              petsc_options="-snes_linesearch_max_it 1 -snes_linesearch_minlambda 0.5")


def run_ranks(tmp_path, nranks, problem, n_coeffs, n_points, length, tol):
    out = tmp_path / f"{problem}-{nranks}.json"
    run_script(nranks, "pan_ranks.py", out, problem, n_coeffs, n_points, length, tol)
    return json.loads(out.read_text())


@pytest.mark.mpi
def test_same_answer_on_1_2_and_3_ranks(tmp_path):
    # spiral stepped over 4 subintervals, 4-5 points per rank at 3 ranks; a tolerance well above
    # the round-off floor, so that no stopping decision hinges on the order of a sum
    runs = [run_ranks(tmp_path, p, "spiral", 12, 14, 2.5, 1e-8) for p in (1, 2, 3)]
    base = runs[0]
    for run in runs[1:]:
        assert run["size"] > 1
        assert run["ls"] == base["ls"] and run["newton"] == base["newton"]
        assert np.allclose(run["y_end"], base["y_end"], rtol=1e-12, atol=1e-13)
        assert np.allclose(run["coefficients"], base["coefficients"], rtol=1e-10, atol=1e-12)
        # every rank takes part in every batch, so each counts the same parallel depth; the run's
        # totals (depth, point evaluations summed over ranks) do not depend on P
        assert len(set(map(tuple, run["per_rank_batches"]))) == 1
        assert run["totals"] == base["totals"]
        assert run["totals"]["batches_ls"] == run["per_rank_batches"][0][0]
        # each rank evaluates f only at its own block of the 14 nodes
        blocks = [block_partition(14, run["size"], r) for r in range(run["size"])]
        assert run["per_rank_newton_points"] == [run["totals"]["batches_newton"] * (b - a) for a, b in blocks]


def test_scipy_baselines_reproduce_the_papers_table_1():
    from scipy.integrate import solve_ivp

    from paraflow_hpc.bench.pan import PAPER, scipy_rows

    problem = Spiral()
    reference = solve_ivp(problem.numpy_f, (0.0, 10.0), problem.y0, method="DOP853", rtol=1e-13,
                          atol=1e-13).y[:, -1]
    rows = {r["method"]: r for r in scipy_rows(problem, 1e-6, reference)}
    for method in ("RK45", "Radau", "BDF", "LSODA"):
        error, nfe = PAPER["spiral"][(method, 1e-6)]
        assert rows[method]["scipy_nfev"] == int(nfe), method
        assert f"{rows[method]['error']:.2e}" == f"{error:.2e}", method
        # our own count adds the finite-difference Jacobian calls that Radau's and BDF's nfev omit
        assert rows[method]["points"] >= rows[method]["scipy_nfev"]


def read(path):
    with h5py.File(path, "r") as f:
        return {"attrs": dict(f.attrs), "coefficients": f["solution/coefficients"][()],
                "y_end": f["data/y_end"][()], "newton": f["history/newton_iterations"][()],
                "timings": {k: f["timings"][k][()] for k in f["timings"]},
                "counters": {k: f["counters"][k][()] for k in f["counters"]}}


@pytest.mark.mpi
def test_cli_passes_petsc_options_and_writes_every_rank(tmp_path):
    out = tmp_path / "spiral.h5"
    proc = run_cli(2, ["run", "pan", "--problem", "spiral", "--n-coeffs", "16", "--output", str(out),
                       "--petsc", "-snes_monitor -snes_type newtontr -ksp_type gmres -pc_type jacobi"])
    assert "SNES Function norm" in proc.stdout
    result = read(out)
    attrs = result["attrs"]
    assert (attrs["snes_type"], attrs["ksp_type"], attrs["pc_type"]) == ("newtontr", "gmres", "jacobi")
    assert attrs["error"] < 1e-3 and attrs["mpi_size"] == 2
    assert result["coefficients"].shape == (1, 16, 2)  # one subinterval: rank 1 owns no row
    assert result["timings"]["f"].shape == (2,) and np.all(result["timings"]["f"] > 0)
    assert result["counters"]["point_evaluations_ls"].sum() == attrs["nfe_ls"]


@pytest.mark.parametrize("overrides, message", [
    ({"n_coeffs": "8", "n_points": "5"}, "n_points = 5 is fewer than n_coeffs = 8"),
    ({"n_coeffs": "2"}, "n_coeffs = 2: PAN needs N >= 3"),
    ({"tf": "-1"}, "tf = -1.0 must be greater than t0 = 0.0"),
    ({"petsc": "snes_monitor"}, "PETSc options start with '-'"),
    ({"petsc": "-snes_type 'newtonls"}, "cannot be parsed"),
    ({"problem": "nope"}, "choose one of"),
])
def test_bad_options_are_refused_with_the_fix(overrides, message):
    from paraflow_hpc.config import ConfigError, build_config
    from paraflow_hpc.runners.pan import Config

    with pytest.raises(ConfigError, match=message):
        build_config(Config, None, overrides, 1)


@pytest.mark.mpi
def test_cli_reports_snes_divergence(tmp_path):
    proc = run_cli(1, ["run", "pan", "--n-coeffs", "12", "--tol", "1e-30", "--ls-max-it", "2",
                       "--output", str(tmp_path / "x.h5"), "--petsc", "-snes_max_it 1"], check=False)
    assert proc.returncode == 1 and "PETSc reason DIVERGED_MAX_IT" in proc.stdout


@pytest.mark.mpi
def test_restart_is_bit_identical(tmp_path):
    opts = ["run", "pan", "--problem", "lorenz", "--tf", "0.9", "--n-coeffs", "12", "--quiet"]
    full = tmp_path / "full.h5"
    run_cli(2, opts + ["--output", str(full), "--checkpoint-every", "1"])
    # the last checkpoint was written after subinterval 2 of 3: continue from it
    restarted = tmp_path / "restarted.h5"
    run_cli(2, opts + ["--output", str(restarted), "--restart", str(tmp_path / "full.ckpt.h5")])
    a, b = read(full), read(restarted)
    assert np.array_equal(a["y_end"], b["y_end"])
    assert np.array_equal(a["coefficients"], b["coefficients"])
    assert np.array_equal(a["newton"], b["newton"])
    assert a["attrs"]["batches_ls"] == b["attrs"]["batches_ls"]
    assert b["attrs"]["restarted_from"].endswith("full.ckpt.h5")
