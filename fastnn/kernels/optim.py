"""The ``"optim"`` driver: momentum, Nesterov and Adam, sample weights and target matrices.

What scikit-learn's ``MLPClassifier``/``MLPRegressor`` compute, step for step
(``sklearn/neural_network/_multilayer_perceptron.py`` and
``_stochastic_optimizers.py``, scikit-learn 1.9), in compiled code:

* targets are a matrix ``T`` (one-hot classes, label indicators or values)
  and the output delta is ``w_i (a - t)`` for the canonical pairs softmax +
  log-loss, logistic + binary log-loss, identity + squared error and exp +
  Poisson deviance;
* the gradient of a step is ``(sum_i w_i grad_i + alpha W) / S`` with ``S``
  the sum of the step's sample weights (its size when unweighted); biases
  get no ``alpha`` term;
* SGD with momentum ``mu``: ``v = mu v - lr g``, then ``theta += v`` (or
  ``theta += mu v - lr g`` with Nesterov); Adam: ``m = b1 m + (1-b1) g``,
  ``v = b2 v + (1-b2) g**2``, ``theta -= lr_t m / (sqrt(v) + eps)`` with
  ``lr_t = lr sqrt(1 - b2**t) / (1 - b1**t)``, ``t`` counted in steps;
* the reported loss of a step is its weighted mean loss plus
  ``alpha/2 |W|^2 / S``, the weights taken before the update.

The optimiser state (velocity, or Adam's two moments) has the layout of the
parameter vector.  Each mini-batch is cut into :func:`optim_chunks`
fixed chunks run in parallel (as the ``"samples"`` driver does); the chunk
gradients are summed in chunk order inside the update pass, which runs over
fixed parameter blocks: bit-identical for any thread count.  CSR inputs
train through :mod:`.columns` (the first layer split by input columns, the
whole epoch one parallel region), which shares this module's optimiser steps.

The parallel regions call their bodies (:func:`_chunk_member`,
:func:`_update_member`) by address (:func:`.team.member_address`), so that
compiling :func:`optim_step` does not compile their call trees again: a
first ``MLPClassifier`` fit on MNIST-like inputs with an empty cache took
52.7 s, 35.5 s after (2-core CI machine).
"""

from typing import NamedTuple

import numba
import numpy as np
from numba import njit, prange

from ..layout import EXP, SIGMOID, SOFTMAX, layer_offsets
from ._jit import _dot_opts, _opts
from ._llvm import _call_native, _flush_subnormals, _restore_fp
from .buffers import line_aligned_empty, whole_lines
from .dense import (
    MAX_CHUNKS,
    PARALLEL_UPDATE_MIN,
    _backprop_all,
    _chunk_totals,
    _forward_chunk,
    update_blocks,
)
from .team import member_address

# optimisers and the hyper-parameter vector ``hyper`` (float64)
SGD, ADAM = 0, 1
# ALPHA: scikit-learn's L2 term, alpha W / S; DECAY: Network's weight decay, added per step
LR, ALPHA, MOMENTUM, NESTEROV, BETA1, BETA2, EPSILON, STEP, DECAY = range(9)
N_HYPER = 9
SERIAL_STEP = 1 << 20  # steps of fewer samples x parameters run in one chunk, serially


