"""What turns an object that meets a contract's essentials into the full problem a method runs.

* ``ode``: an object with ``t0, tf, y0, f`` becomes an :class:`~paraflow_hpc.problems.ode.ODEProblem`
  (counted ``f``, ``y0()`` a fresh copy).
* ``ivp``: one with ``t0, tf, y0, f`` (torch, batched) becomes an :class:`~paraflow_hpc.problems.ivp.IVP`
  (``f_and_jacobian`` by torch.func, ``numpy_f`` for scipy).
* ``network`` / ``training``: a ``torch.nn.Module`` and a data set (``--data``) become a ParaFlow
  or a PASO problem. Integer labels: the loss
  of a sample is the cross-entropy of the model's logits; float targets (n, k): half the squared
  error (:class:`~paraflow_hpc.problems.networks.ModelNetworkProblem`,
  :class:`~paraflow_hpc.problems.models.ModelTrainingProblem`). The model is rebuilt from its
  factory under ``torch.manual_seed(seed)`` for the initial weights, a pure function of the seed.

Objects already of the base classes pass unchanged; this module is :func:`load_problem`'s
last step for built-ins and users' problems alike.
"""
from __future__ import annotations

import numpy as np

from ..config import ConfigError
from .ode import ODEProblem


class ODEAdapter(ODEProblem):
    """A user's ``t0, tf, y0, f`` as an ODEProblem."""

    def __init__(self, problem, name: str):
        super().__init__()
        self.problem, self.name = problem, str(getattr(problem, "name", name))
        self.t0, self.tf = float(problem.t0), float(problem.tf)
        self.exact = getattr(problem, "exact", None)

    def y0(self):
        y0 = self.problem.y0
        return np.array(y0() if callable(y0) else y0)

    def rhs(self, t, y):
        return self.problem.f(t, y)


def _ivp_adapter(problem, name: str):
    from .ivp import IVP

    class IVPAdapter(IVP):
        """A user's ``t0, tf, y0, f`` (torch, batched) as an IVP."""

        def __init__(self):
            self.problem, self.name = problem, str(getattr(problem, "name", name))
            self.t0, self.tf = float(problem.t0), float(problem.tf)
            y0 = problem.y0
            self.y0 = np.array(y0() if callable(y0) else y0, dtype=float)
            self.exact = getattr(problem, "exact", None)

        def f(self, t, Y):
            return self.problem.f(t, Y)

    return IVPAdapter()


def _seeded_module(factory, args: dict, context: dict, ready):
    """make(seed): the model, float64, built under torch.manual_seed(seed) (or the given one)."""
    import copy

    import torch

    from .contract import call_factory

    def make(seed: int):
        if factory is None:
            return copy.deepcopy(ready).to(torch.float64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return call_factory("model", factory, args, context).to(torch.float64)

    return make


def complete(spec: str, kind: str, problem, data, factory, args: dict, context: dict):
    """The full problem of ``kind`` for the object ``problem`` (see the module docstring)."""
    name = spec.rsplit(":", 1)[-1]
    if kind == "ode":
        return problem if isinstance(problem, ODEProblem) else ODEAdapter(problem, name)
    if kind == "ivp":
        from .ivp import IVP

        return problem if isinstance(problem, IVP) else _ivp_adapter(problem, name)
    if kind not in ("network", "training"):
        return problem
    import torch

    is_model = isinstance(problem, torch.nn.Module)
    if is_model and data is None:
        raise ConfigError(f"problem {spec!r} is a torch model: give the data to train it on with "
                          "--data FILE (HDF5, NPZ or CSV; layout in docs/getting_started.md)")
    if data is not None and not is_model:
        raise ConfigError(f"problem {spec!r} brings its own data ({type(problem).__name__}); --data FILE needs a "
                          "torch model: --problem path/to/model.py:Net (an nn.Module class or a function "
                          "returning one)")
    if not is_model:
        return problem
    from .contract import CONTEXT

    make = _seeded_module(factory, args, {k: v for k, v in context.items() if k in CONTEXT[kind]}, problem)
    if kind == "network":
        from .networks import ModelNetworkProblem

        return ModelNetworkProblem(make, data, name, context.get("reduction"), context.get("device", "cpu"))
    from .models import ModelTrainingProblem

    return ModelTrainingProblem(make, data, name, int(context.get("seed", 0)), int(context.get("batch", 32)),
                                context.get("device", "cpu"))
