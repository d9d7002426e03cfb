"""Layer-parallel ResNet training: Alg. 3 = SGD, co-state (backward) solves against autograd, the
regression on a linear network, exact coupling = backprop on 1-3 ranks, Alg. 4 accuracy on 2-4 ranks,
bit-identical restart, and clear errors for bad input."""
import re

import h5py
import numpy as np
import pytest
import torch
from mpi4py import MPI

from conftest import run_cli
from paraflow_hpc.algorithms.layer_parallel import BatchStream, CostateRegression, train
from paraflow_hpc.config import ConfigError, build_config, parse_overrides
from paraflow_hpc.problems.datasets import load_dataset
from paraflow_hpc.problems.resnet import (ResNetSpec, Subnetwork, full_forward, init_params, loss_value,
                                          opening, layer_step, prolong, restrict)
from paraflow_hpc.runners import layer_parallel as runner
from paraflow_hpc.runners.layer_parallel import Config

SMALL = ["--problem", "ellipses", "--samples", "400", "--depth", "8", "--width", "4", "--lr", "0.5",
         "--batch-size", "32", "--eval-every", "50"]


def tensors(name="ellipses", samples=300, seed=0):
    ds = load_dataset(name, samples, seed)
    return {k: torch.from_numpy(getattr(ds, k)) for k in ("x_train", "y_train", "x_test", "y_test")}, ds


def sgd_with_backprop(spec, params, data, *, iterations, lr, batch_size, seed, weight_decay=0.0):
    """The reference: torch.optim.SGD on the whole network as one autograd graph, same mini-batches."""
    ref = {n: t.clone().requires_grad_() for n, t in params.items()}
    opt = torch.optim.SGD(ref.values(), lr=lr, weight_decay=weight_decay)
    batches = BatchStream(len(data["y_train"]), batch_size, seed=seed, stream=0)
    for k in range(iterations):
        idx = batches.indices(k)
        opt.zero_grad()
        loss_value(spec, full_forward(spec, ref, data["x_train"][idx]), data["y_train"][idx]).backward()
        opt.step()
    return {n: t.detach() for n, t in ref.items()}


@pytest.mark.parametrize("scheme", ["euler", "verlet"])
def test_serial_alg3_equals_sgd_with_backprop(scheme):
    """Lemma 2.2: forward solve, backward (co-state) solve, update == torch SGD on the whole graph."""
    data, ds = tensors()
    spec = ResNetSpec(ds.in_dim, 3, 2, 6, scheme, final_time=2.0)
    params = init_params(spec, seed=3)
    result = train(MPI.COMM_SELF, spec, params, data, iterations=12, lr=0.3, batch_size=16, seed=5,
                   coupling="exact", weight_decay=1e-3, eval_every=100)
    ref = sgd_with_backprop(spec, params, data, iterations=12, lr=0.3, batch_size=16, seed=5, weight_decay=1e-3)
    changed = torch.max(torch.abs(ref["K"] - params["K"]))
    assert changed > 1e-3  # the comparison is not between two untouched copies
    for name, value in result.params.items():
        torch.testing.assert_close(value, ref[name], rtol=0, atol=1e-13)


