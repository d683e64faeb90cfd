"""Numba kernels: forward pass, backpropagation, SGD update and the epoch driver.

Every kernel is a pure function over arrays it is given; nothing here allocates
in a hot loop.  The Python layer (:mod:`fastnn.network`) validates inputs and
allocates the buffers once.

Parameter layout
----------------
All parameters live in one contiguous vector ``theta``.  Layer ``l`` (mapping
``sizes[l]`` inputs to ``sizes[l+1]`` outputs) owns ``W`` of shape
``(n_out, n_in)`` in row-major order starting at ``offs[l]``, immediately
followed by its bias ``b`` of length ``n_out``.  The gradient has the same
layout.  Activations and deltas of a mini-batch live in ``(m, H)`` buffers with
``H = sum(sizes[1:])``; layer ``l``'s outputs occupy columns
``aoff[l]:aoff[l] + sizes[l+1]``.

What makes the kernels fast (measured on the 2-core test machine)
------------------------------------------------------------------
* Memory order: ``W`` is row-major ``(n_out, n_in)``, so a neuron's weights and
  a sample's inputs are contiguous rows; the long inner loop runs over ``n_in``
  (784 in the first layer) and vectorises to full-width SIMD.  ``fastmath``
  allows the reassociation a vectorised dot product needs; ``nnan``/``ninf``
  are left out so non-finite values are still detected.
* Row views, not ``base + k`` indexing: the inner loops index views
  (``w = theta[o:o + n_in]; w[k]``) with the loop counter.  With a computed
  offset Numba must allow for negative indices on every access, which stopped
  LLVM from vectorising: 3.6x slower for the first layer.
* Precision: float32 constants (``_0``, ``_1``) instead of float literals,
  which Numba promotes to float64 (the float32 kernels had been accumulating in
  double precision, at half the speed).
* Blocking over the mini-batch: four samples x two neurons at a time (eight
  accumulators), so each weight row is loaded once per four samples and each
  input row once per two neurons in the forward pass; the same blocking in the
  weight gradient.  Remaining samples go one at a time over four (forward) or
  two (gradient) neurons.  First-layer forward of W1: 52 GFLOP/s per core
  unblocked, about 2x that blocked.
* Work split: a mini-batch is cut into ``n_chunks`` contiguous chunks that run
  in parallel (``prange``), each accumulating a private gradient.  The layout
  depends only on the batch size and the parameter count (never on the thread
  count) and chunk gradients are summed in chunk order, so trained weights are
  bit-identical whatever ``numba.set_num_threads`` says.  One parallel region
  per mini-batch (about 2 us with the OpenMP layer).
* Small mini-batches (8-32 samples) of networks whose first layer holds
  nearly all parameters (W1, W2) split the *first layer by neurons* instead
  (:func:`train_epoch_split`): each pair of neurons updates its own rows of
  ``W`` and at once computes its outputs for the next mini-batch, in one
  parallel region per step; the small later layers run serially in between.
  Parameters and gradients then stay in their core's cache; splitting the
  batch moves them between cores every step.  W1 on 2 threads: 56 ms against
  64 ms, and much less exposed to the VM's bad phases (90 ms against 136 ms
  measured in one of them); W2: 73 ms against 95 ms.  The next mini-batch's
  input rows (random rows of the training set) are prefetched one step ahead
  (``llvm.prefetch``): 80 to 70 ms on one thread.
* A mini-batch of fewer than eight samples is one chunk and runs without a
  parallel region (W1 at batch 1 on 2 threads: 0.33 s with, 0.21 s without).
* The update pass sums the chunk gradients, updates ``theta`` and zeroes the
  buffers in one sweep.  When each worker zeroed its own buffer at the start
  of a step, the buffer's cache lines crossed cores twice per step and two
  threads were *slower* than one at batch 10 (128 ms against 86 ms per W1
  epoch); now they are faster (about 60 ms against 78 ms).
* Inference checks its input for NaN/inf on the way: the forward kernel counts
  non-finite first-layer pre-activations instead of the Python layer scanning
  ``X`` first (which alone took longer than the forward pass of W4).

What did not pay: prefetching in the sample-split driver (no gain); a sparse
first layer (MNIST pixels are 81% zero) written as an input-major ``axpy``
over non-zero pixels ran 1.5-3x slower than the dense blocked dot products
for 16-30 neurons, and faster only at 128; chunks of fewer than four samples
lose the blocking.  Nor did sharing the blocked dot-product loops between
:func:`_dense_forward` and :func:`_rows_forward` through a helper returning
the eight sums: W1 on one thread 3-7% slower, so the loops stay written out.
"""

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .layout import SIGMOID, RELU, TANH, QUADRATIC, CROSS_ENTROPY

