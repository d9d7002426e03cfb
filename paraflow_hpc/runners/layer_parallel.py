"""``paraflow-hpc run layer-parallel``: layer-parallel ResNet training, one rank per block of layers."""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from ..algorithms.layer_parallel import (COUPLINGS, FEATURES, LayerParallelState, check_partition, costate_regression,
                                         layer_block, train)
from ..comm import Progress, torch_device
from ..config import ConfigError, RunConfig, option, require
from ..io.results import write_result
from ..problems.resnet import SCHEMES, ResNetSpec, init_params
from .common import (EXIT_PREEMPTED, CheckpointHook, blew_up, configured_problem, problem_args_option,
                     problem_option)

DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclass
class Config(RunConfig):
    method = "layer-parallel"
    problem: str = problem_option("swissroll", "dataset")
    problem_args: dict = problem_args_option()
    data: str = option("", "data file (HDF5, NPZ or CSV: x (n, d) float, y (n,) integer labels, optional "
                           "x_test, y_test; without them 20% are held out): replaces --problem")
    samples: int = option(1000, "number of samples before the 80/20 train/test split (digits: <= 1797)")
    depth: int = option(16, "residual layers T_delta of the fine model")
    width: int = option(4, "channels per state (the Verlet scheme carries two states)")
    final_time: float = option(4.0, "T: the layers discretise [0, T] with step delta = T / depth")
    scheme: str = option("verlet", "time discretisation of the ResNet", choices=list(SCHEMES))
    coupling: str = option("regression", "regression: Alg. 4 (co-state regression); exact: serial SGD "
                                         "distributed over the ranks (states and co-states exchanged before use)",
                           choices=list(COUPLINGS))
    coarse_iterations: int = option(50, "H: SGD iterations on the coarse model (global prediction); 0: single-level")
    coarse_lr: float = option(0.0, "learning rate of the coarse model (0: lr)")
    iterations: int = option(300, "SGD iterations of the fine model")
    lr: float = option(0.5, "learning rate")
    batch_size: int = option(32, "mini-batch size")
    weight_decay: float = option(0.0, "weight decay (the regulariser R = wd/2 |U|^2)")
    window: int = option(20, "regression window: the most recent batches of (state, co-state) pairs kept")
    ridge: float = option(1e-6, "ridge parameter of the co-state regression (relative to the data scale)")
    regression_by_class: bool = option(True, "fit one affine co-state map per class label (false: one map, "
                                             "eq. (6) as printed)")
    regression_features: str = option("affine", "regressors of the co-state model: affine (eq. (6)) or quadratic "
                                                 "(also the products of state components)", choices=list(FEATURES))
    eval_every: int = option(10, "evaluate full train/test accuracy every k iterations (not timed)")
    diagnose_every: int = option(0, "every k iterations also compute each rank's exact gradient and record its "
                                    "cosine with the applied one (regression coupling; not timed; 0: never)")
    dtype: str = option("float64", "floating-point type", choices=list(DTYPES))
    device: str = option("auto", "auto: one GPU per rank when CUDA is available, else the CPU",
                         choices=["auto", "cpu", "cuda"])

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        for key in ("samples", "depth", "width", "iterations", "batch_size", "window", "eval_every"):
            require(getattr(self, key) >= 1, f"{key} = {getattr(self, key)}: must be >= 1")
        for key in ("final_time", "lr"):
            require(getattr(self, key) > 0, f"{key} = {getattr(self, key)}: must be > 0")
        for key in ("coarse_iterations", "coarse_lr", "weight_decay", "ridge", "diagnose_every"):
            require(getattr(self, key) >= 0, f"{key} = {getattr(self, key)}: must be >= 0")
        require(self.samples >= 10, f"samples = {self.samples}: need at least 10 for a train/test split")
        n_train = len(self.load_dataset().y_train)
        require(self.batch_size <= n_train - 1,
                f"batch_size = {self.batch_size} exceeds the {n_train} training samples less one; "
                "lower batch_size" + ("" if self.data else " or raise samples"))
        coarse = self.coupling == "regression" and self.coarse_iterations > 0
        if coarse and self.depth % 2:
            raise ConfigError(f"depth = {self.depth} is odd: the coarse model has half the layers, so depth must "
                              "be even (or use --coarse-iterations 0 for the single-level variant)")
        units = self.depth // 2 if coarse else self.depth
        if units < comm_size:
            raise ConfigError(
                f"depth = {self.depth} gives {units} {'coarse layers' if coarse else 'layers'} for {comm_size} "
                f"MPI ranks: every rank needs at least one; use depth >= {comm_size * (2 if coarse else 1)} "
                "or fewer ranks")

    def default_output(self) -> str:
        if self.data:
            return os.path.join("results", f"layer-parallel-{os.path.splitext(os.path.basename(self.data))[0]}.h5")
        return super().default_output()

    def load_dataset(self):
        """The data set (``--data`` or the problem), loaded and checked once."""
        return configured_problem(self, "dataset", n_samples=self.samples, seed=self.seed)

    def checkpoint_limits(self) -> dict:
        """Counts a checkpoint of this run can hold: iterations up to its limit."""
        return {"iteration": self.iterations}

    def identity(self) -> dict:
        """The options that define the iterates: a checkpoint must match them to be resumed."""
        keys = ("problem", "problem_args", "data", "samples", "seed", "depth", "width", "final_time", "scheme",
                "coupling", "coarse_iterations", "coarse_lr", "iterations", "lr", "batch_size", "weight_decay",
                "window", "ridge", "regression_by_class", "regression_features",
                "eval_every", "diagnose_every", "dtype")
        return {key: getattr(self, key) for key in keys}


