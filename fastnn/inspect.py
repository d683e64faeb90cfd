"""Look inside a trained :class:`fastnn.Network`: the numbers behind the pictures.

Every function takes a network and NumPy arrays and returns NumPy arrays or
plain dicts; the figures are drawn from them by :mod:`fastnn.figures` (the
optional ``plot`` extra, matplotlib).  :func:`report` writes both, and is
what ``python -m fastnn inspect MODEL.npz --out DIR`` runs.

What hidden neurons respond to
    :func:`weight_images` (the first layer's weights; for deeper layers the
    product of the weights down to the pixels, the *linear view*),
    :func:`preferred_inputs` (the image in [0, 1] that excites a neuron most,
    by gradient ascent on the pixels), :func:`layer_activations` (which
    neurons fire for one image).
Which nudges matter
    :func:`input_gradient` (the gradient of a neuron or of the cost with
    respect to the pixels, a kernel), :func:`gradient_norms` (one length per
    layer; ``Network.SGD(track_gradients=True)`` records them per epoch),
    :func:`top_gradient_components`.
Where it fails
    :func:`example_costs`, :func:`lousiest`, :func:`confusion_matrix`,
    :func:`noise_response` (what it answers for noise and a blank image).

The memorization experiment is :func:`fastnn.experiments.memorization`.
"""

from __future__ import annotations

import os

import numpy as np

from . import kernels, runtime
from ._checks import _positive_real
from .kernels.inputs import input_gradient as _input_gradient_kernel
from .layout import COSTS, layer_norms
from .persistence import write_json
from .reference import cost as _cost_per_row
from .reference import one_hot

#: fraction of non-zero pixels in MNIST's training images (0.191)
MNIST_DENSITY = 0.191


def _layer_index(net, layer):
    """``layer`` as an index into ``net.sizes[1:]`` (negative counts from the output)."""
    n = net.num_layers - 1
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)):
        raise TypeError(f"layer must be an integer, got {layer!r}")
    if not -n <= layer < n:
        raise ValueError(
            f"layer must be in [{-n}, {n - 1}] (0 is the first hidden layer, -1 the output "
            f"layer), got {layer}"
        )
    return int(layer) % n


def _all_activations(net, X):
    """Activations of every layer for validated inputs ``X``: ``(n, sum(sizes[1:]))``."""
    A = np.empty((X.shape[0], net._n_act), net.dtype)
    with runtime.parallel_section():
        bad = kernels.forward_rows(*net._kernel_args()[:6], X, A, 64)
    if bad:
        net._raise_nonfinite(X, "X")
    return A


def input_gradient(net, X, y=None, *, layer=None, neuron=None):
    """Gradient with respect to each row of ``X`` of one scalar per row.

    With ``y`` (labels): the cost of row ``i`` with label ``y[i]`` (the
    direction in pixel space that makes that example's cost grow fastest).
    With ``layer`` and ``neuron``: the activation of neuron ``neuron`` (an
    int, or one per row) of layer ``layer`` (0 is the first hidden layer,
    -1 the output layer).  Returns an array shaped like ``X`` in the
    network's dtype.  Computed by a kernel (:mod:`fastnn.kernels.inputs`),
    whose NumPy twin is :func:`fastnn.reference.input_gradient`.
    """
    X = net._inputs(X)
    n = X.shape[0]
    if layer is None and neuron is None:
        if y is None:
            raise ValueError("give y (labels) for the cost, or layer and neuron")
        labels = net._labels(y, n)
        li, neurons = -1, np.zeros(n, np.int64)
    else:
        if y is not None or layer is None or neuron is None:
            raise ValueError("give either y (the cost) or both layer and neuron, not a mix")
        li = _layer_index(net, layer)
        width = net.sizes[li + 1]
        neurons = np.asarray(neuron)
        if neurons.dtype.kind not in "iu":
            raise TypeError(f"neuron must be an integer or integers, got {neuron!r}")
        if neurons.ndim > 1 or neurons.size not in (1, n):
            raise ValueError(
                f"neuron must be one integer or one per row of X ({n}), got shape {neurons.shape}"
            )
        neurons = np.broadcast_to(neurons.reshape(-1), (n,)).astype(np.int64)
        if neurons.min() < 0 or neurons.max() >= width:
            raise ValueError(f"neuron must be in [0, {width - 1}] for layer {layer}")
        labels = np.zeros(n, np.int64)
    A = np.empty((n, net._n_act), net.dtype)
    D = np.empty_like(A)
    GX = np.empty_like(X)
    _, bad = _input_gradient_kernel(*net._kernel_args(), X, labels, li, neurons, A, D, GX)
    if bad:
        net._raise_nonfinite(X, "X")
    return GX


def weight_images(net, layer=0):
    """What each neuron of ``layer`` weighs in pixel space, ``(n_neurons, n_inputs)``.

    Layer 0 (the first hidden layer): its weight rows.  A deeper layer: the
    product of the weight matrices down to the input, ``W_l ... W_1 W_0``:
    the pattern that would excite the neuron if every layer below were
    linear (biases and the squashing left out).
    """
    li = _layer_index(net, layer)
    V = net.weights[0].astype(np.float64)
    for W in net.weights[1 : li + 1]:
        V = W.astype(np.float64) @ V
    return V


