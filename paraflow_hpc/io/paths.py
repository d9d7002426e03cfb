"""Output, checkpoint and restart paths that every rank agrees on; outputs never destroyed silently.

:func:`agree_paths` runs once, before any other file access of a run (``paraflow-hpc run`` and
``bench``). Rank 0 decides and every rank gets the same verdict, so a refusal is one message
and exit code 2 on all ranks, never a hang in a parallel open:

- paths are made absolute on rank 0 and broadcast: ranks whose working directories differ
  (``mpirun --wdir`` per app context, node-local directories under srun) still name one file;
- rank 0 writes a probe file with a random token into the output and checkpoint directories
  and every rank reads it back: a rank that does not see the same directory is named;
- ``--output`` must not be a directory, a checkpoint, or the ``--checkpoint`` / ``--restart``
  file, and an existing result is only replaced with ``--overwrite``;
- ``<output>.lock`` is created with ``O_CREAT | O_EXCL``: a second run writing the same output
  at the same time refuses. A lock left by a killed run is taken over when its process is gone
  (same host) or it belongs to the same Slurm job (a requeue); otherwise the message says to
  delete it. Leftover ``<file>.partial-<pid>`` files of killed runs are removed under the lock,
  except a complete, sealed checkpoint whose writer was killed between its two renames: that one
  becomes the checkpoint (``checkpoint.recover_sealed``).
"""
from __future__ import annotations

import atexit
import glob
import json
import os
import secrets
import socket
import stat

from .checkpoint import MAGIC, TRAILER, recover_sealed
from .files import pid_alive


