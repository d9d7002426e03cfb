"""ParaFlow / ParaFlowS: budgets, Theorem 1, reductions to F alone and to each other, restart, options."""
from __future__ import annotations

import json
import math

import h5py
import numpy as np
import pytest
import torch

from paraflow_hpc.algorithms.paraflow import baseline, paraflows
from paraflow_hpc.bench import paraflows as bench
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
    """d_B per F step (N_F per window, fewer in a truncated last F) plus N per evaluation
    (the first window also evaluates W_0)."""
    evaluations = sum(result.history["evaluated"]) + (1 if result.history["evaluated"][0] else 0)
    return sum(result.history["fine_steps"]) * fine.schedule.size + n_samples * evaluations


@pytest.mark.parametrize("name,batch,n_f,eta,budget", [
    ("classification", 10, 20, 0.1, 3000),
    ("approximation", 5, 10, 0.01, 3000),
    ("pinn", 4, 2, 0.01, 2 * 4 * 2 + 2 * 1440),   # window 1 evaluates W_0 and W_1 only; window 2 is F alone
])
def test_small_budget_runs_account_exactly_and_decrease(name, batch, n_f, eta, budget):
    problem, fine, coarse, W0 = make_run(name, batch, n_f, eta)
    result = paraflows(problem, fine, coarse, W0, n_g=5, budget=budget)
    assert result.stop_reason == "budget" and result.iterations >= 2
    assert result.budget_used <= budget
    assert result.budget_used == problem.gradient_evaluations == expected_cost(result, fine, problem.n_samples)
    assert budget - result.budget_used < batch   # used up like GD's, the last F truncated if need be
    assert result.history["fine_steps"][:-1] == [n_f] * (result.iterations - 1)
    h = result.history
    for k in range(result.iterations):   # Theorem 1, second statement: L(W_{k+1}) <= L(F(W_k))
        if h["evaluated"][k]:
            assert h["loss"][k + 1] <= h["fine_loss"][k]
    if batch == problem.n_samples:   # deterministic, stable F: first statement too, L(W_{k+1}) <= L(W_k)
        assert all(b <= a for a, b in zip(h["loss"], h["loss"][1:]))
    before = problem.gradient_evaluations
    base_budget = min(budget, 40 * batch + batch - 1)
    base = baseline(problem, fine, W0, budget=base_budget)
    assert base.budget_used == problem.gradient_evaluations - before == 40 * batch
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


@pytest.mark.parametrize("optimizer,coarse_steps", [("momentum", 1), ("adam", 3), ("sgd", 2)])
def test_pluggable_propagators_account_exactly(optimizer, coarse_steps):
    """F = momentum SGD or Adam, G = k GD steps of N_F eta_F / k: every extra G step costs N gradients."""
    problem, fine, _, W0 = make_run("approximation", 6, 5, 0.01, seed=1, optimizer=optimizer)
    coarse = Coarse(problem, 5 * 0.01, steps=coarse_steps)
    result = paraflows(problem, fine, coarse, W0, n_g=6, budget=5000)
    extra = (coarse_steps - 1) * problem.n_samples * result.counters["coarse_calls"]
    assert result.budget_used == problem.gradient_evaluations == expected_cost(result, fine, problem.n_samples) + extra
    assert result.budget_used <= 5000 and result.iterations >= 3
    h = result.history
    assert all(h["loss"][k + 1] <= h["fine_loss"][k] for k in range(result.iterations) if h["evaluated"][k])


@pytest.mark.parametrize("tolerance", ["loss_tol", "grad_tol"])
def test_tolerances_stop_the_run(tolerance):
    """The run stops at the first window whose L(W_k) (or ||grad L(W_k)||) is below the tolerance."""
    problem, fine, coarse, W0 = make_run("approximation", 30, 10, 0.01, seed=0)
    grad_norms = [math.inf]   # unknown at W_0 before the first window
    free = paraflows(problem, fine, coarse, W0, n_g=10, k_max=6,
                     after_iteration=lambda state: grad_norms.append(float(state.start.grad.norm())) or False)
    measure = free.history["loss"] if tolerance == "loss_tol" else grad_norms
    value = measure[3]
    expected = next(k for k, m in enumerate(measure) if m <= value)
    result = paraflows(problem, fine, coarse, W0, n_g=10, k_max=6, **{tolerance: value})
    assert (result.stop_reason, result.iterations) == (tolerance, expected)
    assert torch.equal(result.W, paraflows(problem, fine, coarse, W0, n_g=10, k_max=expected).W)


@pytest.mark.parametrize("n_g", [0, 1])
def test_no_coarse_candidates_is_fine_propagator_alone(n_g):
    problem, fine, coarse, W0 = make_run("approximation", 3, 7, 0.02, seed=3)
    result = paraflows(problem, fine, coarse, W0, n_g=n_g, k_max=4)
    sgd = baseline(problem, fine, W0, budget=0, max_steps=4 * 7)
    assert torch.equal(result.W, sgd.W)
    assert result.budget_used == 4 * fine.cost() == sgd.budget_used
    # at a budget that ends inside the fifth F, the truncated F takes SGD's steps 28, 29: still SGD exactly
    budget = 4 * fine.cost() + 2 * 3 + 2
    result = paraflows(problem, fine, coarse, W0, n_g=n_g, budget=budget)
    sgd = baseline(problem, fine, W0, budget=budget)
    assert torch.equal(result.W, sgd.W) and result.history["fine_steps"] == [7, 7, 7, 7, 2]
    assert result.budget_used == sgd.budget_used == 30 * 3


