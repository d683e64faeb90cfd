"""Dense building blocks and the sample-split epoch driver (``"samples"``).

Blocked kernels over a range of samples ``s0:s1`` of a mini-batch, used by
every driver: :func:`_dense_forward`, :func:`_dense_grad` (weight and bias
gradient sums) and :func:`_dense_backprop` (deltas one layer down).  Then the
chunk pipeline built from them (:func:`_chunk_gradient`, :func:`_later_layers`),
the update passes, the full-batch :func:`gradient`, and the ``"samples"``
driver :func:`train_epoch`, which cuts each mini-batch into
:func:`chunk_count` chunks that run in parallel, one parallel region per step.

Invariants:

* Memory order: ``W`` is row-major ``(n_out, n_in)``, so a neuron's weights
  and a sample's inputs are contiguous rows; the long inner loop runs over
  ``n_in`` and vectorises to full-width SIMD.
* Row views, not ``base + k`` indexing: the inner loops index views
  (``w = theta[o:o + n_in]; w[k]``) with the loop counter.  With a computed
  offset Numba must allow for negative indices on every access, which stops
  LLVM from vectorising (the first layer ran 3.6x slower).
* Blocking: the forward pass and the weight gradient take eight samples x two
  neurons at a time (16 accumulators), then four x two, then the last samples
  one at a time over four (forward) or two (gradient) neurons; each weight
  row is loaded once per eight samples.  The forward pass's eight-sample
  block holds 16 vector accumulators, which fit AVX-512's 32 registers; with
  AVX2's 16 they spill, and the forward pass starts at blocks of four
  (:data:`FORWARD_BLOCK`).  ``tests/test_blocks.py`` runs every remainder.
* Fixed chunks: the chunk layout depends only on the batch size and the
  parameter count, never on the thread count, and chunk gradients are summed
  in chunk order, so trained weights are bit-identical whatever
  ``numba.set_num_threads`` says.
* The update pass sums the chunk gradients, updates ``theta`` and zeroes the
  buffers in one sweep (when each worker zeroed its own buffer at the start
  of a step, the lines crossed cores twice per step and two threads were
  slower than one).
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..layout import layer_offsets
from ._jit import _0, _dot_opts, _opts
from ._llvm import _call_native, target_has_avx512
from .activations import _activate_rows, _any_nonfinite, _derivative, _output_deltas
from .lanes import LANES, NARROW, _lanes_rows_combine
from .team import member_address

MAX_CHUNKS = 8  # chunks of a mini-batch, at most (every driver)
UPDATE_BLOCK = 8192  # parameters per block of the parallel update pass
PARALLEL_UPDATE_MIN = 65536  # networks with fewer parameters update serially
# The forward pass's widest block of samples: eight where 16 accumulators fit in
# the vector registers (AVX-512), else four (W3's training and W4's inference
# 1.3-1.9x faster on an AVX2 CPU, docs/performance-notes.md).  A compile-time
# constant: Numba freezes it into the kernels, and its caches are per CPU.
FORWARD_BLOCK = 8 if target_has_avx512() else 4
# Backpropagation sums 64 inputs x four samples at a time (16 lane vectors of sums) only
# where they fit in the registers (AVX-512's 32); with AVX2 they are 32 ymm registers and
# spill, so it takes 16 inputs at a time: W6 fits (256, 128 hidden) 0.80x the time, W5's
# 100 -> 10 backpropagation 5.7 -> 3.2 ms an epoch (docs/performance-notes.md).
COMBINE_WIDE = target_has_avx512()


@njit(**_dot_opts)
def _dense_forward(theta, woff, boff, n_in, n_out, src, rows, src_col, dst, dst_col, s0, s1):
    """dst[i, dst_col+j] = b[j] + sum_k W[j, k] * src[rows[i], src_col+k] for i in [s0, s1).

    ``W`` (row-major, ``n_out`` rows) starts at ``theta[woff]`` and ``b`` at ``theta[boff]``.
    """
    b = theta[boff : boff + n_out]
    zero = theta[0] * _0
    i = s0
    while FORWARD_BLOCK == 8 and i + 8 <= s1:  # two neurons x eight samples: 16 accumulators
        x0 = src[rows[i], src_col : src_col + n_in]
        x1 = src[rows[i + 1], src_col : src_col + n_in]
        x2 = src[rows[i + 2], src_col : src_col + n_in]
        x3 = src[rows[i + 3], src_col : src_col + n_in]
        x4 = src[rows[i + 4], src_col : src_col + n_in]
        x5 = src[rows[i + 5], src_col : src_col + n_in]
        x6 = src[rows[i + 6], src_col : src_col + n_in]
        x7 = src[rows[i + 7], src_col : src_col + n_in]
        j = 0
        while j < n_out:
            nj = min(2, n_out - j)
            w = theta[woff + j * n_in : woff + (j + 1) * n_in]
            v = theta[woff + (j + nj - 1) * n_in : woff + (j + nj) * n_in]  # w when nj == 1
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            a4 = zero
            a5 = zero
            a6 = zero
            a7 = zero
            c0 = zero
            c1 = zero
            c2 = zero
            c3 = zero
            c4 = zero
            c5 = zero
            c6 = zero
            c7 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
                a4 += w[k] * x4[k]
                a5 += w[k] * x5[k]
                a6 += w[k] * x6[k]
                a7 += w[k] * x7[k]
                c0 += v[k] * x0[k]
                c1 += v[k] * x1[k]
                c2 += v[k] * x2[k]
                c3 += v[k] * x3[k]
                c4 += v[k] * x4[k]
                c5 += v[k] * x5[k]
                c6 += v[k] * x6[k]
                c7 += v[k] * x7[k]
            bj = b[j]
            dst[i, dst_col + j] = a0 + bj
            dst[i + 1, dst_col + j] = a1 + bj
            dst[i + 2, dst_col + j] = a2 + bj
            dst[i + 3, dst_col + j] = a3 + bj
            dst[i + 4, dst_col + j] = a4 + bj
            dst[i + 5, dst_col + j] = a5 + bj
            dst[i + 6, dst_col + j] = a6 + bj
            dst[i + 7, dst_col + j] = a7 + bj
            if nj == 2:
                bv = b[j + 1]
                dst[i, dst_col + j + 1] = c0 + bv
                dst[i + 1, dst_col + j + 1] = c1 + bv
                dst[i + 2, dst_col + j + 1] = c2 + bv
                dst[i + 3, dst_col + j + 1] = c3 + bv
                dst[i + 4, dst_col + j + 1] = c4 + bv
                dst[i + 5, dst_col + j + 1] = c5 + bv
                dst[i + 6, dst_col + j + 1] = c6 + bv
                dst[i + 7, dst_col + j + 1] = c7 + bv
            j += nj
        i += 8
    while i + 4 <= s1:
        x0 = src[rows[i], src_col : src_col + n_in]
        x1 = src[rows[i + 1], src_col : src_col + n_in]
        x2 = src[rows[i + 2], src_col : src_col + n_in]
        x3 = src[rows[i + 3], src_col : src_col + n_in]
        j = 0
        while j + 2 <= n_out:  # two neurons x four samples: 8 accumulators
            w = theta[woff + j * n_in : woff + (j + 1) * n_in]
            v = theta[woff + (j + 1) * n_in : woff + (j + 2) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            c0 = zero
            c1 = zero
            c2 = zero
            c3 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
                c0 += v[k] * x0[k]
                c1 += v[k] * x1[k]
                c2 += v[k] * x2[k]
                c3 += v[k] * x3[k]
            dst[i, dst_col + j] = a0 + b[j]
            dst[i + 1, dst_col + j] = a1 + b[j]
            dst[i + 2, dst_col + j] = a2 + b[j]
            dst[i + 3, dst_col + j] = a3 + b[j]
            dst[i, dst_col + j + 1] = c0 + b[j + 1]
            dst[i + 1, dst_col + j + 1] = c1 + b[j + 1]
            dst[i + 2, dst_col + j + 1] = c2 + b[j + 1]
            dst[i + 3, dst_col + j + 1] = c3 + b[j + 1]
            j += 2
        while j < n_out:
            w = theta[woff + j * n_in : woff + (j + 1) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
            dst[i, dst_col + j] = a0 + b[j]
            dst[i + 1, dst_col + j] = a1 + b[j]
            dst[i + 2, dst_col + j] = a2 + b[j]
            dst[i + 3, dst_col + j] = a3 + b[j]
            j += 1
        i += 4
    while i < s1:  # remaining samples one by one, four neurons at a time
        x0 = src[rows[i], src_col : src_col + n_in]
        j = 0
        while j + 4 <= n_out:
            w = theta[woff + j * n_in : woff + (j + 1) * n_in]
            v = theta[woff + (j + 1) * n_in : woff + (j + 2) * n_in]
            u = theta[woff + (j + 2) * n_in : woff + (j + 3) * n_in]
            t = theta[woff + (j + 3) * n_in : woff + (j + 4) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += v[k] * x0[k]
                a2 += u[k] * x0[k]
                a3 += t[k] * x0[k]
            dst[i, dst_col + j] = a0 + b[j]
            dst[i, dst_col + j + 1] = a1 + b[j + 1]
            dst[i, dst_col + j + 2] = a2 + b[j + 2]
            dst[i, dst_col + j + 3] = a3 + b[j + 3]
            j += 4
        while j < n_out:
            w = theta[woff + j * n_in : woff + (j + 1) * n_in]
            a0 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
            dst[i, dst_col + j] = a0 + b[j]
            j += 1
        i += 1


@njit(**_opts)
def _dense_grad(g, woff, boff, n_in, n_out, D, d_col, src, rows, src_col, s0, s1):
    """g[W_jk] += sum_i D[i, d_col+j] * src[rows[i], src_col+k];  g[b_j] += sum_i D[i, d_col+j].

    The ``W`` part starts at ``g[woff]``, the ``b`` part at ``g[boff]``.
    """
    gb = g[boff : boff + n_out]
    i = s0
    while i + 8 <= s1:  # eight samples x two neurons: each gradient row read and written once
        x0 = src[rows[i], src_col : src_col + n_in]
        x1 = src[rows[i + 1], src_col : src_col + n_in]
        x2 = src[rows[i + 2], src_col : src_col + n_in]
        x3 = src[rows[i + 3], src_col : src_col + n_in]
        x4 = src[rows[i + 4], src_col : src_col + n_in]
        x5 = src[rows[i + 5], src_col : src_col + n_in]
        x6 = src[rows[i + 6], src_col : src_col + n_in]
        x7 = src[rows[i + 7], src_col : src_col + n_in]
        j = 0
        while j < n_out:
            nj = min(2, n_out - j)
            gw = g[woff + j * n_in : woff + (j + 1) * n_in]
            gv = g[woff + (j + nj - 1) * n_in : woff + (j + nj) * n_in]  # unused when nj == 1
            d0 = D[i, d_col + j]
            d1 = D[i + 1, d_col + j]
            d2 = D[i + 2, d_col + j]
            d3 = D[i + 3, d_col + j]
            d4 = D[i + 4, d_col + j]
            d5 = D[i + 5, d_col + j]
            d6 = D[i + 6, d_col + j]
            d7 = D[i + 7, d_col + j]
            if nj == 2:
                f0 = D[i, d_col + j + 1]
                f1 = D[i + 1, d_col + j + 1]
                f2 = D[i + 2, d_col + j + 1]
                f3 = D[i + 3, d_col + j + 1]
                f4 = D[i + 4, d_col + j + 1]
                f5 = D[i + 5, d_col + j + 1]
                f6 = D[i + 6, d_col + j + 1]
                f7 = D[i + 7, d_col + j + 1]
                for k in range(n_in):
                    gw[k] += ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])) + (
                        (d4 * x4[k] + d5 * x5[k]) + (d6 * x6[k] + d7 * x7[k])
                    )
                    gv[k] += ((f0 * x0[k] + f1 * x1[k]) + (f2 * x2[k] + f3 * x3[k])) + (
                        (f4 * x4[k] + f5 * x5[k]) + (f6 * x6[k] + f7 * x7[k])
                    )
                gb[j + 1] += ((f0 + f1) + (f2 + f3)) + ((f4 + f5) + (f6 + f7))
            else:
                for k in range(n_in):
                    gw[k] += ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])) + (
                        (d4 * x4[k] + d5 * x5[k]) + (d6 * x6[k] + d7 * x7[k])
                    )
            gb[j] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
            j += nj
        i += 8
    while i + 4 <= s1:
        x0 = src[rows[i], src_col : src_col + n_in]
        x1 = src[rows[i + 1], src_col : src_col + n_in]
        x2 = src[rows[i + 2], src_col : src_col + n_in]
        x3 = src[rows[i + 3], src_col : src_col + n_in]
        j = 0
        while j + 2 <= n_out:  # two neurons x four samples
            gw = g[woff + j * n_in : woff + (j + 1) * n_in]
            gv = g[woff + (j + 1) * n_in : woff + (j + 2) * n_in]
            d0 = D[i, d_col + j]
            d1 = D[i + 1, d_col + j]
            d2 = D[i + 2, d_col + j]
            d3 = D[i + 3, d_col + j]
            e0 = D[i, d_col + j + 1]
            e1 = D[i + 1, d_col + j + 1]
            e2 = D[i + 2, d_col + j + 1]
            e3 = D[i + 3, d_col + j + 1]
            for k in range(n_in):
                gw[k] += (d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])
                gv[k] += (e0 * x0[k] + e1 * x1[k]) + (e2 * x2[k] + e3 * x3[k])
            gb[j] += (d0 + d1) + (d2 + d3)
            gb[j + 1] += (e0 + e1) + (e2 + e3)
            j += 2
        while j < n_out:
            gw = g[woff + j * n_in : woff + (j + 1) * n_in]
            d0 = D[i, d_col + j]
            d1 = D[i + 1, d_col + j]
            d2 = D[i + 2, d_col + j]
            d3 = D[i + 3, d_col + j]
            for k in range(n_in):
                gw[k] += (d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])
            gb[j] += (d0 + d1) + (d2 + d3)
            j += 1
        i += 4
    while i < s1:  # remaining samples one by one, two neurons at a time
        x0 = src[rows[i], src_col : src_col + n_in]
        j = 0
        while j + 2 <= n_out:
            gw = g[woff + j * n_in : woff + (j + 1) * n_in]
            gv = g[woff + (j + 1) * n_in : woff + (j + 2) * n_in]
            d0 = D[i, d_col + j]
            e0 = D[i, d_col + j + 1]
            for k in range(n_in):
                gw[k] += d0 * x0[k]
                gv[k] += e0 * x0[k]
            gb[j] += d0
            gb[j + 1] += e0
            j += 2
        while j < n_out:
            gw = g[woff + j * n_in : woff + (j + 1) * n_in]
            d0 = D[i, d_col + j]
            for k in range(n_in):
                gw[k] += d0 * x0[k]
            gb[j] += d0
            j += 1
        i += 1


@njit(**_opts)
def _combine_lanes(theta, woff, n_in, n_out, D, i, d_col, a_col, ns):
    """The sums of :func:`_dense_backprop` for samples ``i:i+ns`` (``ns`` a literal 4 or 1)
    and the inputs of whole vectors, 64 (:data:`COMBINE_WIDE`), then 16, then 4 at a
    time; returns how many inputs."""
    k = 0
    while COMBINE_WIDE and k + 4 * LANES <= n_in:
        _lanes_rows_combine(theta, woff + k, n_in, n_out, D, i, d_col, a_col + k, ns, 4, LANES)
        k += 4 * LANES
    while k + LANES <= n_in:
        _lanes_rows_combine(theta, woff + k, n_in, n_out, D, i, d_col, a_col + k, ns, 1, LANES)
        k += LANES
    while k + NARROW <= n_in:
        _lanes_rows_combine(theta, woff + k, n_in, n_out, D, i, d_col, a_col + k, ns, 1, NARROW)
        k += NARROW
    return k


@njit(**_opts)
def _dense_backprop(theta, woff, n_in, n_out, D, d_col, A, a_col, act, s0, s1):
    """D[i, a_col+k] = (sum_j W[j, k] * D[i, d_col+j]) * act'(A[i, a_col+k]).

    Four samples at a time (then one by one) and 64 inputs at a time (then
    16, then 4, then one by one), the sums held in registers over ``j``
    (:func:`.lanes._lanes_rows_combine`); each sum runs over ``j`` in order,
    one multiply-add per term.
    """
    i = s0
    while i < s1:
        ns = 4 if i + 4 <= s1 else 1
        if ns == 4:
            k = _combine_lanes(theta, woff, n_in, n_out, D, i, d_col, a_col, 4)
        else:
            k = _combine_lanes(theta, woff, n_in, n_out, D, i, d_col, a_col, 1)
        for t in range(ns):
            d = D[i + t, d_col : d_col + n_out]
            for c in range(k, n_in):
                s = _0  # +0 as a float32; becomes float64 for float64 kernels
                for j in range(n_out):
                    s += theta[woff + j * n_in + c] * d[j]
                D[i + t, a_col + c] = s
            dt = D[i + t, a_col : a_col + n_in]
            at = A[i + t, a_col : a_col + n_in]
            for c in range(n_in):
                dt[c] *= _derivative(at[c], act)
        i += ns


@njit(**_opts)
def _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1):
    """Forward pass of samples ``rows[s0:s1]`` of ``X``; outputs into ``A[s0:s1]``.

    Returns a positive number when a pre-activation of any layer is not
    finite: inference uses it to reject NaN/inf input and any layer that
    overflowed; training ignores it.
    """
    L = sizes.shape[0] - 1
    bad = 0
    for l in range(L):
        n_in, n_out = sizes[l], sizes[l + 1]
        boff = offs[l] + n_in * n_out
        if l == 0:
            # np.int64(0), not 0: a literal argument would compile _dense_forward again
            _dense_forward(
                theta, offs[0], boff, n_in, n_out, X, rows, np.int64(0), A, aoff[0], s0, s1
            )
        else:
            _dense_forward(
                theta, offs[l], boff, n_in, n_out, A, ident, aoff[l - 1], A, aoff[l], s0, s1
            )
        bad += _any_nonfinite(A, s0, s1, aoff[l], aoff[l] + n_out)
        _activate_rows(A, s0, s1, aoff[l], n_out, out if l == L - 1 else hid)
    return bad  # (finite pre-activations give finite outputs: no check after the last)


@njit(**_opts)
def _chunk_gradient(
    theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, gc, s0, s1
):
    """Forward + backprop of samples ``s0:s1``; gradient *sums* added into ``G[gc]``.

    Returns (sum of costs, number of correct predictions) of those samples.
    """
    g = G[gc]  # all zeros on entry (the update pass leaves it so)
    _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1)
    total, correct = _output_deltas(sizes, aoff, out, cost, y, rows, A, D, s0, s1)
    _backprop_all(theta, g, sizes, offs, aoff, hid, X, rows, ident, A, D, s0, s1)
    return total, correct


@njit(**_opts)
def _chunk_member(c, nc, theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G,
                  stats):  # fmt: skip
    """Chunk ``c`` of ``nc`` of the mini-batch ``X[rows]`` (:func:`_chunk_gradient`): its
    gradient sums into ``G[c]``, its cost sum and number correct into ``stats[c]``.  The
    parallel regions call it by address (:func:`.team.member_address`)."""
    m = rows.shape[0]
    s0 = c * m // nc
    s1 = (c + 1) * m // nc
    stats[c, 0], stats[c, 1] = _chunk_gradient(
        theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, c, s0, s1
    )


def _chunk_address(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, stats):
    """The address of :func:`_chunk_member` compiled for these arguments."""
    return member_address(
        _chunk_member, (theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, stats)
    )


@njit(**_opts)
def _backprop_all(theta, g, sizes, offs, aoff, hid, X, rows, ident, A, D, s0, s1):
    """From the output deltas in ``D``, every layer's gradient sums into ``g``, the first
    layer's from the inputs ``X[rows]``."""
    _backprop_later(theta, offs, sizes, aoff, hid, A, ident, D, g, s0, s1)
    n_in, n_out = sizes[0], sizes[1]
    zero = np.int64(0)  # not a literal: one compile of _dense_grad
    _dense_grad(g, offs[0], offs[0] + n_in * n_out, n_in, n_out, D, aoff[0], X, rows, zero, s0, s1)