@njit(**_opts)
def _target_deltas(sizes, aoff, out, T, w, rows, A, D, s0, s1):
    """Output deltas ``w_i (a - t)`` of samples ``s0:s1``; returns their weighted loss sum and
    the number whose largest output is where their target's largest value is.

    A softmax sample with one target not zero (a class label) takes that term's
    logarithm alone, with no branch per output: W5's output deltas (one thread,
    an epoch of batches, three runs) 0.73-0.79x the time, the same bits.

    The loss matches scikit-learn's: log-loss for softmax, binary log-loss for
    the logistic output (probabilities clipped to ``[eps, 1-eps]``), half the
    mean squared error over the outputs for the identity output, half the
    Poisson deviance ``t log(t/a) - t + a`` for the exp output.
    """
    L = sizes.shape[0] - 1
    c0 = aoff[L - 1]
    n = sizes[L]
    eps = np.finfo(A.dtype).eps
    total = 0.0
    correct = 0
    for i in range(s0, s1):
        r = rows[i]
        a = A[i, c0 : c0 + n]
        d = D[i, c0 : c0 + n]
        t = T[r]
        wi = w[r]
        c = 0.0
        used = 0  # targets not zero
        for j in range(n):
            d[j] = (a[j] - t[j]) * wi
            used += t[j] != 0
        best_t = _argmax(t)
        correct += _argmax(a) == best_t
        if out == SOFTMAX and used == 1 and t[best_t] != 0:  # one class: its term alone
            c -= t[best_t] * np.log(min(max(np.float64(a[best_t]), eps), 1 - eps))
            total += wi * c
            continue
        for j in range(n):
            if out == SOFTMAX:
                if t[j] != 0:
                    c -= t[j] * np.log(min(max(np.float64(a[j]), eps), 1 - eps))
            elif out == SIGMOID:
                p = min(max(np.float64(a[j]), eps), 1 - eps)
                if t[j] != 0:
                    c -= t[j] * np.log(p)
                if t[j] != 1:
                    c -= (1 - np.float64(t[j])) * np.log(1 - p)
            elif out == EXP:  # Poisson deviance
                tj = np.float64(t[j])
                if tj != 0:
                    c += tj * np.log(tj / a[j])
                c += np.float64(a[j]) - tj
            else:  # identity, squared error
                e = np.float64(a[j]) - t[j]
                c += 0.5 * e * e / n
        total += wi * c
    return total, correct


@njit(**_opts)
def _argmax(v):
    """The first position of the largest value of ``v`` (as ``if v[j] > v[best]: best = j``
    finds it; NaN is never larger), without a branch per value to mispredict."""
    best = 0
    top = v[0]
    for j in range(1, v.shape[0]):
        larger = v[j] > top
        best = j if larger else best
        top = v[j] if larger else top
    return best


@njit(**_opts)
def _chunk_gradient_targets(
    theta, sizes, offs, aoff, hid, out, X, T, w, rows, ident, A, D, G, gc, s0, s1
):
    """Forward + backprop of samples ``s0:s1`` against targets; weighted gradient sums added
    into ``G[gc]``; returns the weighted loss sum of those samples."""
    _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1)
    total, correct = _target_deltas(sizes, aoff, out, T, w, rows, A, D, s0, s1)
    _backprop_all(theta, G[gc], sizes, offs, aoff, hid, X, rows, ident, A, D, s0, s1)
    return total, correct


@njit(**_opts)
def _weight_sum(w, rows):
    """The sum of the sample weights of ``rows``, in order."""
    s = 0.0
    for i in range(rows.shape[0]):
        s += w[rows[i]]
    return s


@njit(**_opts)
def _step_rate(hyper, opt, t):
    """The learning rate of step ``t`` (counted from 1): Adam's has its bias correction."""
    if opt == ADAM:
        return hyper[LR] * np.sqrt(1.0 - hyper[BETA2] ** t) / (1.0 - hyper[BETA1] ** t)
    return hyper[LR]


@njit(**_opts)
def _reported_loss(loss_sum, l2, s, alpha):
    """scikit-learn's loss of a step (or of the whole set): the weighted loss sum over the
    weight sum ``s`` plus ``alpha/2 |W|^2 / s`` (``l2``: the squared weights' sum)."""
    return loss_sum / s + 0.5 * alpha * l2 / s


