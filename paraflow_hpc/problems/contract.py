"""One contract per method family, and one door through which every problem comes in.

A problem is named by a *spec*:

* a built-in name (``lorenz``, ``mlp``, ``swissroll``, ...),
* ``package.module:name`` (an importable module),
* ``path/to/file.py:name`` (a file, relative to the working directory),
* a name that an installed package registered through the entry-point group
  ``paraflow_hpc.problems``: the entry point is a function ``register(add)`` that calls
  ``add(kind, name, factory)`` -- exactly what :mod:`paraflow_hpc.problems.builtin` does for
  the built-ins, so built-ins and users' problems go through the same door.

``name`` is a class or function (a *factory*, called with the constructor arguments from
``--problem-args`` / the TOML ``[problem]`` table) or a ready object (used as it is). Besides
the user's arguments a factory receives those *context* keywords the method supplies and its
signature names (or takes through ``**kwargs``): see ``CONTEXT`` below.

:func:`load_problem` resolves the spec, builds the object, checks that it has what its kind
needs and :func:`probe`\\ s it once (shapes, dtypes, finiteness). Every failure is a
:class:`~paraflow_hpc.config.ConfigError` naming the problem and the fix; the runners call it
while validating the config, so every rank stops alike, before any communication.

The kinds (each a :class:`typing.Protocol` below; the docstrings are the contract):

========== ===================================== =======================================
kind       methods                               protocol
========== ===================================== =======================================
``ode``    Parareal (MGRIT)                      :class:`ODE`
``ivp``    PAN                                   :class:`BatchedIVP`
``network`` ParaFlow, ParaFlowS                  :class:`NetworkTraining` or a torch model
``training`` PASO                                :class:`StepTraining` or a torch model
``dataset`` layer-parallel ResNet                :class:`ClassificationData`
``pde``    space-time Parareal                   :class:`PDE` (a class: :func:`load_class`)
========== ===================================== =======================================

For ``network`` and ``training`` the factory may instead return a ``torch.nn.Module``: the
model is then trained on the data of ``--data FILE`` (:mod:`paraflow_hpc.io.datafile`) by the
method's adapter (:mod:`paraflow_hpc.problems.adapters`). A new method with a new kind of
problem adds it with :func:`define_kind`; one that reuses a kind (MGRIT: ``ode``) loads its
problems with ``runners.common.configured_problem(cfg, kind)``.

A ``pde`` problem is a class, not an object: space-time Parareal constructs it collectively on
every time group's space communicator (and again on a coarser grid), so :func:`load_class`
resolves and checks the class up front, on every rank alike, and the runner constructs and
:func:`probe`\\ s the instances.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from ..config import ConfigError

KINDS = ("ode", "ivp", "network", "training", "dataset", "pde")
METHODS = {"ode": "Parareal/MGRIT", "ivp": "PAN", "network": "ParaFlow/ParaFlowS", "training": "PASO",
           "dataset": "layer-parallel", "pde": "space-time Parareal"}
# Context keywords each kind's factories may take (passed only where the signature names them).
CONTEXT = {"ode": (), "ivp": (), "network": ("reduction", "device", "in_dim", "out_dim"),
           "training": ("seed", "batch", "device", "in_dim", "out_dim"),
           "dataset": ("n_samples", "seed"), "pde": ()}
# Kinds whose problems are classes the method constructs itself: (positional arguments, keyword
# arguments) it passes before the problem_args, and the base class that provides them.
CONSTRUCTED = {"pde": (("comm", "nx", "ny", "proc_sizes"), ("ownership_ranges",),
                       "paraflow_hpc.problems.pde.DMDAProblem")}
ENTRY_POINT_GROUP = "paraflow_hpc.problems"


@runtime_checkable
class ODE(Protocol):
    """y' = f(t, y), y(t0) = y0 for Parareal (and MGRIT): NumPy, one state at a time.

    ``t0``, ``tf``: float, the default time span (the run's ``--t0/--tf`` override it), in the
    problem's own time unit. ``y0()``: the initial value, a fresh 1-D array of shape (n,),
    float64 or complex128 (an array attribute ``y0`` is accepted too). ``f(t, y)``: the
    right-hand side at time t (float) and state y (n,), returning an array of shape (n,) and
    the same kind (real/complex); a pure function of (t, y) -- the propagators call it from
    any rank in any order. ``name`` (optional): a label for output files.
    """

    t0: float
    tf: float

    def y0(self) -> np.ndarray: ...

    def f(self, t: float, y: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class BatchedIVP(Protocol):
    """y' = f(t, y), y(t0) = y0 for PAN: torch, many points per call.

    ``f(t, Y)``: times t, a float64 tensor of shape (m,), and states Y, float64 (m, L), return
    float64 (m, L): row i is f(t_i, Y_i). Written with torch operations (so ``torch.func``
    gives its Jacobian) and pure. ``y0``: float array (L,) (or a method returning it);
    ``t0``, ``tf``: float (PAN chooses its subintervals itself from ``rtol``/``atol``). Subclassing :class:`paraflow_hpc.problems.ivp.IVP` gives
    ``f_and_jacobian`` and ``numpy_f``; any other object is wrapped to get them.
    """

    t0: float
    tf: float
    y0: Any

    def f(self, t, Y): ...


@runtime_checkable
class NetworkTraining(Protocol):
    """min_W L(W) = sum_i w_i L_i(W) for ParaFlow / ParaFlowS (:mod:`paraflow_hpc.problems.networks`).

    ``n_params``, ``n_samples``: int. ``initial_weights(seed)``: float64 tensor (n_params,), a
    pure function of the seed. ``value_and_grad(W, idx)``: (float, float64 tensor (n_params,)):
    the loss of the samples ``idx`` (int64 tensor; None: all) and its gradient, adding |idx| to
    ``gradient_evaluations``. ``loss(W, idx)``: float, adding |idx| to ``loss_evaluations``.
    ``reduction``: str (how the sample losses are weighted). Subclass
    :class:`~paraflow_hpc.problems.networks.NetworkProblem` to get all of it from a network
    and a data set.
    """

    n_params: int
    n_samples: int
    reduction: str

    def initial_weights(self, seed: int): ...

    def value_and_grad(self, W, idx=None): ...

    def loss(self, W, idx=None) -> float: ...


@runtime_checkable
class StepTraining(Protocol):
    """A model trained by an optimizer for PASO (:class:`paraflow_hpc.problems.models.TrainingProblem`).

    ``model``: the torch module, float64; ``device``; ``n_params``: int; ``description``: str.
    ``initial_weights()``: float64 array (n_params,). ``batch(t)``: step t's mini-batch (x, y),
    a **pure function of (seed, t)** -- PASO evaluates any step on any rank, any number of
    times. ``loss(output, y)``: the scalar batch loss. ``window_gradients(W, steps)``: W (s,
    n_params) float64 -> (gradients (s, n_params), losses (s,)) of the steps' batch losses.
    ``flatten``/``unflatten``: flat float64 vector <-> the model's named parameters.
    ``evaluate(w)``: {"train_loss": float, "test_accuracy": float (NaN: none)}. Subclass
    ``TrainingProblem`` (it provides all but ``batch`` and the data).
    """

    model: Any
    n_params: int

    def initial_weights(self) -> np.ndarray: ...

    def batch(self, step: int): ...

    def window_gradients(self, weights, steps, chunk: int = 0): ...

    def evaluate(self, flat) -> dict: ...


@runtime_checkable
class ClassificationData(Protocol):
    """A classification data set for the layer-parallel ResNet (:class:`paraflow_hpc.problems.datasets.Dataset`).

    ``x_train`` float (N, d), ``y_train`` int (N,) with labels in 0..n_classes-1, ``x_test``
    (M, d), ``y_test`` (M,) likewise, M >= 1; ``n_classes``: int >= 2. A factory gets
    ``n_samples`` and ``seed`` when it names them and must be a pure function of them.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int


@runtime_checkable
class PDE(Protocol):
    """u_t = ν Δ_h u + r(t, x, y, u) on the unit square, a 2-D PETSc DMDA, for space-time Parareal.

    A *class* (subclass :class:`paraflow_hpc.problems.pde.DMDAProblem`, which provides the grid, the
    PETSc side and ``coarsened``): the runner constructs it collectively on each time group's space
    communicator as ``cls(comm, nx, ny, proc_sizes, ownership_ranges=None, **problem_args)``, and
    ``coarsened(c)`` constructs it again, with the same problem_args, on the grid coarsened by c.
    Class attributes: ``boundary`` "dirichlet" (u = 0 outside the nx × ny interior points) or
    "periodic"; ``nu``: float, the diffusion coefficient (length²/time, the square having side 1);
    ``linear``: bool, True when r does not depend on u; ``t0``, ``tf``: float, the default time span.
    On an instance, with ``block_shape`` = (ye − ys, xe − xs) this rank's block of the grid (the
    coordinates ``X``, ``Y`` have that shape), float64 arrays of that shape: ``initial_values()``
    (finite), ``reaction(t, u)`` and ``reaction_derivative(t, u)`` (∂r/∂u, or None where r does not
    depend on u), pure functions of (t, u) evaluated on each rank's block alone.
    """

    t0: float
    tf: float
    nu: float
    boundary: str
    linear: bool

    def initial_values(self) -> np.ndarray: ...

    def reaction(self, t: float, u: np.ndarray) -> np.ndarray: ...

    def reaction_derivative(self, t: float, u: np.ndarray): ...

    def ifunction(self, ts, t, u, udot, f) -> None: ...

    def ijacobian(self, ts, t, u, udot, shift, J, P) -> None: ...

    def coarsened(self, factor: int): ...


PROTOCOLS = {"ode": ODE, "ivp": BatchedIVP, "network": NetworkTraining, "training": StepTraining,
             "dataset": ClassificationData, "pde": PDE}

# --- registry -----------------------------------------------------------------------------------
_REGISTRY: dict[str, dict[str, object]] | None = None


def register(kind: str, name: str, factory) -> None:
    """Add a problem: ``factory`` is a class/function/object or a ``"module:attr"`` string
    (imported when first used). What entry points and the built-ins call."""
    if kind not in KINDS:
        raise ValueError(f"problem kind {kind!r}: choose one of {', '.join(KINDS)}")
    registry()[kind][name] = factory


def registry() -> dict[str, dict[str, object]]:
    """kind -> {name: factory}: the built-ins, then every installed entry point's problems."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = {kind: {} for kind in KINDS}
        from . import builtin

        builtin.register(register)
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()(register)
            except Exception as err:  # an installed package's bug must not hide the built-ins
                raise ConfigError(f"entry point {ep.name!r} = {ep.value!r} of group {ENTRY_POINT_GROUP!r} "
                                  f"failed: {type(err).__name__}: {err}; fix or uninstall that package") from None
    return _REGISTRY


def builtin_names(kind: str) -> list[str]:
    return sorted(registry()[kind])


# --- resolving a spec ---------------------------------------------------------------------------
def _import_attr(spec: str, target: str, attr: str, from_file: bool):
    if from_file:
        path = os.path.abspath(target)
        if not os.path.isfile(path):
            raise ConfigError(f"problem {spec!r}: the file {target!r} does not exist (relative to "
                              f"{os.getcwd()}); give an existing path/to/file.py:name")
        module_name = "paraflow_user_" + "".join(c if c.isalnum() else "_" for c in path)
        module = sys.modules.get(module_name)
        if module is None:
            loader_spec = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(loader_spec)
            sys.modules[module_name] = module  # pickling (mpi4py's bcast) finds classes defined there
            try:
                loader_spec.loader.exec_module(module)
            except (Exception, SystemExit) as err:
                del sys.modules[module_name]
                raise ConfigError(f"problem {spec!r}: running {target!r} failed: {type(err).__name__}: {err}; "
                                  "fix the file (run `python " + target + "` to see the traceback)") from None
    else:
        try:
            module = importlib.import_module(target)
        except (Exception, SystemExit) as err:
            raise ConfigError(f"problem {spec!r}: module {target!r} does not import ({type(err).__name__}: "
                              f"{err}); install it, put its directory on PYTHONPATH, or give "
                              "path/to/file.py:name") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))
            raise ConfigError(f"problem {spec!r}: {target!r} has no {attr!r}; it defines: "
                              f"{', '.join(public) or 'nothing public'}")
        obj = getattr(obj, part)
    return obj


def resolve(spec: str, kind: str):
    """The factory (or object) a spec names; ConfigError when it cannot be found."""
    if kind not in KINDS:
        raise ValueError(f"problem kind {kind!r}: choose one of {', '.join(KINDS)}")
    if not spec:
        raise ConfigError(f"problem is empty; choose one of {', '.join(builtin_names(kind))} or give "
                          "package.module:name or path/to/file.py:name")
    found = registry()[kind].get(spec)
    if found is not None:
        if isinstance(found, str):
            target, _, attr = found.partition(":")
            return _import_attr(spec, target, attr, False)
        return found
    if ":" not in spec:
        raise ConfigError(f"problem = {spec!r} is not allowed; choose one of: {', '.join(builtin_names(kind))} "
                          f"({METHODS[kind]} built-ins), or give package.module:name or path/to/file.py:name")
    target, attr = spec.rsplit(":", 1)
    if not target or not attr:
        raise ConfigError(f"problem {spec!r}: expected package.module:name or path/to/file.py:name")
    from_file = target.endswith(".py") or os.sep in target or "/" in target
    return _import_attr(spec, target, attr, from_file)


def _is_factory(obj) -> bool:
    return inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)


def call_factory(spec: str, factory: Callable, args: dict, context: dict):
    """factory(**args, **the context keywords it names); ConfigError on arguments that do not fit."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):
        signature = None
    extra = {}
    if signature is not None:
        params = signature.parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())
        extra = {k: v for k, v in context.items() if (k in params or takes_any) and k not in args}
        try:
            signature.bind(**args, **extra)
        except TypeError as err:
            names = [n for n in params if n not in context]
            raise ConfigError(f"problem {spec!r}: problem_args {args!r} do not fit {getattr(factory, '__name__', '')}"
                              f"{signature} ({err}); it takes: {', '.join(names) or 'no arguments'}") from None
    try:
        return factory(**args, **extra)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"problem {spec!r}: constructing it with {args!r} failed: {type(err).__name__}: {err}; "
                          "check --problem-args / the [problem] table") from None


