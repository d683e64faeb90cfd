"""The ``"optim"`` driver's epoch for CSR inputs: the first layer split by input columns.

With CSR inputs the first layer's ``W`` is stored transposed (``theta[k*n1:(k+1)*n1]``
holds input ``k``'s weights to every neuron, :func:`.optim.train_epoch_optim`).
Its rows are cut into ``nc`` fixed parts of consecutive inputs (:func:`column_cuts`:
as many parts as :func:`.optim.optim_chunks` gives the batch chunks, holding
about equal numbers of the training set's non-zeros).  The whole epoch is one
parallel region; a team (:mod:`.team`) meets at two barriers per mini-batch:

1. **by part**: each member owns parts; for every sample of the batch it sums
   the non-zeros that fall in its part (where they start in each training row is
   found once a fit, :func:`_part_starts`) over their rows of ``W``: part 0 into the
   activations ``A`` (starting from the bias), part ``q`` into ``Z[q-1]``.
   It also lists its part's non-zeros of the batch by input column
   (:func:`_part_forward`);
2. **by chunk of samples**: ``A += Z[0] + Z[1] + ...`` (in part order), the
   activation, the later layers, the output deltas and the later layers'
   gradients (into the chunk's ``G[c]``), as :func:`.optim.optim_step`'s chunks do;
3. **by part again, no barrier after**: each member sums the first-layer gradient
   rows of its parts over its column lists and updates them at once with the
   optimiser (:func:`_optimize_first_rows`); the later layers' update blocks are
   shared out too.  A member then starts the next batch's first
   part at once: it needs only its own rows of ``W``.

A part's rows of ``W`` and its optimiser state never leave the core that owns
them; only the partial sums ``Z``, the deltas and the later layers cross.  (Run
step by step as :func:`.optim.optim_step` runs dense inputs, every step moved
the rows the other thread had updated and started two parallel regions: W5
epochs took 1.14x and W6's 1.44x the time on two threads.)  The arithmetic of
every part and chunk is fixed by the batch and network sizes and by
:func:`column_cuts`, never by the team size: bit-identical for any thread count.

The reported loss is :func:`.optim.optim_step`'s (the weights' squares summed before
each update, per block, in block order).  Each step's loss is totalled by
member 0 during the next step's chunk phase, the last one's after the region.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..layout import count_params
from ._jit import _opts
from ._llvm import _call_native, _flush_subnormals, _prefetch, _restore_fp
from .activations import _activate
from .csr import _prefetch_nonzeros
from .dense import UPDATE_BLOCK, _backprop_later, _forward_later, update_blocks
from .lanes import MAX_ROW_VECTORS, _lanes_rows, row_lanes
from .optim import (
    ALPHA,
    STEP,
    _apply_optimizer,
    _optimize_block,
    _reported_loss,
    _step_rate,
    _sum_squares,
    _target_deltas,
    _weight_sum,
    optim_chunks,
)
from .team import _PATIENCE, _barrier, _join, member_address

SLOT_MIN = 16  # fixed list slots when lists hold this many non-zeros on average
ROW_AHEAD = 4  # the first layer's forward sums prefetch the input row this many samples ahead
POINTER_AHEAD = 16  # ... and where the row's part starts (``starts``) this many


@njit(**_opts)
def _rows_dot(W, woff, ld, idx, val, p0, p1, dst, doff, n):
    """``dst[doff + j] += sum_p val[p] * W[woff + idx[p]*ld + j]`` for ``j < n``, ``p`` in
    ``[p0, p1)`` in order: up to ``MAX_ROW_VECTORS`` vectors at a time held in registers
    (:func:`.lanes._lanes_rows`), the last one masked to the neurons that remain, so
    that a row of 100 float32 neurons is one pass over the non-zeros (with AVX-512, 6 lane
    vectors of 16 and a masked one of 4 lanes; with AVX2, 12 vectors of 8 and a masked one
    of 4).  Wider rows take as few passes as the registers allow, of nearly equal vector
    counts."""
    L = row_lanes(W)
    left = (n + L - 1) // L  # vectors still to do
    passes = (left + MAX_ROW_VECTORS - 1) // MAX_ROW_VECTORS
    j = 0
    while j < n:
        nv = (left + passes - 1) // passes
        r = min(n - j, nv * L)  # nv vectors, the last holding r - (nv-1)*L neurons
        _lanes_rows(W, woff + j, ld, idx, val, p0, p1, dst, doff + j, nv, r - (nv - 1) * L)
        j += r
        left -= nv
        passes -= 1


@njit(**_opts)
def _optimize_first_rows(theta, g, V, M2, lo, hi, n1, D, first, fill, cs, cv, opt, hyper, inv_s,
                         lr_t):  # fmt: skip
    """:func:`.optim._optimize_block` for a block ``[lo, hi)`` of the first layer's
    transposed ``W``: each input row's gradient ``sum_i x_ik D[i, :n1]`` (over its column
    list ``cs[first[k]:fill[k]]``, batch positions in order) is summed in registers into
    ``g[lo:hi]`` (zero until then), then the optimiser runs over the whole block; returns
    the block's sum of squared weights before the update.

    Each row's gradient is written once, next to its update, rather than added
    per non-zero into a gradient buffer and read back; and one optimiser loop
    runs over the block rather than one per row of ``n1`` values (W5, rows of
    100: 0.086 -> 0.073 s an epoch; W6, rows of 256: about 0.2 s less).
    """
    ld = D.shape[1]
    Dflat = D.reshape(D.size)
    sq = _sum_squares(theta[lo:hi])
    k = lo // n1
    while k * n1 < hi:
        a = max(lo, k * n1)
        b = min(hi, (k + 1) * n1)
        if fill[k] > first[k]:
            _rows_dot(Dflat, a - k * n1, ld, cs, cv, first[k], fill[k], g, a, b - a)
        k += 1
    # is_w an int64 as _optimize_block passes it (a literal True would compile it again)
    _apply_optimizer(theta, g, V, M2, lo, hi, np.int64(1), opt, hyper, inv_s, lr_t)
    return sq


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
def _part_forward(theta, n1, bias, starts, indices, values, rows, q, k0, k1, dst, slotted,
                  first, fill, cs, cv):  # fmt: skip
    """Part ``q`` (inputs ``k0:k1``) of the first layer's sums of the batch ``rows``:
    ``dst[i, :n1] = (bias if q == 0 else 0) + sum_p values[p] W^T[indices[p]]`` over
    sample ``i``'s non-zeros in the part (where they start: ``starts``,
    :func:`_part_starts`), and the part's non-zeros listed by input: input ``k``'s
    batch positions (ascending) go to ``cs[first[k]:fill[k]]``, their values to ``cv``.

    ``slotted``: each input's list has a fixed slot (``first``, :func:`column_slots`),
    and each sample's non-zeros are listed right after its sums, while they are in
    the cache (W5 fits 0.93-0.95x the time on two threads).  Otherwise they are counted
    there and listed afterwards in a second pass, packed from ``first[k0]`` on
    (:func:`_list_part`): with lists of a few non-zeros each, as W6's batches of 32
    give, the slots' lines outgrow the L1 cache (W6 fits 1.22x the time slotted).

    The hot loops index with unsigned integers, which Numba does not check for
    negative (wraparound) indices: a count and a scatter over W5's mini-batches
    (one thread, an epoch of MNIST, medians of 7) 0.094-0.109 -> 0.076-0.090 s.

    The part's non-zeros of random rows of the training set are prefetched
    ``ROW_AHEAD`` samples ahead, and where they start (a cache miss of its own)
    ``POINTER_AHEAD``: W5 epochs 0.94-0.98x and then 0.965-0.976x the time
    without (docs/performance-notes.md)."""
    m = rows.shape[0]
    zero = np.int64(0)  # not a literal: one compile of _rows_dot
    one = np.uint64(1)
    for k in range(k0, k1):
        fill[k] = first[k] if slotted else 0
    for i in range(m):
        if i + POINTER_AHEAD < m:
            _prefetch(starts[rows[i + POINTER_AHEAD]], q)
        if i + ROW_AHEAD < m:
            ahead = starts[rows[i + ROW_AHEAD]]
            _prefetch_nonzeros(indices, values, ahead[q], ahead[q + 1])
        pb = starts[rows[i], q]
        pe = starts[rows[i], q + 1]
        a = dst[i, 0:n1]
        if q == 0:
            for j in range(n1):
                a[j] = bias[j]
        else:
            for j in range(n1):
                a[j] = 0
        _rows_dot(theta, zero, n1, indices, values, pb, pe, a, zero, n1)
        if slotted:
            _list_sample(indices, values, pb, pe, i, fill, cs, cv)
        else:
            for p in range(np.uint64(pb), np.uint64(pe)):  # the lists' counts
                fill[np.uint64(indices[p])] += one
    if not slotted:
        _list_part(starts, indices, values, rows, q, k0, k1, first, fill, cs, cv)


@njit(**_opts)
def _list_sample(indices, values, pb, pe, i, fill, cs, cv):
    """Sample ``i``'s non-zeros at positions ``pb:pe`` appended to their inputs' lists."""
    one = np.uint64(1)
    for p in range(np.uint64(pb), np.uint64(pe)):
        k = np.uint64(indices[p])
        j = np.uint64(fill[k])
        cs[j] = i
        cv[j] = values[p]
        fill[k] = j + one


@njit(**_opts)
def _list_part(starts, indices, values, rows, q, k0, k1, first, fill, cs, cv):
    """The packed lists of part ``q`` (inputs ``k0:k1``) of the batch ``rows``, from
    their counts in ``fill``: input ``k``'s are ``cs[first[k]:fill[k]]``, the part's
    lists starting at ``first[k0]``."""
    pos = first[k0]
    for k in range(k0, k1):
        n = fill[k]
        first[k] = pos
        fill[k] = pos
        pos += n
    for i in range(rows.shape[0]):
        _list_sample(indices, values, starts[rows[i], q], starts[rows[i], q + 1], i, fill, cs, cv)


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
    acc[0] += _reported_loss(loss, l2, s, alpha) * mb


@njit(**_opts)
def _columns_member(slot, team, theta, sizes, offs, aoff, hid, out, starts, indices, values, T, w,
                    perm, m, opt, hyper, V, M2, ident, A, D, G, Z, cuts, slotted, first, fill,
                    cs, cv, blocks, sq, stats, acc, sync):  # fmt: skip
    """Member ``slot`` of a team of ``team`` (:func:`train_epoch_columns`)."""
    n = perm.shape[0]
    nc = cuts.shape[0] - 1
    n1 = sizes[1]
    bias = theta[sizes[0] * n1 : sizes[0] * n1 + n1]
    t = hyper[STEP]
    phase = 0
    prev_s = 0.0
    prev_mb = np.int64(0)  # not a literal: a Literal[int](0) step size compiled _account twice
    st = 0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        rows = perm[b0:b1]
        mb = b1 - b0
        par = st & 1
        for q in range(slot, nc, team):
            dst = A if q == 0 else Z[q - 1]
            k0, k1 = cuts[q], cuts[q + 1]
            _part_forward(theta, n1, bias, starts, indices, values, rows, q, k0, k1, dst, slotted,
                          first[q], fill[q], cs, cv)  # fmt: skip
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
            lr_t = _step_rate(hyper, opt, t)
            inv_s = 1.0 / s
            fp = _flush_subnormals()
            for bi in range(blocks.shape[0]):
                lo, hi, q = blocks[bi, 0], blocks[bi, 1], blocks[bi, 3]
                if blocks[bi, 4] % team != slot:
                    continue
                if q >= 0:
                    fr, fq = first[q], fill[q]
                    sq[par, bi] = _optimize_first_rows(
                        theta, G[0], V, M2, lo, hi, n1, D, fr, fq, cs, cv, opt, hyper, inv_s, lr_t
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
def _train_epoch_columns(member, want, theta, sizes, offs, aoff, hid, out, starts, indices, values,
                         T, w, perm, m, opt, hyper, V, M2, ident, A, D, G, Z, cuts, slotted, first,
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
                                  out, starts, indices, values, T, w, perm, m, opt, hyper, V, M2,
                                  ident, A, D, G, Z, cuts, slotted, first, fill, cs, cv, blocks,
                                  sq, stats, acc, sync))  # fmt: skip
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
    ``nc`` parts (``n1`` first-layer neurons)."""

    Z: np.ndarray  # (max(nc - 1, 1), m, n1) partial sums of parts 1..nc-1
    starts: np.ndarray  # (n_rows, nc + 1) int64 where each row's non-zeros of each part start,
    # then where the row ends (:func:`_part_starts`)
    cuts: np.ndarray  # (nc + 1,) int64 the parts' first inputs, then n_in
    slotted: bool  # each input's list in a fixed slot (else packed by part, each step)
    first: np.ndarray  # (nc, n_in + 1) int64 where part q's list of input k starts in cs and cv
    fill: np.ndarray  # (nc, n_in) int64 ... and where it ends (part q's inputs' entries)
    cs: np.ndarray  # int32 batch positions, by input
    cv: np.ndarray  # values, by input
    blocks: np.ndarray  # (k, 5) int64 update blocks (start, stop, is_weight, part or -1,
    # unit: member unit % team updates it)
    sq: np.ndarray  # (2, k) float64 squared-weight sums per block, two steps alternating
    stats: np.ndarray  # (2, nc, 2) float64 chunk loss sums and correct counts, alternating
    acc: np.ndarray  # (3,) float64 the epoch's loss sum, number correct, steps taken
    sync: np.ndarray  # (48,) int64 team counters (see .team)


