"""The ParaFlow paper's training problems: fully connected networks, loss (1).

    L(W) = sum_i w_i L_i(W),   L_i(W) = 1/2 || P_i y(x_i) - P_i a^[L](x_i; W) ||^2

with the weights w_i of the reduction: 1 (``sum``), 1/N (``mean``), or 2/N_term
(``term-mean``: DeepXDE's loss, the mean squared residual of each term -- boundary,
PDE -- summed over the terms).

A problem is a small class: ``n_params`` (the flat parameter vector W in R^d), the
per-sample losses of a batch (one batched forward pass; the PINN's Laplacian is
``torch.func.hessian`` vmapped over the points), and the data. A batch gradient is
one backward pass through the weighted sum (= the sum of the per-sample gradients
``vmap(grad(...))``, which ``per_sample_gradients`` returns), and
``gradient_evaluations`` counts one per sample: the budget the paper's tables
compare at.

To add a problem: subclass :class:`NetworkProblem`, set ``layers`` and the data in
``__init__``, override ``_groups`` if P_i is not the identity, and run it with
``--problem path/to/file.py:Class`` (a built-in is also registered in
:mod:`paraflow_hpc.problems.builtin`). A torch model with ``--data`` becomes a
:class:`ModelNetworkProblem`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.func import grad, hessian, vmap

DTYPE = torch.float64
REDUCTIONS = ("sum", "mean", "term-mean")


class NetworkProblem:
    """A fully connected network a^[l] = sigma(W^[l] a^[l-1] + b^[l]) on a fixed data set.

    sigma is ``activation`` on every layer (the paper's sigmoid), or on every layer but
    the last where ``linear_output`` is set.
    """

    name = "network"
    layers: list[int] = []
    default_reduction = "sum"
    activation = staticmethod(torch.sigmoid)
    linear_output = False

    def __init__(self, reduction: str | None = None, device="cpu"):
        self.reduction = reduction or self.default_reduction
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction = {self.reduction!r}: choose one of {', '.join(REDUCTIONS)}")
        self.device = torch.device(device)
        self.shapes = [(n_out, n_in) for n_in, n_out in zip(self.layers[:-1], self.layers[1:])]
        self.n_params = sum(o * i + o for o, i in self.shapes)
        self.gradient_evaluations = 0     # per-sample gradients: the budget
        self.loss_evaluations = 0         # per-sample losses computed without a gradient

    # --- network -----------------------------------------------------------------
    def unflatten(self, W):
        out, start = [], 0
        for n_out, n_in in self.shapes:
            weight = W[start:start + n_out * n_in].reshape(n_out, n_in)
            start += n_out * n_in
            out.append((weight, W[start:start + n_out]))
            start += n_out
        return out

    def network(self, W, x):
        """a^[L](x; W) for inputs x of shape (..., I): one sample or a batch."""
        a = x
        layers = self.unflatten(W)
        for depth, (weight, bias) in enumerate(layers, start=1):
            z = a @ weight.T + bias
            a = z if self.linear_output and depth == len(layers) else self.activation(z)
        return a

    def initial_weights(self, seed: int) -> torch.Tensor:
        """Layer by layer, ``layer_weights`` and zero biases; seeded."""
        gen = torch.Generator().manual_seed(seed)
        parts = []
        for n_out, n_in in self.shapes:
            parts += [self.layer_weights(n_out, n_in, gen), torch.zeros(n_out, dtype=DTYPE)]
        return torch.cat(parts).to(self.device)

    @staticmethod
    def layer_weights(n_out: int, n_in: int, gen: torch.Generator) -> torch.Tensor:
        """Xavier-normal: N(0, 2/(n_in+n_out)), flattened."""
        return torch.randn(n_out * n_in, generator=gen, dtype=DTYPE) * math.sqrt(2.0 / (n_in + n_out))

    # --- data and loss -----------------------------------------------------------
    @property
    def n_samples(self) -> int:
        return int(self.inputs.shape[0])

    def sample_losses(self, W, x, y):
        """(L_i)_i for a batch of samples (P_i = identity): one batched forward pass."""
        r = y - self.network(W, x)
        return 0.5 * (r * r).sum(-1)

    def _weight(self, term_size: int) -> float:
        """w_i of the samples of a loss term with ``term_size`` samples in the full set."""
        return {"sum": 1.0, "mean": 1.0 / self.n_samples, "term-mean": 2.0 / term_size}[self.reduction]

    def _groups(self, idx: torch.Tensor):
        """(batched per-sample losses, their batched arguments, the term's full size) covering ``idx``."""
        return [(self.sample_losses, (self.inputs[idx], self.targets[idx]), self.n_samples)]

    def value_and_grad(self, W, idx: torch.Tensor | None = None):
        """(L_idx(W), grad L_idx(W)): reverse mode through the batched losses' weighted sum.

        ``idx=None`` is the full batch. The gradient equals the sum of the weighted per-sample
        gradients (``per_sample_gradients``, torch.func; tested) and costs |idx| gradient
        evaluations, but one backward pass through the sum never forms the |idx| x d matrix
        (15x faster for the PINN) and skips functorch's per-call overhead (2-3x for the small
        networks, whose steps are all overhead). The weights w_i are the full set's (never
        rescaled by the batch size), so a mini-batch gradient is an unbiased estimate of the
        full one up to N/|idx|.
        """
        idx = self.all_indices() if idx is None else idx
        W = W.detach().requires_grad_(True)
        value = self._batch_loss(W, idx)
        (gradient,) = torch.autograd.grad(value, W)
        self.gradient_evaluations += int(idx.shape[0])
        return float(value.detach()), gradient

    def _batch_loss(self, W, idx: torch.Tensor) -> torch.Tensor:
        """sum_{i in idx} w_i L_i(W)."""
        value = torch.zeros((), dtype=DTYPE, device=self.device)
        for fn, args, term_size in self._groups(idx):
            if args[0].shape[0]:
                value = value + self._weight(term_size) * fn(W, *args).sum()
        return value

    def loss(self, W, idx: torch.Tensor | None = None) -> float:
        """L_idx(W) without a gradient (counted apart from the budget)."""
        idx = self.all_indices() if idx is None else idx
        with torch.no_grad():
            value = self._batch_loss(W, idx)
        self.loss_evaluations += int(idx.shape[0])
        return float(value)

    def per_sample_gradients(self, W, idx: torch.Tensor) -> torch.Tensor:
        """The (|idx|, d) matrix of the weighted per-sample gradients w_i grad L_i(W) (PINN: boundary rows first)."""
        rows = []
        for fn, args, term_size in self._groups(idx):
            if args[0].shape[0]:
                def one_sample(W, *sample, batched=fn):
                    return batched(W, *(a.unsqueeze(0) for a in sample))[0]
                per_sample = vmap(grad(one_sample), in_dims=(None,) + (0,) * len(args))(W, *args)
                rows.append(self._weight(term_size) * per_sample)
        self.gradient_evaluations += int(idx.shape[0])
        return torch.cat(rows)

    def all_indices(self) -> torch.Tensor:
        return torch.arange(self.n_samples, device=self.device)

    def _tensor(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array), dtype=DTYPE, device=self.device)


class Classification(NetworkProblem):
    """[2,3,3,2] on the 10 points of Higham & Higham (2019): 5 of class A ([1,0]), 5 of class B ([0,1])."""

    name = "classification"
    layers = [2, 3, 3, 2]
    default_reduction = "sum"

    def __init__(self, reduction=None, device="cpu"):
        super().__init__(reduction, device)
        x1 = [0.1, 0.3, 0.1, 0.6, 0.4, 0.6, 0.5, 0.9, 0.4, 0.7]
        x2 = [0.1, 0.4, 0.5, 0.9, 0.2, 0.3, 0.6, 0.2, 0.4, 0.6]
        self.inputs = self._tensor(np.column_stack([x1, x2]))
        self.targets = self._tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 5)

    def initial_weights(self, seed: int) -> torch.Tensor:
        """Higham & Higham's initialisation: every weight and bias 0.5 * N(0, 1)."""
        gen = torch.Generator().manual_seed(seed)
        return (0.5 * torch.randn(self.n_params, generator=gen, dtype=DTYPE)).to(self.device)


