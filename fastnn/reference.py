"""Plain NumPy implementation of fastnn's maths: the test oracle and the benchmark baseline.

Written for clarity, not speed.  It uses the same flat parameter layout as the
kernels (:mod:`fastnn.layout`), so a parameter vector can be handed to either.
Samples are rows: a mini-batch of ``m`` inputs is an ``(m, sizes[0])`` array.

Every kernel in :mod:`fastnn.kernels` has a twin here:

=========================  =====================================
kernel                     reference
=========================  =====================================
``forward``                :func:`forward`
``gradient``               :func:`backprop`
``sgd_step``               :func:`sgd_step` (:func:`update`)
``train_epoch``            :func:`train_epoch`
``input_gradient``         :func:`input_gradient`
=========================  =====================================

:func:`train_epoch_per_sample` is the classic per-sample loop in the style of
Nielsen's ``network.py`` (one backprop per training example), kept as a
second, slower baseline.
"""

import numpy as np

from .layout import (
    COSTS,
    CROSS_ENTROPY,
    EXP,
    HIDDEN_ACTIVATIONS,
    IDENTITY,
    LOG_LOSS,
    OUTPUT_ACTIVATIONS,
    QUADRATIC,
    RELU,
    SIGMOID,
    SOFTMAX,
    TANH,
    unpack,
)


def activate(z, act):
    """The activation function ``act`` (a code from :mod:`fastnn.layout`) applied to ``z``."""
    if act == SIGMOID:
        return 1.0 / (1.0 + np.exp(-z))
    if act == RELU:
        return np.maximum(z, 0)
    if act == TANH:
        return np.tanh(z)
    if act == IDENTITY:
        return z
    if act == EXP:
        return np.exp(z)
    if act == SOFTMAX:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    raise ValueError(f"unknown activation code {act}")


def derivative(a, act):
    """Derivative of a hidden activation, written in terms of its output ``a``."""
    if act == SIGMOID:
        return a * (1 - a)
    if act == RELU:
        return (a > 0).astype(a.dtype)
    if act == TANH:
        return 1 - a * a
    if act == IDENTITY:
        return np.ones_like(a)
    raise ValueError(f"no elementwise derivative for activation code {act}")


def _codes(hidden, output, cost):
    return HIDDEN_ACTIVATIONS[hidden], OUTPUT_ACTIVATIONS[output], COSTS[cost]


def forward(theta, sizes, X, hidden="sigmoid", output="sigmoid"):
    """Activations of every layer for the rows of ``X``: ``[X, a_1, ..., a_L]``."""
    hid, out, _ = _codes(hidden, output, "quadratic")
    weights, biases = unpack(theta, sizes)
    acts = [X]
    for l, (W, b) in enumerate(zip(weights, biases)):
        z = acts[-1] @ W.T + b
        acts.append(activate(z, out if l == len(weights) - 1 else hid))
    return acts


def one_hot(y, n, dtype):
    """Rows of the identity: the wanted outputs for integer labels ``y``."""
    Y = np.zeros((len(y), n), dtype=dtype)
    Y[np.arange(len(y)), y] = 1
    return Y


def cost(a, Y, cost_code):
    """Per-sample cost of outputs ``a`` against one-hot targets ``Y`` (a vector of length m)."""
    if cost_code == QUADRATIC:
        return 0.5 * ((a - Y) ** 2).sum(axis=1)
    if cost_code == CROSS_ENTROPY:
        p = np.where(Y == 1, a, 1 - a)
        return -np.log(np.maximum(p, 1e-300)).sum(axis=1)
    if cost_code == LOG_LOSS:
        return -np.log(np.maximum((a * Y).sum(axis=1), 1e-300))
    raise ValueError(f"unknown cost code {cost_code}")


def output_delta(a, Y, out, cost_code):
    """dC/dz of the output layer for each sample (rows)."""
    if cost_code == QUADRATIC:
        if out == SIGMOID:
            return (a - Y) * a * (1 - a)
        # softmax: delta = J^T (a - y) with J = diag(a) - a a^T
        r = a - Y
        return a * (r - (r * a).sum(axis=1, keepdims=True))
    # cross-entropy with sigmoid, log-likelihood with softmax: the classic a - y
    return a - Y


def backprop(theta, sizes, X, y, hidden="sigmoid", output="sigmoid", cost_name="quadratic"):
    """Gradient of the *summed* cost of the samples ``(X, y)``, as a flat vector.

    Returns ``(grad, total_cost, n_correct)``.  Divide ``grad`` and
    ``total_cost`` by ``len(X)`` for the averages.
    """
    hid, out, cc = _codes(hidden, output, cost_name)
    weights, _ = unpack(theta, sizes)
    acts = forward(theta, sizes, X, hidden, output)
    Y = one_hot(y, sizes[-1], theta.dtype)
    grad = np.zeros_like(theta)
    gW, gb = unpack(grad, sizes)
    delta = output_delta(acts[-1], Y, out, cc)
    for l in range(len(weights) - 1, -1, -1):
        gW[l][...] = delta.T @ acts[l]
        gb[l][...] = delta.sum(axis=0)
        if l > 0:
            delta = (delta @ weights[l]) * derivative(acts[l], hid)
    total = float(cost(acts[-1], Y, cc).sum())
    correct = int((acts[-1].argmax(axis=1) == y).sum())
    return grad, total, correct


