"""Layer-parallel ResNet training: predict globally, correct locally (Parpas & Muir, Alg. 3-4).

Rank r owns the residual layers [s_r, s_{r+1}) (rank 0 also the opening layer, the
last rank the head). Two couplings between the blocks:

``exact`` (Alg. 3 distributed): states are exchanged before use and co-states are the
exact ones: a forward chain down the ranks, then a backward chain up. It is serial SGD
with backprop, pipelined over the ranks without overlap; on one rank it *is* Alg. 3. It
serves as the serial baseline, the coarse global prediction, and the exactness check.

``regression`` (Alg. 4 with P sub-systems, Remark 1), all ranks at once in iteration k.
Rank 0 (the paper's Processor A) runs backward -> update -> forward: backward solve from the
regressed co-state at the state of its previous forward solve, update, then the forward solve
of the next mini-batch with the new weights. Every other rank (Processor B) runs:
  1. forward solve from X_{s_r}, the state rank r-1 sent at the end of iteration k-1 (so ranks
     0 and 1 work on the same mini-batch at the same weights, rank r > 1 on mini-batch
     max(k - r + 1, 0): its input state is one iteration old);
  2. right-boundary co-state: the loss gradient on the last rank; elsewhere
     P_hat = A X_{s_{r+1}} + B, ridge least squares on a sliding window of observed
     (state, co-state) pairs at that boundary (eq. (6); per sample, by Lemma 2.1);
  3. backward solve and SGD update (Lemma 2.2).
Then the synchronisation: X_{s_{r+1}} goes right, the exact co-state P_{s_r} of the received
state goes left (non-blocking, posted as soon as each is known); the co-state that arrives
from the right is paired with the state this rank sent last. On two ranks this is the
paper's schedule exactly: only the co-state at s_1 is inexact. Ranks r > 0 cannot run
backward -> update -> forward as well without serialising: their next input state would be
rank r-1's forward solve of the same iteration.

Global prediction (multilevel variant): H iterations of the exact coupling on the coarse
model (half the layers) give the initial weights (prolonged), the boundary states for
iteration 0 and the first window of regression pairs I_0. Single-level variant: no
coarse model, one fine forward chain fills the pipeline and the window starts empty
(P_hat = 0 until the first pair arrives).
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from mpi4py import MPI

from .. import validation
from ..comm import NonFiniteError, Timers, block_partition
from ..problems.resnet import LAYER_PARAMS, ResNetSpec, Subnetwork, head_output, loss_value, prolong, restrict

TAG_STATE, TAG_COSTATE, TAG_EVAL = 31, 32, 33
COUPLINGS = ("regression", "exact")
FEATURES = ("affine", "quadratic")  # regressors of the co-state model
COMPUTE_TIMERS = ("forward", "loss", "regression", "backward", "update")  # the rest: waiting, I/O, setup


def layer_block(depth: int, size: int, rank: int, coarse: bool) -> tuple[int, int]:
    """Layers [s_r, s_{r+1}) of ``rank``; with a coarse model the boundaries fall on coarse layers."""
    if coarse:
        start, stop = block_partition(depth // 2, size, rank)
        return 2 * start, 2 * stop
    return block_partition(depth, size, rank)


def check_partition(depth: int, size: int, coarse: bool) -> None:
    if coarse and depth % 2:
        raise ValueError(f"depth = {depth} must be even for the coarse model (half the layers)")
    units = depth // 2 if coarse else depth
    if units < size:
        what = "coarse layers (depth / 2)" if coarse else "layers"
        raise ValueError(f"{units} {what} cannot be spread over {size} ranks: every rank needs at least one")


class WallAndCpuTimers(Timers):
    """Wall-clock seconds by category, plus this thread's CPU seconds as ``cpu_<category>``: on a
    shared or oversubscribed machine the CPU time is what the work costs on a dedicated core."""

    @contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - wall)
            self.add("cpu_" + name, time.thread_time() - cpu)


class BatchStream:
    """Mini-batch k is a pure function of (seed, stream, k): a fresh permutation per epoch, so
    restarts and every rank agree without storing an RNG state."""

    def __init__(self, n_samples: int, batch_size: int, seed: int, stream: int):
        if batch_size > n_samples:
            raise ValueError(f"batch size {batch_size} exceeds the {n_samples} training samples")
        self.n, self.m, self.seed, self.stream = n_samples, batch_size, seed, stream
        self.per_epoch = n_samples // batch_size
        self._epoch, self._perm = None, None

    def indices(self, k: int) -> torch.Tensor:
        epoch, j = divmod(k, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.from_numpy(np.random.default_rng([self.seed, self.stream, epoch]).permutation(self.n))
            self._epoch = epoch
        return self._perm[j * self.m:(j + 1) * self.m]


class CostateRegression:
    """Per-sample affine co-state model p(X) = A X + B (eq. (6)), ridge least squares over the last
    ``window`` observed batches of (state, co-state) pairs. Co-states are stored per sample
    (batch size times the co-state of the mean loss), so batches of any size are comparable.

    With ``n_classes`` > 1 one (A, B) is fitted per class label: the per-sample value function of
    Lemma 2.1 has the sample's label inside its data-fidelity term, so the co-state is a function
    of (state, label); one affine map per label captures the jump across the class boundary that
    a single affine map averages away. Every rank knows the labels of the batch it works on.
    A label absent from the window falls back to the map fitted on all pairs.

    ``features = "quadratic"`` adds the products X_i X_j (i <= j) to the regressors (a second-order
    model of the co-state map; (dim + 1)(dim + 2)/2 coefficients per output and label); its
    predictions are scaled back to at most the largest per-sample co-state norm in the window, so
    that the model cannot run away where it extrapolates.

    Each batch's normal equations (per label) are formed once when it is added; a fit sums the
    window's and solves all labels at once, so its cost does not grow with the window's rows."""

    def __init__(self, window: int, ridge: float, n_classes: int = 1, features: str = "affine"):
        if features not in FEATURES:
            raise ValueError(f"unknown features {features!r}; choose one of: {', '.join(FEATURES)}")
        self.window, self.ridge, self.n_classes, self.features = window, ridge, n_classes, features
        self.xs: list[torch.Tensor] = []
        self.ps: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self._normal: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.coef = None

    def _labels(self, X, labels):
        if self.n_classes == 1:
            return torch.zeros(len(X), dtype=torch.int64, device=X.device)
        return labels

    def _phi(self, X) -> torch.Tensor:
        """Regressors of each row: X (and with ``quadratic`` features the products X_i X_j, i <= j), then 1."""
        parts = [X]
        if self.features == "quadratic":
            i, j = torch.triu_indices(X.shape[1], X.shape[1], device=X.device)
            parts.append(X[:, i] * X[:, j])
        return torch.cat([*parts, torch.ones_like(X[:, :1])], dim=1)

    def add(self, X, P, labels=None) -> None:
        X, P = X.detach().clone(), P.detach().clone()
        y = self._labels(X, labels).clone()
        phi = self._phi(X)
        onehot = torch.nn.functional.one_hot(y, self.n_classes).to(X.dtype)
        phi_t = onehot.T[:, None, :] * phi.T  # (labels, dim + 1, rows): each label's rows only
        self._normal.append((phi_t @ phi, phi_t @ P))
        self.xs.append(X), self.ps.append(P), self.ys.append(y)
        if len(self.xs) > self.window:
            del self.xs[0], self.ps[0], self.ys[0], self._normal[0]
        self.coef = None

    def fit(self) -> torch.Tensor:
        """Coefficients [A^T; B] per label, shape (n_classes, features + 1, dim)."""
        gram = torch.stack([g for g, _ in self._normal]).sum(dim=0)
        rhs = torch.stack([c for _, c in self._normal]).sum(dim=0)
        gram = torch.cat([gram, gram.sum(dim=0, keepdim=True)])  # the last system pools all labels
        rhs = torch.cat([rhs, rhs.sum(dim=0, keepdim=True)])
        dim = gram.shape[-1] - 1
        seen = (gram[:, dim, dim] > 0)[:, None, None]  # gram[c, dim, dim] counts label c's pairs
        gram = torch.where(seen, gram, torch.eye(dim + 1, dtype=gram.dtype, device=gram.device))
        # penalise A only, relative to the data's scale; the intercept B stays free
        diagonal = torch.diagonal(gram, dim1=1, dim2=2)
        penalty = self.ridge * diagonal[:, :dim].sum(dim=1, keepdim=True) / dim
        gram = gram + torch.diag_embed(torch.cat([penalty.expand(-1, dim), torch.zeros_like(penalty)], dim=1))
        if self.ridge > 0:
            coef = torch.linalg.solve(gram, rhs)
        else:
            coef = torch.linalg.pinv(gram, hermitian=True) @ rhs
        self.coef = torch.where(seen[:-1], coef[:-1], coef[-1])
        return self.coef

    def predict(self, X, labels=None) -> torch.Tensor:
        if not self.xs:
            return torch.zeros_like(X)
        coef = self.coef if self.coef is not None else self.fit()
        every_label = self._phi(X) @ coef  # (labels, rows, dim)
        P = every_label[self._labels(X, labels), torch.arange(len(X), device=X.device)]
        if self.features == "affine":
            return P
        # a higher-order model can run away off the window's data: no row larger than the largest observed
        largest = max(float(p.norm(dim=1).max()) for p in self.ps)
        return P * (largest / P.norm(dim=1, keepdim=True).clamp_min(largest)).clamp(max=1.0)

    def arrays(self) -> dict[str, np.ndarray]:
        stack = (lambda ts: torch.stack(ts).cpu().numpy()) if self.xs else (lambda ts: np.zeros((0,)))
        return {"regression_x": stack(self.xs), "regression_p": stack(self.ps), "regression_y": stack(self.ys)}

    def load(self, arrays, device) -> None:
        self.xs, self.ps, self.ys, self._normal = [], [], [], []
        for x, p, y in zip(arrays["regression_x"], arrays["regression_p"], arrays["regression_y"]):
            self.add(torch.from_numpy(x).to(device), torch.from_numpy(p).to(device), torch.from_numpy(y).to(device))


def costate_regression(spec: ResNetSpec, window: int, ridge: float, by_class: bool,
                       features: str = "affine") -> CostateRegression:
    """The regression of a run: one map per class label only where there are labels (classification)."""
    return CostateRegression(window, ridge, spec.out_dim if by_class and spec.loss == "cross_entropy" else 1,
                             features)


@dataclass
class LayerParallelState:
    """Everything that decides the iterates after iteration ``k`` (checkpointed between iterations)."""

    k: int
    net: Subnetwork
    regression: CostateRegression
    x_in: torch.Tensor | None = None         # input state for iteration k (ranks > 0, regression coupling)
    x_prev_out: torch.Tensor | None = None   # last state sent right, awaiting its exact co-state
    p_hat_prev: torch.Tensor | None = None   # the regression's co-state at x_prev_out (per sample)
    y_prev_out: torch.Tensor | None = None   # labels of the samples in x_prev_out
    train_seconds: float = 0.0               # this rank's training time so far (evaluation excluded)
    local: dict = field(default_factory=lambda: {"loss": [], "accuracy": [], "regression_mse": [],
                                                 "regression_rel": [], "gradient_cosine": [], "compute_seconds": [],
                                                 "wait_seconds": []})
    evals: dict = field(default_factory=lambda: {"iteration": [], "seconds": [], "train_accuracy": [],
                                                 "train_loss": [], "test_accuracy": []})

    TENSORS = ("x_in", "x_prev_out", "p_hat_prev", "y_prev_out")

    def rank_arrays(self) -> dict[str, np.ndarray]:
        out = {f"param_{n}": t.cpu().numpy() for n, t in self.net.params.items()}
        out.update(self.regression.arrays())
        for name in self.TENSORS:
            t = getattr(self, name)
            out[name] = t.cpu().numpy() if t is not None else np.zeros((0,))
        out.update({f"local_{n}": np.array(v, dtype=float) for n, v in self.local.items()})
        out["train_seconds"] = np.array(self.train_seconds)
        return out

    def root_arrays(self) -> dict[str, np.ndarray]:
        return {f"eval_{n}": np.array(v, dtype=float) for n, v in self.evals.items()}

    @classmethod
    def from_arrays(cls, k, spec, start, stop, regression: "CostateRegression", arrays, root,
                    device) -> "LayerParallelState":
        params = {n[len("param_"):]: torch.from_numpy(a).to(device) for n, a in arrays.items()
                  if n.startswith("param_")}
        regression.load(arrays, device)
        state = cls(k, Subnetwork(spec, params, start, stop), regression)
        for name in cls.TENSORS:
            a = arrays[name]
            setattr(state, name, torch.from_numpy(a).to(device) if a.size else None)
        state.local = {n: list(arrays[f"local_{n}"]) for n in state.local}
        state.evals = {n: list(root[f"eval_{n}"]) for n in state.evals}
        state.train_seconds = float(arrays["train_seconds"])
        return state


@dataclass
class LayerParallelResult:
    iterations: int
    interrupted: bool
    start: int
    stop: int
    params: dict                 # this rank's block of the trained weights
    history: dict                # per iteration, identical on all ranks
    evals: dict                  # full-data evaluations, identical on all ranks
    timings: dict
    counters: dict


class _Messenger:
    """Point-to-point exchange of (batch, state_dim) arrays with the neighbouring ranks."""

    def __init__(self, comm, dtype, device, timers: Timers, prefix: str = ""):
        self.comm, self.device, self.timers, self.prefix = comm, device, timers, prefix
        self.np_dtype = torch.empty((), dtype=dtype).numpy().dtype
        self.first, self.last = comm.rank == 0, comm.rank == comm.size - 1
        self.counters = {"messages_sent": 0, "bytes_sent": 0}

    def _out(self, t):
        buf = np.ascontiguousarray(t.detach().cpu().numpy())
        self.counters["messages_sent"] += 1
        self.counters["bytes_sent"] += buf.nbytes
        return buf

    def to_tensor(self, buf):
        return torch.from_numpy(buf).to(self.device)

    def send(self, t, dest, tag):
        self.comm.Send(self._out(t), dest=dest, tag=tag)

    def recv(self, shape, source, tag):
        buf = np.empty(shape, dtype=self.np_dtype)
        with self.timers(self.prefix + "wait"):
            self.comm.Recv(buf, source=source, tag=tag)
        return self.to_tensor(buf)

    def isend(self, t, dest, tag):
        buf = self._out(t)
        return self.comm.Isend(buf, dest=dest, tag=tag), buf

    def irecv(self, shape, source, tag):
        buf = np.empty(shape, dtype=self.np_dtype)
        return self.comm.Irecv(buf, source=source, tag=tag), buf


def forward_chain(comm, net: Subnetwork, inp, msg: _Messenger, batch: int, tag=TAG_STATE, keep=True):
    """States exchanged before use: receive X_{s_r} from the left, forward, send X_{s_{r+1}} right.
    Returns (input state or None on rank 0, output state)."""
    x_in = None if msg.first else msg.recv((batch, net.spec.state_dim), comm.rank - 1, tag)
    with msg.timers(msg.prefix + "forward"):
        x_out = net.forward(inp if msg.first else x_in) if keep else net.output(inp if msg.first else x_in)
    if not msg.last:
        msg.send(x_out, comm.rank + 1, tag)
    return x_in, x_out


def exact_gradients(comm, net: Subnetwork, x, y, msg: _Messenger):
    """Forward chain, then exact co-states back up (Alg. 3 without the update): this rank's block
    gradients of the mini-batch loss at the current weights of all ranks.
    Returns (loss, correct, gradients, X_{s_{r+1}}, per-sample co-state there); loss and correct
    are (nan, 0) except on the last rank."""
    m = len(y)
    _, x_out = forward_chain(comm, net, x, msg, m)
    loss, correct, grads = float("nan"), 0, {}
    if msg.last:
        with msg.timers(msg.prefix + "loss"):
            loss, p_out, grads, correct = net.loss_costate(y)
    else:
        p_out = msg.recv(x_out.shape, comm.rank + 1, TAG_COSTATE) / m
    with msg.timers(msg.prefix + "backward"):
        p_in, layer_grads = net.backward(p_out)
    grads.update(layer_grads)
    if not msg.first:
        msg.send(p_in * m, comm.rank - 1, TAG_COSTATE)
    return loss, correct, grads, x_out, p_out * m


def exact_iteration(comm, net: Subnetwork, x, y, lr: float, weight_decay: float, msg: _Messenger,
                    regression: CostateRegression | None = None):
    """One SGD step of the whole network, distributed: forward chain, then exact co-states back up
    (Alg. 3). Records the exact (state, co-state) pair at the right boundary in ``regression``.
    Returns (loss, correct) on the last rank, (nan, 0) elsewhere."""
    loss, correct, grads, x_out, p_out = exact_gradients(comm, net, x, y, msg)
    with msg.timers(msg.prefix + "update"):
        net.sgd_step(grads, lr, weight_decay)
    if regression is not None and not msg.last:
        regression.add(x_out, p_out, y)
    return loss, correct


def batch_lag(rank: int) -> int:
    """How many mini-batches rank r works behind rank 0 in the regression coupling: ranks 0 and 1
    work on the same one (the paper's two-processor schedule); rank r > 1 forwards the state that
    rank r - 1 computed one iteration earlier, so it is one more behind."""
    return max(rank - 1, 0)


def regression_iteration(comm, state: LayerParallelState, x, y, lr: float, weight_decay: float,
                         msg: _Messenger, x_next=None, y_next=None) -> dict:
    """Alg. 4 local correction on all ranks at once; ends with the synchronisation. Returns the
    gradients applied (of the loss, without weight decay).

    Rank 0 of several is the paper's Processor A: backward solve from the regressed co-state at the
    state of its last forward solve (mini-batch k at the current weights), update, then the forward
    solve of the next mini-batch (``x_next``, ``y_next``) with the updated weights; that state goes
    right. Every other rank is Processor B: forward solve from the state received at the last
    synchronisation, co-state (the loss gradient on the last rank, else the regression), backward
    solve, update. On two ranks both work on the same mini-batch at the same weights and only the
    co-state at s_1 is inexact; the forward solves of rank 0 and of the others still overlap."""
    net, rank = state.net, comm.rank
    lead = msg.first and not msg.last
    m = len(y)
    requests, keep_alive, grads = [], [], {}
    if lead:
        if net.has_graph:  # the forward solve at the end of the last iteration (or the pipeline fill)
            p_hat = state.p_hat_prev
        else:  # iteration 0 after a coarse prediction, or after a restart: same weights, same batch
            with msg.timers("forward"):
                net.forward(x)
            with msg.timers("regression"):
                p_hat = state.regression.predict(net.state_out, y)
    else:
        with msg.timers("forward"):
            x_out = net.forward(x if msg.first else state.x_in)
        if not msg.last:
            req, buf = msg.isend(x_out, rank + 1, TAG_STATE)  # in flight during the backward solve
            requests.append(req), keep_alive.append(buf)
            req, p_recv = msg.irecv(x_out.shape, rank + 1, TAG_COSTATE)
            requests.append(req)
        if not msg.first:
            req, x_recv = msg.irecv(state.x_in.shape, rank - 1, TAG_STATE)
            requests.append(req)
        if msg.last:
            with msg.timers("loss"):
                loss, p_out, grads, correct = net.loss_costate(y)
            state.local["loss"].append(loss)
            state.local["accuracy"].append(correct / m)
        else:
            with msg.timers("regression"):
                p_hat = state.regression.predict(x_out, y)
    if not msg.last:
        p_out = p_hat / m  # the regression is per sample; the loss is the batch mean
    with msg.timers("backward"):
        p_in, layer_grads = net.backward(p_out)
    grads.update(layer_grads)
    if not msg.first:
        req, buf = msg.isend(p_in * m, rank - 1, TAG_COSTATE)
        requests.append(req), keep_alive.append(buf)
    with msg.timers("update"):
        net.sgd_step(grads, lr, weight_decay)
    if lead:
        with msg.timers("forward"):
            x_out = net.forward(x_next)
        req, buf = msg.isend(x_out, rank + 1, TAG_STATE)
        requests.append(req), keep_alive.append(buf)
        req, p_recv = msg.irecv(x_out.shape, rank + 1, TAG_COSTATE)
        requests.append(req)
    with msg.timers("wait"):
        MPI.Request.Waitall(requests)
    if not msg.first:
        state.x_in = msg.to_tensor(x_recv)
    if not msg.last:
        p_true = msg.to_tensor(p_recv)  # exact co-state at the state this rank sent last
        with msg.timers("regression"):
            err = state.p_hat_prev - p_true
            state.local["regression_mse"].append(float((err ** 2).mean()))
            state.local["regression_rel"].append(float(err.norm() / p_true.norm().clamp_min(1e-300)))
            state.regression.add(state.x_prev_out, p_true, state.y_prev_out)
            if lead:  # the co-state the next backward solve starts from, with this pair in the fit
                y, p_hat = y_next, state.regression.predict(x_out, y_next)
        state.x_prev_out, state.p_hat_prev, state.y_prev_out = x_out, p_hat, y
    return grads


def true_gradients(comm, net: Subnetwork, batches: list, msg: _Messenger) -> dict:
    """Diagnosis: the exact gradient of each rank's block on the mini-batch it works on, at the
    current weights of all ranks. ``batches[j]``: (x, y) of rank j. One exact forward/backward chain
    per rank on a copy of the block (the iteration's own forward solve is left alone): P times the
    cost of an exact iteration."""
    probe = Subnetwork(net.spec, net.params, net.start, net.stop)
    mine = None
    for j, (x, y) in enumerate(batches):
        grads = exact_gradients(comm, probe, x, y, msg)[2]
        if j == comm.rank:
            mine = grads
    return mine


def gradient_cosine(applied: dict, true: dict) -> float:
    """cos(angle) between two gradients of the same block (dicts of tensors), taken as one vector."""
    dot = sum(float((applied[n] * true[n]).sum()) for n in true)
    norms = [sum(float((g[n] ** 2).sum()) for n in true) ** 0.5 for g in (applied, true)]
    return dot / max(norms[0] * norms[1], 1e-300)


def evaluate(comm, net: Subnetwork, x, y, msg: _Messenger) -> tuple[float, float]:
    """Loss and accuracy of the current weights on (x, y): one forward chain, result from the last rank."""
    _, x_out = forward_chain(comm, net, x, msg, len(y), tag=TAG_EVAL, keep=False)
    result = None
    if msg.last:
        out = head_output(net.spec, x_out, net.params["head_W"], net.params["head_b"])
        result = (float(loss_value(net.spec, out, y)), float((out.argmax(dim=1) == y).double().mean()))
    return comm.bcast(result, root=comm.size - 1)


def _gather_history(comm, state: LayerParallelState) -> dict:
    """Per-iteration series, identical on all ranks: loss/accuracy from the last rank, every rank's
    compute and wait seconds and (regression coupling, where diagnosed; nan elsewhere) the cosine
    between its applied and its true gradient (column r from rank r), the regression error at each
    boundary s_1 .. s_{P-1} (column r from rank r)."""
    last = comm.size - 1
    loss, acc = comm.bcast((state.local["loss"], state.local["accuracy"]) if comm.rank == last else None, root=last)
    mse = comm.allgather(state.local["regression_mse"])[:last]
    rel = comm.allgather(state.local["regression_rel"])[:last]
    history = {"loss": np.array(loss, dtype=float), "accuracy": np.array(acc, dtype=float)}
    for name in ("compute_seconds", "wait_seconds", "gradient_cosine"):  # (iterations, ranks)
        if len(state.local[name]) or name != "gradient_cosine":
            history[name] = np.array(comm.allgather(state.local[name]), dtype=float).T
    if last and len(mse[0]):
        history["regression_mse"] = np.array(mse, dtype=float).T
        history["regression_rel_error"] = np.array(rel, dtype=float).T
    return history


def train(comm, spec: ResNetSpec, params: dict, data: dict, *, iterations: int, lr: float, batch_size: int,
          seed: int, coupling: str = "regression", coarse_iterations: int = 0, coarse_lr: float | None = None,
          window: int = 20, ridge: float = 1e-6, by_class: bool = True, features: str = "affine",
          weight_decay: float = 0.0,
          eval_every: int = 10, diagnose_every: int = 0,
          resume: LayerParallelState | None = None,
          after_iteration: Callable[[LayerParallelState], bool] | None = None,
          progress: Callable[[str], None] | None = None) -> LayerParallelResult:
    """Train the network on ``comm``, rank r owning its block of layers.

    ``params``: whole-network initial weights (every rank passes the same; each keeps its block).
    ``data``: tensors x_train, y_train, x_test, y_test on the rank's device. ``coarse_iterations``
    H > 0 turns on the global prediction (regression coupling only). Full-data accuracy is
    evaluated every ``eval_every`` iterations, outside the timed training. ``by_class``: one affine
    co-state map per class label (classification only; see :class:`CostateRegression`); ``features``:
    its regressors, ``affine`` (eq. (6)) or ``quadratic``.
    ``diagnose_every`` n > 0 (regression coupling): every n-th iteration also computes each rank's
    exact gradient on its mini-batch at the current weights (:func:`true_gradients`, not timed) and
    records its cosine with the applied gradient in ``history["gradient_cosine"]`` (nan elsewhere).
    ``after_iteration(state)`` is called collectively after every iteration but the last; True stops
    the run there (preemption) with ``interrupted`` set.

    Raises ``ConfigError`` (a ValueError) for bad options (``paraflow_hpc.validation``), and
    :class:`~paraflow_hpc.comm.NonFiniteError` (on every rank) at the first evaluation after the
    batch loss or the full training loss became non-finite, naming the first such iteration.
    """
    if coupling not in COUPLINGS:
        raise ValueError(f"unknown coupling {coupling!r}; choose one of: {', '.join(COUPLINGS)}")
    # the checks of `run layer-parallel` (paraflow_hpc.validation; ConfigError is a ValueError)
    validation.count("iterations", iterations, 1)
    validation.positive("lr", lr)
    validation.batch_fits(batch_size, len(data["y_train"]), "training samples", name="batch_size")
    for key, value in (("coarse_iterations", coarse_iterations), ("window", window), ("eval_every", eval_every)):
        validation.count(key, value, 0 if key == "coarse_iterations" else 1)
    if coarse_lr is not None:
        validation.positive("coarse_lr", coarse_lr)
    for key, value in (("ridge", ridge), ("weight_decay", weight_decay)):
        validation.nonnegative(key, value)
    coarse = coupling == "regression" and coarse_iterations > 0
    check_partition(spec.depth, comm.size, coarse)
    start, stop = layer_block(spec.depth, comm.size, comm.rank, coarse)
    device = params["K"].device
    comm.Barrier()  # every rank's clock starts together
    timers = WallAndCpuTimers()
    msg = _Messenger(comm, params["K"].dtype, device, timers)
    # evaluations time and count apart (eval_forward, eval_wait), so the training's categories hold training only
    eval_msg = _Messenger(comm, params["K"].dtype, device, timers, prefix="eval_")
    probe_msg = _Messenger(comm, params["K"].dtype, device, timers, prefix="diagnose_")
    x_train, y_train = data["x_train"], data["y_train"]
    batches = BatchStream(len(y_train), batch_size, seed, stream=0)
    m = batch_size

    def record_eval(state: LayerParallelState):
        with timers("eval"):
            train_loss, train_acc = evaluate(comm, state.net, x_train, y_train, eval_msg)
            _, test_acc = evaluate(comm, state.net, data["x_test"], data["y_test"], eval_msg)
        # the batch losses live on the last rank: it names the first non-finite one to everybody
        first_bad = next((i for i, v in enumerate(state.local["loss"]) if not math.isfinite(v)), None)
        first_bad = comm.bcast(first_bad if msg.last else None, root=comm.size - 1)
        if first_bad is not None or not math.isfinite(train_loss):
            where = (f"batch loss in iteration {first_bad + 1}" if first_bad is not None else
                     f"training loss after iteration {state.k}" +
                     (" (the coarse model's global prediction)" if state.k == 0 and coarse else ""))
            rates = f"lr = {lr:g}" + (f", coarse_lr = {coarse_lr or lr:g}" if coarse else "")
            raise NonFiniteError(f"layer-parallel training diverged: non-finite {where} ({rates}); "
                                 "lower the learning rate")
        seconds = comm.allreduce(state.train_seconds, op=MPI.MAX)
        for name, value in (("iteration", state.k), ("seconds", seconds), ("train_accuracy", train_acc),
                            ("train_loss", train_loss), ("test_accuracy", test_acc)):
            state.evals[name].append(value)
        if progress:
            progress(f"iteration {state.k}: train accuracy {train_acc:.4f}, loss {train_loss:.4e}, "
                     f"test accuracy {test_acc:.4f}, {seconds:.2f} s")

    def train_seconds():
        untimed = ("eval", "checkpoint", "diagnose")
        return time_offset + timers.elapsed() - sum(timers.seconds.get(n, 0.0) for n in untimed)

    if resume is not None:
        state = resume
        time_offset = state.train_seconds
    else:
        time_offset = 0.0
        regression = costate_regression(spec, window, ridge, by_class, features)
        idx0 = batches.indices(0)
        if coarse:
            state = _global_prediction(comm, spec, params, start, stop, data, regression, coarse_iterations,
                                       coarse_lr or lr, weight_decay, batch_size, seed, idx0, timers, progress)
        else:
            state = LayerParallelState(0, Subnetwork(spec, {n: _block(params, n, start, stop) for n in params},
                                                     start, stop), regression)
            if coupling == "regression":  # fill the pipeline: one fine forward chain on batch 0
                with timers("fill"):
                    state.x_in, state.x_prev_out = forward_chain(comm, state.net, x_train[idx0], msg, m)
        if coupling == "regression" and not msg.last:
            state.y_prev_out = y_train[idx0]
            state.p_hat_prev = state.regression.predict(state.x_prev_out, state.y_prev_out)
        state.train_seconds = train_seconds()
        record_eval(state)

    interrupted = False
    first_iteration = state.k
    while state.k < iterations:
        compute0, wait0 = _compute_and_wait(timers)
        if coupling == "exact":
            idx = batches.indices(state.k)
            loss, correct = exact_iteration(comm, state.net, x_train[idx], y_train[idx], lr, weight_decay, msg)
            if msg.last:
                state.local["loss"].append(loss)
                state.local["accuracy"].append(correct / m)
        else:
            def batch(rank, ahead=0):  # pipeline: the mini-batch that reached ``rank``
                return batches.indices(max(state.k + ahead - batch_lag(rank), 0))

            true = None
            if diagnose_every and state.k % diagnose_every == 0:
                with timers("diagnose"):
                    each_rank = [(x_train[i], y_train[i]) for i in map(batch, range(comm.size))]
                    true = true_gradients(comm, state.net, each_rank, probe_msg)
            idx, nxt = batch(comm.rank), batch(comm.rank, ahead=1)
            applied = regression_iteration(comm, state, x_train[idx], y_train[idx], lr, weight_decay, msg,
                                           x_train[nxt], y_train[nxt])
            state.local["gradient_cosine"].append(gradient_cosine(applied, true) if true else float("nan"))
        compute1, wait1 = _compute_and_wait(timers)
        state.local["compute_seconds"].append(compute1 - compute0)
        state.local["wait_seconds"].append(wait1 - wait0)
        state.k += 1
        state.train_seconds = train_seconds()
        if state.k % eval_every == 0 or state.k == iterations:
            record_eval(state)
        if state.k < iterations and after_iteration is not None:
            with timers("checkpoint"):
                stop_now = after_iteration(state)
            if stop_now:
                interrupted = True
                break

    history = _gather_history(comm, state)
    return LayerParallelResult(state.k, interrupted, start, stop, state.net.params, history,
                               {n: np.array(v, dtype=float) for n, v in state.evals.items()},
                               timers.as_dict(), {**msg.counters, "iterations_run": state.k - first_iteration})


def _compute_and_wait(timers: Timers) -> tuple[float, float]:
    """This rank's wall-clock seconds so far in training compute and in waiting for its neighbours."""
    return sum(timers.seconds.get(n, 0.0) for n in COMPUTE_TIMERS), timers.seconds.get("wait", 0.0)


def _block(params: dict, name: str, start: int, stop: int) -> torch.Tensor:
    return params[name][start:stop] if name in LAYER_PARAMS else params[name]


def _global_prediction(comm, spec, params, start, stop, data, regression, coarse_iterations, lr, weight_decay,
                       batch_size, seed, idx0, timers, progress) -> LayerParallelState:
    """H exact SGD iterations on the coarse model (restricted initial weights); returns the fine state:
    prolonged weights, boundary states of fine batch 0 from the coarse model, and I_0 in ``regression``."""
    cspec = spec.coarse()
    cparams = {n: restrict(params[n][start:stop]) if n in LAYER_PARAMS else params[n] for n in params}
    cnet = Subnetwork(cspec, cparams, start // 2, stop // 2)
    msg = _Messenger(comm, params["K"].dtype, params["K"].device, timers, prefix="coarse_")
    x_train, y_train = data["x_train"], data["y_train"]
    coarse_batches = BatchStream(len(y_train), batch_size, seed, stream=1)
    for h in range(coarse_iterations):
        idx = coarse_batches.indices(h)
        exact_iteration(comm, cnet, x_train[idx], y_train[idx], lr, weight_decay, msg, regression)
    # iteration 0's boundary states: fine batch 0 through the trained coarse model
    x_in, x_out = forward_chain(comm, cnet, x_train[idx0], msg, batch_size, keep=False)
    fine = {n: prolong(t) if n in LAYER_PARAMS else t for n, t in cnet.params.items()}
    if progress:
        progress(f"global prediction: {coarse_iterations} iterations of the coarse model ({cspec.depth} layers)")
    state = LayerParallelState(0, Subnetwork(spec, fine, start, stop), regression)
    state.x_in, state.x_prev_out = x_in, x_out
    return state

