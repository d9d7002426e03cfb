"""A user's ODE: the damped pendulum theta'' = -(g/l) sin(theta) - c theta', as y = (theta, omega).

``Pendulum`` is the Parareal form (NumPy, one state per call); ``PendulumBatched`` the PAN form
(torch, a batch of states per call). Both take their parameters as constructor arguments, so
``--problem-args '{"damping": 0.5, "theta0": 1.0}'`` (or the TOML [problem] table) sets them.

    mpirun -n 2 paraflow-hpc run parareal --problem docs/examples/pendulum.py:Pendulum --intervals 16
    mpirun -n 2 paraflow-hpc run pan --problem docs/examples/pendulum.py:PendulumBatched --n-coeffs 20
"""
import numpy as np
import torch


class Pendulum:
    name = "pendulum"

    def __init__(self, g=9.81, length=1.0, damping=0.1, theta0=2.0, t0=0.0, tf=10.0):
        self.g, self.length, self.damping, self.theta0 = g, length, damping, theta0
        self.t0, self.tf = t0, tf

    def y0(self):
        return np.array([self.theta0, 0.0])

    def f(self, t, y):
        theta, omega = y
        return np.array([omega, -self.g / self.length * np.sin(theta) - self.damping * omega])


class PendulumBatched(Pendulum):

    def f(self, t, Y):
        """t: (m,), Y: (m, 2) float64 tensors -> (m, 2)."""
        theta, omega = Y[:, 0], Y[:, 1]
        return torch.stack([omega, -self.g / self.length * torch.sin(theta) - self.damping * omega], dim=1)
