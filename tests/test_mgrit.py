"""MGRIT under a real mpirun: Parareal as its two-level case, PyMGRIT's iterates, the CLI."""
import json

import h5py
import numpy as np
import pytest

from conftest import run_cli, run_script

pytestmark = pytest.mark.mpi

# linear (Dahlquist with forward Euler, heat with RK4) and nonlinear (Brusselator), 2-4 levels, F and FCF
PYMGRIT_CASES = [
    {"problem": "dahlquist", "intervals": 64, "m": 2, "levels": 2, "steps": 2, "propagator": "euler",
     "tol": 1e-11, "max_iter": 40, "relax": "F", "cycle": "V"},
    {"problem": "dahlquist", "intervals": 64, "m": 2, "levels": 4, "steps": 4, "propagator": "euler",
     "tol": 1e-11, "max_iter": 40, "relax": "FCF", "cycle": "V"},
    {"problem": "heat", "intervals": 32, "m": 2, "levels": 3, "steps": [8, 12, 20], "propagator": "euler",
     "tol": 1e-11, "max_iter": 40, "relax": "F", "cycle": "V"},
    {"problem": "heat", "intervals": 32, "m": 4, "levels": 2, "steps": [8, 30], "propagator": "euler",
     "tol": 1e-11, "max_iter": 40, "relax": "FCF", "cycle": "F"},
    {"problem": "brusselator", "tf": 10, "intervals": 64, "m": 2, "levels": 4, "steps": 5, "tol": 1e-11,
     "max_iter": 40, "relax": "F", "cycle": "F"},
    {"problem": "brusselator", "tf": 10, "intervals": 48, "m": 4, "levels": 3, "steps": 8, "tol": 1e-11,
     "max_iter": 40, "relax": "FCF", "cycle": "V"},
]


@pytest.mark.parametrize("nranks", [1, 2, 3, 4])
def test_iterates_agree_with_pymgrit(tmp_path, nranks):
    """Same propagators, identity transfers, nested iteration, 2-norm residual: every iterate of
    every cycle agrees with PyMGRIT's to round-off, and so do the residuals and the cycle counts."""
    pytest.importorskip("pymgrit")
    out = tmp_path / "cmp.json"
    run_script(nranks, "mgrit_pymgrit.py", out, json.dumps(PYMGRIT_CASES), timeout=300)
    for case, got in zip(PYMGRIT_CASES, json.loads(out.read_text())):
        assert got["iterations"] == got["pymgrit_iterations"] >= 2, case
        assert got["compared"] == got["iterations"]
        assert max(got["max_diff"]) <= 1e-13, (case, got["max_diff"])
        np.testing.assert_allclose(got["residuals"], got["pymgrit_residuals"], rtol=1e-8, atol=1e-15)
        # stopped at the first small residual (or exactness, k = N / m_0 on two levels)
        assert got["residuals"][-1] <= case["tol"] < got["residuals"][-2]


@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_two_levels_with_f_relaxation_are_parareal(tmp_path, nranks):
    """Two levels, F-relaxation, nested iteration: the C-point values of cycle k are Parareal's U^k
    (G = Phi_1, F = Phi_0 over m fine steps) for every k, the residual of cycle k is Parareal's
    residual of U^k, and at k = N/m MGRIT is the serial fine solution at every fine point."""
    out = tmp_path / "eq.json"
    run_script(nranks, "mgrit_parareal.py", out, timeout=300)
    for name, got in json.loads(out.read_text()).items():
        mg, par = np.array(got["mgrit"], float), np.array(got["parareal"], float)
        assert mg.shape == par.shape and len(mg) == 6
        np.testing.assert_allclose(mg, par, rtol=0, atol=1e-13 * np.max(np.abs(par)))
        np.testing.assert_allclose(got["mgrit_residuals"], got["parareal_residuals"][1:], rtol=1e-10, atol=1e-16)
        assert got["error_at_k_equal_n"] <= 1e-13 * got["scale"]


def test_spatial_coarsening_hook(tmp_path):
    """Heat on 31 points, coarse levels on 15 (injection / linear interpolation): with FCF-relaxation
    MGRIT converges to the serial fine solution (the tolerance controls the error), the same on
    1, 2, 3 ranks; F-relaxation alone cannot remove the C-point residual that restriction drops."""
    results = {}
    for nranks in (1, 2, 3):
        out = tmp_path / f"space-{nranks}.json"
        run_script(nranks, "mgrit_space.py", out, timeout=240)
        results[nranks] = json.loads(out.read_text())
    for case in ("FCF-L2", "FCF-L3"):
        got = results[2][case]
        assert got["converged"] and got["iterations"] <= 10 and got["error"] <= 1e-11
        for nranks in (1, 3):
            assert results[nranks][case] == got
    assert not results[2]["F-L2"]["converged"] and min(results[2]["F-L2"]["residuals"]) > 1e-3


def run_mgrit(tmp_path, nranks, name="run", check=True, **opts):
    out = tmp_path / f"{name}-{nranks}.h5"
    args = ["run", "mgrit", "--quiet", "--output", str(out)]
    for key, value in opts.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    result = run_cli(nranks, args, check=check, timeout=240)
    if not check:
        return result
    with h5py.File(out, "r") as f:
        return {"u": f["solution/u"][()], "residual": f["history/residual_norm"][()],
                "error": f["history/error"][()], "iterations": int(f.attrs["iterations"]),
                "converged": bool(f.attrs["converged"]), "calls": f["counters/calls_level0"][()]}


