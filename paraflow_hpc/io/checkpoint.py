"""Atomic, verified HDF5 checkpoints of a distributed state of any size.

Layout: ``/root/<name>`` arrays shared by all ranks, ``/rank_<r>/<name>`` each rank's own
arrays (read back by the same number of ranks) or, instead, ``/fields/<name>`` global arrays
of which every rank wrote its box (a distributed field, read back by any process layout), and
attributes ``schema_version``, ``kind`` (the method), ``nranks`` and ``meta``
(JSON). Only numeric arrays and JSON are stored, never pickles. After the HDF5 image comes a
fixed-size trailer (HDF5 ignores bytes past its end of file): a magic string, the image's
length and the SHA-256 of the image. On load rank 0 hashes the raw bytes and compares them with
the trailer *before* HDF5 parses anything (a damaged HDF5 file can crash or hang the library),
then checks the structure against :func:`paraflow_hpc.io.schema.check_tree` and the caller's
expectations before reading any data; any failure refuses that file and ``<file>.prev`` is tried.

State of any size: no array is pickled. Each rank sends its arrays to rank 0 as numpy buffers
in blocks of at most :data:`CHUNK_BYTES` (MPI counts are ``int``: a single message above 2 GiB
fails), and rank 0 writes each block into its dataset; loading sends the blocks back. Fields
go through parallel HDF5 (:mod:`.boxes`): each rank writes and reads its own box.

Rank 0 writes a temporary file next to the target, fsyncs it, keeps the previous checkpoint as
``<file>.prev``, renames the new one into place and fsyncs the directory: an interrupted write
leaves the last complete checkpoint intact.
"""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import struct
import time

import h5py
import numpy as np

from ..comm import AgreedError, collective
from .boxes import (parallel_hdf5_available, read_parallel, read_scattered, row_blocks, write_gathered,
                    write_parallel)
from .files import describe_arrays, fsync_dir, pid_alive, placeholders, require_room
from .schema import SchemaError, check_tree, int_attr, text_attr

SCHEMA_VERSION = 2
CHUNK_BYTES = 64 * 2**20   # largest MPI message and HDF5 block; a test lowers it to check the chunking
MAGIC = b"PARAFLOW-CKPT-v2"
TRAILER = struct.Struct("<16sQ32s")   # magic, image length, SHA-256 of the image: 56 bytes
_STARTED = time.time()   # temporaries older than this process are not its own


class CheckpointError(AgreedError, RuntimeError):
    """A checkpoint that cannot be used or written; the message says why and what to do.

    Raised on every rank alike (rank 0 broadcasts the verdict)."""


def _writer_gone(tmp: str) -> bool:
    """True if the writer of temporary ``<path>.partial-<pid>`` is no longer writing it: its process
    is not alive on this host, or the file is older than this process (a requeued job on another
    node). Never for our own."""
    pid = tmp.rsplit("-", 1)[-1]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        return not pid_alive(int(pid)) or os.path.getmtime(tmp) < _STARTED
    except FileNotFoundError:
        return False


def _remove_stale_temporaries(path: str) -> None:
    """Delete ``<path>.partial-<pid>`` files a killed writer left (see :func:`_writer_gone`)."""
    for tmp in glob.glob(glob.escape(path) + ".partial-*"):
        if _writer_gone(tmp):
            try:
                os.remove(tmp)
            except FileNotFoundError:
                pass


def recover_sealed(path: str) -> str | None:
    """A writer killed between its two renames (``_seal``) leaves no ``path``, the old checkpoint
    as ``.prev`` and the new one, complete and sealed, as ``<path>.partial-<pid>``: that one is
    the last complete checkpoint, so it is renamed into place (the newest whose checksum holds).
    Returns a note saying so, or None. Rank 0, before the candidates are opened."""
    if os.path.lexists(path):
        return None
    partials = [p for p in glob.glob(glob.escape(path) + ".partial-*") if os.path.isfile(p) and _writer_gone(p)]
    for tmp in sorted(partials, key=os.path.getmtime, reverse=True):
        if not _sealed(tmp, hashed=True):
            continue
        try:
            os.replace(tmp, path)
            fsync_dir(path)
        except OSError:
            continue
        return f"recovered the complete checkpoint {tmp!r} (its writer was stopped before renaming it) as {path!r}"
    return None


