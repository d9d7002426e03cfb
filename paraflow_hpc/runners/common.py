"""Glue shared by every method's run: checkpoint hooks, restart, result metadata.

Algorithms do no I/O: they call ``after_iteration`` with their state; the hook
here decides (collectively) whether to write a checkpoint and whether to stop
because the job is being preempted.
"""
from __future__ import annotations

from ..comm import StopRequest
from ..io.checkpoint import load_checkpoint, save_checkpoint

EXIT_PREEMPTED = 3  # the job scripts requeue on this exit code


class CheckpointHook:
    """Writes a checkpoint every ``every`` iterations, and on an agreed stop request."""

    def __init__(self, comm, cfg, kind: str, identity: dict, progress=None):
        self.comm, self.kind, self.identity = comm, kind, identity
        self.path, self.every = cfg.checkpoint, cfg.checkpoint_every
        self.spec = getattr(cfg, "checkpoint_spec", None)   # names and shapes a checkpoint must hold
        self.meta_types = checkpoint_meta(cfg)
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
        return load_checkpoint(self.comm, path, self.kind, self.identity, self.spec, meta_types=self.meta_types)


def checkpoint_meta(cfg) -> dict:
    """Types of the meta entries a run reads back from its checkpoint: the iteration (written by
    every hook) and what the method's config names in ``checkpoint_meta`` (e.g. PASO's ``t``)."""
    return {"iteration": int, **getattr(cfg, "checkpoint_meta", {})}
