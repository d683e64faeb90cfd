"""Figures of :mod:`fastnn.inspect` and of the memorization experiment (needs matplotlib).

Install with ``pip install 'fastnn[plot]'``.  Each ``*_figure`` function
returns a :class:`matplotlib.figure.Figure` (no pyplot, no global state;
save it with ``fig.savefig(path)``).  :func:`write_report` writes the
figures of ``python -m fastnn inspect`` and their ``report.md``.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
except ImportError as e:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "fastnn's figures need matplotlib: pip install 'fastnn[plot]' (or matplotlib)"
    ) from e

DPI = 100


def save(fig, path):
    """Write ``fig`` as a PNG file at ``path``, atomically (see
    :func:`fastnn.persistence.write_atomic`); returns the path."""
    from .persistence import write_atomic

    return write_atomic(path, lambda f: fig.savefig(f, format="png"))


def _image_shape(n):
    """28x28 for MNIST, a square when ``n`` is one, else one row."""
    r = math.isqrt(n)
    return (r, r) if r * r == n else (1, n)


def _grid(n, cols=None):
    cols = cols or min(n, 8)
    return math.ceil(n / cols), cols


def _tiles(images, titles, cmap, centred, suptitle, cols=None):
    n = len(images)
    rows, cols = _grid(n, cols)
    fig = Figure(figsize=(1.3 * cols, 1.45 * rows + 0.5), dpi=DPI)
    shape = _image_shape(images.shape[1])
    for i in range(n):
        ax = fig.add_subplot(rows, cols, i + 1)
        img = images[i].reshape(shape)
        if centred:
            lim = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap=cmap, vmin=-lim, vmax=lim)
        else:
            ax.imshow(img, cmap=cmap, vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    return fig


def _grouped_bars(ax, series, ticks):
    """One group of bars per tick, one bar per series (``{legend label: values}``)."""
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        ax.bar(np.arange(len(ticks)) + i * width, values, width, label=label)
    ax.set_xticks(np.arange(len(ticks)) + 0.4 - width / 2)
    ax.set_xticklabels(ticks)


def weights_figure(images, title="weights"):
    """One tile per neuron, diverging colours centred at zero (red +, blue -), each tile
    scaled to its own largest magnitude."""
    images = np.asarray(images, np.float64)
    return _tiles(images, [f"#{i}" for i in range(len(images))], "RdBu_r", True, title)


def preferred_figure(images, activations, title="preferred inputs"):
    """One tile per neuron: the input in [0, 1] (black 0, white 1) that excites it most."""
    titles = [f"#{i}: {a:.2f}" for i, a in enumerate(activations)]
    return _tiles(np.asarray(images, np.float64), titles, "gray", False, title)


def activations_figure(image, activations, label=None):
    """The image, then one bar chart per layer of its activations (output last)."""
    n = len(activations)
    fig = Figure(figsize=(2.2 * (n + 1), 2.4), dpi=DPI)
    ax = fig.add_subplot(1, n + 1, 1)
    ax.imshow(np.asarray(image, np.float64).reshape(_image_shape(len(image))), cmap="gray_r")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("input" + (f" (label {label})" if label is not None else ""), fontsize=8)
    for l, a in enumerate(activations):
        ax = fig.add_subplot(1, n + 1, l + 2)
        a = np.asarray(a)
        last = l == n - 1
        colours = ["tab:orange" if last and j == a.argmax() else "tab:blue" for j in range(len(a))]
        ax.bar(np.arange(len(a)), a, color=colours)
        ax.set_title(f"output: {int(a.argmax())}" if last else f"hidden layer {l + 1}", fontsize=8)
        ax.set_xlabel("neuron", fontsize=7)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def gradient_norms_figure(history):
    """Per-layer gradient norms over training (``history`` from ``SGD(track_gradients=True)``,
    or its ``gradient_norms`` list), log scale; epoch 0 is the initial network."""
    norms = history["gradient_norms"] if isinstance(history, dict) else history
    norms = np.asarray(norms, np.float64)
    fig = Figure(figsize=(5, 3.2), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    for l in range(norms.shape[1]):
        ax.plot(np.arange(len(norms)), norms[:, l], marker="o", ms=3, label=f"layer {l + 1}")
    ax.set_yscale("log")
    ax.set_xlabel("epoch (measured at its start: 0 = initial weights)")
    ax.set_ylabel("|gradient| of the layer")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def gradient_bars_figure(named):
    """Per-layer gradient norms of a few networks side by side (``{name: norms}``), log scale."""
    fig = Figure(figsize=(5, 3.2), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    n = len(next(iter(named.values())))
    _grouped_bars(ax, named, [f"layer {l + 1}" for l in range(n)])
    ax.set_yscale("log")
    ax.set_ylabel("|gradient| of the layer (W and b)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def lousiest_figure(images, labels, predicted, costs):
    """The examples with the highest cost: true label, predicted label and cost on each."""
    titles = [f"{t}->{p} ({c:.2f})" for t, p, c in zip(labels, predicted, costs)]
    return _tiles(np.asarray(images, np.float64), titles, "gray_r", False, "true->predicted (cost)")


def confusion_figure(cm):
    """The confusion matrix: rows true class, columns predicted class, counts written in."""
    cm = np.asarray(cm)
    k = cm.shape[0]
    fig = Figure(figsize=(4.6, 4.2), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(np.log1p(cm), cmap="Blues")
    big = np.log1p(cm).max() / 2
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                fontsize=6,
                color="white" if np.log1p(cm[i, j]) > big else "black",
            )
    ax.set_xticks(range(k))
    ax.set_yticks(range(k))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def noise_figure(noise):
    """Fraction of inputs given each class, per input kind, with the mean top output."""
    fig = Figure(figsize=(6, 3.2), dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    series = {
        f"{kind} (mean top output {r['mean_top_output']:.2f})": r["class_fractions"]
        for kind, r in noise.items()
    }
    k = len(next(iter(series.values())))
    _grouped_bars(ax, series, [str(c) for c in range(k)])
    ax.set_xlabel("class answered")
    ax.set_ylabel("fraction of inputs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def memorization_figure(results):
    """Train and test accuracy per epoch of each run of the memorization experiment."""
    fig = Figure(figsize=(9, 3.2), dpi=DPI)
    keys = [
        ("train_accuracy", "train accuracy"),
        ("test_accuracy", "test accuracy"),
        ("train_cost", "train cost"),
    ]
    for p, (key, name) in enumerate(keys):
        ax = fig.add_subplot(1, 3, p + 1)
        for run in ("true_labels", "shuffled_labels", "random_pixels"):
            r = results[run]
            ax.plot(np.arange(1, len(r[key]) + 1), r[key], label=run.replace("_", " "))
        if key != "train_cost":
            ax.axhline(results.get("chance", 0.1), color="grey", lw=0.8, ls=":")
            ax.set_ylim(0, 1.02)
        ax.set_xlabel("epoch")
        ax.set_title(name, fontsize=9)
        if p == 0:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


_READING = {
    "weights_layer1.png": (
        "First hidden layer: each tile is one neuron's 784 weights as a 28x28 image. "
        "Red pixels push the neuron up, blue pull it down (each tile has its own scale, "
        "centred at zero). Strokes or blobs mean the neuron looks for a shape; salt-and-pepper "
        "means it found little structure."
    ),
    "weights_layer{n}.png": (
        "Hidden layer {n}, linear view: the product of the weight matrices down to the pixels, "
        "the pattern that would excite each neuron if the layers below were linear. It ignores "
        "the squashing, so read it as a rough sketch."
    ),
    "preferred_layer{n}.png": (
        "Hidden layer {n}: the image in [0, 1] that excites each neuron most, found by gradient "
        "ascent on the pixels from mid-grey (the reached activation is in each title). Neurons "
        "that respond to digit-like parts show strokes; most show textures."
    ),
    "activations.png": (
        "One test image and the activations it causes, layer by layer; the orange bar is the "
        "answer. Few strongly active hidden neurons mean a sparse code."
    ),
    "gradient_norms.png": (
        "Length of each layer's part of the cost gradient (log scale), for a freshly "
        "initialised network of the same shape and for this one. At initialisation the first "
        "layer's gradient is typically an order of magnitude smaller than the output layer's "
        "(the vanishing gradient): the early layers learn slowest. For the curve over "
        "training, use `Network.SGD(..., track_gradients=True)` and "
        "`fastnn.figures.gradient_norms_figure(history)`."
    ),
    "lousiest.png": (
        "The test images with the highest cost, worst first: true label -> answer (cost). "
        "Many are badly written or ambiguous; the rest show what the network has not learnt."
    ),
    "confusion.png": (
        "Confusion matrix on the test set: row = true digit, column = answer (colour on a log "
        "scale). Off-diagonal cells show which digits it mixes up."
    ),
    "noise.png": (
        "What the network answers for 10,000 uniform-noise images, 10,000 sparse-noise images "
        "(MNIST's density of lit pixels), a blank image and the real test digits: the fraction "
        "of inputs given each class. Trained only on digits, it still answers noise, often "
        "confidently and favouring a few classes: it cannot say 'none of these'."
    ),
}


def write_report(net, out_dir, numbers, preferred, lousy_images, image):
    """The PNG files of ``python -m fastnn inspect`` and ``report.md``; returns their paths."""
    from .inspect import weight_images
    from .persistence import write_atomic

    figs = {}
    L = net.num_layers - 1
    for li in range(L - 1):
        title = "hidden layer 1 weights" if li == 0 else f"hidden layer {li + 1}, linear view"
        figs[f"weights_layer{li + 1}.png"] = weights_figure(weight_images(net, li), title)
        figs[f"preferred_layer{li + 1}.png"] = preferred_figure(
            preferred[li],
            numbers["preferred_activation"][str(li)],
            f"hidden layer {li + 1}: preferred inputs (activation)",
        )
    im = numbers["image"]
    figs["activations.png"] = activations_figure(image, im["activations"], im["label"])
    figs["gradient_norms.png"] = gradient_bars_figure(
        {
            "at initialisation": numbers["gradient_norms_at_init"],
            "this network": numbers["gradient_norms"],
        }
    )
    w = numbers["lousiest"]
    figs["lousiest.png"] = lousiest_figure(lousy_images, w["label"], w["predicted"], w["cost"])
    figs["confusion.png"] = confusion_figure(numbers["confusion_matrix"])
    figs["noise.png"] = noise_figure(numbers["noise"])
    written = []
    lines = [
        f"# Inside the {'-'.join(map(str, net.sizes))} network",
        "",
        f"Test accuracy {100 * numbers['test_accuracy']:.2f}%, mean test cost "
        f"{numbers['test_cost']:.4f}. The numbers behind every figure are in `inspect.json`.",
        "",
    ]
    for name, fig in figs.items():
        written.append(save(fig, os.path.join(out_dir, name)))
        n = "".join(ch for ch in name if ch.isdigit())
        key = name if name in _READING else name.replace(n, "{n}", 1)
        lines += [
            f"## {name[:-4].replace('_', ' ')}",
            "",
            f"![{name}]({name})",
            "",
            _READING[key].format(n=n),
            "",
        ]
    report = "\n".join(lines).encode()
    written.append(write_atomic(os.path.join(out_dir, "report.md"), lambda f: f.write(report)))
    return written
