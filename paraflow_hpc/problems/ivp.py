"""Initial value problems with a batched, torch-based right-hand side, for PAN.

``f(t, Y)`` takes times ``t`` of shape (m,) and states ``Y`` of shape (m, L) and returns
(m, L): one call evaluates the vector field at many points at once, which is where PAN's
parallelism lies. Written in torch so that ``torch.func`` gives the Jacobian of f at all
points in one batched call (:meth:`IVP.f_and_jacobian`). ``numpy_f`` is the single-point
form scipy's solvers call. Every problem computes in float64.
"""
from __future__ import annotations

import numpy as np
import torch

DTYPE = torch.float64


class IVP:
    name = "ivp"
    t0 = 0.0
    tf = 1.0
    subinterval = 0.0  # length of PAN's consecutive subintervals (0: one interval)

    def __init__(self):
        self.y0 = np.zeros(1)

    @property
    def dim(self) -> int:
        return self.y0.shape[0]

    def f(self, t: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def f_and_jacobian(self, t: torch.Tensor, Y: torch.Tensor):
        """f at every point and ∂f/∂y there, shape (m, L) and (m, L, L), in one batched call."""
        def single(ti, yi):
            out = self.f(ti[None], yi[None])[0]
            return out, out

        jac, value = torch.func.vmap(torch.func.jacrev(single, argnums=1, has_aux=True))(t, Y)
        return value, jac

    def numpy_f(self, t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.f(torch.tensor([t], dtype=DTYPE), torch.as_tensor(y, dtype=DTYPE)[None])[0].numpy()

    exact = None


class Spiral(IVP):
    """dy/dt = tanh(A y) from [2, 1] on [0, 10] (paper Table 1, which prints A = [[a, 1], [-1, -a]]
    without a value for a).

    A = [[-0.4, 1], [-1, -0.4]] reproduces the paper's scipy rows exactly (RK45 at tol 1e-6: 212
    evaluations, error 4.14e-7), so both diagonal entries are -0.4: a stable spiral. The printed
    form with a = 0.4, [[0.4, 1], [-1, -0.4]], does not (RK45: 158 evaluations, error 2.0e-6).
    """

    name = "spiral"
    tf = 10.0

    def __init__(self, matrix=((-0.4, 1.0), (-1.0, -0.4)), y0=(2.0, 1.0)):
        self.A = torch.tensor(matrix, dtype=DTYPE)
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        return torch.tanh(Y @ self.A.T)


class Lorenz(IVP):
    """σ = 10, ρ = 28, β = 8/3 on [0, 15] from [2, 1, 1] (paper Table 2: subintervals of 0.3)."""

    name = "lorenz"
    tf = 15.0
    subinterval = 0.3

    def __init__(self, sigma=10.0, rho=28.0, beta=8.0 / 3.0, y0=(2.0, 1.0, 1.0)):
        self.sigma, self.rho, self.beta = sigma, rho, beta
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        x, y, z = Y[:, 0], Y[:, 1], Y[:, 2]
        return torch.stack([self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z], dim=1)


class Dahlquist(IVP):
    """y' = λ y for complex λ, as a real 2-vector (Re, Im): the smooth problem with a closed form."""

    name = "dahlquist"
    tf = 2.0

    def __init__(self, lam: complex = -1.0 + 2.0j, y0=(1.0, 0.0)):
        self.lam = complex(lam)
        self.M = torch.tensor([[self.lam.real, -self.lam.imag], [self.lam.imag, self.lam.real]], dtype=DTYPE)
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        return Y @ self.M.T

    def exact(self, t: float) -> np.ndarray:
        z = complex(*self.y0) * np.exp(self.lam * (t - self.t0))
        return np.array([z.real, z.imag])


class VanDerPol(IVP):
    """x'' = μ (1 - x²) x' - x as a first-order system, from [2, 0]; stiff for large μ."""

    name = "vdp"
    tf = 10.0
    subinterval = 1.0

    def __init__(self, mu: float = 1.0, y0=(2.0, 0.0)):
        self.mu = mu
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        x, v = Y[:, 0], Y[:, 1]
        return torch.stack([v, self.mu * (1.0 - x * x) * v - x], dim=1)


class StiffVanDerPol(VanDerPol):
    """μ = 100 on [0, 20]: stiff (Jacobian eigenvalue ≈ −μ(x² − 1) ≈ −300 at the start) while the
    solution creeps along the slow branch (the first fast jump comes near t ≈ 80); PAN's Picard
    phase needs short subintervals here."""

    name = "vdp-stiff"
    tf = 20.0
    subinterval = 0.05

    def __init__(self):
        super().__init__(mu=100.0)


class NeuralODE(IVP):
    """dy/dt = W2 tanh(W1 y + b1) + b2: a small seeded MLP as the vector field (PAN as the
    forward solver of a neural ODE)."""

    name = "neural"
    tf = 5.0

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.W1 = torch.randn(hidden, dim, generator=gen, dtype=DTYPE) / np.sqrt(dim)
        self.b1 = 0.1 * torch.randn(hidden, generator=gen, dtype=DTYPE)
        self.W2 = torch.randn(dim, hidden, generator=gen, dtype=DTYPE) / np.sqrt(hidden)
        self.b2 = 0.1 * torch.randn(dim, generator=gen, dtype=DTYPE)
        self.y0 = np.ones(dim)

    def f(self, t, Y):
        return torch.tanh(Y @ self.W1.T + self.b1) @ self.W2.T + self.b2


IVP_PROBLEMS = {cls.name: cls for cls in (Spiral, Lorenz, Dahlquist, VanDerPol, StiffVanDerPol, NeuralODE)}
