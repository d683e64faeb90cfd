"""What Numba does at a process's first compile or cache load that fastnn does not need.

Numba's first compile (or first load from the cache) imports its NumPy
registries, and ``numba.np.arraymath`` checks at import time that SciPy's
BLAS is there with ``numba.np.linalg.ensure_blas()``, which imports
``scipy.linalg.cython_blas``, so the whole ``scipy.linalg`` package (with
SciPy's array-API layer, which imports ``numpy.f2py``): 0.2-0.25 s on the
2-core machine, about half of the first ``SGD`` call of a process with a warm
cache.  No fastnn kernel calls BLAS.

:func:`defer_scipy_linalg` gives ``numba.np.linalg`` an ``ensure_blas`` that
checks the same thing without the import: the module file is found (its
folder searched, the package not imported), then Numba's own check of the
LAPACK integer width runs (where no file is found, Numba's own check runs,
and imports).  Numba's BLAS calls (``np.dot`` in a user's own
kernel) import the module when they first run, as they always did, so they
work as before.  With a Numba that lacks the function, or when
``numba.np.arraymath`` was already imported, nothing is changed.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _cython_blas_findable():
    """Whether ``scipy.linalg.cython_blas`` could be imported, without importing
    ``scipy.linalg``."""
    if "scipy.linalg.cython_blas" in sys.modules:
        return True
    spec = importlib.util.find_spec("scipy")  # a top-level name: nothing is imported
    if spec is None or not spec.submodule_search_locations:
        return False
    for root in spec.submodule_search_locations:
        linalg = os.path.join(root, "linalg")
        if importlib.machinery.PathFinder.find_spec("cython_blas", [linalg]) is not None:
            return True
    return False


def defer_scipy_linalg():
    """Replace ``numba.np.linalg.ensure_blas`` by a check that does not import SciPy's
    ``linalg`` package (see the module's docstring); returns whether it did."""
    if "numba.np.arraymath" in sys.modules:
        return False
    try:
        from numba.np import linalg
    except ImportError:
        return False
    if not hasattr(linalg, "ensure_blas"):
        return False
    check_width = getattr(linalg, "_check_lapack_int_width", None)
    numba_check = linalg.ensure_blas

    def ensure_blas():
        if not _cython_blas_findable():  # not as a file (a zipped or frozen install?):
            return numba_check()  # Numba's own check, which imports
        if check_width is not None:
            check_width()

    linalg.ensure_blas = ensure_blas
    return True
