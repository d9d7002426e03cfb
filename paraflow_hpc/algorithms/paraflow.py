"""ParaFlowS (Alg. 2, sequential), ParaFlow (Alg. 1, one MPI rank per block of subintervals), and
the GD/SGD baseline, all counting per-sample gradient evaluations against one budget.

Both methods do one Parareal iteration (3) per time window of the gradient flow and move on
from the best point found. Candidates of window k, from W_0 = W_k:

    W_1 = F(W_0),   W_{n+1} = G(W_n) + (F(W_0) - G(W_0))   (ParaFlowS, and ParaFlow's init (b))

Choices the paper leaves open (docs/paraflow.md):
* ``keep_start=False`` (default): F(W_k) is always accepted (W_k is no candidate), so N_G <= 1 is F
  alone. ``keep_start=True``: W_k competes as well (Alg. 2 already breaks at n = 0, Alg. 1's argmin
  includes W_{0,1}), which makes L(W_{k+1}) <= L(W_k) hold even with a stochastic F.
* A candidate's loss comes with its full-batch gradient (one evaluation, N gradients, charged to the
  budget whether it is accepted or not); that gradient is also G at the candidate, and the accepted
  point's is reused as G(W_0) of the next window. So a window without a break costs
  d_B N_F + N N_G, the paper's count.
* A window starts only when F is affordable; evaluations stop when the next one is not (the
  budget is never exceeded); a candidate that cannot be evaluated is not accepted, except F(W_0)
  under ``keep_start=False``. ParaFlowS then spends what is left on F's next SGD steps (a truncated
  F, accepted unchecked), since the paper runs every method "until a budget is completely consumed"
  (its R = 1.000 cells at the largest N_F); with ``keep_start`` the rest stays unspent, as an
  unchecked step could raise L. ParaFlow runs whole windows only.
* A non-finite loss is never selected while a finite candidate exists (comparisons treat NaN as
  +inf). When the accepted point's loss is non-finite anyway (the flow itself blew up), the run
  stops at once with ``stop_reason = "non_finite"``, before the checkpoint hook of that window,
  so the last checkpoint holds the last finite window (the runners turn this into exit 4).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from mpi4py import MPI

from ..comm import Timers, block_partition
from ..steppers import Budget, Point, correction, evaluate

TAG_INIT, TAG_SWEEP = 31, 32
SELECTIONS = ("break", "argmin")


@dataclass
class FlowState:
    """Everything needed to continue after window ``k`` (checkpointed between windows)."""

    k: int
    W: torch.Tensor
    start: Point | None          # W with its full-batch loss and gradient, when evaluated
    used: int                    # budget used so far (all ranks together for ParaFlow)
    history: dict = field(default_factory=dict)


@dataclass
class FlowResult:
    W: torch.Tensor
    loss: float
    iterations: int
    budget_used: int
    stop_reason: str
    interrupted: bool
    history: dict
    timings: dict
    counters: dict


def _order(loss: float) -> float:
    """Loss as a sort key in which NaN (and -inf, from an overflow) ranks last, like +inf."""
    return loss if math.isfinite(loss) else math.inf


def _new_history(loss0: float) -> dict:
    return {"loss": [loss0], "budget_used": [], "selected": [], "evaluated": [], "fine_loss": [], "fine_steps": []}


def paraflows_min_budget(n_g: int, keep_start: bool, fine_cost: int, n_samples: int, coarse_extra: int) -> int:
    """Budget of ParaFlowS's first window up to its first coarse candidate (below it ParaFlowS is SGD).

    F, then (when candidates are compared: ``keep_start`` or N_G >= 2) the evaluations of W_0 and
    F(W_0), G(W_0)'s extra steps and, for N_G >= 2, the first coarse candidate W_2.
    """
    if not (keep_start or n_g >= 2):
        return fine_cost
    return fine_cost + 2 * n_samples + coarse_extra + (coarse_extra + n_samples if n_g >= 2 else 0)


def paraflow_window_cost(n_intervals: int, init: str, start_known: bool, fine_cost: int, n_samples: int,
                         coarse_extra: int) -> int:
    """Per-sample gradients of one ParaFlow window on all ranks together (N_G = ``n_intervals``)."""
    evaluations = (0 if start_known else 1) + (n_intervals - 1 if init == "coarse" else 0) + n_intervals
    coarse_calls = n_intervals + (n_intervals - 1)   # g_n = G(W_{n,0}) and G(W_{n,1}), n >= 1
    return n_intervals * fine_cost + evaluations * n_samples + coarse_calls * coarse_extra


def _stop_reason(state: FlowState, budget: Budget, window_cost: int, k_max: int,
                 loss_tol: float, grad_tol: float) -> str:
    if k_max and state.k >= k_max:
        return "k_max"
    if loss_tol and state.history["loss"][-1] <= loss_tol:
        return "loss_tol"
    if grad_tol and state.start is not None and float(state.start.grad.norm()) <= grad_tol:
        return "grad_tol"
    if not budget.affordable(window_cost):
        return "budget"
    return ""


def paraflows(problem, fine, coarse, W0: torch.Tensor, *, n_g: int, selection: str = "break",
              keep_start: bool = False, budget: int = 0, k_max: int = 0, loss_tol: float = 0.0,
              grad_tol: float = 0.0, resume: FlowState | None = None,
              after_iteration: Callable[[FlowState], bool] | None = None,
              progress: Callable[[str], None] | None = None) -> FlowResult:
    """ParaFlowS (Alg. 2): one F per window, then up to N_G candidates along the coarse sweep.

    ``selection="break"``: stop at the first candidate whose loss does not decrease (Alg. 2 line 8);
    ``"argmin"``: evaluate all N_G candidates and take the best (what ParaFlow does in parallel).
    Stops on ``budget`` (per-sample gradients, 0: none), ``k_max`` windows, L <= ``loss_tol`` or
    ||grad L|| <= ``grad_tol`` (checked where the gradient at W_k is known). Sequential: no MPI.
    """
    if selection not in SELECTIONS:
        raise ValueError(f"selection = {selection!r}; choose one of: {', '.join(SELECTIONS)}")
    N = problem.n_samples
    timers = Timers()
    evaluates = keep_start or n_g >= 2   # otherwise ParaFlowS is F alone and needs no full gradient
    state = resume or FlowState(0, W0.clone(), None, 0, _new_history(problem.loss(W0)))
    spent = Budget(budget, state.used)
    calls = {"fine": 0, "coarse": 0, "evaluations": 0}

    def charge_evaluation(W) -> Point | None:
        if not spent.affordable(N):
            return None
        calls["evaluations"] += 1
        with timers("evaluate"):
            return evaluate(problem, W, spent)

    def coarse_step(point: Point):
        calls["coarse"] += 1
        with timers("coarse"):
            return coarse(point, spent)

    def record(loss, selected, n_evaluated, fine_loss, fine_steps):
        state.k += 1
        state.used = spent.used
        for key, value in (("loss", loss), ("budget_used", spent.used), ("selected", selected),
                           ("evaluated", n_evaluated), ("fine_loss", fine_loss), ("fine_steps", fine_steps)):
            state.history[key].append(value)

    interrupted, reason = False, ""
    while not (reason := _stop_reason(state, spent, fine.cost(), k_max, loss_tol, grad_tol)):
        with timers("fine"):
            f0 = fine(state.W, state.k, spent)
        calls["fine"] += 1
        if evaluates and state.start is None:
            state.start = charge_evaluation(state.W)
            if state.start is not None and state.k == 0:
                state.history["loss"][0] = state.start.loss  # the same evaluation the comparisons use
        chain: list[tuple[int, Point]] = [(0, state.start)] if keep_start and state.start is not None else []
        fine_loss, n_evaluated = math.nan, 0
        if evaluates and state.start is not None and spent.affordable(coarse.extra_cost()):
            delta = correction(f0, coarse_step(state.start))   # F(W_0) - G(W_0), once per window
            previous = state.start
            for n in range(1, max(n_g, 1) + 1):
                if n == 1:
                    candidate = f0
                elif spent.affordable(coarse.extra_cost() + N):
                    candidate = coarse_step(previous) + delta
                else:
                    break
                point = charge_evaluation(candidate)
                if point is None:
                    break
                n_evaluated += 1
                fine_loss = point.loss if n == 1 else fine_loss
                if selection == "break" and chain and not _order(point.loss) < _order(chain[-1][1].loss):
                    break
                chain.append((n, point))
                previous = point
                if not math.isfinite(point.loss):
                    break   # no candidate follows from a non-finite point
        if chain:
            best = min(range(len(chain)), key=lambda i: _order(chain[i][1].loss)) if selection == "argmin" else -1
            selected, point = chain[best]
            state.W, state.start, loss = point.W, point, point.loss
        elif keep_start and evaluates:
            selected, loss = 0, state.history["loss"][-1]    # F(W_0) could not be checked: keep W_0
        else:
            selected, state.W, state.start = 1, f0, None
            loss = problem.loss(f0)   # monitoring only: not charged to the budget
        record(loss, selected, n_evaluated, fine_loss, fine.steps)
        if progress:
            progress(f"ParaFlowS window {state.k}: L = {loss:.6e}, candidate {selected} of {n_evaluated} "
                     f"evaluated, budget {spent.used}")
        if not math.isfinite(loss):
            reason = "non_finite"
            break
        if after_iteration is not None and after_iteration(state):
            interrupted = True
            break
    rest = (spent.limit - spent.used) // fine.schedule.size if reason == "budget" and not keep_start else 0
    if rest:   # a truncated last F uses up the budget, as GD does
        with timers("fine"):
            state.W = fine(state.W, state.k, spent, steps=rest)
        calls["fine"] += 1
        state.start = None
        record(problem.loss(state.W), 1, 0, math.nan, rest)   # monitoring loss, outside the budget
        if progress:
            progress(f"ParaFlowS: the last {rest} SGD steps use up the budget, L = {state.history['loss'][-1]:.6e}")
        if not math.isfinite(state.history["loss"][-1]):
            reason = "non_finite"
    return FlowResult(state.W, state.history["loss"][-1], state.k, spent.used, reason or "interrupted",
                      interrupted, state.history, timers.as_dict(),
                      {**{f"{k}_calls": v for k, v in calls.items()}, "gradient_evaluations": spent.used})


def baseline(problem, fine, W0: torch.Tensor, *, budget: int, loss_tol: float = 0.0,
             max_steps: int = 0, stop: Callable[[], bool] | None = None) -> FlowResult:
    """GD / SGD (``fine``'s optimiser, batches and step) run for as many steps as ``budget`` pays.

    Step t uses the same batch as ParaFlowS's F step t. ``loss_tol`` stops once the batch loss
    is below it, checked only with the full batch (where the batch loss is L itself). ``stop()``
    true (a preemption) abandons the run: the result is marked interrupted.
    """
    timers = Timers()
    d_b = fine.schedule.size
    steps = budget // d_b if budget else max_steps
    full_batch = d_b == problem.n_samples
    opt_state = fine.fresh_state(W0)
    W, reason = W0.clone(), "budget" if budget else "k_max"
    losses = [problem.loss(W0)]
    with timers("fine"):
        for t in range(steps):
            if stop is not None and stop():
                steps, reason = t, "interrupted"
                break
            W_next, batch_loss = fine.step(W, t, t, opt_state)
            if loss_tol and full_batch and batch_loss <= loss_tol:
                steps, reason = t, "loss_tol"
                break
            if not math.isfinite(batch_loss):
                steps, reason = t, "non_finite"
                break
            W = W_next
    losses.append(problem.loss(W))   # monitoring only
    used = steps * d_b + (d_b if reason in ("loss_tol", "non_finite") else 0)
    return FlowResult(W, losses[-1], steps, used, reason, reason == "interrupted",
                      {"loss": losses, "budget_used": [used]}, timers.as_dict(),
                      {"fine_calls": steps, "gradient_evaluations": used})


def paraflow(comm, problem, fine, coarse, W0: torch.Tensor, *, n_intervals: int, init: str = "coarse",
             keep_start: bool = False, budget: int = 0, k_max: int = 0, loss_tol: float = 0.0,
             grad_tol: float = 0.0, resume: FlowState | None = None,
             after_iteration: Callable[[FlowState], bool] | None = None,
             progress: Callable[[str], None] | None = None) -> FlowResult:
    """ParaFlow (Alg. 1) on ``comm``: rank r owns subintervals [a, b) of each window (N_G = n_intervals).

    Window k: (init) W_{n,0}: ``"coarse"`` W_{n+1,0} = G(W_{n,0}) pipelined rank to rank, or
    ``"equal"`` W_{n,0} = W_k; (parallel) f_n = F(W_{n,0}), g_n = G(W_{n,0}) on the owner of n;
    (sweep, pipelined) W_{1,1} = f_0, W_{n+1,1} = G(W_{n,1}) + (f_n - g_n), each W_{n,1} evaluated
    by its owner; (select) W_{k+1} = argmin L over W_{1..N_G,1} (and W_{0,1} = W_k if
    ``keep_start``) by a MINLOC all-reduction; the owner broadcasts the point and its gradient.
    ``budget`` counts the work of all ranks; a window starts only when all of it is affordable.
    Ranks beyond N_G own nothing and only take part in the reductions and broadcasts.
    Every rank returns the same W and history.
    """
    if init not in ("coarse", "equal"):
        raise ValueError(f"init = {init!r}; choose 'coarse' (a) or 'equal' (b)")
    if n_intervals < 1:
        raise ValueError(f"n_intervals = {n_intervals}: must be >= 1")
    N, rank = problem.n_samples, comm.rank
    a, b = block_partition(n_intervals, comm.size, rank)
    active = min(comm.size, n_intervals)
    owner_of = [r for r in range(active) for _ in range(*block_partition(n_intervals, comm.size, r))]
    prev_rank = rank - 1 if 0 < rank < active else None
    next_rank = rank + 1 if rank + 1 < active else None
    timers = Timers()
    calls = {"fine": 0, "coarse": 0, "evaluations": 0}
    mine = Budget()           # this rank's work; the global budget is its sum over ranks

    def window_cost(start_known: bool) -> int:
        return paraflow_window_cost(n_intervals, init, start_known, fine.cost(), N, coarse.extra_cost())

    def evaluate_here(W) -> Point:
        calls["evaluations"] += 1
        with timers("evaluate"):
            return evaluate(problem, W, mine)

    def coarse_here(point: Point) -> torch.Tensor:
        calls["coarse"] += 1
        with timers("coarse"):
            return coarse(point, mine)

    def receive(tag: int) -> torch.Tensor:
        buf = np.empty(problem.n_params)
        with timers("wait"):
            comm.Recv(buf, source=prev_rank, tag=tag)
        return torch.from_numpy(buf).to(W0.device)

    def send(W: torch.Tensor, tag: int) -> None:
        with timers("send"):
            comm.Send(np.ascontiguousarray(W.cpu().numpy()), dest=next_rank, tag=tag)

    def broadcast_point(point: Point | None, root: int) -> Point:
        data = np.empty(2 * problem.n_params + 1)
        if rank == root:
            data[:-1] = torch.cat([point.W, point.grad]).cpu().numpy()
            data[-1] = point.loss
        with timers("select"):
            comm.Bcast(data, root=root)
        t = torch.from_numpy(data[:-1]).to(W0.device)
        return Point(t[:problem.n_params].clone(), float(data[-1]), t[problem.n_params:].clone())

    state = resume or FlowState(0, W0.clone(), None, 0, _new_history(problem.loss(W0)))
    spent = Budget(budget, state.used)
    interrupted = False
    while not (reason := _stop_reason(state, spent, window_cost(state.start is not None),
                                      k_max, loss_tol, grad_tol)):
        before = mine.used
        if state.start is None:   # window 0 (or after F alone): rank 0 evaluates W_k for everyone
            state.start = broadcast_point(evaluate_here(state.W) if rank == 0 else None, root=0)
            if state.k == 0:
                state.history["loss"][0] = state.start.loss
        start = state.start
        # (init) W_{n,0} and g_n = G(W_{n,0}) for this rank's subintervals
        starts, g_old = [], []
        if b > a:
            if init == "equal":
                starts = [start.W] * (b - a)
                g_old = [coarse_here(start) for _ in starts]   # Alg. 1 line 5 on every subinterval
            else:
                point = start if a == 0 else evaluate_here(receive(TAG_INIT))
                for n in range(a, b):
                    if n > a:
                        point = evaluate_here(g_old[-1])
                    starts.append(point.W)
                    g_old.append(coarse_here(point))
                if next_rank is not None:
                    send(g_old[-1], TAG_INIT)
        # (parallel) F on every owned subinterval: batches depend on the window only, like ParaFlowS's F
        with timers("fine"):
            fines = [fine(W, state.k, mine) for W in starts]
        calls["fine"] += len(fines)
        # (sweep) pipelined; every owned W_{n,1} with n >= 1 is evaluated here (loss + gradient)
        candidates: list[tuple[float, int, Point]] = []
        if b > a:
            current = start.W if a == 0 else receive(TAG_SWEEP)
            for n in range(a, b):
                if n == 0:
                    current = fines[0]       # W_{0,1} = W_{0,0}: G(W_{0,1}) - g_0 = 0 exactly
                    continue
                point = evaluate_here(current)
                candidates.append((point.loss, n, point))
                current = coarse_here(point) + correction(fines[n - a], g_old[n - a])
            if next_rank is not None:
                send(current, TAG_SWEEP)
            else:   # the last active rank also evaluates W_{N_G,1}
                point = evaluate_here(current)
                candidates.append((point.loss, n_intervals, point))
        if keep_start and rank == 0:
            candidates.append((start.loss, 0, start))
        # (select) argmin with location; ties go to the smaller n, as in ParaFlowS's argmin; NaN ranks last
        local = min(candidates, key=lambda c: (_order(c[0]), c[1])) if candidates else (math.inf, n_intervals + 1, None)
        with timers("select"):
            _, best_n = comm.allreduce((_order(local[0]), local[1]), op=MPI.MINLOC)
            window_used = comm.allreduce(mine.used - before, op=MPI.SUM)
        owner = owner_of[min(best_n, n_intervals - 1)]   # W_{N_G,1} lives on the owner of N_G - 1
        state.start = broadcast_point(local[2] if local[1] == best_n and rank == owner else None, owner)
        state.W, best_loss = state.start.W, state.start.loss
        state.k += 1
        spent.charge(window_used)
        state.used = spent.used
        for key, value in (("loss", best_loss), ("budget_used", spent.used), ("selected", best_n),
                           ("evaluated", n_intervals), ("fine_loss", math.nan), ("fine_steps", fine.steps)):
            state.history[key].append(value)
        if progress:
            progress(f"ParaFlow window {state.k}: L = {best_loss:.6e} from W_{{{best_n},1}}, budget {spent.used}")
        if not math.isfinite(best_loss):   # the broadcast loss: every rank stops alike
            reason = "non_finite"
            break
        if after_iteration is not None and after_iteration(state):
            interrupted = True
            break
    return FlowResult(state.W, state.history["loss"][-1], state.k, spent.used, reason or "interrupted",
                      interrupted, state.history, timers.as_dict(),
                      {**{f"{k}_calls": v for k, v in calls.items()}, "gradient_evaluations": mine.used})