# Checkpoints found damaged when a restart fell back to their .prev (rank 0, this process): the next
# write must not rotate such a file into .prev over the good one (see _seal).
_DAMAGED: set[str] = set()


def _blocks(shape: tuple, itemsize: int):
    """Row ranges along axis 0 of at most CHUNK_BYTES each (at least one row); [None] for a scalar."""
    return [None] if not shape else row_blocks(shape[0], math.prod(shape[1:]) * itemsize, CHUNK_BYTES)


def _pieces(buf: np.ndarray):
    """A contiguous array's bytes in messages of at most CHUNK_BYTES."""
    flat = buf.reshape(-1).view(np.uint8)
    for i in range(0, flat.size, CHUNK_BYTES):
        yield flat[i:i + CHUNK_BYTES]


def _send(comm, arr: np.ndarray, dest: int) -> None:
    for piece in _pieces(arr):
        comm.Send(piece, dest=dest, tag=7)


def _recv(comm, out: np.ndarray, source: int) -> None:
    for piece in _pieces(out):
        comm.Recv(piece, source=source, tag=7)


def _numeric(name: str, arr) -> np.ndarray:
    arr = np.ascontiguousarray(arr)
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"checkpoint array {name!r} has dtype {arr.dtype}; only numbers are checkpointed")
    return arr


def _image_digest(fh, length: int) -> str:
    h = hashlib.sha256()
    fh.seek(0)
    left = length
    while left:
        block = fh.read(min(left, 2**24))
        if not block:
            break
        h.update(block)
        left -= len(block)
    return h.hexdigest()