MAX_CHUNKS = 8
SPLIT_MIN_BATCH = 8
SPLIT_MAX_BATCH = 32
SPLIT_MIN_SHARE = 0.95
UPDATE_BLOCK = 8192
PARALLEL_UPDATE_MIN = 65536

# reassoc/contract let LLVM vectorise reductions and fuse multiply-adds; no
# nnan/ninf so that non-finite values are still detected.
_FM = {"reassoc", "contract", "nsz"}
# error_model="numpy": a float division by zero gives inf/nan (caught by the Python layer
# as divergence) instead of raising inside a parallel region.
_opts = dict(cache=True, fastmath=_FM, nogil=True, error_model="numpy")

# float32 constants: Numba promotes float32 (op) float64-literal to float64, so
# plain ``1.0`` would silently run float32 kernels in double precision.  A
# float32 constant keeps float32 arithmetic in float32 and float64 in float64.
_0 = np.float32(0.0)
_1 = np.float32(1.0)


@intrinsic
def _prefetch(typingctx, arr, index):
    """Hint the CPU to start loading the cache line of ``arr[index]`` (1-D array).

    ``llvm.prefetch``: no effect on results, never faults.  Used to fetch the
    next mini-batch's input rows (random rows of the training set) while the
    current one is computed.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(index, types.Integer)):
        return None
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        aryty, idxty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        idx = context.cast(builder, args[1], idxty, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)
        if getattr(ptr.type, "is_opaque", False):
            name = "llvm.prefetch.p0"
        else:  # typed pointers (older llvmlite)
            ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
            name = "llvm.prefetch.p0i8"
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name)
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()
    return sig, codegen


def update_blocks(sizes, offs):
    """Fixed blocks ``(start, stop, is_weight)`` covering the parameter vector."""
    blocks = []
    for l in range(len(sizes) - 1):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0 = offs[l]
        b0 = w0 + n_in * n_out
        for lo, hi, is_w in ((w0, b0, 1), (b0, b0 + n_out, 0)):
            for s in range(lo, hi, UPDATE_BLOCK):
                blocks.append((s, min(s + UPDATE_BLOCK, hi), is_w))
    return np.array(blocks, dtype=np.int64)


# ----------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------

@njit(**_opts)
def _activate(a, act):
    """Apply activation ``act`` in place to the vector ``a``."""
    n = a.shape[0]
    if act == SIGMOID:
        for j in range(n):
            a[j] = _1 / (_1 + np.exp(-a[j]))
    elif act == RELU:
        for j in range(n):
            if a[j] < _0:
                a[j] = _0
    elif act == TANH:
        for j in range(n):
            a[j] = np.tanh(a[j])
    else:  # SOFTMAX
        zmax = a[0]
        for j in range(1, n):
            if a[j] > zmax:
                zmax = a[j]
        s = a[0] - a[0]
        for j in range(n):
            e = np.exp(a[j] - zmax)
            a[j] = e
            s += e
        inv = _1 / s
        for j in range(n):
            a[j] *= inv


@njit(**_opts)
def _derivative(a, act):
    """Derivative of the hidden activation expressed through its output ``a``."""
    if act == SIGMOID:
        return a * (_1 - a)
    elif act == RELU:
        return _1 if a > _0 else _0
    else:  # TANH
        return _1 - a * a


# Inner loops index row *views* (w[k], x0[k]) with the loop counter, never
# base + k: Numba must otherwise handle negative indices on every access,
# which stops LLVM from vectorising (3.6x slower for the first layer).

@njit(**_opts)
def _dense_forward(theta, woff, n_in, n_out, src, rows, c0, dst, d0, s0, s1):
    """dst[i, d0+j] = b[j] + sum_k W[j, k] * src[rows[i], c0+k] for i in [s0, s1)."""
    boff = woff + n_in * n_out
    b = theta[boff:boff + n_out]
    zero = theta[0] * _0
    i = s0
    while i + 4 <= s1:
        x0 = src[rows[i], c0:c0 + n_in]
        x1 = src[rows[i + 1], c0:c0 + n_in]
        x2 = src[rows[i + 2], c0:c0 + n_in]
        x3 = src[rows[i + 3], c0:c0 + n_in]
        j = 0
        while j + 2 <= n_out:  # two neurons x four samples: 8 accumulators
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            v = theta[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            c0_ = zero
            c1_ = zero
            c2_ = zero
            c3_ = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
                c0_ += v[k] * x0[k]
                c1_ += v[k] * x1[k]
                c2_ += v[k] * x2[k]
                c3_ += v[k] * x3[k]
            dst[i, d0 + j] = a0 + b[j]
            dst[i + 1, d0 + j] = a1 + b[j]
            dst[i + 2, d0 + j] = a2 + b[j]
            dst[i + 3, d0 + j] = a3 + b[j]
            dst[i, d0 + j + 1] = c0_ + b[j + 1]
            dst[i + 1, d0 + j + 1] = c1_ + b[j + 1]
            dst[i + 2, d0 + j + 1] = c2_ + b[j + 1]
            dst[i + 3, d0 + j + 1] = c3_ + b[j + 1]
            j += 2
        while j < n_out:
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
            dst[i, d0 + j] = a0 + b[j]
            dst[i + 1, d0 + j] = a1 + b[j]
            dst[i + 2, d0 + j] = a2 + b[j]
            dst[i + 3, d0 + j] = a3 + b[j]
            j += 1
        i += 4
    while i < s1:  # remaining samples one by one, four neurons at a time
        x0 = src[rows[i], c0:c0 + n_in]
        j = 0
        while j + 4 <= n_out:
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            v = theta[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            u = theta[woff + (j + 2) * n_in:woff + (j + 3) * n_in]
            t = theta[woff + (j + 3) * n_in:woff + (j + 4) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += v[k] * x0[k]
                a2 += u[k] * x0[k]
                a3 += t[k] * x0[k]
            dst[i, d0 + j] = a0 + b[j]
            dst[i, d0 + j + 1] = a1 + b[j + 1]
            dst[i, d0 + j + 2] = a2 + b[j + 2]
            dst[i, d0 + j + 3] = a3 + b[j + 3]
            j += 4
        while j < n_out:
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            a0 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
            dst[i, d0 + j] = a0 + b[j]
            j += 1
        i += 1


@njit(**_opts)
def _dense_grad(g, woff, n_in, n_out, D, e0, src, rows, c0, s0, s1):
    """g[W_jk] += sum_i D[i, e0+j] * src[rows[i], c0+k];  g[b_j] += sum_i D[i, e0+j]."""
    boff = woff + n_in * n_out
    gb = g[boff:boff + n_out]
    i = s0
    while i + 4 <= s1:
        x0 = src[rows[i], c0:c0 + n_in]
        x1 = src[rows[i + 1], c0:c0 + n_in]
        x2 = src[rows[i + 2], c0:c0 + n_in]
        x3 = src[rows[i + 3], c0:c0 + n_in]
        j = 0
        while j + 2 <= n_out:  # two neurons x four samples
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            gv = g[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            d0 = D[i, e0 + j]
            d1 = D[i + 1, e0 + j]
            d2 = D[i + 2, e0 + j]
            d3 = D[i + 3, e0 + j]
            e0_ = D[i, e0 + j + 1]
            e1_ = D[i + 1, e0 + j + 1]
            e2_ = D[i + 2, e0 + j + 1]
            e3_ = D[i + 3, e0 + j + 1]
            for k in range(n_in):
                gw[k] += (d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])
                gv[k] += (e0_ * x0[k] + e1_ * x1[k]) + (e2_ * x2[k] + e3_ * x3[k])
            gb[j] += (d0 + d1) + (d2 + d3)
            gb[j + 1] += (e0_ + e1_) + (e2_ + e3_)
            j += 2
        while j < n_out:
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            d0 = D[i, e0 + j]
            d1 = D[i + 1, e0 + j]
            d2 = D[i + 2, e0 + j]
            d3 = D[i + 3, e0 + j]
            for k in range(n_in):
                gw[k] += (d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])
            gb[j] += (d0 + d1) + (d2 + d3)
            j += 1
        i += 4
    while i < s1:  # remaining samples one by one, two neurons at a time
        x0 = src[rows[i], c0:c0 + n_in]
        j = 0
        while j + 2 <= n_out:
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            gv = g[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            d0 = D[i, e0 + j]
            e0_ = D[i, e0 + j + 1]
            for k in range(n_in):
                gw[k] += d0 * x0[k]
                gv[k] += e0_ * x0[k]
            gb[j] += d0
            gb[j + 1] += e0_
            j += 2
        while j < n_out:
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            d0 = D[i, e0 + j]
            for k in range(n_in):
                gw[k] += d0 * x0[k]
            gb[j] += d0
            j += 1
        i += 1


@njit(**_opts)
def _dense_backprop(theta, woff, n_in, n_out, D, e0, A, a0, act, s0, s1):
    """D[i, a0+k] = (sum_j W[j, k] * D[i, e0+j]) * act'(A[i, a0+k])."""
    i = s0
    while i < s1:
        nb = 4 if i + 4 <= s1 else 1
        for t in range(nb):
            D[i + t, a0:a0 + n_in] = 0.0
        if nb == 4:
            t0 = D[i, a0:a0 + n_in]
            t1 = D[i + 1, a0:a0 + n_in]
            t2 = D[i + 2, a0:a0 + n_in]
            t3 = D[i + 3, a0:a0 + n_in]
            for j in range(n_out):
                w = theta[woff + j * n_in:woff + (j + 1) * n_in]
                d0 = D[i, e0 + j]
                d1 = D[i + 1, e0 + j]
                d2 = D[i + 2, e0 + j]
                d3 = D[i + 3, e0 + j]
                for k in range(n_in):
                    t0[k] += w[k] * d0
                    t1[k] += w[k] * d1
                    t2[k] += w[k] * d2
                    t3[k] += w[k] * d3
        else:
            t0 = D[i, a0:a0 + n_in]
            for j in range(n_out):
                w = theta[woff + j * n_in:woff + (j + 1) * n_in]
                d0 = D[i, e0 + j]
                for k in range(n_in):
                    t0[k] += w[k] * d0
        for t in range(nb):
            dt = D[i + t, a0:a0 + n_in]
            at = A[i + t, a0:a0 + n_in]
            for k in range(n_in):
                dt[k] *= _derivative(at[k], act)
        i += nb


