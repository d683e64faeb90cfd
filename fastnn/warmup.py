"""Compile the kernels ahead of time: ``python -m fastnn warmup``.

A process with an empty kernel cache compiles each kernel it meets (about
half a minute for a first ``SGD`` epoch and ``predict`` on the 2-core CI
machine); later processes load them from the cache in under a second.  Run
this once where the cache will live (a Docker build step, a cluster's
start-up script, a CI cache) to pay the compile time there.  Compiled
kernels are specific to the CPU model (see the README's "Kernel cache").

Each group is compiled by training a tiny network through the public API on
small synthetic data, so the signatures compiled are the ones real calls use:
``uint8`` pixels and arrays of the working dtype, C-contiguous.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

# group name -> (what it covers, layer sizes, batch, driver)
GROUPS = {
    "inference": ("predict, feedforward, evaluate", [784, 16, 16, 10], None, None),
    "sparse": ("the sparse-input driver (MNIST-like inputs)", [784, 16, 16, 10], 10, "sparse"),
    "split": ("the neuron-split driver (dense inputs, small batches)", [784, 30, 10], 10, "split"),
    "hybrid": ("the hybrid driver (wide first layers)", [784, 64, 10], 16, "hybrid"),
    "samples": ("the per-sample driver (everything else)", [784, 16, 10], 10, "samples"),
    "gradient": ("cost, gradient and update_mini_batch", [784, 16, 10], None, None),
    "optim": ("momentum/Adam and the scikit-learn estimators", [784, 16, 10], 10, None),
    "inspect": ("fastnn.inspect's input gradient (not in the defaults)", [784, 16, 10], None, None),
}
DEFAULT_GROUPS = ("inference", "sparse", "split", "hybrid", "samples", "gradient", "optim")


def _data(n=64, n_in=784, n_out=10):
    """``n`` MNIST-like images (19% non-zero ``uint8`` pixels) and labels."""
    rng = np.random.default_rng(0)
    X = ((rng.random((n, n_in)) < 0.19) * rng.integers(1, 256, (n, n_in))).astype(np.uint8)
    return X, np.arange(n) % n_out


def _compile_group(name, dtype):
    from .network import Network

    _, sizes, batch, driver = GROUPS[name]
    X, y = _data(n_in=sizes[0], n_out=sizes[-1])
    net = Network(sizes, dtype=dtype, seed=0)
    if driver is not None:
        net.SGD((X, y), 1, batch, 0.1, quiet=True, _driver=driver)
        net.SGD((X.astype(dtype) / 255, y), 1, batch, 0.1, quiet=True, _driver=driver)
    elif name == "optim":
        from .kernels import optim

        net = Network(sizes, cost="log_loss", dtype=dtype, seed=0)
        Xf = np.ascontiguousarray(X.astype(dtype) / 255)
        # the CSR path (19% non-zero) from pixels and from floats (the estimators' form),
        # then the dense path
        for inputs in (X, Xf, Xf + 0.5):
            net.SGD((inputs, y), 1, batch, 0.01, quiet=True, optimizer="adam")
        T = np.eye(sizes[-1], dtype=dtype)[y]
        buf = optim.optim_buffers(sizes, len(X), dtype)
        rows = np.arange(len(X), dtype=np.int64)
        grad = np.empty(net.n_params)
        optim.objective(
            *net._kernel_args()[:6], Xf, T, np.ones(len(X), dtype), rows, buf, 0.0, grad
        )
        from .kernels.shuffle import shuffled

        shuffled(rows, np.random.RandomState(0))  # the estimators' sample order
    elif name == "inspect":
        from . import inspect

        inspect.input_gradient(net, X[:4], y[:4])
    elif name == "inference":
        for inputs in (X, X.astype(dtype) / 255):
            net.predict(inputs)  # one block: serial
            net.predict(np.concatenate([inputs, inputs]))  # blocks in parallel
            net.feedforward(inputs[0])
        net.evaluate((X, y))
    else:
        Xf = X.astype(dtype) / 255
        net.cost(Xf, y)
        net.gradient(Xf, y)
        net.update_mini_batch((Xf[:10], y[:10]), 0.1)


def warmup(
    dtypes=("float32",),
    groups=DEFAULT_GROUPS,
    progress: Callable[[str], None] | None = print,
) -> dict:
    """Compile the kernel ``groups`` for each of ``dtypes`` into the kernel cache.

    Returns ``{(group, dtype): seconds}``.  ``progress`` gets one line per
    group as it finishes (``None``: silent).  Groups already in the cache
    load in well under a second each.
    """
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"unknown kernel groups {unknown}; choose from {list(GROUPS)}")
    times = {}
    for dtype in dtypes:
        dtype = np.dtype(dtype).name
        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        for g in groups:
            t = time.perf_counter()
            _compile_group(g, dtype)
            times[g, dtype] = time.perf_counter() - t
            if progress is not None:
                progress(f"{g:9s} {dtype:8s} {times[g, dtype]:6.1f} s  {GROUPS[g][0]}")
    return times