def preferred_inputs(net, layer=0, *, steps=200, step=0.05, seed=0):
    """The input in [0, 1] that excites each neuron of ``layer`` most, by gradient ascent.

    Starts from mid-grey with a little noise (``seed``) and takes ``steps``
    steps along the activation's gradient with respect to the pixels (the
    pixels held at 0 or 1 by the bounds left out), normalised to a
    root-mean-square change of ``step`` per pixel, each followed by clipping
    to [0, 1].  Returns ``(images, activations)``: one
    row and the reached activation per neuron.
    """
    li = _layer_index(net, layer)
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    step = _positive_real("step", step)
    width, n_in = net.sizes[li + 1], net.sizes[0]
    rng = np.random.default_rng(seed)
    X = np.clip(0.5 + 0.01 * rng.standard_normal((width, n_in)), 0, 1).astype(net.dtype)
    neurons = np.arange(width)
    scale = step * np.sqrt(n_in)
    for _ in range(steps):
        G = input_gradient(net, X, layer=li, neuron=neurons).astype(np.float64)
        G[((X <= 0) & (G < 0)) | ((X >= 1) & (G > 0))] = 0  # pixels held at a bound
        norm = np.sqrt((G * G).sum(axis=1, keepdims=True))
        X += (scale * G / np.maximum(norm, 1e-12)).astype(net.dtype)
        np.clip(X, 0, 1, out=X)
    A = _all_activations(net, X)
    col = net._aoff[li]
    return X, A[neurons, col + neurons].astype(np.float64)


def layer_activations(net, x):
    """Activations of every layer for one input ``x``: a list, output last."""
    X = net._inputs(np.asarray(x).reshape(1, -1))
    A = _all_activations(net, X)[0].astype(np.float64)
    return [A[o : o + s] for o, s in zip(net._aoff, net.sizes[1:])]


def gradient_norms(net, X, y):
    """Length of each layer's part (``W`` and ``b``) of the gradient of the average cost."""
    return layer_norms(net.gradient(X, y), net.sizes)


def top_gradient_components(net, X, y, k=10):
    """The ``k`` largest components (by magnitude) of the negative gradient of the average cost
    of ``(X, y)``: the nudges that matter most for that batch.

    A list of dicts ``{"layer", "neuron", "input", "value"}``, largest first:
    ``layer`` counts weight layers from 0, ``input`` is the input index of a
    weight (None for a bias), ``value`` the component of ``-gradient``.
    """
    g = -net.gradient(X, y).astype(np.float64)
    k = min(int(k), g.size)
    top = np.argpartition(-np.abs(g), k - 1)[:k] if k else np.array([], np.int64)
    top = top[np.argsort(-np.abs(g[top]), kind="stable")]
    sizes, offs = net.sizes, net._offs
    out = []
    for p in top:
        l = int(np.searchsorted(offs, p, side="right") - 1)
        n_in, n_out = sizes[l], sizes[l + 1]
        r = int(p - offs[l])
        if r < n_in * n_out:
            neuron, inp = divmod(r, n_in)
        else:
            neuron, inp = r - n_in * n_out, None
        out.append({"layer": l, "neuron": int(neuron), "input": inp, "value": float(g[p])})
    return out


def example_costs(net, X, y):
    """Cost of each example (the network's cost function, without weight decay)."""
    X = net._inputs(X)
    y = net._labels(y, X.shape[0])
    out = net._forward(X).astype(np.float64)
    return _cost_per_row(out, one_hot(y, net.sizes[-1], np.float64), COSTS[net.cost_name])


def lousiest(net, X, y, k=16):
    """The ``k`` examples with the highest cost, worst first.

    A dict of arrays: ``index`` (rows of ``X``), ``cost``, ``label`` (true)
    and ``predicted``.
    """
    c = example_costs(net, X, y)
    idx = np.argsort(-c, kind="stable")[: int(k)]
    pred = net.predict(np.asarray(X)[idx])
    return {"index": idx, "cost": c[idx], "label": np.asarray(y)[idx], "predicted": pred}


def confusion_matrix(net, X, y):
    """``(k, k)`` counts: row = true class, column = predicted class (as scikit-learn's)."""
    X = net._inputs(X)
    y = net._labels(y, X.shape[0])
    k = net.sizes[-1]
    pred = net._forward(X).argmax(axis=1)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def noise_inputs(kind, n, n_in, *, density=MNIST_DENSITY, seed=0):
    """``n`` noise images: ``"uniform"`` (every pixel U[0, 1]), ``"sparse"`` (each pixel
    non-zero with probability ``density``, then U(0, 1]) or ``"blank"`` (all zero)."""
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.random((n, n_in))
    if kind == "sparse":
        return (rng.random((n, n_in)) < density) * (1.0 - rng.random((n, n_in)))
    if kind == "blank":
        return np.zeros((n, n_in))
    raise ValueError(f"kind must be 'uniform', 'sparse' or 'blank', got {kind!r}")


