"""The machinery shared by :class:`fastnn.MLPClassifier` and :class:`fastnn.MLPRegressor`.

:class:`_BaseMLP` holds the parameter constraints, the initialisation (as
scikit-learn draws it), the epoch loop with its stopping rules and
schedules, ``lbfgs``, and the forward pass.  The estimators themselves, with
their constructors and target handling, are in :mod:`fastnn.estimators`.
"""

from __future__ import annotations

import warnings
from numbers import Integral, Real

import numpy as np
import scipy.optimize
from sklearn.base import BaseEstimator, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, Options, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import kernels, runtime
from .kernels import optim
from .kernels.inference import forward_rows
from .kernels.shuffle import shuffled
from .layout import (
    EXP,
    HIDDEN_ACTIVATIONS,
    IDENTITY,
    SIGMOID,
    SOFTMAX,
    activation_offsets,
    layer_offsets,
    unpack,
)

_HIDDEN = {"identity": "identity", "logistic": "sigmoid", "tanh": "tanh", "relu": "relu"}
_OUT = {"softmax": SOFTMAX, "logistic": SIGMOID, "identity": IDENTITY, "exp": EXP}
_PREDICT_BLOCK = 64
_LBFGS_SLICE = 1024  # rows per slice of the full-batch objective


class _BaseMLP(BaseEstimator):
    """What the classifier and the regressor share (not for direct use)."""

    _parameter_constraints: dict = {
        "hidden_layer_sizes": ["array-like", Interval(Integral, 1, None, closed="left")],
        "activation": [StrOptions({"identity", "logistic", "tanh", "relu"})],
        "solver": [StrOptions({"lbfgs", "sgd", "adam"})],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "learning_rate": [StrOptions({"constant", "invscaling", "adaptive"})],
        "learning_rate_init": [Interval(Real, 0, None, closed="neither")],
        "power_t": [Interval(Real, 0, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "shuffle": ["boolean"],
        "random_state": ["random_state"],
        "tol": [Interval(Real, 0, None, closed="left")],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "momentum": [Interval(Real, 0, 1, closed="both")],
        "nesterovs_momentum": ["boolean"],
        "early_stopping": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "beta_1": [Interval(Real, 0, 1, closed="left")],
        "beta_2": [Interval(Real, 0, 1, closed="left")],
        "epsilon": [Interval(Real, 0, None, closed="neither")],
        "n_iter_no_change": [
            Interval(Integral, 1, None, closed="left"),
            Options(Real, {np.inf}),
        ],
        "max_fun": [Interval(Integral, 1, None, closed="left")],
        "dtype": [StrOptions({"float32", "float64"}), type, np.dtype],
        "threads": [None, Interval(Integral, 1, None, closed="left")],
    }

    # -------------------------------------------------------------- parameters as views

    @property
    def coefs_(self):
        """Weight matrices, ``coefs_[i]`` of shape ``(n_in, n_out)`` as in scikit-learn
        (views into the parameter vector; assigning a list copies it in)."""
        check_is_fitted(self, "_theta")
        return [W.T for W in unpack(self._theta, self._sizes)[0]]

    @coefs_.setter
    def coefs_(self, value):
        check_is_fitted(self, "_theta")
        weights = unpack(self._theta, self._sizes)[0]
        if len(value) != len(weights):
            raise ValueError(f"coefs_ needs {len(weights)} matrices, got {len(value)}")
        for W, v in zip(weights, value):
            W[...] = np.asarray(v).T

    @property
    def intercepts_(self):
        """Bias vectors, ``intercepts_[i]`` of shape ``(n_out,)`` (views, as ``coefs_``)."""
        check_is_fitted(self, "_theta")
        return list(unpack(self._theta, self._sizes)[1])

    @intercepts_.setter
    def intercepts_(self, value):
        check_is_fitted(self, "_theta")
        biases = unpack(self._theta, self._sizes)[1]
        if len(value) != len(biases):
            raise ValueError(f"intercepts_ needs {len(biases)} vectors, got {len(value)}")
        for b, v in zip(biases, value):
            b[...] = np.asarray(v)

    # -------------------------------------------------------------- fitting

    def fit(self, X, y, sample_weight=None, *, X_val=None, y_val=None):
        """Fit the model to ``X, y``; ``X_val, y_val`` (optional) are scored after every
        epoch into ``validation_scores_`` (and stop it with ``early_stopping``)."""
        if (X_val is None) != (y_val is None):
            raise ValueError("pass both X_val and y_val, or neither")
        return self._fit(X, y, sample_weight, incremental=False, X_val=X_val, y_val=y_val)

    def _check_stochastic(self):
        if self.solver == "lbfgs":
            raise AttributeError(
                "partial_fit is only available for stochastic optimizers. lbfgs is not stochastic."
            )

    def _dtype(self):
        dtype = np.dtype(self.dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {dtype}")
        return dtype

    def _hidden_sizes(self):
        h = self.hidden_layer_sizes
        h = list(h) if hasattr(h, "__iter__") else [h]
        if np.any(np.array(h) <= 0):
            raise ValueError(f"hidden_layer_sizes must be > 0, got {h}.")
        return [int(v) for v in h]

    def _initialize(self, y, sizes):
        """Fitted attributes and initial weights, drawn as scikit-learn draws them."""
        dtype = self._dtype()
        self.n_iter_ = 0
        self.t_ = 0
        self.n_outputs_ = y.shape[1]
        self.n_layers_ = len(sizes)
        if not is_classifier(self):
            self.out_activation_ = "exp" if self.loss == "poisson" else "identity"
        elif self._label_binarizer.y_type_ == "multiclass":
            self.out_activation_ = "softmax"
        else:
            self.out_activation_ = "logistic"
        self._sizes = list(sizes)
        self._offs, n = layer_offsets(sizes)
        self._theta = kernels.line_aligned_empty(n, dtype)
        weights, biases = unpack(self._theta, sizes)
        factor = 2.0 if self.activation == "logistic" else 6.0
        for W, b, fan_in, fan_out in zip(weights, biases, sizes[:-1], sizes[1:]):
            bound = np.sqrt(factor / (fan_in + fan_out))
            W[...] = self._random_state.uniform(-bound, bound, (fan_in, fan_out)).T
            b[...] = self._random_state.uniform(-bound, bound, fan_out)
        self._best_theta = self._theta.copy()
        if self.solver != "lbfgs":
            self.loss_curve_ = []
            self._no_improvement_count = 0
            if self.early_stopping:
                self.validation_scores_ = []
                self.best_validation_score_ = -np.inf
                self.best_loss_ = None
            else:
                self.best_loss_ = np.inf
                self.validation_scores_ = None
                self.best_validation_score_ = None

    def _sample_weight(self, sample_weight, X, y):
        """Per-sample weights in the working dtype: ``sample_weight`` x class weights."""
        n = X.shape[0]
        if sample_weight is None:
            w = np.ones(n)
        else:
            w = check_array(
                sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight"
            )
            if w.ndim != 1 or w.shape[0] != n:
                raise ValueError(
                    f"sample_weight.shape == {w.shape}, expected ({n},) like the samples"
                )
            if (w < 0).any():
                raise ValueError("sample_weight must not be negative")
            if not w.any():
                raise ValueError("Sample weights must contain at least one non-zero number.")
        w = w * self._class_weights(y)
        return w.astype(self._dtype())

    def _class_weights(self, y):
        return 1.0

    def _fit(self, X, y, sample_weight=None, incremental=False, X_val=None, y_val=None):
        self._validate_params()
        hidden = self._hidden_sizes()
        first_pass = not hasattr(self, "_theta") or (not self.warm_start and not incremental)
        X, y = self._validate_input(X, y, incremental, reset=first_pass)
        indptr = self._count_rows(X)
        w = self._sample_weight(sample_weight, X, y)
        T = self._targets(y)
        sizes = [X.shape[1]] + hidden + [T.shape[1]]
        if not first_pass and sizes != self._sizes:
            raise ValueError(
                f"the data need layer sizes {sizes}, but the fitted network has {self._sizes}; "
                "fit it again without warm_start"
            )
        self._random_state = check_random_state(self.random_state)
        if first_pass:
            self._initialize(T, sizes)
        if X_val is not None:
            X_val = validate_data(
                self, X_val, accept_sparse=["csr", "csc"], reset=False, dtype=self._dtype()
            )
        if self.solver == "lbfgs":
            self._fit_lbfgs(X, T, w)
        else:
            self._fit_stochastic(X, T, w, incremental, X_val, y_val, indptr)
        if not np.isfinite(self._theta).all():
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain "
                "large values and need to be preprocessed."
            )
        return self

    def _count_rows(self, X):
        """The CSR row pointers of ``X`` (its non-zeros counted per row); in the same pass
        (shared among threads), the check for NaN and infinite values that scikit-learn's
        validation would make separately."""
        indptr = np.empty(X.shape[0] + 1, np.int64)
        with runtime.num_threads(self.threads):
            bad = kernels.count_rows(X, indptr, runtime.thread_budget())[1]
        if bad:
            raise ValueError(
                f"Input X contains NaN, infinity or a value too large for {X.dtype.name}."
            )
        return indptr

    def _kernel_args(self):
        return (
            self._theta,
            np.asarray(self._sizes, np.int64),
            self._offs,
            activation_offsets(self._sizes),
            HIDDEN_ACTIVATIONS[_HIDDEN[self.activation]],
            _OUT[self.out_activation_],
        )

    def _run(self, fn, *args):
        """Run a parallel kernel under the ``threads`` budget (see :mod:`fastnn.runtime`)."""
        runtime._check_not_forked()
        with runtime.num_threads(self.threads), runtime.parallel_section():
            return fn(*args)

    def _fit_lbfgs(self, X, T, w):
        theta = self._theta
        buf = optim.optim_buffers(self._sizes, min(_LBFGS_SLICE, X.shape[0]), theta.dtype)
        rows = np.arange(X.shape[0], dtype=np.int64)
        grad = np.empty(theta.shape[0])
        args = self._kernel_args()[1:]

        def loss_grad(x):
            theta[:] = x
            loss = self._run(optim.objective, theta, *args, X, T, w, rows, buf, self.alpha, grad)
            return loss, grad

        res = scipy.optimize.minimize(
            loss_grad,
            theta.astype(np.float64),
            method="L-BFGS-B",
            jac=True,
            options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol},
        )
        if res.status != 0:
            warnings.warn(
                f"lbfgs failed to converge after {res.nit} iteration(s) (status={res.status}): "
                f"{res.message}. Increase max_iter or scale the data.",
                ConvergenceWarning,
                stacklevel=4,
            )
        self.n_iter_ = min(int(res.nit), self.max_iter)
        self.loss_ = float(res.fun)
        theta[:] = res.x

    def _new_optimizer(self):
        h = np.zeros(optim.N_HYPER)
        h[optim.LR] = self.learning_rate_init
        h[optim.ALPHA] = self.alpha
        h[optim.MOMENTUM] = self.momentum if self.solver == "sgd" else 0.0
        h[optim.NESTEROV] = self.nesterovs_momentum
        h[optim.BETA1], h[optim.BETA2], h[optim.EPSILON] = self.beta_1, self.beta_2, self.epsilon
        self._hyper = h
        self._state = np.zeros((2, self._theta.shape[0]), self._theta.dtype)

    def _fit_stochastic(self, X, T, w, incremental, X_val, y_val, indptr):
        if not incremental or not hasattr(self, "_hyper"):
            self._new_optimizer()
        self._hyper[optim.ALPHA] = self.alpha
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        early_stopping = self.early_stopping
        w_val = None
        if early_stopping and X_val is None:
            stratify = T if is_classifier(self) and self.n_outputs_ == 1 else None
            X, X_val, T, T_val, w, w_val = train_test_split(
                X,
                T,
                w,
                random_state=self._random_state,
                test_size=self.validation_fraction,
                stratify=stratify,
            )
            if X_val.shape[0] < 2:
                raise ValueError(
                    "The validation set is too small. Increase 'validation_fraction' "
                    "or the size of your dataset."
                )
            y_val = self._decode(T_val)
            w_val = None if np.all(w_val == 1) else w_val
            X = np.ascontiguousarray(X)
            indptr = None  # the rows of X have changed: counted again
        if X_val is not None and self.validation_scores_ is None:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
        n = X.shape[0]
        if self.batch_size == "auto":
            m = min(200, n)
        else:
            if self.batch_size > n:
                warnings.warn(
                    "Got `batch_size` less than 1 or larger than sample size. It is going to "
                    "be clipped",
                    stacklevel=4,
                )
            m = int(np.clip(self.batch_size, 1, n))
        epoch = self._plain_sgd_epoch(X, T, w, m, indptr) or self._optim_epoch(X, T, w, m, indptr)
        sample_idx = np.arange(n, dtype=np.int64)
        self.n_iter_ = 0  # as scikit-learn: the epochs of this call
        try:
            for _ in range(self.max_iter):
                if self.shuffle:
                    sample_idx = shuffled(sample_idx, self._random_state)  # as scikit-learn
                total = epoch(sample_idx)
                self.n_iter_ += 1
                self.loss_ = total / n
                self.t_ += n
                self.loss_curve_.append(self.loss_)
                if self.verbose:
                    print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
                self._update_no_improvement_count(early_stopping, X_val, y_val, w_val)
                if self.solver == "sgd" and self.learning_rate == "invscaling":
                    self._hyper[optim.LR] = self.learning_rate_init / (self.t_ + 1) ** self.power_t
                if self._no_improvement_count > self.n_iter_no_change:
                    what = "Validation score" if early_stopping else "Training loss"
                    msg = (
                        f"{what} did not improve more than tol={self.tol:f} for "
                        f"{self.n_iter_no_change} consecutive epochs."
                    )
                    if self._stop(msg):
                        break
                    self._no_improvement_count = 0
                if incremental:
                    break
                if self.n_iter_ == self.max_iter:
                    warnings.warn(
                        f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached "
                        "and the optimization hasn't converged yet.",
                        ConvergenceWarning,
                        stacklevel=4,
                    )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=4)
        if early_stopping:
            self._theta[:] = self._best_theta

    def _sparse_inputs(self, X, indptr=None):
        """``X`` in CSR form when it is sparse enough for the CSR path (at most
        ``kernels.SPARSE_MAX_DENSITY`` non-zero, a hidden layer), else ``X``.  ``indptr``: the
        row pointers of ``X`` if counted (:meth:`_count_rows`)."""
        if len(self._sizes) < 3:
            return X
        if indptr is None:
            indptr = self._count_rows(X)
        if indptr[-1] > kernels.SPARSE_MAX_DENSITY * X.size:
            return X
        with runtime.num_threads(self.threads):
            return kernels.csr_rows(X, self._dtype(), indptr, threads=runtime.thread_budget())

    def _optim_epoch(self, X, T, w, m, indptr=None):
        """The epoch function (sample order -> sum of step losses x step sizes) of the
        ``"optim"`` driver (:func:`fastnn.kernels.optim.run_epoch`)."""
        inputs = self._sparse_inputs(X, indptr)
        csr = inputs if isinstance(inputs, tuple) else None
        buf = optim.optim_buffers(self._sizes, m, self._theta.dtype, csr)
        args = self._kernel_args()
        opt = optim.ADAM if self.solver == "adam" else optim.SGD
        self._driver = "optim"

        def epoch(perm):
            return self._epoch(args, inputs, T, w, perm, m, buf, opt)

        return epoch

    def _epoch(self, args, inputs, T, w, perm, m, buf, opt):
        """One compiled epoch of the ``"optim"`` driver; returns the sum of step losses x step
        sizes."""
        return self._run(
            optim.run_epoch, args, inputs, T, w, perm, m, buf, opt, self._hyper, self._state
        )[0]

    def _plain_sgd_epoch(self, X, T, w, m, indptr=None):
        """The epoch function of ``Network``'s drivers (the fast path of ``Network.SGD``), or
        None when they would not compute the same steps.

        They do for plain SGD (an optimiser made without momentum, ``alpha=0``), unweighted
        samples and a softmax output with log-loss (multiclass).  The steps are scikit-learn's;
        the reported loss takes ``log(max(p, 1e-300))`` where scikit-learn clips ``p`` to
        ``[eps, 1-eps]``, which differs only for outputs within ``eps`` of 0 or 1.
        """
        h = self._hyper
        if not (
            self.solver == "sgd"
            and h[optim.MOMENTUM] == 0
            and h[optim.ALPHA] == 0
            and self.out_activation_ == "softmax"
            and (w == 1).all()
        ):
            return None
        from .network import Network
        from .prepared import PreparedData

        net = Network._over(self._theta, self._sizes, _HIDDEN[self.activation])
        prep = PreparedData(net, (X, T.argmax(axis=1)), validated=True, indptr=indptr)
        with runtime.num_threads(self.threads):  # for the CSR form too
            run_epoch = net._trainer(prep, m, h[optim.LR])[2]
        self._driver = run_epoch.driver

        def epoch(perm):
            runtime._check_not_forked()
            with runtime.num_threads(self.threads):
                return run_epoch(perm, tune=self.threads is None, rate=h[optim.LR])[0]

        return epoch

    def _stop(self, msg):
        """scikit-learn's ``trigger_stopping``: stop, or (adaptive SGD) divide the rate by 5."""
        lr = self._hyper[optim.LR]
        if self.solver != "sgd" or self.learning_rate != "adaptive":
            if self.verbose:
                print(msg + " Stopping.")
            return True
        if lr <= 1e-6:
            if self.verbose:
                print(msg + " Learning rate too small. Stopping.")
            return True
        self._hyper[optim.LR] = lr / 5.0
        if self.verbose:
            print(msg + f" Setting learning rate to {self._hyper[optim.LR]:f}")
        return False

    def _update_no_improvement_count(self, early_stopping, X_val, y_val, w_val):
        if X_val is not None:
            score = self._score(X_val, y_val, sample_weight=w_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            if early_stopping:
                if score < self.best_validation_score_ + self.tol:
                    self._no_improvement_count += 1
                else:
                    self._no_improvement_count = 0
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_theta = self._theta.copy()
            if early_stopping:
                return
        if self.loss_curve_[-1] > self.best_loss_ - self.tol:
            self._no_improvement_count += 1
        else:
            self._no_improvement_count = 0
        if self.loss_curve_[-1] < self.best_loss_:
            self.best_loss_ = self.loss_curve_[-1]

    # -------------------------------------------------------------- prediction

    def _forward(self, X, check_input=True):
        if check_input:
            X = validate_data(
                self,
                X,
                accept_sparse=["csr", "csc"],
                reset=False,
                dtype=self._dtype(),
            )
        X = _dense(X, self._dtype())
        A = np.empty((X.shape[0], sum(self._sizes[1:])), self._dtype())
        bad = self._run(forward_rows, *self._kernel_args(), X, A, _PREDICT_BLOCK)
        if bad:
            raise ValueError(
                f"the forward pass overflowed in {self._dtype().name}: X has values too large "
                "for this network's weights (a layer's values became infinite or NaN)"
            )
        return A[:, -self._sizes[-1] :]

    def _score_with_function(self, X, y, sample_weight, score_function):
        y_pred = self._predict(X, check_input=False)
        return score_function(y, y_pred, sample_weight=sample_weight)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


def _dense(X, dtype):
    """``X`` (validated) as a C-contiguous array of ``dtype`` (sparse input is densified)."""
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=dtype)