@njit(**_opts)
def _count_nonfinite(a):
    bad = 0
    for j in range(a.shape[0]):
        if not np.isfinite(a[j]):
            bad += 1
    return bad


@njit(**_opts)
def _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1):
    """Forward pass of samples ``rows[s0:s1]`` of ``X``; outputs into ``A[s0:s1]``.

    Returns the number of first-layer pre-activations that are not finite
    (inference uses it to reject NaN/inf input; training ignores it).
    """
    L = sizes.shape[0] - 1
    bad = 0
    for l in range(L):
        if l == 0:
            _dense_forward(theta, offs[0], sizes[0], sizes[1], X, rows, 0, A, aoff[0], s0, s1)
            for i in range(s0, s1):
                bad += _count_nonfinite(A[i, aoff[0]:aoff[0] + sizes[1]])
        else:
            _dense_forward(theta, offs[l], sizes[l], sizes[l + 1], A, ident, aoff[l - 1],
                           A, aoff[l], s0, s1)
        act = out if l == L - 1 else hid
        for i in range(s0, s1):
            _activate(A[i, aoff[l]:aoff[l] + sizes[l + 1]], act)
    return bad


@njit(**_opts)
def _output_delta(a, d, label, out, cost):
    """Output-layer delta ``d`` for output activations ``a``; returns (cost, predicted class)."""
    n = a.shape[0]
    c = 0.0
    best = 0
    for j in range(n):
        if a[j] > a[best]:
            best = j
        y = _1 if j == label else _0
        d[j] = a[j] - y
        if cost == QUADRATIC:
            c += 0.5 * (a[j] - y) * (a[j] - y)
        elif cost == CROSS_ENTROPY:
            p = a[j] if j == label else _1 - a[j]
            c -= np.log(max(p, 1e-300))
        elif j == label:  # LOG_LOSS
            c -= np.log(max(a[j], 1e-300))
    if cost == QUADRATIC:
        if out == SIGMOID:
            for j in range(n):
                d[j] *= a[j] * (_1 - a[j])
        else:  # softmax Jacobian: delta = J^T (a - y)
            s = a[0] - a[0]
            for j in range(n):
                s += d[j] * a[j]
            for j in range(n):
                d[j] = a[j] * (d[j] - s)
    return c, best


