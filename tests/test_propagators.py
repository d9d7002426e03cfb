"""Propagators reach their order of accuracy; problems match their closed forms."""
import numpy as np
import pytest

from paraflow_hpc.problems.ode import ODE_PROBLEMS, Dahlquist, Heat1D
from paraflow_hpc.propagators import make_propagator


@pytest.mark.parametrize("kind, order", [("euler", 1), ("rk4", 4)])
def test_fixed_step_order(kind, order):
    problem = Dahlquist(lam=-1.0 + 2.0j)
    exact = problem.exact(1.0)
    errors = []
    steps = [20, 40, 80, 160]
    for n in steps:
        y = make_propagator(kind, problem.f, n)(problem.y0(), 0.0, 1.0)
        errors.append(np.max(np.abs(y - exact)))
    rates = np.log2(np.array(errors[:-1]) / np.array(errors[1:]))
    assert np.allclose(rates, order, atol=0.1), (kind, rates)


@pytest.mark.parametrize("kind", ["rk45", "dop853"])
def test_scipy_propagator_meets_tolerance(kind):
    problem = Dahlquist(lam=-0.5 + 3.0j)
    y = make_propagator(kind, problem.f, rtol=1e-10, atol=1e-12)(problem.y0(), 0.0, 2.0)
    assert np.max(np.abs(y - problem.exact(2.0))) < 1e-8


def test_heat_semidiscrete_exact_solution():
    problem = Heat1D(n_points=31)
    y = make_propagator("rk4", problem.f, 400)(problem.y0(), 0.0, 0.05)
    assert np.max(np.abs(y - problem.exact(0.05))) < 1e-9


def test_fixed_step_rejects_nonpositive_steps():
    with pytest.raises(ValueError, match="steps = 0"):
        make_propagator("rk4", Dahlquist().f, 0)


@pytest.mark.parametrize("name", sorted(ODE_PROBLEMS))
def test_problem_rhs_shape(name):
    problem = ODE_PROBLEMS[name]()
    y0 = problem.y0()
    assert problem.f(problem.t0, y0).shape == y0.shape
    assert problem.nfev == 1
