"""The building blocks called directly: the lane-vector intrinsics and the blocked dense
kernels over every blocking remainder, against NumPy."""

import numba
import numpy as np
import pytest

from fastnn.kernels._jit import _opts
from fastnn.kernels.activations import SOFTMAX_BLOCK, _activate, _activate_rows
from fastnn.kernels.columns import _rows_dot
from fastnn.kernels.dense import _dense_backprop, _dense_forward, _dense_grad
from fastnn.kernels.lanes import LANES, _lanes_sparse_axpy, _lanes_sparse_dot
from fastnn.layout import SIGMOID, SOFTMAX


@numba.njit
def _dot(W, woff, ld, idx, val, p0, p1, dst, doff):
    _lanes_sparse_dot(W, woff, ld, idx, val, p0, p1, dst, doff)


@numba.njit
def _axpy(W, woff, ld, idx, val, p0, p1, src, soff, alpha):
    _lanes_sparse_axpy(W, woff, ld, idx, val, p0, p1, src, soff, alpha)


def _sparse_rows(rng, n_in, counts, index_dtype):
    """CSR rows with the given numbers of non-zeros (0 = an empty row)."""
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    idx = np.concatenate([np.sort(rng.choice(n_in, c, replace=False)) for c in counts])
    return indptr, idx.astype(index_dtype), rng.standard_normal(indptr[-1])


@numba.njit(**_opts)
def _plain_rows(W, woff, ld, idx, val, p0, p1, dst, doff, n):
    """The loop the row kernel replaces (forward sums into ``dst[doff:doff + n]``)."""
    for p in range(p0, p1):
        v = val[p]
        w = W[woff + idx[p] * ld : woff + idx[p] * ld + n]
        for j in range(n):
            dst[doff + j] += v * w[j]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_kernel_is_bit_identical_to_the_plain_loop(dtype):
    # rows of n neurons: 1 to MAX_ROW_VECTORS vectors per call, the last masked to the
    # neurons that remain (with AVX-512, vectors of 16 lanes: 100 = 6 vectors + 4 lanes,
    # 300 = passes of 7, 6 and 5 vectors + 12 lanes; with AVX2, of 8 float32 lanes: 100 =
    # 12 vectors + 4 lanes, 136 = passes of 9 and 8 vectors); at the start of W and dst and
    # at offsets into both (a neuron range of wider rows); the masked lanes write nothing
    # outside dst[doff:doff + n]
    rng = np.random.default_rng(1)
    n_in = 60
    indptr, idx, val = _sparse_rows(rng, n_in, [0, 1, 3, 17, 40], np.int32)
    val = val.astype(dtype)
    for n in (1, 15, 16, 17, 32, 40, 64, 100, 104, 127, 128, 129, 136, 143, 256, 300):
        for woff, doff, ld in ((0, 0, n), (7, 5, n + 9)):
            W = rng.standard_normal(n_in * ld + woff).astype(dtype)
            for r in range(len(indptr) - 1):
                p0, p1 = indptr[r], indptr[r + 1]
                dst = rng.standard_normal(n + doff + 3).astype(dtype)
                want = dst.copy()
                _plain_rows(W, woff, ld, idx, val, p0, p1, want, doff, n)
                got = dst.copy()
                _rows_dot(W, woff, ld, idx, val, p0, p1, got, doff, n)
                assert np.array_equal(got, want), (n, woff, r)
                rows = W[woff:][: n_in * ld].reshape(n_in, ld)[idx[p0:p1], :n]
                tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else {}
                np.testing.assert_allclose(
                    got[doff : doff + n],
                    dst[doff : doff + n].astype(np.float64) + val[p0:p1] @ rows.astype(np.float64),
                    **tol,
                )
                assert np.array_equal(got[:doff], dst[:doff])
                assert np.array_equal(got[doff + n :], dst[doff + n :])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("index_dtype", [np.int16, np.int32])
