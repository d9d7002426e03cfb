"""Initial value problems with a batched, torch-based right-hand side, for PAN.

``f(t, Y)`` takes times ``t`` of shape (m,) and states ``Y`` of shape (m, L) and returns
(m, L): one call evaluates the vector field at many points at once, which is where PAN's
parallelism lies. Row m of the result depends on row m of the input only. Written in torch so
that autograd gives the Jacobian of f at all points in one batched call
(:meth:`IVP.f_and_jacobian`). ``numpy_f`` is the single-point form through torch; ``scipy_f``
is the same field written in plain numpy, as a scipy user writes it (the fair baseline).
Every problem computes in float64.
"""
from __future__ import annotations

import numpy as np
import torch

DTYPE = torch.float64


class IVP:
    name = "ivp"
    t0 = 0.0
    tf = 1.0

    def __init__(self):
        self.y0 = np.zeros(1)

    @property
    def dim(self) -> int:
        return self.y0.shape[0]

    def f(self, t: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def f_and_jacobian(self, t: torch.Tensor, Y: torch.Tensor):
        """f at every point and ∂f/∂y there, shape (m, L) and (m, L, L): one batched forward pass
        and L backward passes (rows are independent, so the gradient of column i's sum is row i
        of every point's Jacobian)."""
        return batched_jacobian(self.f, t, Y)

    def numpy_f(self, t: float, y: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.f(torch.tensor([t], dtype=DTYPE), torch.as_tensor(y, dtype=DTYPE)[None])[0].numpy()

    def scipy_f(self, t: float, y: np.ndarray) -> np.ndarray:
        """The same field in plain numpy for one point (what a scipy user writes). The built-ins
        override it; a problem without a numpy form falls back to :meth:`numpy_f` (through torch),
        so the DOP853 reference of ``run pan`` works for every problem, only slower."""
        return self.numpy_f(t, y)

    exact = None


def batched_jacobian(f, t: torch.Tensor, Y: torch.Tensor):
    """f(t, Y) (m, L) and its per-point Jacobians (m, L, L) for a row-wise batched torch f."""
    with torch.enable_grad():
        Y = Y.detach().requires_grad_(True)
        out = f(t, Y)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"f returned {type(out).__name__}: PAN differentiates f with torch autograd, "
                            "so f must compute in torch and return a torch.Tensor")
        L = out.shape[1]
        rows = [torch.autograd.grad(out[:, i].sum(), Y, retain_graph=i < L - 1)[0] for i in range(L)]
    return out.detach(), torch.stack(rows, dim=1)


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
        self.A_np = np.array(matrix, dtype=float)
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        return torch.tanh(Y @ self.A.T)

    def scipy_f(self, t, y):
        return np.tanh(self.A_np @ y)


class Lorenz(IVP):
    """σ = 10, ρ = 28, β = 8/3 on [0, 15] from [2, 1, 1] (paper Table 2: subintervals of 0.3)."""

    name = "lorenz"
    tf = 15.0

    def __init__(self, sigma=10.0, rho=28.0, beta=8.0 / 3.0, y0=(2.0, 1.0, 1.0)):
        self.sigma, self.rho, self.beta = sigma, rho, beta
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        x, y, z = Y[:, 0], Y[:, 1], Y[:, 2]
        return torch.stack([self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z], dim=1)

    def scipy_f(self, t, u):
        x, y, z = u
        return np.array([self.sigma * (y - x), x * (self.rho - z) - y, x * y - self.beta * z])


class Dahlquist(IVP):
    """y' = λ y for complex λ, as a real 2-vector (Re, Im): the smooth problem with a closed form."""

    name = "dahlquist"
    tf = 2.0

    def __init__(self, lam: complex = -1.0 + 2.0j, y0=(1.0, 0.0)):
        self.lam = complex(lam)
        self.M_np = np.array([[self.lam.real, -self.lam.imag], [self.lam.imag, self.lam.real]])
        self.M = torch.from_numpy(self.M_np.copy())
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        return Y @ self.M.T

    def scipy_f(self, t, y):
        return self.M_np @ y

    def exact(self, t: float) -> np.ndarray:
        z = complex(*self.y0) * np.exp(self.lam * (t - self.t0))
        return np.array([z.real, z.imag])


class VanDerPol(IVP):
    """x'' = μ (1 - x²) x' - x as a first-order system, from [2, 0]; stiff for large μ."""

    name = "vdp"
    tf = 10.0

    def __init__(self, mu: float = 1.0, y0=(2.0, 0.0)):
        self.mu = mu
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        x, v = Y[:, 0], Y[:, 1]
        return torch.stack([v, self.mu * (1.0 - x * x) * v - x], dim=1)

    def scipy_f(self, t, y):
        x, v = y
        return np.array([v, self.mu * (1.0 - x * x) * v - x])


class StiffVanDerPol(VanDerPol):
    """μ = 100 on [0, 20]: stiff (Jacobian eigenvalue ≈ −μ(x² − 1) ≈ −300 at the start) while the
    solution creeps along the slow branch (the first fast jump comes near t ≈ 80); PAN's Picard
    phase needs short subintervals here."""

    name = "vdp-stiff"
    tf = 20.0

    def __init__(self):
        super().__init__(mu=100.0)


class VanDerPolMild(VanDerPol):
    """μ = 10 on [0, 10]: mildly stiff (the explicit solvers' steps are stability-limited on the
    slow branches, Jacobian eigenvalue ≈ −30 at the start)."""

    name = "vdp-mild"
    tf = 10.0

    def __init__(self):
        super().__init__(mu=10.0)


class Pendulum(IVP):
    """θ'' = −sin θ from θ = 2.5 (close to the top: strongly nonlinear), on [0, 20]."""

    name = "pendulum"
    tf = 20.0

    def __init__(self, y0=(2.5, 0.0)):
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        return torch.stack([Y[:, 1], -torch.sin(Y[:, 0])], dim=1)

    def scipy_f(self, t, y):
        return np.array([y[1], -np.sin(y[0])])


class Brusselator(IVP):
    """x' = A + x²y − (B+1)x, y' = Bx − x²y with A = 1, B = 3 from [1.5, 3] on [0, 20]: a
    relaxation-free limit cycle (Hairer, Nørsett & Wanner I, §II.10)."""

    name = "brusselator"
    tf = 20.0

    def __init__(self, a=1.0, b=3.0, y0=(1.5, 3.0)):
        self.a, self.b = a, b
        self.y0 = np.array(y0, dtype=float)

    def f(self, t, Y):
        x, y = Y[:, 0], Y[:, 1]
        return torch.stack([self.a + x * x * y - (self.b + 1.0) * x, self.b * x - x * x * y], dim=1)

    def scipy_f(self, t, u):
        x, y = u
        return np.array([self.a + x * x * y - (self.b + 1.0) * x, self.b * x - x * x * y])


class NeuralODE(IVP):
    """dy/dt = W_out tanh(… tanh(W_1 y + b_1) …) + b_out: a seeded MLP as the vector field (PAN as
    the forward solver of a neural ODE). ``neural``: 2-16-2; ``neural-big``: 8-320-320-8,
    108,168 parameters, where one batched evaluation is expensive enough to spread over ranks."""

    name = "neural"
    tf = 5.0

    def __init__(self, dim: int = 2, hidden: int = 16, layers: int = 1, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        sizes = [dim] + [hidden] * layers + [dim]
        self.weights = [torch.randn(n_out, n_in, generator=gen, dtype=DTYPE) / np.sqrt(n_in)
                        for n_in, n_out in zip(sizes, sizes[1:])]
        self.biases = [0.1 * torch.randn(n_out, generator=gen, dtype=DTYPE) for n_out in sizes[1:]]
        self.y0 = np.ones(dim)

    @property
    def parameters(self) -> int:
        return sum(w.numel() + b.numel() for w, b in zip(self.weights, self.biases))

    def f(self, t, Y):
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            Y = torch.tanh(Y @ W.T + b)
        return Y @ self.weights[-1].T + self.biases[-1]

    def scipy_f(self, t, y):
        for W, b in zip(self.weights[:-1], self.biases[:-1]):
            y = np.tanh(W.numpy() @ y + b.numpy())
        return self.weights[-1].numpy() @ y + self.biases[-1].numpy()


class NeuralODEBig(NeuralODE):
    name = "neural-big"
    tf = 2.0

    def __init__(self):
        super().__init__(dim=8, hidden=320, layers=2)


IVP_PROBLEMS = {cls.name: cls for cls in (Spiral, Lorenz, Dahlquist, VanDerPol, VanDerPolMild, StiffVanDerPol,
                                           Pendulum, Brusselator, NeuralODE, NeuralODEBig)}
