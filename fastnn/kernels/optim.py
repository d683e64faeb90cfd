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
parameter vector.  Each mini-batch is cut into :func:`.dense.chunk_count`
fixed chunks run in parallel (as the ``"samples"`` driver does); the chunk
gradients are summed in chunk order inside the update pass, which runs over
fixed parameter blocks: bit-identical for any thread count.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..layout import EXP, SIGMOID, SOFTMAX, layer_offsets
from ._jit import _opts
from .dense import (
    MAX_CHUNKS,
    PARALLEL_UPDATE_MIN,
    _dense_backprop,
    _dense_grad,
    _forward_chunk,
    chunk_count,
    update_blocks,
)

# optimisers and the hyper-parameter vector ``hyper`` (float64)
SGD, ADAM = 0, 1
LR, ALPHA, MOMENTUM, NESTEROV, BETA1, BETA2, EPSILON, STEP = range(8)
N_HYPER = 8


@njit(**_opts)
def _target_deltas(sizes, aoff, out, T, w, rows, A, D, s0, s1):
    """Output deltas ``w_i (a - t)`` of samples ``s0:s1``; returns their weighted loss sum.

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
    for i in range(s0, s1):
        r = rows[i]
        a = A[i, c0 : c0 + n]
        d = D[i, c0 : c0 + n]
        t = T[r]
        wi = w[r]
        c = 0.0
        for j in range(n):
            d[j] = (a[j] - t[j]) * wi
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
    return total


@njit(**_opts)
def _chunk_gradient_targets(
    theta, sizes, offs, aoff, hid, out, X, T, w, rows, ident, A, D, G, gc, s0, s1
):
    """Forward + backprop of samples ``s0:s1`` against targets; weighted gradient sums added
    into ``G[gc]``; returns the weighted loss sum of those samples."""
    L = sizes.shape[0] - 1
    g = G[gc]
    _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1)
    total = _target_deltas(sizes, aoff, out, T, w, rows, A, D, s0, s1)
    for l in range(L - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        boff = offs[l] + n_in * n_out
        if l == 0:
            _dense_grad(g, offs[0], boff, n_in, n_out, D, aoff[0], X, rows, 0, s0, s1)
        else:
            _dense_grad(g, offs[l], boff, n_in, n_out, D, aoff[l], A, ident, aoff[l - 1], s0, s1)
            _dense_backprop(theta, offs[l], n_in, n_out, D, aoff[l], A, aoff[l - 1], hid, s0, s1)
    return total


@njit(**_opts)
def _optimize_block(theta, G, nc, V, M2, lo, hi, is_w, opt, hyper, inv_s, lr_t):
    """Sum the chunk gradients of ``[lo, hi)`` (chunk order, zeroing them), add the L2 term,
    scale by ``1/S`` and apply the optimiser; returns the block's sum of squared weights
    (before the update; 0 for biases)."""
    f = theta.dtype.type
    alpha = f(hyper[ALPHA] if is_w else 0.0)
    inv = f(inv_s)
    lr = f(lr_t)
    mu = f(hyper[MOMENTUM])
    b1 = f(hyper[BETA1])
    b2 = f(hyper[BETA2])
    eps = f(hyper[EPSILON])
    one = f(1.0)
    nesterov = hyper[NESTEROV] != 0
    sq = 0.0
    for p in range(lo, hi):
        g = G[0, p]
        G[0, p] = 0
        for c in range(1, nc):
            g += G[c, p]
            G[c, p] = 0
        th = theta[p]
        if is_w:
            sq += np.float64(th) * th
        g = (g + alpha * th) * inv
        if opt == SGD:
            v = mu * V[p] - lr * g
            V[p] = v
            theta[p] = th + (mu * v - lr * g if nesterov else v)
        else:
            m1 = b1 * V[p] + (one - b1) * g
            m2 = b2 * M2[p] + (one - b2) * (g * g)
            V[p] = m1
            M2[p] = m2
            theta[p] = th - lr * m1 / (np.sqrt(m2) + eps)
    return sq


@njit(parallel=True, **_opts)
def optim_step(theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf, opt, hyper, state):
    """One step on the mini-batch ``X[rows]``; returns its loss as scikit-learn reports it.

    ``hyper[STEP]`` counts the steps (Adam's ``t``) and is advanced here.
    """
    ident, A, D, G, blocks, stats, sq = buf
    V = state[0]
    M2 = state[1]
    m = rows.shape[0]
    nc = chunk_count(m, G.shape[1])
    for c in prange(nc):
        s0 = c * m // nc
        s1 = (c + 1) * m // nc
        stats[c, 0] = _chunk_gradient_targets(
            theta, sizes, offs, aoff, hid, out, X, T, w, rows, ident, A, D, G, c, s0, s1
        )
    loss = 0.0
    for c in range(nc):
        loss += stats[c, 0]
    s = 0.0
    for i in range(m):
        s += w[rows[i]]
    if s == 0:  # all weights zero: the deltas, so the chunk gradients, are all zero
        return 0.0  # a step that changes nothing (scikit-learn would divide by zero)
    hyper[STEP] += 1
    lr_t = hyper[LR]
    if opt == ADAM:
        t = hyper[STEP]
        lr_t = hyper[LR] * np.sqrt(1.0 - hyper[BETA2] ** t) / (1.0 - hyper[BETA1] ** t)
    nb = blocks.shape[0]
    if theta.shape[0] >= PARALLEL_UPDATE_MIN:
        for bi in prange(nb):
            sq[bi] = _optimize_block(
                theta, G, nc, V, M2, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2],
                opt, hyper, 1.0 / s, lr_t,
            )  # fmt: skip
    else:
        for bi in range(nb):
            sq[bi] = _optimize_block(
                theta, G, nc, V, M2, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2],
                opt, hyper, 1.0 / s, lr_t,
            )  # fmt: skip
    l2 = 0.0
    for bi in range(nb):
        l2 += sq[bi]
    return loss / s + 0.5 * hyper[ALPHA] * l2 / s


@njit(**_opts)
def train_epoch_optim(theta, sizes, offs, aoff, hid, out, X, T, w, perm, m, buf, opt, hyper, state):
    """One epoch over ``X[perm]`` in mini-batches of ``m`` (the last may be smaller).

    Returns the sum over steps of (step loss x step size): divided by
    ``len(perm)`` it is scikit-learn's ``loss_`` for the epoch.
    """
    n = perm.shape[0]
    total = 0.0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        loss = optim_step(
            theta, sizes, offs, aoff, hid, out, X, T, w, perm[b0:b1], buf, opt, hyper, state
        )
        total += loss * (b1 - b0)
    return total


@njit(parallel=True, **_opts)
def objective(theta, sizes, offs, aoff, hid, out, X, T, w, rows, buf, alpha, grad):
    """scikit-learn's full-batch loss of ``X`` (returned) and its gradient (into ``grad``).

    What ``solver='lbfgs'`` minimises: the weighted mean loss plus
    ``alpha/2 |W|^2 / sum(w)``, over ``X[rows]`` (``rows``: ``arange(len(X))``
    for the whole set).  Rows go through in slices of the buffers'
    batch size; each slice's chunks add into the same chunk gradients, which
    are summed in chunk order at the end (fixed chunks: bit-identical for
    any thread count).  ``theta`` is not changed.
    """
    ident, A, D, G, blocks, stats, sq = buf
    n = rows.shape[0]
    m = A.shape[0]
    nc = MAX_CHUNKS
    total = 0.0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        part = rows[b0:b1]
        mb = b1 - b0
        k = min(nc, mb)
        for c in prange(k):
            s0 = c * mb // k
            s1 = (c + 1) * mb // k
            stats[c, 0] = _chunk_gradient_targets(
                theta, sizes, offs, aoff, hid, out, X, T, w, part, ident, A, D, G, c, s0, s1
            )
        for c in range(k):
            total += stats[c, 0]
    s = 0.0
    for i in range(n):
        s += w[rows[i]]
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
    return total / s + 0.5 * alpha * l2 / s


class OptimBuffers(NamedTuple):
    """The buffers of :func:`train_epoch_optim` (its argument ``buf``)."""

    ident: np.ndarray  # (m,) int64 arange(m)
    A: np.ndarray  # (m, H) activations
    D: np.ndarray  # (m, H) deltas
    G: np.ndarray  # (MAX_CHUNKS, n_params) chunk gradients, zero between steps
    blocks: np.ndarray  # (k, 3) int64 update blocks (start, stop, is_weight)
    stats: np.ndarray  # (MAX_CHUNKS, 1) float64 chunk loss sums
    sq: np.ndarray  # (k,) float64 squared-weight sums per block


def optim_buffers(sizes, m, dtype):
    """:class:`OptimBuffers` for mini-batches of up to ``m`` samples."""
    offs, n = layer_offsets(sizes)
    H = int(sum(sizes[1:]))
    blocks = update_blocks(sizes, offs)
    return OptimBuffers(
        np.arange(m, dtype=np.int64),
        np.empty((m, H), dtype),
        np.empty((m, H), dtype),
        np.zeros((MAX_CHUNKS, n), dtype),
        blocks,
        np.zeros((MAX_CHUNKS, 1)),
        np.zeros(len(blocks)),
    )
