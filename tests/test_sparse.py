"""The sparse-input epoch driver (kernels.train_epoch_sparse) and what it is built from."""

import copy
import tracemalloc

import numba
import numpy as np
import pytest
import scipy.sparse

from fastnn import Network, kernels, reference, runtime
from helpers import COMBOS, make_data


def _epoch_pair(
    X,
    y,
    sizes,
    m,
    hidden="sigmoid",
    output="sigmoid",
    cost="quadratic",
    eta=0.5,
    decay=1e-4,
    dtype=np.float64,
    Xref=None,
    driver="sparse",
):
    """Parameters after one epoch from fastnn and from the reference, same init and order."""
    net = Network(
        sizes, activation=hidden, output=output, cost=cost, dtype=dtype, seed=1, weight_decay=decay
    )
    theta = net.parameters.copy()
    perm = copy.deepcopy(net._rng).permutation(len(X))  # the order SGD will draw
    h = net.SGD((X, y), 1, m, eta, quiet=True, _driver=driver)
    Xref = X if Xref is None else Xref
    c_ref, k_ref = reference.train_epoch(
        theta, sizes, Xref, y, perm, m, eta, decay, hidden, output, cost
    )
    return net, theta, h, c_ref / len(X), k_ref / len(X)


def _assert_same_epoch(net, theta, h, c_ref, acc_ref):
    np.testing.assert_allclose(net.parameters, theta, rtol=1e-10, atol=1e-10)
    assert h["train_cost"][0] == pytest.approx(c_ref, rel=1e-10)
    assert h["train_accuracy"][0] == acc_ref


# first layers of one lane vector, one and a bit (padding), and two and a bit; m from one
# chunk (1-9) to eight (64), and a last mini-batch of another size (n = 203)
@pytest.mark.parametrize("sizes", [[40, 16, 5], [40, 17, 6, 5], [40, 33, 5]])
@pytest.mark.parametrize("m", [1, 4, 5, 9, 10, 33, 64])
def test_sparse_epoch_matches_reference(sizes, m):
    X, y = make_data(203, sizes[0], sizes[-1], density=0.2)
    _assert_same_epoch(*_epoch_pair(X, y, sizes, m))


@pytest.mark.parametrize("hidden,output,cost", COMBOS)
def test_sparse_epoch_matches_reference_for_every_activation_and_cost(hidden, output, cost):
    X, y = make_data(203, 30, 5, density=0.25)
    _assert_same_epoch(*_epoch_pair(X, y, [30, 9, 7, 5], 10, hidden, output, cost, eta=0.3))


def test_sparse_epoch_with_empty_rows_negative_values_and_uint8():
    rng = np.random.default_rng(3)
    X, y = make_data(150, 30, 4, density=0.3)
    X[::7] = 0  # samples with no non-zero input at all
    X[1::5] *= -2.0
    _assert_same_epoch(*_epoch_pair(X, y, [30, 12, 4], 10))
    pixels = (rng.random((150, 30)) < 0.2) * rng.integers(1, 256, (150, 30))
    pixels = pixels.astype(np.uint8)
    pixels[3] = 0
    _assert_same_epoch(*_epoch_pair(pixels, y, [30, 12, 4], 10, Xref=pixels / 255.0))


def test_sparse_epoch_float32():
    # float32: fused multiply-adds and other sums than NumPy's, so the parameters after one
    # epoch agree to 2e-4 of their scale, as for the other drivers
    X, y = make_data(1003, 30, 5, density=0.2, dtype=np.float32)
    net, theta, h, c_ref, _ = _epoch_pair(X, y, [30, 9, 7, 5], 10, dtype=np.float32)
    assert net.parameters.dtype == np.float32
    assert np.abs(net.parameters - theta).max() <= 2e-4 * np.abs(theta).max()
    assert h["train_cost"][0] == pytest.approx(c_ref, rel=1e-3)


@pytest.mark.parametrize(
    "sizes,m",
    [([784, 16, 16, 10], 10), ([784, 30, 10], 32), ([784, 20, 10], 33), ([100, 16, 8, 10], 1024)],
)
def test_sparse_bit_identical_across_thread_counts(sizes, m):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    X, y = make_data(3000, sizes[0], sizes[-1], dtype=np.float32, density=0.2)
    assert kernels.use_sparse(sizes, m, np.count_nonzero(X) / X.size)  # chosen on its own
    results = []
    for threads in (1, 2, numba.config.NUMBA_NUM_THREADS):
        net = Network(sizes, seed=7, weight_decay=1e-4)
        net.SGD((X, y), 2, m, 0.5, quiet=True, threads=threads)
        results.append(net.parameters.copy())
    for r in results[1:]:
        assert np.array_equal(results[0], r)


