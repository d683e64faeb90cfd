"""The ``"split"`` driver: the first layer split by neurons, for small mini-batches.

For mini-batches of 8-32 samples of networks whose first layer holds nearly
all parameters (784-16-16-10, 784-30-10 on dense inputs), where a parallel
region per step would cost as much as the step's arithmetic.  The whole epoch
is one parallel region; each team member (:mod:`.team`) owns a range of
first-layer neuron pairs whose rows of ``W`` stay in its core's cache all
epoch, runs the small later layers itself on a private copy of their
parameters, updates its own rows with the step's deltas and at once computes
their outputs for the next mini-batch (:func:`_rows_update`,
:func:`_rows_forward`); then one barrier.  Only first-layer outputs cross
cores.  The next mini-batch's input rows are prefetched one step ahead.

Each neuron pair runs over the mini-batch in groups of four or five samples
(:func:`_group_size`); a pair's arithmetic does not depend on which member
owns it, so results are bit-identical for any team size.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..layout import count_params
from ._jit import _0, _1, _dot_opts, _opts
from ._llvm import _call_native, _prefetch
from .activations import _activate, _activate_rows, _output_deltas
from .buffers import _copy, line_aligned_empty, whole_lines
from .dense import MAX_CHUNKS, _dense_backprop, _dense_forward, _dense_grad, _update_block
from .team import _PATIENCE, _barrier, _join, member_address


@njit(**_opts)
def _group_size(m):
    """Samples per blocked group of the neuron split: 4 or 5, whichever computes fewer slots.

    A last partial group is recomputed as a whole group, so ``m`` samples cost
    ``ceil(m/g)*g`` slots: for the classic batch of 10, groups of five need 10
    slots where fours need 12 (W1 on 2 threads: 45 to 42 ms).  Ties go to five
    (fewer passes over the rows of ``W``).
    """
    if m < 5:
        return 4
    return 5 if (m + 4) // 5 * 5 <= (m + 3) // 4 * 4 else 4


@njit(**_opts)
def _rows_update(theta, bias, n_in, j, nj, X, rows, D, step, keep):
    """First layer, neurons ``j:j+nj`` (nj = 1 or 2): ``W <- keep*W - step*sum_i D[i,j] x_i``.

    ``x_i = X[rows[i]]``; the deltas are ``D[:, 0:n_out]``; the bias moves by
    ``-step * sum_i D[i, j]`` (``bias[j]``).  Samples go in groups of
    :func:`_group_size` (four or five); when fewer remain, the group is the last
    samples of the mini-batch with the deltas of those already counted set to
    zero, so every group runs a blocked loop and no sample counts twice.
    """
    m = rows.shape[0]
    w = theta[j * n_in : (j + 1) * n_in]
    v = theta[(j + nj - 1) * n_in : (j + nj) * n_in]  # the second row (w itself when nj == 1)
    zero = theta[0] * _0
    gs = _group_size(m)
    i = 0
    while i < m:
        scale = keep if i == 0 else keep - keep + _1  # weight decay once per step
        if gs == 5:
            s = min(i, m - 5)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            x4 = X[rows[s + 4]]
            d0 = step * D[s, j] if s >= i else zero
            d1 = step * D[s + 1, j] if s + 1 >= i else zero
            d2 = step * D[s + 2, j] if s + 2 >= i else zero
            d3 = step * D[s + 3, j] if s + 3 >= i else zero
            d4 = step * D[s + 4, j]
            if nj == 2:
                e0 = step * D[s, j + 1] if s >= i else zero
                e1 = step * D[s + 1, j + 1] if s + 1 >= i else zero
                e2 = step * D[s + 2, j + 1] if s + 2 >= i else zero
                e3 = step * D[s + 3, j + 1] if s + 3 >= i else zero
                e4 = step * D[s + 4, j + 1]
                for k in range(n_in):
                    w[k] = scale * w[k] - (
                        ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])) + d4 * x4[k]
                    )
                    v[k] = scale * v[k] - (
                        ((e0 * x0[k] + e1 * x1[k]) + (e2 * x2[k] + e3 * x3[k])) + e4 * x4[k]
                    )
            else:
                for k in range(n_in):
                    w[k] = scale * w[k] - (
                        ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])) + d4 * x4[k]
                    )
            i = s + 5
        elif m >= 4:
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
                    w[k] = scale * w[k] - ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
                    v[k] = scale * v[k] - ((e0 * x0[k] + e1 * x1[k]) + (e2 * x2[k] + e3 * x3[k]))
            else:
                for k in range(n_in):
                    w[k] = scale * w[k] - ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
            i = s + 4
        else:  # fewer than four samples in the whole mini-batch
            x0 = X[rows[i]]
            d0 = step * D[i, j]
            e0 = step * D[i, j + nj - 1]
            if nj == 2:
                for k in range(n_in):
                    w[k] = scale * w[k] - d0 * x0[k]
                    v[k] = scale * v[k] - e0 * x0[k]
            else:
                for k in range(n_in):
                    w[k] = scale * w[k] - d0 * x0[k]
            i += 1
    for t in range(nj):
        g = zero
        for i in range(m):
            g += D[i, j + t]
        bias[j + t] -= step * g


@njit(**_dot_opts)
def _rows_forward(theta, bias, n_in, j, nj, X, rows, E, act):
    """First layer, neurons ``j:j+nj``: ``E[j, i] = act(W[j] . X[rows[i]] + bias[j])`` for all i.

    Samples in groups of :func:`_group_size` (four or five); a last group of
    fewer is taken as the last samples of the mini-batch (recomputing some
    outputs, with identical results).
    """
    m = rows.shape[0]
    w = theta[j * n_in : (j + 1) * n_in]
    v = theta[(j + nj - 1) * n_in : (j + nj) * n_in]
    bw = bias[j]
    bv = bias[j + nj - 1]
    zero = theta[0] * _0
    gs = _group_size(m)
    i = 0
    while i < m:
        if gs == 5:
            s = min(i, m - 5)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            x4 = X[rows[s + 4]]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            a4 = zero
            if nj == 2:
                c0 = zero
                c1 = zero
                c2 = zero
                c3 = zero
                c4 = zero
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
                    a4 += w[k] * x4[k]
                    c0 += v[k] * x0[k]
                    c1 += v[k] * x1[k]
                    c2 += v[k] * x2[k]
                    c3 += v[k] * x3[k]
                    c4 += v[k] * x4[k]
                E[j + 1, s] = c0 + bv
                E[j + 1, s + 1] = c1 + bv
                E[j + 1, s + 2] = c2 + bv
                E[j + 1, s + 3] = c3 + bv
                E[j + 1, s + 4] = c4 + bv
            else:
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
                    a4 += w[k] * x4[k]
            E[j, s] = a0 + bw
            E[j, s + 1] = a1 + bw
            E[j, s + 2] = a2 + bw
            E[j, s + 3] = a3 + bw
            E[j, s + 4] = a4 + bw
            i = s + 5
        elif m >= 4:
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
                E[j + 1, s] = c0 + bv
                E[j + 1, s + 1] = c1 + bv
                E[j + 1, s + 2] = c2 + bv
                E[j + 1, s + 3] = c3 + bv
            else:
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
            E[j, s] = a0 + bw
            E[j, s + 1] = a1 + bw
            E[j, s + 2] = a2 + bw
            E[j, s + 3] = a3 + bw
            i = s + 4
        else:
            x0 = X[rows[i]]
            a0 = zero
            c0 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                c0 += v[k] * x0[k]
            E[j, i] = a0 + bw
            E[j + nj - 1, i] = c0 + bv
            i += 1
    for t in range(nj):
        _activate(E[j + t, 0:m], act)


@njit(**_opts)
def _prefetch_rows(X, rows, n_in):
    """Start loading the input rows ``X[rows]`` into the cache."""
    step = max(1, 64 // X.itemsize)
    for r in range(rows.shape[0]):
        xr = X[rows[r]]
        for k in range(0, n_in, step):
            _prefetch(xr, k)


@njit(**_opts)
def _team_member(
    slot,
    team,
    theta,
    sizes,
    offs,
    aoff,
    hid,
    out,
    cost,
    X,
    y,
    perm,
    m,
    buf,
    eta,
    decay,
):
    """One member's share of :func:`train_epoch_split` (see there)."""
    ident, A, D, P, G, E, stats, sync = buf
    n = perm.shape[0]
    L = sizes.shape[0] - 1
    n_in = sizes[0]
    n1 = sizes[1]
    npairs = (n1 + 1) // 2
    j0 = 2 * (slot * npairs // team)  # this member's first-layer neurons j0:j1
    j1 = min(2 * ((slot + 1) * npairs // team), n1)
    base = n_in * n1  # theta[base:]: first-layer biases, then the later layers
    Pt = P[slot, 0 : theta.shape[0] - base]
    _copy(Pt, theta[base:])
    bias = Pt[0:n1]
    offp = offs - base  # the later layers' offsets in Pt
    At = A[slot]
    Dt = D[slot]
    Gt = G[slot : slot + 1]
    keep = theta.dtype.type(1.0 - eta * decay)
    total = 0.0
    correct = 0.0
    zero = np.int64(0)  # int64 arguments, never literals: one compile of each kernel
    _prefetch_rows(X, perm[0 : min(2 * m, n)], n_in)
    for j in range(j0, j1, 2):
        _rows_forward(theta, bias, n_in, j, min(2, j1 - j), X, perm[0 : min(m, n)], E[0], hid)
    phase = np.int64(1)  # not a literal: a Literal[int](1) compiles _barrier again
    _barrier(sync, team, phase)
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        mb = b1 - b0
        rows = perm[b0:b1]
        Eb = E[(b0 // m) % 2]
        for i in range(mb):  # all first-layer outputs, this member's and the others'
            for j in range(n1):
                At[i, j] = Eb[j, i]
        for l in range(1, L):
            n_in_l, n_out = sizes[l], sizes[l + 1]
            _dense_forward(
                Pt,
                offp[l],
                offp[l] + n_in_l * n_out,
                n_in_l,
                n_out,
                At,
                ident,
                aoff[l - 1],
                At,
                aoff[l],
                zero,
                mb,
            )
            _activate_rows(At, zero, mb, aoff[l], sizes[l + 1], out if l == L - 1 else hid)
        c, ok = _output_deltas(sizes, aoff, out, cost, y, rows, At, Dt, zero, mb)
        total += c
        correct += ok
        for l in range(L - 1, 0, -1):  # down to the first layer's deltas Dt[:, 0:n1]
            n_in_l, n_out = sizes[l], sizes[l + 1]
            _dense_grad(
                Gt[0],
                offp[l],
                offp[l] + n_in_l * n_out,
                n_in_l,
                n_out,
                Dt,
                aoff[l],
                At,
                ident,
                aoff[l - 1],
                zero,
                mb,
            )
            _dense_backprop(Pt, offp[l], n_in_l, n_out, Dt, aoff[l], At, aoff[l - 1], hid, zero, mb)
        step = eta / mb
        for l in range(1, L):
            w0 = offp[l]
            bb = w0 + sizes[l] * sizes[l + 1]
            # literal flags, as always here: with int64 ones this driver trained other bits
            # (with is_w a literal 0, keep = 1 folds out of the bias update's rounding)
            _update_block(Pt, Gt, 1, w0, bb, 1, step, 1.0 - eta * decay)
            _update_block(Pt, Gt, 1, bb, bb + sizes[l + 1], 0, step, 1.0)
        nxt = perm[b1 : min(b1 + m, n)]
        _prefetch_rows(X, perm[min(b1 + m, n) : min(b1 + 2 * m, n)], n_in)
        En = E[(b1 // m) % 2]
        for j in range(j0, j1, 2):
            nj = min(2, j1 - j)
            _rows_update(theta, bias, n_in, j, nj, X, rows, Dt, theta.dtype.type(step), keep)
            if nxt.shape[0] > 0:
                _rows_forward(theta, bias, n_in, j, nj, X, nxt, En, hid)
        if nxt.shape[0] > 0:
            phase += 1
            _barrier(sync, team, phase)
    _copy(theta[base + j0 : base + j1], bias[j0:j1])
    if slot == 0:
        _copy(theta[base + n1 :], Pt[n1:])
        stats[0, 0] = total
        stats[0, 1] = correct


@njit(parallel=True, **_opts)
def _train_epoch_split(
    member, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta, decay
):  # fmt: skip
    """The parallel region of :func:`train_epoch_split`: ``member`` is the address of
    :func:`_team_member` compiled for these arguments (:func:`.team.member_address`)."""
    ident, A, D, P, G, E, stats, sync = buf
    for i in range(sync.shape[0]):
        sync[i] = 0
    for _ in prange(want):
        slot, team = _join(sync, want, _PATIENCE)
        if slot >= 0:
            _call_native(member, (np.int64(slot), np.int64(team), theta, sizes, offs, aoff, hid,
                                  out, cost, X, y, perm, m, buf, eta, decay))  # fmt: skip
    return stats[0, 0], stats[0, 1]


def train_epoch_split(
    theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta, decay
):  # fmt: skip
    """:func:`train_epoch` with the first layer split by neurons instead of the batch by samples.

    For small mini-batches, where a parallel region per step would cost as
    much as the step's arithmetic.  The whole epoch is one parallel region.
    Its ``want`` members (at most one per thread) each own a contiguous
    range of first-layer neuron pairs, whose rows of ``W`` stay in the
    member's cache all epoch.  Per mini-batch, each member

    1. gathers the first-layer outputs of all members (from ``E``);
    2. runs the small later layers itself on a private copy of all
       parameters after the first layer's weights (``P[slot]``: the first
       layer's biases and the later layers, identical in every member):
       forward, output deltas, backpropagation down to the first layer's
       deltas, update;
    3. updates its own first-layer rows with the mini-batch's deltas and at
       once computes their outputs for the next mini-batch into ``E`` (two
       buffers, alternating), and prefetches the inputs of the one after;
    4. waits at a barrier for the others.

    Members join through :func:`_join`, which closes the team if the threading
    layer does not run all ``want`` at once, and run :func:`_team_member`,
    called by its address (:func:`.team.member_address`).  Returns (sum of costs, number
    correct), like :func:`train_epoch`.

    One barrier per step; only the first-layer outputs cross cores.  Each
    pair's arithmetic, and the later layers', is the same whatever the team
    size, so results are bit-identical for any thread count; they differ
    from :func:`train_epoch` only in rounding.  ``buf`` is a :class:`SplitBuffers`.
    """
    member = member_address(
        _team_member, (theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, eta, decay)
    )
    return _train_epoch_split(
        member, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta, decay
    )


class SplitBuffers(NamedTuple):
    """The buffers of :func:`train_epoch_split` (its argument ``buf``).

    ``team`` members, batch ``m``, ``H`` = ``sum(sizes[1:])`` rounded up to
    whole cache lines, ``n1 = sizes[1]``, ``rest = n_params - sizes[0]*n1``
    rounded up to whole lines.  All cache-line aligned.
    """

    ident: np.ndarray  # (m,) int64 arange(m)
    A: np.ndarray  # (team, m, H) each member's activations
    D: np.ndarray  # (team, m, H) each member's deltas
    P: np.ndarray  # (team, rest) each member's copy of theta[sizes[0]*n1:]
    G: np.ndarray  # (team, rest) each member's gradient of those, all zero
    E: np.ndarray  # (2, n1, m rounded to lines) first-layer outputs, by neuron, alternating
    stats: np.ndarray  # (MAX_CHUNKS, 2) float64: cost sum and correct count in row 0
    sync: np.ndarray  # (48,) int64 team counters (see .team)


def split_units(sizes, m):
    """Most members that get work: one per neuron pair of the first layer."""
    return (sizes[1] + 1) // 2


def split_buffers(sizes, m, dtype, team):
    """:class:`SplitBuffers` for mini-batches of up to ``m`` and up to ``team`` members."""
    H = whole_lines(sum(sizes[1:]), dtype)
    n1 = sizes[1]
    rest = whole_lines(count_params(sizes) - sizes[0] * n1, dtype)
    G = line_aligned_empty((team, rest), dtype)
    G[...] = 0
    return SplitBuffers(
        np.arange(m, dtype=np.int64),
        line_aligned_empty((team, m, H), dtype),
        line_aligned_empty((team, m, H), dtype),
        line_aligned_empty((team, rest), dtype),
        G,
        line_aligned_empty((2, n1, whole_lines(m, dtype)), dtype),
        np.zeros((MAX_CHUNKS, 2)),
        np.zeros(48, np.int64),
    )
