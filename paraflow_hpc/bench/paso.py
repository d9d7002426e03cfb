"""``paraflow-hpc bench paso``: torch.optim sequentially vs PASO on the same ranks, in one run.

For every (problem, optimizer): the sequential torch.optim run (every rank runs it, as
one process would; the slowest rank's time counts) and PASO with p = s·P window steps,
timed back to back from the same w_0 with the same batches. Reported: T, K, the step
reduction T/K, the cost ratio m = (gradients evaluated)/T, final full-train loss and
test accuracy of both, the mean squared trajectory difference, the wall-clock of both,
and App. C's predicted speed-up S = P / (m (1 + α P / p)) from the measured
α = t_comm / t_comp (t_comm: communication seconds per PASO iteration, t_comp:
seconds per gradient inside the vmap'ed window, both averaged over the ranks).
A sweep over window sizes p follows (the paper's Table 4 / Fig. 7 analogue), then the
PASO review-response case: Ackley's function, d = 10⁴, Adam lr 1e-3, T = 1000, p = 8 when
run on 2 ranks (the published numbers: Adam 1000 steps, PASO 86 iterations), and one hard
case (CNN / SGD) under other tolerance rules: slower EMA, mean, fixed absolute δ. For Ackley
also the iterations "to the same gap" (see :func:`gap_counts`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from .. import validation
from ..algorithms.paso import OPTIMIZERS, OptimizerSpec, paso
from ..comm import Progress, Timers, torch_device
from ..config import option, require
from ..io.results import write_result
from ..problems.contract import load_problem
from ..problems.models import PROBLEMS
from ..runners.common import configured_problem, data_option, problem_args_option
from ..runners.paso import TrajectoryComparison, run_reference, warm_up
from . import BenchConfig

TRAINING_PROBLEMS = [name for name in PROBLEMS if name != "ackley"]

# Learning rates that train each model in a few hundred steps (AdamW adds weight decay 0.01).
LEARNING_RATES = {"sgd": 0.1, "momentum": 0.03, "adam": 0.003, "adamw": 0.003}
COMM_TIMERS = ("scan", "reduce", "bcast")
GROUPS = ("main", "sweep", "ackley", "rules")  # data/group indexes this
# (𝒜, λ, δ) of the tolerance-rule comparison; None: the configured value.
RULES = ((None, None, None), ("median", 0.9999, None), ("mean", None, None), ("fixed", None, 1e-10),
         ("fixed", None, 1e-12))


@dataclass
class Config(BenchConfig):
    method = "bench-paso"
    problems: list[str] = field(default_factory=lambda: list(TRAINING_PROBLEMS),
                                metadata={"help": "models to run", "choices": None})
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS),
                                  metadata={"help": "optimizers to run", "choices": None})
    steps: int = option(200, "optimizer steps T of every case")
    per_rank: int = option(4, "window steps per rank s (p = s * ranks)")
    batch: int = option(32, "mini-batch size")
    tol: float = option(1e-10, "initial tolerance δ")
    tol_adapt: str = option("median", "𝒜 of the EMA update (10)", choices=["mean", "median", "fixed"])
    ema_decay: float = option(0.999, "EMA decay λ")
    sweep_problem: str = option("mlp", "model of the window-size sweep", choices=list(PROBLEMS))
    sweep_optimizer: str = option("sgd", "optimizer of the window-size sweep", choices=list(OPTIMIZERS))
    sweep_windows: list[int] = field(default_factory=lambda: [2, 4, 8, 16, 32],
                                     metadata={"help": "window sizes p of the sweep (empty: no sweep)",
                                               "choices": None})
    sweep_steps: int = option(0, "steps T of the sweep (0: steps); windows of 64-256 need T in the thousands")
    rules_problem: str = option("cnn", "model of the tolerance-rule comparison (empty: skip it)",
                                choices=["", *PROBLEMS])
    rules_optimizer: str = option("sgd", "optimizer of the tolerance-rule comparison", choices=list(OPTIMIZERS))
    ackley_steps: int = option(1000, "steps T of the Ackley / Adam case (0: skip it)")
    device: str = option("auto", "torch device", choices=["auto", "cpu", "cuda"])
    problem: str = option("", "one problem instead of problems: package.module:name, path/to/file.py:name or a "
                              "built-in name (skip the other groups with --sweep-windows '' --ackley-steps 0 "
                              "--rules-problem '')")
    problem_args: dict = problem_args_option()
    data: str = data_option()

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        if self.problem:
            self.problems = [self.problem]
            self.load_problem("cpu")
        for name in self.problems:
            require(name in PROBLEMS or name == self.problem,
                    f"problems: {name!r} is unknown; choose from {', '.join(PROBLEMS)} or give --problem")
        for name in self.optimizers:
            require(name in OPTIMIZERS, f"optimizers: {name!r} is unknown; choose from {', '.join(OPTIMIZERS)}")
        require(self.steps >= 1, f"steps = {self.steps}: must be >= 1")
        require(self.sweep_steps >= 0, f"sweep_steps = {self.sweep_steps}: must be >= 0 (0: steps)")
        require(self.per_rank >= 1, f"per_rank = {self.per_rank}: must be >= 1")
        require(all(p >= 1 for p in self.sweep_windows), f"sweep_windows = {self.sweep_windows}: each p must be >= 1")
        require(self.ackley_steps >= 0, f"ackley_steps = {self.ackley_steps}: must be >= 0 (0 skips the case)")
        require((self.problems and self.optimizers) or self.sweep_windows or self.ackley_steps or self.rules_problem,
                "nothing to run: give problems and optimizers, sweep_windows, ackley_steps or rules_problem")
        # the checks of `run paso` and paso() (paraflow_hpc.validation)
        validation.paso_iteration(self.tol, self.tol_adapt, self.ema_decay, self.per_rank * comm_size)
        names = {*self.problems, self.sweep_problem, self.rules_problem}
        if names & {"logreg", "mlp", "cnn"}:
            validation.batch_fits(self.batch, validation.digits_training_size(), "training images of digits")
        validation.count("batch", self.batch, 1)

    def default_output(self) -> str:
        return os.path.join("results", "bench-paso.h5")

    def load_problem(self, device, name: str | None = None):
        """``--problem`` (with its arguments and data) or the built-in ``name``, on ``device``."""
        if name is None or name == self.problem:
            return configured_problem(self, "training", seed=self.seed, batch=self.batch, device=str(device))
        return load_problem(name, "training", seed=self.seed, batch=self.batch, device=str(device))


def training_optimizer(cfg: Config, optimizer: str, steps: int = 0) -> OptimizerSpec:
    return OptimizerSpec(optimizer, LEARNING_RATES[optimizer], steps or cfg.steps,
                         weight_decay=0.01 if optimizer == "adamw" else 0.0)


def run_case(comm, cfg: Config, problem_name: str, opt: OptimizerSpec, window: int, progress,
             adapt: str | None = None, ema_decay: float | None = None, tol: float | None = None) -> dict:
    """One sequential run and one PASO run; ``adapt``, ``ema_decay``, ``tol`` override the config's rule."""
    adapt = adapt or cfg.tol_adapt
    ema_decay = cfg.ema_decay if ema_decay is None else ema_decay
    tol = cfg.tol if tol is None else tol
    steps, optimizer = opt.total_steps, opt.name
    problem = cfg.load_problem(torch_device(comm, cfg.device), problem_name)
    w0 = problem.initial_weights()
    warm_up(problem, opt, w0)
    w_seq, seq_losses, trajectory, seq_seconds = run_reference(comm, problem, opt, w0, steps, keep_trajectory=True)
    comparison = TrajectoryComparison(trajectory)

    comm.Barrier()
    wall = Timers()
    result = paso(comm, problem, opt, w0, total_steps=steps, window=window, tol=tol,
                  adapt=adapt, ema_decay=ema_decay, on_converged=comparison)
    paso_seconds = comm.allreduce(wall.elapsed(), op=MPI.MAX)

    k = result.iterations
    gradients = comm.allreduce(result.state.gradients, op=MPI.SUM)
    comm_seconds = sum(result.timings.get(name, 0.0) for name in COMM_TIMERS)
    t_comm = comm.allreduce(comm_seconds / k, op=MPI.SUM) / comm.size
    t_comp = comm.allreduce(result.timings["gradient"] / max(result.state.gradients, 1), op=MPI.SUM) / comm.size
    alpha = t_comm / t_comp
    m = gradients / steps
    seq_eval, paso_eval = problem.evaluate(w_seq), problem.evaluate(result.w_final)
    row = {
        "problem": problem_name, "optimizer": optimizer, "ranks": comm.size, "steps": steps, "window": window,
        "adapt": adapt, "ema_decay": ema_decay, "tol": tol, "iterations": k, "step_reduction": steps / k, "cost_ratio_m": m,
        "seq_train_loss": seq_eval["train_loss"], "paso_train_loss": paso_eval["train_loss"],
        "seq_test_accuracy": seq_eval["test_accuracy"], "paso_test_accuracy": paso_eval["test_accuracy"],
        "trajectory_msd": comparison.mean(comm), "n_params": problem.n_params,
        "seq_seconds": seq_seconds, "paso_seconds": paso_seconds, "speedup": seq_seconds / paso_seconds,
        "alpha": alpha, "model_speedup": comm.size / (m * (1 + alpha * comm.size / window)),
        "timings": result.timings,
        "gap": gap_counts(np.append(seq_losses, seq_eval["train_loss"]),
                          np.append(result.state.losses, paso_eval["train_loss"]), np.asarray(result.state.strides)),
    }
    progress(f"{problem_name}/{optimizer} p = {window}, {rule(row)}: K = {k} (T/K = {row['step_reduction']:.2f}, m = {m:.2f}), "
             f"speed-up {row['speedup']:.2f} (App. C model {row['model_speedup']:.2f}, α = {alpha:.3f}), "
             f"test accuracy {seq_eval['test_accuracy']:.4f} -> {paso_eval['test_accuracy']:.4f}")
    return row