@njit(**_opts)
def _output_deltas(sizes, aoff, out, cost, y, rows, A, D, s0, s1):
    """Output-layer deltas of samples ``s0:s1``; returns (sum of costs, number correct)."""
    L = sizes.shape[0] - 1
    c0 = aoff[L - 1]
    total = 0.0
    correct = 0
    for i in range(s0, s1):
        lab = y[rows[i]]
        c, best = _output_delta(A[i, c0:c0 + sizes[L]], D[i, c0:c0 + sizes[L]], lab, out, cost)
        total += c
        if best == lab:
            correct += 1
    return total, correct


@njit(**_opts)
def _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident,
                    A, D, G, gc, s0, s1):
    """Forward + backprop of samples ``s0:s1``; gradient *sums* added into ``G[gc]``.

    Returns (sum of costs, number of correct predictions) of those samples.
    """
    L = sizes.shape[0] - 1
    g = G[gc]  # all zeros on entry (the update pass leaves it so)
    _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1)
    total, correct = _output_deltas(sizes, aoff, out, cost, y, rows, A, D, s0, s1)
    for l in range(L - 1, -1, -1):
        if l == 0:
            _dense_grad(g, offs[0], sizes[0], sizes[1], D, aoff[0], X, rows, 0, s0, s1)
        else:
            _dense_grad(g, offs[l], sizes[l], sizes[l + 1], D, aoff[l], A, ident,
                        aoff[l - 1], s0, s1)
            _dense_backprop(theta, offs[l], sizes[l], sizes[l + 1], D, aoff[l], A,
                            aoff[l - 1], hid, s0, s1)
    return total, correct


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


