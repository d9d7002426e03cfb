"""Space-time Parareal (P time groups x S space ranks, PETSc DMDA + TS) under a real mpirun.

Exactness at k = N on every layout, iterates independent of the layout, the heat error against
the exact solution at the time integrator's order, PETSc options reaching G and F separately,
bad layouts refused, restart bit-identical on the layout that wrote it and equal on any other;
G on a coarser grid (--coarse-grid-factor): the grid transfers, exactness, layout independence,
convergence, refusals; users' problems (--problem file.py:Class --problem-args) on every layout,
on a coarser grid, and refused with exit 2 and one message when wrong.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import h5py
import numpy as np
import pytest

from conftest import ROOT, catches_sigusr1, mpi_env, run_cli, run_script

pytestmark = pytest.mark.mpi

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (P time groups, S space ranks)
HEAT = ["--problem", "heat2d", "--nx", "6", "--ny", "5", "--intervals", "4", "--coarse-steps", "1",
        "--fine-steps", "4"]
ALLEN_CAHN = ["--problem", "allen-cahn", "--nx", "8", "--intervals", "8", "--fine", "beuler", "--fine-steps", "4",
              "--tol", "3e-4"]


def run_st(tmp_path, layout, args, name, timeout=240, check=True):
    """``mpirun -n P*S paraflow-hpc run spacetime --space-ranks S ARGS``; returns (result dict, process)."""
    p, s = layout
    out = tmp_path / f"{name}.h5"
    proc = run_cli(p * s, ["run", "spacetime", "--quiet", "--space-ranks", str(s), "--output", str(out), *args],
                   timeout=timeout, check=check)
    if proc.returncode != 0:
        return None, proc
    with h5py.File(out, "r") as f:
        result = {"u": f["solution/u"][...], "update": f["history/update_norm"][...],
                  "error": f["history/error"][...], "times": f["data/times"][...],
                  "counters": {name: ds[()] for name, ds in f["counters"].items()}, **dict(f.attrs)}
    return result, proc


def run_st_stopped(tmp_path, layout, args, name, timeout=240):
    """``run_st``, with SIGUSR1 sent to one rank the moment it catches it (the CLI installs the
    handler before its imports), so the stop is requested before the sequential fine solution
    starts: the run stops at that sweep's first safe point. Returns the process (stdout, stderr read)."""
    p, s = layout
    cmd = ["mpirun", "-n", str(p * s), sys.executable, "-m", "paraflow_hpc", "run", "spacetime", "--space-ranks",
           str(s), "--output", str(tmp_path / f"{name}.h5"), *args]
    proc = subprocess.Popen(cmd, env=mpi_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + timeout
        while time.time() < deadline:
            ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            ready = [int(pid) for pid in ranks if catches_sigusr1(int(pid))]
            if ready:
                os.kill(ready[-1], signal.SIGUSR1)
                break
            time.sleep(0.002)
        out, err = proc.communicate(timeout=max(1.0, deadline - time.time()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def checkpoint_meta(path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["meta"])


@pytest.fixture(scope="module")
def heat_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("heat")
    return {layout: run_st(tmp, layout, [*HEAT, "--tol", "0"], f"heat-{layout[0]}x{layout[1]}")[0]
            for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_k_equals_n_is_the_sequential_fine_solution(heat_runs, layout):
    run = heat_runs[layout]
    assert (run["time_groups"], run["space_ranks"]) == layout
    assert run["iterations"] == 4 and run["converged"]
    assert run["u"].shape == (4, 5, 6)
    # error against this layout's sequential, space-parallel fine solution after the last iteration
    assert run["error"][-1] <= 1e-14 * np.abs(run["u"]).max()
    # and that fine solution is the same on every layout (to round-off: other space decompositions)
    np.testing.assert_allclose(run["u"], heat_runs[(1, 1)]["u"], rtol=0, atol=1e-13)


def test_heat_iterates_do_not_depend_on_the_layout(heat_runs):
    base = heat_runs[(1, 1)]
    assert base["error"][0] > 1e-3  # the coarse prediction is far from F: the iterates carry information
    for layout in LAYOUTS[1:]:
        run = heat_runs[layout]
        np.testing.assert_allclose(run["update"][1:], base["update"][1:], rtol=1e-9)
        np.testing.assert_allclose(run["error"], base["error"], rtol=1e-9, atol=1e-15)
        assert run["exact_error"] == pytest.approx(base["exact_error"], rel=1e-10)


def test_nonlinear_iteration_count_and_iterates_do_not_depend_on_the_layout(tmp_path):
    runs = {layout: run_st(tmp_path, layout, ALLEN_CAHN, f"ac-{layout[0]}x{layout[1]}")[0]
            for layout in [(1, 1), (2, 1), (1, 2)]}
    base = runs[(1, 1)]
    assert base["converged"] and 1 <= base["iterations"] < 8  # stopped by the tolerance, before k = N
    assert base["update"][base["iterations"]] <= 3e-4 < base["update"][base["iterations"] - 1]
    for run in runs.values():
        assert run["iterations"] == base["iterations"]
        np.testing.assert_allclose(run["update"][1:], base["update"][1:], rtol=1e-8)
        np.testing.assert_allclose(run["u"], base["u"], rtol=0, atol=1e-10)
    # the disc shrinks by mean curvature: R(t)^2 = R0^2 - 2t within a grid spacing of this 8 x 8 grid
    assert abs(base["radius"] - base["sharp_interface_radius"]) < 1.0 / 8


@pytest.mark.parametrize("scheme, order", [("beuler", 1.0), ("cn", 2.0)])
def test_heat_error_shrinks_at_the_schemes_order(tmp_path, scheme, order):
    errors = []
    for steps in (4, 8, 16):
        run, _ = run_st(tmp_path, (1, 1), ["--problem", "heat2d", "--nx", "5", "--intervals", "2", "--tol", "0",
                                           "--coarse", "beuler", "--fine", scheme, "--fine-steps", str(steps)],
                        f"{scheme}-{steps}")
        errors.append(run["exact_error"])
    orders = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert abs(orders[-1] - order) < 0.15, (errors, orders)


def test_petsc_options_reach_coarse_and_fine_separately(tmp_path):
    options = ("-coarse_ts_type cn -fine_ksp_type gmres -fine_pc_type jacobi -fine_ksp_rtol 1e-13 -ksp_type cg "
               "-coarse_ksp_rtol 1e-3")
    run, proc = run_st(tmp_path, (1, 2), [*HEAT, "--coarse", "beuler", "--fine", "beuler", "--petsc", options],
                       "options")
    assert (run["coarse_ts_type"], run["fine_ts_type"]) == ("cn", "beuler")
    assert (run["coarse_ksp_type"], run["fine_ksp_type"]) == ("preonly", "gmres")
    assert (run["coarse_pc_type"], run["fine_pc_type"]) == ("lu", "jacobi")
    # an option without the coarse_/fine_ prefix reaches neither, and is reported
    # and one that G's direct solve (preonly) never reads is told apart from it
    assert sorted(run["petsc_options_unused"].split()) == ["coarse_ksp_rtol", "ksp_type"]
    assert proc.stderr.count("not used by G or F: -ksp_type (options of G or F need the coarse_ or fine_ "
                             "prefix); -coarse_ksp_rtol (not read by the solver types in use") == 1, proc.stderr
    assert run["error"][-1] < 1e-10  # F's iterative solve still gives the sequential answer at k = N


# -- G on a coarser grid (--coarse-grid-factor) ------------------------------------------------------

COARSE = ["--problem", "heat2d", "--nx", "7", "--ny", "5", "--intervals", "4", "--coarse-steps", "1",
          "--fine-steps", "4", "--coarse-grid-factor", "2", "--tol", "0"]  # F on 7 x 5, G on 3 x 2


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_coarse_grid_transfers_match_the_dense_operators(nranks):
    result = run_script(nranks, "coarse_grid_transfer.py", timeout=120)
    assert result.stdout.count(": ok") == nranks


@pytest.fixture(scope="module")
def coarse_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("coarse")
    return {layout: run_st(tmp, layout, COARSE, f"coarse-{layout[0]}x{layout[1]}")[0] for layout in LAYOUTS}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_coarse_grid_g_still_gives_the_sequential_fine_solution_at_k_equals_n(coarse_runs, layout):
    run = coarse_runs[layout]
    assert (run["coarse_grid_factor"], run["coarse_nx"], run["coarse_ny"], run["nx"], run["ny"]) == (2, 3, 2, 7, 5)
    assert run["iterations"] == 4 and run["converged"]
    assert run["error"][-1] <= 1e-14 * np.abs(run["u"]).max()
    np.testing.assert_allclose(run["u"], coarse_runs[(1, 1)]["u"], rtol=0, atol=1e-13)


def test_coarse_grid_iterates_do_not_depend_on_the_layout(coarse_runs, tmp_path):
    base = coarse_runs[(1, 1)]
    same_grid, _ = run_st(tmp_path, (1, 1), [*COARSE, "--coarse-grid-factor", "1"], "factor-1")
    # G really is another propagator (another coarse prediction), F's solution at k = N is the same
    assert abs(base["error"][0] - same_grid["error"][0]) > 0.01 * same_grid["error"][0]
    np.testing.assert_allclose(base["u"], same_grid["u"], rtol=0, atol=1e-13)
    for layout in LAYOUTS[1:]:
        run = coarse_runs[layout]
        np.testing.assert_allclose(run["update"][1:], base["update"][1:], rtol=1e-9)
        np.testing.assert_allclose(run["error"], base["error"], rtol=1e-9, atol=1e-15)


def test_coarse_grid_factor_1_is_the_same_run_bit_for_bit(heat_runs, tmp_path):
    run, _ = run_st(tmp_path, (2, 2), [*HEAT, "--tol", "0", "--coarse-grid-factor", "1"], "factor-1")
    base = heat_runs[(2, 2)]
    for key in ("u", "update", "error"):
        np.testing.assert_array_equal(run[key], base[key])
    assert (run["coarse_grid_factor"], run["coarse_nx"], run["coarse_ny"]) == (1, 6, 5)


@pytest.mark.parametrize("factor", [2, 4])
def test_coarse_grid_parareal_converges_before_k_equals_n(tmp_path, factor):
    """heat2d 15 x 15, N = 8, F = BEULER x 4, G = BEULER x 2 on 7 x 7 (factor 2) or 3 x 3 (factor 4):
    every update at least 5 times smaller than the one before (measured: 17-33 times, as on F's
    own grid), so the tolerance is met well before k = N, within it of the sequential fine solution."""
    run, _ = run_st(tmp_path, (2, 1), ["--problem", "heat2d", "--nx", "15", "--intervals", "8", "--coarse-steps", "2",
                                       "--fine", "beuler", "--fine-steps", "4", "--coarse-grid-factor", str(factor),
                                       "--tol", "1e-6"], f"converge-{factor}")
    k, updates = run["iterations"], run["update"][1:]
    assert run["coarse_nx"] == 15 // factor
    assert run["converged"] and k < 8
    assert updates[-1] <= 1e-6 < updates[-2]
    assert np.all(updates[1:] <= 0.2 * updates[:-1]), updates
    assert run["error"][k] <= 1e-6


def test_coarse_grid_restart_is_bit_identical_and_another_factor_is_refused(tmp_path):
    args = [*COARSE, "--intervals", "6", "--checkpoint-every", "2"]
    full, _ = run_st(tmp_path, (2, 1), [*args, "--checkpoint", str(tmp_path / "ck.h5")], "full")
    restarted, _ = run_st(tmp_path, (2, 1), [*args, "--restart", str(tmp_path / "ck.h5"),
                                             "--checkpoint", str(tmp_path / "ck2.h5")], "restarted")
    for key in ("u", "update", "error"):
        np.testing.assert_array_equal(restarted[key], full[key])
    _expect_bad_input(2, [*args, "--coarse-grid-factor", "1", "--restart", str(tmp_path / "ck.h5")],
                      "has coarse_grid_factor = 2, this run has 1", tmp_path)


def test_bad_coarse_grid_factor_is_refused(tmp_path):
    _expect_bad_input(1, ["--coarse-grid-factor", "0"], "coarse_grid_factor = 0: must be >= 1", tmp_path)
    _expect_bad_input(1, ["--nx", "32", "--coarse-grid-factor", "2"],
                      "coarse_grid_factor = 2 does not divide nx + 1 = 33", tmp_path)
    _expect_bad_input(1, ["--problem", "allen-cahn", "--nx", "16", "--ny", "15", "--coarse-grid-factor", "2"],
                      "coarse_grid_factor = 2 does not divide ny = 15", tmp_path)
    _expect_bad_input(4, ["--space-ranks", "4", "--nx", "7", "--coarse-grid-factor", "4"],
                      "leaves 1 coarse grid point(s) in the x direction (nx = 7), fewer than the 2 space ranks "
                      "in that direction (process grid 2 x 2 for space_ranks = 4); use nx >= 11", tmp_path)


def _expect_bad_input(nranks, args, message, tmp_path):
    proc = run_cli(nranks, ["run", "spacetime", "--quiet", "--output", str(tmp_path / "bad.h5"), *args],
                   check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("args, message", [
    (["--petsc", "-fine_ts_type bogus"], "PETSc refused -fine_ts_type bogus: unknown type"),
    (["--petsc", "-coarse_ksp_type gmres -coarse_ksp_max_it 1.5"], "PETSc refused -coarse_ksp_max_it 1.5"),
    (["--petsc", "-fine_ksp_type"], "PETSc option -fine_ksp_type needs a value"),
    (["--petsc", "-fine_pc_factor_mat_solver_type nosuch"], "-fine_pc_factor_mat_solver_type nosuch: unknown solver"),
    (["--petsc", "-fine_pc_type jacobi"], "-fine_pc_type jacobi with -fine_ksp_type preonly (the default, meant "
                                          "for a direct solve) applies the preconditioner once instead of solving"),
    (["--petsc", "-fine_ts_type rk"], "-fine_ts_type rk is an explicit method"),
    (["--petsc", "-fine_ksp_type none -fine_pc_type jacobi"], "-fine_pc_type jacobi with -fine_ksp_type preonly"),
    (["--petsc", "-fine_pc_type redundant -fine_redundant_pc_type jacobi"], "-fine_pc_type redundant with"),
    (["--petsc", "-coarse_ksp_type gmres -coarse_pc_type ilu"], "-coarse_pc_type ilu has no parallel implementation"),
    (["--petsc", "-fine_pc_factor_mat_solver_type petsc"], "-fine_pc_factor_mat_solver_type petsc factorizes on one"),
    (["--nx", "50000"], "= 2500000000 grid points: more than this PETSc's"),
    (["--nx", "2000", "--intervals", "20000"], "need at least"),
    (["--fine-steps", "10000000000"], "fine_steps = 10000000000: must be between 1 and 1000000000"),
    (["--problem", "allen-cahn", "--nx", "4", "--ny", "2", "--coarse-grid-factor", "2"],
     "leaves 1 coarse grid point in the y direction (ny = 2, periodic): the grid transfers need at least 2"),
    (["--nx", "0"], "nx = 0: the grid needs at least 1 point in x"),
])
def test_what_petsc_or_the_machine_cannot_take_is_refused_up_front(tmp_path, args, message):
    """Bad PETSc option values, grids beyond PETSc's indices or the node's memory, step counts beyond
    PETSc's integers: one error line and exit 2 on both ranks, before any PETSc object exists (were
    per-rank tracebacks, OverflowError or an out-of-memory kill)."""
    proc = _expect_bad_input(2, ["--space-ranks", "2", *args], message, tmp_path)
    assert proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr, proc.stderr


def test_options_from_petsc_options_and_the_benchmark_are_checked_alike(tmp_path):
    """The up-front check reads PETSc's database, so PETSC_OPTIONS is checked as --petsc is, and the
    benchmark runs the same check before each layout."""
    proc = run_cli(2, ["run", "spacetime", "--nx", "8", "--intervals", "2", "--quiet", "--output",
                       tmp_path / "r.h5"], env={"PETSC_OPTIONS": "-fine_ksp_type cgg"}, check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("error: PETSc refused -fine_ksp_type cgg") == 1, proc.stderr
    proc = run_cli(2, ["bench", "spacetime", "--nx", "8", "--intervals", "2", "--quiet", "--petsc",
                       "-fine_pc_type sor", "--output", tmp_path / "b.h5"], check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("error: -fine_pc_type sor with -fine_ksp_type preonly") == 1
    assert "Traceback" not in proc.stderr, proc.stderr


def test_world_size_not_divisible_by_space_ranks_is_refused(tmp_path):
    proc = _expect_bad_input(3, ["--space-ranks", "2"], "space_ranks = 2 does not divide the 3 MPI ranks", tmp_path)
    assert proc.stderr.count("error: ") == 1  # agreed by every rank, printed once, before any collective work


def test_grid_smaller_than_the_space_ranks_is_refused(tmp_path):
    _expect_bad_input(2, ["--space-ranks", "2", "--nx", "1"], "nx = 1 is smaller than the 2 space ranks", tmp_path)
    _expect_bad_input(4, ["--space-ranks", "4", "--nx", "8", "--ny", "1"],
                      "ny = 1 is smaller than the 2 space ranks", tmp_path)


def test_failed_ts_solve_exits_4_naming_it(tmp_path):
    _, proc = run_st(tmp_path, (2, 1), ["--problem", "allen-cahn", "--nx", "6", "--intervals", "2",
                                        "--petsc", "-fine_snes_max_it 1"], "fail", check=False)
    assert proc.returncode == 4 and proc.stderr.count("error: ") == 1
    assert "fine TS (cn) failed on [0, 0.005]" in proc.stderr and "DIVERGED_NONLINEAR_SOLVE" in proc.stderr


def test_restart_is_bit_identical_and_any_layout_reads_the_checkpoint(tmp_path):
    args = [*HEAT, "--intervals", "6", "--tol", "0", "--checkpoint-every", "2"]
    full, _ = run_st(tmp_path, (2, 2), [*args, "--checkpoint", str(tmp_path / "ck.h5")], "full")
    meta = checkpoint_meta(tmp_path / "ck.h5")
    assert meta["iteration"] == 4 and meta["reference_done"] == 6  # the last checkpoint before k = N = 6
    with h5py.File(tmp_path / "ck.h5", "r") as f:
        # global fields, every rank's box in place: no per-rank groups
        assert sorted(f) == ["fields", "root"] and sorted(f["fields"]) == ["boundaries", "coarse_old", "fine",
                                                                           "reference"]
        assert f["fields/boundaries"].shape == f["fields/reference"].shape == (7, 5, 6)
        assert f["fields/fine"].shape == f["fields/coarse_old"].shape == (6, 5, 6)
        boundaries, reference = f["fields/boundaries"][()], f["fields/reference"][()]
    # after iteration 4 the boundaries U_1 .. U_4 are exact: equal to the final fine solution, which at
    # k = N is the sequential one (bit for bit on this layout)
    np.testing.assert_array_equal(boundaries[1:5], full["u"][:4])
    np.testing.assert_array_equal(reference[1:], full["u"])
    restarted, _ = run_st(tmp_path, (2, 2), [*args, "--restart", str(tmp_path / "ck.h5"),
                                             "--checkpoint", str(tmp_path / "ck2.h5")], "restarted")
    np.testing.assert_array_equal(restarted["u"], full["u"])
    np.testing.assert_array_equal(restarted["update"], full["update"])
    np.testing.assert_array_equal(restarted["error"], full["error"])
    assert restarted["iterations"] == full["iterations"] == 6
    # the reference was read, not recomputed: the two segments did exactly the uninterrupted run's work
    assert restarted["segment_serial_fine_seconds"] == 0
    assert restarted["serial_fine_seconds"] == meta["reference_seconds"] > 0
    assert_totals_add_up(restarted, meta, full)
    # other splits and world sizes read their boxes of the same file: the same iterates, up to the
    # round-off of another space decomposition, and the history of the first 4 iterations as stored
    scale = np.abs(full["u"]).max()
    for layout in [(1, 1), (1, 2), (3, 1), (4, 1)]:
        other, proc = run_st(tmp_path, layout, [*args, "--restart", str(tmp_path / "ck.h5"),
                                                "--checkpoint", str(tmp_path / f"ck-{layout}.h5")],
                             f"restarted-{layout[0]}x{layout[1]}")
        assert (other["time_groups"], other["space_ranks"]) == layout
        assert other["iterations"] == 6 and other["converged"]
        np.testing.assert_allclose(other["u"], full["u"], rtol=0, atol=1e-13 * scale)
        np.testing.assert_array_equal(other["update"][:5], full["update"][:5])
        np.testing.assert_allclose(other["update"][5:], full["update"][5:], rtol=1e-9)
    # a damaged newest checkpoint: the previous one (after iteration 2) is read into another layout
    with open(tmp_path / "ck.h5", "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 2)
    other, proc = run_st(tmp_path, (1, 2), [*args, "--restart", str(tmp_path / "ck.h5"), "--checkpoint",
                                            str(tmp_path / "ck-prev.h5")], "restarted-prev")
    assert "using the previous checkpoint" in proc.stdout + proc.stderr
    assert other["iterations"] == 6
    np.testing.assert_allclose(other["u"], full["u"], rtol=0, atol=1e-13 * scale)
    np.testing.assert_array_equal(other["update"][:3], full["update"][:3])
    # another problem size is refused before any work, naming the option
    _expect_bad_input(4, ["--space-ranks", "2", *args, "--nx", "8", "--restart", str(tmp_path / "ck.h5")],
                      "has nx = 6, this run has 8", tmp_path)


def assert_totals_add_up(result, meta, full=None):
    """A restarted run's totals are the checkpoint's (all ranks and segments before) plus its own
    segment's counters summed over ranks, its seconds at least the segment's; with ``full`` (the
    uninterrupted run on the same layout) they equal that run's, every counter."""
    assert "all segments" in result["timings_cover"] and "this segment" in result["timings_cover"]
    assert result["parareal_seconds"] >= result["segment_parareal_seconds"] > 0
    assert result["serial_fine_seconds"] >= result["segment_serial_fine_seconds"] >= 0
    assert result["speedup"] == result["serial_fine_seconds"] / result["parareal_seconds"]
    assert result["counters"].keys() == meta["counters"].keys()
    for name, per_rank in result["counters"].items():
        assert result[f"total_{name}"] == meta["counters"][name] + per_rank.sum() >= per_rank.sum(), name
        if full is not None:
            assert result[f"total_{name}"] == full[f"total_{name}"] == full["counters"][name].sum(), name


def test_stop_in_the_sequential_fine_solution_checkpoints_it_and_the_restarts_finish_the_same_run(tmp_path):
    """SIGUSR1 before the reference sweep ends: the ranks agree between two of its subintervals,
    checkpoint the reference so far (iteration 0: no Parareal state yet) and exit 3; restarts go on
    from there (a second stop one subinterval later), bit-identical on the layout that wrote it, to
    round-off on others (more time groups: a block's first value U_a comes from the file)."""
    args = [*HEAT, "--intervals", "6", "--tol", "0"]
    full, _ = run_st(tmp_path, (2, 2), args, "full")
    ck1, ck2 = tmp_path / "ck1.h5", tmp_path / "ck2.h5"
    proc = run_st_stopped(tmp_path, (2, 2), [*args, "--checkpoint", str(ck1)], "stopped1")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "checkpoint of the sequential fine solution after subinterval 1 of 6" in proc.stdout
    assert "(stop requested by " in proc.stdout and not (tmp_path / "stopped1.h5").exists()
    meta1 = checkpoint_meta(ck1)
    assert (meta1["iteration"], meta1["reference_done"], meta1["parareal_seconds"]) == (0, 1, 0)
    assert meta1["counters"]["fine_calls"] == 2 and meta1["counters"]["coarse_calls"] == 0  # one F on S = 2 ranks
    with h5py.File(ck1, "r") as f:
        reference = f["fields/reference"][()]
        assert not f["fields/boundaries"][()].any()  # no iterate yet: the state's fields are zeros
    np.testing.assert_array_equal(reference[1], full["u"][0])
    assert not reference[2:].any()
    proc = run_st_stopped(tmp_path, (2, 2), [*args, "--restart", str(ck1), "--checkpoint", str(ck2)], "stopped2")
    assert proc.returncode == 3 and "in the sequential fine solution, after subinterval 1 of 6" in proc.stdout
    meta2 = checkpoint_meta(ck2)
    assert meta2["reference_done"] == 2 and meta2["counters"]["fine_calls"] == 4
    assert meta2["reference_seconds"] > meta1["reference_seconds"]
    restarted, _ = run_st(tmp_path, (2, 2), [*args, "--restart", str(ck2), "--checkpoint", str(tmp_path / "ck3.h5")],
                          "restarted")
    for key in ("u", "update", "error"):
        np.testing.assert_array_equal(restarted[key], full[key])
    assert restarted["iterations"] == 6 and restarted["restarted_from"] == str(ck2)
    assert restarted["segment_serial_fine_seconds"] > 0  # it computed the rest of the reference
    assert_totals_add_up(restarted, meta2, full)
    scale = np.abs(full["u"]).max()
    for layout, ck in (((1, 2), ck1), ((4, 1), ck2)):
        other, _ = run_st(tmp_path, layout, [*args, "--restart", str(ck), "--checkpoint",
                                             str(tmp_path / f"ck-{layout}.h5")], f"other-{layout[0]}x{layout[1]}")
        assert (other["time_groups"], other["space_ranks"]) == layout and other["iterations"] == 6
        np.testing.assert_allclose(other["u"], full["u"], rtol=0, atol=1e-13 * scale)
        np.testing.assert_allclose(other["error"], full["error"], rtol=1e-9, atol=1e-15)
        assert_totals_add_up(other, checkpoint_meta(ck))
# -- users' problems (--problem path/to/file.py:Class) ---------------------------------------------

USER_PDE = ROOT / "docs" / "examples" / "my_pde.py"   # MyPDE: the heat equation on a sine mode
MORE_PDES = textwrap.dedent("""

    class Decay(DMDAProblem):
        \"\"\"u_t = Δu − rate·u: its own constructor, with an argument it needs (coarsened() must pass it on).\"\"\"
        tf = 0.05

        def __init__(self, comm, nx, ny, proc_sizes, ownership_ranges=None, *, rate):
            super().__init__(comm, nx, ny, proc_sizes, ownership_ranges)
            self.rate = rate

        def initial_values(self):
            return self.X * (1.0 - self.X) * np.sin(np.pi * self.Y)

        def reaction(self, t, u):
            return -self.rate * u

        def reaction_derivative(self, t, u):
            return np.full_like(u, -self.rate)


    class WrongShape(MyPDE):
        def initial_values(self):
            return np.zeros((2, 2))


    class NaNStart(MyPDE):
        def initial_values(self):
            return super().initial_values() / 0.0


    class FlatReaction(MyPDE):
        def reaction(self, t, u):
            return u.ravel()


    class Idiom(MyPDE):
        \"\"\"The usual way to extend a constructor: everything passed on.\"\"\"
        def __init__(self, comm, *args, **kwargs):
            super().__init__(comm, *args, **kwargs)
            self.extended = True


    class Neumann(MyPDE):
        boundary = "neumann"


    class WrongExact(MyPDE):
        def exact_values(self, t):
            return np.zeros(3)


    class NoRanges(MyPDE):
        def __init__(self, comm, nx, ny, proc_sizes):
            super().__init__(comm, nx, ny, proc_sizes)


    def not_a_class():
        return MyPDE
""")


def user_pdes(tmp_path) -> str:
    """docs/examples/my_pde.py and the classes above, written to tmp_path; the file's path."""
    path = tmp_path / "user_pde.py"
    path.write_text(USER_PDE.read_text() + MORE_PDES)
    return str(path)


def test_user_problem_with_problem_args_on_2x2_equals_1_rank(tmp_path):
    """MyPDE with nu = 0.5 from --problem-args: the same solution on (P, S) = (2, 2) as on one rank at
    k = N, decaying at the rate of nu = 0.5 (not the class's 1.0): the argument reached every rank."""
    spec = user_pdes(tmp_path) + ":MyPDE"
    args = ["--problem", spec, "--problem-args", "nu=0.5", "--nx", "6", "--ny", "5", "--intervals", "4",
            "--fine-steps", "8", "--tol", "0"]
    runs = {layout: run_st(tmp_path, layout, args, f"user-{layout[0]}x{layout[1]}")[0] for layout in [(1, 1), (2, 2)]}
    for run in runs.values():
        assert run["iterations"] == 4 and run["error"][-1] <= 1e-14 * np.abs(run["u"]).max()
    np.testing.assert_allclose(runs[(2, 2)]["u"], runs[(1, 1)]["u"], rtol=0, atol=1e-13)
    x, y = np.arange(1, 7) / 7, np.arange(1, 6) / 6
    rate = 4 * 49 * np.sin(np.pi / 14) ** 2 + 4 * 36 * np.sin(np.pi / 12) ** 2   # the sine mode's grid eigenvalue
    exact = np.exp(-0.5 * rate * 0.1) * np.outer(np.sin(np.pi * y), np.sin(np.pi * x))
    np.testing.assert_allclose(runs[(2, 2)]["u"][-1], exact, rtol=2e-3)   # CN's error: ~6e-4
    assert runs[(2, 2)]["exact_error"] < 1e-3 * np.abs(exact).max()
    with h5py.File(tmp_path / "user-2x2.h5", "r") as f:   # the file repeats the run
        assert f["config"].attrs["problem"] == spec
        assert json.loads(f["config"].attrs["problem_args"]) == {"nu": 0.5}


def test_user_problem_on_a_coarse_grid_gets_its_arguments(tmp_path):
    """Decay needs rate: coarsened() constructs G's problem with it; k = N is still F's solution, and a
    restart with other problem_args is refused (they are part of the checkpoint's identity)."""
    args = ["--problem", user_pdes(tmp_path) + ":Decay", "--problem-args", '{"rate": 2.0}', "--nx", "7", "--ny", "5",
            "--intervals", "4", "--fine-steps", "4", "--coarse-grid-factor", "2", "--tol", "0",
            "--checkpoint-every", "2", "--checkpoint", str(tmp_path / "ck.h5")]
    run, _ = run_st(tmp_path, (2, 2), args, "decay")
    assert (run["coarse_grid_factor"], run["coarse_nx"], run["coarse_ny"]) == (2, 3, 2)
    assert run["iterations"] == 4 and run["error"][-1] <= 1e-14 * np.abs(run["u"]).max()
    assert run["error"][0] > 1e-4   # G on the coarse grid is another propagator
    _expect_bad_input(2, [*args, "--problem-args", "rate=3", "--restart", str(tmp_path / "ck.h5")],
                      "problem_args", tmp_path)


@pytest.mark.parametrize("nranks, space_ranks, name, message", [
    (1, 1, "WrongShape", "initial_values() has shape (2, 2), expected (5, 6); return a float array over this "
                         "rank's block of the grid"),
    (2, 2, "WrongShape", "initial_values() has shape (2, 2), expected (5, 3)"),
    (4, 2, "WrongShape", "initial_values() has shape (2, 2), expected (5, 3)"),
    (2, 1, "NaNStart", "initial_values() is not finite"),
    (2, 2, "FlatReaction", "reaction(t0, u0) (u0 of shape (5, 3)) has shape (15,), expected (5, 3); return "
                           "r(t, x, y, u) as a float array"),
    (2, 2, "Neumann", "boundary = 'neumann' is not one the grid knows; set boundary = \"dirichlet\""),
    (2, 1, "WrongExact", "exact_values(t0) has shape (3,), expected (5, 6)"),   # was found only at the end
])
def test_user_problem_with_wrong_arrays_ends_every_rank_with_one_message(tmp_path, nranks, space_ranks, name,
                                                                         message):
    spec = user_pdes(tmp_path) + ":" + name
    proc = _expect_bad_input(nranks, ["--space-ranks", str(space_ranks), "--problem", spec, "--nx", "6", "--ny",
                                      "5", "--intervals", "4"], message, tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"problem '{spec}'" in lines[0], proc.stderr  # agreed, printed once
    assert "Traceback" not in proc.stderr and not (tmp_path / "bad.h5").exists()


def test_user_problem_whose_constructor_passes_everything_on(tmp_path):
    """__init__(self, comm, *args, **kwargs) passing all to DMDAProblem takes ownership_ranges (for G's
    coarse grid) in its **kwargs: not mistaken for a problem parameter (was refused)."""
    spec = user_pdes(tmp_path) + ":Idiom"
    run_cli(2, ["run", "spacetime", "--problem", spec, "--problem-args", "nu=0.5", "--nx", "7", "--intervals", "4",
                "--coarse-grid-factor", "2", "--quiet", "--output", tmp_path / "r.h5"], timeout=120)


@pytest.mark.parametrize("name, args, message", [
    ("missing.py:MyPDE", [], "the file 'missing.py' does not exist"),
    ("{file}:not_a_class", [], "is a function, not a class: space-time Parareal constructs its problem"),
    ("{file}:MyPDE", ["--problem-args", "nux=1"], "MyPDE has no parameter 'nux'; its parameters (float class "
                                                  "attributes): nu, t0, tf"),
    ("{file}:Decay", [], "missing a required argument: 'rate'"),
    ("{file}:NoRanges", [], "unexpected keyword argument 'ownership_ranges'"),
    ("heat2d", ["--problem-args", "eps=0.1"], "Heat2D has no parameter 'eps'"),
    ("heat2d", ["--problem-args", "nu=1,nu=2"], "problem_args = 'nu=1,nu=2' gives 'nu' twice"),
    ("heat2d", ["--problem-args", '{"nu": 1, "nu": 2}'], "'nu' given twice"),
    ("heat2d", ["--problem-args", "tf=0.5", "--tf", "0.2"], "tf = 0.2 and problem_args tf = 0.5 disagree"),
])
def test_bad_user_problem_is_refused_before_any_work(tmp_path, name, args, message):
    proc = _expect_bad_input(2, ["--problem", name.format(file=user_pdes(tmp_path)), *args], message, tmp_path)
    assert proc.stderr.count("error: ") == 1 and "Traceback" not in proc.stderr


def test_bench_spacetime_writes_every_layout(tmp_path):
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "spacetime", "--quiet", "--nx", "6", "--intervals", "2", "--fine-steps", "2",
                "--output", str(out)], timeout=240)
    with h5py.File(out, "r") as f:
        assert list(f["data/space_ranks"][...]) == [2, 1]       # space-only first, then P = 2 x S = 1
        assert list(f["data/time_groups"][...]) == [1, 2]
        assert f["data/speedup"][0] == 1.0
        assert np.all(f["data/model_seconds"][...] > 0) and np.all(f["data/tau_fine"][...] > 0)
        assert f["data/error"][1] < 1e-8
    table = (tmp_path / "bench.md").read_text()
    assert "| 1 x 2 (space-only) |" in table and "| 2 x 1 |" in table
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_bench_spacetime_takes_a_user_problem(tmp_path):
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "spacetime", "--quiet", "--problem", user_pdes(tmp_path) + ":MyPDE", "--problem-args",
                "nu=0.5", "--nx", "6", "--intervals", "2", "--fine-steps", "2", "--output", str(out)], timeout=240)
    with h5py.File(out, "r") as f:
        assert json.loads(f["config"].attrs["problem_args"]) == {"nu": 0.5}
        assert f["data/error"][1] < 1e-8
    assert "user_pde.py:MyPDE on 6 x 6" in (tmp_path / "bench.md").read_text()


def test_bench_spacetime_compares_coarse_grid_factors(tmp_path):
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "spacetime", "--quiet", "--nx", "7", "--intervals", "2", "--fine-steps", "2",
                "--coarse-grid-factor", "1,2", "--output", str(out)], timeout=240)
    with h5py.File(out, "r") as f:  # the space-only baseline once (it has no G), then 2 x 1 per factor
        assert list(f["data/space_ranks"][...]) == [2, 1, 1]
        assert list(f["data/coarse_grid_factor"][...]) == [1, 1, 2]
        assert list(f["data/coarse_nx"][...])[1:] == [7, 3]
        assert np.all(f["data/error"][1:] < 1e-8)
    table = (tmp_path / "bench.md").read_text()
    assert "| 2 x 1 | 7 x 7 |" in table and "| 2 x 1 | 3 x 3 (c = 2) |" in table


@pytest.mark.parametrize("nranks", [1, 2, 4])
def test_space_time_split_and_result_boxes(tmp_path, nranks):
    result = run_script(nranks, "space_time_layout.py", tmp_path, timeout=120)
    assert result.stdout.count(": ok") == nranks
