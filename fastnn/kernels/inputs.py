"""Gradients with respect to the *input*: what change of the image moves a neuron or the cost.

:func:`input_gradient` runs the forward pass of a few rows, starts the
deltas at one neuron per row (or at the cost of each row's label) and
backpropagates them down through the first layer's weights to the pixels.
It serves :mod:`fastnn.inspect` (preferred inputs by gradient ascent,
saliency); it is serial, for batches of up to a few thousand rows.
"""

import numpy as np
from numba import njit

from ..layout import EXP, SOFTMAX
from ._jit import _0, _1, _opts
from .activations import _derivative, _output_deltas
from .dense import _dense_backprop, _forward_chunk


@njit(**_opts)
def _neuron_deltas(sizes, aoff, hid, out, layer, neuron, A, D, n):
    """D of layer ``layer`` := d a_j / d z for neuron ``j = neuron[i]`` of each row ``i``."""
    L = sizes.shape[0] - 1
    c0 = aoff[layer]
    width = sizes[layer + 1]
    for i in range(n):
        d = D[i, c0 : c0 + width]
        a = A[i, c0 : c0 + width]
        j = neuron[i]
        for k in range(width):
            d[k] = _0
        if layer < L - 1:
            d[j] = _derivative(a[j], hid)
        elif out == SOFTMAX:  # d a_j / d z_k = a_j (delta_jk - a_k)
            for k in range(width):
                d[k] = -a[j] * a[k]
            d[j] += a[j]
        elif out == EXP:
            d[j] = a[j]
        else:  # sigmoid or identity output
            d[j] = _derivative(a[j], out)


@njit(**_opts)
def input_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, layer, neuron, A, D, GX):
    """Gradient of one scalar per row with respect to that row of ``X``, into ``GX``.

    The scalar of row ``i`` is the cost of label ``y[i]`` when ``layer < 0``,
    else the activation of neuron ``neuron[i]`` of layer ``layer`` (0 is the
    first hidden layer, ``len(sizes) - 2`` the output layer).  ``A`` and
    ``D`` are ``(n, sum(sizes[1:]))`` work buffers; ``GX`` is like ``X``.
    Returns ``(cost sum, bad)``: the summed cost (0 for neurons) and a
    positive number when some pre-activation was not finite.
    """
    n = X.shape[0]
    L = sizes.shape[0] - 1
    ident = np.arange(n)
    zero = np.int64(0)  # not a literal: the kernels as the drivers compiled them
    bad = _forward_chunk(theta, sizes, offs, aoff, hid, out, X, ident, ident, A, zero, n)
    total = 0.0
    if layer < 0:
        total, _ = _output_deltas(sizes, aoff, out, cost, y, ident, A, D, zero, n)
        top = L - 1
    else:
        _neuron_deltas(sizes, aoff, hid, out, layer, neuron, A, D, n)
        top = layer
    for l in range(top, 0, -1):
        _dense_backprop(
            theta, offs[l], sizes[l], sizes[l + 1], D, aoff[l], A, aoff[l - 1], hid, zero, n
        )
    n_in, n1 = sizes[0], sizes[1]
    for i in range(n):
        g = GX[i]
        for k in range(n_in):
            g[k] = _0 * _1
        for j in range(n1):
            dj = D[i, aoff[0] + j]
            if dj != _0:
                w = theta[offs[0] + j * n_in : offs[0] + (j + 1) * n_in]
                for k in range(n_in):
                    g[k] += w[k] * dj
    return total, bad
