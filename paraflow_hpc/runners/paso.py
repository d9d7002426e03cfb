"""``paraflow-hpc run paso``: PASO training from the config, checked against torch.optim, HDF5 out."""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from .. import validation
from ..algorithms.paso import (ADAPTIVE, DEFAULT_ADAPT, DEFAULT_EMA_DECAY, OPTIMIZERS, OptimizerSpec, PasoState,
                              paso, sequential_reference)
from ..comm import NonFiniteError, Progress, Timers, torch_device
from ..config import RunConfig, option, require
from ..io.results import write_result
from .common import (EXIT_PREEMPTED, CheckpointHook, blew_up, configured_problem, data_option,
                     problem_args_option, problem_option)

EXIT_BAD_INPUT = 2  # as the CLI's
TRAJECTORY_MEMORY_LIMIT = 2 * 1024 ** 3  # bytes of the reference trajectory each rank may hold


@dataclass
class Config(RunConfig):
    method = "paso"
    problem: str = problem_option("mlp", "training")
    problem_args: dict = problem_args_option()
    data: str = data_option()
    optimizer: str = option("sgd", "optimizer whose trajectory PASO reproduces", choices=list(OPTIMIZERS))
    steps: int = option(200, "optimizer steps T")
    window: int = option(8, "window size p (a multiple of the ranks balances the work)")
    lr: float = option(0.1, "learning rate η (the peak of the schedule)")
    lr_schedule: str = option("constant", "η_t as a pure function of t", choices=["constant", "cosine"])
    batch: int = option(32, "mini-batch size")
    momentum: float = option(0.9, "momentum factor (optimizer = momentum)")
    beta1: float = option(0.9, "Adam/AdamW β1")
    beta2: float = option(0.999, "Adam/AdamW β2")
    eps: float = option(1e-8, "Adam/AdamW ε")
    weight_decay: float = option(0.0, "L2 weight decay (decoupled for adamw)")
    clip_norm: float = option(0.0, "clip each step's gradient to this global norm, as "
                              "torch.nn.utils.clip_grad_norm_ (0: off)")
    tol: float = option(1e-10, "initial tolerance δ of rule (9); with tol_adapt = fixed, δ itself")
    tol_adapt: str = option(DEFAULT_ADAPT, "𝒜 in the EMA update (10) of δ, or fixed", choices=list(ADAPTIVE))
    ema_decay: float = option(DEFAULT_EMA_DECAY, "EMA decay λ of the tolerance update (10)")
    reference: str = option("trajectory", "run torch.optim sequentially too: none, final (w_T), or "
                            "trajectory (also the mean squared trajectory difference)",
                            choices=["none", "final", "trajectory"])
    device: str = option("auto", "torch device: one GPU per rank by local rank, or the CPU",
                         choices=["auto", "cpu", "cuda"])
    vmap_chunk: int = option(0, "positions per vmap call (0: all of a rank's positions at once)")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        # the same checks as the Python API's OptimizerSpec and paso() (paraflow_hpc.validation)
        validation.optimizer(self.optimizer, self.lr, self.steps, schedule=self.lr_schedule,
                             momentum=self.momentum, beta1=self.beta1, beta2=self.beta2, eps=self.eps,
                             weight_decay=self.weight_decay, clip_norm=self.clip_norm)
        validation.paso_iteration(self.tol, self.tol_adapt, self.ema_decay, self.window, ADAPTIVE)
        if self.problem in ("logreg", "mlp", "cnn"):
            validation.batch_fits(self.batch, validation.digits_training_size(), "training images of digits")
        else:
            validation.count("batch", self.batch, 1)
        require(self.vmap_chunk >= 0, f"vmap_chunk = {self.vmap_chunk}: must be >= 0 (0: no chunking)")
        require(self.seed >= 0, f"seed = {self.seed}: must be >= 0 (it seeds the weights and the batches)")
        self.load_problem("cpu")

    def load_problem(self, device):
        """The training problem on ``device`` (loaded and probed once per device)."""
        return configured_problem(self, "training", seed=self.seed, batch=self.batch, device=str(device))

    def default_output(self) -> str:
        return f"results/paso-{self.problem.rsplit(':', 1)[-1]}-{self.optimizer}.h5"

    checkpoint_meta = {"t": int, "delta": float}   # read back on restart: the window start, δ

    def checkpoint_limits(self) -> dict:
        """Counts a checkpoint of this run can hold: at most T iterations and T accepted steps."""
        return {"iteration": self.steps, "t": self.steps}

    def checkpoint_spec(self, rank, nranks: int) -> dict:
        """Names, dimensions and dtype kinds of the arrays a checkpoint of this run holds (the
        sizes depend on the model, so only the number of dimensions is fixed)."""
        if rank == "root":
            return {"w_left": ((None,), "f"), "x_left": ((None, None), "f"), "w_right": ((None,), "f"),
                    "losses": ((None,), "f"), "strides": ((None,), "iu"), "deltas": ((None,), "f")}
        arrays = {"own_steps": ((None,), "iu"), "own_guesses": ((None, None), "f"), "gradients": (None, "iu")}
        if self.reference == "trajectory":
            arrays.update(traj_sum_sq=(None, "f"), traj_count=(None, "iu"))
        return arrays

    def identity(self) -> dict:
        """The options that define the trajectory and the iteration: a checkpoint must match them."""
        keys = ("problem", "problem_args", "data", "optimizer", "steps", "window", "lr", "lr_schedule", "batch",
                "momentum", "beta1", "beta2", "eps", "weight_decay", "clip_norm", "tol", "tol_adapt", "ema_decay",
                "reference", "seed")
        return {key: getattr(self, key) for key in keys}

    def optimizer_spec(self) -> OptimizerSpec:
        return OptimizerSpec(self.optimizer, self.lr, self.steps, schedule=self.lr_schedule,
                             momentum=self.momentum, betas=(self.beta1, self.beta2), eps=self.eps,
                             weight_decay=self.weight_decay, clip_norm=self.clip_norm)


