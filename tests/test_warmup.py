"""``python -m fastnn warmup``: compiling ahead of time fills the cache a later process loads."""

import json
import os
import subprocess
import sys

import pytest

from fastnn.warmup import warmup

# A process that uses the inference kernels and reports, per kernel, whether it
# compiled (cache misses) or loaded (cache hits).
_USE = """
import json, numpy as np, fastnn
from fastnn.kernels import dense, inference
X = (np.random.default_rng(1).random((200, 784)) < 0.2).astype(np.uint8) * 255
net = fastnn.Network([784, 16, 16, 10], seed=0)
net.predict(X[:20]); net.predict(X); net.feedforward(X[0]); net.evaluate((X, np.arange(200) % 10))
stats = {}
# one block of rows, blocks in parallel, one sample
for f in (dense._forward_chunk, inference._forward, inference.forward_one):
    s = f.stats
    stats[f.__name__] = [sum(s.cache_hits.values()), sum(s.cache_misses.values())]
print(json.dumps(stats))
"""


def test_unknown_group_and_dtype_are_named():
    with pytest.raises(ValueError, match="unknown kernel groups \\['nope'\\]"):
        warmup(groups=("nope",), progress=None)
    with pytest.raises(ValueError, match="float32 or float64, got int64"):
        warmup(dtypes=("int64",), groups=("inference",), progress=None)


@pytest.mark.slow
def test_warmup_fills_the_cache_a_later_process_loads(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-m", "fastnn", "warmup", "--groups", "inference"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert str(tmp_path) in lines[0]
    assert (
        lines[1].startswith("inference float32") and lines[1].split()[2].replace(".", "").isdigit()
    )
    assert lines[-1].startswith("done in")
    r = subprocess.run(
        [sys.executable, "-c", _USE], capture_output=True, text=True, env=env, timeout=600
    )
    assert r.returncode == 0, r.stderr
    stats = json.loads(r.stdout.splitlines()[-1])
    for name, (hits, misses) in stats.items():
        assert hits >= 1 and misses == 0, (name, hits, misses)


# A process that fits the estimators on dense and on mostly-zero inputs and prints how
# many kernels it compiled and saved to the cache.
_FIT = """
import warnings, numpy as np
warnings.simplefilter("ignore")
from fastnn import MLPClassifier
rng = np.random.default_rng(0)
y = np.arange(300) % 10
dense = rng.normal(size=(300, 784)).astype(np.float32)
sparse = ((rng.random((300, 784)) < 0.2) * rng.integers(1, 256, (300, 784))).astype(np.uint8)
for X in (dense, sparse):
    MLPClassifier(hidden_layer_sizes=(16,), batch_size=20, max_iter=2).fit(X, y)
"""


@pytest.mark.slow
def test_the_optim_group_warms_the_estimators_on_dense_and_sparse_inputs(tmp_path):
    """A first ``MLPClassifier`` fit after ``warmup --groups optim`` compiles nothing, on
    dense inputs as on mostly-zero ones (the group's dense call once took the CSR path)."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    cmd = [sys.executable, "-m", "fastnn", "warmup", "--groups", "optim"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    env["NUMBA_DEBUG_CACHE"] = "1"
    r = subprocess.run(
        [sys.executable, "-c", _FIT], capture_output=True, text=True, env=env, timeout=900
    )
    assert r.returncode == 0, r.stderr
    assert "data loaded" in r.stdout + r.stderr
    saved = [line for line in (r.stdout + r.stderr).splitlines() if "data saved" in line]
    assert saved == []


_BLAS = """
import sys, numba, numpy as np, fastnn
X = (np.random.default_rng(1).random((20, 784)) < 0.2).astype(np.uint8) * 255
fastnn.Network([784, 16, 16, 10], seed=0).predict(X)
print("scipy.linalg" in sys.modules)
from numba.np import arraymath
print(arraymath._HAVE_BLAS)
dot = numba.njit(lambda a, b: np.dot(a, b))
a = np.arange(6.0).reshape(2, 3)
print(np.array_equal(dot(a, a.T), a @ a.T))
"""


def test_first_kernel_load_leaves_scipy_linalg_unimported_and_blas_working():
    # Numba's import-time BLAS check imported scipy.linalg (0.2-0.25 s of every warm start);
    # fastnn's check finds the module without importing it, and np.dot still compiles and runs
    r = subprocess.run([sys.executable, "-c", _BLAS], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["False", "True", "True"]


def test_blas_check_imports_only_where_it_cannot_find_the_module_file():
    code = (
        "import sys, fastnn\n"
        "from fastnn.kernels import _startup\n"
        "from numba.np import linalg\n"
        "linalg.ensure_blas()\n"
        "print('scipy.linalg' in sys.modules)\n"
        "_startup._cython_blas_findable = lambda: False  # a zipped or frozen install\n"
        "linalg.ensure_blas()  # Numba's own check, which imports\n"
        "print('scipy.linalg.cython_blas' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["False", "True"]
