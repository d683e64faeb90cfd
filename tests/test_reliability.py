"""Regression tests for what a fuzzing run found: each reproduces its case first.

Bad input ends in a clear exception naming the problem; no segfault, no silent NaN,
no lost model.  Cases that once crashed the process run in a subprocess.
"""

import gzip
import io
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastnn
from fastnn import Network, datasets, persistence
from fastnn.cli import main
from helpers import copy_package, make_data

SRC = os.path.dirname(os.path.dirname(fastnn.__file__))


def _child(code, timeout=600, **kw):
    """Run ``code`` in a fresh interpreter; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kw,
    )


# ---------------------------------------------------------------- 1. the parameter vector


def test_wrong_length_parameters_are_refused_not_written_out_of_bounds():
    # once: SGD and update_mini_batch wrote past the end of a 10-value vector (SIGSEGV)
    r = _child(
        """
        import numpy as np, fastnn
        net = fastnn.Network([9, 9, 9], seed=0)
        try:
            net.parameters = np.zeros(10, np.float32)
        except ValueError as e:
            print("refused:", e)
        X = np.random.default_rng(0).random((50, 9)).astype(np.float32)
        net.SGD((X, np.arange(50) % 9), 1, 10, 0.5, quiet=True)
        net.update_mini_batch((X[:10], np.arange(10) % 9), 0.5)
        print("trained", net.predict(X[:3]).shape)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "refused: parameters must be a vector of 180 values" in r.stdout
    assert "trained (3,)" in r.stdout


def test_parameter_assignment_copies_into_the_same_vector():
    net = Network([4, 3, 2], seed=0, dtype=np.float32)
    theta = net.parameters
    new = np.arange(net.n_params, dtype=np.float64) / 10
    net.parameters = new  # float64 into a float32 network: converted, same buffer
    assert net.parameters is theta and net.parameters.dtype == np.float32
    assert np.array_equal(net.weights[0].ravel(), new[:12].astype(np.float32))
    for bad, exc, match in [
        (np.zeros(net.n_params + 1), ValueError, "vector of 23 values"),
        (np.zeros((1, net.n_params)), ValueError, "vector of 23 values"),
        (np.full(net.n_params, np.nan), ValueError, "finite"),
        (np.full(net.n_params, 1e300), ValueError, "finite float32"),
        (np.array(["a"] * net.n_params), TypeError, "real numbers"),
    ]:
        with pytest.raises(exc, match=match):
            net.parameters = bad
    assert np.array_equal(net.parameters, new.astype(np.float32))


def test_sizes_cannot_be_changed_behind_the_kernels_back():
    net = Network([4, 3, 2], seed=0)
    net.sizes.append(7)  # a copy
    assert net.sizes == [4, 3, 2]
    with pytest.raises(AttributeError):
        net.sizes = [4, 30, 2]


# ---------------------------------------------------------------- 2. silent NaN


def test_overflow_in_a_later_layer_is_an_error_not_nan():
    # once: feedforward gave NaN, predict class 0 and predict_proba NaN rows, silently
    net = Network([1, 1, 1], activation="relu", seed=0)
    net.parameters = [1e20, 0, 1e20, 0]  # the hidden layer is fine, the output overflows
    x = np.ones((3, 1), np.float32)
    for call in (net.feedforward, net.predict, net.predict_proba, lambda a: net.feedforward(a[0])):
        with pytest.raises(ValueError, match="overflowed in float32"):
            call(x)


def test_sigmoid_of_an_infinite_pre_activation_is_not_nan():
    from fastnn.kernels import _exp_inplace

    for dtype in (np.float32, np.float64):
        a = np.array([np.inf, -np.inf, np.nan, 0.0], dtype)
        _exp_inplace(a, True)
        assert a[0] == 1 and 0 <= a[1] < 1e-37 and np.isnan(a[2]) and a[3] == 0.5


def test_training_on_unscaled_pixels_that_blows_up_is_reported():
    # once: relu/log-loss on 0-255 float pixels with eta 30 returned normally, every output NaN
    rng = np.random.default_rng(0)
    X = (rng.random((600, 64)) < 0.5) * rng.integers(0, 256, (600, 64)).astype(np.float32)
    y = rng.integers(0, 10, 600)
    net = Network([64, 32, 10], activation="relu", cost="log_loss", seed=0)
    before = net.parameters.copy()
    with pytest.raises(FloatingPointError, match="diverged in epoch 0"):
        net.SGD((X, y), 3, 10, 30.0, quiet=True)
    assert np.array_equal(net.parameters, before)