def test_full_batch_sgd_is_gd_and_batches_are_pure_functions_of_step():
    schedule = BatchSchedule(30, 4, seed=9)
    assert torch.equal(schedule(17), BatchSchedule(30, 4, seed=9)(17))
    assert not torch.equal(schedule(17), schedule(18))
    assert torch.equal(BatchSchedule(30, 30, seed=9)(5), torch.arange(30))


def test_per_sample_gradients_sum_to_the_loss_gradient():
    small = make_problem("approximation")
    W = small.initial_weights(1)
    idx = torch.tensor([0, 7, 29])
    assert torch.allclose(small.per_sample_gradients(W, idx).sum(0), small.value_and_grad(W, idx)[1],
                          rtol=1e-12, atol=1e-15)
    problem = make_problem("pinn")
    W = problem.initial_weights(0)
    idx = torch.tensor([3, 100, 500, 1200])
    rows = problem.per_sample_gradients(W, idx)
    _, g = problem.value_and_grad(W, idx)
    assert torch.allclose(rows.sum(0), g, rtol=1e-12, atol=1e-15)
    # the Laplacian residual is checked against finite differences of the network
    x = problem.inputs[500]
    h = 1e-4
    u = lambda y: float(problem.u(W, y))
    fd = sum(u(x + h * e) - 2 * u(x) + u(x - h * e) for e in torch.eye(2, dtype=torch.float64)) / h ** 2
    residual = float(torch.sqrt(2 * problem.interior_loss(W, x)))   # |Lap u + 1|
    assert abs(residual - abs(fd + 1.0)) < 1e-5
    # DeepXDE's loss: the mean squared residual of each term, summed over the two terms
    boundary, interior = problem.inputs[:problem.n_boundary], problem.inputs[problem.n_boundary:]
    lap = torch.stack([torch.trace(torch.func.hessian(problem.u, argnums=1)(W, y)) for y in interior])
    u_boundary = torch.stack([problem.u(W, y) for y in boundary])
    expected = float((u_boundary ** 2).mean() + ((lap + 1.0) ** 2).mean())
    assert problem.loss(W) == pytest.approx(expected, rel=1e-12)


@pytest.fixture(scope="module")
def one_rank_paraflow(tmp_path_factory):
    path = tmp_path_factory.mktemp("paraflow") / "one.json"
    run_script(1, "paraflow_equivalence.py", path, timeout=240)
    return json.loads(path.read_text())


@pytest.mark.parametrize("nranks", [2, 3])
def test_paraflow_equals_paraflows_and_is_rank_count_independent(tmp_path, nranks, one_rank_paraflow):
    """The script asserts ParaFlow(init b) == ParaFlowS-argmin and the cost on each rank count;
    here both initialisations must give the 1-rank iterates bit for bit (N_G = 2 leaves a rank idle on 3)."""
    run_script(nranks, "paraflow_equivalence.py", tmp_path / "many.json", timeout=240)
    assert json.loads((tmp_path / "many.json").read_text()) == one_rank_paraflow


def _read(path):
    with h5py.File(path) as f:
        return {k: f["history"][k][()] for k in f["history"]}, f["data/weights"][()], dict(f.attrs)


