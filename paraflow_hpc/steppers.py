"""Propagators of the gradient flow dW/dt = -grad L(W) for ParaFlow(S), and the budget.

F (fine) = N_F mini-batch steps of size eta_F (plain SGD, SGD with momentum, or Adam);
G (coarse) = k full-batch GD steps of size N_F * eta_F / k, so F and G cover the same
flow time Delta T = N_F * eta_F (k = 1 is the paper's G).

Mini-batches are pure functions of (seed, step index): the batch of SGD step t is drawn
by ``np.random.default_rng([seed, t])`` and sorted, so a run can be resumed, split over
ranks, or repeated, and always sees the same batches. A full batch (d_B = N) is
``arange(N)``, so full-batch SGD is GD bit for bit. F's optimiser state (momentum, Adam
moments) starts at zero on every application: F is a map W -> W, as Parareal needs.

Every per-sample gradient is counted in ``Budget`` (the paper's cost unit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

FINE_OPTIMIZERS = ("sgd", "momentum", "adam")


class BudgetExhausted(Exception):
    """Raised by :meth:`Budget.charge` when a computation would exceed the budget."""


@dataclass
class Budget:
    """Per-sample gradient evaluations: ``used`` never exceeds ``limit`` (0 = unlimited)."""

    limit: int = 0
    used: int = 0

    def affordable(self, cost: int) -> bool:
        return self.limit == 0 or self.used + cost <= self.limit

    def charge(self, cost: int) -> None:
        if not self.affordable(cost):
            raise BudgetExhausted(f"{cost} more gradient evaluations exceed the budget {self.limit}")
        self.used += cost


class BatchSchedule:
    """Batch of step t: d_B indices of N without replacement, a pure function of (seed, t)."""

    def __init__(self, n_samples: int, batch_size: int, seed: int, device="cpu"):
        if not 1 <= batch_size <= n_samples:
            raise ValueError(f"batch size {batch_size} must be in [1, {n_samples}]")
        self.n, self.size, self.seed, self.device = n_samples, batch_size, seed, device

    def __call__(self, t: int) -> torch.Tensor:
        if self.size == self.n:
            return torch.arange(self.n, device=self.device)
        chosen = np.random.default_rng([self.seed, t]).choice(self.n, self.size, replace=False)
        return torch.as_tensor(np.sort(chosen), device=self.device)


class Fine:
    """F: ``steps`` mini-batch steps of size ``eta`` from W; step j of window k uses batch (seed, k*steps+j)."""

    def __init__(self, problem, schedule: BatchSchedule, steps: int, eta: float, optimizer: str = "sgd",
                 momentum: float = 0.9, betas=(0.9, 0.999), eps: float = 1e-8):
        if optimizer not in FINE_OPTIMIZERS:
            raise ValueError(f"fine optimizer {optimizer!r}; choose one of: {', '.join(FINE_OPTIMIZERS)}")
        self.problem, self.schedule, self.steps, self.eta = problem, schedule, steps, eta
        self.optimizer, self.momentum, self.betas, self.eps = optimizer, momentum, betas, eps

    def cost(self) -> int:
        return self.steps * self.schedule.size

    def __call__(self, W: torch.Tensor, window: int, budget: Budget, steps: int | None = None) -> torch.Tensor:
        """F(W) on window ``window``'s batches; ``steps`` < N_F truncates it (the end of a budget)."""
        steps = self.steps if steps is None else steps
        budget.charge(steps * self.schedule.size)
        state = self.fresh_state(W)
        for j in range(steps):
            W, _ = self.step(W, window * self.steps + j, j, state)
        return W

    def fresh_state(self, W: torch.Tensor) -> dict:
        return {"velocity": torch.zeros_like(W), "second": torch.zeros_like(W)}

    def step(self, W: torch.Tensor, t: int, j: int, state: dict) -> tuple[torch.Tensor, float]:
        """One optimiser step on batch t; returns the new W and the batch loss at the old W.

        ``j`` counts steps since ``state`` was fresh (Adam's bias correction).
        """
        loss, g = self.problem.value_and_grad(W, self.schedule(t))
        if self.optimizer == "sgd":
            return W - self.eta * g, loss
        if self.optimizer == "momentum":
            state["velocity"] = self.momentum * state["velocity"] + g
            return W - self.eta * state["velocity"], loss
        b1, b2 = self.betas
        state["velocity"] = b1 * state["velocity"] + (1 - b1) * g
        state["second"] = b2 * state["second"] + (1 - b2) * g * g
        m_hat = state["velocity"] / (1 - b1 ** (j + 1))
        v_hat = state["second"] / (1 - b2 ** (j + 1))
        return W - self.eta * m_hat / (v_hat.sqrt() + self.eps), loss

    def describe(self) -> str:
        return f"{self.steps} x {self.optimizer}(eta={self.eta:g}, batch {self.schedule.size})"


@dataclass
class Point:
    """A point W with its full-batch loss and gradient (one evaluation costs N gradients)."""

    W: torch.Tensor
    loss: float
    grad: torch.Tensor


def evaluate(problem, W: torch.Tensor, budget: Budget) -> Point:
    budget.charge(problem.n_samples)
    loss, g = problem.value_and_grad(W)
    return Point(W, loss, g)


class Coarse:
    """G: ``steps`` full-batch GD steps of size eta_G / steps from a point whose gradient is known."""

    def __init__(self, problem, eta: float, steps: int = 1):
        if steps < 1:
            raise ValueError(f"coarse steps = {steps}: must be >= 1")
        self.problem, self.eta, self.steps = problem, eta, steps

    def extra_cost(self) -> int:
        """Gradients beyond the one at the starting point (which the caller already has)."""
        return (self.steps - 1) * self.problem.n_samples

    def __call__(self, start: Point, budget: Budget) -> torch.Tensor:
        budget.charge(self.extra_cost())
        h = self.eta / self.steps
        W = start.W - h * start.grad
        for _ in range(self.steps - 1):
            _, g = self.problem.value_and_grad(W)
            W = W - h * g
        return W

    def describe(self) -> str:
        return f"{self.steps} x GD(eta={self.eta / self.steps:g}, full batch)"


def correction(fine: torch.Tensor, coarse_old: torch.Tensor) -> torch.Tensor:
    """F(W_n^old) - G(W_n^old) of (3), formed once per subinterval; the update is G(W_n^new) + correction.

    ParaFlowS and ParaFlow both use this, so their iterates round identically.
    """
    return fine - coarse_old
