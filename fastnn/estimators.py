"""scikit-learn estimators: :class:`MLPClassifier` and :class:`MLPRegressor`.

Drop-in replacements for ``sklearn.neural_network.MLPClassifier`` and
``MLPRegressor`` (scikit-learn 1.9): the same constructor parameters, names,
defaults and meanings, the same fitted attributes, the same output layers and
losses, the same initial weights, data split and sample order for a given
``random_state``.  Each epoch runs in one compiled call
(:mod:`fastnn.kernels.optim`: momentum, Nesterov, Adam, the L2 term and
sample weights inside the kernel); ``lbfgs`` runs SciPy's L-BFGS-B over the
flat parameter vector with a compiled full-batch loss and gradient.

Beyond scikit-learn: ``class_weight`` (classifier), ``dtype`` (float32 by
default; float64 reproduces scikit-learn to rounding), ``threads``,
``X_val``/``y_val`` in ``fit`` (a validation score per epoch), and
:meth:`MLPClassifier.to_network` / :meth:`MLPClassifier.from_network`.

Needs scikit-learn (``pip install fastnn[sklearn]``); ``import fastnn``
alone does not import it.
"""

from __future__ import annotations

import numpy as np

try:
    from sklearn.base import ClassifierMixin, RegressorMixin
    from sklearn.metrics import accuracy_score, r2_score
    from sklearn.preprocessing import LabelBinarizer
    from sklearn.utils import check_random_state, column_or_1d
    from sklearn.utils._param_validation import StrOptions
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.multiclass import type_of_target, unique_labels
    from sklearn.utils.validation import check_is_fitted, validate_data
except ImportError as e:  # exercised by a subprocess test
    raise ImportError(
        "fastnn's estimators (MLPClassifier, MLPRegressor) need scikit-learn >= 1.6: "
        f"pip install 'fastnn[sklearn]' ({e})"
    ) from e

from ._mlp import _HIDDEN, _BaseMLP, _dense

_SHARED_DOC = """
    Parameters and fitted attributes are scikit-learn's (see its documentation);
    fastnn adds ``dtype`` (``"float32"`` or ``"float64"``) and ``threads`` (at
    most this many Numba threads; ``None``: all).  ``fit`` also takes
    ``X_val, y_val``: scored after every epoch into ``validation_scores_``
    (and used for early stopping instead of a split when ``early_stopping``).
"""


