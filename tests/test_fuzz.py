"""Property-based fuzzing of the documented entry points (hypothesis).

Every call on small random input ends in one of two ways: a ValueError or
TypeError (FloatingPointError for divergence) with a message, or finite
parameters and valid outputs.  Never a crash: the cases most likely to crash
the process run in a subprocess (the last test).
"""

import gzip
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fastnn  # noqa: E402
from fastnn import Network, datasets  # noqa: E402

FUZZ = settings(
    max_examples=int(os.environ.get("FASTNN_FUZZ_EXAMPLES", 60)),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
ERRORS = (ValueError, TypeError)

size = st.one_of(
    st.integers(-3, 12),
    st.sampled_from([0, 2**31, 2**63, 10**12]),
    st.floats(allow_nan=True),
    st.booleans(),
    st.text(max_size=2),
)
sizes = st.one_of(st.lists(size, max_size=5), st.none(), st.text(max_size=5), st.integers())
names = st.sampled_from(
    [
        "sigmoid",
        "relu",
        "tanh",
        "softmax",
        "quadratic",
        "cross_entropy",
        "log_loss",
        "scaled",
        "standard",
        "",
        "x",
        None,
    ]
)
floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


def _message(e):
    assert str(e), f"{type(e).__name__} without a message"


@FUZZ
@given(sizes, names, names, names, names, st.sampled_from([np.float32, np.float64, None, int]))
def test_construction(sizes, activation, output, cost, init, dtype):
    try:
        net = Network(
            sizes, activation=activation, output=output, cost=cost, init=init, dtype=dtype, seed=0
        )
    except ERRORS as e:
        _message(e)
        return
    assert net.parameters.shape == (net.n_params,) and np.isfinite(net.parameters).all()
    assert net.sizes == [int(s) for s in sizes]


def _array(draw, shape, allow_bad):
    kind = draw(st.sampled_from(["float32", "float64", "uint8", "int16"]))
    values = draw(
        st.lists(
            floats if allow_bad else st.floats(-5, 5),
            min_size=int(np.prod(shape)),
            max_size=int(np.prod(shape)),
        )
    )
    a = np.array(values, dtype=np.float64).reshape(shape)
    if kind in ("uint8", "int16"):
        a = np.nan_to_num(a, nan=0, posinf=0, neginf=0).clip(0, 255).astype(kind)
    else:
        with np.errstate(over="ignore"):
            a = a.astype(kind)
    return a


@st.composite
def training_case(draw):
    n_in = draw(st.integers(1, 5))
    hidden = draw(st.lists(st.integers(1, 6), max_size=2))
    n_out = draw(st.integers(1, 4))
    n = draw(st.integers(1, 25))
    X = _array(draw, (n, n_in), draw(st.booleans()))
    y = np.array(draw(st.lists(st.integers(-1, n_out), min_size=n, max_size=n)))
    combo = draw(
        st.sampled_from([("sigmoid", "quadratic"), ("relu", "log_loss"), ("tanh", "cross_entropy")])
    )
    batch = draw(st.one_of(st.integers(-1, 40), st.floats(0, 5)))
    eta = draw(st.one_of(st.floats(-1, 100), st.sampled_from([0.0, 1e6, float("nan")])))
    epochs = draw(st.integers(0, 3))
    return [n_in, *hidden, n_out], combo, X, y, batch, eta, epochs


@FUZZ
@given(training_case(), st.sampled_from([np.float32, np.float64]))
def test_sgd_and_predict(case, dtype):
    sizes, (act, cost), X, y, batch, eta, epochs = case
    net = Network(sizes, activation=act, cost=cost, dtype=dtype, seed=0)
    try:
        h = net.SGD((X, y), epochs, batch, eta, quiet=True)
    except (*ERRORS, FloatingPointError) as e:
        _message(e)
    else:
        assert len(h["train_cost"]) == epochs and np.isfinite(h["train_cost"]).all()
    assert np.isfinite(net.parameters).all()
    try:
        pred = net.predict(X)
        proba = net.predict_proba(X)
    except ERRORS as e:
        _message(e)
        return
    assert ((pred >= 0) & (pred < sizes[-1])).all()
    assert np.isfinite(proba).all() and np.allclose(proba.sum(axis=1), 1, atol=1e-4)


@FUZZ
@given(st.integers(0, 5000), st.binary(min_size=1, max_size=16), st.integers(0, 3))
def test_load_of_a_damaged_model_file(tmp_path_factory, at, junk, how):
    path = tmp_path_factory.mktemp("m") / "m.npz"
    net = Network([4, 3, 2], seed=0)
    assert net.save(path) == str(path)
    raw = bytearray(path.read_bytes())
    at %= len(raw)
    if how == 0:  # overwrite bytes
        raw[at : at + len(junk)] = junk
    elif how == 1:  # truncate
        raw = raw[:at]
    elif how == 2:  # insert
        raw[at:at] = junk
    else:  # flip one bit
        raw[at] ^= 1 << (junk[0] % 8)
    path.write_bytes(bytes(raw))
    try:
        back = Network.load(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    # the damage missed everything that matters (zip metadata, padding): a whole network
    assert np.isfinite(back.parameters).all() and back.n_params == 23


@FUZZ
@given(st.binary(max_size=64), st.booleans())
def test_idx_reader_on_random_bytes(tmp_path_factory, raw, compress):
    path = tmp_path_factory.mktemp("idx") / ("f.gz" if compress else "f")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    try:
        a = datasets.read_idx(path)
    except ValueError as e:
        assert str(path) in str(e)
        return
    assert a.dtype == np.uint8


@pytest.mark.slow
def test_crash_prone_cases_in_a_subprocess():
    # hostile parameter vectors and inputs straight at the kernels' doorstep: the process
    # must survive every one (a segfault would end it with a negative return code)
    code = """
        import numpy as np
        from hypothesis import given, settings, strategies as st
        import fastnn

        @settings(max_examples=150, deadline=None)
        @given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=60),
               st.sampled_from(["float32", "float64", "int8"]), st.integers(1, 40))
        def case(values, kind, batch):
            net = fastnn.Network([5, 4, 3], activation="relu", cost="log_loss", seed=0)
            X = np.random.default_rng(0).random((30, 5)).astype(np.float32)
            y = np.arange(30) % 3
            try:
                with np.errstate(all="ignore"):
                    net.parameters = np.array(values).astype(kind)
            except (ValueError, TypeError):
                pass
            try:
                net.SGD((X, y), 1, batch, 0.1, quiet=True)
                net.update_mini_batch((X[:batch], y[:batch]), 0.1)
            except (ValueError, TypeError, FloatingPointError):
                pass
            try:
                net.predict(X * 1e30)
            except ValueError:
                pass
            assert np.isfinite(net.parameters).all()

        case()
        print("survived")
    """
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastnn.__file__)))
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0 and "survived" in r.stdout, (r.returncode, r.stderr[-3000:])
