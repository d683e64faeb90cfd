"""MNIST loading: IDX parsing, search order, checksum-verified atomic download."""

import functools
import gzip
import http.server
import os
import shutil
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from fastnn import datasets
from fastnn.datasets import FILES, MNISTNotFoundError, load_mnist, read_idx


def write_idx(path, array, magic):
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(folder, n_train=12, n_test=5, seed=0):
    """A small, well-formed set of the four files."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for part, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        write_idx(folder / FILES[part + "_images"][0], images, 2051)
        write_idx(folder / FILES[part + "_labels"][0], labels, 2049)
        data[part] = (images, labels)
    return data


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.delenv("FASTNN_DATA", raising=False)
    monkeypatch.delenv("FASTNN_MNIST_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path


def test_load_good_files(clean_env):
    data = fake_mnist(clean_env / "d")
    (X, y), (Xt, yt) = load_mnist(clean_env / "d", dtype=np.uint8)
    assert X.shape == (12, 784) and X.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(X, data["train"][0].reshape(12, 784))
    assert np.array_equal(yt, data["test"][1])
    (Xf, _), _ = load_mnist(clean_env / "d", dtype=np.float64)
    np.testing.assert_array_equal(Xf, X / 255.0)
    assert 0.0 <= Xf.min() and Xf.max() <= 1.0
    tr, va, te = load_mnist(clean_env / "d", validation=4)
    assert len(tr[0]) == 8 and len(va[0]) == 4 and np.array_equal(va[1], y[8:])


def test_truncated_file_names_the_file(clean_env):
    fake_mnist(clean_env / "d")
    path = clean_env / "d" / FILES["train_images"][0]
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
        load_mnist(clean_env / "d")


def test_short_data_and_wrong_magic(clean_env):
    fake_mnist(clean_env / "d")
    path = clean_env / "d" / FILES["test_labels"][0]
    with gzip.open(path, "wb") as f:  # header promises 5 labels, file holds 3
        f.write(struct.pack(">II", 2049, 5) + bytes(3))
    with pytest.raises(ValueError, match="t10k-labels.*promises 5 bytes.*holds 3"):
        load_mnist(clean_env / "d")
    write_idx(path, np.zeros(5), 2051)  # an image magic number on a label file
    with pytest.raises(ValueError, match="wrong magic number 2051, expected 2049"):
        load_mnist(clean_env / "d")
    path.write_bytes(b"this is not gzip at all")
    with pytest.raises(ValueError, match="t10k-labels.*truncated or corrupt"):
        load_mnist(clean_env / "d")


def test_read_idx_plain_file(tmp_path):
    p = tmp_path / "x-idx1-ubyte"
    p.write_bytes(struct.pack(">II", 2049, 3) + bytes([1, 2, 3]))
    assert read_idx(p, 2049).tolist() == [1, 2, 3]


def test_search_order(clean_env, monkeypatch):
    fake_mnist(clean_env / "explicit", n_train=3)
    fake_mnist(clean_env / "env" / "mnist", n_train=4)
    fake_mnist(datasets.cache_dir(), n_train=5)
    monkeypatch.setenv("FASTNN_DATA", str(clean_env / "env"))
    assert len(load_mnist(clean_env / "explicit")[0][0]) == 3
    assert len(load_mnist()[0][0]) == 4
    monkeypatch.delenv("FASTNN_DATA")
    assert len(load_mnist()[0][0]) == 5


def test_missing_files_message(clean_env):
    (clean_env / "empty").mkdir()  # a folder without the files (one that does not exist
    with pytest.raises(MNISTNotFoundError) as e:  # is an error of its own: test_reliability)
        load_mnist(clean_env / "empty")
    msg = str(e.value)
    assert str(clean_env / "empty") in msg and str(datasets.cache_dir()) in msg
    assert "FASTNN_DATA" in msg and "download=True" in msg


@pytest.fixture
def server(tmp_path):
    """An HTTP server on 127.0.0.1 serving tmp_path/www."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


REAL_MNIST = datasets.find_mnist()  # looked up before any test changes the environment


def _real_mnist_dir():
    d = REAL_MNIST
    if d is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI needs FASTNN_DATA pointing at the shared data")
        pytest.skip("real MNIST not available")
    return d


def test_download_verifies_and_is_atomic(clean_env, server, monkeypatch):
    src = _real_mnist_dir()
    root, url = server
    for name, _ in FILES.values():
        shutil.copy(src / name, root / name)
    # a corrupt copy of one file: the download must fail and leave nothing behind
    good = (root / FILES["test_labels"][0]).read_bytes()
    (root / FILES["test_labels"][0]).write_bytes(good[:-10] + bytes(10))
    monkeypatch.setenv("FASTNN_MNIST_URL", url)
    with pytest.raises(OSError, match="t10k-labels.*does not match the official"):
        load_mnist(download=True)
    cached = sorted(p.name for p in datasets.cache_dir().iterdir())
    assert FILES["test_labels"][0] not in cached
    assert not [n for n in cached if n.endswith(".part")]
    (root / FILES["test_labels"][0]).write_bytes(good)
    (X, y), (Xt, yt) = load_mnist(download=True)
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    assert sorted(p.name for p in datasets.cache_dir().iterdir()) == sorted(
        n for n, _ in FILES.values()
    )


def test_real_mnist_matches_published_facts():
    src = _real_mnist_dir()
    (X, y), (Xt, yt) = load_mnist(src, dtype=np.uint8)
    assert X.shape == (60000, 784) and Xt.shape == (10000, 784)
    assert np.bincount(y).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(yt).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert yt[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    for name, md5 in FILES.values():
        assert datasets.md5sum(src / name) == md5


def test_import_fastnn_leaves_the_download_modules_unloaded():
    # urllib.request pulls in http.client and email: 30-60 ms of every start-up, for a
    # download that most processes never make
    code = (
        "import sys, fastnn; print('urllib.request' in sys.modules, 'http.client' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"], r.stderr