def test_sparse_team_trains_alone_when_its_members_run_one_after_another(monkeypatch):
    # asked for two members with one thread, the first closes the team and trains alone
    X, y = make_data(300, 30, 5, dtype=np.float32, density=0.2)
    results = []
    for team in (1, 2):
        monkeypatch.setattr(runtime, "_team_size", lambda most, team=team: team)
        net = Network([30, 16, 5], seed=2)
        net.SGD((X, y), 2, 10, 0.5, quiet=True, threads=1, _driver="sparse")
        results.append(net.parameters.copy())
    assert np.array_equal(results[0], results[1])


def test_sparse_driver_is_used_for_sparse_inputs_and_small_first_layers():
    assert kernels.use_sparse([784, 16, 16, 10], 10, 0.19)  # W1 on MNIST
    assert kernels.use_sparse([784, 30, 10], 1, 0.19)
    assert kernels.use_sparse([784, 32, 10], 1024, 0.4)
    assert not kernels.use_sparse([784, 16, 16, 10], 10, 0.5)  # too dense to gain
    assert not kernels.use_sparse([784, 128, 64, 10], 64, 0.19)  # W3: first layer too wide
    assert not kernels.use_sparse([784, 10], 10, 0.19)  # no hidden layer
    assert [kernels.sparse_chunks(m) for m in (1, 4, 5, 10, 32, 64, 1024)] == [1, 1, 1, 2, 6, 8, 8]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_training_data_in_csr_form(dtype):
    net = Network([30, 8, 4], dtype=dtype)
    X, _ = make_data(9000, 30, 4, density=0.3)  # several blocks of rows
    X[5] = 0
    X[17, 3] = -1.5
    indptr, indices, values = net._sparse_inputs(X, "X")
    want = scipy.sparse.csr_matrix(X.astype(dtype))
    assert values.dtype == dtype
    assert np.array_equal(indptr, want.indptr)
    assert np.array_equal(indices, want.indices)
    assert np.array_equal(values, want.data)
    pixels = (X * 255).astype(np.uint8)
    indptr, indices, values = net._sparse_inputs(pixels, "X")
    nz = pixels[pixels != 0]
    assert np.array_equal(values, nz.astype(dtype) / dtype(255))  # scaled once, like dense
    assert np.array_equal(indptr[1:], np.cumsum(np.count_nonzero(pixels, axis=1)))


@pytest.mark.parametrize("n_in", [16, 37, 40000])  # whole vectors, a tail, int32 columns
@pytest.mark.parametrize(
    "xdtype", [np.uint8, np.int8, np.uint16, np.int32, np.int64, np.float32, np.float64]
)
def test_csr_builder_agrees_with_scipy_for_every_input_dtype(xdtype, n_in):
    """The compress-store CSR builder (kernels.csr) against scipy.sparse, values converted
    as astype converts (uint8 pixels also divided by 255), for 1 and 3 threads."""
    rng = np.random.default_rng(n_in)
    n = 9000 if n_in < 1000 else 40
    info = np.iinfo(xdtype) if np.dtype(xdtype).kind in "iu" else None
    lo, hi = (info.min, info.max) if info else (-1e6, 1e6)
    X = (rng.random((n, n_in)) < 0.2) * rng.uniform(lo, hi, (n, n_in))
    X = X.astype(xdtype)
    X[3] = 0  # an empty row
    X[4, -1] = 1  # the last column
    divisors = [1.0, 255.0] if xdtype == np.uint8 else [1.0]
    for vdtype in (np.float32, np.float64):
        for divisor in divisors:
            want = scipy.sparse.csr_matrix(X.astype(vdtype) / vdtype(divisor))
            for threads in (1, 3):
                indptr = np.empty(n + 1, np.int64)
                assert kernels.count_rows(X, indptr, threads) == (want.nnz, 0)
                got = kernels.csr_rows(X, vdtype, indptr, divisor, threads)
                assert got[1].dtype == (np.int16 if n_in <= 32767 else np.int32)
                assert np.array_equal(got[0], want.indptr)
                assert np.array_equal(got[1], want.indices)
                assert np.array_equal(got[2], want.data) and got[2].dtype == vdtype


