"""Numba's cache cannot serve stale kernels, and it can be cleared."""

import os
import subprocess
import sys
import warnings

import pytest

from fastnn.kernels import cache
from helpers import copy_package

SCRIPT = r"""
import numpy as np
import fastnn
net = fastnn.Network([3, 4, 2], activation="tanh", dtype=np.float64, seed=0)
print(repr(net.feedforward(np.array([0.5, -1.0, 2.0])).tolist()))
"""


def _run(pkg_root, cache_dir, *args):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir), PYTHONPATH=str(pkg_root))
    r = subprocess.run(
        [sys.executable, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(pkg_root),
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_an_edit_in_one_kernel_module_recompiles_the_kernels_that_use_it(tmp_path):
    # forward_one lives in inference.py and compiles the activations of activations.py into
    # itself.  Numba alone checks only inference.py's own source, so after an edit to
    # activations.py it would load the old machine code from its cache (numba issue 1833).
    pkg = copy_package(tmp_path / "src")
    before = _run(pkg, tmp_path / "cache", "-c", SCRIPT)
    assert _run(pkg, tmp_path / "cache", "-c", SCRIPT) == before  # loaded from the cache
    act = pkg / "fastnn" / "kernels" / "activations.py"
    text = act.read_text()
    assert text.count("a[j] = np.tanh(a[j])") == 1
    act.write_text(text.replace("a[j] = np.tanh(a[j])", "a[j] = np.tanh(a[j]) * 2"))
    after = _run(pkg, tmp_path / "cache", "-c", SCRIPT)
    assert after != before
    assert any((tmp_path / "cache").rglob("*.nbi"))
    out = _run(pkg, tmp_path / "cache", "-m", "fastnn", "clear-cache")
    assert "removed" in out and not any((tmp_path / "cache").rglob("*.nb[ic]"))


def test_source_stamp_covers_every_kernel_module_and_the_layout():
    names = {os.path.basename(p) for p in cache._sources()}
    assert {"activations.py", "dense.py", "sparse.py", "lanes.py", "layout.py"} <= names
    assert len(cache.source_stamp()) == 64


def test_cache_falls_back_to_a_temporary_folder_with_one_warning(monkeypatch, tmp_path):
    # a read-only install without NUMBA_CACHE_DIR and an unwritable home: still caches
    monkeypatch.setattr(cache.tempfile, "gettempdir", lambda: str(tmp_path))
    monkeypatch.setattr(
        cache, "_writable", lambda d: d.startswith(str(tmp_path)) and os.makedirs(d) is None
    )
    cache.cache_dir.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            d = cache.cache_dir()
        assert d.startswith(str(tmp_path / "fastnn-numba-"))
        assert len(w) == 1 and "NUMBA_CACHE_DIR" in str(w[0].message)
    finally:
        cache.cache_dir.cache_clear()