@pytest.mark.parametrize("scheme", ["verlet", "euler"])
def test_backward_solve_matches_autograd_of_whole_net(scheme):
    """Gradient check: the per-layer co-state recursion over two blocks gives autograd's gradients of
    the whole network and, at every layer, the co-state dLoss/dX_j of the whole graph."""
    data, ds = tensors()
    spec = ResNetSpec(ds.in_dim, 3, 2, 8, scheme, final_time=3.0)
    params = init_params(spec, seed=1)
    params["b"] = 0.3 * torch.randn(params["b"].shape, dtype=torch.float64)
    x, y = data["x_train"][:20], data["y_train"][:20]

    left = Subnetwork(spec, {n: t[:3] if n in ("K", "b") else t for n, t in params.items()}, 0, 3)
    right = Subnetwork(spec, {n: t[3:] if n in ("K", "b") else t for n, t in params.items()}, 3, 8)
    right.forward(left.forward(x))
    _, p_split, head_grads, _ = right.loss_costate(y)
    p_mid, right_grads = right.backward(p_split)
    none, left_grads = left.backward(p_mid)
    assert none is None

    ref = {n: t.clone().requires_grad_() for n, t in params.items()}
    states = [opening(spec, x, ref["open_W"], ref["open_b"])]
    for j in range(spec.depth):
        states.append(layer_step(spec, states[-1], ref["K"][j], ref["b"][j]))
    for s in states:
        s.retain_grad()
    out = states[-1][:, :spec.width] @ ref["head_W"].T + ref["head_b"]
    loss_value(spec, out, y).backward()

    torch.testing.assert_close(torch.cat([left_grads["K"], right_grads["K"]]), ref["K"].grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(torch.cat([left_grads["b"], right_grads["b"]]), ref["b"].grad, rtol=1e-12, atol=1e-14)
    for name, grad in {**head_grads, "open_W": left_grads["open_W"], "open_b": left_grads["open_b"]}.items():
        torch.testing.assert_close(grad, ref[name].grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(p_mid, states[3].grad, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(p_split, states[-1].grad, rtol=1e-12, atol=1e-14)
    # and autograd itself against finite differences of the whole net (the Verlet step is differentiable)
    small = {n: t[:2].clone() if n in ("K", "b") else t.clone() for n, t in params.items()}
    spec2 = ResNetSpec(ds.in_dim, 3, 2, 2, scheme, final_time=1.0)

    def f(K):
        return loss_value(spec2, full_forward(spec2, {**small, "K": K}, x[:5]), y[:5])

    assert torch.autograd.gradcheck(f, (small["K"].requires_grad_(),))


def test_regression_recovers_exact_costate_map_of_linear_network():
    """Identity activation, squared loss, targets an affine function of the input: the co-state at a
    split point is exactly affine in the state there, and the least-squares fit recovers that map."""
    torch.manual_seed(0)
    spec = ResNetSpec(3, 3, 2, 6, "euler", final_time=1.5, activation="identity", loss="mse")
    params = init_params(spec, seed=2)
    params["b"] = 0.5 * torch.randn(params["b"].shape, dtype=torch.float64)
    M, c = torch.randn(3, 2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    left = Subnetwork(spec, {n: t[:4] if n in ("K", "b") else t for n, t in params.items()}, 0, 4)
    right = Subnetwork(spec, {n: t[4:] if n in ("K", "b") else t for n, t in params.items()}, 4, 6)

    def pair(n):
        x = torch.randn(n, 3, dtype=torch.float64)
        X = left.forward(x)
        right.forward(X)
        _, P, _, _ = right.loss_costate(x @ M + c)
        p_in, _ = right.backward(P)
        return X, p_in * n  # per-sample co-state

    regression = CostateRegression(window=3, ridge=0.0)
    for _ in range(5):  # more pairs than the window holds: the sliding window keeps the last 3
        regression.add(*pair(8))
    assert len(regression.xs) == 3
    X, P = pair(50)
    error = torch.max(torch.abs(regression.predict(X) - P)) / torch.max(torch.abs(P))
    assert error < 1e-9
    # a ridge penalty biases the fit: the exactness above is the regression's, not the test's
    biased = CostateRegression(window=3, ridge=1.0)
    for x_, p_ in zip(regression.xs, regression.ps):
        biased.add(x_, p_)
    assert torch.max(torch.abs(biased.predict(X) - P)) / torch.max(torch.abs(P)) > 1e-3


def test_quadratic_regression_recovers_a_quadratic_map_and_never_exceeds_the_observed_scale():
    """quadratic features: a co-state map quadratic in the state is fitted exactly inside the data;
    far outside it, the prediction is scaled back to the largest co-state in the window."""
    gen = torch.Generator().manual_seed(4)
    Q = torch.randn(3, 3, 2, dtype=torch.float64, generator=gen)
    A = torch.randn(3, 2, dtype=torch.float64, generator=gen)

    def costate(X):
        return torch.einsum("ri,ijk,rj->rk", X, Q, X) + X @ A + 0.5

    regression = CostateRegression(window=4, ridge=0.0, features="quadratic")
    affine = CostateRegression(window=4, ridge=0.0)
    for _ in range(4):
        X = torch.randn(16, 3, dtype=torch.float64, generator=gen)
        regression.add(X, costate(X)), affine.add(X, costate(X))
    X = torch.randn(50, 3, dtype=torch.float64, generator=gen)
    P = costate(X)
    assert torch.max(torch.abs(regression.predict(X) - P)) / torch.max(torch.abs(P)) < 1e-9
    assert torch.max(torch.abs(affine.predict(X) - P)) / torch.max(torch.abs(P)) > 1e-2
    largest = max(float(p.norm(dim=1).max()) for p in regression.ps)
    far = regression.predict(100 * X)
    assert torch.all(far.norm(dim=1) <= largest * (1 + 1e-12))


def test_prolongation_and_restriction():
    coarse = torch.randn(4, 3, 3, dtype=torch.float64)
    fine = prolong(coarse)
    assert fine.shape == (8, 3, 3) and torch.equal(fine[2], coarse[1]) and torch.equal(fine[3], coarse[1])
    assert torch.equal(restrict(fine), coarse)


def run(tmp_path, nranks, name, *args, **kwargs):
    out = tmp_path / f"{name}-{nranks}.h5"
    proc = run_cli(nranks, ["run", "layer-parallel", "--quiet", "--output", str(out), *SMALL, *args], **kwargs)
    if proc.returncode:
        return proc
    with h5py.File(out, "r") as f:
        return {"K": f["solution/K"][()], "b": f["solution/b"][()], "head_W": f["data/head_W"][()],
                "open_W": f["data/open_W"][()], "loss": f["history/loss"][()],
                "train_accuracy": f["history/eval_train_accuracy"][()],
                "mse": f["history/regression_mse"][()] if "regression_mse" in f["history"] else None,
                "cosine": f["history/gradient_cosine"][()] if "gradient_cosine" in f["history"] else None,
                "rel": f["history/regression_rel_error"][()] if "regression_rel_error" in f["history"] else None,
                "compute": f["history/compute_seconds"][()], "wait": f["history/wait_seconds"][()],
                "timings": {k: f["timings"][k][()] for k in f["timings"]}, "blocks": f["data/layer_blocks"][()]}


def serial_in_process(*args):
    """The same configuration as ``run`` with the exact coupling on one process (Alg. 3)."""
    cfg = build_config(Config, None, parse_overrides([*SMALL, *args, "--coupling", "exact"]), 1)
    spec, params, data, _ = runner.setup(cfg, MPI.COMM_SELF)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the MPI runs (OMP_NUM_THREADS=1): tiny tensors, no thread contention
    try:
        result = train(MPI.COMM_SELF, spec, params, data, **runner.train_options(cfg))
    finally:
        torch.set_num_threads(threads)
    return {"K": result.params["K"].numpy(), "b": result.params["b"].numpy(),
            "head_W": result.params["head_W"].numpy(), "open_W": result.params["open_W"].numpy(),
            "loss": result.history["loss"], "train_accuracy": result.evals["train_accuracy"]}


@pytest.mark.mpi
def test_exact_coupling_equals_backprop_on_1_2_3_ranks(tmp_path):
    """Exact co-states and states exchanged before use: on 1, 2 and 3 ranks the layer-parallel
    iterates are those of SGD with backprop through the whole graph, and bit-identical across ranks."""
    opts = ["--iterations", "20", "--scheme", "verlet", "--weight-decay", "1e-3"]
    serial = serial_in_process(*opts)
    cfg = build_config(Config, None, parse_overrides([*SMALL, *opts]), 1)
    spec, params, data, _ = runner.setup(cfg, MPI.COMM_SELF)
    ref = sgd_with_backprop(spec, params, data, iterations=cfg.iterations, lr=cfg.lr, batch_size=cfg.batch_size,
                            seed=cfg.seed, weight_decay=cfg.weight_decay)
    assert torch.max(torch.abs(ref["K"] - params["K"])) > 1e-3  # training moved the weights
    results = {1: serial, **{n: run(tmp_path, n, "exact", "--coupling", "exact", *opts) for n in (2, 3)}}
    assert results[3]["blocks"].tolist() == [[0, 3], [3, 6], [6, 8]]
    for n, result in results.items():
        for key in ("K", "b", "head_W", "open_W"):
            np.testing.assert_allclose(result[key], ref[key].numpy(), rtol=0, atol=1e-12, err_msg=f"{n} ranks, {key}")
        if n > 1:
            assert len(result["timings"]["total"]) == n
            for key in ("K", "b", "head_W", "open_W", "loss"):
                np.testing.assert_array_equal(result[key], serial[key])


@pytest.fixture(scope="module")
def serial_accuracy():
    return {scheme: serial_in_process("--iterations", "200", "--scheme", scheme)["train_accuracy"][-1]
            for scheme in ("euler", "verlet")}


@pytest.mark.mpi
@pytest.mark.parametrize("nranks,scheme", [(2, "verlet"), (3, "euler"), (4, "verlet")])
def test_layer_parallel_reaches_serial_accuracy(tmp_path, serial_accuracy, nranks, scheme):
    parallel = run(tmp_path, nranks, "lp", "--coarse-iterations", "50", "--iterations", "200", "--scheme", scheme)
    assert serial_accuracy[scheme] >= 0.95
    assert parallel["train_accuracy"][-1] >= serial_accuracy[scheme] - 0.03
    assert parallel["train_accuracy"][0] < 0.9  # it is the correction phase that trains the net
    assert parallel["mse"].shape == (200, nranks - 1) and np.all(np.isfinite(parallel["mse"]))
    for key in ("compute", "wait"):  # every rank's seconds per iteration
        assert parallel[key].shape == (200, nranks) and np.all(parallel[key] >= 0)
    assert np.all(parallel["compute"].sum(axis=0) > 0)


@pytest.mark.mpi
def test_two_ranks_follow_the_papers_schedule_and_record_gradient_cosines(tmp_path):
    """Paper's two-processor schedule: rank 1 works on rank 0's current mini-batch at rank 0's current
    weights, so its gradient is the true one (cosine 1) and only rank 0's co-state is inexact; on
    3 ranks the last two ranks' input states are one iteration old and no rank's cosine is 1."""
    two = run(tmp_path, 2, "diag", "--iterations", "30", "--coarse-iterations", "0", "--diagnose-every", "3")
    cos = two["cosine"]
    assert cos.shape == (30, 2)
    sampled = np.arange(30) % 3 == 0
    assert np.all(np.isnan(cos[~sampled]))
    np.testing.assert_allclose(cos[sampled, 1], 1.0, atol=1e-12)
    assert np.all(np.abs(cos[sampled, 0]) <= 1 + 1e-12) and np.nanmin(cos[sampled, 0]) < 1 - 1e-6
    assert two["rel"].shape == (30, 1) and np.all(np.isfinite(two["rel"]))
    three = run(tmp_path, 3, "diag", "--iterations", "12", "--coarse-iterations", "0", "--diagnose-every", "2")
    assert three["cosine"].shape == (12, 3)
    assert np.all(np.nanmax(three["cosine"][2::2], axis=0) < 1 - 1e-6)  # stale states or regressed co-states


@pytest.mark.mpi
def test_restart_resumes_bit_identically(tmp_path):
    """A run that checkpoints at 10 and 20 and ends at 30 == a restart from the checkpoint at 20."""
    ckpt = tmp_path / "lp.ckpt.h5"
    opts = ["--iterations", "30", "--coarse-iterations", "8", "--checkpoint", str(ckpt), "--eval-every", "10"]
    full = run(tmp_path, 2, "full", *opts, "--checkpoint-every", "10")
    with h5py.File(ckpt, "r") as f:
        assert '"iteration": 20' in f.attrs["meta"]
        assert f["rank_00000/regression_x"].shape[0] > 0
    resumed = run(tmp_path, 2, "resumed", *opts, "--restart", str(ckpt))
    for key in ("K", "b", "head_W", "open_W", "loss", "mse", "train_accuracy"):
        np.testing.assert_array_equal(resumed[key], full[key])


@pytest.mark.parametrize("nranks,args,message", [
    (3, ["--depth", "4"], "depth = 4 gives 2 coarse layers for 3 MPI ranks"),
    (3, ["--depth", "2", "--coarse-iterations", "0"], "depth = 2 gives 2 layers for 3 MPI ranks"),
    (1, ["--depth", "7"], "depth = 7 is odd"),
    (1, ["--scheme", "rk4"], "scheme = 'rk4' is not allowed; choose one of: euler, verlet"),
    (1, ["--batch-size", "400"], "batch_size = 400 exceeds"),
])
def test_bad_input_is_refused_clearly(nranks, args, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_config(Config, None, parse_overrides([*SMALL, *args]), nranks)


@pytest.mark.mpi
def test_more_ranks_than_layers_stops_every_rank_cleanly(tmp_path):
    proc = run(tmp_path, 2, "bad", "--depth", "2", check=False, timeout=120)
    assert proc.returncode == 2
    assert "every rank needs at least one" in proc.stderr


@pytest.mark.mpi
def test_benchmark_writes_hdf5_table_and_plot(tmp_path):
    """The benchmark runs serial and layer-parallel side by side; the iteration counts to the target
    in its rows are those of the accuracy series it stores."""
    out = tmp_path / "bench.h5"
    run_cli(2, ["bench", "layer-parallel", "--quiet", "--problem", "ellipses", "--samples", "200", "--depths", "4",
                "--schemes", "euler", "--iterations", "60", "--coarse-iterations", "10", "--eval-every", "5",
                "--target-accuracy", "0.85", "--output", str(out)])
    table = (tmp_path / "bench.md").read_text()
    assert table.startswith("Baseline of every speed-up: a plain torch SGD loop")
    assert "| euler | 4 | multilevel |" in table and "| euler | 4 | single-level |" in table
    assert (tmp_path / "bench.png").stat().st_size > 0
    with h5py.File(out, "r") as f:
        def iterations_to_target(run):
            reached = np.nonzero(f[f"history/euler_4_{run}_train_accuracy"][()] >= 0.85)[0]
            return 5.0 * reached[0] if len(reached) else np.nan

        serial = iterations_to_target("serial")
        assert serial > 0  # above the majority-class accuracy of the untrained net: a real training run
        np.testing.assert_equal(f["data/serial_iterations"][()], [serial, serial])
        # the exact coupling on one rank has the plain torch loop's iterates, so its accuracy series too
        np.testing.assert_equal(f["history/euler_4_exact_train_accuracy"][()],
                                f["history/euler_4_serial_train_accuracy"][()])
        assert f["history/euler_4_single_level_gradient_cosine"].shape == (60, 2)
        np.testing.assert_equal(f["data/parallel_iterations"][()],
                                [iterations_to_target("multilevel"), iterations_to_target("single_level")])
        assert f["history/euler_4_multilevel_regression_mse"].shape == (60,)
        assert np.all(f["data/compute_speedup"][()] > 0)
