"""The ``"hybrid"`` driver: first layer by neurons, later layers by samples.

For first layers of 32 neurons or more that hold most of the parameters
(784-128-64-10 at batch 64).  One parallel region per epoch, a team as in
:mod:`.split`.  Each member owns blocks of :data:`HYBRID_BLOCK` first-layer
neurons (whole cache lines): it computes their outputs for the whole
mini-batch and, once the deltas are known, updates their rows in place, so
the first layer's rows never leave the member's cache and it needs no
gradient buffer.  The later layers run by fixed chunks of samples
(:func:`.dense.chunk_count`, independent of the team size); every member
updates its private copy of them from the chunk gradients summed in chunk
order.  Two barriers per step; bit-identical for any team size.
"""

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ..layout import count_params
from ._jit import _1, _opts
from ._llvm import _call_native
from .activations import _activate_rows
from .buffers import _copy, line_aligned_empty, whole_lines
from .dense import (
    MAX_CHUNKS,
    _chunk_totals,
    _dense_forward,
    _dense_grad,
    _later_layers,
    _update_sum,
    chunk_count,
)
from .team import _PATIENCE, _barrier, _join, member_address

HYBRID_BLOCK = 16  # first-layer neurons per block of a member (whole cache lines)


@njit(**_opts)
def _hybrid_member(
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
    """One member's share of :func:`train_epoch_hybrid` (see there)."""
    ident, A, D, P, G, CS, sync = buf
    n = perm.shape[0]
    L = sizes.shape[0] - 1
    n_in = sizes[0]
    n1 = sizes[1]
    nblk = (n1 + HYBRID_BLOCK - 1) // HYBRID_BLOCK
    j0 = HYBRID_BLOCK * (slot * nblk // team)  # this member's first-layer neurons j0:j1
    j1 = min(HYBRID_BLOCK * ((slot + 1) * nblk // team), n1)
    nj = j1 - j0
    b1off = n_in * n1  # the first layer's biases in theta
    base = b1off + n1  # theta[base:]: the later layers, copied privately
    rest = theta.shape[0] - base
    Pt = P[slot, 0:rest]
    _copy(Pt, theta[base:])
    offp = offs - base
    keep = theta.dtype.type(1.0 - eta * decay)
    first = perm[0 : min(m, n)]
    zero = np.int64(0)  # int64 arguments, never literals: one compile of each kernel
    _dense_forward(
        theta, j0 * n_in, b1off + j0, n_in, nj, X, first, zero, A, j0, zero, first.shape[0]
    )
    _activate_rows(A, zero, first.shape[0], j0, nj, hid)
    phase = np.int64(1)  # not a literal: a Literal[int](1) compiles _barrier again
    _barrier(sync, team, phase)
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        mb = b1 - b0
        rows = perm[b0:b1]
        nc = chunk_count(mb, theta.shape[0])
        for c in range(slot, nc, team):  # later layers, by fixed chunks of samples
            s0 = c * mb // nc
            s1 = (c + 1) * mb // nc
            g = G[c, 0:rest]
            for p in range(rest):
                g[p] = 0
            cs, cc = _later_layers(
                Pt, offp, sizes, aoff, hid, out, cost, y, rows, ident, A, D, g, s0, s1
            )
            CS[c, 0] += cs
            CS[c, 1] += cc
        phase += 1
        _barrier(sync, team, phase)
        step = theta.dtype.type(eta / mb)
        for l in range(1, L):  # every member updates its copy of the later layers alike
            w0 = offp[l]
            bb = w0 + sizes[l] * sizes[l + 1]
            _update_sum(Pt, G, nc, w0, bb, step, keep)
            _update_sum(Pt, G, nc, bb, bb + sizes[l + 1], step, step - step + _1)
        for i in range(mb):  # own first-layer neurons: W += (-step D)^T X, b += sum(-step D)
            for j in range(j0, j1):
                D[i, j] *= -step
        if keep != _1:
            for p in range(j0 * n_in, j1 * n_in):
                theta[p] *= keep
        _dense_grad(theta, j0 * n_in, b1off + j0, n_in, nj, D, j0, X, rows, zero, zero, mb)
        nxt = perm[b1 : min(b1 + m, n)]
        if nxt.shape[0] > 0:
            _dense_forward(
                theta, j0 * n_in, b1off + j0, n_in, nj, X, nxt, zero, A, j0, zero, nxt.shape[0]
            )
            _activate_rows(A, zero, nxt.shape[0], j0, nj, hid)
            phase += 1
            _barrier(sync, team, phase)
    if slot == 0:
        _copy(theta[base:], Pt)


@njit(parallel=True, **_opts)
def _train_epoch_hybrid(
    member, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta, decay
):  # fmt: skip
    """The parallel region of :func:`train_epoch_hybrid`: ``member`` is the address of
    :func:`_hybrid_member` compiled for these arguments (:func:`.team.member_address`)."""
    ident, A, D, P, G, CS, sync = buf
    for i in range(sync.shape[0]):
        sync[i] = 0
    for c in range(CS.shape[0]):
        CS[c, 0] = 0.0
        CS[c, 1] = 0.0
    for _ in prange(want):
        slot, team = _join(sync, want, _PATIENCE)
        if slot >= 0:
            _call_native(member, (np.int64(slot), np.int64(team), theta, sizes, offs, aoff, hid,
                                  out, cost, X, y, perm, m, buf, eta, decay))  # fmt: skip
    return _chunk_totals(CS, CS.shape[0])


def train_epoch_hybrid(
    theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta, decay
):  # fmt: skip
    """Epoch driver for larger mini-batches: first layer by neurons, later layers by samples.

    One parallel region per epoch, a team as in :func:`train_epoch_split`,
    whose members run :func:`_hybrid_member`, called by its address.
    Each member owns a range of first-layer neurons (in blocks of
    ``HYBRID_BLOCK``): it computes their outputs for the whole mini-batch
    and, once the deltas are known, updates their rows in place (no gradient
    buffer for the first layer; its rows never leave the member's cache).
    The later layers run by fixed chunks of samples (:func:`chunk_count`,
    independent of the team size), each chunk's gradient into ``G[c]``, and
    every member updates its private copy of the later layers (``P[slot]``)
    from the chunk gradients summed in chunk order.  Two barriers per step.
    Bit-identical for any thread count.  Returns (sum of costs, number correct).
    ``buf`` is a :class:`HybridBuffers`.
    """
    member = member_address(
        _hybrid_member, (theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, eta, decay)
    )
    return _train_epoch_hybrid(
        member, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, buf, want, eta, decay
    )


class HybridBuffers(NamedTuple):
    """The buffers of :func:`train_epoch_hybrid` (its argument ``buf``).

    ``team`` members, batch ``m``, ``H`` = ``sum(sizes[1:])`` rounded up to
    whole cache lines, ``rest = n_params - sizes[0]*sizes[1] - sizes[1]``
    (the later layers) rounded up to whole lines.  All cache-line aligned.
    """

    ident: np.ndarray  # (m,) int64 arange(m)
    A: np.ndarray  # (m, H) activations, shared: members write their own columns or chunks
    D: np.ndarray  # (m, H) deltas, shared likewise
    P: np.ndarray  # (team, rest) each member's copy of the later layers
    G: np.ndarray  # (MAX_CHUNKS, rest) chunk gradients of the later layers
    CS: np.ndarray  # (MAX_CHUNKS, 2) float64 chunk cost sums and correct counts
    sync: np.ndarray  # (48,) int64 team counters (see .team)


def hybrid_units(sizes, m):
    """Most members that get work: one per block of first-layer neurons."""
    return -(-sizes[1] // HYBRID_BLOCK)


def hybrid_buffers(sizes, m, dtype, team):
    """:class:`HybridBuffers` for mini-batches of up to ``m`` and up to ``team`` members."""
    H = whole_lines(sum(sizes[1:]), dtype)
    rest = whole_lines(count_params(sizes) - sizes[0] * sizes[1] - sizes[1], dtype)
    return HybridBuffers(
        np.arange(m, dtype=np.int64),
        line_aligned_empty((m, H), dtype),
        line_aligned_empty((m, H), dtype),
        line_aligned_empty((team, rest), dtype),
        line_aligned_empty((MAX_CHUNKS, rest), dtype),
        np.zeros((MAX_CHUNKS, 2)),
        np.zeros(48, np.int64),
    )