@njit(**_opts)
def _update_block(theta, G, nc, lo, hi, is_w, step, keep):
    """theta[p] = keep*theta[p] - step * sum_c G[c, p] for p in [lo, hi) (keep = 1 for biases).

    The chunk gradients are summed in chunk order and set back to zero in the
    same pass, so the buffers are all zero when the next step starts.
    """
    th = theta[lo:hi]
    step = theta.dtype.type(step)  # update in the working precision, like the reference
    keep = theta.dtype.type(keep if is_w else 1.0)
    g0 = G[0, lo:hi]
    if nc == 1:
        for p in range(hi - lo):
            th[p] = keep * th[p] - step * g0[p]
            g0[p] = 0
    elif nc == 2:
        g1 = G[1, lo:hi]
        for p in range(hi - lo):
            th[p] = keep * th[p] - step * (g0[p] + g1[p])
            g0[p] = 0
            g1[p] = 0
    else:
        for c in range(1, nc):
            gc = G[c, lo:hi]
            for p in range(hi - lo):
                g0[p] += gc[p]
                gc[p] = 0
        for p in range(hi - lo):
            th[p] = keep * th[p] - step * g0[p]
            g0[p] = 0


@njit(**_opts)
def chunk_count(m, n_params):
    """Number of chunks a mini-batch of ``m`` samples is split into.

    Depends only on the batch size and the parameter count, so results do not
    depend on the number of threads.  Each chunk keeps a private gradient of
    ``n_params`` values; larger networks get larger chunks so that summing the
    chunk gradients stays cheap compared to computing them.
    """
    per_chunk = max(4, n_params // 4096)
    return max(1, min(MAX_CHUNKS, m // per_chunk))


@njit(**_opts)
def _chunk_totals(stats, nc):
    """Sums over the first ``nc`` chunks of ``stats[:, 0]`` (costs or losses) and of
    ``stats[:, 1]`` (numbers correct), in chunk order."""
    total = 0.0
    correct = 0.0
    for c in range(nc):
        total += stats[c, 0]
        correct += stats[c, 1]
    return total, correct


@njit(parallel=True, **_opts)
def _sgd_step(chunk, theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, blocks,
              par_update, eta, decay, stats):  # fmt: skip
    """:func:`sgd_step` with the address of its chunk member (:func:`_chunk_address`)."""
    m = rows.shape[0]
    nc = np.int64(chunk_count(m, G.shape[1]))
    if nc == 1:  # no parallel region for one chunk: waking the threads would only cost time
        _call_native(chunk, (np.int64(0), nc, theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                             ident, A, D, G, stats))  # fmt: skip
    else:
        for c in prange(nc):
            _call_native(chunk, (np.int64(c), nc, theta, sizes, offs, aoff, hid, out, cost, X, y,
                                 rows, ident, A, D, G, stats))  # fmt: skip
    total, correct = _chunk_totals(stats, nc)
    step = eta / m
    keep = 1.0 - eta * decay
    if par_update:
        for bi in prange(blocks.shape[0]):
            _update_block(theta, G, nc, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2], step, keep)
    else:
        for bi in range(blocks.shape[0]):
            _update_block(theta, G, nc, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2], step, keep)
    return total, correct


def sgd_step(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, blocks,
             par_update, eta, decay, stats):  # fmt: skip
    """One exact SGD step on the mini-batch ``X[rows]``, updating ``theta`` in place.

    The mini-batch is split into ``chunk_count`` chunks that run in parallel,
    then the chunk gradients are summed in chunk order and
    ``W <- (1 - eta*decay) W - eta/m sum grad``, ``b <- b - eta/m sum grad``.
    Returns (sum of per-sample costs, number of correct predictions), both
    measured before the update.  The chunks run :func:`_chunk_member`, called
    by its address.
    """
    chunk = _chunk_address(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G,
                           stats)  # fmt: skip
    return _sgd_step(chunk, theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G,
                     blocks, par_update, eta, decay, stats)  # fmt: skip


@njit(**_opts)
def _train_epoch(chunk, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta,
                 decay):  # fmt: skip
    """:func:`train_epoch` with the address of its chunk member (:func:`_chunk_address`)."""
    ident, A, D, G, blocks, stats = buf
    par_update = theta.shape[0] >= PARALLEL_UPDATE_MIN
    n = perm.shape[0]
    total = 0.0
    correct = 0.0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        cs, cc = _sgd_step(
            chunk,
            theta,
            sizes,
            offs,
            aoff,
            hid,
            out,
            cost,
            X,
            y,
            perm[b0:b1],
            ident,
            A,
            D,
            G,
            blocks,
            par_update,
            eta,
            decay,
            stats,
        )
        total += cs
        correct += cc
    return total, correct


def train_epoch(theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta, decay):
    """The ``"samples"`` driver: one epoch of SGD over ``X[perm]`` in mini-batches of ``m``.

    The last mini-batch may be smaller.  The loop over mini-batches runs in
    compiled code; each step is one parallel region (:func:`sgd_step`) on
    Numba's thread pool, so ``want`` (the team size of the other drivers) is
    not used.  ``buf`` is a :class:`SamplesBuffers`.  Returns the sums of
    per-sample costs and of correct predictions, each measured on its
    mini-batch just before that mini-batch's update.
    """
    ident, A, D, G, blocks, stats = buf
    chunk = _chunk_address(theta, sizes, offs, aoff, hid, out, cost, X, y, perm, ident, A, D, G,
                           stats)  # fmt: skip
    return _train_epoch(chunk, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want,
                        eta, decay)  # fmt: skip


@njit(**_opts)
def _forward_later(P, offp, sizes, aoff, hid, out, A, ident, s0, s1):
    """Samples ``s0:s1`` through the layers after the first (whose outputs are in ``A``)."""
    L = sizes.shape[0] - 1
    for l in range(1, L):
        n_in, n_out = sizes[l], sizes[l + 1]
        boff = offp[l] + n_in * n_out
        _dense_forward(P, offp[l], boff, n_in, n_out, A, ident, aoff[l - 1], A, aoff[l], s0, s1)
        _activate_rows(A, s0, s1, aoff[l], n_out, out if l == L - 1 else hid)


@njit(**_opts)
def _backprop_later(P, offp, sizes, aoff, hid, A, ident, D, g, s0, s1):
    """From the output deltas in ``D``, the gradient sums of the layers after the first
    (added into ``g``) and the deltas down to the first layer's, ``D[s0:s1, 0:sizes[1]]``."""
    L = sizes.shape[0] - 1
    for l in range(L - 1, 0, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        boff = offp[l] + n_in * n_out
        _dense_grad(g, offp[l], boff, n_in, n_out, D, aoff[l], A, ident, aoff[l - 1], s0, s1)
        _dense_backprop(P, offp[l], n_in, n_out, D, aoff[l], A, aoff[l - 1], hid, s0, s1)


@njit(**_opts)
def _later_layers(P, offp, sizes, aoff, hid, out, cost, y, rows, ident, A, D, g, s0, s1):
    """Samples ``s0:s1`` through the layers after the first, and back.

    The first layer's outputs are in ``A[s0:s1]``; the later layers'
    parameters in ``P`` at offsets ``offp``.  Runs the forward pass, the
    output deltas and backpropagation down to the first layer's deltas
    ``D[s0:s1, 0:sizes[1]]``, adding the later layers' gradient sums into
    ``g`` (same offsets).  Returns (sum of costs, number correct).
    """
    _forward_later(P, offp, sizes, aoff, hid, out, A, ident, s0, s1)
    cs, cc = _output_deltas(sizes, aoff, out, cost, y, rows, A, D, s0, s1)
    _backprop_later(P, offp, sizes, aoff, hid, A, ident, D, g, s0, s1)
    return cs, cc


@njit(**_opts)
def _update_sum(theta, G, nc, lo, hi, step, keep):
    """theta[p] = keep*theta[p] - step * sum_c G[c, p] for p in [lo, hi), G left as it is."""
    for p in range(lo, hi):
        s = G[0, p]
        for c in range(1, nc):
            s += G[c, p]
        theta[p] = keep * theta[p] - step * s


@njit(parallel=True, **_opts)
def _gradient(chunk, theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, stats,
              grad):  # fmt: skip
    """:func:`gradient` with the address of its chunk member (:func:`_chunk_address`)."""
    m = rows.shape[0]
    nc = np.int64(chunk_count(m, G.shape[1]))
    for c in prange(nc):
        _call_native(chunk, (np.int64(c), nc, theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                             ident, A, D, G, stats))  # fmt: skip
    total, _ = _chunk_totals(stats, nc)
    for p in range(grad.shape[0]):
        g = G[0, p]
        G[0, p] = 0
        for c in range(1, nc):
            g += G[c, p]
            G[c, p] = 0
        grad[p] = g
    return total


def gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, grad):
    """Sum over samples ``rows`` of the per-sample gradients, into ``grad``; returns cost sum.

    The chunks run :func:`_chunk_member`, called by its address.
    """
    stats = np.empty((MAX_CHUNKS, 2))
    chunk = _chunk_address(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G,
                           stats)  # fmt: skip
    return _gradient(chunk, theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G,
                     stats, grad)  # fmt: skip


def update_blocks(sizes, offs):
    """Fixed blocks ``(start, stop, is_weight)`` covering the parameter vector.

    Each layer's ``W`` and ``b`` are cut into blocks of at most ``UPDATE_BLOCK``
    values (built with NumPy: one row per block, no Python loop over them).
    """
    parts = []
    for l in range(len(sizes) - 1):
        w0 = int(offs[l])
        b0 = w0 + sizes[l] * sizes[l + 1]
        for lo, hi, is_w in ((w0, b0, 1), (b0, b0 + sizes[l + 1], 0)):
            starts = np.arange(lo, hi, UPDATE_BLOCK, dtype=np.int64)
            stops = np.minimum(starts + UPDATE_BLOCK, hi)
            parts.append(np.stack([starts, stops, np.full_like(starts, is_w)], axis=1))
    return np.concatenate(parts)


class SamplesBuffers(NamedTuple):
    """The buffers of :func:`train_epoch` (its argument ``buf``) and :func:`sgd_step`.

    ``H = sum(sizes[1:])`` activation columns, ``m`` the batch size.
    """

    ident: np.ndarray  # (m,) int64: arange(m), the rows of A when it is the input
    A: np.ndarray  # (m, H) activations of the mini-batch
    D: np.ndarray  # (m, H) deltas
    G: np.ndarray  # (MAX_CHUNKS, n_params) chunk gradients, all zero between steps
    blocks: np.ndarray  # (k, 3) int64 update blocks, from update_blocks
    stats: np.ndarray  # (MAX_CHUNKS, 2) float64 chunk cost sums and correct counts


def samples_buffers(sizes, m, dtype, team=1):
    """Allocate :class:`SamplesBuffers` for mini-batches of up to ``m`` samples.

    ``team`` is accepted for the common driver interface and not used.
    """
    offs, n = layer_offsets(sizes)
    H = int(sum(sizes[1:]))
    return SamplesBuffers(
        np.arange(m, dtype=np.int64),
        np.empty((m, H), dtype),
        np.empty((m, H), dtype),
        np.zeros((MAX_CHUNKS, n), dtype),
        update_blocks(sizes, offs),
        np.zeros((MAX_CHUNKS, 2)),
    )