def test_lane_intrinsics_match_numpy(dtype, index_dtype):
    # two lane vectors per input (ld = 32), the second at woff = 16; rows with 0 non-zeros
    # (empty), 1-3 (only the tail loop), 4 and 8 (only whole quads), 5, 7, 13 (both)
    rng = np.random.default_rng(0)
    n_in, ld = 50, 2 * LANES
    indptr, idx, val = _sparse_rows(rng, n_in, [0, 1, 2, 3, 4, 5, 7, 8, 13], index_dtype)
    val = val.astype(dtype)
    W = rng.standard_normal(n_in * ld).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    for r in range(len(indptr) - 1):
        p0, p1 = indptr[r], indptr[r + 1]
        for woff in (0, LANES):
            dst = rng.standard_normal(3 * LANES).astype(dtype)
            want = dst.copy()
            for p in range(p0, p1):
                c = woff + idx[p] * ld
                want[LANES : 2 * LANES] += val[p] * W[c : c + LANES]
            _dot(W, woff, ld, idx, val, p0, p1, dst, LANES)
            np.testing.assert_allclose(dst, want, **tol)

            src = rng.standard_normal(2 * LANES).astype(dtype)
            Wa, want_w = W.copy(), W.copy()
            for p in range(p0, p1):
                c = woff + idx[p] * ld
                want_w[c : c + LANES] += (dtype(-0.3) * val[p]) * src[LANES:]
            _axpy(Wa, woff, ld, idx, val, p0, p1, src, LANES, -0.3)
            np.testing.assert_allclose(Wa, want_w, **tol)
            if p0 == p1:
                assert np.array_equal(Wa, W)  # an empty row moves nothing


def _layer(rng, n_in, n_out):
    """A parameter vector holding one layer at an offset: (theta, woff, boff, W, b)."""
    woff = 7
    theta = rng.standard_normal(woff + n_in * n_out + n_out + 3)
    W = theta[woff : woff + n_in * n_out].reshape(n_out, n_in)
    b = theta[woff + n_in * n_out : woff + n_in * n_out + n_out]
    return theta, woff, woff + n_in * n_out, W, b


# samples s1 - s0 from 1 to 19 run every mix of the 8-, 4- and 1-sample blocks; neurons 1, 2,
# 3, 5, 6 every remainder of the 2-neuron (and, one sample at a time, 4-neuron) blocks
SAMPLES = range(1, 20)
NEURONS = [1, 2, 3, 5, 6]


@pytest.mark.parametrize("n_out", NEURONS)
def test_dense_forward_every_blocking_remainder(n_out):
    rng = np.random.default_rng(n_out)
    n_in = 37
    theta, woff, boff, W, b = _layer(rng, n_in, n_out)
    src = rng.standard_normal((40, n_in + 5))
    rows = rng.permutation(40)
    for count in SAMPLES:
        s0 = 3
        dst = np.full((40, n_out + 4), 9.0)
        _dense_forward(theta, woff, boff, n_in, n_out, src, rows, 5, dst, 2, s0, s0 + count)
        want = src[rows[s0 : s0 + count], 5 : 5 + n_in] @ W.T + b
        np.testing.assert_allclose(dst[s0 : s0 + count, 2 : 2 + n_out], want, rtol=1e-12)
        assert (dst[:s0] == 9).all() and (dst[s0 + count :] == 9).all()  # nothing else written
        assert (dst[:, :2] == 9).all() and (dst[:, 2 + n_out :] == 9).all()


@pytest.mark.parametrize("n_out", NEURONS)
def test_dense_grad_every_blocking_remainder(n_out):
    rng = np.random.default_rng(10 + n_out)
    n_in = 37
    theta, woff, boff, W, b = _layer(rng, n_in, n_out)
    src = rng.standard_normal((40, n_in + 5))
    D = rng.standard_normal((40, n_out + 3))
    rows = rng.permutation(40)
    for count in SAMPLES:
        s0 = 2
        g = rng.standard_normal(theta.shape)  # the kernel adds to what is there
        want = g.copy()
        d = D[s0 : s0 + count, 3 : 3 + n_out]
        want[woff:boff] += (d.T @ src[rows[s0 : s0 + count], 5 : 5 + n_in]).ravel()
        want[boff : boff + n_out] += d.sum(axis=0)
        _dense_grad(g, woff, boff, n_in, n_out, D, 3, src, rows, 5, s0, s0 + count)
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=1e-12)


