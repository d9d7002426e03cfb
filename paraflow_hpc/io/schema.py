"""Structural checks of an HDF5 file before any of its data is read.

Checkpoints and result files may come from anywhere (a crafted file, a copy from another
machine, a file edited by hand), and HDF5 follows whatever the file describes: an external
link or a virtual dataset reads another file, a dataset of shape (2**40, 3) asks numpy for
24 TiB, an object or opaque dtype hands pickled or raw bytes to the reader. paraflow_hpc
writes none of these, so :func:`check_tree` refuses them all, before one byte of data is
read, with a :class:`SchemaError` naming the object and what is wrong.

What paraflow_hpc writes, and so all that is accepted: groups and datasets linked by hard
links; datasets of fixed-size numeric (bool, int, uint, float, complex) or fixed-length byte
string dtypes, contiguous, with all their data stored inside the file (no external raw storage,
no unallocated data read as the fill value; ``nbytes <= file size``); attributes of those dtypes or variable-length UTF-8 strings.
"""
from __future__ import annotations

import math

import h5py
import numpy as np

MAX_NDIM = 8            # paraflow_hpc's arrays have at most 4 dimensions
MAX_OBJECTS = 100_000   # groups + datasets: far above any result or checkpoint we write
MAX_DEPTH = 16


class SchemaError(ValueError):
    """The file is not one paraflow_hpc wrote; the message names the object and why."""


def _dtype_ok(dtype: np.dtype, *, attribute: bool) -> bool:
    if h5py.check_vlen_dtype(dtype) is not None or dtype.kind == "O":
        # h5py writes str attributes as variable-length strings; nothing else may be variable-length
        info = h5py.check_string_dtype(dtype)
        return attribute and info is not None and info.length is None
    if dtype.fields is not None or dtype.subdtype is not None:
        return False                      # compound / array types: never written
    return dtype.kind in "biufc" or dtype.kind == "S"


def _nbytes(shape, itemsize: int) -> int:
    return math.prod(int(n) for n in shape) * int(itemsize)


def _check_attrs(obj, where: str, file_size: int) -> None:
    for name in obj.attrs:
        attr = h5py.h5a.open(obj.id, name.encode())
        dtype, shape = attr.dtype, attr.shape
        if not _dtype_ok(dtype, attribute=True):
            raise SchemaError(f"attribute {where}@{name} has dtype {dtype}, which paraflow_hpc never writes")
        if len(shape) > MAX_NDIM or _nbytes(shape, dtype.itemsize) > file_size:
            raise SchemaError(f"attribute {where}@{name} has shape {shape}: larger than the file")


def check_tree(f: h5py.File, file_size: int) -> dict[str, h5py.Dataset]:
    """Every object of ``f`` checked as described in the module docstring; returns
    ``{path: dataset}`` for every dataset (paths without the leading ``/``).

    ``file_size`` is the size in bytes of the file on disk: no dataset or attribute may
    claim more data than that. Raises :class:`SchemaError`.
    """
    datasets: dict[str, h5py.Dataset] = {}
    count = 0
    total = 0

    def visit(group: h5py.Group, prefix: str, depth: int) -> None:
        nonlocal count, total
        if depth > MAX_DEPTH:
            raise SchemaError(f"group /{prefix} is nested more than {MAX_DEPTH} deep")
        _check_attrs(group, "/" + prefix, file_size)
        for name in group:
            path = prefix + name
            count += 1
            if count > MAX_OBJECTS:
                raise SchemaError(f"more than {MAX_OBJECTS} objects")
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
                raise SchemaError(f"/{path} is {kind}; paraflow_hpc files hold only their own data")
            obj = group[name]
            if isinstance(obj, h5py.Group):
                visit(obj, path + "/", depth + 1)
                continue
            if not isinstance(obj, h5py.Dataset):
                raise SchemaError(f"/{path} is a {type(obj).__name__}, not a group or dataset")
            if obj.is_virtual:
                raise SchemaError(f"/{path} is a virtual dataset (its data would come from other files)")
            if not _dtype_ok(obj.dtype, attribute=False):
                raise SchemaError(f"/{path} has dtype {obj.dtype} (object, opaque, variable-length or "
                                  "compound data is never written by paraflow_hpc)")
            if obj.shape is None or len(obj.shape) > MAX_NDIM:
                raise SchemaError(f"/{path} has shape {obj.shape}")
            plist = obj.id.get_create_plist()
            if plist.get_nfilters():
                raise SchemaError(f"/{path} is compressed or filtered; paraflow_hpc writes plain datasets")
            if plist.get_layout() not in (h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT):
                # chunked: a partly written one reads its missing chunks as the fill value, unnoticed
                raise SchemaError(f"/{path} is chunked; paraflow_hpc writes contiguous datasets")
            if plist.get_external_count():
                raise SchemaError(f"/{path} keeps its data in external raw files (outside this file and its "
                                  "checksum); paraflow_hpc files hold only their own data")
            nbytes = _nbytes(obj.shape, obj.dtype.itemsize)
            total += nbytes
            if nbytes > file_size or total > file_size:
                raise SchemaError(f"/{path} has shape {obj.shape} ({nbytes} bytes of {obj.dtype}): more data "
                                  f"than the whole file holds ({file_size} bytes)")
            if obj.id.get_storage_size() < nbytes:
                raise SchemaError(f"/{path} stores {obj.id.get_storage_size()} of its {nbytes} bytes: its data "
                                  "was never (completely) written; paraflow_hpc writes every dataset whole")
            _check_attrs(obj, "/" + path, file_size)
            datasets[path] = obj

    visit(f, "", 0)
    return datasets


def numeric(ds: h5py.Dataset, path: str) -> None:
    """Refuse a dataset that is not bool/int/uint/float (e.g. a byte string where numbers belong)."""
    if ds.dtype.kind not in "biuf":
        raise SchemaError(f"/{path} has dtype {ds.dtype}; numbers were expected")


def text_attr(attrs, name: str, where: str = "/", required: bool = True) -> str | None:
    """A string attribute (h5py returns str or bytes); :class:`SchemaError` if of another type."""
    if name not in attrs:
        if required:
            raise SchemaError(f"attribute {where}@{name} is missing")
        return None
    value = attrs[name]
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            raise SchemaError(f"attribute {where}@{name} is not UTF-8 text") from None
    if not isinstance(value, str):
        raise SchemaError(f"attribute {where}@{name} = {value!r} is not a string")
    return value


def int_attr(attrs, name: str, where: str = "/", required: bool = True) -> int | None:
    """An integer attribute (a numpy/Python int scalar, not a bool, float or string)."""
    if name not in attrs:
        if required:
            raise SchemaError(f"attribute {where}@{name} is missing")
        return None
    value = attrs[name]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise SchemaError(f"attribute {where}@{name} = {value!r} is not an integer")
    return int(value)
