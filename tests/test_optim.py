"""The ``"optim"`` driver against scikit-learn: one epoch from the same weights, float64.

scikit-learn's ``MLPClassifier``/``MLPRegressor`` are the oracle: with
``shuffle=False`` both visit the samples in order, so after one epoch from
the same initial weights the weights must agree to 1e-10 (summation order
differs, nothing else).
"""

import warnings

import numpy as np
import pytest

from fastnn.kernels import csr_rows, optim
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
    loss, _ = optim.train_epoch_optim(
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


# ----------------------------------------------------------------------------- Network.SGD


def _network_and_twin(sizes, seed, **kw):
    from fastnn import Network

    net = Network(sizes, cost="log_loss", dtype="float64", seed=seed, **kw)
    twin = Network(sizes, cost="log_loss", dtype="float64", seed=seed, **kw)
    return net, twin


@pytest.mark.parametrize(
    "settings",
    [
        dict(momentum=0.9),
        dict(momentum=0.5, nesterov=True),
        dict(optimizer="adam"),
        dict(optimizer="adam", betas=(0.8, 0.99), eps=1e-6),
    ],
)
@pytest.mark.parametrize("density", [1.0, 0.15])  # dense path, CSR path
@pytest.mark.parametrize("hidden", [12, 40])  # a scalar tail; 2 lane vectors + 8
@pytest.mark.parametrize("m", [20, 2600])  # one chunk per step; 8 (optim_chunks)
def test_network_optimizers_match_scikit_learn(settings, density, hidden, m):
    """Network.SGD(momentum=..., optimizer='adam') runs the same engine: one epoch equals
    scikit-learn's on the same order of samples (Network's own shuffle), weights included."""
    rng = np.random.default_rng(1)
    n, sizes = max(240, 2 * m), [30, hidden, 4]
    assert optim.optim_chunks(m, 30 * hidden + hidden + hidden * 4 + 4) == (1 if m == 20 else 8)
    X = rng.random((n, 30)) * (rng.random((n, 30)) < density)
    y = np.arange(n) % 4
    decay = 1e-3
    net, twin = _network_and_twin(sizes, 7, weight_decay=decay)
    perm = twin._rng.permutation(n)  # the order Network's first epoch will use
    theta0 = net.parameters.copy()
    eta = 0.05
    net.SGD((X, y), 1, m, eta, quiet=True, **settings)
    est = sknn.MLPClassifier(
        hidden_layer_sizes=(hidden,),
        activation="logistic",
        solver="adam" if settings.get("optimizer") == "adam" else "sgd",
        momentum=settings.get("momentum", 0.9),
        nesterovs_momentum=settings.get("nesterov", False),
        beta_1=settings.get("betas", (0.9, 0.999))[0],
        beta_2=settings.get("betas", (0.9, 0.999))[1],
        epsilon=settings.get("eps", 1e-8),
        alpha=decay * m,  # scikit-learn's L2 term is alpha W / batch size
        batch_size=m,
        learning_rate_init=eta,
        shuffle=False,
        max_iter=1,
        warm_start=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, y)
        W, b = twin.weights, twin.biases
        est.coefs_ = [w.T.copy() for w in W]
        est.intercepts_ = [v.copy() for v in b]
        est.fit(X[perm], y[perm])
    assert np.abs(net.parameters - theta0).max() > 1e-3
    np.testing.assert_allclose(net.parameters, _flat(est.coefs_, est.intercepts_), atol=1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_output_deltas_with_any_targets(dtype):
    """The softmax output's deltas, log-loss and correct count for class labels (the
    one-term shortcut) and for other targets: several classes, none, a negative one,
    a tie; against NumPy."""
    rng = np.random.default_rng(2)
    n, k = 12, 10
    z = rng.normal(size=(n, k)) * 4
    a = (np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)).astype(dtype)
    a[3, 2] = 0  # clipped to eps
    T = np.eye(k, dtype=dtype)[rng.integers(0, k, n)]
    T[1] = rng.random(k)  # soft targets
    T[2] = 0  # none
    T[4, :] = 0
    T[4, 5] = -0.5  # a negative one alone: the argmax is a zero
    T[5, [1, 7]] = 0.5  # a tie: the first
    w = rng.uniform(0.5, 2, n).astype(dtype)
    rows = rng.permutation(n)
    A = np.zeros((n, 3 + k), dtype)
    A[:, 3:] = a[rows]
    D = np.zeros_like(A)
    sizes = np.array([5, 3, k], np.int64)
    aoff = np.array([0, 3], np.int64)
    total, correct = optim._target_deltas(sizes, aoff, SOFTMAX, T, w, rows, A, D, 0, n)
    eps = np.finfo(dtype).eps
    t, p = T[rows].astype(np.float64), np.clip(a[rows].astype(np.float64), eps, 1 - eps)
    want = (w[rows] * -(t * np.log(p)).sum(axis=1)).sum()
    assert total == pytest.approx(want, rel=1e-12)
    np.testing.assert_array_equal(D[:, 3:], (A[:, 3:] - T[rows]) * w[rows, None])
    assert correct == (a[rows].argmax(axis=1) == T[rows].argmax(axis=1)).sum()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optim_buffers_rows_are_whole_aligned_cache_lines(dtype):
    """Each row of the activations and deltas starts on a cache line (the CSR path's
    gradient reads a sample's deltas once per non-zero; split vector loads cost time)."""
    buf = optim.optim_buffers([784, 100, 10], 200, dtype)
    for a in (buf.A, buf.D):
        assert a.shape == (200, 112) and a.dtype == dtype  # 110 columns in whole lines
        assert a.ctypes.data % 64 == 0 and a.strides[0] % 64 == 0 and a.flags.c_contiguous


def test_optim_chunks_with_csr_inputs():
    """CSR inputs get chunks of at least n_in // 8 samples (their per-chunk costs scale
    with n_in); dense inputs keep chunks of n_params // 1024 samples."""
    n_params = 784 * 32 + 32 + 32 * 10 + 10  # W7's 784-32-10
    assert optim.optim_chunks(200, n_params) == 8  # dense: 24 samples a chunk
    assert optim.optim_chunks(200, n_params, 784) == 2  # CSR: at least 98
    assert optim.optim_chunks(100, n_params, 784) == 2
    assert optim.optim_chunks(2600, n_params, 784) == 8  # at most MAX_CHUNKS
    assert optim.optim_chunks(20, n_params, 784) == 1  # a small step runs serially


# one part, lists packed; eight parts, lists in slots; eight parts, lists packed
@pytest.mark.parametrize("m,packed", [(16, False), (250, False), (250, True)])
@pytest.mark.parametrize("used", [60, 5])  # non-zeros in every input; in 5 (empty parts)
@pytest.mark.parametrize("opt", [optim.SGD, optim.ADAM])
def test_csr_inputs_train_as_dense_inputs_do(m, packed, used, opt, monkeypatch):
    """The CSR path (the first layer split by input columns, ``kernels.columns``) takes the
    dense path's steps to rounding in float64, loss included, with a mini-batch whose
    weights are all zero (no step) and a short last one; bit-identical for any thread
    count (a team of two runs eight parts)."""
    import numba

    from fastnn import runtime
    from fastnn.kernels import columns, csr_rows

    if packed:  # lists packed whatever their length
        monkeypatch.setattr(columns, "SLOT_MIN", 10**9)

    rng = np.random.default_rng(6)
    n, sizes = 1010, [60, 100, 8, 4]
    X = rng.random((n, 60)) * (rng.random((n, 60)) < 0.2)
    X[:, used:] = 0
    T = np.eye(4)[rng.integers(0, 4, n)]
    perm = rng.permutation(n)
    w = rng.uniform(0.5, 2.0, n)
    w[perm[m : 2 * m]] = 0  # the second mini-batch counts for nothing
    offs, n_params = layer_offsets(sizes)
    assert optim.optim_chunks(m, n_params, 60) == (1 if m == 16 else 8)
    theta0 = rng.normal(scale=0.3, size=n_params)
    hyper = np.zeros(optim.N_HYPER)
    hyper[[optim.LR, optim.ALPHA, optim.MOMENTUM, optim.NESTEROV]] = 0.01, 0.003, 0.9, 1
    hyper[[optim.BETA1, optim.BETA2, optim.EPSILON]] = 0.9, 0.999, 1e-8
    csr = csr_rows(X, np.float64)
    cols = optim.optim_buffers(sizes, m, np.float64, csr).cols
    if m == 250:
        assert len(cols.cuts) == 9 and (np.diff(cols.cuts) == 0).any() == (used == 5)
    # lists of 3 non-zeros on average are packed by part; of 50, in fixed slots
    assert cols.slotted == (m == 250 and not packed)
    if cols.slotted:  # each input's slot holds as many non-zeros as any m rows have there
        want = np.minimum((X != 0).sum(axis=0), m)
        assert all((np.diff(first) == want).all() for first in cols.first)
    else:  # each part's lists, the non-zeros of the m rows with the most in that part
        parts = list(zip(cols.cuts[:-1], cols.cuts[1:]))
        need = [np.sort((X[:, k0:k1] != 0).sum(axis=1))[-m:].sum() for k0, k1 in parts]
        starts = [cols.first[q, k0] for q, (k0, _) in enumerate(parts)] + [len(cols.cs)]
        assert np.diff(starts).tolist() == need
    # where each row's non-zeros of each part start, then where the row ends
    before = [(X[:, :k] != 0).sum(axis=1) for k in cols.cuts[:-1]]
    want = csr[0][:-1, None] + np.stack(before, axis=1)
    np.testing.assert_array_equal(cols.starts, np.column_stack([want, csr[0][1:]]))

    def run(inputs, threads):
        theta, state, h = theta0.copy(), np.zeros((2, n_params)), hyper.copy()
        buf = optim.optim_buffers(sizes, m, np.float64, inputs if inputs is csr else None)
        args = (theta, np.array(sizes, np.int64), offs, activation_offsets(sizes))
        args += (HIDDEN_ACTIVATIONS["relu"], SOFTMAX)
        with runtime.num_threads(threads):
            loss, correct = optim.run_epoch(args, inputs, T, w, perm, m, buf, opt, h, state)
        return theta, state, loss, correct, h[optim.STEP]

    want = run(X, 1)
    assert want[4] == -(-n // m) - 1  # every step but the zero-weight one
    runs = [run(csr, threads) for threads in sorted({1, numba.config.NUMBA_NUM_THREADS})]
    for got in runs:
        np.testing.assert_allclose(got[0], want[0], rtol=0, atol=1e-10)
        np.testing.assert_allclose(got[1], want[1], rtol=0, atol=1e-10)
        assert got[2] == pytest.approx(want[2], rel=1e-10)
        assert got[3:] == want[3:]
        assert all(np.array_equal(a, b) for a, b in zip(got[:2], runs[0][:2]))
        assert got[2:] == runs[0][2:]
    assert columns.column_cuts(np.zeros(60, np.int64), 3).tolist() == [0, 60, 60, 60]


def test_network_optimizer_state_carries_over_calls():
    rng = np.random.default_rng(2)
    X = (rng.random((500, 64)) < 0.2) * rng.random((500, 64))
    y = rng.integers(0, 5, 500)
    for settings in (dict(momentum=0.9, nesterov=True), dict(optimizer="adam")):
        a, b = _network_and_twin([64, 20, 5], 3)
        a.SGD((X, y), 2, 25, 0.01, quiet=True, **settings)
        b.SGD((X, y), 1, 25, 0.01, quiet=True, **settings)
        b.SGD((X, y), 1, 25, 0.01, quiet=True, **settings)
        assert np.array_equal(a.parameters, b.parameters)
        c, _ = _network_and_twin([64, 20, 5], 3)  # the same two epochs, state dropped between
        c.SGD((X, y), 1, 25, 0.01, quiet=True, **settings)
        c.reset_optimizer()
        c.SGD((X, y), 1, 25, 0.01, quiet=True, **settings)
        assert not np.array_equal(a.parameters, c.parameters)


def test_network_optimizers_are_bit_identical_across_threads():
    import numba

    rng = np.random.default_rng(4)
    X = (rng.random((3000, 100)) < 0.2).astype(np.uint8) * 255
    y = rng.integers(0, 10, 3000)
    got = []
    for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
        net, _ = _network_and_twin([100, 40, 10], 0)
        net.SGD((X, y), 2, 32, 0.01, quiet=True, threads=threads, optimizer="adam")
        got.append(net.parameters.copy())
    assert all(np.array_equal(got[0], g) for g in got)


def test_network_optimizer_errors_name_the_problem():
    from fastnn import Network

    X, y = np.random.default_rng(0).random((20, 4)), np.arange(20) % 2
    net = Network([4, 3, 2], cost="log_loss")
    with pytest.raises(ValueError, match="quadratic cost"):
        Network([4, 3, 2]).SGD((X, y), 1, 5, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        net.SGD((X, y), 1, 5, 0.1, optimizer="rmsprop")
    with pytest.raises(ValueError, match="momentum must be below 1"):
        net.SGD((X, y), 1, 5, 0.1, momentum=1.0)
    with pytest.raises(ValueError, match="nesterov=True needs a momentum"):
        net.SGD((X, y), 1, 5, 0.1, nesterov=True)
    with pytest.raises(ValueError, match="Adam has betas"):
        net.SGD((X, y), 1, 5, 0.1, optimizer="adam", momentum=0.9)
    with pytest.raises(ValueError, match="betas must be two numbers"):
        net.SGD((X, y), 1, 5, 0.1, optimizer="adam", betas=(0.9, 1.0))


@pytest.mark.parametrize("sparse", [False, True])  # the dense path; the CSR path (.columns)
def test_divergence_restores_the_parameters_and_drops_the_optimizer_state(sparse):
    from fastnn import Network

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 10)), np.arange(200) % 3
    if sparse:
        X *= rng.random((200, 10)) < 0.2
    net = Network([10, 8, 3], cost="log_loss", seed=0)
    net.SGD((X, y), 1, 10, 0.01, quiet=True, momentum=0.9)
    before = net.parameters.copy()
    with pytest.raises(FloatingPointError, match="training diverged in epoch 0"):
        net.SGD((X, y), 1, 10, 1e30, quiet=True, momentum=0.9)
    assert np.array_equal(net.parameters, before) and net._optim_state is None


@pytest.mark.parametrize("sparse", [False, True])  # the dense path; the CSR path (.columns)
@pytest.mark.parametrize("opt", [optim.SGD, optim.ADAM])
def test_update_flushes_subnormal_state_and_restores_the_fp_mode(opt, sparse):
    # an input that is always zero, alpha 0: its weights' gradient is zero, so their
    # optimiser state only decays (momentum 0.9 or beta2 0.999 a step); from just above
    # the smallest normal float32 it would become subnormal (slow on x86: the Adam
    # moments of MNIST's border pixels made float32 epochs up to 1.75x slower)
    rng = np.random.default_rng(0)
    sizes = [6, 5, 3]
    X = rng.random((40, 6)).astype(np.float32)
    X[:, 0] = 0
    T = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    offs, n = layer_offsets(sizes)
    theta = (0.3 * rng.standard_normal(n)).astype(np.float32)
    tiny = np.finfo(np.float32).tiny
    state = np.zeros((2, n), np.float32)
    dead = np.arange(5) * 6  # W[:, 0]: the zero input's weights
    state[:, dead] = 1.005 * tiny
    hyper = np.zeros(optim.N_HYPER)
    hyper[optim.LR], hyper[optim.MOMENTUM] = 1e-3, 0.9
    hyper[optim.BETA1], hyper[optim.BETA2], hyper[optim.EPSILON] = 0.9, 0.999, 1e-8
    rows = np.arange(40, dtype=np.int64)
    relu = HIDDEN_ACTIVATIONS["relu"]
    inputs = csr_rows(X, np.float32) if sparse else X
    buf = optim.optim_buffers(sizes, 4, np.float32, inputs if sparse else None)
    args = (theta, np.array(sizes, np.int64), offs, activation_offsets(sizes), relu, SOFTMAX)
    optim.run_epoch(args, inputs, T, np.ones(40, np.float32), rows, 4, buf, opt, hyper, state)
    used = state[: 1 if opt == optim.SGD else 2]  # SGD keeps a velocity only
    assert np.all(used[:, dead] == 0)
    live = np.abs(used[used != 0])
    assert live.size and live.min() >= tiny
    # the calling thread computes with subnormals again (NumPy's multiply here)
    assert np.float32(2 * tiny) * np.float32(0.25) > 0


def test_parallel_update_leaves_no_worker_thread_flushing_subnormals():
    # the parallel update (networks of PARALLEL_UPDATE_MIN parameters or more) sets the
    # flush-to-zero mode on Numba's worker threads; later parallel code there must still
    # compute subnormals
    import numba
    from numba import njit, prange

    from fastnn import Network

    @njit(parallel=True)
    def tiny_products(out, x):
        for i in prange(out.shape[0]):
            out[i] = x * np.float32(0.25)

    rng = np.random.default_rng(0)
    X = (rng.random((400, 784)) < 0.2).astype(np.float32)
    y = rng.integers(0, 10, 400)
    net = Network([784, 100, 10], output="softmax", cost="log_loss", dtype="float32", seed=0)
    net.SGD((X, y), 1, 200, 1e-3, quiet=True, optimizer="adam")
    out = np.zeros(64 * numba.get_num_threads(), np.float32)
    tiny_products(out, np.float32(2 * np.finfo(np.float32).tiny))
    assert np.all(out > 0)
