"""PASO: exactness against torch.optim, Proposition 2, rank-count independence, operations."""
import json
import signal

import h5py
import numpy as np
import pytest
from mpi4py import MPI

from conftest import run_cli, run_script
from paraflow_hpc.algorithms.paso import OptimizerSpec, paso, sequential_reference
from paraflow_hpc.comm import NonFiniteError
from paraflow_hpc.config import ConfigError, build_config
from paraflow_hpc.problems.models import make_problem
from paraflow_hpc.runners import paso as paso_runner
from paraflow_hpc.runners.paso import Config

OPTIMIZERS = ["sgd", "momentum", "adam", "adamw"]
LR = {"sgd": 0.2, "momentum": 0.05, "adam": 0.01, "adamw": 0.01}


@pytest.fixture(scope="module")
def mpi_results(tmp_path_factory):
    """paso_check.py's results for 1, 2 and 3 ranks (each one mpirun)."""
    out = {}
    for nranks in (1, 2, 3):
        path = tmp_path_factory.mktemp(f"paso{nranks}") / "check.npz"
        run_script(nranks, "paso_check.py", path, timeout=240)
        out[nranks] = dict(np.load(path))
    return out


def cases(results):
    return sorted({k.rsplit("_", 1)[0] for k in results if k.endswith("_K")})


def test_zero_tolerance_reproduces_torch_optim(mpi_results):
    """tol -> 0: PASO's w_T is torch.optim's w_T to round-off, for every optimizer and rank count."""
    for nranks, results in mpi_results.items():
        exact = [c for c in cases(results) if c.endswith("_exact")]
        assert len(exact) == 7
        for case in exact:
            w, seq = results[case + "_w"], results[case + "_seq"]
            scale = np.max(np.abs(seq))
            assert np.max(np.abs(w - seq)) <= 1e-12 * scale, (nranks, case)
            assert results[case + "_msd"] <= 1e-24 * scale ** 2, (nranks, case)
            assert results[case + "_accepted"] == 24  # every step 1..T accepted exactly once


def test_adaptive_tolerance_is_close_and_fewer_iterations(mpi_results):
    results = mpi_results[1]
    for case in (c for c in cases(results) if c.endswith("_adaptive")):
        exact_case = case.replace("_adaptive", "_exact")
        assert results[case + "_K"] < results[exact_case + "_K"], case
        assert 0 < results[case + "_msd"] < 1e-2, case
        assert results[case + "_accepted"] == 24


@pytest.mark.parametrize("nranks", [2, 3])
def test_rank_count_gives_same_iterates_and_iterations(mpi_results, nranks):
    """Same K and gradient count; w_T equal up to the round-off of the scans' summation order."""
    one, many = mpi_results[1], mpi_results[nranks]
    for case in cases(one):
        assert many[case + "_K"] == one[case + "_K"], case
        assert many[case + "_gradients"] == one[case + "_gradients"], case
        w1 = one[case + "_w"]
        assert np.max(np.abs(many[case + "_w"] - w1)) <= 1e-11 * np.max(np.abs(w1)), case


def _single_rank_run(optimizer, total_steps, window, stop_after=None, tol=0.0, lr=None, problem="logreg", **spec):
    problem = make_problem(problem, 1, 16)
    w0 = problem.initial_weights()
    opt = OptimizerSpec(optimizer, lr or LR[optimizer], total_steps, **spec)
    trajectory = [w0]
    sequential_reference(problem, opt, w0, total_steps, on_step=lambda t, w: trajectory.append(w))
    result = paso(MPI.COMM_SELF, problem, opt, w0, total_steps=total_steps, window=window, tol=tol,
                  adapt="fixed", after_iteration=(lambda s: s.k >= stop_after) if stop_after else None)
    return result, np.array(trajectory)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_proposition_2_at_most_T_iterations(optimizer):
    """Whole horizon in one window (p = T), tol = 0: exact after at most T iterations, and
    after k iterations the leading k steps are already exact."""
    T = 12
    result, trajectory = _single_rank_run(optimizer, T, T)
    assert result.iterations <= T
    assert np.allclose(result.w_final, trajectory[-1], rtol=0, atol=1e-13)
    for k in (1, 3, 5):
        partial, _ = _single_rank_run(optimizer, T, T, stop_after=k)
        assert partial.interrupted and partial.state.t >= k
        t = partial.state.t
        assert np.allclose(partial.state.w_left, trajectory[t], rtol=0, atol=1e-13)