def save_checkpoint(comm, path: str, kind: str, meta: dict, rank_arrays: dict[str, np.ndarray],
                    root_arrays: dict[str, np.ndarray] | None = None, fields: dict | None = None) -> None:
    """Collective: every rank passes its own numeric arrays (any size); one file is written
    atomically. Raises :class:`CheckpointError` on every rank if it cannot be written (the
    previous checkpoint is kept); ``TypeError`` for a non-numeric array.

    ``fields``: ``{name: (shape, offset, box)}``, this rank's box of a global array of ``shape``
    (a distributed field: the boxes of all ranks tile it, see :mod:`.boxes`), stored as
    ``/fields/<name>``. Such a checkpoint holds no per-rank arrays (``rank_arrays`` must be empty),
    so any process layout can read it back (:func:`load_checkpoint` with ``fields``). With parallel
    HDF5 and more than one rank every rank writes its own box (h5py's mpio driver); otherwise the
    boxes are sent to rank 0. Rank 0 then appends the checksum trailer and renames the file.
    """
    error = None
    with collective(comm, f"writing checkpoint {path}"):   # a TypeError on one rank ends all ranks
        mine = {k: _numeric(k, v) for k, v in rank_arrays.items()}
        boxes = {k: (tuple(int(n) for n in shape), tuple(int(o) for o in offset), _numeric(k, box))
                 for k, (shape, offset, box) in (fields or {}).items()}
        if boxes and mine:
            raise ValueError("a checkpoint with fields holds no per-rank arrays: pass rank_arrays={}")
        shared = {k: _numeric(k, v) for k, v in (root_arrays or {}).items()} if comm.rank == 0 else {}
        layouts = comm.gather(describe_arrays(mine), root=0)
        tmp = f"{path}.partial-{comm.bcast(os.getpid(), root=0)}"
        parallel = bool(boxes) and comm.size > 1 and parallel_hdf5_available()
        f = None
        if comm.rank == 0:
            need = sum(math.prod(shape) * np.dtype(dt).itemsize for lay in layouts for _, dt, shape in lay)
            need += sum(math.prod(shape) * box.itemsize for shape, _, box in boxes.values())
            need += sum(a.nbytes for a in shared.values())
            try:
                _remove_stale_temporaries(path)   # before measuring: they may hold the room needed
                require_room(path, need)
                if not parallel:
                    f = h5py.File(tmp, "w")
                    _write_header(f, kind, comm.size, meta, shared, write=True)
            except OSError as err:
                error = f"could not write checkpoint {path!r}: {err}; the previous checkpoint is kept"
        error = comm.bcast(error, root=0)
        if error is None and parallel:
            # every rank creates the same objects (collective metadata); rank 0 writes /root's data
            meta, described = comm.bcast((meta, describe_arrays(shared)) if comm.rank == 0 else None, root=0)
            if comm.rank != 0:
                shared = placeholders(described)
            with h5py.File(tmp, "w", driver="mpio", comm=comm) as pf:
                # guarded inside the file: closing it is collective, so a rank that raised would wait there
                with collective(comm, f"writing checkpoint {path}"):
                    _write_header(pf, kind, comm.size, meta, shared, write=comm.rank == 0)
                    write_parallel(pf.create_group("fields"), comm, boxes, CHUNK_BYTES)
            comm.Barrier()   # every rank's box is in the file before rank 0 seals it
        elif error is None and boxes:
            try:
                write_gathered(f.create_group("fields") if comm.rank == 0 else None, comm, boxes, CHUNK_BYTES)
            except OSError as err:   # rank 0's write failed; the others have sent everything
                error = f"could not write checkpoint {path!r}: {err}; the previous checkpoint is kept"
        elif error is None:
            for r in range(comm.size):
                arrays = mine if r == comm.rank else None
                layout = layouts[r] if comm.rank == 0 else None
                if comm.rank == 0:
                    g = f.create_group(f"rank_{r:05d}")
                    for name, dt, shape in layout:
                        ds = g.create_dataset(name, shape=shape, dtype=np.dtype(dt))
                        for rows in _blocks(shape, np.dtype(dt).itemsize):
                            if r == 0:
                                block = mine[name] if rows is None else mine[name][rows]
                            else:
                                block = np.empty(shape if rows is None else
                                                 (rows.stop - rows.start,) + tuple(shape[1:]), dtype=dt)
                                _recv(comm, block, r)
                            if error is None:   # after a failed write keep receiving: no rank waits
                                try:
                                    ds[() if rows is None else rows] = block
                                except OSError as err:
                                    error = f"could not write checkpoint {path!r}: {err}; the previous checkpoint is kept"
                elif comm.rank == r:
                    for name, arr in arrays.items():
                        for rows in _blocks(arr.shape, arr.itemsize):
                            _send(comm, arr if rows is None else np.ascontiguousarray(arr[rows]), 0)
        error = comm.bcast(error, root=0)
        if comm.rank == 0 and error is None:
            try:
                if f is not None:
                    f.close()
                    f = None
                _seal(tmp, path)
            except OSError as err:
                error = f"could not write checkpoint {path!r}: {err}; the previous checkpoint is kept"
        if comm.rank == 0:
            if f is not None:
                f.close()
            if os.path.exists(tmp):
                os.remove(tmp)
        error = comm.bcast(error, root=0)
    if error:
        raise CheckpointError(error)


def _write_header(f, kind: str, nranks: int, meta: dict, shared: dict, write: bool) -> None:
    """Attributes and the /root arrays (their data only where ``write``)."""
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["kind"] = kind
    f.attrs["nranks"] = nranks
    f.attrs["meta"] = json.dumps(meta, sort_keys=True)
    g = f.create_group("root")
    for name, arr in shared.items():
        ds = g.create_dataset(name, shape=arr.shape, dtype=arr.dtype)
        if write and arr.size:
            ds[...] = arr


