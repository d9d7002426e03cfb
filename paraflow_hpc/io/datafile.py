"""Users' data files for the training methods (``--data FILE``): HDF5, NPZ or CSV, one layout.

=========== =========================== ==========================================================
name        shape, dtype                meaning
=========== =========================== ==========================================================
``x``       (n, d) float (1-D: d = 1)   features, one sample per row, finite
``y``       (n,) integer                class labels 0..C-1 (C = max + 1, at least 2)
            or (n, k) float             regression targets (1-D float: k = 1)
``x_test``  (m, d), optional            a test split, same features
``y_test``  like ``y``, optional        its labels (required with ``x_test``)
=========== =========================== ==========================================================

HDF5: datasets with these names at the root; NPZ: arrays with these names (``numpy.savez``).
CSV: one sample per row, the last column the label, comma-separated; a header row is optional
(detected: a first row that is not all numbers); the labels are integer classes when every one is
a whole number, else one float target; a CSV holds no test split. Every rank reads the file
itself (small data sets; the same bytes give every rank the same arrays). Problems are one
:class:`~paraflow_hpc.config.ConfigError` naming the file, what is wrong and the fix.
"""
from __future__ import annotations

import csv
import os

import numpy as np

from ..config import ConfigError
from ..problems.datasets import Dataset

NAMES = ("x", "y", "x_test", "y_test")
LAYOUT = "docs/getting_started.md, 'The data file layout'"


def _bad(path: str, what: str, fix: str = f"see the layout in {LAYOUT}"):
    raise ConfigError(f"data file {path!r}: {what}; {fix}")


def _read_hdf5(path: str) -> dict:
    import h5py

    out = {}
    try:
        with h5py.File(path, "r") as f:
            for name in NAMES:
                if name in f:
                    if not isinstance(f[name], h5py.Dataset):
                        _bad(path, f"{name!r} is a group, not a dataset")
                    out[name] = f[name][()]
    except OSError as err:
        _bad(path, f"cannot be read as HDF5 ({err})")
    return out


def _read_npz(path: str) -> dict:
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in NAMES if name in f.files}
    except (OSError, ValueError) as err:
        _bad(path, f"cannot be read as NPZ ({err})")


def _read_csv(path: str) -> dict:
    try:
        with open(path, newline="") as fh:
            rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        _bad(path, f"cannot be read as CSV ({err})")
    if rows:
        try:
            [float(c) for c in rows[0]]
        except ValueError:
            rows = rows[1:]  # a header
    if not rows:
        _bad(path, "holds no data rows")
    width = len(rows[0])
    if width < 2:
        _bad(path, "has one column; the last column is the label, the ones before it the features")
    try:
        table = np.array([[float(c) for c in row] for row in rows if len(row) == width])
    except ValueError as err:
        _bad(path, f"holds a cell that is not a number ({err})")
    if len(table) != len(rows):
        line = next(i for i, row in enumerate(rows) if len(row) != width)
        _bad(path, f"data row {line + 1} has {len(rows[line])} columns, the first {width}")
    labels = table[:, -1]
    whole = np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))
    return {"x": table[:, :-1], "y": labels.astype(np.int64) if whole else labels}


def _features(path, name, x) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.ndim not in (1, 2):
        _bad(path, f"{name!r} has dtype {x.dtype} and shape {x.shape}", "store the features as floats, (n, d)")
    x = x.astype(np.float64).reshape(len(x), -1)
    if not len(x) or not x.shape[1]:
        _bad(path, f"{name!r} is empty (shape {x.shape})")
    if not np.all(np.isfinite(x)):
        _bad(path, f"{name!r} holds {int(np.sum(~np.isfinite(x)))} non-finite values", "remove or impute them")
    return x


def _labels(path, name, y, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape[:1] != (n,):
        _bad(path, f"{name!r} has shape {y.shape} for {n} samples", "give one label (or target row) per sample")
    if y.dtype.kind in "iu":
        if y.ndim != 1:
            _bad(path, f"integer {name!r} has shape {y.shape}", "class labels are one integer per sample, (n,)")
        if y.min() < 0:
            _bad(path, f"{name!r} holds the negative label {y.min()}", "number the classes 0..C-1")
        return y.astype(np.int64)
    if y.dtype.kind != "f" or y.ndim not in (1, 2):
        _bad(path, f"{name!r} has dtype {y.dtype} and shape {y.shape}",
             "labels are integers (n,), regression targets floats (n, k)")
    if not np.all(np.isfinite(y)):
        _bad(path, f"{name!r} holds non-finite values", "remove those samples")
    return y.astype(np.float64).reshape(n, -1)


def read_data(path: str) -> Dataset:
    """The data set in ``path``: :class:`Dataset` with ``n_classes`` = C (labels) or 0 (targets)."""
    if not os.path.isfile(path):
        _bad(path, "does not exist" if not os.path.exists(path) else "is not a file",
             f"give an existing file (relative to {os.getcwd()})")
    ext = os.path.splitext(path)[1].lower()
    readers = {".h5": _read_hdf5, ".hdf5": _read_hdf5, ".npz": _read_npz, ".csv": _read_csv}
    if ext not in readers:
        _bad(path, f"has the extension {ext or '(none)'!r}", "use .h5/.hdf5, .npz or .csv")
    arrays = readers[ext](path)
    for name in ("x", "y"):
        if name not in arrays:
            _bad(path, f"has no {name!r} (found: {', '.join(sorted(arrays)) or 'none of x, y, x_test, y_test'})")
    if ("x_test" in arrays) != ("y_test" in arrays):
        _bad(path, "has only one of x_test, y_test", "give both or neither")
    x = _features(path, "x", arrays["x"])
    y = _labels(path, "y", arrays["y"], len(x))
    if "x_test" in arrays:
        x_test = _features(path, "x_test", arrays["x_test"])
        y_test = _labels(path, "y_test", arrays["y_test"], len(x_test))
        if x_test.shape[1] != x.shape[1]:
            _bad(path, f"x_test has {x_test.shape[1]} features, x {x.shape[1]}", "use the same features")
        if (y_test.dtype.kind == "i") != (y.dtype.kind == "i") or (y.ndim == 2 and y_test.shape[1] != y.shape[1]):
            _bad(path, f"y_test ({y_test.dtype}, {y_test.shape}) does not match y ({y.dtype}, {y.shape})")
    else:
        x_test, y_test = np.empty((0, x.shape[1])), y[:0]
    n_classes = 0
    if y.dtype.kind == "i":
        n_classes = int(max(y.max(), y_test.max() if len(y_test) else 0)) + 1
        if n_classes < 2:
            _bad(path, "holds one class only", "a classification set needs labels of at least two classes")
    name = os.path.basename(path)
    return Dataset(name, x, y, x_test, y_test, n_classes)


def split_off_test(data: Dataset, fraction: float = 0.2, seed: int = 0) -> Dataset:
    """``data`` with ``fraction`` of its samples held out as the test split when it has none
    (a fixed permutation of ``seed``, independent of the run's seed)."""
    if len(data.x_test):
        return data
    order = np.random.default_rng(seed).permutation(len(data.x_train))
    n_test = max(1, int(round(fraction * len(order))))
    test, train = order[:n_test], order[n_test:]
    if not len(train):
        raise ConfigError(f"data file {data.name!r}: {len(order)} sample(s) are too few to hold out a test split; "
                          "give more samples or x_test, y_test")
    return Dataset(data.name, data.x_train[train], data.y_train[train], data.x_train[test], data.y_train[test],
                   data.n_classes)