GAP_FRACTIONS = (1e-2, 1e-3, 1e-4, 1e-5)


def gap_counts(seq_losses: np.ndarray, paso_losses: np.ndarray, strides: np.ndarray) -> np.ndarray:
    """Iterations "to the same gap" (the counting of the PASO paper's Ackley answer, read literally).
    ``seq_losses``, ``paso_losses``: f(w_t) for t = 0 .. T of each run; ``strides``: PASO's window
    advance per iteration. For each ε in GAP_FRACTIONS the threshold f_T + ε (f_0 - f_T), f_T the
    sequential run's final loss; row (ε, first sequential step s with f(w_s) at or below it, first
    PASO iteration after which its window's exact left end t has reached a step at or below it).
    Meaningful for deterministic losses (Ackley); shape (len(GAP_FRACTIONS), 3), nan where never reached."""
    left_end = np.cumsum(strides)  # the exact left end t after each iteration
    f_final = seq_losses[-1]
    rows = []
    for eps in GAP_FRACTIONS:
        threshold = f_final + eps * (seq_losses[0] - f_final)
        below_seq, below_paso = np.nonzero(seq_losses <= threshold)[0], np.nonzero(paso_losses <= threshold)[0]
        step = float(below_seq[0]) if len(below_seq) else np.nan
        k = float(np.argmax(left_end >= below_paso[0]) + 1) if len(below_paso) else np.nan
        rows.append((eps, step, k))
    return np.array(rows)


