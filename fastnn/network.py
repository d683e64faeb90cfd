"""The ``Network`` class: a thin Python API over the kernels.

In the spirit of Michael Nielsen's ``network.py``::

    net = fastnn.Network([784, 30, 10], seed=0)
    history = net.SGD(training_data, epochs=10, mini_batch_size=10, eta=3.0,
                      test_data=test_data)

Data can be given as ``(X, y)`` arrays (``X`` of shape ``(n, sizes[0])``, any
real dtype, ``uint8`` pixels are scaled to [0, 1]; ``y`` integer labels) or as
Nielsen-style sequences of ``(x, y)`` pairs (``x`` a column vector, ``y`` a
label or a one-hot column vector).  Inputs are validated and converted once;
the kernels never see data they cannot handle.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any, Union

import numba
import numpy as np
import numpy.typing as npt

from . import kernels, runtime
from ._checks import _check_choice, _layer_sizes, _positive_int, _positive_real
from ._inputs import InputsMixin
from .kernels import optim
from .layout import (
    COSTS,
    HIDDEN_ACTIVATIONS,
    OUTPUT_ACTIVATIONS,
    activation_offsets,
    layer_norms,
    layer_offsets,
    unpack,
)
from .persistence import FORMAT_NAME, FORMAT_VERSION, read_model, write_model
from .prepared import PreparedData

#: Training or test data: ``(X, y)`` arrays, or a sequence of Nielsen-style ``(x, y)`` pairs.
Data = Union[tuple[npt.ArrayLike, npt.ArrayLike], Sequence[tuple[npt.ArrayLike, npt.ArrayLike]]]
History = dict[str, list[Any]]

_INITS = ("standard", "scaled")
_DTYPES = (np.float32, np.float64)
_PREDICT_BLOCK = 64


def _optimizer_settings(optimizer, momentum, nesterov, betas, eps):
    """Validated optimiser settings as a tuple, or None for plain SGD (the fast drivers)."""
    optimizer = _check_choice("optimizer", optimizer, ("sgd", "adam"))
    momentum = _positive_real("momentum", momentum, allow_zero=True)
    if momentum >= 1:
        raise ValueError(f"momentum must be below 1, got {momentum!r}")
    if not isinstance(nesterov, (bool, np.bool_)):
        raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
    if nesterov and momentum == 0:
        raise ValueError("nesterov=True needs a momentum above 0")
    if optimizer == "adam" and momentum:
        raise ValueError("momentum is for optimizer='sgd'; Adam has betas")
    try:
        b1, b2 = (float(b) for b in betas)
    except (TypeError, ValueError):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}") from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    eps = _positive_real("eps", eps)
    if optimizer == "sgd" and momentum == 0:
        return None
    return optimizer, momentum, bool(nesterov), (b1, b2), eps


class Network(InputsMixin):
    """A fully-connected feed-forward network trained by mini-batch SGD.

    Parameters
    ----------
    sizes : sequence of int
        Neurons per layer, input first: ``[784, 16, 16, 10]``.  At least two.
    activation : {'sigmoid', 'relu', 'tanh'}
        Activation of the hidden layers.
    output : {'sigmoid', 'softmax'} or None
        Activation of the output layer; None picks 'softmax' for
        ``cost='log_loss'`` and 'sigmoid' otherwise.
    cost : {'quadratic', 'cross_entropy', 'log_loss'}
        Per-example cost: ``1/2 ||a - y||^2``; ``-sum y ln a + (1-y) ln(1-a)``
        (sigmoid output only); ``-ln a_label`` (softmax output only).
    weight_decay : float
        L2 penalty ``weight_decay/2 * sum(W**2)`` added to the average cost
        (biases are not penalised).  Nielsen's ``lmbda`` on a training set of
        ``n`` samples is ``weight_decay = lmbda / n``.
    init : {'scaled', 'standard'}
        Weights drawn from N(0, 1/n_in) (default) or N(0, 1) (the classic of
        Nielsen's network.py, which trains deep sigmoid nets worse); biases from
        N(0, 1) in both cases.
    dtype : numpy float32 (default) or float64
        Working precision of parameters, data and kernels.
    seed : int or None
        Seeds initialisation and the shuffling of every later ``SGD`` call.

    Attributes
    ----------
    parameters : ndarray
        All weights and biases, one contiguous vector.
    weights, biases : lists of ndarray
        Per-layer views into ``parameters``; ``weights[l]`` has shape
        ``(sizes[l+1], sizes[l])``.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: str = "sigmoid",
        output: str | None = None,
        cost: str = "quadratic",
        weight_decay: float = 0.0,
        init: str = "scaled",
        dtype: npt.DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        sizes = _layer_sizes(sizes)
        self._size_list = sizes
        self.activation = _check_choice("activation", activation, HIDDEN_ACTIVATIONS)
        if output is None:
            output = "softmax" if cost == "log_loss" else "sigmoid"
        self.output = _check_choice("output", output, OUTPUT_ACTIVATIONS)
        self.cost_name = _check_choice("cost", cost, COSTS)
        if cost == "log_loss" and output != "softmax":
            raise ValueError("cost='log_loss' needs output='softmax'")
        if cost == "cross_entropy" and output != "sigmoid":
            raise ValueError(
                "cost='cross_entropy' needs output='sigmoid' (use cost='log_loss' with softmax)"
            )
        self.weight_decay = _positive_real("weight_decay", weight_decay, allow_zero=True)
        self.init = _check_choice("init", init, _INITS)
        if dtype is None or np.dtype(dtype) not in [np.dtype(d) for d in _DTYPES]:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
        self.dtype = np.dtype(dtype)
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._optim_state = None  # (settings, hyper-parameters, state) of momentum/Adam

        self._offs, n_params = layer_offsets(sizes)
        self._sizes = np.array(sizes, dtype=np.int64)
        self._aoff = activation_offsets(sizes)
        self._n_act = int(sum(sizes[1:]))
        self._one_shape = (sizes[0],)
        self._codes = (
            HIDDEN_ACTIVATIONS[self.activation],
            OUTPUT_ACTIVATIONS[self.output],
            COSTS[self.cost_name],
        )
        self._theta = kernels.line_aligned_empty(n_params, self.dtype)
        self.weights, self.biases = unpack(self._theta, sizes)
        for W, b in zip(self.weights, self.biases):
            scale = 1.0 if init == "standard" else 1.0 / np.sqrt(W.shape[1])
            W[...] = self._rng.standard_normal(W.shape) * scale
            b[...] = self._rng.standard_normal(b.shape)

    @classmethod
    def _over(cls, theta: np.ndarray, sizes: Sequence[int], activation: str) -> Network:
        """A softmax + log-loss network whose parameter vector is ``theta`` itself (no copy):
        training it trains the owner of ``theta`` (the estimators' plain SGD runs through the
        fast drivers this way)."""
        net = cls(sizes, activation, cost="log_loss", dtype=theta.dtype, seed=0)
        net._theta = theta
        net.weights, net.biases = unpack(theta, net._size_list)
        return net

    # ------------------------------------------------------------------ helpers
    @property
    def sizes(self) -> list[int]:
        """Neurons per layer, input first (a copy: the layout is fixed at construction)."""
        return list(self._size_list)

    @property
    def parameters(self) -> np.ndarray:
        """All weights and biases, one contiguous vector (``weights``/``biases`` view it)."""
        return self._theta

    @parameters.setter
    def parameters(self, value: npt.ArrayLike) -> None:
        """Copy ``value`` into the parameter vector, which stays the same array.

        It must be a vector of exactly ``n_params`` finite real numbers; other
        float dtypes are converted to the working dtype.  The kernels index
        this vector without bounds checks, so nothing else is accepted.
        """
        v = np.asarray(value)
        if v.dtype == bool or v.dtype.kind not in "iuf":
            raise TypeError(f"parameters must hold real numbers, got dtype {v.dtype}")
        if v.shape != self._theta.shape:
            raise ValueError(
                f"parameters must be a vector of {self._theta.size} values (the network's "
                f"n_params), got shape {v.shape}"
            )
        with np.errstate(over="ignore"):
            v = v.astype(self.dtype)
        if not np.isfinite(v).all():
            raise ValueError(f"parameters must be finite {self.dtype.name} values")
        self._theta[...] = v

    @property
    def num_layers(self) -> int:
        return len(self._size_list)

    @property
    def n_params(self) -> int:
        return self._theta.size

    def __repr__(self):
        return (
            f"Network({self._size_list}, activation={self.activation!r}, output={self.output!r}, "
            f"cost={self.cost_name!r}, weight_decay={self.weight_decay}, "
            f"init={self.init!r}, dtype={self.dtype.name})"
        )

    def views(self, vector: npt.ArrayLike) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-layer ``(weights, biases)`` views into a flat vector laid out like ``parameters``."""
        vector = np.asarray(vector)
        if vector.shape != self._theta.shape:
            raise ValueError(f"vector must have shape {self._theta.shape}, got {vector.shape}")
        return unpack(vector, self._size_list)

    def prepare(self, training_data: Data) -> PreparedData:
        """Validate and convert ``training_data`` once, for many ``SGD`` calls.

        ``SGD`` validates its data, checks it for NaN/inf and builds the form
        its driver trains on (the CSR form of sparse inputs, or a contiguous
        array of the working dtype) on every call.  A pipeline that calls it
        once per epoch or per block can prepare the data once and pass the
        returned object as ``training_data`` instead: the checks and the
        conversion are then done at most once.  The object keeps the arrays it
        was given: modify them after preparing and the prepared forms are
        stale.  It serves networks with the same input size and dtype.
        """
        return PreparedData(self, training_data)

    def _kernel_args(self):
        hid, out, cost = self._codes
        return (self._theta, self._sizes, self._offs, self._aoff, hid, out, cost)

    # ------------------------------------------------------------------ training
    def SGD(
        self,
        training_data: Data | PreparedData,
        epochs: int,
        mini_batch_size: int,
        eta: float,
        test_data: Data | None = None,
        quiet: bool = False,
        threads: int | None = None,
        *,
        optimizer: str = "sgd",
        momentum: float = 0.0,
        nesterov: bool = False,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        track_gradients: bool | int = False,
        _driver: str | None = None,
    ) -> History:
        """Train by mini-batch stochastic gradient descent.

        Every epoch shuffles the training data (with the network's seeded
        generator), cuts it into mini-batches of ``mini_batch_size`` (the last
        one may be smaller) and takes one step
        ``W <- W - eta * (grad + weight_decay * W)`` per mini-batch, where
        ``grad`` is the gradient of the mini-batch's average cost.  Each
        mini-batch sees the parameters after the previous update.

        Prints ``Epoch e: correct / total`` per epoch when ``test_data`` is
        given (or ``Epoch e complete``), unless ``quiet``.  ``threads`` sets
        Numba's thread count for the call; results do not depend on it.  By
        default (None) the thread count follows the load: beside busy
        processes, parts of an epoch run on one thread when that is faster
        (:class:`fastnn.runtime.ThreadTuner`).

        Optimisers (one engine with :class:`fastnn.MLPClassifier`): with
        ``momentum`` > 0, ``v <- momentum*v - eta*g; W <- W + v`` (with
        ``nesterov``, ``W <- W + momentum*v - eta*g``); ``optimizer="adam"``
        is Adam with ``betas`` and ``eps`` (``eta`` is its learning rate).
        ``g`` includes ``weight_decay * W``.  Both need the log_loss (softmax)
        or cross_entropy (sigmoid) cost.  Their state (velocity, moments, step
        count) is kept between ``SGD`` calls with the same optimiser settings
        and starts afresh when they change (or after :meth:`reset_optimizer`).

        Returns a dict of per-epoch lists: ``epoch``, ``train_cost`` (mean
        cost of the samples, each measured on its mini-batch just before that
        mini-batch's update), ``train_accuracy`` (measured the same way),
        ``test_accuracy`` and ``test_correct`` (None without test data) and
        ``seconds`` (training time of the epoch, evaluation excluded).

        With ``track_gradients`` (True, or a number of samples), the history
        also has ``gradient_norms``: per epoch, one value per layer, the
        length of that layer's part (``W`` and ``b``) of the gradient of the
        average cost (weight decay included), measured at the parameters the
        epoch starts from (so epoch 0 shows the initial network) on a fixed
        probe: the first 1,000 training samples (or that many).  One
        full-batch gradient of the probe per epoch, in the kernels: a few
        per cent of a W1 epoch.
        """
        epochs = _positive_int("epochs", epochs)
        opt = _optimizer_settings(optimizer, momentum, nesterov, betas, eps)
        with runtime.num_threads(threads):  # preparing the data uses threads too
            if opt is None:
                X, y, run_epoch = self._trainer(training_data, mini_batch_size, eta, _driver)
            else:
                X, y, run_epoch = self._optim_trainer(training_data, mini_batch_size, eta, opt)
        test = self._data(test_data, "test_data") if test_data is not None else None
        n = X.shape[0]
        limit = self._explosion_limit(X, y)
        probe = self._gradient_probe(X, y, track_gradients)
        history = {
            k: []
            for k in (
                "epoch",
                "train_cost",
                "train_accuracy",
                "test_accuracy",
                "test_correct",
                "seconds",
            )
        }
        if probe:
            history["gradient_norms"] = []
        largest = float(np.abs(self._theta).max())
        with runtime.num_threads(threads):
            for epoch in range(epochs):
                before = largest
                if probe:
                    history["gradient_norms"].append(probe())
                perm = self._rng.permutation(n)
                saved = self._theta.copy()
                t0 = time.perf_counter()
                cost_sum, correct = run_epoch(perm, tune=threads is None)
                seconds = time.perf_counter() - t0
                what = None
                largest = float(np.abs(self._theta).max())  # NaN if any is NaN
                if not np.isfinite(largest):
                    what = "parameters became NaN or infinite"
                elif largest > 1e4 * max(1.0, before):
                    what = (
                        f"the parameters exploded (largest magnitude {largest:.3g}, more than "
                        "10,000 times what it was before the epoch)"
                    )
                elif not np.isfinite(cost_sum):
                    what = "the training cost became NaN or infinite"
                elif limit is not None and cost_sum / n > limit:
                    what = (
                        f"the training cost exploded ({cost_sum / n:.4g}, more than ten times "
                        "the larger of the starting cost and chance level)"
                    )
                if what:
                    self._theta[...] = saved
                    self.reset_optimizer()  # its velocity or moments are from the diverged epoch
                    raise FloatingPointError(
                        f"training diverged in epoch {epoch}: {what} (eta={eta}); the "
                        "parameters from before the epoch were restored. Try a smaller eta."
                    )
                history["epoch"].append(epoch)
                history["train_cost"].append(cost_sum / n)
                history["train_accuracy"].append(correct / n)
                history["seconds"].append(seconds)
                if test is not None:
                    k = self._count_correct(*test)
                    history["test_correct"].append(k)
                    history["test_accuracy"].append(k / test[0].shape[0])
                    if not quiet:
                        print(
                            f"Epoch {epoch}: {k} / {test[0].shape[0]}  ({seconds:.3f} s)",
                            flush=True,
                        )
                else:
                    history["test_correct"].append(None)
                    history["test_accuracy"].append(None)
                    if not quiet:
                        print(f"Epoch {epoch} complete  ({seconds:.3f} s)", flush=True)
        return history

    def _gradient_probe(self, X, y, samples):
        """None, or a function returning the per-layer gradient norms on the first
        ``samples`` (True: 1,000) rows of ``X`` (see ``track_gradients`` in :meth:`SGD`)."""
        if samples is False or samples is None:
            return None
        if samples is True:
            samples = 1000
        try:
            samples = _positive_int("track_gradients", samples)
        except ValueError:
            raise ValueError(
                f"track_gradients must be True, False or a number of samples, got {samples!r}"
            ) from None
        Xp = self._working(X[:samples], "training_data inputs", check_overflow=False)
        yp = np.ascontiguousarray(y[:samples], dtype=np.int64)
        b = kernels.samples_buffers(self._size_list, Xp.shape[0], self.dtype)
        grad = np.empty_like(self._theta)

        def norms():
            self._mean_cost_and_gradient(Xp, yp, b, grad)
            return layer_norms(grad, self._size_list).tolist()

        return norms

    def _prepared(self, training_data):
        """``training_data`` as :class:`PreparedData` (checked to fit if it already is)."""
        if isinstance(training_data, PreparedData):
            training_data.check_fits(self)
            return training_data
        return PreparedData(self, training_data)

    def reset_optimizer(self) -> None:
        """Forget the momentum or Adam state kept between ``SGD`` calls."""
        self._optim_state = None

    def _optim_trainer(self, training_data, mini_batch_size, eta, opt):
        """``_trainer`` for momentum and Adam: the ``"optim"`` driver
        (:mod:`fastnn.kernels.optim`), CSR inputs when they are mostly zero."""
        m = _positive_int("mini_batch_size", mini_batch_size)
        eta = _positive_real("eta", eta)
        if self.cost_name == "quadratic":
            raise ValueError(
                "momentum and Adam train the log_loss (softmax) or cross_entropy (sigmoid) "
                "cost; this network has the quadratic cost"
            )
        prep = self._prepared(training_data)
        X, y = prep.X, prep.y
        m = min(m, X.shape[0])
        sparse = len(self._size_list) >= 3 and prep.density() <= kernels.SPARSE_MAX_DENSITY
        inputs = prep.csr(self) if sparse else prep.dense(self)
        T = np.zeros((X.shape[0], self._size_list[-1]), self.dtype)
        T[np.arange(X.shape[0]), y] = 1
        w = np.ones(X.shape[0], self.dtype)
        key = (opt, self.dtype.str)
        if self._optim_state is None or self._optim_state[0] != key:
            state = np.zeros((2, self.n_params), self.dtype)
            self._optim_state = (key, np.zeros(optim.N_HYPER), state)
        _, hyper, state = self._optim_state
        kind, momentum, nesterov, (b1, b2), eps = opt
        hyper[[optim.LR, optim.DECAY, optim.MOMENTUM, optim.NESTEROV]] = (
            eta,
            self.weight_decay,
            momentum,
            nesterov,
        )
        hyper[[optim.BETA1, optim.BETA2, optim.EPSILON]] = b1, b2, eps
        code = optim.ADAM if kind == "adam" else optim.SGD
        buf = optim.optim_buffers(self._size_list, m, self.dtype, inputs if sparse else None)
        args = self._kernel_args()[:6]

        def run_epoch(perm, tune=True):
            runtime._check_not_forked()
            with runtime.parallel_section():
                return optim.run_epoch(args, inputs, T, w, perm, m, buf, code, hyper, state)

        run_epoch.driver = "optim"
        return X, y, run_epoch

    def _explosion_limit(self, X, y):
        """Mean training cost above which an epoch counts as diverged; None for the quadratic
        cost, which is bounded.  Ten times the larger of the cost of the network on the first
        1,000 samples before training and the cost of chance-level outputs."""
        if self.cost_name == "quadratic":
            return None
        k = self._size_list[-1]
        Xp = self._working(X[:1000], "training_data inputs", check_overflow=False)
        out = self._forward(Xp, "training_data inputs").astype(np.float64)
        yp = y[:1000]
        if self.cost_name == "log_loss":
            chance = np.log(k)
            start = -np.log(np.maximum(out[np.arange(len(yp)), yp], 1e-300)).mean()
        else:  # cross_entropy on sigmoid outputs
            chance = k * np.log(2.0)
            target = np.zeros_like(out)
            target[np.arange(len(yp)), yp] = 1
            p = np.where(target == 1, out, 1 - out)
            start = -np.log(np.maximum(p, 1e-300)).sum(axis=1).mean()
        return 10 * max(start, chance)

    def _trainer(self, training_data, mini_batch_size, eta, driver=None):
        """Validate once and allocate once; returns ``(X, y, run_epoch)``.

        ``run_epoch(perm)`` trains one epoch over ``X[perm]`` in compiled code
        and returns (sum of costs, number correct); ``run_epoch.driver`` names
        the epoch driver (:func:`fastnn.kernels.choose_driver` picks it unless
        ``driver`` names one).  ``SGD`` and the benchmarks both use it.
        """
        m = _positive_int("mini_batch_size", mini_batch_size)
        eta = _positive_real("eta", eta)
        if driver is not None and driver not in kernels.DRIVERS:
            raise ValueError(f"driver must be one of {sorted(kernels.DRIVERS)}, got {driver!r}")
        prep = self._prepared(training_data)
        X, y = prep.X, prep.y
        m = min(m, X.shape[0])
        name = driver or kernels.choose_driver(self._size_list, m, prep.density())
        drv = kernels.DRIVERS[name]
        if drv.needs_hidden and len(self._size_list) < 3:
            raise ValueError(f"driver {name!r} needs a network with a hidden layer")
        if drv.sparse_inputs:
            inputs = prep.csr(self)
        else:
            X = prep.dense(self)
            inputs = (X,)
        # A team has one member per thread and per usable CPU (members wait for each other
        # spinning), and no more than get work.
        most = min(
            numba.config.NUMBA_NUM_THREADS, runtime._usable_cpus(), drv.units(self._size_list, m)
        )
        buffers = drv.buffers(self._size_list, m, self.dtype, most)
        args = self._kernel_args()
        seg = runtime._segment_samples(self.n_params, m)

        def run_epoch(perm, tune=True, rate=eta):
            # Whole mini-batches per call, so that Ctrl-C is seen between calls (the
            # parameters are then those after the last completed step).  With ``tune`` the
            # thread count of each call follows the tuner (one thread beside busy processes).
            # ``rate``: this epoch's learning rate (the estimators' schedules change it).
            runtime._check_not_forked()
            threads = numba.get_num_threads()
            key = (name, tuple(self._size_list), m, self.dtype.str, threads)
            tuner = runtime.tuner_for(key) if tune else None
            total, correct = 0.0, 0
            s0 = 0
            while s0 < perm.shape[0]:
                t, share = tuner.choose() if tuner else (threads, 1.0)
                s1 = min(s0 + max(m, int(seg * share) // m * m), perm.shape[0])
                with runtime.num_threads(t if t != threads else None), runtime.parallel_section():
                    started = time.perf_counter()
                    c, k = drv.epoch(
                        *args,
                        *inputs,
                        y,
                        perm[s0:s1],
                        m,
                        buffers,
                        runtime._team_size(most),
                        rate,
                        self.weight_decay,
                    )
                    if tuner:
                        tuner.record(t, time.perf_counter() - started, s1 - s0)
                total += c
                correct += k
                s0 = s1
            return total, correct

        run_epoch.driver = name
        return X, y, run_epoch

    def update_mini_batch(self, mini_batch: Data, eta: float) -> float:
        """One SGD step on one mini-batch (arrays or pairs); returns its cost before the step."""
        eta = _positive_real("eta", eta)
        X, y = self._data(mini_batch, "mini_batch")
        runtime._check_not_forked()
        m = X.shape[0]
        b = kernels.samples_buffers(self._size_list, m, self.dtype)
        saved = self._theta.copy()
        with runtime.parallel_section():
            cost_sum, _ = kernels.sgd_step(
                *self._kernel_args(),
                X,
                y,
                b.ident,
                b.ident,
                b.A,
                b.D,
                b.G,
                b.blocks,
                self.n_params >= kernels.PARALLEL_UPDATE_MIN,
                eta,
                self.weight_decay,
                b.stats,
            )
        if not (np.isfinite(self._theta).all() and np.isfinite(cost_sum)):
            self._theta[...] = saved
            raise FloatingPointError(
                "the step made the parameters or the cost NaN or infinite "
                f"(eta={eta}); the parameters were restored. Try a smaller eta."
            )
        return cost_sum / m

    # ------------------------------------------------------------------ inference
    def _forward(self, X, name="X", original=None):
        """Output activations (a view into a fresh buffer) for a 2-D input array.

        ``X`` has been through ``_inputs`` (``original``: the array before its
        conversion to the working dtype, for the error message); non-finite
        values in any layer are detected by the kernel and reported here.  In
        a process forked after OpenMP ran, rows go one by one through the
        serial kernel.
        """
        n = X.shape[0]
        A = np.empty((n, self._n_act), self.dtype)
        if runtime.forked_after_openmp():
            bad = 0
            args = self._kernel_args()[:6]
            for i in range(n):
                bad += kernels.forward_one(*args, X[i], A[i])
        else:  # every row the same way, whatever its place in X (see forward_rows)
            with runtime.parallel_section():
                bad = kernels.forward_rows(*self._kernel_args()[:6], X, A, _PREDICT_BLOCK)
        if bad:
            self._raise_nonfinite(X, name, original)
        return A[:, self._aoff[-1] :]

    def _raise_nonfinite(self, X, name, original=None):
        """The clear error for a forward pass that met non-finite values."""
        self._check_finite(X if original is None else original, name)
        if original is not None and original.dtype != X.dtype and not np.isfinite(X).all():
            raise ValueError(f"{name} has values too large for {self.dtype.name}")
        if not np.isfinite(self._theta).all():
            raise ValueError("the network's parameters contain NaN or infinite values")
        raise ValueError(
            f"the forward pass overflowed in {self.dtype.name}: {name} has values too large "
            "for this network's weights (a layer's values became infinite or NaN)"
        )

    def feedforward(self, a: npt.ArrayLike) -> np.ndarray:
        """Output of the network for input ``a``.

        ``a`` may be one sample (shape ``(n_in,)`` or Nielsen's column
        ``(n_in, 1)``; the output has the same form) or a batch
        ``(n, n_in)`` (output ``(n, n_out)``).
        """
        if type(a) is np.ndarray and a.dtype == self.dtype and a.shape == self._one_shape:
            return self._forward_one(a)  # latency path: one sample, already in form
        a_arr = np.asarray(a) if not isinstance(a, np.ndarray) else a
        n_in = self._size_list[0]
        if a_arr.ndim == 1 or (a_arr.ndim == 2 and a_arr.shape == (n_in, 1) and n_in != 1):
            x, _, original = self._inference_inputs(a_arr.reshape(1, -1), "a")
            out = self._forward_one(x[0], original)
            return out if a_arr.ndim == 1 else out.reshape(-1, 1)
        return self._forward(*self._inference_inputs(a_arr, "a")).copy()

    def _inference_inputs(self, X, name):
        """``(working, name, original)``: ``X`` validated and converted to the working dtype
        (NaN/inf left to the kernels to find), the name, and ``X`` before conversion."""
        original = self._inputs(X, name, check_finite=False, convert=False)
        return self._working(original, name, check_overflow=False), name, original

    def _forward_one(self, x, original=None):
        a = np.empty(self._n_act, self.dtype)
        hid, out, _ = self._codes  # the latency path: no tuple building
        if kernels.forward_one(
            self._theta,
            self._sizes,
            self._offs,
            self._aoff,
            hid,
            out,
            x if x.flags.c_contiguous else x.copy(),
            a,
        ):
            self._raise_nonfinite(x, "a", original)
        return a[self._aoff[-1] :]

    def predict_proba(self, X: npt.ArrayLike) -> np.ndarray:
        """Output activations of each row of ``X`` normalised to sum to one."""
        out = self._forward(*self._inference_inputs(X, "X")).copy()
        if self.output != "softmax":
            out /= out.sum(axis=1, keepdims=True)
        return out

    def predict(self, X: npt.ArrayLike) -> np.ndarray:
        """Predicted class (index of the largest output) of each row of ``X``."""
        return self._forward(*self._inference_inputs(X, "X")).argmax(axis=1)

    def _count_correct(self, X, y, name="X", original=None):
        return int((self._forward(X, name, original).argmax(axis=1) == y).sum())

    def evaluate(self, test_data: Data) -> int:
        """Number of samples of ``test_data`` (arrays or pairs) classified correctly."""
        return self._count_correct(*self._data(test_data, "test_data"))

    def accuracy(self, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """Fraction of rows of ``X`` classified as ``y``."""
        Xw, name, original = self._inference_inputs(X, "X")
        return self._count_correct(Xw, self._labels(y, Xw.shape[0]), name, original) / len(Xw)

    # ------------------------------------------------------------------ cost and gradient
    def _cost_and_gradient(self, X, y):
        X = self._inputs(X)
        y = self._labels(y, X.shape[0])
        b = kernels.samples_buffers(self._size_list, X.shape[0], self.dtype)
        grad = np.empty_like(self._theta)
        return self._mean_cost_and_gradient(X, y, b, grad), grad

    def _mean_cost_and_gradient(self, X, y, b, grad):
        """Average cost of validated ``(X, y)``, its gradient into ``grad`` (``b``: the
        buffers of ``samples_buffers`` for ``len(X)`` samples); weight decay included."""
        runtime._check_not_forked()
        n = X.shape[0]
        with runtime.parallel_section():
            total = kernels.gradient(
                *self._kernel_args(), X, y, b.ident, b.ident, b.A, b.D, b.G, grad
            )
        grad /= n
        cost = total / n
        if self.weight_decay:
            gW, _ = unpack(grad, self._size_list)
            for W, g in zip(self.weights, gW):
                g += self.weight_decay * W
                cost += 0.5 * self.weight_decay * float(np.dot(W.ravel(), W.ravel()))
        return cost

    def cost(self, X: npt.ArrayLike, y: npt.ArrayLike) -> float:
        """Average cost over the rows of ``X`` (plus the weight-decay penalty)."""
        return self._cost_and_gradient(X, y)[0]

    def gradient(self, X: npt.ArrayLike, y: npt.ArrayLike) -> np.ndarray:
        """Gradient of :meth:`cost` with respect to ``parameters``, as one flat vector.

        Use :meth:`views` for per-layer ``(weights, biases)`` views of it.
        """
        return self._cost_and_gradient(X, y)[1]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> str:
        """Save to an ``.npz`` file (no pickle) at exactly ``path``; returns the path.

        Keys: ``format`` ('fastnn-network'), ``version`` (1), ``sizes`` (int64),
        ``parameters`` (the flat vector in its dtype), and the strings
        ``activation``, ``output``, ``cost``, ``init`` and the float
        ``weight_decay``.  The write is atomic: the file is written beside
        its final name, flushed to disk, then renamed over it, so an
        interrupted save (a kill, a full disk) leaves any earlier file at
        ``path`` whole.
        """
        return write_model(path, self._model_fields())

    def _model_fields(self):
        """The arrays a model file holds, by key (see :meth:`save`)."""
        return dict(
            format=np.str_(FORMAT_NAME),
            version=np.int64(FORMAT_VERSION),
            sizes=np.array(self._size_list, dtype=np.int64),
            parameters=self._theta,
            activation=np.str_(self.activation),
            output=np.str_(self.output),
            cost=np.str_(self.cost_name),
            init=np.str_(self.init),
            weight_decay=np.float64(self.weight_decay),
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> Network:
        """Load a network written by :meth:`save`.

        The file is checked whole before anything is built: a missing file
        raises ``FileNotFoundError``; anything else that is not a complete,
        consistent fastnn network file (truncated, corrupt, a ``.npy``, missing
        keys, non-finite parameters, sizes that do not match the parameter
        count) raises ``ValueError`` naming the file and the problem.
        """
        return cls._from_fields(path, read_model(path))

    @classmethod
    def _from_fields(cls, path, f):
        """A network from the checked fields of a model file (``read_model``)."""
        theta = f["parameters"]
        try:
            net = cls(
                f["sizes"],
                activation=f["activation"],
                output=f["output"],
                cost=f["cost"],
                weight_decay=f["weight_decay"],
                init=f["init"],
                dtype=theta.dtype,
            )
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: not a fastnn network file: {e}") from None
        net._theta[...] = theta
        return net