@njit(parallel=True, **_opts)
def sgd_step(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G,
             blocks, par_update, eta, decay, stats):
    """One exact SGD step on the mini-batch ``X[rows]``, updating ``theta`` in place.

    The mini-batch is split into ``chunk_count`` chunks that run in parallel,
    then the chunk gradients are summed in chunk order and
    ``W <- (1 - eta*decay) W - eta/m sum grad``, ``b <- b - eta/m sum grad``.
    Returns (sum of per-sample costs, number of correct predictions), both
    measured before the update.
    """
    m = rows.shape[0]
    nc = chunk_count(m, G.shape[1])
    if nc == 1:  # no parallel region for one chunk: waking the threads would only cost time
        cs, cc = _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                                 ident, A, D, G, 0, 0, m)
        stats[0, 0] = cs
        stats[0, 1] = cc
    else:
        for c in prange(nc):
            s0 = c * m // nc
            s1 = (c + 1) * m // nc
            cs, cc = _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                                     ident, A, D, G, c, s0, s1)
            stats[c, 0] = cs
            stats[c, 1] = cc
    total = 0.0
    correct = 0.0
    for c in range(nc):
        total += stats[c, 0]
        correct += stats[c, 1]
    step = eta / m
    keep = 1.0 - eta * decay
    if par_update:
        for bi in prange(blocks.shape[0]):
            _update_block(theta, G, nc, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2], step, keep)
    else:
        for bi in range(blocks.shape[0]):
            _update_block(theta, G, nc, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2], step, keep)
    return total, correct