SMALL = dict(problem="brusselator", intervals=256, levels=3, coarsening=4, steps="1,1,4", tol=1e-9)


@pytest.mark.parametrize("nranks", [1, 2, 3])
def test_cli_result_does_not_depend_on_rank_count(tmp_path, nranks):
    result = run_mgrit(tmp_path, nranks, **SMALL, relaxation="FCF", cycle="F")
    baseline = run_mgrit(tmp_path, 2, name="base", **SMALL, relaxation="FCF", cycle="F")
    assert result["converged"] and 2 <= result["iterations"] < 20
    assert result["u"].shape == (257, 2)  # every fine time point
    np.testing.assert_array_equal(result["u"], baseline["u"])
    np.testing.assert_array_equal(result["residual"], baseline["residual"])
    assert np.isnan(result["residual"][0]) and result["residual"][-1] <= 1e-9 < result["residual"][-2]
    assert result["error"][-1] < 1e-8  # the tolerance controls the error against the serial fine solution
    assert result["calls"].sum() > 256  # the fine work (more than one serial sweep) is counted


def test_restart_is_bit_identical(tmp_path):
    opts = dict(SMALL, tol=1e-12)
    full = run_mgrit(tmp_path, 2, name="full", **opts, checkpoint=tmp_path / "ck.h5", checkpoint_every=2)
    assert full["iterations"] >= 3
    restarted = run_mgrit(tmp_path, 2, name="re", **opts, restart=tmp_path / "ck.h5", checkpoint=tmp_path / "ck2.h5")
    np.testing.assert_array_equal(restarted["u"], full["u"])
    np.testing.assert_array_equal(restarted["residual"], full["residual"])
    np.testing.assert_array_equal(restarted["error"], full["error"])
    assert restarted["iterations"] == full["iterations"]


@pytest.mark.parametrize("args, message", [
    ({"coarsening": 1}, "coarsening = [1]: every factor m must be >= 2"),
    ({"intervals": 16, "levels": 4, "coarsening": 4}, "4 levels with coarsening factors [4, 4, 4] need N >= 64"),
    ({"intervals": 100, "levels": 3, "coarsening": 4}, "not a multiple of the coarsening factor 4"),
    ({"coarsening": "2,2,2"}, "coarsening = [2, 2, 2]: give one value or 2"),
    ({"levels": 1}, "levels = 1: must be >= 2"),
    ({"relaxation": "C"}, "relaxation = 'C' is not allowed"),
])
def test_bad_input_fails_on_every_rank(tmp_path, args, message):
    result = run_mgrit(tmp_path, 2, check=False, **args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count(message) == 1, result.stderr   # once, from rank 0


def test_divergence_is_reported(tmp_path):
    result = run_mgrit(tmp_path, 2, check=False, problem="brusselator", intervals=64, levels=3, coarsening=4)
    assert result.returncode == 4 and "MGRIT diverged in cycle 1" in result.stderr


def test_bench_writes_hdf5_and_table(tmp_path):
    """``paraflow-hpc bench mgrit`` on a small heat case: every method converges, PyMGRIT's cycle
    counts equal ours, the cost model is consistent, the table has one row per method."""
    pytest.importorskip("pymgrit")
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "mgrit", "--problems", "heat", "--scale", "0.25", "--quiet", "--output", out], timeout=300)
    with h5py.File(out) as f:
        data = {k: f["data"][k][()] for k in f["data"]}
        assert f.attrs["method"] == "bench-mgrit"
    methods = [m.decode() for m in data["method"]]
    assert methods[0] == "parareal" and len(methods) == 7
    assert np.all(data["converged"] == 1)
    mg = slice(1, None)
    np.testing.assert_array_equal(data["pymgrit_iterations"][mg], data["iterations"][mg])
    assert np.all(data["model_speedup_1024"] >= data["model_speedup_2"])
    assert np.all(data["fine_calls"] >= data["intervals"])  # at least one fine sweep each
    table = (tmp_path / "bench.md").read_text().splitlines()
    assert table[0].startswith("| problem | method | ranks | N | K |") and len(table) == 9


def test_relative_residual_divides_by_the_c_points(tmp_path):
    opts = dict(SMALL, tol=0, max_iter=2)
    absolute = run_mgrit(tmp_path, 2, name="abs", check=False, **opts)
    relative = run_mgrit(tmp_path, 2, name="rel", check=False, **opts, relative="true")
    assert absolute.returncode == relative.returncode == 4  # unconverged at max_iter: not a success
    with h5py.File(tmp_path / "abs-2.h5") as fa, h5py.File(tmp_path / "rel-2.h5") as fr:
        assert not fa.attrs["converged"]
        np.testing.assert_array_equal(fa["solution/u"][()], fr["solution/u"][()])
        c_points = fa["solution/u"][()][4::4]  # level-0 C-points j >= 1 (m = 4)
        size = np.linalg.norm(np.linalg.norm(c_points, axis=1))
        np.testing.assert_allclose(fr["history/residual_norm"][-1], fa["history/residual_norm"][-1] / size,
                                   rtol=1e-12)
