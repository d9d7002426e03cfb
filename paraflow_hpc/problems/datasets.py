"""Small offline classification data sets, seeded, split into train and test.

``ellipses`` and ``swissroll`` are the two-dimensional, two-class sets of
Haber & Ruthotto (2018), "Stable architectures for deep neural networks";
``digits`` is scikit-learn's bundled 8x8 digits (the MNIST-like set, no download).
Every generator is a pure function of (n_samples, seed).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Dataset:
    name: str
    x_train: np.ndarray   # (N, d) float64
    y_train: np.ndarray   # (N,) int64 class labels, or (N, k) float64 targets (n_classes = 0)
    x_test: np.ndarray    # (M, d); M = 0: no test split
    y_test: np.ndarray
    n_classes: int        # 0: regression targets

    @property
    def in_dim(self) -> int:
        return self.x_train.shape[1]

    @property
    def out_dim(self) -> int:
        """Outputs a model needs: one logit per class, or the targets' k."""
        return self.n_classes if self.n_classes else self.y_train.shape[1]


def _split(name, x, y, n_classes, test_fraction, rng) -> Dataset:
    order = rng.permutation(len(x))
    n_test = int(round(test_fraction * len(x)))
    test, train = order[:n_test], order[n_test:]
    return Dataset(name, x[train], y[train], x[test], y[test], n_classes)


def ellipses(n_samples: int, seed: int, test_fraction: float = 0.2) -> Dataset:
    """Two concentric elliptic regions: class 0 inside the inner ellipse, class 1 in the ring around it.

    Points are uniform in the box [-1, 1]^2 and labelled by the elliptic radius
    r = sqrt((x/a)^2 + (y/b)^2); a gap between the classes keeps the labels unambiguous.
    """
    rng = np.random.default_rng([seed, 101])
    a, b, inner, gap, outer = 1.0, 0.6, 0.55, 0.15, 1.2
    points = []
    while sum(len(p) for p in points) < n_samples:
        cand = rng.uniform(-1.0, 1.0, size=(2 * n_samples, 2))
        r = np.hypot(cand[:, 0] / a, cand[:, 1] / b)
        points.append(cand[(r < inner) | ((r > inner + gap) & (r < outer))])
    x = np.concatenate(points)[:n_samples]
    y = (np.hypot(x[:, 0] / a, x[:, 1] / b) > inner).astype(np.int64)
    return _split("ellipses", x, y, 2, test_fraction, rng)


def swissroll(n_samples: int, seed: int, test_fraction: float = 0.2) -> Dataset:
    """Two interleaved spirals (the "swiss roll"), one per class, with small radial noise."""
    rng = np.random.default_rng([seed, 102])
    t = np.sqrt(rng.uniform(0.0, 1.0, n_samples)) * 3.0 * np.pi
    label = rng.integers(0, 2, n_samples)
    radius = t / (3.0 * np.pi) + 0.02 * rng.standard_normal(n_samples)
    angle = t + np.pi * label
    x = np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return _split("swissroll", x, label.astype(np.int64), 2, test_fraction, rng)


def digits(n_samples: int, seed: int, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1797 8x8 digit images scaled to [0, 1]; ``n_samples`` <= 0 or > 1797 takes all."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng([seed, 103])
    bunch = load_digits()
    x, y = bunch.data.astype(np.float64) / 16.0, bunch.target.astype(np.int64)
    if 0 < n_samples < len(x):
        keep = rng.permutation(len(x))[:n_samples]
        x, y = x[keep], y[keep]
    return _split("digits", x, y, 10, test_fraction, rng)


DATASETS = {"ellipses": ellipses, "swissroll": swissroll, "digits": digits}


def load_dataset(name: str, n_samples: int, seed: int) -> Dataset:
    return DATASETS[name](n_samples, seed)
