"""A residual network read as the discretised ODE X'(t) = f(X, U(t)) on t in [0, T].

Network: an opening layer X_0 = x W_open^T + c_open, ``depth`` residual layers with
step delta = T / depth, and a classifier head on the final state. Row convention
(one sample per row). Two schemes:

* ``euler``:  X_{j+1} = X_j + delta * sigma(X_j K_j^T + b_j)
* ``verlet``: the leapfrog scheme of Haber & Ruthotto (2018) on two states X = (Y, Z):
  Z_{j+1/2} = Z_{j-1/2} - delta * sigma(Y_j K_j + b_j),
  Y_{j+1}   = Y_j + delta * sigma(Z_{j+1/2} K_j^T + b_j),  with Z_{-1/2} = 0; the head reads Y.

Co-states are P_j = dLoss/dX_j (the gradient convention; the paper's P is its negative).
The backward solve is torch autograd's vector-Jacobian product through a block of layers (the
co-state recursion layer by layer, one autograd call per block), so serial forward + backward +
update is exactly SGD with backprop (Lemma 2.2).

Coarse model: half the layers, step 2*delta. Controls are piecewise constant on the
layer grid, so prolongation is piecewise-constant interpolation in t (fine layers 2i
and 2i+1 take coarse layer i) and restriction averages each pair (its left inverse).
Both act within a block of whole coarse layers, so they need no neighbour data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SCHEMES = ("euler", "verlet")
ACTIVATIONS = {"tanh": torch.tanh, "identity": lambda v: v}
LOSSES = ("cross_entropy", "mse")
LAYER_PARAMS = ("K", "b")
OPENING_PARAMS = ("open_W", "open_b")
HEAD_PARAMS = ("head_W", "head_b")


@dataclass(frozen=True)
class ResNetSpec:
    in_dim: int
    width: int
    out_dim: int
    depth: int
    scheme: str = "verlet"
    final_time: float = 1.0
    activation: str = "tanh"
    loss: str = "cross_entropy"

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown scheme {self.scheme!r}; choose one of: {', '.join(SCHEMES)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSSES)}")

    @property
    def delta(self) -> float:
        return self.final_time / self.depth

    @property
    def state_dim(self) -> int:
        return 2 * self.width if self.scheme == "verlet" else self.width

    def coarse(self) -> "ResNetSpec":
        """The same continuous model with half the layers (step 2*delta)."""
        return ResNetSpec(self.in_dim, self.width, self.out_dim, self.depth // 2, self.scheme,
                          self.final_time, self.activation, self.loss)


def init_params(spec: ResNetSpec, seed: int, dtype=torch.float64, device="cpu") -> dict[str, torch.Tensor]:
    """Whole-network weights, a pure function of the seed (so independent of the rank count)."""
    gen = torch.Generator().manual_seed(seed)
    n = spec.width

    def normal(*shape, std):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * std).to(dtype=dtype, device=device)

    return {
        "open_W": normal(n, spec.in_dim, std=spec.in_dim ** -0.5),
        "open_b": torch.zeros(n, dtype=dtype, device=device),
        "K": normal(spec.depth, n, n, std=n ** -0.5),
        "b": torch.zeros(spec.depth, n, dtype=dtype, device=device),
        "head_W": normal(spec.out_dim, n, std=n ** -0.5),
        "head_b": torch.zeros(spec.out_dim, dtype=dtype, device=device),
    }


def layer_step(spec: ResNetSpec, X, K, b):
    """One residual layer (one time step of the forward solve)."""
    sigma, delta = ACTIVATIONS[spec.activation], spec.delta
    # addmm and add(alpha=): two fused kernels instead of four (the layers are tiny; op count is the cost)
    if spec.scheme == "euler":
        return torch.add(X, sigma(torch.addmm(b, X, K.T)), alpha=delta)
    n = spec.width
    Y, Z = X[:, :n], X[:, n:]
    Z = torch.add(Z, sigma(torch.addmm(b, Y, K)), alpha=-delta)
    Y = torch.add(Y, sigma(torch.addmm(b, Z, K.T)), alpha=delta)
    return torch.cat([Y, Z], dim=1)


def opening(spec: ResNetSpec, x, W, c):
    X = x @ W.T + c
    if spec.scheme == "verlet":
        X = torch.cat([X, torch.zeros_like(X)], dim=1)
    return X


def head_output(spec: ResNetSpec, X, W, c):
    return X[:, :spec.width] @ W.T + c


def loss_value(spec: ResNetSpec, out, targets):
    """Mean over the batch: cross-entropy of the logits, or half the squared error."""
    if spec.loss == "cross_entropy":
        return torch.nn.functional.cross_entropy(out, targets)
    return 0.5 * ((out - targets) ** 2).sum(dim=1).mean()


def full_forward(spec: ResNetSpec, params: dict, x):
    """The whole network as one autograd graph (reference for the per-layer solves)."""
    X = opening(spec, x, params["open_W"], params["open_b"])
    for K, b in zip(params["K"].unbind(0), params["b"].unbind(0)):  # one stacking copy in backward, not one per layer
        X = layer_step(spec, X, K, b)
    return head_output(spec, X, params["head_W"], params["head_b"])


def prolong(coarse_layers: torch.Tensor) -> torch.Tensor:
    """Piecewise-constant interpolation in t: coarse layer i becomes fine layers 2i and 2i+1."""
    return coarse_layers.repeat_interleave(2, dim=0)


def restrict(fine_layers: torch.Tensor) -> torch.Tensor:
    """Average of fine layers 2i and 2i+1 (restrict(prolong(U)) == U)."""
    return 0.5 * (fine_layers[0::2] + fine_layers[1::2])


class Subnetwork:
    """Layers [start, stop) of the network, plus the opening layer on the first block and the head on
    the last: the unit one rank owns. Forward and backward solves, and the SGD update (Lemma 2.2).

    The forward solve records one autograd graph for the whole block (leaf copies of the block's
    weights and of its input state); the backward solve is then one vector-Jacobian product of that
    graph with the co-state at X_stop, which returns the co-state at X_start and every weight
    gradient at once. This is the per-layer co-state recursion (each layer's VJP in turn) with the
    Python and autograd-engine overhead paid once per block instead of once per layer."""

    def __init__(self, spec: ResNetSpec, params: dict[str, torch.Tensor], start: int, stop: int):
        self.spec, self.start, self.stop = spec, start, stop
        self.first, self.last = start == 0, stop == spec.depth
        names = LAYER_PARAMS + (OPENING_PARAMS if self.first else ()) + (HEAD_PARAMS if self.last else ())
        self.params = {name: params[name].clone() for name in names}
        if len(self.params["K"]) != stop - start:
            raise ValueError(f"block [{start}, {stop}) was given {len(self.params['K'])} layers")
        self._graph = None  # (input leaf or None, weight leaves, X_stop) of the last forward solve

    def forward(self, inp):
        """Forward solve over the block from the data (first block) or the state X_start; records the
        block's autograd graph for the backward solve and returns X_stop (detached)."""
        p = self.params
        names = LAYER_PARAMS + (OPENING_PARAMS if self.first else ())
        leaves = {n: p[n].detach().requires_grad_() for n in names}
        x_in = None if self.first else inp.detach().requires_grad_()
        with torch.enable_grad():
            X = opening(self.spec, inp, leaves["open_W"], leaves["open_b"]) if self.first else x_in
            # unbind once: its backward stacks the per-layer gradients in one copy
            for K, b in zip(leaves["K"].unbind(0), leaves["b"].unbind(0)):
                X = layer_step(self.spec, X, K, b)
        self._graph = (x_in, leaves, X)
        return X.detach()

    @property
    def has_graph(self) -> bool:
        """Whether a forward solve awaits its backward solve."""
        return self._graph is not None

    @property
    def state_out(self) -> torch.Tensor:
        """X_stop of the forward solve that awaits its backward solve (detached)."""
        return self._graph[2].detach()

    def loss_costate(self, targets):
        """Last block: loss, the terminal co-state dLoss/dX_T, head gradients and correct predictions."""
        X = self.state_out.requires_grad_()
        W, c = (self.params[n].detach().requires_grad_() for n in HEAD_PARAMS)
        with torch.enable_grad():
            out = head_output(self.spec, X, W, c)
            loss = loss_value(self.spec, out, targets)
        P, gW, gc = torch.autograd.grad(loss, (X, W, c))
        correct = int((out.argmax(dim=1) == targets).sum()) if self.spec.loss == "cross_entropy" else 0
        return float(loss.detach()), P, {"head_W": gW, "head_b": gc}, correct

    def backward(self, P):
        """Backward solve from the co-state at X_stop; returns (co-state at X_start, gradients).
        The first block has no input state and returns None for it."""
        x_in, leaves, X = self._graph
        self._graph = None  # one backward solve per forward solve
        inputs = list(leaves.values()) + ([] if self.first else [x_in])
        out = torch.autograd.grad(X, inputs, P)
        grads = dict(zip(leaves, out))
        return (None if self.first else out[-1]), grads

    def sgd_step(self, grads: dict, lr: float, weight_decay: float = 0.0) -> None:
        """U <- U - lr (dLoss/dU + weight_decay U): the algorithmic mapping of Lemma 2.2 with R = wd/2 |U|^2."""
        for name, g in grads.items():
            u = self.params[name]
            if weight_decay:
                g = g + weight_decay * u
            u.sub_(lr * g)

    @torch.no_grad()
    def output(self, inp):
        """Forward solve without recording a graph (evaluation)."""
        p = self.params
        X = opening(self.spec, inp, p["open_W"], p["open_b"]) if self.first else inp
        for K, b in zip(p["K"].unbind(0), p["b"].unbind(0)):
            X = layer_step(self.spec, X, K, b)
        return X