@njit(**_opts)
def train_epoch(theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, ident, A, D, G,
                blocks, par_update, eta, decay, stats):
    """One epoch of SGD over ``X[perm]`` in mini-batches of ``m`` (the last may be smaller).

    The loop over mini-batches runs in compiled code; each step is one
    parallel region (:func:`sgd_step`).  Returns the sums of per-sample costs
    and of correct predictions, each measured on its mini-batch just before
    that mini-batch's update.
    """
    n = perm.shape[0]
    total = 0.0
    correct = 0.0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        cs, cc = sgd_step(theta, sizes, offs, aoff, hid, out, cost, X, y, perm[b0:b1], ident,
                          A, D, G, blocks, par_update, eta, decay, stats)
        total += cs
        correct += cc
    return total, correct


# ----------------------------------------------------------------------------
# small mini-batches: the first layer split by neurons
# ----------------------------------------------------------------------------

def use_neuron_split(sizes, m):
    """Whether mini-batches of ``m`` train faster with :func:`train_epoch_split`.

    True for small mini-batches (``SPLIT_MIN_BATCH`` to ``SPLIT_MAX_BATCH``)
    of networks with a hidden first layer holding at least ``SPLIT_MIN_SHARE``
    of the parameters (784-16-16-10: 97%, 784-30-10: 99%).  A choice of speed
    only: both epoch drivers compute the same SGD.
    """
    if len(sizes) < 3:
        return False
    n_first = sizes[0] * sizes[1] + sizes[1]
    total = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return SPLIT_MIN_BATCH <= m <= SPLIT_MAX_BATCH and n_first >= SPLIT_MIN_SHARE * total


@njit(**_opts)
def _rows_update(theta, n_in, n_out, j, nj, X, rows, D, step, keep):
    """First layer, neurons ``j:j+nj`` (nj = 1 or 2): ``W <- keep*W - step*sum_i D[i,j] x_i``.

    ``x_i = X[rows[i]]``; the deltas are ``D[:, 0:n_out]``; the bias moves by
    ``-step * sum_i D[i, j]``.  Samples go four at a time; when fewer than
    four remain, the group is the last four samples with the deltas of those
    already counted set to zero, so every group runs the blocked loop and no
    sample counts twice.
    """
    m = rows.shape[0]
    w = theta[j * n_in:(j + 1) * n_in]
    v = theta[(j + nj - 1) * n_in:(j + nj) * n_in]  # the second row (w itself when nj == 1)
    zero = theta[0] * _0
    i = 0
    while i < m:
        kk = keep if i == 0 else keep - keep + _1
        if m >= 4:
            s = min(i, m - 4)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            d0 = step * D[s, j] if s >= i else zero
            d1 = step * D[s + 1, j] if s + 1 >= i else zero
            d2 = step * D[s + 2, j] if s + 2 >= i else zero
            d3 = step * D[s + 3, j]
            if nj == 2:
                e0 = step * D[s, j + 1] if s >= i else zero
                e1 = step * D[s + 1, j + 1] if s + 1 >= i else zero
                e2 = step * D[s + 2, j + 1] if s + 2 >= i else zero
                e3 = step * D[s + 3, j + 1]
                for k in range(n_in):
                    w[k] = kk * w[k] - ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
                    v[k] = kk * v[k] - ((e0 * x0[k] + e1 * x1[k]) + (e2 * x2[k] + e3 * x3[k]))
            else:
                for k in range(n_in):
                    w[k] = kk * w[k] - ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
            i = s + 4
        else:  # fewer than four samples in the whole mini-batch
            x0 = X[rows[i]]
            d0 = step * D[i, j]
            e0 = step * D[i, j + nj - 1]
            if nj == 2:
                for k in range(n_in):
                    w[k] = kk * w[k] - d0 * x0[k]
                    v[k] = kk * v[k] - e0 * x0[k]
            else:
                for k in range(n_in):
                    w[k] = kk * w[k] - d0 * x0[k]
            i += 1
    boff = n_in * n_out
    for t in range(nj):
        g = zero
        for i in range(m):
            g += D[i, j + t]
        theta[boff + j + t] -= step * g


