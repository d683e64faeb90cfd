"""Shared test data and parameter lists (imported by the test modules)."""

import os
import shutil

import numpy as np

import fastnn

COMBOS = [  # (hidden activation, output activation, cost)
    (h, o, c)
    for h in ("sigmoid", "relu", "tanh")
    for o, c in (
        ("sigmoid", "quadratic"),
        ("softmax", "quadratic"),
        ("sigmoid", "cross_entropy"),
        ("softmax", "log_loss"),
    )
]


def make_data(n, n_in, n_out, seed=0, dtype=np.float64, density=0.4):
    """Seeded inputs in [0, 1), a fraction ``density`` of them non-zero, and random labels."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_in)) * (rng.random((n, n_in)) < density)
    return X.astype(dtype), rng.integers(0, n_out, n)


def copy_package(root):
    """A copy of the fastnn package in ``root/fastnn``, without its compiled caches, for a
    subprocess that may edit or clear it (run it with ``PYTHONPATH`` and ``cwd`` at
    ``root``); returns ``root``."""
    shutil.copytree(
        os.path.dirname(fastnn.__file__),
        os.path.join(root, "fastnn"),
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    return root
