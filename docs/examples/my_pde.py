"""A PDE of your own for space-time Parareal (docs/spacetime.md, 'Bring your own PETSc problem')::

    mpirun -n 4 paraflow-hpc run spacetime --space-ranks 2 --problem docs/examples/my_pde.py:MyPDE \
           --problem-args nu=0.5 --nx 31 --intervals 8
"""
import numpy as np

from paraflow_hpc.problems.pde import DMDAProblem


class MyPDE(DMDAProblem):
    """u_t = ν Δu on the unit square, u = 0 on its boundary, u(0) = sin(πx) sin(πy).

    The sine mode is an eigenvector of the 5-point Laplacian, so the grid's solution decays
    exactly as exp(−ν λ_h t): ``exact_values`` gives it, and ``exact_error`` in the result is
    the time integrator's error alone.
    """

    name, tf, nu = "my-pde", 0.1, 1.0   # float class attributes are parameters: --problem-args nu=0.5,tf=0.2

    def initial_values(self):
        # over this rank's block of the grid: self.X, self.Y have its shape (ye - ys, xe - xs)
        return np.sin(np.pi * self.X) * np.sin(np.pi * self.Y)

    def exact_values(self, t):
        rate = sum(4.0 / h**2 * np.sin(np.pi * h / 2.0) ** 2 for h in (self.hx, self.hy))
        return np.exp(-self.nu * rate * (t - self.t0)) * self.initial_values()
