"""The ``"optim"`` driver's epoch for CSR inputs: the first layer split by input columns.

With CSR inputs the first layer's ``W`` is stored transposed (``theta[k*n1:(k+1)*n1]``
holds input ``k``'s weights to every neuron, :func:`.optim.train_epoch_optim`).
Its rows are cut into ``nc`` fixed parts of consecutive inputs (:func:`column_cuts`:
as many parts as :func:`.optim.optim_chunks` gives the batch chunks, holding
about equal numbers of the training set's non-zeros).  The whole epoch is one
parallel region; a team (:mod:`.team`) meets at two barriers per mini-batch:

1. **by part**: each member owns parts; for every sample of the batch it sums
   the non-zeros that fall in its part (a binary search finds them in the
   sample's sorted column indices) over their rows of ``W``: part 0 into the
   activations ``A`` (starting from the bias), part ``q`` into ``Z[q-1]``.
   It also lists its part's non-zeros of the batch by input column;
2. **by chunk of samples**: ``A += Z[0] + Z[1] + ...`` (in part order), the
   activation, the later layers, the output deltas and the later layers'
   gradients (into the chunk's ``G[c]``), as :func:`.optim.optim_step`'s chunks do;
3. **by part again, no barrier after**: each member sums the first-layer gradient
   rows of its parts over its column lists and updates them at once with the
   optimiser (:func:`.optim._optimize_first_rows`); the later layers' update
   blocks are shared out too.  A member then starts the next batch's first
   part at once: it needs only its own rows of ``W``.

A part's rows of ``W`` and its optimiser state never leave the core that owns
them; only the partial sums ``Z``, the deltas and the later layers cross.  In
:func:`.optim.optim_step` every step moved the rows the other thread updated and
started two parallel regions.  The arithmetic of every part and chunk is
fixed by the batch and network sizes and by ``column_cuts``, never by the team
size: bit-identical for any thread count.  With one part (small steps) the
sums are those of :func:`.optim.optim_step`: ``b + sum_p x_p W[k_p]`` in order.

The reported loss is :func:`.optim.optim_step`'s (the weights' squares summed before
each update, per block, in block order).  Each step's loss is totalled by
member 0 during the next step's chunk phase, the last one's after the region.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ._jit import _opts
from ._llvm import _call_native, _flush_subnormals, _prefetch, _restore_fp
from .activations import _activate
from .csr import _prefetch_sparse_rows
from .dense import UPDATE_BLOCK, _backprop_later, _forward_later, update_blocks
from .optim import (
    ADAM,
    ALPHA,
    BETA1,
    BETA2,
    LR,
    POINTER_AHEAD,
    ROW_AHEAD,
    STEP,
    _optimize_block,
    _optimize_first_rows,
    _rows_dot,
    _target_deltas,
)
from .team import _PATIENCE, _barrier, _join, member_address


@njit(**_opts)
def _first_at_least(indices, lo, hi, k):
    """The first position ``p`` in ``[lo, hi)`` with ``indices[p] >= k`` (``hi`` if none);
    the indices of a row are ascending."""
    while lo < hi:
        mid = (lo + hi) >> 1
        if indices[mid] < k:
            lo = mid + 1
        else:
            hi = mid
    return lo


@njit(**_opts)
def _part_forward(theta, n1, bias, indptr, indices, values, rows, q, nc, k0, k1, dst, bounds):
    """Part ``q`` (inputs ``k0:k1``) of the first layer's sums of the batch ``rows``:
    ``dst[i, :n1] = (bias if q == 0 else 0) + sum_p values[p] W^T[indices[p]]`` over
    sample ``i``'s non-zeros in the part, whose positions ``[pb, pe)`` go to
    ``bounds[i]``.  Rows are prefetched ahead as in :func:`.optim._sparse_first_layer`."""
    m = rows.shape[0]
    zero = np.int64(0)  # not a literal: one compile of _rows_dot
    for i in range(m):
        if i + POINTER_AHEAD < m:
            _prefetch(indptr, rows[i + POINTER_AHEAD])
        if i + ROW_AHEAD < m:
            _prefetch_sparse_rows(indptr, indices, values, rows[i + ROW_AHEAD : i + ROW_AHEAD + 1])
        r = rows[i]
        p0 = indptr[r]
        p1 = indptr[r + 1]
        pb = p0 if q == 0 else _first_at_least(indices, p0, p1, k0)
        pe = p1 if q == nc - 1 else _first_at_least(indices, pb, p1, k1)
        bounds[i, 0] = pb
        bounds[i, 1] = pe
        a = dst[i, 0:n1]
        if q == 0:
            for j in range(n1):
                a[j] = bias[j]
        else:
            for j in range(n1):
                a[j] = 0
        _rows_dot(theta, zero, n1, indices, values, pb, pe, a, zero, n1)


@njit(**_opts)
def _part_columns(indices, values, bounds, m, k0, k1, cp, fill, cs, cv):
    """The batch's non-zeros of inputs ``k0:k1`` by input: input ``k``'s batch positions
    (ascending) are ``cs[cp[k]:cp[k+1]]``, its values ``cv`` (``bounds[i]``: sample
    ``i``'s positions in the part).  Unsigned indices, as in :func:`.optim._chunk_columns`."""
    for k in range(k0, k1 + 1):
        cp[k] = 0
    one = np.uint64(1)
    for i in range(m):
        for p in range(np.uint64(bounds[i, 0]), np.uint64(bounds[i, 1])):
            cp[np.uint64(indices[p]) + one] += 1
    for k in range(k0, k1):
        cp[k + 1] += cp[k]
        fill[k] = cp[k]
    for i in range(m):
        for p in range(np.uint64(bounds[i, 0]), np.uint64(bounds[i, 1])):
            k = np.uint64(indices[p])
            j = np.uint64(fill[k])
            cs[j] = i
            cv[j] = values[p]
            fill[k] = j + one


@njit(**_opts)
def _chunk_later(theta, sizes, offs, aoff, hid, out, T, w, rows, ident, A, D, Z, g, nc, c0, c1):
    """Samples ``c0:c1`` of the batch after the first layer's part sums: ``A += Z[0] + ...``,
    the activation, the later layers, the output deltas, the later layers' gradient
    sums and the first layer's bias sums (into ``g``); returns the loss sum and the
    number correct."""
    n1 = sizes[1]
    for i in range(c0, c1):
        _prefetch(T[rows[i]], 0)
        _prefetch(w, rows[i])
    for i in range(c0, c1):
        a = A[i, 0:n1]
        for q in range(nc - 1):
            z = Z[q, i, 0:n1]
            for j in range(n1):
                a[j] += z[j]
        _activate(a, hid)
    _forward_later(theta, offs, sizes, aoff, hid, out, A, ident, c0, c1)
    total, correct = _target_deltas(sizes, aoff, out, T, w, rows, A, D, c0, c1)
    _backprop_later(theta, offs, sizes, aoff, hid, A, ident, D, g, c0, c1)
    b0 = sizes[0] * n1
    gb = g[b0 : b0 + n1]
    for i in range(c0, c1):
        d = D[i, 0:n1]
        for j in range(n1):
            gb[j] += d[j]
    return total, correct


@njit(**_opts)
def _step_scalars(hyper, opt, t):
    """The learning rate of step ``t`` (Adam's bias correction included)."""
    if opt == ADAM:
        return hyper[LR] * np.sqrt(1.0 - hyper[BETA2] ** t) / (1.0 - hyper[BETA1] ** t)
    return hyper[LR]


@njit(**_opts)
def _weight_sum(w, rows):
    s = 0.0
    for i in range(rows.shape[0]):
        s += w[rows[i]]
    return s


@njit(**_opts)
def _account(stats, sq, par, nc, s, mb, alpha, acc):
    """Add step ``par``'s loss x size and number correct into ``acc`` (as
    :func:`.optim.optim_step` reports them: a step whose weights sum to 0 has loss 0)."""
    loss = 0.0
    for c in range(nc):
        loss += stats[par, c, 0]
        acc[1] += stats[par, c, 1]
    if s == 0:
        return
    l2 = 0.0
    for bi in range(sq.shape[1]):
        l2 += sq[par, bi]
    acc[0] += (loss / s + 0.5 * alpha * l2 / s) * mb


@njit(**_opts)
def _columns_member(slot, team, theta, sizes, offs, aoff, hid, out, indptr, indices, values, T, w,
                    perm, m, opt, hyper, V, M2, ident, A, D, G, Z, bounds, cuts, cp, fill, cs, cv,
                    blocks, sq, stats, acc, sync):  # fmt: skip
    """Member ``slot`` of a team of ``team`` (:func:`train_epoch_columns`)."""
    n = perm.shape[0]
    nc = cuts.shape[0] - 1
    n1 = sizes[1]
    bias = theta[sizes[0] * n1 : sizes[0] * n1 + n1]
    t = hyper[STEP]
    phase = 0
    prev_s = 0.0
    prev_mb = 0
    st = 0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        rows = perm[b0:b1]
        mb = b1 - b0
        par = st & 1
        for q in range(slot, nc, team):
            dst = A if q == 0 else Z[q - 1]
            k0, k1 = cuts[q], cuts[q + 1]
            _part_forward(theta, n1, bias, indptr, indices, values, rows, q, nc, k0, k1, dst,
                          bounds[q])  # fmt: skip
            _part_columns(indices, values, bounds[q], mb, k0, k1, cp[q], fill[q], cs[q], cv[q])
        phase += 1
        _barrier(sync, team, phase)
        for c in range(slot, nc, team):
            c0 = c * mb // nc
            c1 = (c + 1) * mb // nc
            stats[par, c, 0], stats[par, c, 1] = _chunk_later(
                theta, sizes, offs, aoff, hid, out, T, w, rows, ident, A, D, Z, G[c], nc, c0, c1
            )
        if slot == 0 and st > 0:
            _account(stats, sq, 1 - par, nc, prev_s, prev_mb, hyper[ALPHA], acc)
        phase += 1
        _barrier(sync, team, phase)
        s = _weight_sum(w, rows)
        if s != 0:  # else all deltas, so all gradients, are zero: no step (optim_step)
            t += 1
            lr_t = _step_scalars(hyper, opt, t)
            inv_s = 1.0 / s
            fp = _flush_subnormals()
            for bi in range(blocks.shape[0]):
                lo, hi, q = blocks[bi, 0], blocks[bi, 1], blocks[bi, 3]
                if blocks[bi, 4] % team != slot:
                    continue
                if q >= 0:
                    csc = (cp[q : q + 1], fill[q : q + 1], cs[q], cv[q])
                    sq[par, bi] = _optimize_first_rows(
                        theta, G, np.int64(1), V, M2, lo, hi, n1, D, csc, opt, hyper, inv_s, lr_t
                    )
                else:
                    sq[par, bi] = _optimize_block(
                        theta, G, nc, V, M2, lo, hi, blocks[bi, 2], opt, hyper, inv_s, lr_t
                    )
            _restore_fp(fp)
        prev_s = s
        prev_mb = mb
        st += 1
    if slot == 0:
        acc[2] = t - hyper[STEP]


@njit(parallel=True, **_opts)
def _train_epoch_columns(member, want, theta, sizes, offs, aoff, hid, out, indptr, indices, values,
                         T, w, perm, m, opt, hyper, V, M2, ident, A, D, G, Z, bounds, cuts, cp,
                         fill, cs, cv, blocks, sq, stats, acc, sync):  # fmt: skip
    """The parallel region of :func:`train_epoch_columns`; ``member`` is the address of
    :func:`_columns_member` compiled for these arguments."""
    for i in range(sync.shape[0]):
        sync[i] = 0
    for i in range(acc.shape[0]):
        acc[i] = 0
    for _ in prange(want):
        slot, team = _join(sync, want, _PATIENCE)
        if slot >= 0:
            _call_native(member, (np.int64(slot), np.int64(team), theta, sizes, offs, aoff, hid,
                                  out, indptr, indices, values, T, w, perm, m, opt, hyper, V, M2,
                                  ident, A, D, G, Z, bounds, cuts, cp, fill, cs, cv, blocks, sq,
                                  stats, acc, sync))  # fmt: skip
    n = perm.shape[0]
    nc = cuts.shape[0] - 1
    if n > 0:  # the last step's loss
        b0 = (n - 1) // m * m
        rows = perm[b0:n]
        par = ((n - 1) // m) & 1
        _account(stats, sq, par, nc, _weight_sum(w, rows), n - b0, hyper[ALPHA], acc)
    hyper[STEP] += acc[2]
    return acc[0], acc[1]


class ColumnBuffers(NamedTuple):
    """The buffers of :func:`train_epoch_columns`, for mini-batches of up to ``m`` and
    ``nc`` parts (``n1`` first-layer neurons, ``cap`` the non-zeros of the ``m``
    fullest rows)."""

    Z: np.ndarray  # (max(nc - 1, 1), m, n1) partial sums of parts 1..nc-1
    bounds: np.ndarray  # (nc, m, 2) int64 each sample's positions in each part
    cuts: np.ndarray  # (nc + 1,) int64 the parts' first inputs, then n_in
    cp: np.ndarray  # (nc, n_in + 1) int64 column pointers of each part's lists
    fill: np.ndarray  # (nc, n_in) int64 their fill positions
    cs: np.ndarray  # (nc, cap) int32 batch positions, by input
    cv: np.ndarray  # (nc, cap) values, by input
    blocks: np.ndarray  # (k, 5) int64 update blocks (start, stop, is_weight, part or -1,
    # unit: member unit % team updates it)
    sq: np.ndarray  # (2, k) float64 squared-weight sums per block, two steps alternating
    stats: np.ndarray  # (2, nc, 2) float64 chunk loss sums and correct counts, alternating
    acc: np.ndarray  # (3,) float64 the epoch's loss sum, number correct, steps taken
    sync: np.ndarray  # (48,) int64 team counters (see .team)


def column_cuts(indices, n_in, nc):
    """The first input of each of ``nc`` parts, then ``n_in``: consecutive inputs holding
    about equal numbers of the non-zeros ``indices`` (MNIST in halves of equal input
    counts would hold 47% and 53%)."""
    cum = np.cumsum(np.bincount(indices, minlength=n_in))
    total = cum[-1] if n_in else 0
    inner = np.searchsorted(cum, total * np.arange(1, nc) / nc, side="right")
    return np.concatenate([[0], np.minimum(inner, n_in), [n_in]]).astype(np.int64)


def column_buffers(sizes, offs, m, dtype, csr, nc, cap):
    """:class:`ColumnBuffers` for the CSR inputs ``csr`` and ``nc`` parts."""
    n_in, n1 = int(sizes[0]), int(sizes[1])
    cuts = column_cuts(csr[1], n_in, nc)
    rb = max(1, UPDATE_BLOCK // n1)  # first-layer rows per update block
    # (start, stop, is_weight, part or -1, unit): member ``unit % team`` updates the block.
    # A part's rows go to its owner; so does the first layer's bias to part 0's, which
    # reads it in the next step's first phase; the later blocks go round.
    first = [
        (k * n1, min(k + rb, cuts[q + 1]) * n1, 1, q, q)
        for q in range(nc)
        for k in range(cuts[q], cuts[q + 1], rb)
    ]
    rest = [b for b in update_blocks(sizes, offs) if b[0] >= n_in * n1]
    later = [(lo, hi, w, -1, 0 if lo < n_in * n1 + n1 else j) for j, (lo, hi, w) in enumerate(rest)]
    blocks = np.array(first + later, np.int64).reshape(-1, 5)
    return ColumnBuffers(
        np.zeros((max(nc - 1, 1), m, n1), dtype),
        np.zeros((nc, m, 2), np.int64),
        cuts,
        np.zeros((nc, n_in + 1), np.int64),
        np.zeros((nc, n_in), np.int64),
        np.zeros((nc, cap), np.int32),
        np.zeros((nc, cap), dtype),
        blocks,
        np.zeros((2, len(blocks))),
        np.zeros((2, nc, 2)),
        np.zeros(3),
        np.zeros(48, np.int64),
    )


def train_epoch_columns(theta, sizes, offs, aoff, hid, out, csr, T, w, perm, m, buf, cols, opt,
                        hyper, state, want):  # fmt: skip
    """:func:`.optim.train_epoch_optim` for CSR inputs ``csr``, by a team of up to ``want``
    members (``buf``: the driver's :class:`.optim.OptimBuffers`, of which ``ident``,
    ``A``, ``D`` and ``G``; ``cols``: :class:`ColumnBuffers`).  Returns the sum over steps
    of (step loss x step size) and the number classified correctly."""
    indptr, indices, values = csr
    ident, A, D, G = buf[:4]
    c = cols
    args = (theta, sizes, offs, aoff, hid, out, indptr, indices, values, T, w, perm,
            np.int64(m), opt, hyper, state[0], state[1], ident, A, D, G, c.Z,
            c.bounds, c.cuts, c.cp, c.fill, c.cs, c.cv, c.blocks, c.sq, c.stats, c.acc,
            c.sync)  # fmt: skip
    member = member_address(_columns_member, args)
    want = np.int64(max(1, min(want, len(c.cuts) - 1)))
    return _train_epoch_columns(member, want, *args)