def _pack_all_masks():
    """_pack_nonzeros over rows whose 8 inputs hold every non-zero pattern; the counts,
    and the columns and values in the first lanes (what fill_rows keeps)."""
    from numba import njit

    from fastnn.kernels._llvm import _pack_nonzeros, pack_table

    @njit
    def pack(X, indices, values, table):
        counts = np.zeros(X.shape[0], np.int64)
        for i in range(X.shape[0]):
            counts[i] = _pack_nonzeros(X[i], 8, indices[i], values[i], 0, np.float32(255), table)
        return counts

    masks = np.arange(256)
    X = np.zeros((256, 24), np.uint8)
    X[:, 8:16] = (masks[:, None] >> np.arange(8) & 1) * np.arange(1, 9, dtype=np.uint8)
    X[:, 8:16][masks == 255, 3] = 255
    indices = np.full((256, 8), -1, np.int16)
    values = np.full((256, 8), np.nan, np.float32)
    counts = pack(X, indices, values, pack_table())
    for m in masks:
        cols = np.flatnonzero(X[m])
        assert counts[m] == len(cols) == bin(m).count("1")
        assert np.array_equal(indices[m, : len(cols)], cols)
        assert np.array_equal(values[m, : len(cols)], X[m, cols].astype(np.float32) / 255)


def test_pack_nonzeros_for_every_mask(monkeypatch):
    """The AVX2 CSR fill's step (one lane permutation, looked up by the compare's mask) for
    all 256 patterns of 8 inputs; where Numba targets no AVX2 the same results come from
    the lane-by-lane permutation it compiles instead."""
    from fastnn.kernels import _llvm

    if _llvm.target_has_avx2():
        _pack_all_masks()
    monkeypatch.setattr(_llvm, "target_has_avx2", lambda: False)
    _pack_all_masks()  # a new function, compiled with the lane-by-lane permutation


def test_csr_fill_writes_only_its_rows():
    """fill_rows stores whole packs of 8 lanes past a row's non-zeros, which the next row
    overwrites; the last rows of a block (Python threads fill blocks at once) must not
    write into the next block's, nor past the arrays."""
    from fastnn.kernels.csr import fill_rows

    rng = np.random.default_rng(5)
    X = ((rng.random((40, 64)) < 0.5) * rng.random((40, 64))).astype(np.float32)
    X[20:24] = 0
    X[24, :3] = 1  # a block's last rows with few non-zeros
    indptr = np.zeros(41, np.int64)
    kernels.count_rows(X, indptr)
    want = scipy.sparse.csr_matrix(X)
    for r0, r1 in ((0, 40), (0, 25), (25, 40), (10, 20), (24, 25), (39, 40)):
        indices = np.full(indptr[-1], -1, np.int16)
        values = np.full(indptr[-1], -1, np.float32)
        fill_rows(X, indptr, indices, values, np.float32(1), r0, r1)
        inside = np.zeros(indptr[-1], bool)
        inside[indptr[r0] : indptr[r1]] = True
        assert np.array_equal(indices[inside], want.indices[inside])
        assert np.array_equal(values[inside], want.data[inside])
        assert (indices[~inside] == -1).all() and (values[~inside] == -1).all()


def test_counting_pass_counts_nan_and_infinities():
    X = np.zeros((10000, 20), np.float32)
    X[7, 3], X[9000, 19], X[9001, 0] = np.nan, np.inf, -np.inf
    indptr = np.empty(10001, np.int64)
    for threads in (1, 2):
        assert kernels.count_rows(X, indptr, threads) == (3, 3)  # NaN and inf are non-zero
    X[7, 3] = 2.0
    for bad in (np.nan, np.inf):
        X[8500, 5] = bad
        with pytest.raises(ValueError, match="training_data inputs contains NaN or infinite"):
            Network([20, 4, 3]).prepare((X, np.zeros(10000, int)))


@pytest.mark.parametrize("dtype", [">f8", "<f8", np.float16, np.int16, np.uint8])
def test_sparse_driver_takes_every_real_dtype(dtype):
    # the CSR kernels take native integers and float32/64; others are converted first
    rng = np.random.default_rng(0)
    ints = (rng.random((120, 30)) < 0.2) * rng.integers(1, 100, (120, 30))
    X = ints.astype(dtype)
    y = rng.integers(0, 4, 120)
    Xref = ints / 255.0 if np.dtype(dtype) == np.uint8 else ints.astype(np.float64)
    _assert_same_epoch(*_epoch_pair(X, y, [30, 12, 4], 10, eta=0.01, Xref=Xref))


