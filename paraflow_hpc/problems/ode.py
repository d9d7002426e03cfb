"""Initial value problems y' = f(t, y), y(t0) = y0, as small classes users can copy.

A problem carries its right-hand side, its initial value and default time span;
``exact(t)`` exists where a closed form does. Your own needs only ``t0, tf, y0(), f(t, y)``
(:class:`paraflow_hpc.problems.contract.ODE`): ``--problem path/to/file.py:Class``; the built-ins
are registered in :mod:`paraflow_hpc.problems.builtin`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp


class ODEProblem:
    name = "ode"
    t0 = 0.0
    tf = 1.0

    def __init__(self):
        self.nfev = 0

    def y0(self) -> np.ndarray:
        raise NotImplementedError

    def rhs(self, t: float, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def f(self, t: float, y: np.ndarray) -> np.ndarray:
        """Counted evaluation of the right-hand side."""
        self.nfev += 1
        return self.rhs(t, y)

    exact = None


class Dahlquist(ODEProblem):
    """y' = λ y with complex λ: the test equation of every convergence theory."""

    name = "dahlquist"
    tf = 5.0

    def __init__(self, lam: complex = -1.0 + 2.0j, y_init: complex = 1.0 + 0.0j):
        super().__init__()
        self.lam = complex(lam)
        self.y_init = complex(y_init)

    def y0(self):
        return np.array([self.y_init], dtype=complex)

    def rhs(self, t, y):
        return self.lam * y

    def exact(self, t):
        return self.y0() * np.exp(self.lam * (t - self.t0))


class Lorenz(ODEProblem):
    name = "lorenz"
    tf = 10.0

    def __init__(self, sigma=10.0, rho=28.0, beta=8.0 / 3.0, u0=(5.0, -5.0, 20.0)):
        super().__init__()
        self.sigma, self.rho, self.beta = sigma, rho, beta
        self.u0 = np.array(u0, dtype=float)

    def y0(self):
        return self.u0.copy()

    def rhs(self, t, y):
        x, v, z = y
        return np.array([self.sigma * (v - x), x * (self.rho - z) - v, x * v - self.beta * z])


class Brusselator(ODEProblem):
    """x' = A + x²y − (B+1)x, y' = Bx − x²y; a limit cycle for B > 1 + A²."""

    name = "brusselator"
    tf = 20.0

    def __init__(self, a=1.0, b=3.0, u0=(1.5, 3.0)):
        super().__init__()
        self.a, self.b = a, b
        self.u0 = np.array(u0, dtype=float)

    def y0(self):
        return self.u0.copy()

    def rhs(self, t, y):
        x, v = y
        return np.array([self.a + x * x * v - (self.b + 1.0) * x, self.b * x - x * x * v])


class Heat1D(ODEProblem):
    """u_t = ν u_xx on (0, 1), u = 0 at both ends, by second-order finite differences."""

    name = "heat"
    tf = 0.1

    def __init__(self, n_points=31, nu=1.0):
        super().__init__()
        self.x = np.linspace(0.0, 1.0, n_points + 2)[1:-1]
        h = 1.0 / (n_points + 1)
        self.laplacian = (nu / h**2) * sp.diags([1.0, -2.0, 1.0], [-1, 0, 1], shape=(n_points, n_points),
                                               format="csr")
        self.nu = nu
        self.eigenvalue = -4.0 * nu / h**2 * np.sin(np.pi * h / 2.0) ** 2

    def y0(self):
        return np.sin(np.pi * self.x)

    def rhs(self, t, y):
        return self.laplacian @ y

    def exact(self, t):
        """Exact solution of the semi-discrete system (sin(πx) is an eigenvector of the stencil)."""
        return np.exp(self.eigenvalue * (t - self.t0)) * self.y0()


class QuadraticGradientFlow(ODEProblem):
    """W' = −∇L(W) for L(W) = ½ WᵀAW − bᵀW with SPD A: the bridge from Parareal to ParaFlow."""

    name = "quadratic"
    tf = 2.0

    def __init__(self, dim=20, condition=100.0, seed=0):
        super().__init__()
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        eigs = np.geomspace(1.0, condition, dim)
        self.A = (q * eigs) @ q.T
        self.b = rng.standard_normal(dim)
        self.minimiser = np.linalg.solve(self.A, self.b)

    def y0(self):
        return np.zeros_like(self.b)

    def loss(self, w):
        return 0.5 * w @ self.A @ w - self.b @ w

    def rhs(self, t, y):
        return self.b - self.A @ y


ODE_PROBLEMS = {cls.name: cls for cls in (Dahlquist, Lorenz, Brusselator, Heat1D, QuadraticGradientFlow)}
