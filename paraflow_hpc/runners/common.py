"""Glue shared by every method's run: checkpoint hooks, restart, result metadata.

Algorithms do no I/O: they call ``after_iteration`` with their state; the hook
here decides (collectively) whether to write a checkpoint and whether to stop
because the job is being preempted.
"""
from __future__ import annotations

from dataclasses import field

from ..comm import StopRequest
from ..config import option
from ..io.checkpoint import load_checkpoint, save_checkpoint
from ..io.datafile import read_data, split_off_test
from ..problems.contract import METHODS, load_problem

EXIT_PREEMPTED = 3  # the job scripts requeue on this exit code


class CheckpointHook:
    """Writes a checkpoint every ``every`` iterations, and on an agreed stop request."""

    def __init__(self, comm, cfg, kind: str, identity: dict, progress=None):
        self.comm, self.kind, self.identity = comm, kind, identity
        self.path, self.every = cfg.checkpoint, cfg.checkpoint_every
        self.stop = StopRequest.install()
        self.progress = progress
        self.written = 0

    def __call__(self, iteration: int, rank_arrays, root_arrays=None, meta=None) -> bool:
        """Collective. ``rank_arrays``/``root_arrays`` are callables, only evaluated when saving."""
        stop = self.stop.agreed(self.comm)
        if stop or (self.every and iteration % self.every == 0):
            save_checkpoint(self.comm, self.path, self.kind, {**self.identity, **(meta or {}),
                                                              "iteration": iteration},
                            rank_arrays(), root_arrays() if root_arrays else None)
            self.written += 1
            if self.progress:
                self.progress(f"checkpoint after iteration {iteration} -> {self.path}" +
                              (f" (stop requested by {self.stop.signal_name or 'another rank'})" if stop else ""))
        return stop

    def load(self, path: str):
        return load_checkpoint(self.comm, path, self.kind, self.identity)


# --- the problem of a run: one door (problems.contract.load_problem) for built-ins and users' ---
def problem_option(default: str, kind: str):
    """The ``problem`` option of a method whose problems are of ``kind``."""
    from ..problems.builtin import names

    return option(default, f"{METHODS[kind]} problem: {', '.join(names(kind))}, or package.module:name, "
                           "or path/to/file.py:name (docs/getting_started.md, 'Your own problem')")


def problem_args_option():
    """``--problem-args '{"a": 1}'`` or ``a=1,b=2``, or the TOML ``[problem]`` table."""
    return field(default_factory=dict, metadata={
        "help": "constructor arguments of the problem: JSON object or k=v,k=v (TOML: the [problem] table)",
        "choices": None})


def data_option():
    return option("", "data file to train on (HDF5, NPZ or CSV: x (n, d), y (n,) labels or (n, k) targets, "
                      "optional x_test, y_test); --problem is then a torch model")


def configured_problem(cfg, kind: str, **context):
    """``cfg``'s problem (``problem``, ``problem_args``, ``data``), loaded and probed through
    :func:`~paraflow_hpc.problems.contract.load_problem`; kept on ``cfg``, so the object a
    config's validation loaded is the one its run uses (a new ``context`` loads anew)."""
    key = (kind, repr(sorted(context.items())))
    cached = cfg.__dict__.get("_problem")
    if cached is not None and cached[0] == key:
        return cached[1]
    data = read_data(cfg.data) if getattr(cfg, "data", "") else None
    if data is not None and kind == "dataset":
        data = split_off_test(data)
    problem = load_problem(cfg.problem, kind, cfg.problem_args, data=data, **context)
    cfg.__dict__["_problem"] = (key, problem)
    return problem