def test_sparse_inputs_too_large_for_float32_are_rejected():
    X, y = make_data(50, 30, 4, density=0.2)
    X[7, 3] = 1e300
    with pytest.raises(ValueError, match="too large for float32"):
        Network([30, 8, 4]).SGD((X, y), 1, 10, 1.0, quiet=True)
    X[7, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        Network([30, 8, 4]).SGD((X, y), 1, 10, 1.0, quiet=True)


def test_sparse_training_converts_uint8_pixels_without_a_dense_copy():
    # the training set is copied once: uint8 pixels go straight to the non-zero values
    # (a float32 copy of these 20,000 x 784 pixels would take 63 MB; the CSR form, 19 MB)
    rng = np.random.default_rng(0)
    pixels = (rng.random((20000, 784)) < 0.2) * rng.integers(1, 256, (20000, 784))
    pixels = pixels.astype(np.uint8)
    y = rng.integers(0, 10, 20000)
    net = Network([784, 16, 16, 10])
    dense_bytes = pixels.size * 4
    tracemalloc.start()
    try:
        net._trainer((pixels, y), 10, 3.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * dense_bytes, peak


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_keeps_nan_and_negative_zero(dtype):
    """The relu (a select on a frozen value, ``kernels.activations._relu``) gives
    ``0 if x < 0 else x`` bit for bit: NaN stays NaN, -0 stays -0, over whole vectors
    and their tails."""
    from fastnn.kernels.activations import _activate
    from fastnn.layout import RELU

    rng = np.random.default_rng(1)
    x = rng.standard_normal(37).astype(dtype)
    x[[0, 5, 9, 20, 36]] = [np.nan, -0.0, np.inf, -np.inf, -np.nan]
    want = np.where(x < 0, dtype(0), x)
    for n in (37, 16, 8, 3):
        got = x[:n].copy()
        _activate(got, RELU)
        np.testing.assert_array_equal(
            got.view(f"u{got.itemsize}"), want[:n].view(f"u{got.itemsize}")
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exp_within_one_ulp_of_numpy(dtype):
    lim = 87.0 if dtype == np.float32 else 708.0
    x = np.concatenate(
        [np.linspace(-lim, lim, 200001), np.random.default_rng(0).standard_normal(10000) * 5]
    ).astype(dtype)
    for n in (len(x), 16, 10, 8, 3):  # whole vectors, one, a part of one
        got = x[:n].copy()
        kernels._exp_inplace(got)
        want = np.exp(x[:n].astype(np.float64))
        assert np.all(np.abs(got - want) <= 1.01 * np.finfo(dtype).eps * want)
    special = np.array([np.nan, np.inf, -np.inf, 1e6, -1e6, 0.0], dtype)
    kernels._exp_inplace(special)
    assert np.isnan(special[0]) and special[5] == 1
    assert np.all(np.isfinite(special[1:])) and special[1] > 1e37 and 0 < special[2] < 1e-37
    sig = x[:16].copy()
    kernels._exp_inplace(sig, True)
    np.testing.assert_allclose(
        sig, 1 / (1 + np.exp(-x[:16].astype(np.float64))), rtol=2 * np.finfo(dtype).eps
    )
    for n in (16, 10, 3):  # the sigmoid from the same exp, its division in float64
        sig, e = x[:n].copy(), -x[:n]
        kernels._exp_inplace(sig, True)
        kernels._exp_inplace(e)
        assert np.array_equal(sig, (1 / (1 + e.astype(np.float64))).astype(dtype))


def test_benchmark_notes_the_driver_the_network_chose():
    from fastnn import bench

    w = dict(
        sizes=[30, 8, 4],
        activation="sigmoid",
        output="sigmoid",
        cost="quadratic",
        batch=10,
        eta=0.5,
    )
    notes = []
    for density in (0.2, 0.9):  # sparse, then dense enough for the dense drivers
        X, y = make_data(200, 30, 4, dtype=np.float32, density=density)
        assert Network([30, 8, 4])._trainer((X, y), 10, 0.5)[2].driver == (
            "sparse" if density < 0.5 else "samples"
        )
        notes.append(
            bench.fastnn_contender(np.float32)(w, bench.Data(X, y, X, y, "synthetic"), None).note
        )
    assert notes[0].startswith("sparse driver") and "(80%)" in notes[0]
    assert notes[1] == ""
