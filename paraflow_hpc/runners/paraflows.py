"""``paraflow-hpc run paraflows``: ParaFlowS (Alg. 2) and its GD/SGD baseline at the same budget.

ParaFlowS is sequential: it runs on rank 0 (on a one-rank communicator, which also owns
its checkpoints). The baseline runs at the same time on rank 1 when there is one
(on rank 0 afterwards otherwise); further ranks have no work and wait.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mpi4py import MPI

from ..algorithms.paraflow import SELECTIONS, baseline, paraflows, paraflows_min_budget
from ..comm import NonFiniteError, Progress, StopRequest, Timers
from ..config import option, require
from ..io.results import write_result
from .common import EXIT_PREEMPTED, blew_up
from .paraflow import FlowConfig, build, check_finite, checkpointing, history_arrays


@dataclass
class Config(FlowConfig):
    method = "paraflows"
    n_g: int = option(50, "N_G: most candidates per window (<= 1: F alone)")
    selection: str = option("break", "break at the first non-decrease (Alg. 2) or argmin over all N_G",
                            choices=list(SELECTIONS))
    baseline: bool = option(True, "also run GD/SGD (same batches, eta_F, budget) and report R = L_ParaFlowS / L_GD")

    def validate(self, comm_size: int) -> None:
        super().validate(comm_size)
        require(self.n_g >= 0, f"n_g = {self.n_g}: must be >= 0")
        require(not self.baseline or self.budget > 0,
                "baseline = true needs a budget to compare at; set --budget or --baseline false")
        self.require_budget(paraflows_min_budget(self.n_g, self.keep_start, *self.costs()),
                            "one ParaFlowS window up to its first coarse candidate")


def main(cfg: Config, comm) -> int:
    progress = Progress(comm, cfg.quiet)
    problem, fine, coarse, W0 = build(cfg, comm)
    progress(f"ParaFlowS: {problem.name} (N = {problem.n_samples}, d = {problem.n_params}, "
             f"{problem.reduction} loss), N_G = {cfg.n_g}, selection {cfg.selection}, F = {fine.describe()}, "
             f"G = {coarse.describe()}, budget {cfg.budget}")
    baseline_rank = 1 if comm.size > 1 else 0
    timers = Timers()
    solo = comm.Split(0 if comm.rank == 0 else MPI.UNDEFINED, 0)
    result, base, interrupted, seconds = None, None, False, {}
    if comm.rank == 0:
        _, resume, after_iteration = checkpointing(solo, cfg, "paraflows", progress)
        with timers("paraflows"):
            result = paraflows(problem, fine, coarse, W0, n_g=cfg.n_g, selection=cfg.selection,
                               keep_start=cfg.keep_start, budget=cfg.budget, k_max=cfg.k_max,
                               loss_tol=cfg.loss_tol, grad_tol=cfg.grad_tol, resume=resume,
                               after_iteration=after_iteration, progress=progress)
        interrupted = result.interrupted
        solo.Free()
    if cfg.baseline and comm.rank == baseline_rank and not interrupted:
        stop = StopRequest.install()   # the baseline is not checkpointed: a preemption abandons it
        with timers("baseline"):
            base = baseline(problem, fine, W0, budget=cfg.budget, stop=lambda: stop.flag)
        interrupted = interrupted or base.interrupted
    interrupted = bool(comm.allreduce(int(interrupted), op=MPI.MAX))
    if interrupted:   # only rank 0 holds the ParaFlowS result
        windows = comm.bcast(result.iterations if comm.rank == 0 else None, root=0)
        progress(f"stopped after window {windows} (ParaFlowS) or during the baseline; "
                 f"resume with --restart {cfg.checkpoint}")
        return EXIT_PREEMPTED
    result = comm.bcast(result, root=0)
    base = comm.bcast(base, root=baseline_rank)
    check_finite(result, "ParaFlowS", "window", cfg.eta)
    if base is not None and base.stop_reason == "non_finite":
        raise NonFiniteError(f"the GD/SGD baseline: non-finite batch loss at step {base.iterations} (eta = "
                             f"{cfg.eta:g} is too large for it; ParaFlowS itself ended at L = {result.loss:.6e}); "
                             "use --baseline false to run ParaFlowS alone")
    seconds = {"paraflows": comm.bcast(timers.seconds.get("paraflows", math.nan), root=0),
               "baseline": comm.bcast(timers.seconds.get("baseline", math.nan), root=baseline_rank)}
    attrs = {"final_loss": result.loss, "iterations": result.iterations, "budget_used": result.budget_used,
             "stop_reason": result.stop_reason, "n_samples": problem.n_samples, "n_params": problem.n_params,
             "loss_reduction": problem.reduction, "paraflows_seconds": seconds["paraflows"],
             "restarted_from": cfg.restart,
             "blew_up": blew_up(comm, "ParaFlowS", result.history["loss"][0], result.loss)}
    history = history_arrays(result.history)
    if base is not None:
        ratio = result.loss / base.loss if base.loss > 0 else math.nan
        attrs.update(baseline_loss=base.loss, baseline_steps=base.iterations, baseline_budget_used=base.budget_used,
                     ratio=ratio, baseline_seconds=seconds["baseline"],
                     baseline_blew_up=blew_up(comm, "the GD/SGD baseline", base.history["loss"][0], base.loss,
                                              "baseline_blew_up"))
    counters = {**(result.counters if comm.rank == 0 else {}),
                **({"baseline_gradient_evaluations": base.budget_used} if comm.rank == baseline_rank and base else {}),
                "gradient_evaluations_counted_by_problem": problem.gradient_evaluations,
                "loss_evaluations_monitor": problem.loss_evaluations}
    write_result(comm, cfg.output, method="paraflows", config=cfg.as_dict(), history=history,
                 timings=timers.as_dict(), counters=counters,
                 data={"weights": result.W.cpu().numpy()}, attrs=attrs)
    message = (f"done: {result.iterations} windows, L = {result.loss:.6e}, budget used {result.budget_used} "
               f"({result.stop_reason})")
    if base is not None:
        message += f"; GD/SGD at the same budget: L = {base.loss:.6e}, R = {attrs['ratio']:.4g}"
    progress(message + f"; result written to {cfg.output}")
    return 0