class MLPClassifier(ClassifierMixin, _BaseMLP):
    __doc__ = (
        "Multi-layer perceptron classifier, trained by fastnn's kernels.\n"
        + _SHARED_DOC
        + """
    ``class_weight``: ``None``, ``"balanced"`` or ``{class: weight}``; multiplies
    the sample weights (not with multilabel targets).  :meth:`to_network` and
    :meth:`from_network` convert to and from :class:`fastnn.Network`.
    """
    )

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "class_weight": [None, StrOptions({"balanced"}), dict],
    }

    def __init__(
        self,
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        class_weight=None,
        dtype="float32",
        threads=None,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.class_weight = class_weight
        self.dtype = dtype
        self.threads = threads

    def partial_fit(self, X, y, sample_weight=None, classes=None):
        """One pass over ``X, y``; ``classes`` (all labels) is required on the first call."""
        self._check_stochastic()
        if self.class_weight == "balanced":
            raise ValueError(
                "class_weight='balanced' needs all the labels at once; it is not supported "
                "by partial_fit. Pass a dict of class weights instead."
            )
        first = not hasattr(self, "classes_")
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            self._label_binarizer = LabelBinarizer()
            if type_of_target(y).startswith("multilabel"):
                self._label_binarizer.fit(y)
            else:
                self._label_binarizer.fit(classes)
            self.classes_ = self._label_binarizer.classes_
        elif classes is not None and not np.array_equal(
            np.unique(classes), np.asarray(self.classes_)
        ):
            raise ValueError(
                f"`classes={classes!r}` is not the same as on the first call to partial_fit, "
                f"which was {self.classes_!r}"
            )
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            dtype=self._dtype(),
            ensure_all_finite=False,  # checked by the pass that counts the non-zeros (_fit)
            reset=reset,
        )
        X = _dense(X, self._dtype())
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if (not hasattr(self, "classes_")) or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer()
            self._label_binarizer.fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start:
                if set(classes) != set(self.classes_):
                    raise ValueError(
                        "warm_start can only be used where `y` has the same classes as in "
                        f"the previous call to fit. Previously got {self.classes_}, `y` has "
                        f"{classes}"
                    )
            elif len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(
                    f"`y` has classes not in `self.classes_`. `self.classes_` has "
                    f"{self.classes_}. 'y' has {classes}."
                )
        self.classes_ = self._label_binarizer.classes_
        return X, y

    def _targets(self, y):
        """The target matrix: ``LabelBinarizer.transform(y)`` in the estimator's dtype.

        Multiclass labels, all among ``classes_`` (the fit's validation checked
        them), are one-hot rows set directly: ``transform`` builds a sparse
        matrix first and takes 5 ms for MNIST's 60,000 labels, the direct way
        1.5 ms (plus the copy to float32 it no longer needs)."""
        lb = self._label_binarizer
        if lb.y_type_ != "multiclass":
            return np.ascontiguousarray(lb.transform(y), dtype=self._dtype())
        T = np.zeros((len(y), len(lb.classes_)), self._dtype())
        T[np.arange(len(y)), np.searchsorted(lb.classes_, y)] = 1
        return T

    def _decode(self, T):
        return self._label_binarizer.inverse_transform(T)

    def _class_weights(self, y):
        if self.class_weight is None:
            return 1.0
        if self._label_binarizer.y_type_.startswith("multilabel"):
            raise ValueError("class_weight is not supported for multilabel targets")
        classes = self.classes_
        if self.class_weight == "balanced":
            cw = compute_class_weight("balanced", classes=classes, y=y)
        else:
            unknown = set(self.class_weight) - set(classes.tolist())
            if unknown:
                raise ValueError(
                    f"class_weight has labels {sorted(unknown)} that are not in the classes "
                    f"{classes.tolist()}"
                )
            cw = np.array([float(self.class_weight.get(c, 1.0)) for c in classes.tolist()])
        return cw[np.searchsorted(classes, y)]

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input)
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
        return self._label_binarizer.inverse_transform(y_pred)

    def predict(self, X):
        """Predicted classes of the rows of ``X``."""
        check_is_fitted(self)
        return self._predict(X)

    def predict_proba(self, X):
        """Class probabilities of the rows of ``X``, columns in the order of ``classes_``."""
        check_is_fitted(self)
        y_pred = self._forward(X).copy()
        if self.n_outputs_ == 1:
            y_pred = y_pred.ravel()
            return np.vstack([1 - y_pred, y_pred]).T
        return y_pred

    def predict_log_proba(self, X):
        """``log(predict_proba(X))``."""
        p = self.predict_proba(X)
        return np.log(p, out=p)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, accuracy_score)

    def to_network(self):
        """A :class:`fastnn.Network` with a copy of these weights (softmax + log-loss for
        multiclass, sigmoid + cross-entropy for binary and multilabel outputs)."""
        from .network import Network

        check_is_fitted(self)
        softmax = self.out_activation_ == "softmax"
        net = Network(
            self._sizes,
            activation=_HIDDEN[self.activation],
            output="softmax" if softmax else "sigmoid",
            cost="log_loss" if softmax else "cross_entropy",
            dtype=self._dtype(),
        )
        net.parameters = self._theta
        return net

    @classmethod
    def from_network(cls, net, classes=None, **params):
        """A fitted classifier with a copy of ``net``'s weights.

        ``net`` has a softmax output (multiclass) or one sigmoid output
        (binary); ``classes`` are the labels of its outputs (default
        ``0..n-1``).  ``params`` are constructor parameters (for later
        ``partial_fit`` or ``warm_start`` fits).
        """
        sizes = net.sizes
        binary = net.output == "sigmoid" and sizes[-1] == 1
        if not (net.output == "softmax" or binary):
            raise ValueError(
                "from_network takes a network with a softmax output or a single sigmoid "
                f"output; this one has {sizes[-1]} {net.output} outputs"
            )
        if len(sizes) < 3:
            raise ValueError("from_network needs a network with at least one hidden layer")
        hidden = {v: k for k, v in _HIDDEN.items()}[net.activation]
        est = cls(
            hidden_layer_sizes=tuple(sizes[1:-1]),
            activation=hidden,
            dtype=net.dtype.name,
            **params,
        )
        n_classes = 2 if binary else sizes[-1]
        classes = np.arange(n_classes) if classes is None else np.asarray(classes)
        if len(classes) != n_classes:
            raise ValueError(f"classes has {len(classes)} labels; the network has {n_classes}")
        est._label_binarizer = LabelBinarizer().fit(classes)
        est.classes_ = est._label_binarizer.classes_
        est._random_state = check_random_state(est.random_state)
        est._initialize(np.zeros((1, sizes[-1])), list(sizes))
        est._theta[:] = net.parameters
        est.n_features_in_ = sizes[0]
        return est

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    __doc__ = (
        "Multi-layer perceptron regressor, trained by fastnn's kernels.\n"
        + _SHARED_DOC
        + """
    ``loss``: ``"squared_error"`` (identity output) or ``"poisson"`` (exp
    output, half the Poisson deviance; targets must not be negative).
    """
    )

    _parameter_constraints: dict = {
        **_BaseMLP._parameter_constraints,
        "loss": [StrOptions({"squared_error", "poisson"})],
    }

    def __init__(
        self,
        loss="squared_error",
        hidden_layer_sizes=(100,),
        activation="relu",
        *,
        solver="adam",
        alpha=0.0001,
        batch_size="auto",
        learning_rate="constant",
        learning_rate_init=0.001,
        power_t=0.5,
        max_iter=200,
        shuffle=True,
        random_state=None,
        tol=1e-4,
        verbose=False,
        warm_start=False,
        momentum=0.9,
        nesterovs_momentum=True,
        early_stopping=False,
        validation_fraction=0.1,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        n_iter_no_change=10,
        max_fun=15000,
        dtype="float32",
        threads=None,
    ):
        self.loss = loss
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.learning_rate_init = learning_rate_init
        self.power_t = power_t
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.max_fun = max_fun
        self.dtype = dtype
        self.threads = threads

    def partial_fit(self, X, y, sample_weight=None):
        """One pass over ``X, y``."""
        self._check_stochastic()
        return self._fit(X, y, sample_weight, incremental=True)

    def _validate_input(self, X, y, incremental, reset):
        X, y = validate_data(
            self,
            X,
            y,
            accept_sparse=["csr", "csc"],
            multi_output=True,
            y_numeric=True,
            dtype=self._dtype(),
            ensure_all_finite=False,  # checked by the pass that counts the non-zeros (_fit)
            reset=reset,
        )
        X = _dense(X, self._dtype())
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("loss='poisson' needs targets y >= 0; y has negative values")
        return X, y

    def _targets(self, y):
        T = np.asarray(y, dtype=self._dtype())
        return np.ascontiguousarray(T.reshape(-1, 1) if T.ndim == 1 else T)

    def _decode(self, T):
        return T.ravel() if T.shape[1] == 1 else T

    def _predict(self, X, check_input=True):
        y_pred = self._forward(X, check_input).copy()
        return y_pred.ravel() if y_pred.shape[1] == 1 else y_pred

    def predict(self, X):
        """Predicted targets of the rows of ``X``."""
        check_is_fitted(self)
        return self._predict(X)

    def _score(self, X, y, sample_weight=None):
        return self._score_with_function(X, y, sample_weight, r2_score)