@pytest.mark.parametrize("method,nranks", [("paraflows", 2), ("paraflow", 2)])
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
    (paraflow_runner, {"reduction": "median"}, "reduction = 'median' is not allowed"),
    (bench, {"grid": "false", "race": "false"}, "leaves nothing to run"),
    (bench, {"batches": "full,11"}, "batches: 11 exceeds the 10 samples of classification"),
])
def test_bad_options_are_refused_with_a_clear_message(module, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(module.Config, None, overrides, 1)


def test_cli_reports_bad_option_on_every_rank(tmp_path):
    proc = run_cli(2, ["run", "paraflow", "--problem", "approximation", "--batch-size", "31",
                       "--output", tmp_path / "x.h5"], check=False, timeout=120)
    assert proc.returncode == 2   # every rank exits 2; the message is printed once (by rank 0)
    assert proc.stderr.count("batch_size = 31 exceeds the 30 samples") == 1


def test_paper_tables_are_looked_up_by_cell():
    tables = bench.paper_tables()
    assert bench.paper_row(tables, "classification", "full", 0.1, 10000)["R"][0] == 0.0884
    assert bench.paper_row(tables, "approximation", "1", 0.01, 1000000)["gd"] == 0.09
    assert bench.paper_row(tables, "pinn", "half", 0.0001, 100000000)["R"][1] == 0.452   # batch 724
    assert bench.paper_row(tables, "approximation", "full", 0.01, 3000) is None


def test_bench_writes_ratios_table_and_race(tmp_path):
    """A two-row grid and the race on 2 ranks: R = L_ParaFlowS / L_GD in the HDF5 file and the markdown;
    N_F = 100 on approximation at budget 3000 is one F and nothing else (= GD, R = 1 exactly);
    N_F = 200 does not fit."""
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "paraflows", "--problems", "approximation,classification", "--batches", "full",
                "--etas", "0.01", "--budgets", "3000", "--n-fs", "10,100,200", "--n-g", "5",
                "--race-budget", "600", "--output", out, "--quiet"], timeout=300)
    with h5py.File(out) as f:
        ratio, loss, gd = (f["data"][k][()] for k in ("ratio", "loss_paraflows", "loss_gd"))
        rows, race = json.loads(f.attrs["rows"]), json.loads(f.attrs["race"])
    assert [r[0] for r in rows] == ["approximation", "classification"]
    assert np.array_equal(ratio, loss / gd[:, None], equal_nan=True)
    assert ratio[0, 1] == 1.0 and np.isnan(ratio[0, 2]) and np.isfinite(ratio[1]).all()
    text = (tmp_path / "bench.md").read_text()
    assert "| full | 0.01 | 3e+03 |" in text and "1.0000 / –" in text
    assert [e["ranks"] for e in race["entries"]] == [1, 1, 1, 2]
    assert all(e["reached"] and e["loss"] <= race["target"] for e in race["entries"])
    # a second file with another N_F of one row and a new row: `report` merges both into one table
    more = tmp_path / "more.h5"
    run_cli(1, ["bench", "paraflows", "--problems", "approximation", "--batches", "full,1", "--etas", "0.01",
                "--budgets", "3000", "--n-fs", "50", "--n-g", "5", "--race", "false", "--output", more, "--quiet"],
            timeout=300)
    run_cli(1, ["report", out, more, "--out", tmp_path / "report"], timeout=120)
    merged = (tmp_path / "report" / "paraflows_tables.md").read_text()
    approx_full = next(line for line in merged.splitlines() if line.startswith("| full | 0.01 | 3e+03 | 4.8424"))
    cells = approx_full.split(" | ")[6:]   # N_F = 10, 50, 100, 200
    assert cells[0].startswith(f"{ratio[0, 0]:.4f}") and cells[2].startswith("1.0000") and cells[3].startswith("–")
    assert not cells[1].startswith("n/r")
    assert "| 1 | 0.01 | 3e+03 |" in merged and "n/r" in merged   # the batch-1 row has N_F = 50 only
    # files from runs with another N_G are not mixed into one table
    other = tmp_path / "other.h5"
    run_cli(1, ["bench", "paraflows", "--problems", "approximation", "--etas", "0.01", "--budgets", "300",
                "--n-fs", "10", "--n-g", "6", "--race", "false", "--output", other, "--quiet"], timeout=300)
    proc = run_cli(1, ["report", out, other, "--out", tmp_path / "mixed"], check=False, timeout=120)
    assert proc.returncode == 2 and "differ in (N_G, selection, seed)" in proc.stdout


def test_torch_optimizers_spend_the_budget_and_descend():
    """Adam and L-BFGS of the equal-budget comparison: full-batch steps until the budget is spent
    (Adam: exactly budget // N steps), counted by the problem, and both lower the loss."""
    problem = make_problem("approximation")
    W0 = problem.initial_weights(0)
    L0, n = problem.loss(W0), problem.n_samples
    adam = bench.torch_optimizer(problem, W0, "adam", 1e-2, 20 * n + 5)
    assert adam["steps"] == 20 and adam["gradients"] == 20 * n and adam["loss"] < L0
    lbfgs = bench.torch_optimizer(problem, W0, "lbfgs", 1.0, 20 * n)
    assert lbfgs["steps"] >= 1 and lbfgs["gradients"] >= 20 * n - n and lbfgs["loss"] < L0
    assert torch.equal(W0, problem.initial_weights(0))  # W0 itself is not trained in place


def test_bench_compares_with_torch_optimizers_at_equal_budget(tmp_path):
    out = tmp_path / "optim.h5"
    run_cli(2, ["bench", "paraflows", "--grid", "false", "--race", "false", "--optim-problems", "approximation",
                "--optim-budget", "900", "--optim-lrs", "0.01", "--quiet", "--output", str(out)], timeout=240)
    text = (tmp_path / "optim.md").read_text()
    assert "ParaFlow against torch.optim at 900 full-batch gradient evaluations" in text
    with h5py.File(out, "r") as f:
        (comparison,) = json.loads(f.attrs["optimizers"])
    methods = [e["method"] for e in comparison["entries"]]
    assert [m.split(" ")[0] for m in methods] == ["GD", "ParaFlowS", "ParaFlow", "Adam", "ParaFlowS", "L-BFGS"]
    for entry in comparison["entries"]:
        assert math.isfinite(entry["loss"]) and entry["loss"] < comparison["initial"]
        assert entry["method"].startswith("L-BFGS") or entry["gradients"] <= 900