def special_file(path: str) -> str | None:
    """What ``path`` is if it exists but is no regular file (a device, FIFO, socket): such a path
    must never be opened (a FIFO blocks forever) or replaced (as root, ``--output /dev/null`` would
    replace the device). Directories are reported by the callers in their own words. None if fine."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    return ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")


def is_checkpoint(path: str) -> bool:
    """True for a paraflow_hpc checkpoint (it ends in the checkpoint trailer)."""
    if special_file(path):
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() < TRAILER.size:
                return False
            fh.seek(-TRAILER.size, os.SEEK_END)
            return fh.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


class OutputLock:
    """``<output>.lock``, created exclusively by rank 0; released at exit."""

    def __init__(self, output: str):
        self.path = output + ".lock"
        self.token = secrets.token_hex(8)
        self.held = False

    def _owner(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": os.environ.get("SLURM_JOB_ID", ""),
                "token": self.token}

    def acquire(self) -> str | None:
        """None when held, else the reason (another run is writing the output)."""
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return self._busy()
                try:
                    os.remove(self.path)
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(self._owner(), fh)
            self.held = True
            atexit.register(self.release)
            return None
        return self._busy()

    def _read(self) -> dict:
        try:
            with open(self.path) as fh:
                owner = json.load(fh)
            return owner if isinstance(owner, dict) else {}
        except (OSError, ValueError):
            return {}

    def _stale(self) -> bool:
        owner = self._read()
        job = os.environ.get("SLURM_JOB_ID", "")
        if job and owner.get("slurm_job") == job:
            return True   # this job before its requeue
        pid = owner.get("pid")
        return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)

    def _busy(self) -> str:
        owner = self._read()
        who = f"process {owner.get('pid')} on {owner.get('host')}" if owner else "another run"
        return (f"output {self.path[:-5]!r} is being written by {who} (lock file {self.path!r}); "
                f"wait for it, choose another --output, or delete the lock file if that run is gone")

    def release(self) -> None:
        if self.held and self._read().get("token") == self.token:
            try:
                os.remove(self.path)
            except OSError:
                pass
        self.held = False


def _probe(comm, directories: list[str]) -> str | None:
    """Every rank must see the files rank 0 writes in ``directories``; the first failure, or None."""
    token = secrets.token_hex(16) if comm.rank == 0 else None
    made, error = [], None
    if comm.rank == 0:
        for directory in directories:
            path = os.path.join(directory, f".paraflow-probe-{token}")
            try:
                os.makedirs(directory, exist_ok=True)
                with open(path, "w") as fh:
                    fh.write(token)
                made.append(path)
            except OSError as err:
                error = (f"directory {directory!r} is not writable ({err.strerror or err}); "
                         "choose another --output / --checkpoint")
                break
    error, token = comm.bcast((error, token), root=0)
    seen = None
    if error is None:
        seen = []
        for directory in directories:
            try:
                with open(os.path.join(directory, f".paraflow-probe-{token}")) as fh:
                    seen.append(fh.read() == token)
            except OSError:
                seen.append(False)
    views = comm.gather((seen, socket.gethostname(), os.getcwd()), root=0)
    if comm.rank == 0:
        for path in made:
            os.remove(path)
        if error is None:
            for rank, (ok, host, cwd) in enumerate(views):
                for directory, same in zip(directories, ok):
                    if not same:
                        error = (f"rank {rank} (host {host}, working directory {cwd!r}) does not see the "
                                 f"directory {directory!r} that rank 0 writes to; give --output and "
                                 "--checkpoint on a file system shared by all ranks")
                        break
                if error:
                    break
    return comm.bcast(error, root=0)


def _check_on_root(cfg, lock: OutputLock) -> str | None:
    out, ck, restart = cfg.output, cfg.checkpoint, cfg.restart
    for option, path in (("--output", out), ("--checkpoint", ck), ("--restart", restart)):
        kind = special_file(path) if path else None
        if kind:
            return f"{option} {path!r} is {kind}, not a regular file; give a file name"
    if os.path.isdir(out):
        return f"--output {out!r} is a directory; give a file name such as {os.path.join(out, 'result.h5')!r}"
    if os.path.isdir(ck):
        return f"--checkpoint {ck!r} is a directory; give a file name"
    if out == ck:
        return f"--output and --checkpoint are the same file {out!r}; give them different names"
    if restart and out in (restart, restart + ".prev"):
        return f"--output {out!r} is the checkpoint to restart from; give another --output"
    if is_checkpoint(out):
        return (f"--output {out!r} is a checkpoint; a result never replaces a checkpoint "
                "(even with --overwrite): give another --output")
    busy = lock.acquire()
    if busy:
        return busy
    if os.path.exists(out) and not getattr(cfg, "overwrite", False):
        lock.release()
        return (f"--output {out!r} exists (an earlier result); pass --overwrite to replace it, "
                "or choose another --output")
    return None


def agree_paths(comm, cfg, progress=print) -> OutputLock | None:
    """Collective: makes ``cfg.output/checkpoint/restart`` absolute (rank 0's view, broadcast),
    checks them as the module docstring says, takes the output lock (rank 0) and removes
    leftovers. Returns the lock (rank 0; None elsewhere), released at exit. Raises
    ``ConfigError`` with the same message on every rank when a path is refused."""
    from ..config import ConfigError

    paths = None
    if comm.rank == 0:
        paths = [os.path.abspath(os.path.expanduser(p)) if p else "" for p in
                 (cfg.output, cfg.checkpoint, cfg.restart)]
    cfg.output, cfg.checkpoint, cfg.restart = comm.bcast(paths, root=0)
    directories = list(dict.fromkeys(os.path.dirname(p) for p in (cfg.output, cfg.checkpoint)))
    error = _probe(comm, directories)
    lock, notes = None, []
    if error is None and comm.rank == 0:
        lock = OutputLock(cfg.output)
        error = _check_on_root(cfg, lock)
        if error is None:
            if os.path.exists(cfg.output):
                notes.append(f"--overwrite: {cfg.output} will be replaced when this run completes")
            recovered = recover_sealed(cfg.checkpoint)   # a complete checkpoint, only not yet renamed
            if recovered:
                notes.append(recovered)
            for base in (cfg.output, cfg.checkpoint):
                for left in glob.glob(glob.escape(base) + ".partial-*"):
                    os.remove(left)
                    notes.append(f"removed {left} (left by an interrupted run)")
    error = comm.bcast(error, root=0)
    if error:
        raise ConfigError(error)
    if comm.rank == 0 and not getattr(cfg, "quiet", False):
        for note in notes:
            progress(note)
    return lock
