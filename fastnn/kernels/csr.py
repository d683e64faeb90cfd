"""The CSR form of the training inputs, built straight from the user's array.

Two passes over ``X``, each shared out by rows among Python threads (the
kernels release the GIL, so no ``parallel=True`` region is compiled for
them):

1. :func:`scan_rows` counts each row's non-zeros (the row pointers, hence the
   density that chooses the driver) and, in the same pass, the NaN and
   infinite values, so that float inputs need no separate finite check;
2. :func:`fill_rows` stores each row's non-zeros, converting them to the
   working dtype (uint8 pixels divided by 255, as ``astype(dtype) / 255``):
   16 inputs at a time with compress-stores (:func:`._llvm._compress_nonzeros`)
   with AVX-512; with AVX2 and float32 values, 8 at a time moved to the low
   lanes by one permutation (:func:`._llvm._pack_nonzeros`); else in a plain
   loop.  Compress-stores are one instruction with AVX-512 only; elsewhere
   LLVM expands them into a branch per input, slower than the plain loop.
   On an AVX2 CPU (float32 MNIST, 2 threads) the permutations fill it in
   14-24 ms, the plain loop in 43-47 ms.

No dense float copy of the training set is made.  Measured on MNIST (2-core
VM, ``docs/performance-notes.md``), the finite check, density and CSR form
together: float32 pixels 114 ms before, 31 ms; uint8 78-80 ms before,
14-17 ms.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit, types
from numba.extending import overload

from ._jit import _opts
from ._llvm import (
    COMPRESS,
    PACK,
    _compress_nonzeros,
    _pack_nonzeros,
    _prefetch,
    pack_table,
    target_has_avx2,
    target_has_avx512,
)

ROWS_PER_THREAD = 4096  # fewer rows per thread do not pay for the thread
# compile-time constants: Numba freezes them into fill_rows
COMPRESS_STORES = target_has_avx512()
PACK_STORES = target_has_avx2() and not COMPRESS_STORES
_PACK_TABLE = pack_table()


@njit(**_opts)
def scan_rows(X, counts, r0, r1):
    """``counts[i]`` = the number of non-zero values of row ``i`` of ``X``, for rows
    ``r0:r1``; returns the number of NaN and infinite values in those rows."""
    bad = 0
    for i in range(r0, r1):
        row = X[i]
        c = 0
        b = 0
        for k in range(X.shape[1]):
            x = row[k]
            c += x != 0
            b += (x - x) != 0  # NaN for NaN and infinities (0 for integers)
        counts[i] = c
        bad += b
    return bad


@njit(**_opts)
def fill_rows(X, indptr, indices, values, divisor, r0, r1):
    """The CSR form of rows ``r0:r1`` of ``X``: fills ``indices`` and ``values``.

    ``indptr`` are the row pointers (from :func:`scan_rows`, cumulated); row
    ``i``'s non-zeros go to ``values[indptr[i]:indptr[i+1]]`` at columns
    ``indices[...]``, ascending, converted to ``values.dtype`` as ``astype``
    converts and divided by ``divisor`` (1: not divided).
    """
    n_in = X.shape[1]
    full = n_in // COMPRESS * COMPRESS if COMPRESS_STORES else 0  # else the plain loop
    packed = _packed_inputs(n_in, values)
    room = indptr[r1] - PACK  # packs start at most here: they write no row of another block
    for i in range(r0, r1):
        row = X[i]
        p = indptr[i]
        for k0 in range(0, full, COMPRESS):
            p += _compress_nonzeros(row, k0, indices, values, p, divisor)
        k0 = full
        while k0 < packed and p <= room:
            p += _pack(row, k0, indices, values, p, divisor)
            k0 += PACK
        for k in range(k0, n_in):
            x = row[k]
            if x != 0:
                indices[p] = k
                values[p] = values.dtype.type(x) / divisor
                p += 1


def _packs(values):
    """Whether :func:`fill_rows` stores into ``values`` (a Numba array type) with
    :func:`._llvm._pack_nonzeros`: float32 values on AVX2 CPUs."""
    return PACK_STORES and values.dtype == types.float32


def _packed_inputs(n_in, values):
    """How many of a row's ``n_in`` inputs :func:`fill_rows` stores with
    :func:`._llvm._pack_nonzeros`: whole packs where :func:`_packs`, else none."""


@overload(_packed_inputs)
def _packed_inputs_typed(n_in, values):
    if _packs(values):
        return lambda n_in, values: n_in // PACK * PACK
    return lambda n_in, values: 0


def _pack(row, k0, indices, values, p, divisor):
    """:func:`._llvm._pack_nonzeros` where :func:`_packs` (never called otherwise)."""


@overload(_pack)
def _pack_typed(row, k0, indices, values, p, divisor):
    if _packs(values):
        return lambda row, k0, indices, values, p, divisor: _pack_nonzeros(
            row, k0, indices, values, p, divisor, _PACK_TABLE
        )
    return lambda row, k0, indices, values, p, divisor: 0


@njit(**_opts)
def _prefetch_sparse_rows(indptr, indices, values, rows):
    """Start loading the non-zeros of the sparse input rows ``rows`` into the cache."""
    for r in range(rows.shape[0]):
        _prefetch_nonzeros(indices, values, indptr[rows[r]], indptr[rows[r] + 1])


@njit(**_opts)
def _prefetch_nonzeros(indices, values, p0, p1):
    """Start loading the non-zeros at positions ``p0:p1`` into the cache."""
    for p in range(p0, p1, max(1, 64 // indices.itemsize)):
        _prefetch(indices, p)
    for p in range(p0, p1, max(1, 64 // values.itemsize)):
        _prefetch(values, p)


def _row_blocks(n, threads):
    """Rows ``0:n`` cut into at most ``threads`` blocks of at least ``ROWS_PER_THREAD``."""
    t = max(1, min(int(threads), n // ROWS_PER_THREAD))
    return [(j * n // t, (j + 1) * n // t) for j in range(t)]


def _each_block(fn, n, threads):
    """``fn(r0, r1)`` for the row blocks of ``n`` rows, in Python threads; their results."""
    blocks = _row_blocks(n, threads)
    if len(blocks) == 1:
        return [fn(*blocks[0])]
    with ThreadPoolExecutor(len(blocks)) as pool:
        return list(pool.map(lambda b: fn(*b), blocks))


def count_rows(X, indptr, threads=1):
    """Row pointers of the CSR form of ``X`` into ``indptr`` (``n + 1`` int64,
    ``indptr[0] = 0``); returns ``(number of non-zeros, number of NaN/inf values)``."""
    n = X.shape[0]
    bad = sum(_each_block(lambda r0, r1: scan_rows(X, indptr[1:], r0, r1), n, threads))
    indptr[0] = 0
    np.cumsum(indptr[1:], out=indptr[1:])
    return int(indptr[-1]), int(bad)


def csr_rows(X, dtype, indptr=None, divisor=1.0, threads=1):
    """The CSR form ``(indptr, indices, values)`` of the 2-D array ``X``.

    ``X`` has a native integer or float dtype the kernels take (not float16);
    ``values`` are converted to ``dtype`` as ``astype`` would and divided by
    ``divisor`` (255 for uint8 pixels gives ``astype(dtype) / 255`` exactly).
    Column indices are int16 where ``X`` has at most 32767 columns, int32
    otherwise.  ``indptr``: row pointers already counted by
    :func:`count_rows` (the counting pass is then not repeated).
    """
    if indptr is None:
        indptr = np.empty(X.shape[0] + 1, np.int64)
        count_rows(X, indptr, threads)
    nnz = int(indptr[-1])
    indices = np.empty(nnz, np.int16 if X.shape[1] <= 32767 else np.int32)
    values = np.empty(nnz, dtype)
    d = np.dtype(dtype).type(divisor)
    _each_block(
        lambda r0, r1: fill_rows(X, indptr, indices, values, d, r0, r1), X.shape[0], threads
    )
    return indptr, indices, values
