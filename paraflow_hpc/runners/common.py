"""Glue shared by every method's run: checkpoint hooks, restart, result metadata.

Algorithms do no I/O: they call ``after_iteration`` with their state; the hook
here decides (collectively) whether to write a checkpoint and whether to stop
because the job is being preempted.
"""
from __future__ import annotations

import sys

import numpy as np
from mpi4py import MPI

from ..comm import NonFiniteError, StopRequest
from ..io.checkpoint import load_checkpoint, save_checkpoint

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
        self.comm, self.kind, self.identity, self.fix = comm, kind, identity, fix
        self.path, self.every = cfg.checkpoint, cfg.checkpoint_every
        self.stop = StopRequest.install()
        self.progress = progress
        self.written = 0

    def __call__(self, iteration: int, rank_arrays, root_arrays=None, meta=None, finite: bool = True) -> bool:
        """Collective. ``rank_arrays``/``root_arrays`` are callables, only evaluated when saving.

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