@numba.njit(**_opts)
def _plain_backprop(theta, woff, n_in, n_out, D, d_col, A, a_col, s0, s1):
    """The sums of :func:`_dense_backprop` as plain loops (``j`` in order), sigmoid."""
    for i in range(s0, s1):
        for k in range(n_in):
            s = theta[0] - theta[0]
            for j in range(n_out):
                s += theta[woff + j * n_in + k] * D[i, d_col + j]
            a = A[i, a_col + k]
            D[i, a_col + k] = s * (a * (1 - a))


# inputs 3 (one by one only), 11 (two vectors of 4 + 3), 16 (one lane vector), 83 (4 + 1 lane
# vectors + 3), 100 (6 lane vectors + one of 4: W5's), 130 (8 lane vectors + 2)
@pytest.mark.parametrize("n_in", [3, 11, 16, 83, 100, 130])
@pytest.mark.parametrize("n_out", NEURONS)
def test_dense_backprop_every_blocking_remainder(n_out, n_in):
    rng = np.random.default_rng(20 + n_out)
    theta, woff, boff, W, b = _layer(rng, n_in, n_out)
    for count in SAMPLES:
        s0 = 1
        D = rng.standard_normal((30, n_in + n_out + 2))
        A = rng.random((30, n_in + n_out + 2))
        want = D.copy()
        a = A[s0 : s0 + count, 2 : 2 + n_in]
        want[s0 : s0 + count, 2 : 2 + n_in] = (
            (D[s0 : s0 + count, 2 + n_in : 2 + n_in + n_out] @ W) * a * (1 - a)
        )
        plain = D.copy()
        _plain_backprop(theta, woff, n_in, n_out, plain, 2 + n_in, A, 2, s0, s0 + count)
        _dense_backprop(theta, woff, n_in, n_out, D, 2 + n_in, A, 2, SIGMOID, s0, s0 + count)
        np.testing.assert_allclose(D, want, rtol=1e-12, atol=1e-12)
        assert np.array_equal(D, plain)  # the same sums in the same order


@numba.njit(**_opts)
def _softmax_each_row(A, s0, s1, col, n):
    for i in range(s0, s1):
        _activate(A[i, col : col + n], SOFTMAX)


# outputs 1, 2, 10 (W5's: 12 rows a block), 13, 64 (2 rows), 65 and 200 (a row at a time)
@pytest.mark.parametrize("n", [1, 2, 10, 13, SOFTMAX_BLOCK // 2, SOFTMAX_BLOCK // 2 + 1, 200])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_rows_in_blocks_round_as_row_by_row(n, dtype):
    """The softmax of a block of rows has the bits of the softmax row by row, for every
    block remainder, with rows holding NaN, infinities and values beyond exp's range."""
    rng = np.random.default_rng(n)
    A = (rng.standard_normal((SOFTMAX_BLOCK + 10, n + 5)) * 30).astype(dtype)
    A[4, 3] = np.nan
    A[6, 2:] = np.inf
    A[7, 3] = -np.inf
    A[9, 2:] = 1e30
    for s0, s1 in [(0, 40), (3, 4), (5, 14), (1, 2 + SOFTMAX_BLOCK // n)]:
        want, got = A.copy(), A.copy()
        _softmax_each_row(want, s0, s1, 2, n)
        _activate_rows(got, s0, s1, 2, n, SOFTMAX)
        np.testing.assert_array_equal(got, want)
    x = A[10:20, 2 : 2 + n].astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    _activate_rows(A, 10, 20, 2, n, SOFTMAX)
    # exp clamps its argument to float32's range: about 1e-38 where NumPy gives 0
    tol = dict(rtol=1e-5, atol=1e-37) if dtype == np.float32 else dict(rtol=1e-13, atol=0)
    np.testing.assert_allclose(A[10:20, 2 : 2 + n], e / e.sum(axis=1, keepdims=True), **tol)
