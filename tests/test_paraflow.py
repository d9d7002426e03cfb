"""ParaFlow / ParaFlowS: budgets, Theorem 1, reductions to F alone and to each other, restart, options."""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from paraflow_hpc.algorithms.paraflow import baseline, paraflows
from paraflow_hpc.config import ConfigError, build_config
from paraflow_hpc.problems.networks import make_problem
from paraflow_hpc.runners import paraflow as paraflow_runner
from paraflow_hpc.runners import paraflows as paraflows_runner
from paraflow_hpc.steppers import BatchSchedule, Coarse, Fine

from conftest import run_cli, run_script


def make_run(name, batch, n_f, eta, seed=0, optimizer="sgd"):
    problem = make_problem(name)
    fine = Fine(problem, BatchSchedule(problem.n_samples, batch, seed), n_f, eta, optimizer)
    return problem, fine, Coarse(problem, n_f * eta), problem.initial_weights(seed)


def expected_cost(result, fine, n_samples):
    """d_B N_F per window plus N per evaluation (the first window also evaluates W_0)."""
    evaluations = sum(result.history["evaluated"]) + (1 if result.history["evaluated"][0] else 0)
    return result.iterations * fine.cost() + n_samples * evaluations


@pytest.mark.parametrize("name,batch,n_f,eta,budget", [
    ("classification", 10, 20, 0.1, 3000),
    ("approximation", 5, 10, 0.01, 3000),
    ("pinn", 16, 2, 0.01, 2 * 16 * 2 + 3 * 1440),
])
def test_small_budget_runs_account_exactly_and_decrease(name, batch, n_f, eta, budget):
    problem, fine, coarse, W0 = make_run(name, batch, n_f, eta)
    result = paraflows(problem, fine, coarse, W0, n_g=5, budget=budget)
    assert result.stop_reason == "budget" and result.iterations >= 1
    assert result.budget_used <= budget
    assert result.budget_used == problem.gradient_evaluations == expected_cost(result, fine, problem.n_samples)
    assert budget - result.budget_used < fine.cost()   # stopped only when the next F did not fit
    h = result.history
    for k in range(result.iterations):   # Theorem 1, second statement: L(W_{k+1}) <= L(F(W_k))
        if h["evaluated"][k]:
            assert h["loss"][k + 1] <= h["fine_loss"][k]
    before = problem.gradient_evaluations
    base = baseline(problem, fine, W0, budget=budget)
    assert base.budget_used == problem.gradient_evaluations - before == (budget // batch) * batch
    assert math.isfinite(result.loss) and math.isfinite(base.loss)


@pytest.mark.parametrize("name,batch,eta", [("classification", 1, 0.5), ("approximation", 2, 0.05),
                                            ("classification", 10, 1.0)])
def test_theorem1_monotone_with_start_kept(name, batch, eta):
    """keep_start: L(W_{k+1}) <= L(W_k) on every window, even when stochastic F increases the loss."""
    problem, fine, coarse, W0 = make_run(name, batch, 10, eta, seed=2)
    result = paraflows(problem, fine, coarse, W0, n_g=8, keep_start=True, budget=4000)
    loss = result.history["loss"]
    assert result.iterations >= 5
    assert all(b <= a for a, b in zip(loss, loss[1:])), loss
    assert result.budget_used == problem.gradient_evaluations == expected_cost(result, fine, problem.n_samples)


def test_break_takes_first_non_decrease_and_argmin_the_best():
    problem, fine, coarse, W0 = make_run("approximation", 30, 50, 0.05, seed=1)
    brk = paraflows(problem, fine, coarse, W0, n_g=30, selection="break", k_max=3)
    arg = paraflows(problem, fine, coarse, W0, n_g=30, selection="argmin", k_max=1)
    assert arg.history["evaluated"] == [30]
    # break mode's first window ends on a strictly decreasing chain, so it is no worse than W_1 = F(W_0)
    assert brk.history["loss"][1] <= brk.history["fine_loss"][0]
    assert arg.history["loss"][1] <= brk.history["loss"][1]


@pytest.mark.parametrize("n_g", [0, 1])
def test_no_coarse_candidates_is_fine_propagator_alone(n_g):
    problem, fine, coarse, W0 = make_run("approximation", 3, 7, 0.02, seed=3)
    result = paraflows(problem, fine, coarse, W0, n_g=n_g, k_max=4)
    sgd = baseline(problem, fine, W0, budget=0, max_steps=4 * 7)
    assert torch.equal(result.W, sgd.W)
    assert result.budget_used == 4 * fine.cost() == sgd.budget_used


def test_full_batch_sgd_is_gd_and_batches_are_pure_functions_of_step():
    schedule = BatchSchedule(30, 4, seed=9)
    assert torch.equal(schedule(17), BatchSchedule(30, 4, seed=9)(17))
    assert not torch.equal(schedule(17), schedule(18))
    assert torch.equal(BatchSchedule(30, 30, seed=9)(5), torch.arange(30))


def test_per_sample_gradients_sum_to_the_loss_gradient():
    problem = make_problem("pinn")
    W = problem.initial_weights(0)
    idx = torch.tensor([3, 100, 500, 1200])
    rows = problem.per_sample_gradients(W, idx)
    _, g = problem.value_and_grad(W, idx)
    assert torch.allclose(rows.sum(0) / problem.n_samples, g, rtol=1e-12, atol=1e-15)
    # the Laplacian residual is checked against finite differences of the network
    x = problem.inputs[500]
    h = 1e-4
    u = lambda y: float(problem.u(W, y))
    fd = sum(u(x + h * e) - 2 * u(x) + u(x - h * e) for e in torch.eye(2, dtype=torch.float64)) / h ** 2
    residual = float(torch.sqrt(2 * problem.interior_loss(W, x)))   # |Lap u + 1|
    assert abs(residual - abs(fd + 1.0)) < 1e-5


@pytest.mark.parametrize("nranks", [2, 3])
def test_paraflow_equals_paraflows_and_is_rank_count_independent(tmp_path, nranks):
    run_script(1, "paraflow_equivalence.py", tmp_path / "one.json", timeout=240)
    run_script(nranks, "paraflow_equivalence.py", tmp_path / "many.json", timeout=240)
    one, many = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "many.json"))
    assert one == many