def gap_markdown(rows: list[dict]) -> str:
    lines = ["Iterations to the same gap: the first sequential step and the first PASO iteration at which "
             "f(w_t) <= f_T + ε (f_0 − f_T), f_T = f after all T sequential steps.\n",
             "| δ rule | ε | sequential steps to it | PASO iterations to it | steps / iterations |",
             "|---|---|---|---|---|"]
    for r in rows:
        for eps, step, k in r["gap"]:
            lines.append(f"| {rule(r)} | {eps:g} | {step:.0f} | {k:.0f} | {step / k:.2f} |")
    return "\n".join(lines) + "\n\n"


def rule(row: dict) -> str:
    if row["adapt"] == "fixed":
        return f"fixed δ = {row['tol']:g}"
    return f"{row['adapt']}, λ = {row['ema_decay']:g}, δ₀ = {row['tol']:g}"


def markdown(rows: list[dict], title: str) -> str:
    head = (f"{title}\n\nBaseline of the speed-up: the same optimizer as torch.optim, run sequentially (every rank "
            f"runs it; the slowest rank's seconds), same w_0 and batches.\n\n| model | optimizer | n | T | p | δ rule | K | T/K | m | train loss seq / PASO | "
            "test acc seq / PASO | mean ‖Δw_t‖² | seq [s] | PASO [s] | speed-up | α | App. C S |\n|"
            + "---|" * 17 + "\n")
    return head + "".join(
        f"| {r['problem']} | {r['optimizer']} | {r['n_params']} | {r['steps']} | {r['window']} | {rule(r)} | "
        f"{r['iterations']} | "
        f"{r['step_reduction']:.2f} | {r['cost_ratio_m']:.2f} | {r['seq_train_loss']:.4f} / {r['paso_train_loss']:.4f} | "
        f"{r['seq_test_accuracy']:.4f} / {r['paso_test_accuracy']:.4f} | {r['trajectory_msd']:.1e} | "
        f"{r['seq_seconds']:.2f} | {r['paso_seconds']:.2f} | {r['speedup']:.2f} | {r['alpha']:.3f} | "
        f"{r['model_speedup']:.2f} |\n" for r in rows) + "\n"


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    window = cfg.per_rank * comm.size
    progress(f"PASO benchmark on {comm.size} ranks: T = {cfg.steps}, p = {cfg.per_rank} x {comm.size} = {window}")
    rows = [run_case(comm, cfg, problem, training_optimizer(cfg, optimizer), window, progress)
            for problem in cfg.problems for optimizer in cfg.optimizers]
    sweep = [run_case(comm, cfg, cfg.sweep_problem, training_optimizer(cfg, cfg.sweep_optimizer, cfg.sweep_steps),
                      p, progress) for p in cfg.sweep_windows]
    # Ackley / Adam with the configured rule and with the paper's suggested mean, λ = 0.9.
    ackley = [run_case(comm, cfg, "ackley", OptimizerSpec("adam", 1e-3, cfg.ackley_steps), window, progress,
                       *override) for override in ((None, None), ("mean", 0.9))] if cfg.ackley_steps else []
    # One hard case under other rules: slower EMA, mean instead of median, fixed absolute δ.
    rules = [run_case(comm, cfg, cfg.rules_problem, training_optimizer(cfg, cfg.rules_optimizer), window, progress,
                      *override) for override in RULES] if cfg.rules_problem else []

    everything = rows + sweep + ackley + rules
    text = ("problem", "optimizer", "adapt", "timings", "gap")
    numeric = [k for k in everything[0] if k not in text]
    group = [0] * len(rows) + [1] * len(sweep) + [2] * len(ackley) + [3] * len(rules)
    labels = [f"{GROUPS[g]}/{r['problem']}/{r['optimizer']}/p{r['window']}/{r['adapt']}{r['ema_decay']:g}/tol{r['tol']:g}"
              for g, r in zip(group, everything)]
    write_result(comm, cfg.output, method="bench-paso", config=cfg.as_dict(),
                 data={k: np.array([r[k] for r in everything], dtype=float) for k in numeric}
                 | {"case": np.array(labels, dtype="S"), "group": np.array(group)}
                 | ({"ackley_gap": np.array([r["gap"] for r in ackley])} if ackley else {}),
                 timings={f"{label}/{k}": v for label, r in zip(labels, everything) for k, v in r["timings"].items()})
    table = markdown(rows, f"### Sequential torch.optim vs PASO, {comm.size} ranks, p = {window}") if rows else ""
    if sweep:
        table += markdown(sweep, f"### Window-size sweep: {cfg.sweep_problem} / {cfg.sweep_optimizer}, "
                                 f"{comm.size} ranks")
    if ackley:
        table += markdown(ackley, f"### Ackley, d = 10⁴, Adam lr 1e-3, T = {cfg.ackley_steps}, {comm.size} ranks "
                                  "(train loss = f(w_T), no test set)") + gap_markdown(ackley)
    if rules:
        table += markdown(rules, f"### Tolerance rules: {cfg.rules_problem} / {cfg.rules_optimizer}, {comm.size} ranks")
    path = cfg.write_table(comm, table)
    progress("\n" + table + f"\nHDF5: {cfg.output}, table: {path}")
    return 0