@njit(**_opts)
def _rows_forward(theta, n_in, n_out, j, nj, X, rows, A, act):
    """First layer, neurons ``j:j+nj``: ``A[i, j] = act(W[j] . X[rows[i]] + b[j])`` for all i.

    Four samples at a time; a last group of fewer than four is taken as the
    last four samples (recomputing some outputs, with identical results).
    """
    m = rows.shape[0]
    w = theta[j * n_in:(j + 1) * n_in]
    v = theta[(j + nj - 1) * n_in:(j + nj) * n_in]
    boff = n_in * n_out
    bw = theta[boff + j]
    bv = theta[boff + j + nj - 1]
    zero = theta[0] * _0
    i = 0
    while i < m:
        if m >= 4:
            s = min(i, m - 4)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            if nj == 2:
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
                A[s, j + 1] = c0 + bv
                A[s + 1, j + 1] = c1 + bv
                A[s + 2, j + 1] = c2 + bv
                A[s + 3, j + 1] = c3 + bv
            else:
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
            A[s, j] = a0 + bw
            A[s + 1, j] = a1 + bw
            A[s + 2, j] = a2 + bw
            A[s + 3, j] = a3 + bw
            i = s + 4
        else:
            x0 = X[rows[i]]
            a0 = zero
            c0 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                c0 += v[k] * x0[k]
            A[i, j] = a0 + bw
            A[i, j + nj - 1] = c0 + bv
            i += 1
    for i in range(m):
        _activate(A[i, j:j + nj], act)


@njit(parallel=True, **_opts)
def _split_region(theta, n_in, n_out, X, rows_u, rows_f, rows_p, D, A, act, step, keep):
    """One parallel region over pairs of first-layer neurons.

    Each pair is updated with the deltas of the mini-batch ``rows_u``, then
    (with its new weights) computes its outputs for the next mini-batch
    ``rows_f``, and starts fetching the inputs of the one after, ``rows_p``.
    A pair's arithmetic does not depend on which thread runs it.
    """
    nb = (n_out + 1) // 2
    for jb in prange(nb):
        j = 2 * jb
        nj = min(2, n_out - j)
        for r in range(jb, rows_p.shape[0], nb):  # each pair fetches a share of the rows
            xr = X[rows_p[r]]
            for k in range(0, n_in, 16):
                _prefetch(xr, k)
        if rows_u.shape[0] > 0:
            _rows_update(theta, n_in, n_out, j, nj, X, rows_u, D, step, keep)
        if rows_f.shape[0] > 0:
            _rows_forward(theta, n_in, n_out, j, nj, X, rows_f, A, act)


@njit(**_opts)
def train_epoch_split(theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, ident, A, D, G,
                      eta, decay):
    """:func:`train_epoch` with the first layer split by neurons instead of the batch by samples.

    For small mini-batches, where a parallel region per step costs as much as
    the step's arithmetic.  Per step, one parallel region (:func:`_split_region`)
    gives each pair of first-layer neurons its own rows of ``W``: it updates
    them with this mini-batch's deltas and at once computes its outputs for
    the next mini-batch, while the rows stay in the core's cache.  The layers
    after the first (a few percent of the work) run serially in between:
    forward, output delta, backpropagation down to the first layer's deltas,
    and their own update.  Little data crosses cores per step (the first
    layer's outputs and deltas), where splitting the batch moves all
    parameters and a gradient.  Same exact SGD and the same results whatever
    the thread count; differs from :func:`train_epoch` only in rounding.
    ``G[0]`` is scratch for the later layers' gradient (zero on entry and exit).
    """
    n = perm.shape[0]
    L = sizes.shape[0] - 1
    n_in = sizes[0]
    n1 = sizes[1]
    total = 0.0
    correct = 0.0
    keep = theta.dtype.type(1.0 - eta * decay)
    none = perm[:0]
    g = G[0]
    _split_region(theta, n_in, n1, X, none, perm[0:min(m, n)], perm[min(m, n):min(2 * m, n)],
                  D, A, hid, theta.dtype.type(0.0), keep)
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        mb = b1 - b0
        rows = perm[b0:b1]
        for l in range(1, L):
            _dense_forward(theta, offs[l], sizes[l], sizes[l + 1], A, ident, aoff[l - 1],
                           A, aoff[l], 0, mb)
            act = out if l == L - 1 else hid
            for i in range(mb):
                _activate(A[i, aoff[l]:aoff[l] + sizes[l + 1]], act)
        c, k = _output_deltas(sizes, aoff, out, cost, y, rows, A, D, 0, mb)
        total += c
        correct += k
        for l in range(L - 1, 0, -1):  # down to the first layer's deltas D[:, 0:n1]
            _dense_grad(g, offs[l], sizes[l], sizes[l + 1], D, aoff[l], A, ident, aoff[l - 1],
                        0, mb)
            _dense_backprop(theta, offs[l], sizes[l], sizes[l + 1], D, aoff[l], A,
                            aoff[l - 1], hid, 0, mb)
        step = eta / mb
        for l in range(1, L):
            w0 = offs[l]
            bb = w0 + sizes[l] * sizes[l + 1]
            _update_block(theta, G, 1, w0, bb, 1, step, 1.0 - eta * decay)
            _update_block(theta, G, 1, bb, bb + sizes[l + 1], 0, step, 1.0)
        _split_region(theta, n_in, n1, X, rows, perm[b1:min(b1 + m, n)],
                      perm[min(b1 + m, n):min(b1 + 2 * m, n)], D, A, hid,
                      theta.dtype.type(step), keep)
    return total, correct


