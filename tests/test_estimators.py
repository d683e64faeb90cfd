"""fastnn.MLPClassifier and MLPRegressor: scikit-learn's checks, scikit-learn as the oracle."""

import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
import sklearn.neural_network as sknn  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.datasets import make_classification, make_regression  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from fastnn import MLPClassifier, MLPRegressor  # noqa: E402

_FLOAT32_WEIGHTS = (
    "float32 sums round differently over 15 weighted rows than over the same rows "
    "repeated (other chunks of the mini-batch); after 200 Adam epochs the predictions "
    "differ by a few float32 ulps (relative 1.2e-7 to 5.2e-7), beyond the check's "
    "rtol=1e-7.  In float64 it passes (test_scikit_learn_sample_weight_checks_pass_in_float64)."
)


def _expected_failures(est):
    return {
        "check_sample_weight_equivalence_on_dense_data": _FLOAT32_WEIGHTS,
        "check_sample_weight_equivalence_on_sparse_data": _FLOAT32_WEIGHTS,
    }


@parametrize_with_checks(
    [MLPClassifier(random_state=0), MLPRegressor(random_state=0)],
    expected_failed_checks=_expected_failures,
)
def test_scikit_learn_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_scikit_learn_sample_weight_checks_pass_in_float64(cls, sparse):
    """The two checks the float32 instances fail by a few ulps pass in float64 (the rest of
    scikit-learn's checks run on the float32 defaults above)."""
    from sklearn.utils import estimator_checks as ec

    check = (
        ec.check_sample_weight_equivalence_on_sparse_data
        if sparse
        else ec.check_sample_weight_equivalence_on_dense_data
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(cls.__name__, cls(random_state=0, dtype="float64"))


def _classification(n=400, classes=3, seed=0):
    return make_classification(
        n, 20, n_informative=10, n_classes=classes, random_state=seed, n_clusters_per_class=1
    )


def _max_diff(a, b):
    return max(
        np.abs(x - y).max() for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_)
    )


ORACLE = [
    dict(solver="adam"),
    dict(solver="adam", early_stopping=True, validation_fraction=0.2),
    dict(solver="sgd"),
    dict(solver="sgd", nesterovs_momentum=False, learning_rate="invscaling"),
    dict(solver="sgd", momentum=0.0, learning_rate="adaptive", tol=1e-2),
    dict(solver="lbfgs"),
    dict(solver="adam", activation="tanh", batch_size=37),
    dict(solver="sgd", activation="logistic", alpha=0.1),
    dict(solver="adam", activation="identity"),
]