class TrajectoryComparison:
    """Squared distance ||w_τ^PASO − w_τ^seq||² at every step τ this rank accepts (paper, App. B.2.1)."""

    def __init__(self, reference: np.ndarray):
        self.reference = reference
        self.sum_sq, self.count = 0.0, 0

    def __call__(self, step: int, w: np.ndarray) -> None:
        self.sum_sq += float(np.sum((w - self.reference[step]) ** 2))
        self.count += 1

    def mean(self, comm) -> float:
        total = comm.allreduce(np.array([self.sum_sq, self.count]), op=MPI.SUM)
        return float(total[0] / total[1]) if total[1] else 0.0


def warm_up(problem, opt, w0) -> None:
    """Pay torch's one-off lazy initialisation (autograd, vmap, optimizer) before anything is timed."""
    problem.window_gradients(w0[None], [0])
    sequential_reference(problem, opt, w0, 1)


def run_reference(comm, problem, opt, w0, steps: int, keep_trajectory: bool):
    """torch.optim on every rank (identical, no communication), timed as the sequential baseline.

    Returns (w_T, losses, trajectory (T+1, n) or None, seconds of the slowest rank).
    """
    trajectory = None
    if keep_trajectory:
        trajectory = np.empty((steps + 1, w0.size))
        trajectory[0] = w0

    def record(step, w):
        trajectory[step] = w

    comm.Barrier()
    timers = Timers()
    w_final, losses = sequential_reference(problem, opt, w0, steps, record if keep_trajectory else None)
    seconds = comm.allreduce(timers.elapsed(), op=MPI.MAX)
    return w_final, losses, trajectory, seconds


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    device = torch_device(comm, cfg.device)
    problem = cfg.load_problem(device)
    opt = cfg.optimizer_spec()
    w0 = problem.initial_weights()
    warm_up(problem, opt, w0)
    progress(f"PASO on {comm.size} ranks ({device}): {problem.description}; {cfg.optimizer}, T = {cfg.steps}, "
             f"p = {cfg.window}" + ("" if cfg.window % comm.size == 0 else
                                    f" (not a multiple of {comm.size} ranks: uneven work)"))

    needed = (cfg.steps + 1) * w0.size * 8
    if cfg.reference == "trajectory" and needed > TRAJECTORY_MEMORY_LIMIT:
        if comm.rank == 0:
            print(f"error: reference = trajectory needs {needed / 2**30:.1f} GiB per rank for T = {cfg.steps} "
                  f"and {w0.size} weights; use --reference final", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    reference = None
    seq_seconds = float("nan")
    if cfg.reference != "none":
        w_seq, seq_losses, trajectory, seq_seconds = run_reference(comm, problem, opt, w0, cfg.steps,
                                                                   cfg.reference == "trajectory")
        progress(f"sequential torch.optim reference: {seq_seconds:.3f} s, final batch loss {seq_losses[-1]:.5f}")
        reference = TrajectoryComparison(trajectory) if trajectory is not None else None

    hook = CheckpointHook(comm, cfg, "paso", cfg.identity(), progress)
    resume = None
    if cfg.restart:
        meta, arrays, root = hook.load(cfg.restart)
        resume = PasoState(k=int(meta["iteration"]), t=int(meta["t"]), delta=float(meta["delta"]),
                           w_left=root["w_left"], x_left=root["x_left"], w_right=root["w_right"],
                           own_steps=arrays["own_steps"], own_guesses=arrays["own_guesses"],
                           gradients=int(arrays["gradients"]), losses=list(root["losses"]),
                           strides=[int(s) for s in root["strides"]], deltas=list(root["deltas"]))
        if reference is not None:
            reference.sum_sq, reference.count = float(arrays["traj_sum_sq"]), int(arrays["traj_count"])
        progress(f"restarting from {cfg.restart} after iteration {resume.k} (window at step {resume.t})")

    def after_iteration(state: PasoState) -> bool:
        def rank_arrays():
            arrays = {"own_steps": state.own_steps, "own_guesses": state.own_guesses,
                      "gradients": np.array(state.gradients)}
            if reference is not None:
                arrays.update(traj_sum_sq=np.array(reference.sum_sq), traj_count=np.array(reference.count))
            return arrays

        return hook(state.k, rank_arrays,
                    lambda: {"w_left": state.w_left, "x_left": state.x_left, "w_right": state.w_right,
                             "losses": np.array(state.losses), "strides": np.array(state.strides, dtype=np.int64),
                             "deltas": np.array(state.deltas)},
                    meta={"t": state.t, "delta": state.delta})

    comm.Barrier()
    run_timers = Timers()
    result = paso(comm, problem, opt, w0, total_steps=cfg.steps, window=cfg.window, tol=cfg.tol,
                  adapt=cfg.tol_adapt, ema_decay=cfg.ema_decay, chunk=cfg.vmap_chunk, resume=resume,
                  after_iteration=after_iteration, on_converged=reference, progress=progress)
    paso_seconds = comm.allreduce(run_timers.elapsed(), op=MPI.MAX)
    if result.diverged_at is not None:   # the same on every rank (from the all-reduced losses)
        raise NonFiniteError(f"non-finite loss at step {result.diverged_at} (at the exact weights w_"
                             f"{result.diverged_at}; the sequential run diverges there too): lower lr. "
                             f"Stopped after {result.iterations} iterations")
    if result.interrupted:
        progress(f"stopped after iteration {result.iterations}; resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED

    state = result.state
    gradients = comm.allreduce(state.gradients, op=MPI.SUM)
    paso_eval = problem.evaluate(result.w_final)
    initial_loss = problem.evaluate(w0)["train_loss"]
    attrs = {"iterations": result.iterations, "steps": cfg.steps, "step_reduction": cfg.steps / result.iterations,
             "gradients": gradients, "cost_ratio_m": gradients / cfg.steps, "n_params": problem.n_params,
             "paso_seconds": paso_seconds, "paso_train_loss": paso_eval["train_loss"],
             "paso_test_accuracy": paso_eval["test_accuracy"], "restarted_from": cfg.restart,
             "device": str(device), "initial_train_loss": initial_loss,
             "blew_up": blew_up(comm, "PASO", initial_loss, paso_eval["train_loss"])}
    history = {"batch_loss": np.array(state.losses), "stride": np.array(state.strides),
               "delta": np.array(state.deltas)}
    data = {"w_final": result.w_final}
    summary = (f"done: K = {result.iterations} iterations for T = {cfg.steps} steps "
               f"(T/K = {cfg.steps / result.iterations:.2f}, m = {gradients / cfg.steps:.2f}), "
               f"train loss {paso_eval['train_loss']:.5f}{_accuracy(paso_eval)}, {paso_seconds:.3f} s")
    if cfg.reference != "none":
        seq_eval = problem.evaluate(w_seq)
        diff = result.w_final - w_seq
        attrs.update(sequential_seconds=seq_seconds, speedup=seq_seconds / paso_seconds,
                     sequential_train_loss=seq_eval["train_loss"], sequential_test_accuracy=seq_eval["test_accuracy"],
                     final_max_abs_diff=float(np.max(np.abs(diff))), final_sq_diff=float(np.sum(diff ** 2)),
                     sequential_blew_up=blew_up(comm, "the sequential torch.optim run", initial_loss,
                                                seq_eval["train_loss"], "sequential_blew_up"))
        history["sequential_batch_loss"] = seq_losses
        data["w_sequential"] = w_seq
        summary += (f"; sequential: train loss {seq_eval['train_loss']:.5f}{_accuracy(seq_eval)}, "
                    f"{seq_seconds:.3f} s; max |w_T - w_T^seq| = "
                    f"{attrs['final_max_abs_diff']:.3e}")
        if reference is not None:
            attrs["trajectory_msd"] = reference.mean(comm)
            summary += f", mean ||w_t - w_t^seq||^2 = {attrs['trajectory_msd']:.3e}"

    write_result(comm, cfg.output, method="paso", config=cfg.as_dict(), history=history,
                 timings=result.timings, counters={"gradients": state.gradients},
                 data=data, attrs=attrs)
    progress(summary)
    progress(f"result written to {cfg.output}")
    return 0


def _accuracy(evaluation: dict) -> str:
    """", test accuracy 0.9500" for the progress line; nothing where the problem has none (NaN: a
    regression, or no test split), as the problem contract's ``evaluate`` says."""
    accuracy = evaluation["test_accuracy"]
    return f", test accuracy {accuracy:.4f}" if np.isfinite(accuracy) else ""
