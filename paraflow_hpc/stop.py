"""Preemption flag, kept free of heavy imports: the CLI installs its signal handlers before it
imports numpy, torch or MPI, so a signal in the first second of a run is not fatal."""
from __future__ import annotations

import signal


class StopRequest:
    """Preemption: a signal only sets a flag; ranks agree on it at the next safe point.

    Ranks see a signal at different moments (Slurm may deliver it to each rank
    separately), so acting on it locally would desynchronise collectives; the checkpoint
    hook (``runners/common.py``) reduces the flag over the ranks.
    """

    SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
    _installed: "StopRequest | None" = None

    def __init__(self):
        self.flag = False
        self.signal_name = ""

    @classmethod
    def install(cls) -> "StopRequest":
        """The process-wide instance; handlers are registered once (the CLI does it at start-up,
        so a signal that arrives before the first checkpoint hook exists is not lost)."""
        if cls._installed is None:
            cls._installed = cls()
            for sig in cls.SIGNALS:
                signal.signal(sig, cls._installed._handle)
        return cls._installed

    def _handle(self, signum, frame):
        self.flag = True
        self.signal_name = signal.Signals(signum).name