@pytest.mark.parametrize("params", ORACLE)
@pytest.mark.parametrize("classes", [2, 3])
def test_classifier_fits_as_scikit_learn_does(params, classes):
    """Same random_state, float64: the same initial weights, split, sample order and steps."""
    X, y = _classification(classes=classes)
    sw = np.random.default_rng(0).uniform(0.5, 2, len(y))
    kw = dict(hidden_layer_sizes=(16, 8), max_iter=25, random_state=3, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = sknn.MLPClassifier(**kw).fit(X, y, sample_weight=sw)
        got = MLPClassifier(dtype="float64", **kw).fit(X, y, sample_weight=sw)
    assert got.n_iter_ == want.n_iter_ and got.out_activation_ == want.out_activation_
    assert _max_diff(got, want) < 1e-10
    assert got.loss_ == pytest.approx(want.loss_, rel=1e-9)
    if params["solver"] != "lbfgs":
        np.testing.assert_allclose(got.loss_curve_, want.loss_curve_, rtol=1e-9)
        assert got.t_ == want.t_
    if params.get("early_stopping"):
        np.testing.assert_allclose(got.validation_scores_, want.validation_scores_)
        assert got.best_validation_score_ == want.best_validation_score_
    np.testing.assert_allclose(got.predict_proba(X), want.predict_proba(X), atol=1e-10)
    assert np.array_equal(got.predict(X), want.predict(X))


@pytest.mark.parametrize(
    "params", [dict(solver="adam"), dict(solver="sgd"), dict(solver="lbfgs"), dict(loss="poisson")]
)
def test_regressor_fits_as_scikit_learn_does(params):
    X, y = make_regression(300, 8, n_targets=2, noise=1.0, random_state=0)
    if params.get("loss") == "poisson":
        y = np.abs(y[:, 0]) / 100
    else:
        y = y / 100
    kw = dict(hidden_layer_sizes=(12,), max_iter=30, random_state=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = sknn.MLPRegressor(**kw).fit(X, y)
        got = MLPRegressor(dtype="float64", **kw).fit(X, y)
    assert _max_diff(got, want) < 1e-10
    assert got.loss_ == pytest.approx(want.loss_, rel=1e-9)
    np.testing.assert_allclose(got.predict(X), want.predict(X), atol=1e-9)


def test_partial_fit_is_one_pass_as_in_scikit_learn():
    X, y = _classification()
    kw = dict(hidden_layer_sizes=(10,), random_state=0, solver="sgd")
    want, got = sknn.MLPClassifier(**kw), MLPClassifier(dtype="float64", **kw)
    for k in range(3):
        part = slice(100 * k, 100 * (k + 1))
        want.partial_fit(X[part], y[part], classes=[0, 1, 2])
        got.partial_fit(X[part], y[part], classes=[0, 1, 2] if k == 0 else None)
    assert got.n_iter_ == want.n_iter_ == 1  # as scikit-learn: the epochs of the last call
    assert got.t_ == want.t_ == 300
    assert _max_diff(got, want) < 1e-10
    with pytest.raises(ValueError, match="classes must be passed on the first call"):
        MLPClassifier().partial_fit(X, y)
    with pytest.raises(AttributeError, match="lbfgs is not stochastic"):
        MLPClassifier(solver="lbfgs").partial_fit(X, y, classes=[0, 1, 2])


@pytest.mark.parametrize(
    "y",
    [
        np.array([3, -1, 7, 3, 7, 7, -1, 0]),
        np.array(["b", "a", "c", "a", "b", "c", "c", "a"]),
        np.array([4.0, 2.0, -1.0, 4.0, 2.0, 2.0, 4.0, -1.0]),
        np.array(["x", "yy", "x", "zz", "yy", "zz", "x", "x"], dtype=object),
        np.array([1, 0, 1, 1, 0, 0, 1, 0]),  # binary: LabelBinarizer's one column
        np.array([[1, 0, 1], [0, 1, 1], [1, 1, 0], [0, 0, 1]] * 2),  # multilabel
    ],
)
def test_targets_are_label_binarizers(y):
    """The target matrix (one-hot rows set directly for multiclass labels) is what
    ``LabelBinarizer.transform`` gives, in the estimator's dtype."""
    from sklearn.preprocessing import LabelBinarizer

    est = MLPClassifier()
    est._label_binarizer = LabelBinarizer().fit(y)
    T = est._targets(y)
    assert T.dtype == np.float32 and T.flags.c_contiguous
    assert np.array_equal(T, est._label_binarizer.transform(y))


def test_float32_by_default_and_close_to_float64():
    X, y = _classification()
    kw = dict(hidden_layer_sizes=(16,), max_iter=20, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        f32 = MLPClassifier(**kw).fit(X, y)
        f64 = MLPClassifier(dtype="float64", **kw).fit(X, y)
    assert f32.coefs_[0].dtype == np.float32 and f32.predict_proba(X).dtype == np.float32
    assert _max_diff(f32, f64) < 1e-3
    assert (f32.predict(X) == f64.predict(X)).mean() > 0.99


def test_weights_do_not_depend_on_threads():
    X, y = _classification(2000)
    kw = dict(hidden_layer_sizes=(64,), max_iter=3, random_state=0, batch_size=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = MLPClassifier(threads=1, **kw).fit(X, y)
        every = MLPClassifier(**kw).fit(X, y)
    assert np.array_equal(one._theta, every._theta)


PLAIN_SGD = dict(solver="sgd", momentum=0.0, alpha=0.0)


def _mnist_like(n=600, n_in=64, seed=0):
    """Inputs about 80% zeros (the CSR drivers' territory), four classes."""
    rng = np.random.default_rng(seed)
    X = rng.random((n, n_in)) * (rng.random((n, n_in)) < 0.2)
    y = (X[:, : n_in // 2].sum(axis=1) > X[:, n_in // 2 :].sum(axis=1)) + 2 * (X[:, 0] > 0)
    return X, y.astype(int)


@pytest.mark.parametrize("schedule", ["constant", "invscaling", "adaptive"])
@pytest.mark.parametrize("data", ["dense", "mostly-zero"])
def test_plain_sgd_trains_in_network_drivers_as_scikit_learn_does(schedule, data):
    """Plain SGD (no momentum, no alpha, unweighted, multiclass) runs in Network.SGD's fast
    drivers, the same steps as scikit-learn's to 1e-10 in float64."""
    X, y = _classification(classes=4) if data == "dense" else _mnist_like()
    kw = dict(
        hidden_layer_sizes=(16, 8),
        max_iter=30,
        random_state=3,
        batch_size=10,
        learning_rate_init=0.1,
        learning_rate=schedule,
        tol=0.02,
        n_iter_no_change=2,
        **PLAIN_SGD,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = sknn.MLPClassifier(**kw).fit(X, y)
        got = MLPClassifier(dtype="float64", **kw).fit(X, y)
    assert got._driver == ("sparse" if data == "mostly-zero" else "samples")
    assert got.n_iter_ == want.n_iter_ and got.t_ == want.t_  # constant stops, adaptive decays
    assert got._hyper[0] == pytest.approx(want._optimizer.learning_rate, rel=1e-12)
    assert _max_diff(got, want) < 1e-10
    np.testing.assert_allclose(got.loss_curve_, want.loss_curve_, rtol=1e-9)


def test_plain_sgd_partial_fit_in_network_drivers_as_scikit_learn_does():
    X, y = _mnist_like()
    kw = dict(hidden_layer_sizes=(12,), random_state=0, batch_size=16, **PLAIN_SGD)
    want, got = sknn.MLPClassifier(**kw), MLPClassifier(dtype="float64", **kw)
    for k in range(3):
        part = slice(200 * k, 200 * (k + 1))
        want.partial_fit(X[part], y[part], classes=[0, 1, 2, 3])
        got.partial_fit(X[part], y[part], classes=[0, 1, 2, 3] if k == 0 else None)
        assert got._driver == "sparse"
    assert _max_diff(got, want) < 1e-10
    assert got.loss_ == pytest.approx(want.loss_, rel=1e-9)


@pytest.mark.parametrize(
    "change",
    [dict(momentum=0.5), dict(alpha=1e-4), dict(solver="adam"), "weighted", "binary"],
    ids=["momentum", "alpha", "adam", "weighted", "binary"],
)
def test_other_settings_train_in_the_optim_driver(change):
    X, y = _classification(classes=2 if change == "binary" else 3)
    params = dict(hidden_layer_sizes=(8,), max_iter=2, random_state=0, **PLAIN_SGD)
    if isinstance(change, dict):
        params.update(change)
    sw = np.linspace(0.5, 2, len(y)) if change == "weighted" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(**params).fit(X, y, sample_weight=sw)
    assert est._driver == "optim"


@pytest.mark.parametrize(
    "check",
    [
        "check_fit_idempotent",
        "check_estimators_pickle",
        "check_methods_sample_order_invariance",
        "check_sample_weight_equivalence_on_dense_data",
        "check_readonly_memmap_input",
        "check_n_features_in_after_fitting",
    ],
)
def test_scikit_learn_checks_on_the_plain_sgd_path(check):
    """A selection of scikit-learn's checks on an estimator that trains in Network's drivers
    (not all: ``check_classifiers_train`` fails for scikit-learn's own MLPClassifier with
    momentum=0 and alpha=0, an accuracy bound its default learning rate does not reach)."""
    from sklearn.utils import estimator_checks as ec

    est = MLPClassifier(random_state=0, dtype="float64", **PLAIN_SGD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        getattr(ec, check)("MLPClassifier", est)


def test_plain_sgd_weights_do_not_depend_on_threads():
    X, y = _mnist_like(2000, 784)
    kw = dict(hidden_layer_sizes=(16, 16), max_iter=2, random_state=0, batch_size=10, **PLAIN_SGD)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        one = MLPClassifier(threads=1, **kw).fit(X, y)
        two = MLPClassifier(threads=2, **kw).fit(X, y)
        default = MLPClassifier(**kw).fit(X, y)
    assert one._driver == "sparse"
    assert np.array_equal(one._theta, two._theta) and np.array_equal(one._theta, default._theta)


def test_clone_pipeline_grid_search_and_pickle_give_the_same_predictions():
    X, y = _classification()
    est = MLPClassifier(hidden_layer_sizes=(12,), max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted = clone(est).fit(X, y)
        again = clone(est).fit(X, y)
        pipe = make_pipeline(StandardScaler(with_mean=False, with_std=False), clone(est)).fit(X, y)
        grid = GridSearchCV(est, {"alpha": [1e-4, 1e-2]}, cv=2, n_jobs=2).fit(X, y)
        by_hand = clone(est).set_params(alpha=grid.best_params_["alpha"]).fit(X, y)
    want = fitted.predict_proba(X)
    assert np.array_equal(again.predict_proba(X), want)
    assert np.array_equal(pipe.predict_proba(X), want)
    assert np.array_equal(grid.predict_proba(X), by_hand.predict_proba(X))
    restored = pickle.loads(pickle.dumps(fitted))
    assert np.array_equal(restored.predict_proba(X), want)


def test_class_weight():
    X, y = _classification(300)
    y[y == 2] = 1  # unbalanced: about 1/3 zeros
    kw = dict(hidden_layer_sizes=(8,), max_iter=10, random_state=0, dtype="float64")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        balanced = MLPClassifier(class_weight="balanced", **kw).fit(X, y)
        sw = len(y) / (2 * np.bincount(y))[y]
        by_weight = MLPClassifier(**kw).fit(X, y, sample_weight=sw)
        by_dict = MLPClassifier(class_weight={0: 3.0}, **kw).fit(X, y)
        by_dict_sw = MLPClassifier(**kw).fit(X, y, sample_weight=np.where(y == 0, 3.0, 1.0))
    assert _max_diff(balanced, by_weight) < 1e-12
    assert _max_diff(by_dict, by_dict_sw) < 1e-12
    with pytest.raises(ValueError, match=r"class_weight has labels \[7\]"):
        MLPClassifier(class_weight={7: 2.0}).fit(X, y)
    with pytest.raises(ValueError, match="not supported by partial_fit"):
        MLPClassifier(class_weight="balanced").partial_fit(X, y, classes=[0, 1])


def test_validation_data_scored_every_epoch_and_used_for_early_stopping(capsys):
    X, y = _classification(600)
    Xv, yv = X[400:], y[400:]
    est = MLPClassifier(hidden_layer_sizes=(16,), max_iter=8, random_state=0, verbose=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X[:400], y[:400], X_val=Xv, y_val=yv)
    assert len(est.validation_scores_) == est.n_iter_ == 8
    assert est.validation_scores_[-1] == pytest.approx(est.score(Xv, yv))
    assert est.best_validation_score_ == max(est.validation_scores_)
    out = capsys.readouterr().out.splitlines()
    assert [line.split(",")[0] for line in out[::2]] == [f"Iteration {k}" for k in range(1, 9)]
    assert all(line.startswith("Validation score: ") for line in out[1::2])
    stop = MLPClassifier(
        hidden_layer_sizes=(16,), max_iter=500, random_state=0, early_stopping=True,
        n_iter_no_change=3, learning_rate_init=0.05,
    )  # fmt: skip
    stop.fit(X[:400], y[:400], X_val=Xv, y_val=yv)
    assert stop.n_iter_ < 500 and len(stop.validation_scores_) == stop.n_iter_
    assert stop.score(Xv, yv) == pytest.approx(stop.best_validation_score_)  # best weights kept
    with pytest.raises(ValueError, match="pass both X_val and y_val"):
        est.fit(X, y, X_val=Xv)


def test_network_round_trip():
    X, y = _classification()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier(hidden_layer_sizes=(12, 6), activation="tanh", max_iter=10).fit(X, y)
    net = est.to_network()
    assert net.sizes == [20, 12, 6, 3] and net.activation == "tanh" and net.output == "softmax"
    np.testing.assert_allclose(net.predict_proba(X), est.predict_proba(X), rtol=1e-6)
    back = MLPClassifier.from_network(net, classes=est.classes_)
    assert np.array_equal(back.predict(X), est.predict(X))
    assert np.array_equal(back.coefs_[1], est.coefs_[1])
    with pytest.raises(ValueError, match="classes has 2 labels; the network has 3"):
        MLPClassifier.from_network(net, classes=[0, 1])


def test_errors_name_the_problem():
    X, y = _classification()
    with pytest.raises(ValueError, match="dtype must be float32 or float64"):
        MLPClassifier(dtype=np.int32).fit(X, y)
    with pytest.raises(ValueError, match="sample_weight must not be negative"):
        MLPClassifier().fit(X, y, sample_weight=-np.ones(len(y)))
    with pytest.raises(ValueError, match="needs targets y >= 0"):
        MLPRegressor(loss="poisson").fit(X, y - 5.0)
    with pytest.raises(ValueError, match="threads must be an integer"):
        MLPClassifier(threads=10**6, max_iter=1).fit(X, y)


@pytest.mark.parametrize("solver", ["adam", "sgd", "lbfgs"])
@pytest.mark.parametrize("cls", [MLPClassifier, MLPRegressor])
def test_nan_and_infinity_in_X_are_named(cls, solver):
    """The counting pass checks X for NaN and infinities in place of scikit-learn's check,
    also for sparse matrices and with early stopping; a float64 value too large for float32
    counts as infinite."""
    import scipy.sparse

    X, y = _mnist_like(300, 40)
    for bad in (np.nan, np.inf, -np.inf, 1e300):
        Xb = X.copy()
        Xb[123, 7] = bad
        for inputs in (Xb, scipy.sparse.csr_matrix(Xb)):
            for early in (False, True):
                est = cls(solver=solver, max_iter=2, early_stopping=early)
                with pytest.raises(ValueError, match="Input X contains NaN, infinity or a value"):
                    est.fit(inputs, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        cls(solver=solver, max_iter=2).fit(X, y)  # finite: fits


def test_import_fastnn_does_not_import_scikit_learn():
    code = (
        "import sys, fastnn; print('sklearn' in sys.modules); fastnn.MLPClassifier; "
        "print('sklearn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


@pytest.mark.parametrize(
    "missing, code, extra",
    [
        ("sklearn", "import fastnn; fastnn.MLPClassifier", "fastnn[sklearn]"),
        ("distributed", "import fastnn.dask", "fastnn[dask]"),
    ],
)
def test_a_missing_extra_says_how_to_install_it(missing, code, extra):
    code = f"import sys; sys.modules[{missing!r}] = None; {code}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1].startswith("ImportError: fastnn")
    assert f"pip install '{extra}'" in out.stderr
    assert missing in out.stderr.strip().splitlines()[-1]  # the cause, in the message


def test_read_only_memmap_float32_inputs(tmp_path):
    X, y = _classification()
    path = tmp_path / "X.npy"
    np.save(path, X.astype(np.float32))
    Xm = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = MLPClassifier(max_iter=5, random_state=0).fit(Xm, y)
        b = MLPClassifier(max_iter=5, random_state=0).fit(np.array(Xm), y)
    assert np.array_equal(a.predict_proba(Xm), b.predict_proba(Xm))


@pytest.mark.parametrize("solver", ["adam", "sgd"])
@pytest.mark.parametrize(
    "n, hidden, batch",
    [(500, (24, 8), 32), (1000, (100,), 200)],  # one part of the inputs; eight parts
)
def test_mostly_zero_inputs_take_the_csr_path_and_fit_as_scikit_learn_does(
    solver, n, hidden, batch, monkeypatch
):
    """MNIST-like inputs (80% zeros) train through the CSR path (first layer transposed,
    split by input columns)."""
    rng = np.random.default_rng(0)
    X = rng.random((n, 60)) * (rng.random((n, 60)) < 0.2)
    y = (X[:, :30].sum(axis=1) > X[:, 30:].sum(axis=1)).astype(int) + 2 * (X[:, 0] > 0)
    seen = []
    real = MLPClassifier._epoch
    monkeypatch.setattr(
        MLPClassifier,
        "_epoch",
        lambda self, a, inputs, *k: seen.append(type(inputs)) or real(self, a, inputs, *k),
    )
    kw = dict(
        hidden_layer_sizes=hidden, max_iter=15, random_state=0, solver=solver, batch_size=batch
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        want = sknn.MLPClassifier(**kw).fit(X, y)
        got = MLPClassifier(dtype="float64", **kw).fit(X, y)
    assert seen and all(t is tuple for t in seen)
    assert _max_diff(got, want) < 1e-10
    np.testing.assert_allclose(got.loss_curve_, want.loss_curve_, rtol=1e-9)
