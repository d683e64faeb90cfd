"""fastnn: small fully-connected neural networks trained fast on the CPU.

* :class:`fastnn.Network` -- the API (``SGD``, ``feedforward``, ``evaluate``, ...).
* :mod:`fastnn.kernels` -- the Numba kernels (forward, backprop, SGD update, epoch).
* :mod:`fastnn.reference` -- the same maths in plain NumPy (test oracle, benchmark baseline).
* :mod:`fastnn.datasets` -- MNIST loading (:func:`fastnn.load_mnist`).
* :mod:`fastnn.cli` -- ``python -m fastnn train`` / ``bench``.
"""

from .datasets import load_mnist
from .network import Network

__version__ = "0.1.0"
__all__ = ["Network", "load_mnist", "__version__"]