@njit(**_opts)
def _column_counts(indices, n_in):
    """The number of non-zeros of each input (``np.bincount`` would first copy the int16
    indices to int64: 72 MB for MNIST, 26-280 ms a fit against 5 ms)."""
    counts = np.zeros(n_in, np.int64)
    for p in range(indices.shape[0]):
        counts[indices[p]] += 1
    return counts


@njit(**_opts)
def _part_starts(indptr, indices, cuts, starts):
    """``starts[r, q]``: the first position of row ``r``'s non-zeros in part ``q`` (inputs
    ``cuts[q]:cuts[q+1]``); ``starts[r, nc]`` where the row ends.

    Found once a fit: with a binary search per sample and part in every step,
    and the whole rows prefetched, W5 fits took 1.05x the time on two threads
    and 1.09-1.14x on one (docs/performance-notes.md)."""
    nc = cuts.shape[0] - 1
    for r in range(indptr.shape[0] - 1):
        p1 = indptr[r + 1]
        starts[r, 0] = indptr[r]
        for q in range(1, nc):
            starts[r, q] = _first_at_least(indices, starts[r, q - 1], p1, cuts[q])
        starts[r, nc] = p1


def column_cuts(counts, nc):
    """The first input of each of ``nc`` parts, then the number of inputs: consecutive
    inputs holding about equal numbers of the non-zeros (``counts``: each input's, from
    :func:`_column_counts`; MNIST in halves of equal input counts would hold 47% and 53%)."""
    n_in = len(counts)
    cum = np.cumsum(counts)
    total = cum[-1] if n_in else 0
    inner = np.searchsorted(cum, total * np.arange(1, nc) / nc, side="right")
    return np.concatenate([[0], np.minimum(inner, n_in), [n_in]]).astype(np.int64)


