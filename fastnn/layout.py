"""The flat parameter layout and the names of activations and costs.

All parameters of a network live in one contiguous vector.  Layer ``l`` maps
``sizes[l]`` inputs to ``sizes[l+1]`` outputs; its weight matrix ``W`` of shape
``(n_out, n_in)`` is stored row-major at ``offs[l]`` and its bias ``b`` of
length ``n_out`` follows immediately.  For 784-16-16-10 that is
``784*16 + 16 + 16*16 + 16 + 16*10 + 10 = 13002`` values.

Shared by the kernels, the NumPy reference and the Python API.
"""

import numpy as np

# codes used inside the kernels
SIGMOID, RELU, TANH, SOFTMAX, IDENTITY, EXP = 0, 1, 2, 3, 4, 5  # EXP: output only
QUADRATIC, CROSS_ENTROPY, LOG_LOSS = 0, 1, 2

HIDDEN_ACTIVATIONS = {"sigmoid": SIGMOID, "relu": RELU, "tanh": TANH, "identity": IDENTITY}
OUTPUT_ACTIVATIONS = {"sigmoid": SIGMOID, "softmax": SOFTMAX}
COSTS = {"quadratic": QUADRATIC, "cross_entropy": CROSS_ENTROPY, "log_loss": LOG_LOSS}


def count_params(sizes):
    """Length of the flat parameter vector of a network of ``sizes`` (exact Python ints, so
    that absurd sizes can be refused before anything is allocated)."""
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))


def layer_offsets(sizes):
    """Start of each layer's ``W`` in the flat vector, plus the total length.

    Returns ``(offs, n_params)`` with ``offs`` an int64 array of ``len(sizes)-1``.
    """
    offs = []
    p = 0
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        offs.append(p)
        p += n_in * n_out + n_out
    return np.array(offs, dtype=np.int64), p


def activation_offsets(sizes):
    """Column where each layer's outputs start in an ``(m, sum(sizes[1:]))`` buffer."""
    return np.concatenate(([0], np.cumsum(sizes[1:])[:-1])).astype(np.int64)


def unpack(theta, sizes):
    """Lists of views ``(weights, biases)`` into the flat vector ``theta``.

    ``weights[l]`` has shape ``(sizes[l+1], sizes[l])`` and ``biases[l]`` shape
    ``(sizes[l+1],)``; writing to them writes to ``theta``.
    """
    offs, _ = layer_offsets(sizes)
    weights, biases = [], []
    for o, n_in, n_out in zip(offs, sizes[:-1], sizes[1:]):
        weights.append(theta[o : o + n_in * n_out].reshape(n_out, n_in))
        biases.append(theta[o + n_in * n_out : o + n_in * n_out + n_out])
    return weights, biases


def layer_norms(vector, sizes):
    """Euclidean length of each layer's part (``W`` and ``b``, contiguous) of a vector laid
    out like the parameters, in float64: one value per layer."""
    offs, _ = layer_offsets(sizes)
    v = np.asarray(vector, np.float64)
    return np.sqrt(np.add.reduceat(v * v, offs))
