"""fastnn: small fully-connected neural networks trained fast on the CPU.

* :class:`fastnn.Network` -- the API (``SGD``, ``feedforward``, ``evaluate``, ...).
* :mod:`fastnn.kernels` -- the Numba kernels (forward, backprop, SGD update, epoch).
* :mod:`fastnn.reference` -- the same maths in plain NumPy (test oracle, benchmark baseline).
* :mod:`fastnn.datasets` -- MNIST loading (:func:`fastnn.load_mnist`).
* :class:`fastnn.MLPClassifier`, :class:`fastnn.MLPRegressor` -- scikit-learn
  estimators (:mod:`fastnn.estimators`; imported on first use, they need
  scikit-learn).
* :mod:`fastnn.cli` -- ``python -m fastnn train`` / ``bench``.
"""

from .datasets import load_mnist
from .network import Network

__version__ = "0.1.0"
__all__ = ["MLPClassifier", "MLPRegressor", "Network", "load_mnist", "__version__"]


def __getattr__(name):
    # the estimators import scikit-learn: only when asked for, never by ``import fastnn``
    if name in ("MLPClassifier", "MLPRegressor"):
        from . import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module 'fastnn' has no attribute {name!r}")