def setup(cfg: Config, comm):
    """Spec, whole-network initial weights and data tensors on this rank's device."""
    device = torch_device(comm, cfg.device)
    dtype = DTYPES[cfg.dtype]
    dataset = cfg.load_dataset()
    spec = ResNetSpec(dataset.in_dim, cfg.width, dataset.n_classes, cfg.depth, cfg.scheme, cfg.final_time)
    data = {name: torch.from_numpy(getattr(dataset, name)).to(device) for name in
            ("x_train", "y_train", "x_test", "y_test")}
    data = {name: t.to(dtype) if t.is_floating_point() else t for name, t in data.items()}
    return spec, init_params(spec, cfg.seed, dtype, device), data, device


def train_options(cfg: Config) -> dict:
    return dict(iterations=cfg.iterations, lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed,
                coupling=cfg.coupling, coarse_iterations=cfg.coarse_iterations, coarse_lr=cfg.coarse_lr or cfg.lr,
                window=cfg.window, ridge=cfg.ridge, by_class=cfg.regression_by_class,
                features=cfg.regression_features, weight_decay=cfg.weight_decay,
                eval_every=cfg.eval_every, diagnose_every=cfg.diagnose_every)


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    spec, params, data, device = setup(cfg, comm)
    coarse = cfg.coupling == "regression" and cfg.coarse_iterations > 0
    check_partition(spec.depth, comm.size, coarse)
    start, stop = layer_block(spec.depth, comm.size, comm.rank, coarse)
    progress(f"layer-parallel on {comm.size} ranks ({device.type}): {cfg.data or cfg.problem}, {cfg.scheme} ResNet, "
             f"depth {cfg.depth}, width {cfg.width}, coupling {cfg.coupling}, "
             f"{'coarse prediction H = %d' % cfg.coarse_iterations if coarse else 'single-level'}")

    hook = CheckpointHook(comm, cfg, "layer-parallel", cfg.identity(), progress, fix="lower lr")
    resume = None
    if cfg.restart:
        regression = costate_regression(spec, cfg.window, cfg.ridge, cfg.regression_by_class,
                                        cfg.regression_features)
        _, resume = hook.restore(cfg.restart, lambda meta, arrays, root: LayerParallelState.from_arrays(
            int(meta["iteration"]), spec, start, stop, regression, arrays, root, device))
        progress(f"restarting from {cfg.restart} after iteration {resume.k}")

    def after_iteration(state: LayerParallelState) -> bool:
        # a non-finite weight on any rank stops every rank before it reaches a checkpoint
        finite = all(bool(torch.isfinite(t).all()) for t in state.net.params.values())
        return hook(state.k, state.rank_arrays, state.root_arrays, finite=finite)

    result = train(comm, spec, params, data, **train_options(cfg), resume=resume,
                   after_iteration=after_iteration, progress=progress)
    if result.interrupted:
        progress(f"stopped after iteration {result.iterations}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED

    last = comm.size - 1
    shared = {n: t.cpu().numpy() for n, t in result.params.items() if n not in ("K", "b")}
    shared = {**comm.bcast(shared if comm.rank == 0 else None, root=0),
              **comm.bcast(shared if comm.rank == last else None, root=last)}
    evals = result.evals
    write_result(
        comm, cfg.output, method="layer-parallel", config=cfg.as_dict(),
        history={**result.history, **{f"eval_{n}": v for n, v in evals.items()}},
        timings=result.timings, counters=result.counters,
        solution={"K": result.params["K"].cpu().numpy(), "b": result.params["b"].cpu().numpy()},
        data={**shared, "layer_blocks": np.array(comm.allgather((start, stop)))},
        attrs={"iterations": result.iterations, "final_train_accuracy": float(evals["train_accuracy"][-1]),
               "final_test_accuracy": float(evals["test_accuracy"][-1]),
               "train_seconds": float(evals["seconds"][-1]), "device": device.type,
               "restarted_from": cfg.restart,
               "blew_up": blew_up(comm, "layer-parallel training", float(evals["train_loss"][0]),
                                  float(evals["train_loss"][-1]))})
    progress(f"done: {result.iterations} iterations, train accuracy {evals['train_accuracy'][-1]:.4f}, "
             f"test accuracy {evals['test_accuracy'][-1]:.4f}, training time {evals['seconds'][-1]:.2f} s; "
             f"result written to {cfg.output}")
    return 0