def _answers(net, X):
    out = net._forward(net._inputs(X)).astype(np.float64)
    if net.output != "softmax":
        out /= out.sum(axis=1, keepdims=True)
    k = net.sizes[-1]
    fractions = np.bincount(out.argmax(axis=1), minlength=k) / len(out)
    return {"class_fractions": fractions.tolist(), "mean_top_output": float(out.max(axis=1).mean())}


def noise_response(net, n=10000, *, digits=None, density=None, seed=0):
    """What the network answers for noise, a blank image and (given ``digits``) real digits.

    Returns a dict by input kind (``uniform``, ``sparse``, ``blank``, and
    ``digits`` when given): ``class_fractions`` (the fraction of inputs
    given each class, summing to 1) and ``mean_top_output`` (the mean of
    the largest output, outputs normalised to sum to 1: how confident the
    answers are).  Sparse noise has the density of ``digits`` (their
    fraction of non-zero pixels) or ``density`` (MNIST's by default).
    """
    n_in = net.sizes[0]
    if density is None:
        density = float(np.count_nonzero(digits) / np.size(digits)) if digits is not None else None
    density = MNIST_DENSITY if density is None else density
    res = {}
    for i, kind in enumerate(("uniform", "sparse", "blank")):
        X = noise_inputs(kind, 1 if kind == "blank" else n, n_in, density=density, seed=seed + i)
        res[kind] = _answers(net, X)
    res["sparse"]["density"] = density
    if digits is not None:
        res["digits"] = _answers(net, digits)
    return res


def _json_ready(x):
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def report(net, out_dir, train, test, *, image=0, probe=1000, seed=0, figures=True):
    """Compute everything above for ``net`` and write it to ``out_dir``.

    ``train`` and ``test`` are ``(X, y)``: the gradient is measured on the
    first ``probe`` training samples, the costs, confusion matrix and
    activations on the test set (``image`` is the test image shown).
    Writes ``inspect.json`` and, with ``figures`` and matplotlib installed,
    one PNG per figure and ``report.md`` showing them.  Returns
    ``(numbers, written)``: the dict saved as JSON and the paths written.
    """
    os.makedirs(out_dir, exist_ok=True)
    Xtr, ytr = net._data(train, "train", convert=False)
    Xte, yte = net._data(test, "test", convert=False)
    Xp, yp = Xtr[:probe], ytr[:probe]
    fresh = type(net)(
        net.sizes,
        activation=net.activation,
        output=net.output,
        cost=net.cost_name,
        weight_decay=net.weight_decay,
        init=net.init,
        dtype=net.dtype,
        seed=seed,
    )
    hidden = list(range(net.num_layers - 2))
    preferred = {li: preferred_inputs(net, li, seed=seed) for li in hidden}
    digits = net._inputs(Xte)  # converted once: the calls below get the working array
    worst = lousiest(net, digits, yte, k=16)
    cm = confusion_matrix(net, digits, yte)
    x0 = digits[image]
    numbers = {
        "model": {
            "sizes": net.sizes,
            "activation": net.activation,
            "output": net.output,
            "cost": net.cost_name,
            "n_params": net.n_params,
        },
        "test_accuracy": float(np.trace(cm) / len(yte)),
        "test_cost": float(example_costs(net, digits, yte).mean()),
        "gradient_norms": gradient_norms(net, Xp, yp).tolist(),
        "gradient_norms_at_init": gradient_norms(fresh, Xp, yp).tolist(),
        "gradient_probe_samples": int(len(Xp)),
        "top_gradient_components": top_gradient_components(net, Xp[:10], yp[:10], k=10),
        "confusion_matrix": cm,
        "lousiest": worst,
        "image": {
            "index": int(image),
            "label": int(yte[image]),
            "activations": layer_activations(net, x0),
        },
        "preferred_activation": {str(li): preferred[li][1] for li in hidden},
    }
    noise = noise_response(net, digits=digits, seed=seed)
    numbers["noise"] = noise
    numbers["noise_class_fractions"] = noise["uniform"]["class_fractions"]
    numbers = _json_ready(numbers)
    written = [write_json(os.path.join(out_dir, "inspect.json"), numbers)]
    if figures:
        from . import figures as fig

        written += fig.write_report(
            net,
            out_dir,
            numbers,
            preferred={li: p[0] for li, p in preferred.items()},
            lousy_images=digits[worst["index"]],
            image=x0,
        )
    return numbers, written


__all__ = [
    "MNIST_DENSITY",
    "confusion_matrix",
    "example_costs",
    "gradient_norms",
    "input_gradient",
    "layer_activations",
    "lousiest",
    "noise_inputs",
    "noise_response",
    "preferred_inputs",
    "report",
    "top_gradient_components",
    "weight_images",
]
