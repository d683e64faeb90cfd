"""Benchmark runs of what a pipeline sees: whole SGD calls, a busy neighbour, cold starts.

Used by :func:`fastnn.bench.run_suite`; each measures a whole process or a
whole call rather than a bare epoch.
"""

import contextlib
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def compile_times(timeout=900):
    """Cold start in a fresh process: cold (empty kernel cache) and warm.

    Each child times, from its first line, ``import fastnn``, the first
    ``SGD`` epoch of the default 784-16-16-10 network (on 2,000 synthetic
    images as sparse as MNIST, so the sparse-input driver compiles as it
    does for MNIST) and a first ``predict``; the cache folder is a new
    temporary one.
    """
    code = (
        "import time\n"
        "t = time.perf_counter()\n"
        "import numpy as np, fastnn\n"
        "rng = np.random.default_rng(0)\n"
        "X = (rng.random((2000, 784)) < 0.19).astype(np.uint8) * 200\n"
        "y = np.arange(2000) % 10\n"
        "net = fastnn.Network([784, 16, 16, 10], seed=0)\n"
        "net.SGD((X, y), 1, 10, 3.0, quiet=True)\n"
        "net.predict(X[:10])\n"
        "print(time.perf_counter() - t)\n"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold", "warm"):
            r = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                env=env,
                timeout=timeout,
            )
            if r.returncode != 0:
                raise RuntimeError(f"cold-start child failed: {r.stderr[-2000:]}")
            out[label + "_s"] = float(r.stdout.strip().splitlines()[-1])
    return out


SGD_CALL_EPOCHS = 10


def sgd_call_runs(w, data):
    """W1 as a user runs it: ``SGD`` calls on uint8 pixels, preparation included.

    One call of 10 epochs (also with ``track_gradients=True``); 10 calls of
    one epoch (each validates and converts the data again); 10 calls of one
    epoch on data prepared once (``Network.prepare``, timed).  Times are per
    epoch.
    """
    from .bench import Run, _network

    X = np.round(data.X * 255).astype(np.uint8)  # as load_mnist(dtype=np.uint8) gives them
    y = data.y
    k = SGD_CALL_EPOCHS

    def fit(kind):
        def fn():
            net = _network(w)
            if kind.startswith("one call"):
                track = kind.endswith("track_gradients")
                net.SGD((X, y), k, w["batch"], w["eta"], quiet=True, track_gradients=track)
                return
            training = net.prepare((X, y)) if kind == "prepared" else (X, y)
            for _ in range(k):
                net.SGD(training, 1, w["batch"], w["eta"], quiet=True)

        return Run(fn, len(X) * k, 1.0 / k, note=f"{kind}, uint8 pixels", threads="all")

    return {
        "sgd-1x10": fit("one call"),
        "sgd-1x10-track": fit("one call, track_gradients"),
        "sgd-10x1": fit("ten calls"),
        "sgd-10x1-prep": fit("prepared"),
    }


@contextlib.contextmanager
def busy_processes(k):
    """``k`` processes spinning on the CPU (``while True: pass``) for the enclosed code."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(k)]
    try:
        time.sleep(0.5)  # let them start spinning
        yield
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()


def cold_start(data_dir=None, timeout=600):
    """Seconds from launching ``python -m fastnn train --epochs 1`` to the start of its first epoch.

    Measured as (launch to the ``Epoch 0`` line) minus the epoch's own
    steady-state time, which the same run reports; needs real MNIST.
    """
    cmd = [sys.executable, "-m", "fastnn", "train", "--epochs", "1"]
    if data_dir:
        cmd += ["--data-dir", str(data_dir)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first_epoch = None
    lines = []
    for line in p.stdout:
        lines.append(line)
        if line.startswith("Epoch 0") and first_epoch is None:
            first_epoch = time.perf_counter() - t0
    p.wait(timeout=timeout)
    if p.returncode != 0 or first_epoch is None:
        return None
    return dict(launch_to_first_epoch_end_s=first_epoch)