def column_slots(counts, m):
    """Where each input's list of a mini-batch's non-zeros starts (then the end): input
    ``k`` gets ``min(m, counts[k])`` entries (``counts[k]``: its non-zeros in the
    training set), as many as any batch of ``m`` rows can hold."""
    slot = np.zeros(len(counts) + 1, np.int64)
    np.cumsum(np.minimum(counts, m), out=slot[1:])
    return slot


def column_buffers(sizes, offs, m, dtype, csr):
    """:class:`ColumnBuffers` for the CSR inputs ``csr`` in mini-batches of up to ``m``:
    as many parts as :func:`.optim.optim_chunks` gives chunks."""
    n_in, n1 = int(sizes[0]), int(sizes[1])
    nc = int(optim_chunks(m, count_params(sizes), n_in))
    counts = _column_counts(csr[1], np.int64(n_in))
    cuts = column_cuts(counts, nc)
    n_rows = len(csr[0]) - 1
    starts = np.empty((n_rows, nc + 1), np.int64)
    _part_starts(csr[0], csr[1], cuts, starts)
    # lists of SLOT_MIN non-zeros or more on average: fixed slots, filled in one pass
    active = max(1, int(np.count_nonzero(counts)))
    slotted = min(m, n_rows) * int(counts.sum()) >= SLOT_MIN * max(1, n_rows) * active
    if slotted:
        heads = np.tile(column_slots(counts, m), (nc, 1))
    else:  # a part's lists hold at most its non-zeros of the m rows with the most there
        heads = np.zeros((nc, n_in + 1), np.int64)
        coff = 0
        for q, row in enumerate(np.diff(starts, axis=1).T):
            heads[q, cuts[q]] = coff
            coff += int((row if m >= len(row) else -np.partition(-row, m)[:m]).sum())
        heads[:, n_in] = coff
    size = int(heads[0, n_in])
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
        starts,
        cuts,
        bool(slotted),
        heads,
        np.zeros((nc, n_in), np.int64),
        np.zeros(size, np.int32),
        np.zeros(size, dtype),
        blocks,
        np.zeros((2, len(blocks))),
        np.zeros((2, nc, 2)),
        np.zeros(3),
        np.zeros(48, np.int64),
    )


def train_epoch_columns(theta, sizes, offs, aoff, hid, out, csr, T, w, perm, m, buf, opt, hyper,
                        state, want):  # fmt: skip
    """:func:`.optim.train_epoch_optim` for CSR inputs ``csr``, by a team of up to ``want``
    members (``buf``: the driver's :class:`.optim.OptimBuffers`, whose ``cols`` are
    :class:`ColumnBuffers`).  Returns the sum over steps of (step loss x step size) and
    the number classified correctly."""
    indices, values = csr[1:]
    ident, A, D, G = buf[:4]
    c = buf[-1]
    args = (theta, sizes, offs, aoff, hid, out, c.starts, indices, values, T, w, perm,
            np.int64(m), opt, hyper, state[0], state[1], ident, A, D, G, c.Z, c.cuts, c.slotted,
            c.first, c.fill, c.cs, c.cv, c.blocks, c.sq, c.stats, c.acc, c.sync)  # fmt: skip
    member = member_address(_columns_member, args)
    want = np.int64(max(1, min(want, len(c.cuts) - 1)))
    return _train_epoch_columns(member, want, *args)
