"""PASO: step-parallel SGD / momentum / Adam / AdamW by fixed-point iteration on a sliding window.

T optimizer steps w_{τ+1} = w_τ − c_τ (c_τ = η_τ u_τ, the update term) are the triangular
system (5); PASO solves it by the fixed-point iteration (7)/(8) on a window of p steps
[t, t+p) whose left end w_t is exact:

1. every rank evaluates the mini-batch gradients g_τ = ∇L(ŵ_τ, ζ_τ) at its guesses for
   the window steps it owns — rank r owns the steps τ ≡ r (mod P), so a window of p = s·P
   steps gives each rank s of them, evaluated together by one vmap'ed call;
2. the optimizer's moment recurrences (momentum buffer; Adam's m and v) are linear
   in the gradients, x_{τ+1} = β x_τ + b(g_τ), so their values at every window step
   follow from the exact state x_t at the left end by a prefix scan of affine maps
   across the ranks (MPI Exscan with a non-commutative user op) — App. E without storing
   the history: the left-end state carries it exactly;
3. the update terms c_τ are formed locally; the new guesses ŵ_τ = w_t − Σ_{t≤j<τ} c_j are
   exclusive prefix sums across the ranks (MPI Exscan on model-sized float64 rows);
4. stopping rule (9) with the EMA tolerance (10); the window slides past its leading
   converged steps (Alg. 1, line 8); new steps start from the new rightmost guess ŵ_{t+p}.

Scans run over absolute blocks of P consecutive steps (block a holds steps aP .. aP+P−1,
rank r holds step aP+r), so a rank contributes one row per block and one collective call
serves the whole window. No rank ever holds other ranks' guesses.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from mpi4py import MPI

from .. import validation
from ..comm import Timers
from ..config import ConfigError

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
ADAPTIVE = ("mean", "median", "fixed")
# One set of defaults for Python and the command line: the median rule with λ = 0.999 follows the
# sequential trajectory far more closely than mean / 0.9 (about 30x smaller w_T error on the MLP).
DEFAULT_ADAPT, DEFAULT_EMA_DECAY = "median", 0.999


@dataclass
class OptimizerSpec:
    """The update rule c_τ = η_τ u_τ of one torch.optim optimizer, with η_τ a pure function of τ."""

    name: str
    lr: float
    total_steps: int
    schedule: str = "constant"          # "constant" or "cosine" (η_τ = lr (1 + cos πτ/T) / 2)
    momentum: float = 0.9
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0           # L2 added to the gradient; decoupled for adamw
    clip_norm: float = 0.0              # > 0: clip each step's gradient to this global norm (off: 0)

    def __post_init__(self):
        """Refuses what ``run paso`` refuses (one check, :func:`paraflow_hpc.validation.optimizer`):
        ConfigError (a ValueError) for lr <= 0, a decay (momentum, β1, β2) outside [0, 1), ε <= 0 ..."""
        if len(self.betas) != 2:
            raise ConfigError(f"betas = {self.betas!r}: expected two decay factors (beta1, beta2)")
        validation.optimizer(self.name, self.lr, self.total_steps, schedule=self.schedule, momentum=self.momentum,
                             beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                             weight_decay=self.weight_decay, clip_norm=self.clip_norm, names=OPTIMIZERS)

    def lr_at(self, step: int) -> float:
        if self.schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * step / self.total_steps))
        return self.lr

    def decays(self) -> tuple:
        """Decay factor of each linear state recurrence x_{τ+1} = β x_τ + b(g_τ)."""
        return {"sgd": (), "momentum": (self.momentum,)}.get(self.name, self.betas)

    def state_inputs(self, g: np.ndarray) -> list:
        """b(g_τ) of each recurrence, the same arithmetic as torch.optim's (dampening 0)."""
        if self.name == "momentum":
            return [g]
        if self.name in ("adam", "adamw"):
            b1, b2 = self.betas
            return [(1 - b1) * g, (1 - b2) * (g * g)]
        return []

    def gradient(self, g: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Rows g_τ as the optimizer sees them: clipped as torch.nn.utils.clip_grad_norm_ does (a
        function of g_τ alone, so exactness is kept), then coupled L2 weight decay (torch's
        weight_decay for sgd/adam, applied inside the optimizer, i.e. after clipping)."""
        if self.clip_norm:
            coef = self.clip_norm / (np.linalg.norm(g, axis=-1, keepdims=True) + 1e-6)
            g = g * np.minimum(coef, 1.0)
        if self.weight_decay and self.name != "adamw":
            return g + self.weight_decay * w
        return g

    def update_terms(self, steps: np.ndarray, w: np.ndarray, g: np.ndarray, states_after: np.ndarray) -> np.ndarray:
        """c_τ for several steps (rows), with w_{τ+1} = w_τ − c_τ; ``states_after``: x_{τ+1}, (s, channels, n)."""
        lr = np.array([self.lr_at(int(step)) for step in steps])[:, None]
        if self.name == "sgd":
            return lr * g
        if self.name == "momentum":
            return lr * states_after[:, 0]
        b1, b2 = self.betas
        count = (np.asarray(steps) + 1.0)[:, None]  # torch's state["step"] after step τ
        m, v = states_after[:, 0], states_after[:, 1]
        denom = np.sqrt(v) / np.sqrt(1 - b2 ** count) + self.eps
        c = (lr / (1 - b1 ** count)) * m / denom
        if self.name == "adamw":
            c = c + (lr * self.weight_decay) * w
        return c

    def torch_optimizer(self, params):
        if self.name in ("sgd", "momentum"):
            return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum if self.name == "momentum" else 0.0,
                                   weight_decay=self.weight_decay, foreach=False)
        cls = torch.optim.Adam if self.name == "adam" else torch.optim.AdamW
        return cls(params, lr=self.lr, betas=self.betas, eps=self.eps, weight_decay=self.weight_decay,
                   foreach=False)


# --- prefix scans over the window, across ranks ---------------------------------------------

class SumScan:
    """Prefix sums: plain MPI.SUM on (blocks, n) float64 rows."""

    def __init__(self, n: int):
        self.n = n

    def identity(self, blocks: int) -> np.ndarray:
        return np.zeros((blocks, self.n))

    def compose(self, first, second):
        return first + second

    def mpi_args(self, rows):
        return [rows, MPI.DOUBLE], MPI.SUM

    def free(self):
        pass


class AffineScan:
    """Composition of affine maps x -> A x + B, one (A, B) pair per state channel.

    A row is (channels, 1 + n): column 0 holds A, the rest B. "first then second" is
    (A1 A2, A2 B1 + B2): associative but not commutative, so the MPI op is created with
    commute=False and MPI applies it in rank order — the order of the steps in a block.
    A derived datatype makes one row one MPI element, so MPI never splits a row.
    """

    def __init__(self, n: int, channels: int):
        self.n, self.channels = n, channels
        self.width = channels * (1 + n)
        self.datatype = MPI.DOUBLE.Create_contiguous(self.width).Commit()
        shape = (channels, 1 + n)

        def op(inbuf, inoutbuf, datatype):
            first = np.frombuffer(inbuf, dtype=np.float64).reshape((-1,) + shape)
            second = np.frombuffer(inoutbuf, dtype=np.float64).reshape((-1,) + shape)
            second[...] = self.compose(first, second)

        self.op = MPI.Op.Create(op, commute=False)

    def identity(self, blocks: int) -> np.ndarray:
        rows = np.zeros((blocks, self.channels, 1 + self.n))
        rows[..., 0] = 1.0
        return rows

    @staticmethod
    def compose(first, second):
        out = np.empty(np.broadcast_shapes(first.shape, second.shape))
        out[..., 0] = first[..., 0] * second[..., 0]
        out[..., 1:] = second[..., :1] * first[..., 1:] + second[..., 1:]
        return out

    def mpi_args(self, rows):
        return [rows, rows.shape[0], self.datatype], self.op

    def free(self):
        self.op.Free()
        self.datatype.Free()


def window_prefix(comm, scan, rows: np.ndarray):
    """Exclusive prefix over the window steps, in step order, for every block row.

    ``rows[a]`` is this rank's element for block a (the identity where it owns no step
    there). Returns (before, total): ``before[a]`` composes every window step before this
    rank's step in block a; ``total`` composes the whole window. One Exscan and one
    Bcast (of the last rank's block totals), each on all blocks at once.
    """
    blocks = rows.shape[0]
    within = scan.identity(blocks)
    if comm.size > 1:
        send, op = scan.mpi_args(rows)
        recv, _ = scan.mpi_args(within)
        comm.Exscan(send, recv, op)
        if comm.rank == 0:  # Exscan leaves rank 0's result undefined
            within[...] = scan.identity(blocks)
    totals = scan.compose(within, rows) if comm.rank == comm.size - 1 else np.empty_like(rows)
    if comm.size > 1:
        comm.Bcast(totals, root=comm.size - 1)
    before_block = scan.identity(blocks + 1)
    for a in range(blocks):
        before_block[a + 1] = scan.compose(before_block[a], totals[a])
    return scan.compose(before_block[:-1], within), before_block[-1]


# --- state and result -------------------------------------------------------------------------

@dataclass
class PasoState:
    """Everything needed to continue after iteration ``k`` (checkpointed between iterations)."""

    k: int                      # parallel iterations done
    t: int                      # left end of the window: w_t and the optimizer state are exact
    delta: float                # current tolerance δ of rule (9)
    w_left: np.ndarray          # w_t (replicated)
    x_left: np.ndarray          # optimizer state at t, (channels, n) (replicated)
    w_right: np.ndarray         # current guess for step t + p (replicated)
    own_steps: np.ndarray       # the window steps this rank owns, ascending
    own_guesses: np.ndarray     # its guesses ŵ_τ for them, (len(own_steps), n)
    gradients: int = 0          # gradients this rank has evaluated
    losses: list = field(default_factory=list)     # L(w_τ, ζ_τ) at the converged w_τ, τ = 0 .. t-1
    strides: list = field(default_factory=list)    # window advance per iteration
    deltas: list = field(default_factory=list)     # δ used in each iteration


@dataclass
class PasoResult:
    w_final: np.ndarray         # w_T (replicated)
    iterations: int             # K
    state: PasoState
    interrupted: bool
    diverged_at: int | None     # step whose loss at the exact weights is not finite
    timings: dict


def owned_steps(t: int, width: int, size: int, rank: int) -> np.ndarray:
    """Steps τ in [t, t + width) with τ ≡ rank (mod size)."""
    return np.arange(t + (rank - t) % size, t + width, size, dtype=np.int64)


def initial_state(comm, w0: np.ndarray, opt: OptimizerSpec, total_steps: int, window: int, tol: float) -> PasoState:
    """All guesses start at w_0 (Sect. 4.6)."""
    own = owned_steps(0, min(window, total_steps), comm.size, comm.rank)
    return PasoState(k=0, t=0, delta=tol, w_left=w0.copy(), x_left=np.zeros((len(opt.decays()), w0.size)),
                     w_right=w0.copy(), own_steps=own, own_guesses=np.tile(w0, (len(own), 1)))


def paso(comm, problem, opt: OptimizerSpec, w0: np.ndarray, *, total_steps: int, window: int,
         tol: float, adapt: str = DEFAULT_ADAPT, ema_decay: float = DEFAULT_EMA_DECAY, chunk: int = 0,
         resume: PasoState | None = None,
         after_iteration: Callable[[PasoState], bool] | None = None,
         on_converged: Callable[[int, np.ndarray], None] | None = None,
         progress: Callable[[str], None] | None = None) -> PasoResult:
    """Run PASO for ``total_steps`` steps of ``opt`` on ``problem`` over the ranks of ``comm``.

    ``tol`` is the initial δ; ``adapt`` picks 𝒜 in (10) ("fixed": δ stays ``tol``); the defaults
    (median, λ = 0.999) are those of ``run paso``. Inputs are checked as on the command line
    (:mod:`paraflow_hpc.validation`; ConfigError, a ValueError): tol >= 0, window >= 1, λ in [0, 1];
    ``w0`` is promoted to float64.
    ``after_iteration(state)`` is called collectively after every iteration that does not
    end the run; returning True stops there (preemption). ``on_converged(τ, w_τ)`` is
    called on the rank owning step τ when w_τ is accepted (for trajectory comparisons).
    """
    validation.count("total_steps", total_steps, 1)
    validation.paso_iteration(tol, adapt, ema_decay, window, ADAPTIVE)
    validation.count("chunk", chunk, 0, " (0: no chunking)")
    w0 = validation.state("w0", w0)
    size, rank = comm.size, comm.rank
    n = w0.size
    decays = np.array(opt.decays())
    weights_scan = SumScan(n)
    state_scan = AffineScan(n, len(decays)) if len(decays) else None
    timers = Timers()
    state = resume or initial_state(comm, w0, opt, total_steps, window, tol)
    interrupted, diverged_at = False, None

    try:
        while state.t < total_steps:
            t = state.t
            width = min(window, total_steps - t)
            first_block = t // size
            blocks = (t + width - 1) // size - first_block + 1
            own, guesses = state.own_steps, state.own_guesses
            rows_of = own // size - first_block

            with timers("gradient"):
                if len(own):
                    grads, losses = problem.window_gradients(guesses, own.tolist(), chunk)
                else:
                    grads, losses = np.zeros((0, n)), np.zeros(0)
            with timers("update"):
                grads = opt.gradient(grads, guesses)
                losses = np.where(np.isfinite(grads).all(axis=1), losses, np.nan)

            # Optimizer state x_τ (before) and x_{τ+1} (after) at every own step, from the exact x_t.
            states_before = np.zeros((len(own), len(decays), n))
            states_after = states_before
            x_end = state.x_left
            if state_scan is not None:
                with timers("update"):
                    rows = state_scan.identity(blocks)
                    inputs = np.stack(opt.state_inputs(grads), axis=1) if len(own) else 0.0
                    rows[rows_of, :, 0] = decays
                    rows[rows_of, :, 1:] = inputs
                with timers("scan"):
                    before, total = window_prefix(comm, state_scan, rows)
                with timers("update"):
                    states_before = before[rows_of, :, :1] * state.x_left + before[rows_of, :, 1:]
                    states_after = decays[:, None] * states_before + inputs
                    x_end = total[:, :1] * state.x_left + total[:, 1:]

            # Update terms and the new guesses ŵ_τ = w_t − Σ_{t<=j<τ} c_j.
            with timers("update"):
                rows = weights_scan.identity(blocks)
                if len(own):
                    rows[rows_of] = opt.update_terms(own, guesses, grads, states_after)
            with timers("scan"):
                before, total = window_prefix(comm, weights_scan, rows)
            with timers("update"), np.errstate(over="ignore", invalid="ignore"):  # a diverging guess gives d = inf
                new_guesses = state.w_left - before[rows_of] if len(own) else guesses
                new_right = state.w_left - total
                # d of rule (9) for steps t+1 .. t+width, and the losses at steps t .. t+width-1.
                report = np.zeros(2 * width)
                for i, step in enumerate(own):
                    if step > t:
                        report[step - t - 1] = np.mean((new_guesses[i] - guesses[i]) ** 2)
                    report[width + step - t] = losses[i]
                if rank == 0:
                    report[width - 1] = np.mean((new_right - state.w_right) ** 2)
            with timers("reduce"):
                comm.Allreduce(MPI.IN_PLACE, report, op=MPI.SUM)
            d, window_losses = report[:width], report[width:]
            unconverged = np.flatnonzero(~(d <= state.delta))
            stride = int(unconverged[0]) + 1 if len(unconverged) else width
            # Losses at the exact w_t and the accepted steps t+1 .. t+stride-1: the first non-finite
            # one is where the sequential run fails too (non-finite losses beyond are only guesses).
            bad = np.flatnonzero(~np.isfinite(window_losses[:stride]))
            if len(bad):
                diverged_at = t + int(bad[0])
                break
            state.deltas.append(state.delta)
            finite = d[np.isfinite(d)]
            if adapt != "fixed" and finite.size:
                summary = np.mean(finite) if adapt == "mean" else np.median(finite)
                state.delta = ema_decay * state.delta + (1 - ema_decay) * float(summary)

            # Slide: the new left end and its optimizer state come from the owner of that step.
            t_new = t + stride
            with timers("bcast"):
                if stride == width:
                    w_left, x_left = new_right, x_end
                else:
                    owner = t_new % size
                    packed = np.empty((1 + len(decays), n))
                    if rank == owner:
                        i = int(np.flatnonzero(own == t_new)[0])
                        packed[0], packed[1:] = new_guesses[i], states_before[i]
                    comm.Bcast(packed, root=owner)
                    w_left, x_left = packed[0], packed[1:]
            if on_converged is not None:
                for i, step in enumerate(own):
                    if t < step < t_new:
                        on_converged(int(step), new_guesses[i])
                if t_new % size == rank:
                    on_converged(t_new, w_left)

            next_own = owned_steps(t_new, min(window, total_steps - t_new), size, rank)
            kept = {int(s): g for s, g in zip(own, new_guesses)}
            state.own_guesses = np.array([kept.get(int(s), new_right) for s in next_own]).reshape(len(next_own), n)
            state.own_steps = next_own
            state.w_left, state.x_left, state.w_right = w_left.copy(), x_left.copy(), new_right
            state.losses.extend(window_losses[:stride].tolist())
            state.strides.append(stride)
            state.gradients += len(own)
            state.t, state.k = t_new, state.k + 1
            if progress:
                progress(f"iteration {state.k}: window [{t}, {t + width}), advanced {stride} to step {t_new}/"
                         f"{total_steps}, δ = {state.deltas[-1]:.3e}, loss at step {t} = {window_losses[0]:.5f}")
            if state.t < total_steps and after_iteration is not None and after_iteration(state):
                interrupted = True
                break
    finally:
        if state_scan is not None:
            state_scan.free()

    return PasoResult(w_final=state.w_left.copy(), iterations=state.k, state=state, interrupted=interrupted,
                      diverged_at=diverged_at, timings=timers.as_dict())


def sequential_reference(problem, opt: OptimizerSpec, w0: np.ndarray, total_steps: int,
                         on_step: Callable[[int, np.ndarray], None] | None = None):
    """The same T steps with torch.optim itself: same batches ζ_t, same η_t, one gradient per step.

    Returns (w_T, losses per step). ``on_step(t, w_t)`` sees every iterate t = 1 .. T.
    """
    model = copy.deepcopy(problem.model)  # the problem's own module stays at its initial weights
    params = list(model.parameters())
    with torch.no_grad():
        for p, value in zip(params, problem.unflatten(torch.as_tensor(w0, device=problem.device)).values()):
            p.copy_(value)
    optimizer = opt.torch_optimizer(params)
    losses = []
    for step in range(total_steps):
        x, y = problem.batch(step)
        for group in optimizer.param_groups:
            group["lr"] = opt.lr_at(step)
        optimizer.zero_grad()
        loss = problem.loss(model(x), y)
        loss.backward()
        if opt.clip_norm:
            torch.nn.utils.clip_grad_norm_(params, opt.clip_norm, foreach=False)
        optimizer.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, problem.flatten(params))
    return problem.flatten(params), np.array(losses)