def missing_members(obj, kind: str) -> list[str]:
    """The members of ``kind``'s protocol that ``obj`` lacks (the protocol's methods must be callable)."""
    protocol = PROTOCOLS[kind]
    missing = []
    for name in _protocol_names(protocol):
        if not hasattr(obj, name):
            missing.append(name)
        elif callable(getattr(protocol, name, None)) and not callable(getattr(obj, name)):
            if not (kind in ("ode", "ivp") and name == "y0"):
                missing.append(f"{name} (not callable)")
    return sorted(missing)


def _protocol_names(protocol) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


def load_problem(spec: str, kind: str, args: dict | None = None, *, data=None, check: bool = True, **context):
    """The problem ``spec`` names, built with ``args`` (+ ``context``), completed and probed.

    ``data``: a :class:`~paraflow_hpc.problems.datasets.Dataset` from ``--data`` (kinds
    ``network``, ``training``: the factory must then return a torch model; ``dataset``: the
    data set itself, ``spec`` only labels it). Raises ConfigError naming the problem and the
    fix; returns an object satisfying ``kind``'s protocol.
    """
    if kind in CONSTRUCTED:
        raise ValueError(f"{kind} problems are classes that {METHODS[kind]} constructs itself: use load_class")
    args = dict(args or {})
    if kind == "dataset" and data is not None:
        if args:
            raise ConfigError(f"problem_args {args!r} have no effect with --data (the file is the data set); drop them")
        if not data.n_classes:   # float targets: the file, not the (unused) built-in problem, is wrong
            raise ConfigError(f"data file {data.name!r}: y holds float targets ({data.y_train.shape[1]} per sample: regression); "
                              f"{METHODS[kind]} trains a classifier: give integer class labels 0..C-1 in y (and "
                              "y_test)")
        problem = data
    else:
        obj = resolve(spec, kind)
        if data is not None:
            context = {**context, "in_dim": data.in_dim, "out_dim": data.out_dim}
        if _is_factory(obj) and data is None and kind in ("network", "training"):
            _require_data(spec, obj, args)
        if _is_factory(obj):
            problem = call_factory(spec, obj, args, {k: v for k, v in context.items() if k in CONTEXT[kind]})
        else:
            if args:
                raise ConfigError(f"problem {spec!r} is an object, not a class or function: it takes no "
                                  f"problem_args (given {args!r})")
            problem = obj
        if kind in ("ode", "ivp"):  # what the user wrote must meet the contract, not only its adapter
            _check_members(spec, kind, problem)
        from . import adapters

        problem = adapters.complete(spec, kind, problem, data, obj if _is_factory(obj) else None, args, context)
    _check_members(spec, kind, problem)
    if check:
        probe(problem, kind, spec)
    return problem


