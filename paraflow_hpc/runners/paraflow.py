"""``paraflow-hpc run paraflow``: ParaFlow (Alg. 1) on all ranks, one block of subintervals per rank.

The options and the state/checkpoint glue here are shared with ``run paraflows``
(:mod:`paraflow_hpc.runners.paraflows`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from .. import validation
from ..algorithms.paraflow import FlowResult, FlowState, paraflow, paraflow_window_cost
from ..comm import NonFiniteError, Progress, torch_device
from ..config import RunConfig, option, require
from ..io.results import write_result
from ..problems.networks import REDUCTIONS
from ..steppers import FINE_OPTIMIZERS, BatchSchedule, Coarse, Fine, Point
from .common import (EXIT_PREEMPTED, CheckpointHook, blew_up, configured_problem, data_option,
                     problem_args_option, problem_option)

HISTORY_INT = ("selected", "evaluated", "budget_used", "fine_steps")


@dataclass
class FlowConfig(RunConfig):
    """Options shared by ParaFlow and ParaFlowS."""

    problem: str = problem_option("classification", "network")
    problem_args: dict = problem_args_option()
    data: str = data_option()
    reduction: str = option("default", "loss (1) as a sum, a mean over samples, or DeepXDE's sum of per-term "
                            "mean squared residuals (default: the problem's)", choices=["default", *REDUCTIONS])
    batch_size: int = option(0, "mini-batch size d_B of F (0: full batch N)")
    eta: float = option(0.01, "step eta_F of F's mini-batch steps")
    n_f: int = option(10, "N_F: steps of F per window")
    fine_optimizer: str = option("sgd", "F's optimiser (state restarts at every F)", choices=list(FINE_OPTIMIZERS))
    momentum: float = option(0.9, "momentum of fine_optimizer = momentum")
    coarse_steps: int = option(1, "G = this many full-batch GD steps of size N_F * eta_F / coarse_steps")
    budget: int = option(100000, "per-sample gradient evaluations (0: no budget, then k_max stops)")
    k_max: int = option(0, "maximum number of windows (0: no limit)")
    loss_tol: float = option(0.0, "stop once the full-batch loss is <= loss_tol (0: off)")
    grad_tol: float = option(0.0, "stop once ||grad L(W_k)|| <= grad_tol where it is known (0: off)")
    keep_start: bool = option(False, "W_k stays a candidate (strict Alg. 2 line 8 at n = 0; "
                                     "monotone L(W_k) even with stochastic F); default: F(W_k) is always accepted")
    device: str = option("cpu", "torch device (auto: one GPU per rank when present)", choices=["cpu", "auto", "cuda"])

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        n = self.load_problem("cpu").n_samples
        require(self.eta > 0, f"eta = {self.eta}: the step eta_F must be > 0")
        require(self.n_f >= 1, f"n_f = {self.n_f}: F needs N_F >= 1 steps")
        require(0 <= self.batch_size <= n,
                f"batch_size = {self.batch_size} exceeds the {n} samples of problem {self.problem!r}; "
                f"use 1..{n} (or 0 for the full batch)")
        require(self.coarse_steps >= 1, f"coarse_steps = {self.coarse_steps}: must be >= 1")
        require(0 <= self.momentum < 1, f"momentum = {self.momentum}: must be in [0, 1)")
        validation.flow_stops(self.budget, self.k_max, self.loss_tol, self.grad_tol)   # as paraflow() does

    def load_problem(self, device):
        """The training problem on ``device`` (loaded and probed once per device)."""
        return configured_problem(self, "network", reduction=None if self.reduction == "default" else self.reduction,
                                  device=str(device))

    def costs(self) -> tuple[int, int, int]:
        """(cost of one F, N, extra cost of one G) in per-sample gradients."""
        n = self.load_problem("cpu").n_samples
        return self.n_f * (self.batch_size or n), n, (self.coarse_steps - 1) * n

    def require_budget(self, minimum: int, what: str) -> None:
        require(self.budget == 0 or self.budget >= minimum,
                f"budget = {self.budget} is less than {what}, {minimum} per-sample gradients; "
                f"use --budget {minimum} or more")

    def identity(self) -> dict:
        skip = {"output", "checkpoint", "checkpoint_every", "restart", "quiet", "device"}
        return {k: v for k, v in self.as_dict().items() if k not in skip}


def build(cfg: FlowConfig, comm):
    """(problem, F, G, W_0) of a run; the same on every rank."""
    device = torch_device(comm, cfg.device)
    problem = cfg.load_problem(device)
    schedule = BatchSchedule(problem.n_samples, cfg.batch_size or problem.n_samples, cfg.seed, device)
    fine = Fine(problem, schedule, cfg.n_f, cfg.eta, cfg.fine_optimizer, momentum=cfg.momentum)
    coarse = Coarse(problem, cfg.n_f * cfg.eta, cfg.coarse_steps)
    return problem, fine, coarse, problem.initial_weights(cfg.seed)


def state_arrays(state: FlowState) -> dict[str, np.ndarray]:
    arrays = {"W": state.W.cpu().numpy(), "used": np.array(state.used)}
    if state.start is not None:
        arrays["start_grad"] = state.start.grad.cpu().numpy()
        arrays["start_loss"] = np.array(state.start.loss)
    for key, values in state.history.items():
        arrays[f"history_{key}"] = np.array(values, dtype=np.int64 if key in HISTORY_INT else float)
    return arrays


def state_from(meta: dict, arrays: dict, device) -> FlowState:
    W = torch.from_numpy(arrays["W"]).to(device)
    start = None
    if "start_grad" in arrays:
        start = Point(W, float(arrays["start_loss"]), torch.from_numpy(arrays["start_grad"]).to(device))
    history = {k[len("history_"):]: v.tolist() for k, v in arrays.items() if k.startswith("history_")}
    return FlowState(int(meta["iteration"]), W, start, int(arrays["used"]), history)


def checkpointing(comm, cfg, kind: str, progress):
    """(hook, resume state or None, after_iteration callback) for a run on ``comm``."""
    hook = CheckpointHook(comm, cfg, kind, cfg.identity(), progress)
    resume = None
    if cfg.restart:
        device = torch_device(comm, cfg.device)
        _, resume = hook.restore(cfg.restart, lambda meta, _, root: state_from(meta, root, device))
        progress(f"restarting from {cfg.restart} after window {resume.k}")

    def after_iteration(state: FlowState) -> bool:
        return hook(state.k, lambda: {}, lambda: state_arrays(state))

    return hook, resume, after_iteration


def check_finite(result: FlowResult, method: str, unit: str, eta: float) -> None:
    """Collective-free (``result`` is the same on every rank): NonFiniteError if the run blew up."""
    if result.stop_reason == "non_finite":
        raise NonFiniteError(f"{method}: non-finite loss L = {result.loss} in {unit} {result.iterations}: "
                             f"the step eta = {eta:g} is too large for this problem; lower --eta")


def history_arrays(history: dict) -> dict[str, np.ndarray]:
    return {k: np.array(v, dtype=np.int64 if k in HISTORY_INT else float) for k, v in history.items()}


@dataclass
class Config(FlowConfig):
    method = "paraflow"
    n_g: int = option(0, "N_G: subintervals per window (0: one per rank)")
    init: str = option("coarse", "initial values of the window: coarse = G-propagated (a), equal = all W_k (b)",
                       choices=["coarse", "equal"])

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        require(self.n_g >= 0, f"n_g = {self.n_g}: must be >= 0 (0: one subinterval per rank)")
        fine_cost, n, coarse_extra = self.costs()
        self.require_budget(paraflow_window_cost(self.n_g or comm_size, self.init, False, fine_cost, n, coarse_extra),
                            "one ParaFlow window")


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    problem, fine, coarse, W0 = build(cfg, comm)
    n_g = cfg.n_g or comm.size
    progress(f"ParaFlow on {comm.size} ranks: {problem.name} (N = {problem.n_samples}, d = {problem.n_params}, "
             f"{problem.reduction} loss), N_G = {n_g}, init {cfg.init}, F = {fine.describe()}, "
             f"G = {coarse.describe()}, budget {cfg.budget}")
    if n_g < comm.size:
        progress(f"note: ranks {n_g}..{comm.size - 1} own no subinterval and only join the reductions")
    hook, resume, after_iteration = checkpointing(comm, cfg, "paraflow", progress)
    comm.Barrier()
    t0 = MPI.Wtime()
    result = paraflow(comm, problem, fine, coarse, W0, n_intervals=n_g, init=cfg.init,
                      keep_start=cfg.keep_start, budget=cfg.budget, k_max=cfg.k_max, loss_tol=cfg.loss_tol,
                      grad_tol=cfg.grad_tol, resume=resume, after_iteration=after_iteration, progress=progress)
    comm.Barrier()
    seconds = MPI.Wtime() - t0
    check_finite(result, "ParaFlow", "window", cfg.eta)
    if result.interrupted:
        progress(f"stopped after window {result.iterations}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED
    counters = {**result.counters, "loss_evaluations_monitor": problem.loss_evaluations,
                "checkpoints_written": hook.written}
    write_result(comm, cfg.output, method="paraflow", config=cfg.as_dict(),
                 history=history_arrays(result.history), timings=result.timings, counters=counters,
                 data={"weights": result.W.cpu().numpy()},
                 attrs={"final_loss": result.loss, "iterations": result.iterations,
                        "budget_used": result.budget_used, "stop_reason": result.stop_reason,
                        "n_g": n_g, "n_samples": problem.n_samples, "n_params": problem.n_params,
                        "loss_reduction": problem.reduction, "seconds": seconds, "restarted_from": cfg.restart,
                        "blew_up": blew_up(comm, "ParaFlow", result.history["loss"][0], result.loss)})
    progress(f"done: {result.iterations} windows, L = {result.loss:.6e}, budget used {result.budget_used} "
             f"({result.stop_reason}), {seconds:.2f} s; result written to {cfg.output}")
    return 0