def input_gradient(
    theta,
    sizes,
    X,
    y=None,
    layer=-1,
    neuron=None,
    hidden="sigmoid",
    output="sigmoid",
    cost_name="quadratic",
):
    """Gradient of one scalar per row of ``X`` with respect to that row.

    The scalar is the cost of label ``y[i]`` when ``layer < 0``, else the
    activation of neuron ``neuron[i]`` of layer ``layer`` (0 is the first
    hidden layer).  Returns ``(GX, total_cost)`` (the cost is 0 for neurons).
    """
    hid, out, cc = _codes(hidden, output, cost_name)
    weights, _ = unpack(theta, sizes)
    acts = forward(theta, sizes, X, hidden, output)
    n = len(X)
    if layer < 0:
        Y = one_hot(y, sizes[-1], theta.dtype)
        delta = output_delta(acts[-1], Y, out, cc)
        total = float(cost(acts[-1], Y, cc).sum())
        top = len(weights) - 1
    else:
        a = acts[layer + 1]
        delta = np.zeros_like(a)
        rows = np.arange(n)
        aj = a[rows, neuron]
        if layer < len(weights) - 1:
            delta[rows, neuron] = derivative(aj, hid)
        elif out == SOFTMAX:
            delta = -aj[:, None] * a
            delta[rows, neuron] += aj
        else:
            delta[rows, neuron] = derivative(aj, out)
        total = 0.0
        top = layer
    for l in range(top, 0, -1):
        delta = (delta @ weights[l]) * derivative(acts[l], hid)
    return delta @ weights[0], total


def update(theta, grad_sum, m, sizes, eta, decay=0.0):
    """SGD update in place: ``W <- (1 - eta*decay) W - eta/m grad_W``, ``b <- b - eta/m grad_b``."""
    weights, biases = unpack(theta, sizes)
    gW, gb = unpack(grad_sum, sizes)
    for W, b, dW, db in zip(weights, biases, gW, gb):
        W *= 1 - eta * decay
        W -= (eta / m) * dW
        b -= (eta / m) * db


def sgd_step(
    theta, sizes, X, y, eta, decay=0.0, hidden="sigmoid", output="sigmoid", cost_name="quadratic"
):
    """One SGD step on the mini-batch ``(X, y)``; returns (cost sum, correct) before the step."""
    grad, total, correct = backprop(theta, sizes, X, y, hidden, output, cost_name)
    update(theta, grad, len(X), sizes, eta, decay)
    return total, correct


def train_epoch(
    theta,
    sizes,
    X,
    y,
    perm,
    m,
    eta,
    decay=0.0,
    hidden="sigmoid",
    output="sigmoid",
    cost_name="quadratic",
):
    """One epoch of mini-batch SGD over ``X[perm]``, one matrix product per layer per batch."""
    total, correct = 0.0, 0
    for b0 in range(0, len(perm), m):
        rows = perm[b0 : b0 + m]
        c, k = sgd_step(theta, sizes, X[rows], y[rows], eta, decay, hidden, output, cost_name)
        total += c
        correct += k
    return total, correct


def train_epoch_per_sample(
    theta,
    sizes,
    X,
    y,
    perm,
    m,
    eta,
    decay=0.0,
    hidden="sigmoid",
    output="sigmoid",
    cost_name="quadratic",
    n_batches=None,
):
    """The classic loop of Nielsen's ``network.py``: backprop one sample at a time.

    Same maths as :func:`train_epoch`, written the way ``network.py`` is:
    column vectors, ``backprop`` returning fresh per-layer gradient lists for
    each sample, list comprehensions to accumulate them and to build the
    updated weights.  The result is written back into ``theta`` after every
    mini-batch.  ``n_batches`` limits the run to the first mini-batches
    (benchmarks time a fraction of the epoch and scale it).
    """
    hid, out, cc = _codes(hidden, output, cost_name)
    W_views, b_views = unpack(theta, sizes)
    weights = [W.copy() for W in W_views]
    biases = [b.reshape(-1, 1).copy() for b in b_views]
    n_out = sizes[-1]

    def backprop(x, label):
        nabla_b = [np.zeros(b.shape, b.dtype) for b in biases]
        nabla_w = [np.zeros(w.shape, w.dtype) for w in weights]
        activation = x
        activations = [x]
        for l, (b, w) in enumerate(zip(biases, weights)):
            z = np.dot(w, activation) + b
            activation = activate(z.T, out if l == len(weights) - 1 else hid).T
            activations.append(activation)
        yv = np.zeros((n_out, 1), dtype=theta.dtype)
        yv[label] = 1
        delta = output_delta(activations[-1].T, yv.T, out, cc).T
        nabla_b[-1] = delta
        nabla_w[-1] = np.dot(delta, activations[-2].T)
        for l in range(2, len(sizes)):
            delta = np.dot(weights[-l + 1].T, delta) * derivative(activations[-l], hid)
            nabla_b[-l] = delta
            nabla_w[-l] = np.dot(delta, activations[-l - 1].T)
        return nabla_b, nabla_w

    stop = len(perm) if n_batches is None else min(len(perm), n_batches * m)
    for b0 in range(0, stop, m):
        mini_batch = [(X[r].reshape(-1, 1), y[r]) for r in perm[b0 : b0 + m]]
        nabla_b = [np.zeros(b.shape, b.dtype) for b in biases]
        nabla_w = [np.zeros(w.shape, w.dtype) for w in weights]
        for x, label in mini_batch:
            delta_nabla_b, delta_nabla_w = backprop(x, label)
            nabla_b = [nb + dnb for nb, dnb in zip(nabla_b, delta_nabla_b)]
            nabla_w = [nw + dnw for nw, dnw in zip(nabla_w, delta_nabla_w)]
        k = len(mini_batch)
        weights = [(1 - eta * decay) * w - (eta / k) * nw for w, nw in zip(weights, nabla_w)]
        biases = [b - (eta / k) * nb for b, nb in zip(biases, nabla_b)]
    for W, b, w_new, b_new in zip(W_views, b_views, weights, biases):
        W[...] = w_new
        b[...] = b_new.ravel()