def load_class(spec: str, kind: str, args: dict | None = None):
    """The class ``spec`` names, for a kind whose method constructs its problems itself (``pde``).

    Checked without constructing it -- no collective work, the same answer on every rank: a class,
    with the members of ``kind``'s protocol, whose constructor takes the method's arguments
    (``CONSTRUCTED[kind]``) followed by ``args`` as keywords; where ``args`` go to a ``**params``
    of a class with ``check_parameters`` (DMDAProblem: its float class attributes), their names and
    values are checked too. Raises ConfigError naming the problem and the fix. The method constructs
    it (collectively) and :func:`probe`\\ s the instance.
    """
    positional, keywords, base = CONSTRUCTED[kind]
    args = dict(args or {})
    cls = resolve(spec, kind)
    if not inspect.isclass(cls):
        raise ConfigError(f"problem {spec!r} is a {type(cls).__name__}, not a class: {METHODS[kind]} constructs "
                          f"its problem on every rank's part of the grid; give a class (subclass {base})")
    _check_members(spec, kind, cls)
    taken = sorted(set(args) & {*positional, *keywords})
    if taken:
        raise ConfigError(f"problem {spec!r}: problem_args {', '.join(taken)} are {METHODS[kind]}'s own "
                          f"(the grid: --nx, --ny, --space-ranks); drop them")
    # __init__'s, less self: a __new__ (DMDAProblem's keeps the keywords for coarsened) takes *args, **kwargs
    signature = inspect.signature(cls.__init__)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])
    try:
        bound = signature.bind(*positional, **dict.fromkeys(keywords), **args)
    except TypeError as err:
        own = [n for n, p in signature.parameters.items() if n not in (*positional, *keywords)
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        raise ConfigError(f"problem {spec!r}: {cls.__name__}{signature} cannot be constructed "
                          f"as {cls.__name__}({', '.join(positional)}, "
                          f"{', '.join(k + '=...' for k in keywords)}, **problem_args) with problem_args "
                          f"{args!r} ({err}); its own arguments: {', '.join(own) or 'none'}. Check "
                          f"--problem-args, and let a constructor of your own take {', '.join(keywords)} and pass it on to "
                          f"{base.rsplit('.', 1)[-1]}.__init__") from None
    var_keyword = [p.name for p in signature.parameters.values() if p.kind is p.VAR_KEYWORD]
    # the method's own keywords (ownership_ranges) may land in a **kwargs that passes them on
    params = {k: v for k, v in (bound.arguments.get(var_keyword[0], {}) if var_keyword else {}).items()
              if k not in keywords}
    if params and hasattr(cls, "check_parameters"):
        try:
            cls.check_parameters(params)
        except ValueError as err:
            raise ConfigError(f"problem {spec!r}: {err}; check --problem-args") from None
    return cls


def _require_data(spec: str, factory, args: dict) -> None:
    """A model factory that needs the data's sizes (in_dim, out_dim) cannot run without --data."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return
    needs = [n for n in ("in_dim", "out_dim") if n in params and n not in args
             and params[n].default is inspect.Parameter.empty]
    if needs:
        raise ConfigError(f"problem {spec!r} is a torch model: give the data to train it on with --data FILE "
                          f"(it takes {' and '.join(needs)} from the data; layout in docs/getting_started.md)")


def _check_members(spec: str, kind: str, problem) -> None:
    missing = missing_members(problem, kind)
    if missing:
        raise ConfigError(f"problem {spec!r} ({type(problem).__name__}) lacks {', '.join(missing)} of the "
                          f"{METHODS[kind]} contract (paraflow_hpc.problems.contract.{PROTOCOLS[kind].__name__}); "
                          f"add them, or subclass {CONSTRUCTED[kind][2] if kind in CONSTRUCTED else 'the built-in base class'}")


# --- probing ------------------------------------------------------------------------------------
def _fail(spec: str, what: str, fix: str):
    raise ConfigError(f"problem {spec!r}: {what}; {fix}")


def _finite_array(spec, what, value, shape=None, kinds="fc", fix="") -> np.ndarray:
    arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    if arr.dtype.kind not in kinds:
        _fail(spec, f"{what} has dtype {arr.dtype}",
              fix or f"return {'float' if kinds == 'f' else 'float or complex'} values")
    if shape is not None and arr.shape != tuple(shape):
        _fail(spec, f"{what} has shape {arr.shape}, expected {tuple(shape)}", fix or "see the contract's shapes")
    if not np.all(np.isfinite(arr)):
        _fail(spec, f"{what} is not finite ({arr.ravel()[:4]}...)", fix or "check the values and parameters")
    return arr


def _call(spec: str, what: str, fn, *args, fix: str = "fix the problem's code"):
    try:
        return fn(*args)
    except ConfigError:
        raise
    except Exception as err:
        _fail(spec, f"{what} raised {type(err).__name__}: {err}", fix)


def _time_span(spec: str, problem) -> None:
    for key in ("t0", "tf"):
        try:
            value = float(getattr(problem, key))
        except (TypeError, ValueError):
            value = float("nan")
        if not np.isfinite(value):
            _fail(spec, f"{key} = {getattr(problem, key)!r} is not a finite number", f"set {key} to a float")


def _probe_ode(problem, spec: str) -> None:
    _time_span(spec, problem)
    y0 = _finite_array(spec, "y0()", _call(spec, "y0()", problem.y0))
    if y0.ndim != 1 or y0.size == 0:
        _fail(spec, f"y0() has shape {y0.shape}", "return a non-empty 1-D array (n,)")
    _finite_array(spec, f"f(t0, y0) (y0 of shape {y0.shape})", _call(spec, "f(t0, y0)", problem.f,
                  float(problem.t0), y0.copy()), y0.shape, fix="return an array of y's shape with finite values")


def _probe_ivp(problem, spec: str) -> None:
    import torch

    _time_span(spec, problem)
    y0 = _finite_array(spec, "y0", problem.y0, kinds="f")
    if y0.ndim != 1 or y0.size == 0:
        _fail(spec, f"y0 has shape {y0.shape}", "give a non-empty 1-D float array (L,)")
    t = torch.full((2,), float(problem.t0), dtype=torch.float64)
    Y = torch.as_tensor(np.stack([y0, y0]), dtype=torch.float64)
    batched = ("PAN calls f(t, Y) with t (m,) and Y (m, L) float64 torch tensors, one row per collocation "
               "point, and needs (m, L) back: write f with torch operations on columns, e.g. "
               "torch.stack([Y[:, 1], -Y[:, 0]], dim=1) (docs/examples/pendulum.py:PendulumBatched)")
    out = _call(spec, "f(t, Y) on 2 points", problem.f, t, Y, fix=batched)
    if not isinstance(out, torch.Tensor):
        _fail(spec, f"f(t, Y) returned {type(out).__name__}",
              "return a torch tensor (PAN differentiates f with torch.func); " + batched)
    _finite_array(spec, "f(t, Y) for Y of shape (2, L)", out, Y.shape, kinds="f", fix=batched)


def _probe_network(problem, spec: str) -> None:
    import torch

    n, d = int(problem.n_samples), int(problem.n_params)
    if n < 1 or d < 1:
        _fail(spec, f"n_samples = {n}, n_params = {d}", "both must be >= 1")
    W = _call(spec, "initial_weights(0)", problem.initial_weights, 0)
    _finite_array(spec, "initial_weights(0)", W, (d,), kinds="f")
    idx = torch.arange(min(n, 2), device=W.device)
    value, grad = _call(spec, "value_and_grad(W0, first samples)", problem.value_and_grad, W, idx)
    _finite_array(spec, "the loss at W0", value, ())
    _finite_array(spec, "the gradient at W0", grad, (d,), kinds="f")


def _probe_training(problem, spec: str) -> None:
    import torch

    d = int(problem.n_params)
    w0 = _finite_array(spec, "initial_weights()", _call(spec, "initial_weights()", problem.initial_weights),
                       (d,), kinds="f")
    first, again = _call(spec, "batch(0)", problem.batch, 0), _call(spec, "batch(0)", problem.batch, 0)
    if not all(torch.equal(a, b) for a, b in zip(first, again)):
        _fail(spec, "batch(0) differs between two calls", "step t's batch must be a pure function of (seed, t): "
              "draw it from np.random.default_rng([seed, t]) (TrainingProblem.step_rng)")
    grads, losses = _call(spec, "window_gradients(w0, [0])", problem.window_gradients, w0[None], [0])
    _finite_array(spec, "the batch loss of step 0 at w0", losses, (1,), kinds="f")
    _finite_array(spec, "the gradient of step 0 at w0", grads, (1, d), kinds="f")
    ev = _call(spec, "evaluate(w0)", problem.evaluate, w0)
    if not isinstance(ev, dict) or "train_loss" not in ev or "test_accuracy" not in ev:
        _fail(spec, f"evaluate(w0) returned {ev!r}", "return {'train_loss': float, 'test_accuracy': float}")


def _probe_dataset(problem, spec: str) -> None:
    x, y = _finite_array(spec, "x_train", problem.x_train, kinds="f"), np.asarray(problem.y_train)
    xt, yt = _finite_array(spec, "x_test", problem.x_test, kinds="f"), np.asarray(problem.y_test)
    c = problem.n_classes
    if not isinstance(c, (int, np.integer)) or c < 2:
        _fail(spec, f"n_classes = {c!r}", "a classification set needs n_classes >= 2 (integer labels)")
    for name, xs, ys in (("train", x, y), ("test", xt, yt)):
        if xs.ndim != 2 or xs.shape[0] < 1 or ys.shape != (xs.shape[0],):
            _fail(spec, f"x_{name} {xs.shape} and y_{name} {ys.shape} do not fit",
                  f"x_{name} must be (N, d) with N >= 1 and y_{name} (N,)")
        if ys.dtype.kind not in "iu" or ys.min() < 0 or ys.max() >= c:
            _fail(spec, f"y_{name} must hold integer labels 0..{c - 1} (dtype {ys.dtype}, "
                  f"range {ys.min()}..{ys.max()})", "give integer class labels")
    if xt.shape[1] != x.shape[1]:
        _fail(spec, f"x_test has {xt.shape[1]} features, x_train {x.shape[1]}", "use the same features")


def _probe_pde(problem, spec: str) -> None:
    _time_span(spec, problem)
    if problem.boundary not in ("dirichlet", "periodic"):
        _fail(spec, f"boundary = {problem.boundary!r} is not one the grid knows",
              "set boundary = \"dirichlet\" (u = 0 on the boundary) or \"periodic\"")
    shape = tuple(problem.block_shape)
    block = f"a float array over this rank's block of the grid, shape block_shape = (ye - ys, xe - xs) = {shape}"
    u0 = _finite_array(spec, "initial_values()", _call(spec, "initial_values()", problem.initial_values),
                       shape, kinds="f", fix=f"return {block}, finite: compute it from self.X, self.Y (the "
                                             "block's coordinates, of that shape)")
    t0 = float(problem.t0)
    _finite_array(spec, f"reaction(t0, u0) (u0 of shape {shape})",
                  _call(spec, "reaction(t0, u0)", problem.reaction, t0, u0.copy()), shape, kinds="f",
                  fix=f"return r(t, x, y, u) as {block}, like u")
    derivative = _call(spec, "reaction_derivative(t0, u0)", problem.reaction_derivative, t0, u0.copy())
    if derivative is not None:
        _finite_array(spec, f"reaction_derivative(t0, u0) (u0 of shape {shape})", derivative, shape, kinds="f",
                      fix=f"return dr/du as {block}, like u, or None where r does not depend on u")
    if problem.exact_values is not None:   # used only at the end: a wrong one would lose the whole run there
        _finite_array(spec, "exact_values(t0)", _call(spec, "exact_values(t0)", problem.exact_values, t0), shape,
                      kinds="f", fix=f"return the exact solution at t as {block}, or leave exact_values = None")


PROBES = {"ode": _probe_ode, "ivp": _probe_ivp, "network": _probe_network, "training": _probe_training,
          "dataset": _probe_dataset, "pde": _probe_pde}


def probe(problem, kind: str, spec: str = "") -> None:
    """Evaluate ``problem`` once where its method will: shapes, dtypes, finiteness. ConfigError if wrong.

    Counters the evaluations touch (``nfev``, ``gradient_evaluations``, ``loss_evaluations``)
    are put back, so the run's counts do not include the probe.
    """
    spec = spec or getattr(problem, "name", type(problem).__name__)
    counters = {k: getattr(problem, k) for k in ("nfev", "gradient_evaluations", "loss_evaluations")
                if isinstance(getattr(problem, k, None), int)}
    check = PROBES.get(kind)
    if check is not None:
        check(problem, spec)
    for key, value in counters.items():
        setattr(problem, key, value)


def define_kind(kind: str, method: str, protocol, context: tuple = (), probe=None) -> None:
    """A new kind of problem for a new method (e.g. a PETSc PDE for space-time): its protocol, the
    context keywords its factories may take, and ``probe(problem, spec)`` raising ConfigError
    (:func:`_fail`) when an evaluation is wrong. Call at import of the method's runner."""
    global KINDS
    if kind not in KINDS:
        KINDS = (*KINDS, kind)
    METHODS[kind], PROTOCOLS[kind], CONTEXT[kind] = method, protocol, tuple(context)
    if probe is not None:
        PROBES[kind] = probe
    if _REGISTRY is not None:
        _REGISTRY.setdefault(kind, {})
