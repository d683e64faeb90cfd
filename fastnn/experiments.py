"""Experiments run by ``python -m fastnn experiment``: is it learning or memorizing?

:func:`memorization` repeats, at small scale, the experiment of Zhang et al.
(2017), "Understanding deep learning requires rethinking generalization":
the same network, from the same initial weights, is trained on ``n``
training images with their true labels, with the labels shuffled, and on
random-pixel images; after every epoch it records the accuracy and cost on
those ``n`` images and the accuracy on the real test set.  A network that
can drive its training accuracy far above chance on shuffled labels, where
there is nothing to learn, can memorize; that its test accuracy then stays
at chance shows the two are different things.
"""

from __future__ import annotations

import time

import numpy as np

from .network import Network

RUNS = ("true_labels", "shuffled_labels", "random_pixels")
DEFAULTS = dict(
    n=1000,
    epochs=40,
    sizes=(784, 256, 10),
    activation="relu",
    cost="log_loss",
    eta=0.1,
    batch_size=10,
    seed=0,
)


def _inputs(kind, X, y, rng):
    """The training set of one run: ``(X, y)`` for ``kind`` in :data:`RUNS`."""
    if kind == "true_labels":
        return X, y
    if kind == "shuffled_labels":
        return X, rng.permutation(y)
    # random pixels: Gaussian with the mean and spread of the real images, true labels
    R = rng.normal(X.mean(), X.std(), size=X.shape)
    return R.astype(X.dtype), y


def memorization(train, test, *, progress=None, **settings):
    """Run the three trainings; returns a dict ready for JSON.

    ``train`` and ``test`` are ``(X, y)`` with float pixels in [0, 1] (or
    uint8).  ``settings`` override :data:`DEFAULTS` (``n``, ``epochs``,
    ``sizes``, ``activation``, ``cost``, ``eta``, ``batch_size``, ``seed``).
    The result has one key per run in :data:`RUNS`, each with the per-epoch
    lists ``train_accuracy``, ``test_accuracy`` and ``train_cost`` (and
    ``seconds``), plus ``settings`` and ``chance`` (1 / number of classes).
    ``progress`` is called with one line per run.
    """
    unknown = set(settings) - set(DEFAULTS)
    if unknown:
        raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
    s = dict(DEFAULTS, **settings)
    Xtr, ytr = train
    Xte, yte = test
    n = int(s["n"])
    if not 1 <= n <= len(Xtr):
        raise ValueError(f"n must be between 1 and {len(Xtr)} (the training images), got {n}")
    X = np.asarray(Xtr[:n], np.float32)
    if np.asarray(Xtr).dtype == np.uint8:
        X /= 255
    y = np.asarray(ytr[:n])
    out = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}}
    out["chance"] = 1.0 / s["sizes"][-1]
    for kind in RUNS:
        rng = np.random.default_rng(s["seed"] + 1)
        Xk, yk = _inputs(kind, X, y, rng)
        net = Network(s["sizes"], activation=s["activation"], cost=s["cost"], seed=s["seed"])
        prepared = net.prepare((Xk, yk))
        rec = {"train_accuracy": [], "test_accuracy": [], "train_cost": [], "seconds": []}
        t0 = time.perf_counter()
        for _ in range(int(s["epochs"])):
            t = time.perf_counter()
            net.SGD(prepared, 1, s["batch_size"], s["eta"], quiet=True)
            rec["seconds"].append(time.perf_counter() - t)
            rec["train_accuracy"].append(net.accuracy(Xk, yk))
            rec["train_cost"].append(net.cost(Xk, yk))
            rec["test_accuracy"].append(net.accuracy(Xte, yte))
        out[kind] = rec
        if progress:
            progress(
                f"{kind.replace('_', ' ')}: train accuracy {rec['train_accuracy'][-1]:.3f}, "
                f"test accuracy {rec['test_accuracy'][-1]:.3f} after {s['epochs']} epochs "
                f"({time.perf_counter() - t0:.1f} s)"
            )
    return out
