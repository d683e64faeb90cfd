"""Inference: the forward pass of many samples (parallel blocks) or of one (serial).

Both count the non-finite pre-activations of every layer on the way, so the
Python layer can reject NaN/inf input without a separate pass over ``X``
(which alone took longer than the forward pass of the 10,000 test images),
and no layer's overflow reaches the user as NaN outputs.
"""

import numpy as np
from numba import njit, prange

from ._jit import _0, _dot_opts, _opts
from .activations import _activate, _count_nonfinite
from .dense import FORWARD_BLOCK, _forward_chunk


@njit(parallel=True, **_opts)
def _forward(theta, sizes, offs, aoff, hid, out, X, ident, A, block):
    """:func:`forward` of more than one block: the blocks in parallel."""
    n = ident.shape[0]
    nblocks = (n + block - 1) // block
    bad = 0
    for bi in prange(nblocks):
        s0 = bi * block
        s1 = min(s0 + block, n)
        bad += _forward_chunk(theta, sizes, offs, aoff, hid, out, X, ident, ident, A, s0, s1)
    return bad


def forward(theta, sizes, offs, aoff, hid, out, X, ident, A, block):
    """Forward pass of all rows of ``X`` into ``A`` (``ident`` is ``arange(len(X))``).

    ``A[:, aoff[-1]:]`` holds the network's output; rows are processed in
    parallel blocks of ``block`` samples.  Returns a positive number exactly
    when an input is NaN or infinite or some layer overflowed.

    One block (``len(X) <= block``) runs in this thread: the block kernel
    (:func:`.dense._forward_chunk`) is called as it is, with no parallel
    region to start (``feedforward`` of 1 to 64 rows took 0.64-0.92x its time)
    and none to compile (2.6-3.4 s of a cold start whose first ``predict`` is
    small).
    """
    n = len(ident)
    if n <= block:
        return _forward_chunk(theta, sizes, offs, aoff, hid, out, X, ident, ident, A, 0, n)
    return _forward(theta, sizes, offs, aoff, hid, out, X, ident, A, block)


def forward_rows(theta, sizes, offs, aoff, hid, out, X, A, block):
    """:func:`forward` of all rows of ``X`` into ``A``, each row computed the same way.

    The forward kernels take blocks of eight samples (:data:`.dense.FORWARD_BLOCK`:
    four without AVX-512), then four, then one, and the blocks round differently
    (their sums vectorise differently), so a row's last bits would depend on
    its place in ``X``: predictions would change with the sample order or the
    batch a row arrives in.  Here every row goes through the widest block: the
    rows past its last multiple are run in a zero-padded block.  Returns the
    count of non-finite values met, as :func:`forward` does.
    """
    n = X.shape[0]
    head = n - n % FORWARD_BLOCK
    bad = 0
    if head:
        ident = np.arange(head, dtype=np.int64)
        bad += forward(theta, sizes, offs, aoff, hid, out, X[:head], ident, A[:head], block)
    if head < n:
        pad = np.zeros((FORWARD_BLOCK, X.shape[1]), X.dtype)
        pad[: n - head] = X[head:]
        Ap = np.empty((FORWARD_BLOCK, A.shape[1]), A.dtype)
        ident = np.arange(FORWARD_BLOCK, dtype=np.int64)
        bad += forward(theta, sizes, offs, aoff, hid, out, pad, ident, Ap, block)
        A[head:] = Ap[: n - head]
    return bad


@njit(**_dot_opts)
def forward_one(theta, sizes, offs, aoff, hid, out, x, a):
    """Forward pass of the single sample ``x`` (1-D) into ``a`` (length ``sum(sizes[1:])``).

    The latency path: serial, no parallel region.  Returns the count of
    non-finite pre-activations and outputs, as :func:`forward` does.
    """
    L = sizes.shape[0] - 1
    bad = 0
    for l in range(L):
        n_in, n_out, woff = sizes[l], sizes[l + 1], offs[l]
        src = x if l == 0 else a[aoff[l - 1] : aoff[l - 1] + n_in]
        dst = a[aoff[l] : aoff[l] + n_out]
        b = theta[woff + n_in * n_out : woff + n_in * n_out + n_out]
        for j in range(n_out):
            w = theta[woff + j * n_in : woff + (j + 1) * n_in]
            acc = theta[0] * _0
            for k in range(n_in):
                acc += w[k] * src[k]
            dst[j] = acc + b[j]
        bad += _count_nonfinite(dst)
        _activate(dst, out if l == L - 1 else hid)
    return bad