class Approximation(NetworkProblem):
    """[1,16,16,1] fitting f(x) = exp(-x) sin(x) on 30 equispaced points of [0, 10]."""

    name = "approximation"
    layers = [1, 16, 16, 1]
    default_reduction = "sum"

    def __init__(self, reduction=None, device="cpu"):
        super().__init__(reduction, device)
        x = np.linspace(0.0, 10.0, 30)
        self.inputs = self._tensor(x[:, None])
        self.targets = self._tensor((np.exp(-x) * np.sin(x))[:, None])


class PoissonPINN(NetworkProblem):
    """[2,50,50,50,50,1] PINN for -Lap u = 1 on the L-shape (-1,1)^2 minus [0,1)^2, u = 0 on the boundary.

    The paper takes this problem from DeepXDE (its ref. [4]), and so do we: tanh hidden layers,
    a linear output, Glorot-uniform weights with zero biases, and DeepXDE's loss
    mean_boundary u^2 + mean_interior (Lap u + 1)^2 (reduction ``term-mean``); with these the
    GD column of the paper's Table 3 is reproduced (docs/paraflow.md).
    Samples 0..n_boundary-1 are boundary points (P_i = trace: L_i = u^2/2), the rest interior
    points (P_i = Laplacian: L_i = (Lap u + 1)^2/2). Boundary points are equispaced along the
    perimeter (length 8); interior points are uniform random (fixed data seed 0, independent of
    the initialisation seed), rejected outside the L-shape.
    """

    name = "pinn"
    layers = [2, 50, 50, 50, 50, 1]
    default_reduction = "term-mean"
    activation = staticmethod(torch.tanh)
    linear_output = True
    n_boundary, n_interior = 120, 1320

    def __init__(self, reduction=None, device="cpu"):
        super().__init__(reduction, device)
        self.inputs = self._tensor(np.vstack([self.boundary_points(self.n_boundary),
                                              self.interior_points(self.n_interior)]))
        self.targets = torch.zeros(self.n_samples, 1, dtype=DTYPE, device=self.device)

    @staticmethod
    def boundary_points(count: int) -> np.ndarray:
        corners = np.array([[-1, -1], [1, -1], [1, 0], [0, 0], [0, 1], [-1, 1], [-1, -1]], dtype=float)
        lengths = np.linalg.norm(np.diff(corners, axis=0), axis=1)
        s = np.arange(count) * lengths.sum() / count
        edge = np.searchsorted(np.cumsum(lengths), s, side="right")
        offset = s - np.concatenate([[0.0], np.cumsum(lengths)])[edge]
        direction = np.diff(corners, axis=0)[edge] / lengths[edge, None]
        return corners[edge] + offset[:, None] * direction

    @staticmethod
    def interior_points(count: int, data_seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(data_seed)
        points = np.empty((0, 2))
        while points.shape[0] < count:
            p = rng.uniform(-1.0, 1.0, size=(2 * count, 2))
            inside = ~((p[:, 0] >= 0) & (p[:, 1] >= 0)) & (np.abs(p) < 1).all(axis=1)
            points = np.vstack([points, p[inside]])
        return points[:count]

    @staticmethod
    def layer_weights(n_out: int, n_in: int, gen: torch.Generator) -> torch.Tensor:
        """Glorot-uniform: U(-a, a), a = sqrt(6/(n_in+n_out)), flattened."""
        bound = math.sqrt(6.0 / (n_in + n_out))
        return (2 * torch.rand(n_out * n_in, generator=gen, dtype=DTYPE) - 1) * bound

    def u(self, W, x):
        return self.network(W, x)[0]

    def boundary_losses(self, W, x):
        """u^2/2 at a batch of boundary points."""
        return 0.5 * self.network(W, x)[:, 0] ** 2

    def interior_loss(self, W, x):
        """(Lap u + 1)^2/2 at ONE interior point."""
        laplacian = torch.trace(hessian(self.u, argnums=1)(W, x))
        return 0.5 * (laplacian + 1.0) ** 2

    def interior_losses(self, W, x):
        """(Lap u + 1)^2/2 at a batch of interior points: the Hessian in x, vmapped over the points."""
        return vmap(self.interior_loss, in_dims=(None, 0))(W, x)

    def _groups(self, idx):
        boundary = idx[idx < self.n_boundary]
        interior = idx[idx >= self.n_boundary]
        return [(self.boundary_losses, (self.inputs[boundary],), self.n_boundary),
                (self.interior_losses, (self.inputs[interior],), self.n_interior)]


PROBLEMS = {cls.name: cls for cls in (Classification, Approximation, PoissonPINN)}


def make_problem(name: str, reduction: str | None = None, device="cpu") -> NetworkProblem:
    if name not in PROBLEMS:
        raise ValueError(f"unknown problem {name!r}; choose one of: {', '.join(sorted(PROBLEMS))}")
    return PROBLEMS[name](reduction, device)


class ModelNetworkProblem(NetworkProblem):
    """A user's torch model on a data set (``--data``) as a ParaFlow problem.

    L_i = cross-entropy of the logits model(x_i) for integer labels, ½‖y_i − model(x_i)‖² for
    float targets (n, k); default reduction ``mean``. ``make(seed)`` builds the model (float64)
    under torch.manual_seed(seed): the initial weights are its parameters, flattened in
    ``named_parameters`` order. Built by :func:`paraflow_hpc.problems.contract.load_problem`.
    """

    default_reduction = "mean"

    def __init__(self, make, data, name: str, reduction=None, device="cpu"):
        super().__init__(reduction, device)
        self.name, self.make = name, make
        self.module = make(0).to(self.device)
        self.param_names = [n for n, _ in self.module.named_parameters()]
        self.shapes = [p.shape for _, p in self.module.named_parameters()]
        self.sizes = [p.numel() for _, p in self.module.named_parameters()]
        self.n_params = sum(self.sizes)
        self.classify = data.n_classes > 0
        self.inputs = self._tensor(data.x_train)
        self.targets = torch.as_tensor(data.y_train, dtype=torch.int64 if self.classify else DTYPE,
                                       device=self.device)

    def network(self, W, x):
        params = {name: part.view(shape) for name, part, shape in
                  zip(self.param_names, torch.split(W, self.sizes), self.shapes)}
        return torch.func.functional_call(self.module, params, (x,))

    def initial_weights(self, seed: int) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.make(seed).parameters()]).to(self.device)

    def sample_losses(self, W, x, y):
        out = self.network(W, x)
        if self.classify:
            return torch.nn.functional.cross_entropy(out, y, reduction="none")
        r = y - out
        return 0.5 * (r * r).sum(-1)
