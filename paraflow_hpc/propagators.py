"""Time propagators y(ta) -> y(tb) for Parareal's coarse G and fine F.

Each is deterministic: the same input gives bit-identical output, which is what
makes Parareal at k = N reproduce the serial fine solution exactly.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy.integrate import solve_ivp

RHS = Callable[[float, np.ndarray], np.ndarray]


class Propagator:
    name = "propagator"
    order = 0

    def __init__(self, f: RHS):
        self.f = f

    def __call__(self, y: np.ndarray, ta: float, tb: float) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class FixedStep(Propagator):
    """A one-step method applied ``steps`` times with h = (tb - ta) / steps."""

    def __init__(self, f: RHS, steps: int):
        super().__init__(f)
        if steps < 1:
            raise ValueError(f"steps = {steps}: a fixed-step propagator needs steps >= 1")
        self.steps = steps

    def step(self, t, y, h):
        raise NotImplementedError

    def __call__(self, y, ta, tb):
        h = (tb - ta) / self.steps
        for i in range(self.steps):
            y = self.step(ta + i * h, y, h)
        return y

    def describe(self):
        return f"{self.name}({self.steps} steps)"


class ExplicitEuler(FixedStep):
    name = "euler"
    order = 1

    def step(self, t, y, h):
        return y + h * self.f(t, y)


class RK4(FixedStep):
    name = "rk4"
    order = 4

    def step(self, t, y, h):
        k1 = self.f(t, y)
        k2 = self.f(t + h / 2, y + (h / 2) * k1)
        k3 = self.f(t + h / 2, y + (h / 2) * k2)
        k4 = self.f(t + h, y + h * k3)
        return y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


class ScipyIVP(Propagator):
    """Adaptive scipy.integrate.solve_ivp (RK45, DOP853, ...) as a fine propagator."""

    name = "scipy"

    def __init__(self, f: RHS, method: str = "DOP853", rtol: float = 1e-10, atol: float = 1e-12):
        super().__init__(f)
        self.method, self.rtol, self.atol = method, rtol, atol

    def __call__(self, y, ta, tb):
        sol = solve_ivp(self.f, (ta, tb), y, method=self.method, rtol=self.rtol, atol=self.atol)
        if not sol.success:
            raise RuntimeError(f"solve_ivp({self.method}) failed on [{ta}, {tb}]: {sol.message}")
        return sol.y[:, -1]

    def describe(self):
        return f"solve_ivp({self.method}, rtol={self.rtol:g}, atol={self.atol:g})"


PROPAGATORS = ("euler", "rk4", "rk45", "dop853")
SCIPY_METHODS = {"rk45": "RK45", "dop853": "DOP853"}


def make_propagator(kind: str, f: RHS, steps: int = 1, rtol: float = 1e-10, atol: float = 1e-12) -> Propagator:
    if kind == "euler":
        return ExplicitEuler(f, steps)
    if kind == "rk4":
        return RK4(f, steps)
    if kind in SCIPY_METHODS:
        return ScipyIVP(f, SCIPY_METHODS[kind], rtol, atol)
    raise ValueError(f"unknown propagator {kind!r}; choose one of: {', '.join(PROPAGATORS)}")
