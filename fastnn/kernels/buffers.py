"""Cache-line aligned buffers for the drivers (plain NumPy, run once per ``SGD`` call).

The members of a training team write neighbouring parts of shared arrays
(their rows of the parameter vector, their slices of the buffers).  Aligned
to 64 bytes and padded to whole lines, no cache line is written by two cores.
"""

import numpy as np
from numba import njit

from ._jit import _opts

LINE = 64  # bytes per cache line


def line_aligned_empty(shape, dtype):
    """An uninitialised array whose data starts on a 64-byte boundary (a cache line)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(nbytes + LINE, np.uint8)
    start = -raw.ctypes.data % LINE
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def whole_lines(k, dtype):
    """``k`` values of ``dtype`` rounded up to whole 64-byte cache lines."""
    per_line = LINE // np.dtype(dtype).itemsize
    return -(-k // per_line) * per_line


@njit(**_opts)
def _copy(dst, src):
    """``dst[:] = src`` for 1-D arrays of one length, as a loop.

    A slice assignment makes Numba compile its shape-mismatch error message
    (string formatting), about 3 s of a cold start per driver.
    """
    for i in range(src.shape[0]):
        dst[i] = src[i]