def test_iteration_count_on_convex_problem():
    """Logistic regression, SGD, T = 40, fixed δ = 1e-12. A window of p steps advances by 1 .. p
    steps per iteration, so ceil(T/p) <= K <= T, and p = 1 is the sequential run (K = T). The
    fixed-point iteration contracts like (ηL)^k along the window (L: the loss's Lipschitz
    constant of the gradient), so a smaller learning rate needs fewer iterations."""
    T, p, tol = 40, 10, 1e-12
    sequential, trajectory = _single_rank_run("sgd", T, 1, tol=tol)
    assert sequential.iterations == T and sequential.state.strides == [1] * T
    assert np.allclose(sequential.w_final, trajectory[-1], rtol=0, atol=1e-14)
    iterations = []
    for lr in (0.2, 0.05, 0.01):
        result, trajectory = _single_rank_run("sgd", T, p, tol=tol, lr=lr)
        assert -(-T // p) <= result.iterations < T, lr
        assert max(result.state.strides) <= p and sum(result.state.strides) == T
        assert np.max(np.abs(result.w_final - trajectory[-1])) < 1e-5, lr
        iterations.append(result.iterations)
    assert iterations[0] > iterations[1] > iterations[2], iterations


@pytest.mark.parametrize("optimizer", ["momentum", "adam"])
def test_gradient_clipping_is_exact(optimizer):
    """clip_norm > 0 clips each step's gradient as torch.nn.utils.clip_grad_norm_; with tol = 0
    PASO still reproduces torch.optim (with clipping) to round-off."""
    T = 16
    clipped, trajectory = _single_rank_run(optimizer, T, 8, clip_norm=0.05)
    _, unclipped = _single_rank_run(optimizer, T, 8)
    assert np.max(np.abs(trajectory[-1] - unclipped[-1])) > 1e-3  # the clipping is active
    assert np.allclose(clipped.w_final, trajectory[-1], rtol=0, atol=1e-13)


def test_ackley_adam_is_exact():
    """The review-response problem (Ackley, d = 10⁴, Adam lr 1e-3), shortened: tol = 0 gives
    torch.optim's Adam iterates; f decreases along them."""
    result, trajectory = _single_rank_run("adam", 12, 4, lr=1e-3, problem="ackley")
    assert trajectory.shape[1] == 10_000
    assert np.allclose(result.w_final, trajectory[-1], rtol=0, atol=1e-12)
    assert result.state.losses[-1] < result.state.losses[0]


@pytest.mark.parametrize("overrides, message", [
    ({"window": "0"}, "window = 0"), ({"steps": "0"}, "steps = 0"),
    ({"optimizer": "lbfgs"}, "optimizer = 'lbfgs' is not allowed"), ({"tol": "-1"}, "tol = -1.0"),
    ({"ema_decay": "1.5"}, "ema_decay = 1.5"), ({"tol_adapt": "max"}, "tol_adapt = 'max'"),
    ({"clip_norm": "-1"}, "clip_norm = -1.0"),
])
def test_bad_options_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(Config, None, overrides, 2)


def test_cli_result_checkpoint_and_identical_restart(tmp_path):
    args = ["run", "paso", "--problem", "logreg", "--optimizer", "adam", "--lr", "0.01", "--steps", "30",
            "--window", "4", "--checkpoint-every", "3", "--quiet"]
    first = tmp_path / "first.h5"
    run_cli(2, args + ["--output", first], timeout=240)
    checkpoint = tmp_path / "first.ckpt.h5"
    assert checkpoint.exists()
    second = tmp_path / "second.h5"
    run_cli(2, args + ["--output", second, "--restart", checkpoint], timeout=240)
    with h5py.File(first) as a, h5py.File(second) as b:
        assert a.attrs["mpi_size"] == 2 and a["timings/gradient"].shape == (2,)
        assert np.all(a["counters/gradients"][()] > 0)
        assert a.attrs["gradients"] == a["counters/gradients"][()].sum()
        assert 0 < a.attrs["trajectory_msd"] < 1e-2
        assert len(a["history/batch_loss"]) == 30
        assert json.loads(a.attrs["config"])["optimizer"] == "adam"
        assert b.attrs["restarted_from"] == str(checkpoint)
        assert a.attrs["iterations"] == b.attrs["iterations"]
        assert np.array_equal(a["data/w_final"][()], b["data/w_final"][()])
        assert np.array_equal(a["history/batch_loss"][()], b["history/batch_loss"][()])
        assert a.attrs["trajectory_msd"] == b.attrs["trajectory_msd"]


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path):
    """The runner itself, in-process on one rank: NonFiniteError (the CLI's exit code 4) naming the step,
    the checkpoint kept, no result."""
    out = tmp_path / "nan.h5"
    cfg = build_config(Config, None, {"problem": "cnn", "lr": "1e200", "steps": "20", "window": "4",
                                      "reference": "none", "checkpoint_every": "1", "quiet": "true",
                                      "output": str(out)}, 1)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}
    try:  # the runner's CheckpointHook takes over SIGUSR1/SIGTERM: give them back afterwards
        with pytest.raises(NonFiniteError, match="non-finite loss at step 1 "):
            paso_runner.main(cfg, MPI.COMM_SELF)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert (tmp_path / "nan.ckpt.h5").exists() and not out.exists()


def test_bench_writes_every_group_and_table(tmp_path):
    """``paraflow-hpc bench paso`` with tiny settings: every group in the HDF5 file and the table."""
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "paso", "--problems", "logreg", "--optimizers", "adam", "--steps", "12",
                "--sweep-windows", "4", "--sweep-steps", "16", "--ackley-steps", "8", "--rules-problem", "logreg",
                "--quiet",
                "--output", out], timeout=240)
    with h5py.File(out) as f:
        data = {k: f["data"][k][()] for k in f["data"]}
    assert list(data["group"]) == [0, 1, 2, 2, 3, 3, 3, 3, 3]
    assert data["steps"][1] == 16 and data["steps"][0] == 12  # the sweep's own T
    gap = data["ackley_gap"]  # (rules, fractions, (ε, sequential steps, PASO iterations))
    assert gap.shape == (2, 4, 3)
    reached = ~np.isnan(gap[:, :, 2])
    assert reached.any() and np.all(gap[:, :, 2][reached] <= data["iterations"][2:4, None].repeat(4, 1)[reached])
    assert np.allclose(data["step_reduction"], data["steps"] / data["iterations"])
    assert np.all(data["iterations"] >= np.ceil(data["steps"] / data["window"]))
    assert np.all(data["cost_ratio_m"] >= 1)  # every accepted step needed at least one gradient
    assert np.all(np.isnan(data["seq_test_accuracy"][2:4]))  # Ackley has no test set
    assert data["trajectory_msd"][-1] < 1e-8  # fixed δ = 1e-12
    text = (tmp_path / "bench.md").read_text()
    for title in ("Sequential torch.optim vs PASO", "Window-size sweep", "Ackley", "Iterations to the same gap",
                  "Tolerance rules"):
        assert title in text
