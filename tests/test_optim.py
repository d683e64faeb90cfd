"""The ``"optim"`` driver against scikit-learn: one epoch from the same weights, float64.

scikit-learn's ``MLPClassifier``/``MLPRegressor`` are the oracle: with
``shuffle=False`` both visit the samples in order, so after one epoch from
the same initial weights the weights must agree to 1e-10 (summation order
differs, nothing else).
"""

import warnings

import numpy as np
import pytest

from fastnn.kernels import optim
from fastnn.layout import (
    HIDDEN_ACTIVATIONS,
    IDENTITY,
    SIGMOID,
    SOFTMAX,
    activation_offsets,
    layer_offsets,
)

sknn = pytest.importorskip("sklearn.neural_network")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402


def _flat(coefs, intercepts):
    """scikit-learn's ``coefs_`` (n_in, n_out) and ``intercepts_`` as fastnn's flat vector."""
    return np.concatenate([p for W, b in zip(coefs, intercepts) for p in (W.T.ravel(), b)])


def _one_epoch_fastnn(theta, sizes, hidden, out, X, T, w, batch, opt, hyper):
    offs, n = layer_offsets(sizes)
    theta = theta.copy()
    buf = optim.optim_buffers(sizes, batch, np.float64)
    state = np.zeros((2, n))
    loss = optim.train_epoch_optim(
        theta,
        np.array(sizes, np.int64),
        offs,
        activation_offsets(sizes),
        hidden,
        out,
        X,
        T,
        w,
        np.arange(len(X), dtype=np.int64),
        batch,
        buf,
        opt,
        hyper,
        state,
    )
    return theta, loss / len(X)


def _hyper(est):
    h = np.zeros(optim.N_HYPER)
    h[optim.LR] = est.learning_rate_init
    h[optim.ALPHA] = est.alpha
    h[optim.MOMENTUM] = est.momentum
    h[optim.NESTEROV] = est.nesterovs_momentum
    h[optim.BETA1], h[optim.BETA2], h[optim.EPSILON] = est.beta_1, est.beta_2, est.epsilon
    return h


CASES = [
    # (estimator, kwargs, targets)
    ("clf", dict(solver="sgd", momentum=0.0), "multiclass"),
    ("clf", dict(solver="sgd", momentum=0.9, nesterovs_momentum=False), "multiclass"),
    ("clf", dict(solver="sgd", momentum=0.9, nesterovs_momentum=True), "multiclass"),
    ("clf", dict(solver="adam"), "multiclass"),
    ("clf", dict(solver="adam", activation="tanh"), "binary"),
    ("clf", dict(solver="sgd", momentum=0.5, activation="logistic"), "multilabel"),
    ("reg", dict(solver="adam", activation="relu"), "regression"),
    ("reg", dict(solver="sgd", momentum=0.9, activation="tanh"), "regression"),
]


@pytest.mark.parametrize("kind,kwargs,targets", CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_one_epoch_matches_scikit_learn(kind, kwargs, targets, weighted):
    rng = np.random.default_rng(3)
    n, n_in = 203, 12  # the last mini-batch is smaller
    X = rng.normal(size=(n, n_in))
    if targets == "multiclass":
        y = rng.integers(0, 4, n)
    elif targets == "binary":
        y = rng.integers(0, 2, n)
    elif targets == "multilabel":
        y = (rng.random((n, 3)) < 0.4).astype(int)
    else:
        y = rng.normal(size=(n, 2))
    sw = rng.uniform(0.2, 3.0, n) if weighted else None
    cls = sknn.MLPClassifier if kind == "clf" else sknn.MLPRegressor
    est = cls(
        hidden_layer_sizes=(9, 7),
        batch_size=20,
        learning_rate_init=0.01,
        alpha=0.003,
        shuffle=False,
        max_iter=1,
        warm_start=True,
        random_state=0,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y, sample_weight=sw)  # initialises the weights
        rng_w = np.random.default_rng(5)  # fresh weights, so no test leans on sklearn's init
        est.coefs_ = [rng_w.normal(scale=0.5, size=c.shape) for c in est.coefs_]
        est.intercepts_ = [rng_w.normal(scale=0.5, size=b.shape) for b in est.intercepts_]
        theta0 = _flat(est.coefs_, est.intercepts_)
        est.fit(X, y, sample_weight=sw)  # one epoch from those weights, a fresh optimiser
    sizes = [n_in, 9, 7, est.n_outputs_]
    if kind == "clf":
        T = est._label_binarizer.transform(y).astype(np.float64)
    else:
        T = y.astype(np.float64)
    out = {"softmax": SOFTMAX, "logistic": SIGMOID, "identity": IDENTITY}[est.out_activation_]
    hidden = HIDDEN_ACTIVATIONS[{"logistic": "sigmoid"}.get(est.activation, est.activation)]
    opt = optim.ADAM if est.solver == "adam" else optim.SGD
    w = np.ones(n) if sw is None else sw
    theta, loss = _one_epoch_fastnn(theta0, sizes, hidden, out, X, T, w, 20, opt, _hyper(est))
    want = _flat(est.coefs_, est.intercepts_)
    assert np.abs(want - theta0).max() > 1e-3  # the epoch moved the weights
    np.testing.assert_allclose(theta, want, rtol=0, atol=1e-10)
    assert loss == pytest.approx(est.loss_, rel=1e-10)
