"""Glue shared by every method's run: checkpoint hooks, restart, result metadata.

Algorithms do no I/O: they call ``after_iteration`` with their state; the hook
here decides (collectively) whether to write a checkpoint and whether to stop
because the job is being preempted.
"""
from __future__ import annotations

import sys
from dataclasses import field

import numpy as np
from mpi4py import MPI

from ..comm import NonFiniteError, StopRequest
from ..config import option, require
from ..io.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..io.datafile import read_data, split_off_test
from ..problems.contract import METHODS, load_problem

EXIT_PREEMPTED = 3  # the job scripts requeue on this exit code
# A training run whose final loss is more than this factor above its initial loss has blown up (a
# step or learning rate too large for the problem): a warning and a file attribute, not an error,
# since the loss is still finite (a non-finite one is NonFiniteError, exit 4). docs/paraflow.md.
BLOWUP_FACTOR = 10.0


def blew_up(comm, method: str, initial: float, final: float, flag: str = "blew_up") -> bool:
    """Collective-free (the losses are the same on every rank): True if ``final`` exceeds
    BLOWUP_FACTOR * ``initial``, with one warning on stderr (rank 0) in every mode; ``flag`` is
    the result-file attribute the caller stores it in."""
    grew = bool(final > BLOWUP_FACTOR * initial)
    if grew and comm.rank == 0:
        print(f"warning: {method} blew up: its loss grew from {initial:.6e} to {final:.6e} (more than "
              f"{BLOWUP_FACTOR:g} x the initial loss): the step is too large for this problem; the result "
              f"file flags it (attribute {flag})", file=sys.stderr, flush=True)
    return grew


class CheckpointHook:
    """Writes a checkpoint every ``every`` iterations, and on an agreed stop request."""

    def __init__(self, comm, cfg, kind: str, identity: dict, progress=None,
                 fix: str = "lower the step size or learning rate"):
        self.comm, self.cfg, self.kind, self.identity, self.fix = comm, cfg, kind, identity, fix
        self.path, self.every = cfg.checkpoint, cfg.checkpoint_every
        self.spec = getattr(cfg, "checkpoint_spec", None)   # names and shapes a checkpoint must hold
        # global arrays (distributed fields) it holds instead of per-rank arrays: any layout reads them
        self.fields = cfg.checkpoint_fields() if hasattr(cfg, "checkpoint_fields") else None
        self.meta_types = checkpoint_meta(cfg)
        self.stop = StopRequest.install()
        self.progress = progress
        self.written = 0

    def __call__(self, iteration: int, rank_arrays, root_arrays=None, meta=None, finite: bool = True,
                 fields=None) -> bool:
        """Collective. ``rank_arrays``/``root_arrays``/``fields`` are callables, only evaluated when
        saving; ``fields()`` gives this rank's boxes ``{name: (shape, offset, box)}`` of the
        config's ``checkpoint_fields()`` (see :func:`~paraflow_hpc.io.checkpoint.save_checkpoint`).

        ``finite``: this rank's state is finite. If it is not on some rank, every rank raises
        :class:`NonFiniteError` naming ``iteration`` (and ``fix``) and nothing is written, so the last
        checkpoint stays the last finite state (the check rides on the stop agreement's reduction).
        """
        flags = np.array([int(self.stop.flag), int(not finite)])
        self.comm.Allreduce(MPI.IN_PLACE, flags, op=MPI.MAX)
        stop, bad = bool(flags[0]), bool(flags[1])
        if bad:
            raise NonFiniteError(f"non-finite state after iteration {iteration}: {self.fix}")
        if stop or (self.every and iteration % self.every == 0):
            self.save(iteration, rank_arrays, root_arrays, meta, fields, stopped=stop)
        return stop

    def stop_requested(self) -> bool:
        """Collective: whether any rank has a stop request, for a safe point that is not an
        iteration (e.g. between the subintervals of a sequential reference sweep)."""
        return bool(self.comm.allreduce(int(self.stop.flag), op=MPI.MAX))

    def save(self, iteration: int, rank_arrays, root_arrays=None, meta=None, fields=None, stopped: bool = False,
             what: str = "") -> None:
        """Collective: writes a checkpoint now (arguments as :meth:`__call__`); ``what`` names the
        point in the log (default: after iteration ``iteration``), ``stopped`` says why."""
        save_checkpoint(self.comm, self.path, self.kind, {**self.identity, **(meta or {}), "iteration": iteration},
                        rank_arrays(), root_arrays() if root_arrays else None, fields() if fields else None)
        self.written += 1
        if self.progress:
            self.progress(f"checkpoint {what or f'after iteration {iteration}'} -> {self.path}" +
                          (f" (stop requested by {self.stop.signal_name or 'another rank'})" if stopped else ""))

    def load(self, path: str, boxes: dict | None = None):
        """Collective: (meta, this rank's arrays, root arrays); ``boxes`` ``{name: (offset, shape)}``:
        this rank's pieces of the fields, for a config with ``checkpoint_fields``."""
        loaded = load_checkpoint(self.comm, path, self.kind, self.identity, self.spec, meta_types=self.meta_types,
                                 fields=self.fields, boxes=boxes)
        # the file actually read (path.prev where path was damaged): what the log and the result's
        # restarted_from name
        self.cfg.restart = loaded[0]["checkpoint_file"]
        return loaded

    def restore(self, path: str, build):
        """Collective: :meth:`load`, then ``build(meta, arrays, root)`` into the method's state.

        For methods whose config states no exact ``checkpoint_spec``: a checkpoint with the right
        names but arrays that do not fit this run (a crafted or foreign file) makes ``build`` fail on
        some rank; that is refused on every rank alike with :class:`CheckpointError` (exit 2), never a
        traceback on one rank. Returns (meta, state)."""
        meta, arrays, root = self.load(path)
        state, error = None, None
        try:
            state = build(meta, arrays, root)
        except Exception as err:   # whatever the arrays do to the state's constructors
            error = (f"checkpoint {path!r} does not fit this run ({type(err).__name__}: {err}); restart with "
                     "the configuration that wrote it")
        errors = [e for e in self.comm.allgather(error) if e]
        if errors:
            raise CheckpointError(errors[0])
        return meta, state


def checkpoint_meta(cfg) -> dict:
    """Types of the meta entries a run reads back from its checkpoint: the iteration (written by
    every hook) and what the method's config names in ``checkpoint_meta`` (e.g. PASO's ``t``);
    ``checkpoint_limits()`` of the config bounds counts (a ``range``): a checkpoint claiming more
    iterations than this run can reach is refused."""
    types = {"iteration": int, **getattr(cfg, "checkpoint_meta", {})}
    limits = cfg.checkpoint_limits() if hasattr(cfg, "checkpoint_limits") else {}
    return {**types, **{key: range(0, top + 1) for key, top in limits.items()}}


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


def time_span(cfg, problem) -> tuple[float, float]:
    """(t0, tf) of an ODE run: ``cfg.t0``/``cfg.tf`` where given, else the problem's;
    ConfigError unless tf > t0."""
    t0 = problem.t0 if cfg.t0 is None else cfg.t0
    tf = problem.tf if cfg.tf is None else cfg.tf
    require(tf > t0, f"tf = {tf} must be greater than t0 = {t0}")
    return t0, tf