def _seal(tmp: str, path: str) -> None:
    """Appends the trailer, fsyncs, keeps the old file as .prev, renames into place, fsyncs the dir."""
    with open(tmp, "r+b") as fh:
        length = os.fstat(fh.fileno()).st_size
        digest = bytes.fromhex(_image_digest(fh, length))
        fh.seek(0, os.SEEK_END)
        fh.write(TRAILER.pack(MAGIC, length, digest))
        fh.flush()
        os.fsync(fh.fileno())   # on disk before the rename makes it the checkpoint
    # The current file becomes .prev only if it is a complete checkpoint: after a restart from .prev
    # (the current one damaged) .prev is the last good one and must survive a failure of this write.
    if os.path.exists(path) and _sealed(path, hashed=False) and os.path.abspath(path) not in _DAMAGED:
        os.replace(path, path + ".prev")
    os.replace(tmp, path)
    _DAMAGED.discard(os.path.abspath(path))
    fsync_dir(path)


def _sealed(path: str, hashed: bool) -> bool:
    """The file ends in a trailer whose length matches (a cheap check that a truncated or partly
    written file fails) and, if ``hashed``, whose SHA-256 matches the image."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < TRAILER.size:
                return False
            fh.seek(size - TRAILER.size)
            magic, length, digest = TRAILER.unpack(fh.read(TRAILER.size))
            if magic != MAGIC or length != size - TRAILER.size:
                return False
            return not hashed or _image_digest(fh, length) == digest.hex()
    except OSError:
        return False


def _shape_ok(shape: tuple, want) -> bool:
    return want is None or (len(shape) == len(want) and all(w is None or w == s for s, w in zip(shape, want)))


class _Opened:
    """A verified candidate: the open file, its meta and the layout of every group."""

    def __init__(self, fh, f, meta, layouts):
        self.fh, self.f, self.meta, self.layouts = fh, f, meta, layouts
        self.path = None   # which candidate (the file or its .prev), set when chosen

    def close(self):
        self.f.close()
        self.fh.close()


def _open_verified(path: str, kind: str, nranks: int, expect: dict, spec, meta_types=None, fields=None) -> _Opened:
    """Opens ``path`` after checking its raw bytes, structure and identity; CheckpointError if not."""
    fh = open(path, "rb")
    f = None
    try:
        size = os.fstat(fh.fileno()).st_size
        if size < TRAILER.size:
            raise CheckpointError(f"checkpoint {path!r} fails its checksum: it is truncated ({size} bytes)")
        fh.seek(size - TRAILER.size)
        magic, length, digest = TRAILER.unpack(fh.read(TRAILER.size))
        if magic != MAGIC:
            raise CheckpointError(f"checkpoint {path!r} fails its checksum (it has no paraflow_hpc trailer): it "
                                  f"was truncated or edited, is not a checkpoint, or predates schema {SCHEMA_VERSION}")
        if length != size - TRAILER.size or _image_digest(fh, length) != digest.hex():
            raise CheckpointError(f"checkpoint {path!r} fails its checksum: it was truncated or edited")
        fh.seek(0)
        try:
            f = h5py.File(fh, "r")
            layouts, meta = _check_structure(f, size, path, kind, nranks, expect, spec, meta_types, fields)
        except CheckpointError:
            raise
        except SchemaError as err:
            raise CheckpointError(f"checkpoint {path!r} is refused: {err}") from None
        except Exception as err:   # whatever HDF5 makes of a file that passed the checksum
            raise CheckpointError(f"checkpoint {path!r} cannot be read ({type(err).__name__}: {err})") from None
        return _Opened(fh, f, meta, layouts)
    except BaseException:
        if f is not None:
            f.close()
        fh.close()
        raise


def _check_structure(f, size, path, kind, nranks, expect, spec, meta_types, fields=None):
    version = int_attr(f.attrs, "schema_version")
    if version != SCHEMA_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has schema version {version}, "
                              f"this version of paraflow_hpc reads {SCHEMA_VERSION}")
    datasets = check_tree(f, size)
    file_kind = text_attr(f.attrs, "kind")
    file_nranks = int_attr(f.attrs, "nranks")
    try:
        meta = json.loads(text_attr(f.attrs, "meta"))
    except json.JSONDecodeError as err:
        raise SchemaError(f"attribute /@meta is not JSON ({err})") from None
    if not isinstance(meta, dict):
        raise SchemaError("attribute /@meta is not a JSON object")
    if file_kind != kind:
        raise CheckpointError(f"checkpoint {path!r} is from method {file_kind!r}, not {kind!r}")
    if file_nranks != nranks and fields is None:   # fields: any layout reads its boxes
        raise CheckpointError(
            f"checkpoint {path!r} was written by {file_nranks} ranks; restart with "
            f"mpirun -n {file_nranks} (this run has {nranks})")
    for key, value in expect.items():
        if meta.get(key) != value:
            raise CheckpointError(
                f"checkpoint {path!r} has {key} = {meta.get(key)!r}, this run has {value!r}; "
                "restart with the configuration that wrote it")
    for key, typ in (meta_types or {}).items():
        value = meta.get(key)
        if isinstance(typ, range) and (not isinstance(value, int) or isinstance(value, bool) or value not in typ):
            raise SchemaError(f"meta entry {key!r} = {value!r} is outside {typ.start}..{typ.stop - 1}, "
                              "the counts this run can reach")
        if typ is int and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise SchemaError(f"meta entry {key!r} = {value!r} is not a count (an integer >= 0)")
        if typ is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                             or not math.isfinite(value)):
            raise SchemaError(f"meta entry {key!r} = {value!r} is not a finite number")
    if fields is not None:
        if sorted(f) != ["fields", "root"]:
            raise SchemaError(f"top-level objects {sorted(f)[:5]} are not /fields and /root")
        _check_fields(f["fields"], datasets, fields)
        groups = ["root"]
    else:
        groups = ["root"] + [f"rank_{r:05d}" for r in range(nranks)]
        if sorted(f) != sorted(groups):
            raise SchemaError(f"top-level objects {sorted(f)[:5]} are not /root and /rank_00000.. /rank_{nranks - 1:05d}")
    layouts = {}
    for index, group in enumerate(groups):
        if not isinstance(f[group], h5py.Group):
            raise SchemaError(f"/{group} is not a group")
        layout = []
        for name in f[group]:
            ds = datasets.get(f"{group}/{name}")
            if ds is None:
                raise SchemaError(f"/{group}/{name} is not a dataset")
            if ds.dtype.kind not in "biufc":
                raise SchemaError(f"/{group}/{name} has dtype {ds.dtype}; checkpoints hold numbers only")
            layout.append((name, ds.dtype.str, ds.shape))
        if spec is not None:
            want = spec("root" if index == 0 else index - 1, nranks)
            names = sorted(n for n, _, _ in layout)
            if names != sorted(want):
                raise SchemaError(f"/{group} holds {names}, this run expects {sorted(want)}")
            for name, dt, shape in layout:
                want_shape, kinds = want[name]
                if not _shape_ok(shape, want_shape):
                    expected = tuple("any" if w is None else w for w in want_shape)
                    raise SchemaError(f"/{group}/{name} has shape {shape}, this run expects {expected}")
                if np.dtype(dt).kind not in kinds:
                    raise SchemaError(f"/{group}/{name} has dtype {np.dtype(dt)}, this run expects "
                                      + {"f": "floats", "i": "integers", "c": "complex numbers"}.get(kinds, kinds))
        layouts[group] = layout
    return layouts, meta


def _check_fields(group, datasets: dict, fields: dict) -> None:
    """/fields holds exactly the global arrays ``fields`` ``{name: (shape, kinds)}`` names."""
    if not isinstance(group, h5py.Group):
        raise SchemaError("/fields is not a group")
    if sorted(group) != sorted(fields):
        raise SchemaError(f"/fields holds {sorted(group)}, this run expects {sorted(fields)}")
    for name, (shape, kinds) in fields.items():
        ds = datasets.get(f"fields/{name}")
        if ds is None:
            raise SchemaError(f"/fields/{name} is not a dataset")
        if ds.shape != tuple(shape):
            raise SchemaError(f"/fields/{name} has shape {ds.shape}, this run expects {tuple(shape)}")
        if ds.dtype.kind not in kinds:
            raise SchemaError(f"/fields/{name} has dtype {ds.dtype}, this run expects "
                              + {"f": "floats", "i": "integers", "c": "complex numbers"}.get(kinds, kinds))


def _verify_on_root(comm, path: str, kind: str, expect: dict, spec, meta_types, nranks=None, warn=True,
                    fields=None):
    """Rank 0: the first usable candidate of (path, path.prev) opened, or None and the error."""
    recovered = recover_sealed(path)
    if recovered:
        print(f"note: {recovered}", flush=True)
    notes = []
    for candidate in (path, path + ".prev"):
        if not os.path.exists(candidate):
            notes.append(f"checkpoint {candidate!r} does not exist")
            continue
        if not os.path.isfile(candidate):   # a FIFO would block the read forever, a device never end
            notes.append(f"checkpoint {candidate!r} is not a regular file")
            continue
        try:
            opened = _open_verified(candidate, kind, nranks or comm.size, expect, spec, meta_types, fields)
        except CheckpointError as err:
            notes.append(str(err))
            continue
        except OSError as err:
            notes.append(f"checkpoint {candidate!r} cannot be opened ({err.strerror or err})")
            continue
        if candidate != path:
            if os.path.exists(path):
                _DAMAGED.add(os.path.abspath(path))
            if warn:   # said once, when the run loads it (not at the check up front)
                print(f"warning: {notes[-1]}; using the previous checkpoint {candidate!r}", flush=True)
        opened.path = candidate
        return opened, None
    return None, notes[0] if len(notes) == 1 or "does not exist" in notes[1] else "; ".join(notes)


def verify_checkpoint(comm, path: str, kind: str, expect: dict | None = None, spec=None,
                      meta_types=None, nranks: int | None = None, fields: dict | None = None) -> None:
    """Collective: raises :class:`CheckpointError` on every rank unless ``path`` (or its
    ``.prev``) can be resumed by this run; reads no array data. For a check up front.
    ``nranks``: the ranks that will load it, if not all of ``comm`` (a sub-communicator);
    ``fields``: as :func:`load_checkpoint`."""
    error = None
    with collective(comm, f"checking checkpoint {path}"):
        if comm.rank == 0:
            opened, error = _verify_on_root(comm, path, kind, expect or {}, spec, meta_types, nranks, warn=False,
                                            fields=fields)
            if opened is not None:
                opened.close()
        error = comm.bcast(error, root=0)
    if error:
        raise CheckpointError(error)


def load_checkpoint(comm, path: str, kind: str, expect: dict | None = None, spec=None, meta_types=None,
                    fields: dict | None = None, boxes: dict | None = None):
    """Collective: rank 0 verifies; returns (meta, this rank's arrays, root arrays).

    ``expect`` holds meta entries that must match this run (problem, sizes ...). ``spec``,
    if given, is a function ``spec(group, nranks)`` of ``"root"`` or a rank number returning
    ``{name: (shape, kinds)}`` for the arrays that group must hold: ``shape`` a tuple (a ``None``
    dimension, or ``None`` for the whole shape: any), ``kinds`` the allowed numpy dtype kinds
    (e.g. ``"f"``). A checkpoint that fails
    verification is refused; its ``.prev`` is used if valid. ``meta_types``: meta entries that
    must be counts (``int``: integers >= 0, such as ``"iteration"``; a ``range``: counts in it) or
    finite numbers (``float``). Raises :class:`CheckpointError`
    on every rank when neither can be used.

    ``fields``: ``{name: (shape, kinds)}``, the global arrays a checkpoint written with
    ``fields`` must hold (exact shapes); it may come from any number of ranks. ``boxes``: this
    rank's ``{name: (offset, shape)}`` to read from each (read with parallel HDF5 where h5py has
    it, else sent by rank 0); they are "this rank's arrays" of the return value. The meta returned
    also holds ``checkpoint_file``: the file read (``path``, or its ``.prev``).
    """
    error = None
    boxes = {k: (tuple(int(o) for o in off), tuple(int(n) for n in shp)) for k, (off, shp) in (boxes or {}).items()}
    for name, (offset, shape) in boxes.items():
        full = (fields or {}).get(name, (None,))[0]
        if full is None or len(offset) != len(full) or len(shape) != len(full) or any(
                o < 0 or n < 0 or o + n > m for o, n, m in zip(offset, shape, full)):
            raise ValueError(f"box {name!r} at {offset} of shape {shape} is not inside the field {full}")
    with collective(comm, f"reading checkpoint {path}"):
        opened = None
        if comm.rank == 0:
            opened, error = _verify_on_root(comm, path, kind, expect or {}, spec, meta_types, fields=fields)
        error = comm.bcast(error, root=0)
        if error is None:
            meta, layouts, chosen = comm.bcast((opened.meta, opened.layouts, opened.path)
                                               if comm.rank == 0 else None, root=0)
            try:
                root = {}
                for name, dt, shape in layouts["root"]:
                    root[name] = _transfer(comm, opened, "root", name, dt, shape, None)
                mine = {}
                if fields is not None and comm.size > 1 and parallel_hdf5_available():
                    if opened is not None:
                        opened.close()   # verified; every rank opens it now
                        opened = None
                    with h5py.File(chosen, "r", driver="mpio", comm=comm) as pf:
                        with collective(comm, f"reading checkpoint {path}"):   # closing is collective
                            mine = read_parallel(pf["fields"], comm, boxes, CHUNK_BYTES)
                elif fields is not None:
                    mine = read_scattered(opened.f["fields"] if comm.rank == 0 else None, comm, boxes, CHUNK_BYTES)
                else:
                    for r in range(comm.size):
                        for name, dt, shape in layouts[f"rank_{r:05d}"]:
                            arr = _transfer(comm, opened, f"rank_{r:05d}", name, dt, shape, r)
                            if comm.rank == r:
                                mine[name] = arr
            finally:
                if opened is not None:
                    opened.close()
    if error:
        raise CheckpointError(error)
    return {**meta, "checkpoint_file": chosen}, mine, root


def _transfer(comm, opened, group, name, dt, shape, dest):
    """Rank 0 reads ``group/name`` block by block and sends it to ``dest`` (None: every rank);
    returns the array on the receiving rank(s), None elsewhere. Rank 0 holds one block at a time."""
    keep = dest is None or comm.rank == dest
    out = np.empty(shape, dtype=dt) if keep else None
    ds = opened.f[group][name] if comm.rank == 0 else None
    for rows in _blocks(shape, np.dtype(dt).itemsize):
        if keep:
            buf = out if rows is None else out[rows]
        elif comm.rank == 0:
            buf = np.empty(shape if rows is None else (rows.stop - rows.start,) + tuple(shape[1:]), dtype=dt)
        else:
            continue
        if comm.rank == 0 and buf.size:
            ds.read_direct(buf, np.s_[()] if rows is None else np.s_[rows])
        if dest is None:
            for piece in _pieces(buf):
                comm.Bcast(piece, root=0)
        elif dest != 0:
            (_send if comm.rank == 0 else _recv)(comm, buf, dest if comm.rank == 0 else 0)
    return out