@njit(parallel=True, **_opts)
def gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, grad):
    """Sum over samples ``rows`` of the per-sample gradients, into ``grad``; returns cost sum."""
    m = rows.shape[0]
    nc = chunk_count(m, G.shape[1])
    costs = np.zeros(nc)
    for c in prange(nc):
        s0 = c * m // nc
        s1 = (c + 1) * m // nc
        cs, cc = _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                                 ident, A, D, G, c, s0, s1)
        costs[c] = cs
    total = 0.0
    for c in range(nc):
        total += costs[c]
    for p in range(grad.shape[0]):
        g = G[0, p]
        G[0, p] = 0
        for c in range(1, nc):
            g += G[c, p]
            G[c, p] = 0
        grad[p] = g
    return total


@njit(parallel=True, **_opts)
def forward(theta, sizes, offs, aoff, hid, out, X, ident, A, block):
    """Forward pass of all rows of ``X`` into ``A`` (``ident`` is ``arange(len(X))``).

    ``A[:, aoff[-1]:]`` holds the network's output; rows are processed in
    parallel blocks of ``block`` samples.  Returns the number of first-layer
    pre-activations that are not finite: non-zero exactly when an input is NaN
    or infinite (or so large that the first layer overflows), which lets the
    Python layer reject such input without a separate pass over ``X``.
    """
    n = ident.shape[0]
    nblocks = (n + block - 1) // block
    bad = 0
    for bi in prange(nblocks):
        s0 = bi * block
        s1 = min(s0 + block, n)
        bad += _forward_chunk(theta, sizes, offs, aoff, hid, out, X, ident, ident, A, s0, s1)
    return bad


@njit(**_opts)
def forward_one(theta, sizes, offs, aoff, hid, out, x, a):
    """Forward pass of the single sample ``x`` (1-D) into ``a`` (length ``sum(sizes[1:])``).

    The latency path: serial, no parallel region.  Returns the count of
    non-finite first-layer pre-activations, as :func:`forward` does.
    """
    L = sizes.shape[0] - 1
    bad = 0
    for l in range(L):
        n_in, n_out, woff = sizes[l], sizes[l + 1], offs[l]
        src = x if l == 0 else a[aoff[l - 1]:aoff[l - 1] + n_in]
        dst = a[aoff[l]:aoff[l] + n_out]
        b = theta[woff + n_in * n_out:woff + n_in * n_out + n_out]
        for j in range(n_out):
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            acc = theta[0] * _0
            for k in range(n_in):
                acc += w[k] * src[k]
            dst[j] = acc + b[j]
        if l == 0:
            bad = _count_nonfinite(dst)
        _activate(dst, out if l == L - 1 else hid)
    return bad