def _read(path):
    with h5py.File(path) as f:
        return {k: f["history"][k][()] for k in f["history"]}, f["data/weights"][()], dict(f.attrs)


@pytest.mark.parametrize("method,nranks", [("paraflows", 1), ("paraflow", 2)])
def test_restart_gives_identical_result(tmp_path, method, nranks):
    common = ["run", method, "--problem", "approximation", "--batch-size", "6", "--n-f", "5", "--eta", "0.02",
              "--budget", "2400", "--quiet"]
    full = tmp_path / "full.h5"
    run_cli(nranks, common + ["--output", full, "--checkpoint-every", "2"], timeout=240)
    hist, weights, attrs = _read(full)
    assert attrs["iterations"] >= 3 and attrs["stop_reason"] == "budget"
    resumed = tmp_path / "resumed.h5"
    run_cli(nranks, common + ["--output", resumed, "--restart", tmp_path / "full.ckpt.h5"], timeout=240)
    hist2, weights2, attrs2 = _read(resumed)
    assert np.array_equal(weights, weights2)
    assert hist.keys() == hist2.keys() and all(np.array_equal(hist[k], hist2[k], equal_nan=True) for k in hist)
    assert attrs2["final_loss"] == attrs["final_loss"] and attrs2["budget_used"] == attrs["budget_used"]


@pytest.mark.parametrize("module,overrides,message", [
    (paraflows_runner, {"eta": "0"}, "eta = 0.0"),
    (paraflows_runner, {"eta": "-1"}, "must be > 0"),
    (paraflow_runner, {"n_f": "0"}, "n_f = 0"),
    (paraflows_runner, {"batch_size": "11"}, "batch_size = 11 exceeds the 10 samples"),
    (paraflow_runner, {"problem": "mnist"}, "problem = 'mnist' is not allowed"),
    (paraflows_runner, {"budget": "0"}, "nothing would stop the run"),
])
def test_bad_options_are_refused_with_a_clear_message(module, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(module.Config, None, overrides, 1)


def test_cli_reports_bad_option_on_every_rank(tmp_path):
    proc = run_cli(2, ["run", "paraflow", "--problem", "approximation", "--batch-size", "31",
                       "--output", tmp_path / "x.h5"], check=False, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("batch_size = 31 exceeds the 30 samples") == 2