@njit(**_opts)
def optim_chunks(m, n_params, n_listed=0):
    """Chunks a mini-batch of ``m`` is cut into (never the thread count, so results do not
    depend on it): one, run serially, for steps of fewer than ``SERIAL_STEP`` samples x
    parameters; else chunks of at least ``n_params // 1024`` samples, and with CSR
    inputs of ``n_listed`` columns at least ``n_listed // 8``, but at least two chunks
    from eight samples on.

    Every chunk has a gradient of the whole parameter vector, summed into the
    update each step.  Measured on the 2-core CI machine, epoch of MNIST
    (medians of 3, three interleaved rounds): 784-100-10 at batch 200 with
    Adam took 0.23-0.28 s in eight chunks (:func:`.dense.chunk_count`), 0.20-0.22 s in
    two; 784-256-128-10 at batch 32 took 1.09 s in one chunk, 0.94-0.97 s in two;
    784-16-16-10 at batch 10 took 0.32-0.33 s in two chunks (a parallel region per step),
    0.19-0.21 s serially.

    With CSR inputs the count is also :mod:`.columns`' number of parts of the
    inputs, each of which lists its non-zeros by input (a pass over its column
    pointers): costs per chunk that W7's 784-32-10 (batch 100 and 200, 4 and 8
    chunks of 25 samples) paid often.  In two chunks (at least 98 samples for
    MNIST), four 5-epoch fits on 30,000 images took 2.31 -> 2.11 s on one
    thread and 1.44 -> 1.18 s on two (medians of 3).
    """
    if m * n_params < SERIAL_STEP:
        return 1
    per_chunk = max(4, min(max(n_params // 1024, n_listed // 8), m // 2))
    return max(1, min(MAX_CHUNKS, m // per_chunk))


@njit(**_dot_opts)
def _sum_squares(v):
    """``sum(v**2)`` in float64 (reassociated so that it vectorises; a fixed order per build)."""
    s = 0.0
    for p in range(v.shape[0]):
        s += np.float64(v[p]) * v[p]
    return s


@njit(**_opts)
def _apply_optimizer(theta, g, V, M2, lo, hi, is_w, opt, hyper, inv_s, lr_t):
    """The optimiser's step on ``theta[lo:hi]`` from the gradient sums ``g[lo:hi]`` (the L2
    term added, scaled by ``1/S``), zeroing ``g[lo:hi]``: one branch-free loop over views
    of the block (it vectorises)."""
    f = theta.dtype.type
    th = theta[lo:hi]
    gs = g[lo:hi]
    v = V[lo:hi]
    n = hi - lo
    alpha = f(hyper[ALPHA] if is_w else 0.0)
    decay = f(hyper[DECAY] if is_w else 0.0)
    inv = f(inv_s)
    lr = f(lr_t)
    if opt == SGD:
        mu = f(hyper[MOMENTUM])
        if hyper[NESTEROV] != 0:
            for p in range(n):
                gp = (gs[p] + alpha * th[p]) * inv + decay * th[p]
                vp = mu * v[p] - lr * gp
                v[p] = vp
                th[p] += mu * vp - lr * gp
                gs[p] = 0
        else:
            for p in range(n):
                gp = (gs[p] + alpha * th[p]) * inv + decay * th[p]
                vp = mu * v[p] - lr * gp
                v[p] = vp
                th[p] += vp
                gs[p] = 0
    else:
        m2 = M2[lo:hi]
        b1 = f(hyper[BETA1])
        b2 = f(hyper[BETA2])
        eps = f(hyper[EPSILON])
        one = f(1.0)
        for p in range(n):
            gp = (gs[p] + alpha * th[p]) * inv + decay * th[p]
            m1p = b1 * v[p] + (one - b1) * gp
            m2p = b2 * m2[p] + (one - b2) * (gp * gp)
            v[p] = m1p
            m2[p] = m2p
            th[p] -= lr * m1p / (np.sqrt(m2p) + eps)
            gs[p] = 0


@njit(**_opts)
def _optimize_block(theta, G, nc, V, M2, lo, hi, is_w, opt, hyper, inv_s, lr_t):
    """Sum the chunk gradients of ``[lo, hi)`` (chunk order, zeroing them) and apply the
    optimiser (:func:`_apply_optimizer`); returns the block's sum of squared weights
    (before the update; 0 for biases)."""
    g = G[0, lo:hi]
    n = hi - lo
    for c in range(1, nc):
        gc = G[c, lo:hi]
        for p in range(n):
            g[p] += gc[p]
            gc[p] = 0
    sq = _sum_squares(theta[lo:hi]) if is_w else 0.0
    _apply_optimizer(theta, G[0], V, M2, lo, hi, is_w, opt, hyper, inv_s, lr_t)
    return sq


@njit(**_opts)
def _update_block(theta, G, nc, V, M2, blocks, bi, opt, hyper, inv_s, lr_t):
    """Update block ``bi`` (:func:`_optimize_block`); returns its sum of squared weights.

    Subnormal numbers count as zero here (:func:`._llvm._flush_subnormals`,
    the thread's mode restored afterwards).  The optimiser state of a weight
    whose gradient stays zero or tiny decays geometrically (velocity by
    ``momentum``, Adam's moments by ``beta_1``/``beta_2``) into the subnormal
    range, where x86 arithmetic is many times slower: in float32 the Adam
    moments of MNIST's border pixels got there after 3-9 epochs of W5 and
    made epochs up to 1.75x slower.  Values below the smallest normal number
    (1.2e-38 in float32) become zero instead; float64 never gets there in
    practice (the CSR path does the same, :mod:`.columns`)."""
    lo, hi, is_w = blocks[bi, 0], blocks[bi, 1], blocks[bi, 2]
    fp = _flush_subnormals()
    sq = _optimize_block(theta, G, nc, V, M2, lo, hi, is_w, opt, hyper, inv_s, lr_t)
    _restore_fp(fp)
    return sq


@njit(**_opts)
def _chunk_member(c, nc, theta, sizes, offs, aoff, hid, out, X, T, w, rows, ident, A, D, G,
                  stats):  # fmt: skip
    """Chunk ``c`` of ``nc`` of the mini-batch ``X[rows]`` (:func:`optim_step`): its gradient
    into ``G[c]``, its loss and number correct into ``stats[c]``.  (The buffers come one
    by one: a parallel region does not take the buffers' named tuple, which holds a
    tuple.)"""
    m = rows.shape[0]
    s0 = c * m // nc
    s1 = (c + 1) * m // nc
    stats[c, 0], stats[c, 1] = _chunk_gradient_targets(
        theta, sizes, offs, aoff, hid, out, X, T, w, rows, ident, A, D, G, c, s0, s1
    )


@njit(**_opts)
def _update_member(bi, nb, theta, G, nc, V, M2, blocks, opt, hyper, inv_s, lr_t, sq):
    """Update block ``bi`` of the ``nb`` (:func:`_update_block`), its sum of squared weights
    into ``sq``."""
    sq[bi] = _update_block(theta, G, nc, V, M2, blocks, bi, opt, hyper, inv_s, lr_t)


@njit(parallel=True, **_opts)
def optim_step(
    chunk, update, theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf, opt, hyper, state
):
    """One step on the mini-batch ``X[rows]``; returns its loss as scikit-learn reports it and
    the number of its samples classified correctly (before the update).

    ``X`` is a 2-D array (CSR inputs train through :mod:`.columns`).
    ``hyper[STEP]`` counts the steps (Adam's ``t``) and is advanced here.
    ``chunk`` and ``update`` are the addresses of :func:`_chunk_member` and
    :func:`_update_member` compiled for these arguments
    (:func:`member_addresses`), called by address (:func:`._llvm._call_native`)
    so that the parallel regions do not compile their trees again.
    """
    ident, A, D, G, blocks, stats, sq, _ = buf
    V = state[0]
    M2 = state[1]
    m = rows.shape[0]
    # int64 as member_addresses typed it; n_listed given: left out, it compiled a second copy
    nc = np.int64(optim_chunks(m, G.shape[1], np.int64(0)))
    if nc == 1:  # no parallel region: waking the threads would cost more than the step
        _call_native(chunk, (np.int64(0), nc, theta, sizes, offs, aoff, hid, out, X, T, w, rows,
                             ident, A, D, G, stats))  # fmt: skip
    else:
        for c in prange(nc):
            _call_native(chunk, (np.int64(c), nc, theta, sizes, offs, aoff, hid, out, X, T, w,
                                 rows, ident, A, D, G, stats))  # fmt: skip
    loss, correct = _chunk_totals(stats, nc)
    s = _weight_sum(w, rows)
    if s == 0:  # all weights zero: the deltas, so the chunk gradients, are all zero
        return 0.0, correct  # a step that changes nothing (scikit-learn would divide by zero)
    hyper[STEP] += 1
    # the update member's scalars, of the types member_addresses compiled it for
    nb = np.int64(blocks.shape[0])
    inv_s = np.float64(1.0 / s)
    lr_t = np.float64(_step_rate(hyper, opt, hyper[STEP]))
    if theta.shape[0] >= PARALLEL_UPDATE_MIN:
        for bi in prange(nb):
            _call_native(update, (np.int64(bi), nb, theta, G, nc, V, M2, blocks, opt, hyper,
                                  inv_s, lr_t, sq))  # fmt: skip
    else:  # the same blocks one after another (each block's update is independent)
        for bi in range(nb):
            _call_native(update, (np.int64(bi), nb, theta, G, nc, V, M2, blocks, opt, hyper,
                                  inv_s, lr_t, sq))  # fmt: skip
    l2 = 0.0
    for bi in range(nb):
        l2 += sq[bi]
    return _reported_loss(loss, l2, s, hyper[ALPHA]), correct


@njit(**_opts)
def _train_epoch_optim(
    chunk, update, theta, sizes, offs, aoff, hid, out, X, T, w, perm, m, buf, opt, hyper, state
):
    """:func:`train_epoch_optim` with its members' addresses (:func:`member_addresses`)."""
    n = perm.shape[0]
    total = 0.0
    correct = 0.0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        loss, k = optim_step(
            chunk, update, theta, sizes, offs, aoff, hid, out, X, T, w, perm[b0:b1], buf, opt,
            hyper, state
        )  # fmt: skip
        total += loss * (b1 - b0)
        correct += k
    return total, correct


def _chunk_address(theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf):
    """The address of :func:`_chunk_member` compiled for these arguments and the buffers
    ``buf`` (:func:`.team.member_address`)."""
    ident, A, D, G, blocks, stats, sq, _ = buf
    return member_address(
        _chunk_member, (theta, sizes, offs, aoff, hid, out, X, T, w, rows, ident, A, D, G, stats)
    )


def member_addresses(theta, sizes, offs, aoff, hid, out, X, T, w, buf, opt, hyper, state):
    """The addresses of :func:`_chunk_member` and :func:`_update_member` compiled for the
    arguments :func:`optim_step` gives them (:func:`.team.member_address`)."""
    ident, A, D, G, blocks, stats, sq, _ = buf
    # any int64 row vector stands for the mini-batch's rows
    chunk = _chunk_address(theta, sizes, offs, aoff, hid, out, X, T, w, ident, buf)
    n = np.int64(1)  # the chunk count (int64), inv_s and lr_t (float64)
    update = member_address(
        _update_member, (theta, G, n, state[0], state[1], blocks, opt, hyper, 1.0, 1.0, sq)
    )
    return chunk, update


def train_epoch_optim(theta, sizes, offs, aoff, hid, out, X, T, w, perm, m, buf, opt, hyper, state):
    """One epoch over ``X[perm]`` in mini-batches of ``m`` (the last may be smaller).

    ``X``: a 2-D array, or CSR inputs ``(indptr, indices, values)`` (networks
    with a hidden layer), which train through :mod:`.columns`; then the first
    layer's ``W`` in ``theta``, in the gradients and in ``state`` is stored
    transposed (``(n_in, n1)`` row-major; :func:`transpose_first_layer`
    converts), so that an input's weights are one contiguous row and zero
    inputs cost nothing.
    Returns the sum over steps of (step loss x step size), which divided by
    ``len(perm)`` is scikit-learn's ``loss_`` for the epoch, and the number
    of samples classified correctly, each on its mini-batch before the update.
    """
    if isinstance(X, tuple):
        from .columns import train_epoch_columns

        want = numba.get_num_threads()
        return train_epoch_columns(theta, sizes, offs, aoff, hid, out, X, T, w, perm, m, buf, opt,
                                   hyper, state, want)  # fmt: skip
    chunk, update = member_addresses(
        theta, sizes, offs, aoff, hid, out, X, T, w, buf, opt, hyper, state
    )
    return _train_epoch_optim(
        chunk, update, theta, sizes, offs, aoff, hid, out, X, T, w, perm, m, buf, opt, hyper,
        state
    )  # fmt: skip


@njit(parallel=True, **_opts)
def _objective(chunk, theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf, alpha, grad):
    """:func:`objective` with the address of :func:`_chunk_member`
    (:func:`.team.member_address`)."""
    ident, A, D, G, blocks, stats, sq, _ = buf
    n = rows.shape[0]
    m = A.shape[0]
    nc = MAX_CHUNKS
    total = 0.0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        part = rows[b0:b1]
        mb = b1 - b0
        k = np.int64(min(nc, mb))
        for c in prange(k):
            _call_native(chunk, (np.int64(c), k, theta, sizes, offs, aoff, hid, out, X, T, w, part,
                                 ident, A, D, G, stats))  # fmt: skip
        for c in range(k):
            total += stats[c, 0]
    s = _weight_sum(w, rows)
    l2 = 0.0
    for bi in range(blocks.shape[0]):
        lo, hi, is_w = blocks[bi, 0], blocks[bi, 1], blocks[bi, 2]
        for p in range(lo, hi):
            g = G[0, p]
            G[0, p] = 0
            for c in range(1, nc):
                g += G[c, p]
                G[c, p] = 0
            if is_w:
                l2 += np.float64(theta[p]) * theta[p]
                g += alpha * theta[p]
            grad[p] = g / s
    return _reported_loss(total, l2, s, alpha)


def objective(theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf, alpha, grad):
    """scikit-learn's full-batch loss of ``X`` (returned) and its gradient (into ``grad``).

    What ``solver='lbfgs'`` minimises: the weighted mean loss plus
    ``alpha/2 |W|^2 / sum(w)``, over ``X[rows]`` (``rows``: ``arange(len(X))``
    for the whole set).  Rows go through in slices of the buffers'
    batch size; each slice's chunks add into the same chunk gradients, which
    are summed in chunk order at the end (fixed chunks: bit-identical for
    any thread count).  ``theta`` is not changed.  The chunks run
    :func:`_chunk_member` (as :func:`optim_step`'s do), called by its address.
    """
    chunk = _chunk_address(theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf)
    return _objective(chunk, theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf, alpha, grad)


class OptimBuffers(NamedTuple):
    """The buffers of :func:`train_epoch_optim` (its argument ``buf``)."""

    ident: np.ndarray  # (m,) int64 arange(m)
    A: np.ndarray  # (m, H) activations (H: sum(sizes[1:]) in whole cache lines, aligned)
    D: np.ndarray  # (m, H) deltas
    G: np.ndarray  # (MAX_CHUNKS, n_params) chunk gradients, zero between steps
    blocks: np.ndarray  # (k, 3) int64 update blocks (start, stop, is_weight)
    stats: np.ndarray  # (MAX_CHUNKS, 2) float64 chunk loss sums and correct counts
    sq: np.ndarray  # (k,) float64 squared-weight sums per block
    cols: tuple  # CSR inputs: .columns.ColumnBuffers; () for dense inputs


def optim_buffers(sizes, m, dtype, csr=None):
    """:class:`OptimBuffers` for mini-batches of up to ``m`` samples, with the CSR inputs
    ``csr`` those of :mod:`.columns` too."""
    offs, n = layer_offsets(sizes)
    blocks = update_blocks(sizes, offs)
    cols = ()
    if csr is not None:
        from .columns import column_buffers

        cols = column_buffers(np.asarray(sizes, np.int64), offs, m, dtype, csr)
    # Rows of whole cache lines, starting on one: the CSR path's gradient rows read a
    # sample's deltas (W5: 100 float32 at a stride of 110 began anywhere in a line, and
    # most 8-lane loads straddled two) once per non-zero.  Alternated whole fits: W5
    # 0.94-1.01x the time on two threads, 0.90-0.98x on one; W7's 784-32-10 0.92-1.10x
    # and 0.97x (docs/performance-notes.md).  The sparse and split drivers' buffers are
    # laid out the same way.
    H = whole_lines(int(sum(sizes[1:])), dtype)
    return OptimBuffers(
        np.arange(m, dtype=np.int64),
        line_aligned_empty((m, H), dtype),
        line_aligned_empty((m, H), dtype),
        np.zeros((MAX_CHUNKS, n), dtype),
        blocks,
        np.zeros((MAX_CHUNKS, 2)),
        np.zeros(len(blocks)),
        cols,
    )


def transpose_first_layer(vector, sizes, to_transposed):
    """Convert the first layer's ``W`` in a parameter-layout ``vector`` (in place) between
    row-major ``(n1, n_in)`` and the transposed ``(n_in, n1)`` of the CSR path."""
    n_in, n1 = sizes[0], sizes[1]
    head = vector[: n_in * n1]
    shape = (n1, n_in) if to_transposed else (n_in, n1)
    head[:] = head.reshape(shape).T.ravel()


def run_epoch(args, inputs, T, w, perm, m, buf, opt, hyper, state):
    """:func:`train_epoch_optim` (``args``: its first six arguments), with the first layer's
    weights and optimiser state transposed for the epoch and back when ``inputs`` are CSR.

    Returns ``(loss sum, number correct)``.  The parameters are in their usual
    layout again afterwards, also after an exception (a Ctrl-C).
    """
    theta, sizes = args[0], args[1]
    sparse = isinstance(inputs, tuple)
    vectors = (theta, state[0], state[1])
    if sparse:
        for v in vectors:
            transpose_first_layer(v, sizes, True)
    try:
        return train_epoch_optim(*args, inputs, T, w, perm, m, buf, opt, hyper, state)
    finally:
        if sparse:
            for v in vectors:
                transpose_first_layer(v, sizes, False)
