"""The ``"sparse"`` driver: inputs in CSR form, the first layer in lane vectors.

MNIST pixels are 81% zero.  For inputs with few non-zeros and first layers of
at most 32 neurons, the first layer's ``W`` is stored transposed (each member
keeps a private copy), so that one input's weights to 16 neurons are one lane
vector (:mod:`.lanes`): per non-zero input one vector multiply-add forward and
one in the update; the zeros cost nothing.  Each sample's non-zeros are
prefetched two mini-batches ahead (a sample's non-zeros sit at a random place
in memory) and column indices are int16 where the columns allow.

Every member keeps a whole private copy of the parameters and applies every
update itself, in the same order; the mini-batch is shared out in fixed
chunks of samples (:func:`sparse_chunks`, never the team size), and only
deltas and small gradients cross cores, once per step.  Bit-identical for any
team size.  The later layers run on the dense chunk kernels.

The CSR form is built straight from the user's array (:mod:`.csr`): no dense
float copy of the training set is made.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..layout import count_params
from ._jit import _1, _opts
from ._llvm import _call_native
from .activations import _activate
from .buffers import _copy, line_aligned_empty, whole_lines
from .csr import _prefetch_sparse_rows
from .dense import MAX_CHUNKS, _chunk_totals, _later_layers, _update_sum
from .lanes import LANES, _lanes_sparse_axpy, _lanes_sparse_dot
from .team import _PATIENCE, _barrier, _join, member_address

SPARSE_SAMPLES_PER_CHUNK = 5  # samples per chunk of a mini-batch (fewer lose the blocking)


@njit(**_opts)
def sparse_chunks(m):
    """Chunks of a mini-batch of ``m`` in :func:`train_epoch_sparse` (never the thread count)."""
    return max(1, min(MAX_CHUNKS, m // SPARSE_SAMPLES_PER_CHUNK))


@njit(**_opts)
def _sparse_member(
    slot,
    team,
    theta,
    sizes,
    offs,
    aoff,
    hid,
    out,
    cost,
    indptr,
    indices,
    values,
    y,
    perm,
    m,
    buf,
    eta,
    decay,
):
    """One member's share of :func:`train_epoch_sparse` (see there), called by address."""
    ident, A, D, P, G, Z, CS, sync = buf
    n = perm.shape[0]
    L = sizes.shape[0] - 1
    n_in = sizes[0]
    n1 = sizes[1]
    n1p = Z.shape[2]  # first-layer neurons padded to whole lane vectors
    wlen = n_in * n1p
    base = n_in * n1  # theta[base:]: first-layer biases, then the later layers
    rest = theta.shape[0] - base
    WT = P[slot, 0:wlen]  # private first layer, transposed: WT[k*n1p + j] = W[j, k]
    Pt = P[slot, wlen : wlen + rest]  # private copy of theta[base:]
    for k in range(n_in):
        for j in range(n1):
            WT[k * n1p + j] = theta[j * n_in + k]
        for j in range(n1, n1p):
            WT[k * n1p + j] = 0
    _copy(Pt, theta[base:])
    bias = Pt[0:n1]
    offp = offs - base
    At = A[slot]
    Zt = Z[slot]
    keep = theta.dtype.type(1.0 - eta * decay)
    one = keep - keep + _1
    for b0 in range(0, min(2 * m, n), m):  # the first two mini-batches' inputs
        mb = min(m, n - b0)
        nc = sparse_chunks(mb)
        for c in range(slot, nc, team):
            _prefetch_sparse_rows(
                indptr, indices, values, perm[b0 + c * mb // nc : b0 + (c + 1) * mb // nc]
            )
    phase = 0
    par = 0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        mb = b1 - b0
        rows = perm[b0:b1]
        nc = sparse_chunks(mb)
        Dp = D[par]
        Gp = G[par]
        for c in range(slot, nc, team):  # this member's chunks of samples
            s0 = c * mb // nc
            s1 = (c + 1) * mb // nc
            # this chunk's inputs two mini-batches ahead (one ahead left 3 ms of misses)
            _prefetch_sparse_rows(
                indptr, indices, values, perm[min(b1 + m + s0, n) : min(b1 + m + s1, n)]
            )
            for i in range(s0, s1):
                s = rows[i]
                z = Zt[i]
                for j in range(n1):
                    z[j] = bias[j]
                for j in range(n1, n1p):
                    z[j] = 0
                for v in range(0, n1p, LANES):
                    _lanes_sparse_dot(WT, v, n1p, indices, values, indptr[s], indptr[s + 1], z, v)
                a = At[i, 0:n1]
                _copy(a, z[0:n1])
                _activate(a, hid)
            g = Gp[c, 0:rest]
            for p in range(rest):
                g[p] = 0
            cs, cc = _later_layers(
                Pt, offp, sizes, aoff, hid, out, cost, y, rows, ident, At, Dp, g, s0, s1
            )
            CS[c, 0] += cs
            CS[c, 1] += cc
            for i in range(s0, s1):  # the first layer's bias gradient
                for j in range(n1):
                    g[j] += Dp[i, j]
        phase += 1
        _barrier(sync, team, phase)
        # every member applies the whole update to its own copy, in the same order
        step = theta.dtype.type(eta / mb)
        _update_sum(Pt, Gp, nc, np.int64(0), n1, step, one)  # not a literal: one compile
        for l in range(1, L):
            w0 = offp[l]
            bb = w0 + sizes[l] * sizes[l + 1]
            _update_sum(Pt, Gp, nc, w0, bb, step, keep)
            _update_sum(Pt, Gp, nc, bb, bb + sizes[l + 1], step, one)
        if keep != one:
            for p in range(wlen):
                WT[p] *= keep
        d = Zt[0]
        for i in range(mb):
            s = rows[i]
            for j in range(n1):
                d[j] = Dp[i, j]
            for j in range(n1, n1p):
                d[j] = 0
            for v in range(0, n1p, LANES):
                _lanes_sparse_axpy(
                    WT, v, n1p, indices, values, indptr[s], indptr[s + 1], d, v, -step
                )
        par = 1 - par
    if slot == 0:
        for k in range(n_in):
            for j in range(n1):
                theta[j * n_in + k] = WT[k * n1p + j]
        _copy(theta[base:], Pt)


@njit(parallel=True, **_opts)
def _train_epoch_sparse(
    member,
    theta,
    sizes,
    offs,
    aoff,
    hid,
    out,
    cost,
    indptr,
    indices,
    values,
    y,
    perm,
    m,
    buf,
    want,
    eta,
    decay,
):
    """The parallel region of :func:`train_epoch_sparse`: ``member`` is the address of
    :func:`_sparse_member` compiled for these arguments (:func:`.team.member_address`)."""
    ident, A, D, P, G, Z, CS, sync = buf
    for i in range(sync.shape[0]):
        sync[i] = 0
    for c in range(CS.shape[0]):
        CS[c, 0] = 0.0
        CS[c, 1] = 0.0
    for _ in prange(want):
        slot, team = _join(sync, want, _PATIENCE)
        if slot >= 0:
            _call_native(member, (np.int64(slot), np.int64(team), theta, sizes, offs, aoff, hid,
                                  out, cost, indptr, indices, values, y, perm, m, buf, eta,
                                  decay))  # fmt: skip
    return _chunk_totals(CS, CS.shape[0])


def train_epoch_sparse(
    theta, sizes, offs, aoff, hid, out, cost, indptr, indices, values, y, perm, m, buf, want, eta,
    decay
):  # fmt: skip
    """Epoch driver for sparse inputs, given as CSR (``indptr``, ``indices``, ``values``).

    The first layer works in lane vectors of 16 neurons over the non-zero
    inputs only: a sample's forward pass is one vector multiply-add per
    non-zero input (:func:`_lanes_sparse_dot`), and the update moves only the
    rows of ``W`` of its non-zero inputs (:func:`_lanes_sparse_axpy`), with
    ``W`` transposed so that a row is one lane vector.

    One parallel region per epoch, a team as in :func:`train_epoch_split`,
    whose members run :func:`_sparse_member`, called by its address.
    Every member keeps a private copy of all parameters (``P[slot]``: the
    first layer transposed and padded, then ``theta[n_in*n1:]``).  Per step
    the mini-batch is cut into :func:`sparse_chunks` fixed chunks of
    samples; each member runs its chunks through the whole network (forward,
    output deltas, backpropagation), writing the chunk's gradient of
    everything but the first layer's weights into ``G[par, c]`` and the
    first layer's deltas into ``D[par]``.  After one barrier, every member
    applies the whole update to its own copy, in the same order: chunk
    gradients summed in chunk order, first-layer rows moved sample by sample.
    The buffers alternate between steps (``par``), so one barrier per step
    suffices.  Only deltas and small gradients cross cores, never weights.
    Bit-identical for any thread count.  Returns (sum of costs, number
    correct).

    ``buf`` is a :class:`SparseBuffers`.  ``indices`` must lie in
    ``[0, sizes[0])``: the lane kernels do not check them.
    """
    member = member_address(
        _sparse_member,
        (theta, sizes, offs, aoff, hid, out, cost, indptr, indices, values, y, perm, m, buf, eta,
         decay),
    )  # fmt: skip
    return _train_epoch_sparse(
        member, theta, sizes, offs, aoff, hid, out, cost, indptr, indices, values, y, perm, m,
        buf, want, eta, decay
    )  # fmt: skip


class SparseBuffers(NamedTuple):
    """The buffers of :func:`train_epoch_sparse` (its argument ``buf``).

    ``team`` members, batch ``m``, ``H`` = ``sum(sizes[1:])`` rounded up to
    whole cache lines, ``n1p`` = ``sizes[1]`` rounded up to whole lane
    vectors, ``rest = n_params - sizes[0]*sizes[1]``.  Cache-line aligned.
    """

    ident: np.ndarray  # (m,) int64 arange(m)
    A: np.ndarray  # (team, m, H) each member's activations
    D: np.ndarray  # (2, m, H) deltas, shared, alternating between steps
    P: np.ndarray  # (team, >= sizes[0]*n1p + rest) each member's copy: W1 transposed, the rest
    G: np.ndarray  # (2, MAX_CHUNKS, >= rest) chunk gradients, alternating between steps
    Z: np.ndarray  # (team, m, n1p) first-layer pre-activations (then deltas) in lane vectors
    CS: np.ndarray  # (MAX_CHUNKS, 2) float64 chunk cost sums and correct counts
    sync: np.ndarray  # (48,) int64 team counters (see .team)


def sparse_units(sizes, m):
    """Most members that get work: one per chunk of the mini-batch."""
    return sparse_chunks(m)


def sparse_buffers(sizes, m, dtype, team):
    """:class:`SparseBuffers` for mini-batches of up to ``m`` and up to ``team`` members."""
    n_in, n1 = sizes[0], sizes[1]
    n1p = -(-n1 // LANES) * LANES
    rest = count_params(sizes) - n_in * n1
    H = whole_lines(sum(sizes[1:]), dtype)
    return SparseBuffers(
        np.arange(m, dtype=np.int64),
        line_aligned_empty((team, m, H), dtype),
        line_aligned_empty((2, m, H), dtype),
        line_aligned_empty((team, whole_lines(n_in * n1p + rest, dtype)), dtype),
        line_aligned_empty((2, MAX_CHUNKS, whole_lines(rest, dtype)), dtype),
        line_aligned_empty((team, m, n1p), dtype),
        np.zeros((MAX_CHUNKS, 2)),
        np.zeros(48, np.int64),
    )
