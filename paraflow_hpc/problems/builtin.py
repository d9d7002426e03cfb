"""The built-in problems, registered exactly as an installed package registers its own.

An entry point in the group ``paraflow_hpc.problems`` names a function like :func:`register`
below; it receives ``add(kind, name, factory)`` (:func:`paraflow_hpc.problems.contract.register`).
A factory given as ``"module:attr"`` is imported only when a run asks for it, so naming the
problems costs no torch import. Constructor arguments (``--problem-args``) go to the factory:
e.g. ``brusselator`` takes a, b, u0; ``lorenz`` sigma, rho, beta, u0; the PAN problems their
y0 and coefficients; ``ackley`` dim; the data sets test_fraction; the PDEs (``pde``: classes,
constructed by space-time Parareal on its grid) their float class attributes (``nu``, ``tf``,
``allen-cahn``'s ``eps``).
"""
from __future__ import annotations

ODE = ("dahlquist:Dahlquist", "lorenz:Lorenz", "brusselator:Brusselator", "heat:Heat1D",
       "quadratic:QuadraticGradientFlow")
IVP = ("spiral:Spiral", "lorenz:Lorenz", "dahlquist:Dahlquist", "vdp:VanDerPol", "vdp-stiff:StiffVanDerPol",
       "neural:NeuralODE", "vdp-mild:VanDerPolMild", "pendulum:Pendulum", "brusselator:Brusselator",
       "neural-big:NeuralODEBig")
NETWORK = ("classification:Classification", "approximation:Approximation", "pinn:PoissonPINN")
DATASETS = ("ellipses", "swissroll", "digits")


def _digits(kind: str):
    def factory(seed: int, batch: int, device="cpu"):
        from .models import DigitsProblem

        return DigitsProblem(kind, seed, batch, device)

    factory.__name__ = kind
    return factory


def lm(seed: int, batch: int, device="cpu"):
    """The character-level decoder LM on Python's standard-library sources."""
    from .models import CharLMProblem

    return CharLMProblem(seed, batch, device)


def ackley(seed: int, device="cpu", dim: int = 10_000):
    """Ackley's function in ``dim`` dimensions (no data)."""
    from .models import AckleyProblem

    return AckleyProblem(seed, dim=int(dim), device=device)


def register(add) -> None:
    for entry in ODE:
        name, cls = entry.split(":")
        add("ode", name, f"paraflow_hpc.problems.ode:{cls}")
    for entry in IVP:
        name, cls = entry.split(":")
        add("ivp", name, f"paraflow_hpc.problems.ivp:{cls}")
    for entry in NETWORK:
        name, cls = entry.split(":")
        add("network", name, f"paraflow_hpc.problems.networks:{cls}")
    for kind in ("logreg", "mlp", "cnn"):
        add("training", kind, _digits(kind))
    add("training", "lm", lm)
    add("training", "ackley", ackley)
    for name in DATASETS:
        add("dataset", name, f"paraflow_hpc.problems.datasets:{name}")
    from .pde import PDE_PROBLEMS  # NumPy only: petsc4py is imported when a problem is constructed

    for name, cls in PDE_PROBLEMS.items():
        add("pde", name, cls)


def names(kind: str) -> list[str]:
    """The built-in names of ``kind`` (without installed packages' problems: no imports)."""
    found = []
    register(lambda k, name, factory: found.append(name) if k == kind else None)
    return sorted(found)
