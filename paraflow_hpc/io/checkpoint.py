"""Atomic, verified HDF5 checkpoints of a distributed state.

Layout: ``/root/<name>`` arrays shared by all ranks, ``/rank_<r>/<name>`` each
rank's own arrays, and attributes ``schema_version``, ``kind`` (the method),
``nranks``, ``meta`` (JSON) and ``sha256`` (over all of that). Only arrays and
JSON are stored, never pickles. Rank 0 writes a temporary file next to the
target, flushes and fsyncs it, keeps the previous checkpoint as ``<file>.prev``,
renames the new one into place and fsyncs the directory: an interrupted write
leaves the last complete checkpoint intact, and a corrupt one falls back to
``.prev`` on load.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import time

import h5py
import numpy as np

from ..comm import AgreedError, collective

SCHEMA_VERSION = 1
_STARTED = time.time()   # temporaries older than this process are not its own


class CheckpointError(AgreedError, RuntimeError):
    """A checkpoint that cannot be used or written; the message says why and what to do.

    Raised on every rank alike (rank 0 broadcasts the verdict)."""


def _digest(kind: str, nranks: int, meta_json: str, groups: dict[str, dict[str, np.ndarray]]) -> str:
    h = hashlib.sha256()
    h.update(f"{SCHEMA_VERSION}|{kind}|{nranks}|{meta_json}".encode())
    for group in sorted(groups):
        for name in sorted(groups[group]):
            arr = np.ascontiguousarray(groups[group][name])
            h.update(f"|{group}/{name}|{arr.dtype.str}|{arr.shape}|".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)) or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, kind: str, nranks: int, meta: dict, groups) -> None:
    meta_json = json.dumps(meta, sort_keys=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # The file is built in memory and written with plain writes: HDF5 1.10 can crash when a file
    # it writes to hits a full disk, while a failed os.write is an ordinary, catchable OSError.
    with h5py.File(f"checkpoint-{os.getpid()}", "w", driver="core", backing_store=False) as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["kind"] = kind
        f.attrs["nranks"] = nranks
        f.attrs["meta"] = meta_json
        f.attrs["sha256"] = _digest(kind, nranks, meta_json, groups)
        for group, arrays in groups.items():
            g = f.create_group(group)
            for name, arr in arrays.items():
                g.create_dataset(name, data=np.asarray(arr))
        f.flush()
        image = f.id.get_file_image()
    try:
        with open(tmp, "wb") as fh:
            fh.write(image)
            fh.flush()
            os.fsync(fh.fileno())  # on disk before the rename makes it the checkpoint
        if os.path.exists(path):
            os.replace(path, path + ".prev")
        os.replace(tmp, path)
        _fsync_dir(path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _remove_stale_temporaries(path: str) -> None:
    """Delete ``<path>.tmp.<pid>`` files a killed writer left: those of processes no longer alive
    on this host, or older than this process (a requeued job on another node). Never our own."""
    for tmp in glob.glob(glob.escape(path) + ".tmp.*"):
        pid = tmp.rsplit(".", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:   # a live process of another user
            alive = True
        try:
            if not alive or os.path.getmtime(tmp) < _STARTED:
                os.remove(tmp)
        except FileNotFoundError:
            pass


def save_checkpoint(comm, path: str, kind: str, meta: dict, rank_arrays: dict[str, np.ndarray],
                    root_arrays: dict[str, np.ndarray] | None = None) -> None:
    """Collective: every rank passes its own arrays; rank 0 writes one file atomically.

    Raises :class:`CheckpointError` on every rank if the file cannot be written (the previous
    checkpoint is kept); any other exception on one rank aborts all (``comm.collective``).
    """
    with collective(comm, f"writing checkpoint {path!r}"):
        gathered = comm.gather({k: np.asarray(v) for k, v in rank_arrays.items()}, root=0)
        error = None
        if comm.rank == 0:
            groups = {f"rank_{r:05d}": arrays for r, arrays in enumerate(gathered)}
            groups["root"] = {k: np.asarray(v) for k, v in (root_arrays or {}).items()}
            try:
                _remove_stale_temporaries(path)
                _write_file(path, kind, comm.size, meta, groups)
            except OSError as err:
                error = f"could not write checkpoint {path!r}: {err}; the previous checkpoint is kept"
        error = comm.bcast(error, root=0)
    if error:
        raise CheckpointError(error)


def _read_file(path: str, kind: str, nranks: int, expect: dict):
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            groups = {g: {n: f[g][n][()] for n in f[g]} for g in f}
    except (OSError, KeyError) as err:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({err}); it is truncated or not HDF5")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise CheckpointError(
            f"checkpoint {path!r} has schema version {attrs.get('schema_version')}, "
            f"this version of paraflow_hpc reads {SCHEMA_VERSION}")
    meta_json = str(attrs.get("meta", ""))
    digest = _digest(str(attrs.get("kind")), int(attrs.get("nranks", -1)), meta_json, groups)
    if digest != attrs.get("sha256"):
        raise CheckpointError(f"checkpoint {path!r} fails its checksum: it was truncated or edited")
    if attrs["kind"] != kind:
        raise CheckpointError(f"checkpoint {path!r} is from method {attrs['kind']!r}, not {kind!r}")
    if int(attrs["nranks"]) != nranks:
        raise CheckpointError(
            f"checkpoint {path!r} was written by {int(attrs['nranks'])} ranks; restart with "
            f"mpirun -n {int(attrs['nranks'])} (this run has {nranks})")
    meta = json.loads(meta_json)
    for key, value in expect.items():
        if meta.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path!r} has {key} = {meta.get(key)!r}, this run has {value!r}; "
                "restart with the configuration that wrote it")
    return meta, groups


def load_checkpoint(comm, path: str, kind: str, expect: dict | None = None):
    """Collective: rank 0 reads and verifies; returns (meta, this rank's arrays, root arrays).

    ``expect`` holds meta entries that must match this run (problem, sizes ...).
    A checkpoint that fails verification is refused; its ``.prev`` is used if valid.
    """
    result, error, notes = None, None, []
    with collective(comm, f"reading checkpoint {path!r}"):
        if comm.rank == 0:
            for candidate in (path, path + ".prev"):
                if not os.path.exists(candidate):
                    notes.append(f"checkpoint {candidate!r} does not exist")
                    continue
                try:
                    result = _read_file(candidate, kind, comm.size, expect or {})
                    if candidate != path:
                        print(f"warning: {notes[-1]}; using the previous checkpoint {candidate!r}", flush=True)
                    break
                except CheckpointError as err:
                    notes.append(str(err))
            if result is None:
                error = notes[0] if len(notes) == 1 or "does not exist" in notes[1] else "; ".join(notes)
        error = comm.bcast(error, root=0)
        if error:
            raise CheckpointError(error)
        meta, groups = result if comm.rank == 0 else (None, None)
        meta = comm.bcast(meta, root=0)
        root = comm.bcast(groups.pop("root", {}) if comm.rank == 0 else None, root=0)
        mine = comm.scatter([groups[f"rank_{r:05d}"] for r in range(comm.size)] if comm.rank == 0 else None,
                            root=0)
    return meta, mine, root
