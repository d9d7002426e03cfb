"""Writes the example data files (deterministic; run from the repository root):

    python docs/examples/make_data.py

moons.npz: two interleaved half circles, x (200, 2), y (200,) labels 0/1, plus x_test, y_test (100).
rings.csv: two noisy concentric rings, header x1,x2,label, 300 rows (no test split: layer-parallel
holds out 20%).
"""
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def moons(n, rng):
    label = rng.integers(0, 2, n)
    angle = rng.uniform(0.0, np.pi, n)
    x = np.where(label[:, None] == 0, np.c_[np.cos(angle), np.sin(angle)],
                 np.c_[1.0 - np.cos(angle), 0.5 - np.sin(angle)])
    return x + 0.1 * rng.standard_normal((n, 2)), label


def rings(n, rng):
    label = rng.integers(0, 2, n)
    angle = rng.uniform(0.0, 2 * np.pi, n)
    radius = np.where(label == 0, 0.4, 1.0) + 0.08 * rng.standard_normal(n)
    return np.c_[radius * np.cos(angle), radius * np.sin(angle)], label


if __name__ == "__main__":
    rng = np.random.default_rng(7)
    x, y = moons(200, rng)
    x_test, y_test = moons(100, rng)
    np.savez(os.path.join(HERE, "moons.npz"), x=x, y=y, x_test=x_test, y_test=y_test)
    x, y = rings(300, rng)
    np.savetxt(os.path.join(HERE, "rings.csv"), np.c_[x, y], delimiter=",", fmt=["%.6f", "%.6f", "%d"],
               header="x1,x2,label", comments="")
