"""Validation and conversion of the data given to a network (a mixin of ``Network``).

Inputs are validated once per call: shapes, dtypes, labels, NaN and infinite
values.  Each problem raises a ``ValueError`` or ``TypeError`` that names it;
the kernels never see data they cannot handle.
"""

import numpy as np

from . import kernels, runtime


def kernel_dtype(dtype):
    """Whether the counting and CSR kernels (:mod:`fastnn.kernels.csr`) take inputs of
    ``dtype`` as they are: native byte order, integers or floats, not float16."""
    return (
        dtype.isnative
        and dtype.kind in "iuf"
        and dtype.itemsize in (1, 2, 4, 8)
        and dtype != np.float16
    )


class InputsMixin:
    """``Network``'s input checks; they read ``_size_list`` and ``dtype``."""

    def _inputs(self, X, name="X", check_finite=True, convert=True):
        """Validate ``X`` and return it as a C-contiguous 2-D array of the working dtype.

        Copies only when the dtype or memory order requires it; uint8 pixels are
        scaled to [0, 1].  ``check_finite=False`` leaves the NaN/inf check to
        the forward kernel (inference), which flags such rows as it goes.
        ``convert=False`` returns the validated 2-D array as it is (for
        :meth:`_sparse_inputs`, which converts only the non-zero values).
        """
        try:
            X = np.asarray(X)
        except (TypeError, ValueError) as e:
            raise TypeError(f"{name} must be a numeric array: {e}") from None
        if X.dtype == bool or not (
            np.issubdtype(X.dtype, np.integer) or np.issubdtype(X.dtype, np.floating)
        ):
            raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
        n_in = self._size_list[0]
        if X.ndim > 2 and int(np.prod(X.shape[1:])) == n_in:
            X = X.reshape(X.shape[0], n_in)
        if X.ndim != 2 or X.shape[1] != n_in:
            raise ValueError(f"{name} must have shape (n_samples, {n_in}), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: need at least one sample")
        if check_finite and X.dtype != np.uint8:
            self._check_finite(X, name)
        return self._working(X, name, check_finite) if convert else X

    def _working(self, X, name, check_overflow=True):
        """Validated inputs ``X`` as a C-contiguous array of the working dtype.

        Copies only when the dtype or memory order requires it; uint8 pixels
        are scaled to [0, 1].  Values too large for the working dtype raise a
        ``ValueError`` unless ``check_overflow`` is False (inference, where
        the forward kernel flags them).
        """
        if X.dtype == np.uint8:
            out = X.astype(self.dtype)
            out /= 255
            return out
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(X, dtype=self.dtype)
        if check_overflow and out.dtype != X.dtype and not np.isfinite(out).all():
            raise ValueError(f"{name} has values too large for {self.dtype.name}")
        return out

    def _sparse_inputs(self, X, name, indptr=None):
        """Validated inputs ``X`` (from ``_inputs(convert=False)``) in CSR form.

        Returns ``(indptr, indices, values)``: the non-zero values of row ``i``
        are ``values[indptr[i]:indptr[i+1]]`` at columns ``indices[...]``
        (ascending; int16 where the columns allow, int32 otherwise),
        converted to the working dtype as ``_working`` converts the whole
        array (uint8 pixels scaled to [0, 1]).  The dense working copy is
        never made, so the training set is copied once (except for dtypes the
        kernels do not take, such as float16 or non-native byte order, which
        are converted to the working dtype first).  ``indptr``: the row
        pointers of ``X`` if already counted (``kernels.count_rows``).
        """
        if not kernel_dtype(X.dtype):
            X = self._working(X, name)
            indptr = None
        pixels = X.dtype == np.uint8  # scaled to [0, 1] as _working scales them
        indptr, indices, values = kernels.csr_rows(
            X, self.dtype, indptr, 255.0 if pixels else 1.0, runtime.thread_budget()
        )
        if not pixels and values.dtype != X.dtype and not np.isfinite(values).all():
            raise ValueError(f"{name} has values too large for {self.dtype.name}")
        return indptr, indices, values

    def _check_finite(self, X, name):
        if np.issubdtype(X.dtype, np.floating) and not np.isfinite(X).all():
            raise ValueError(f"{name} contains NaN or infinite values")

    def _labels(self, y, n, name="y"):
        y = np.asarray(y)
        if y.ndim == 2 and y.shape[1] == self._size_list[-1] and y.shape[0] == n:
            y = self._from_one_hot(y, name)
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"{name} must be a 1-D array of {n} labels, got shape {y.shape}")
        if np.issubdtype(y.dtype, np.floating):
            if not np.isfinite(y).all() or (y != np.round(y)).any():
                raise ValueError(f"{name} must hold integer class labels")
        elif not np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
            raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        y = y.astype(np.int64)
        k = self._size_list[-1]
        if y.min() < 0 or y.max() >= k:
            raise ValueError(f"{name} has labels outside 0..{k - 1} (min {y.min()}, max {y.max()})")
        return y

    def _from_one_hot(self, Y, name):
        Y = np.asarray(Y)
        if not (((Y == 0) | (Y == 1)).all() and (Y.sum(axis=1) == 1).all()):
            raise ValueError(f"{name}: target vectors must be one-hot (fastnn trains classifiers)")
        return Y.argmax(axis=1)

    def _data(self, data, name, convert=True, check_finite=True):
        """``(X, y)`` from an ``(X, y)`` pair of arrays or a sequence of ``(x, y)`` pairs.

        ``convert=False``: ``X`` validated but not converted (see ``_inputs``);
        ``check_finite=False``: the caller checks for NaN and infinities.
        """
        if (
            isinstance(data, (tuple, list))
            and len(data) == 2
            and not isinstance(data[0], (tuple, list))
        ):
            X, y = data
        else:
            pairs = list(data) if data is not None else []
            if not pairs:
                raise ValueError(f"{name} is empty: need at least one sample")
            if not all(isinstance(p, (tuple, list)) and len(p) == 2 for p in pairs):
                raise TypeError(f"{name} must be (X, y) arrays or a sequence of (x, y) pairs")
            X = np.stack([np.ravel(np.asarray(p[0])) for p in pairs]) if pairs else None
            ys = [np.asarray(p[1]) for p in pairs]
            if all(v.size == 1 for v in ys):
                y = np.array([v.item() for v in ys])
            else:
                y = self._from_one_hot(np.stack([np.ravel(v) for v in ys]), name)
        X = self._inputs(X, name + " inputs", check_finite=check_finite, convert=convert)
        return X, self._labels(y, X.shape[0], name + " labels")
