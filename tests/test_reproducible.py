"""Same seed, same data, same result: also between a run that compiles the kernels and one
that loads them from Numba's cache."""

import os
import subprocess
import sys

import pytest

import fastnn

SCRIPT = r"""
import hashlib
import numpy as np
import fastnn

digest = lambda a: hashlib.md5(np.ascontiguousarray(a).tobytes()).hexdigest()
rng = np.random.default_rng(0)
sparse = (rng.random((2000, 100)) * (rng.random((2000, 100)) < 0.2)).astype(np.float32)
dense = rng.random((2000, 100)).astype(np.float32)
y = rng.integers(0, 10, 2000)
out = []
for sizes, m, X, kw in [([100, 16, 16, 10], 10, sparse, {}),  # sparse driver
                        ([100, 16, 16, 10], 10, dense, {}),  # neuron split
                        ([100, 64, 16, 10], 32, dense, dict(activation="relu", cost="log_loss")),
                        ([100, 16, 16, 10], 64, dense, dict(activation="tanh"))]:  # samples
    net = fastnn.Network(sizes, seed=0, **kw)
    net.SGD((X, y), 1, m, 0.1, quiet=True)
    out += [digest(net.parameters), digest(net.gradient(dense[:300], y[:300])),
            digest(net.feedforward(dense[:300])), digest(net.feedforward(dense[0]))]
# float64: softmax's exp once fused its multiply-adds differently when compiled than
# when loaded (the copies LLVM optimised inside different callers)
net = fastnn.Network([100, 32, 10], activation="relu", output="softmax", cost="log_loss",
                     seed=0, dtype=np.float64)
net.SGD((sparse, y), 1, 32, 0.1, quiet=True)
out += [digest(net.parameters), digest(net.feedforward(dense[:300]))]
from fastnn import MLPClassifier  # the optim driver (Adam), CSR inputs
est = MLPClassifier(hidden_layer_sizes=(24,), max_iter=1, random_state=0, dtype=np.float64)
est.fit(sparse[:600], y[:600])
out += [digest(c) for c in est.coefs_ + est.intercepts_]
print(" ".join(out))
"""


@pytest.mark.slow
def test_same_result_whether_kernels_are_compiled_or_loaded_from_the_cache(tmp_path):
    # Kernels once used LLVM's reassociation everywhere, which rewrote the sigmoid
    # derivative differently when a kernel was compiled than when it came from the cache:
    # the first run of a script trained to other weights than the runs after it.
    env = dict(
        os.environ,
        NUMBA_CACHE_DIR=str(tmp_path / "cache"),
        PYTHONPATH=os.path.dirname(os.path.dirname(fastnn.__file__)),
    )
    runs = [
        subprocess.run(
            [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=900
        )
        for _ in range(2)
    ]  # compiles, then loads
    for r in runs:
        assert r.returncode == 0, r.stderr
    assert any(tmp_path.joinpath("cache").rglob("*.nbc"))  # the second run had a cache
    assert runs[0].stdout == runs[1].stdout
