"""One layer of input checks, shared by the command line, the benchmarks and the Python API.

``Config.validate`` of ``run`` and ``bench`` and the algorithms' entry points (``parareal``,
``paso``, ``OptimizerSpec``) call the same functions here, so a value refused on the command
line is refused from Python too, with the same message. Every check raises
:class:`~paraflow_hpc.config.ConfigError` (a ``ValueError``) naming the value and what is
allowed; the CLI prints it as one ``error:`` line and exits with code 2.
"""
from __future__ import annotations

import math

import numpy as np

from .config import ConfigError


def require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def finite(name: str, value) -> float:
    """A real number that is not NaN or infinite (bools and strings refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"{name} = {value!r}: expected a number")
    if not math.isfinite(value):
        raise ConfigError(f"{name} = {value!r}: must be a finite number")
    return float(value)


def count(name: str, value, minimum: int = 1, hint: str = "") -> int:
    """An integer >= ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} = {value!r}: expected an integer")
    require(value >= minimum, f"{name} = {value}: must be >= {minimum}{hint}")
    return int(value)


def positive(name: str, value, hint: str = "") -> float:
    require(finite(name, value) > 0, f"{name} = {value}: {hint or 'must be > 0'}")
    return float(value)


def nonnegative(name: str, value, hint: str = "") -> float:
    require(finite(name, value) >= 0, f"{name} = {value}: must be >= 0{hint}")
    return float(value)


def fraction(name: str, value, closed: bool = False) -> float:
    """A decay factor in [0, 1) (or [0, 1] with ``closed``)."""
    v = finite(name, value)
    require(0 <= v <= 1 if closed else 0 <= v < 1, f"{name} = {value}: must be in [0, 1{']' if closed else ')'}")
    return v


def state(name: str, value) -> np.ndarray:
    """An initial value as scipy's ``solve_ivp`` takes it: integers and bools are promoted to
    float64 (integer arithmetic would truncate every step), real floats to float64, complex
    to complex128; anything else, and NaN or infinity, is refused."""
    arr = np.asarray(value)
    if arr.dtype.kind in "biuf":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind == "c":
        arr = arr.astype(np.complex128)
    else:
        raise ConfigError(f"{name} has dtype {arr.dtype}: an array of numbers is needed")
    require(arr.size > 0, f"{name} is empty")
    require(bool(np.all(np.isfinite(arr))), f"{name} contains NaN or infinite values")
    return arr


def optimizer(name: str, lr, total_steps, *, schedule: str = "constant", momentum=0.9, beta1=0.9, beta2=0.999,
              eps=1e-8, weight_decay=0.0, clip_norm=0.0, names=(), schedules=("constant", "cosine")) -> None:
    """The hyper-parameters of one torch.optim optimizer (PASO's ``OptimizerSpec`` and ``run paso``)."""
    if names:
        require(name in names, f"optimizer = {name!r} is not allowed; choose one of: {', '.join(names)}")
    require(schedule in schedules, f"lr_schedule = {schedule!r} is not allowed; choose one of: {', '.join(schedules)}")
    count("steps", total_steps, 1, " (the number of optimizer steps T)")
    positive("lr", lr, "the learning rate must be > 0")
    for key, value in (("momentum", momentum), ("beta1", beta1), ("beta2", beta2)):
        fraction(key, value)
    positive("eps", eps)
    nonnegative("weight_decay", weight_decay)
    nonnegative("clip_norm", clip_norm, " (0 turns clipping off)")


def paso_iteration(tol, adapt: str, ema_decay, window, adaptive=("mean", "median", "fixed")) -> None:
    """PASO's window and stopping rule (9)/(10)."""
    count("window", window, 1, " (the window size p)")
    nonnegative("tol", tol, " (0 demands exact agreement)")
    require(adapt in adaptive, f"tol_adapt = {adapt!r} is not allowed; choose one of: {', '.join(adaptive)}")
    fraction("ema_decay", ema_decay, closed=True)


def batch_fits(batch, available: int, what: str) -> None:
    """A mini-batch drawn without replacement needs that many samples."""
    count("batch", batch, 1)
    require(batch <= available, f"batch = {batch} exceeds the {available} {what}; use batch <= {available}")


def digits_training_size() -> int:
    """Training images of the digits problems (logreg, mlp, cnn) of PASO."""
    from .problems.models import load_digits_split

    return len(load_digits_split()[0][1])