def test_an_exploding_cost_counts_as_divergence_even_with_finite_weights():
    # once: eta=1e6 ruined a network silently because the weights stayed finite
    X, y = make_data(400, 20, 4, dtype=np.float32)
    net = Network([20, 8, 4], cost="log_loss", seed=0)
    before = net.parameters.copy()
    with pytest.raises(FloatingPointError, match="diverged"):
        net.SGD((X, y), 2, 10, 1e6, quiet=True)
    assert np.array_equal(net.parameters, before)
    net.SGD((X, y), 2, 10, 0.5, quiet=True)  # an ordinary eta still trains


# ---------------------------------------------------------------- 3. memory from tiny inputs


@pytest.mark.parametrize("sizes", [[10**9, 10**9], [784, 2**31, 10], [2**40, 1]])
def test_huge_networks_are_refused_before_anything_is_allocated(sizes):
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(ValueError, match="at most 1,073,741,824"):
            Network(sizes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20 and time.perf_counter() - t < 1.0


def _write_npz(path, **fields):
    with open(path, "wb") as f:
        np.savez(f, **fields)


def _fields(net, **change):
    """The arrays ``net.save`` writes, with ``change`` applied (None: the key left out)."""
    f = net._model_fields()
    f.update(change)
    return {k: v for k, v in f.items() if v is not None}


def test_load_checks_the_sizes_against_the_parameters_before_building(tmp_path):
    # once: a 2.8 KB file declaring [20000, 20000, 10] allocated and initialised 4.8 GB
    net = Network([9, 9, 1], seed=0)
    path = tmp_path / "m.npz"
    _write_npz(path, **_fields(net, sizes=np.array([20000, 20000, 10])))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"m.npz.*sizes \[20000, 20000, 10\] need"):
            Network.load(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_load_refuses_a_member_that_declares_a_huge_array(tmp_path):
    net = Network([3, 2], seed=0)
    path = tmp_path / "m.npz"
    _write_npz(path, **_fields(net))
    # rewrite the parameters member with a header that declares 10**11 values
    buf = io.BytesIO()
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**11,)}
    np.lib.format.write_array_header_1_0(buf, header)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members["parameters.npy"] = buf.getvalue() + b"\0" * 64
    with zipfile.ZipFile(path, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    with pytest.raises(ValueError, match="declares 100,000,000,000 values"):
        Network.load(path)


# ---------------------------------------------------------------- 4. lost models


def test_save_writes_exactly_the_path_given_and_returns_it(tmp_path):
    net = Network([3, 2], seed=0)
    path = tmp_path / "model"
    assert net.save(path) == str(path)
    assert path.exists() and not (tmp_path / "model.npz").exists()
    assert np.array_equal(Network.load(path).parameters, net.parameters)
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # an ordinary file, not mkstemp's
    with pytest.raises(IsADirectoryError):
        net.save(tmp_path)
    with pytest.raises(FileNotFoundError):
        net.save(tmp_path / "missing" / "m.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_interrupted_save_leaves_the_earlier_model_whole(tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    good = Network([3, 2], seed=0)
    good.save(path)

    def dies_halfway(f, **fields):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # a kill, a full disk: the write stops here

    monkeypatch.setattr(persistence.np, "savez", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        Network([3, 2], seed=1).save(path)
    monkeypatch.undo()
    assert np.array_equal(Network.load(path).parameters, good.parameters)
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left


def test_cli_checks_the_save_target_before_training(tmp_path, capsys):
    for target, match in [
        (tmp_path / "missing" / "m.npz", "does not exist"),
        (tmp_path, "is a directory"),
    ]:
        t = time.perf_counter()
        assert main(["train", "--save", str(target), "--data-dir", str(tmp_path)]) == 2
        assert time.perf_counter() - t < 5  # no MNIST was even looked for
        err = capsys.readouterr().err
        assert match in err and "Traceback" not in err


# ---------------------------------------------------------------- 5. bad files


def _corpus(tmp_path):
    """Malformed model files: name -> path."""
    net = Network([3, 4, 2], seed=0)
    good = tmp_path / "good.npz"
    net.save(good)
    data = good.read_bytes()
    files = {
        "empty": b"",
        "truncated": data[: len(data) // 2],
        "corrupt": data[:100] + bytes(255 - b for b in data[100:300]) + data[300:],
        "text": b"hello, not a model\n",
    }
    out = {}
    for name, raw in files.items():
        (tmp_path / name).write_bytes(raw)
        out[name] = tmp_path / name
    np.save(tmp_path / "array.npy", net.parameters)
    out["npy"] = tmp_path / "array.npy"
    for name, change in {
        "missing_key": dict(cost=None),
        "all_nan": dict(parameters=np.full(net.n_params, np.nan, np.float32)),
        "float_sizes": dict(sizes=np.array([3.5, 4.0, 2.0])),
        "bad_version": dict(version=np.int64(7)),
        "bad_format": dict(format=np.str_("other")),
        "object_array": dict(activation=np.array([{"x": 1}], dtype=object)),
        "int_parameters": dict(parameters=np.zeros(net.n_params, np.int32)),
        "matrix_parameters": dict(parameters=np.zeros((1, net.n_params), np.float32)),
        "bad_activation": dict(activation=np.str_("softplus")),
        "negative_size": dict(sizes=np.array([3, -4, 2])),
    }.items():
        path = tmp_path / f"{name}.npz"
        _write_npz(path, **_fields(net, **change))
        out[name] = path
    return out


def test_every_malformed_model_file_gives_a_value_error_naming_it(tmp_path):
    for name, path in _corpus(tmp_path).items():
        with pytest.raises(ValueError) as e:
            Network.load(path)
        assert str(path) in str(e.value), name
    with pytest.raises(FileNotFoundError):
        Network.load(tmp_path / "nothing.npz")
    with pytest.raises(IsADirectoryError):
        Network.load(tmp_path)


def test_big_endian_parameters_are_converted(tmp_path):
    net = Network([3, 4, 2], seed=0, dtype=np.float64)
    path = tmp_path / "be.npz"
    _write_npz(path, **_fields(net, parameters=net.parameters.astype(">f8")))
    back = Network.load(path)
    assert back.parameters.dtype == np.float64 and np.array_equal(back.parameters, net.parameters)


def _idx(shape, data=None, magic=2051):
    head = struct.pack(">I", magic) + struct.pack(f">{len(shape)}I", *shape)
    if data is None:
        data = bytes(int(np.prod(shape)))
    return head + data


def test_malformed_idx_files_give_value_errors_naming_them(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, 7840, dtype=np.uint8).tobytes()
    cases = {
        "empty.gz": gzip.compress(b""),
        "short.gz": gzip.compress(b"\0\0"),
        "not_gzip.gz": b"plain bytes, not gzip",
        "truncated_gzip.gz": gzip.compress(_idx((10, 28, 28), data=noise))[:2000],
        "truncated_data.gz": gzip.compress(_idx((10, 28, 28))[:-5]),
        "trailing_data.gz": gzip.compress(_idx((10, 28, 28)) + b"extra"),
        "wrong_magic.gz": gzip.compress(_idx((10,), magic=2049)),
        "not_ubyte.gz": gzip.compress(b"\0\0\x0d\x01" + struct.pack(">I", 4) + bytes(16)),
        "header_only.gz": gzip.compress(struct.pack(">I", 2051) + b"\0\0"),
        # a small file whose header declares 4 GB: refused from the header alone
        "bomb.gz": gzip.compress(_idx((65535, 256, 256), data=b"")),
    }
    for name, raw in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        tracemalloc.start()
        try:
            with pytest.raises(ValueError) as e:
                datasets.read_idx(path, magic=2051)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert str(path) in str(e.value), name
        assert peak < 16 << 20, (name, peak)


def test_a_decompression_bomb_is_read_no_further_than_its_header_allows(tmp_path):
    # 100 MB of zeros compress to about 100 KB; the header says 10 images of 28x28
    path = tmp_path / "bomb.gz"
    path.write_bytes(gzip.compress(_idx((10, 28, 28)) + bytes(100 << 20)))
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="more: truncated or corrupt"):
            datasets.read_idx(path, magic=2051)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20


# ---------------------------------------------------------------- 6. environment


@pytest.mark.slow
def test_a_process_forked_after_training_fails_clearly_or_trains_never_dies():
    # once: a fork child of a process that had trained was killed by the GNU OpenMP runtime
    r = _child(
        """
        import multiprocessing as mp, numba, numpy as np, fastnn

        X = np.random.default_rng(0).random((200, 30)).astype(np.float32)
        y = np.arange(200) % 4

        def child(q):
            net = fastnn.Network([30, 8, 4], seed=0)
            out = [net.predict(X[:5]).tolist()]  # inference works in any case
            try:
                net.SGD((X, y), 1, 10, 0.5, quiet=True)
                out.append("trained")
            except RuntimeError as e:
                out.append(str(e))
            q.put(out)

        fastnn.Network([30, 8, 4], seed=0).SGD((X, y), 1, 10, 0.5, quiet=True)
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        out = q.get(timeout=120)
        p.join(60)
        print(numba.threading_layer(), p.exitcode, out)
        """,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    layer, code, rest = r.stdout.split(" ", 2)
    assert code == "0"
    if layer == "omp":
        assert "spawn" in rest and "forkserver" in rest
    else:
        assert "trained" in rest


@pytest.mark.slow
def test_ctrl_c_stops_a_long_epoch_promptly_with_whole_steps():
    # Ctrl-C as in a terminal: a runner started in the background (`cmd &` without job
    # control) hands its children SIGINT ignored, and Python then installs no handler
    code = """
        import signal, time, numpy as np, fastnn
        signal.signal(signal.SIGINT, signal.default_int_handler)
        rng = np.random.default_rng(0)
        X = rng.random((60000, 784), dtype=np.float32)
        y = rng.integers(0, 10, 60000)
        net = fastnn.Network([784, 256, 10], seed=0)
        net.SGD((X[:100], y[:100]), 1, 10, 0.1, quiet=True)  # compiles
        t = time.perf_counter()
        net.SGD((X, y), 1, 10, 0.1, quiet=True)
        print("epoch", time.perf_counter() - t, flush=True)
        try:
            net.SGD((X, y), 100, 10, 0.1, quiet=True)
        except KeyboardInterrupt:
            print("interrupted", time.perf_counter(), np.isfinite(net.parameters).all(),
                  flush=True)
    """
    env = dict(os.environ, PYTHONPATH=SRC)
    p = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = p.stdout.readline()
    assert line.startswith("epoch"), p.stderr.read()
    epoch = float(line.split()[1])
    time.sleep(min(1.0, epoch / 3))
    sent = time.perf_counter()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert "interrupted" in out and out.split()[-1] == "True", (p.returncode, out, err)
    # the child's clock at the interrupt (CLOCK_MONOTONIC on Linux, one clock for both;
    # the process's exit afterwards takes 0.3-1 s here and is not what is tested)
    waited = float(out.split()[-2]) - sent
    assert waited < max(0.5, epoch / 4), (waited, epoch)  # not the end of the epoch


@pytest.mark.parametrize("command", ["--help", "clear-cache"])
def test_a_closed_pipe_and_ctrl_c_end_the_cli_without_a_traceback(command, tmp_path):
    root = SRC
    if command == "clear-cache":  # on a copy: it empties every cache of the package it runs
        root = str(copy_package(tmp_path))
    r = subprocess.Popen(
        [sys.executable, "-m", "fastnn", command],
        env=dict(os.environ, PYTHONPATH=root, NUMBA_CACHE_DIR=str(tmp_path / "cache")),
        cwd=root,  # `-m` puts the working directory first on sys.path
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    r.stdout.close()  # like `| head -0`
    err = r.stderr.read().decode()
    r.wait(60)
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_ctrl_c_in_the_cli_prints_one_line_not_a_traceback(monkeypatch, capsys):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets, "load_mnist", interrupted)
    assert main(["train"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


# ---------------------------------------------------------------- 7. small validation gaps


@pytest.mark.parametrize(
    "sizes",
    [[3.5, 2], [True, 2], ["3", 2], [784, -16, 10], [float("inf"), 2], [2**63, 2], [np.nan, 1]],
)
def test_sizes_must_be_positive_integers(sizes):
    with pytest.raises((ValueError, TypeError), match="sizes"):
        Network(sizes)


def test_numpy_integer_sizes_are_fine():
    assert Network(np.array([4, 3, 2])).sizes == [4, 3, 2]


def test_dtype_none_is_refused():
    with pytest.raises(TypeError, match="dtype"):
        Network([3, 2], dtype=None)


def test_too_large_float64_input_for_a_float32_network_is_named_as_such():
    net = Network([3, 2], seed=0)
    X = np.array([[1e39, 0, 0]])
    for call in (net.predict, net.feedforward, lambda a: net.feedforward(a[0])):
        with pytest.raises(ValueError, match="too large for float32"):
            call(X)


def test_an_explicit_data_dir_that_does_not_exist_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTNN_DATA", str(tmp_path))
    with pytest.raises(datasets.MNISTNotFoundError, match="nowhere.*does not exist"):
        datasets.load_mnist(tmp_path / "nowhere")


@pytest.mark.parametrize("validation", [1.5, "10", None])
def test_validation_must_be_a_bool_or_a_whole_number(validation):
    with pytest.raises(TypeError, match="validation"):
        datasets.load_mnist(validation=validation)


def test_cli_sizes_keep_their_sign():
    from fastnn.cli import _sizes

    assert _sizes("784,16,10") == _sizes("784-16-10") == [784, 16, 10]
    for bad in ("784,-16,10", "784,,10", "784", "a,b", "784,0,10"):
        with pytest.raises(Exception, match="sizes"):
            _sizes(bad)


def test_bench_arguments_are_checked_before_anything_runs(tmp_path, capsys):
    for args, match in [
        (["--compare", str(tmp_path / "missing.json")], "missing.json"),
        (["--workloads", "W9"], "unknown W9"),
        (["--contenders", "fastnn-f16"], "unknown fastnn-f16"),
    ]:
        t = time.perf_counter()
        assert main(["bench", "--quick", "--no-compile", *args]) == 2
        assert time.perf_counter() - t < 5
        assert match in capsys.readouterr().err
