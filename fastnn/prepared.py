"""Training data validated and converted once, for many ``SGD`` calls (``Network.prepare``)."""

import numpy as np

from . import kernels, runtime
from ._inputs import kernel_dtype


class PreparedData:
    """Training data validated once, with the forms the drivers train on made once each.

    Made by :meth:`Network.prepare`; pass it to ``SGD`` as ``training_data``.
    ``X`` is the validated input array (not converted), ``y`` the int64 labels.
    """

    def __init__(self, net, training_data, *, validated=False, indptr=None):
        self._density = self._csr = self._dense = self._indptr = None
        if validated:  # ``(X, y)`` already checked by the caller (the estimators), y int64
            self.X, self.y = training_data
            if indptr is not None:  # the caller counted the non-zeros (kernels.count_rows)
                self._indptr = indptr
                self._density = indptr[-1] / self.X.size
        else:
            # The NaN/inf check of inputs the kernels take is done by the pass that counts
            # the non-zeros (one pass over X instead of two).
            self.X, self.y = net._data(
                training_data, "training_data", convert=False, check_finite=False
            )
            if kernel_dtype(self.X.dtype):
                if self._count():  # (integers never count as NaN or infinite)
                    raise ValueError("training_data inputs contains NaN or infinite values")
            else:
                net._check_finite(self.X, "training_data inputs")
        self.n_in, self.n_out, self.dtype = net._size_list[0], net._size_list[-1], net.dtype

    def check_fits(self, net):
        """Raise ``ValueError`` unless ``net`` has the input size, class count and dtype these
        data were prepared for."""
        mine = (self.n_in, self.n_out, self.dtype)
        if (net._size_list[0], net._size_list[-1], net.dtype) != mine:
            raise ValueError(
                f"these prepared data are for {self.n_in} inputs, {self.n_out} classes, "
                f"{self.dtype.name}; the network has {net._size_list[0]} inputs, "
                f"{net._size_list[-1]} classes, {net.dtype.name}: prepare them with it"
            )

    def __len__(self):
        return self.X.shape[0]

    def _count(self):
        """Count the non-zeros per row (the CSR row pointers and the density); returns the
        number of NaN and infinite values."""
        self._indptr = np.empty(self.X.shape[0] + 1, np.int64)
        nnz, bad = kernels.count_rows(self.X, self._indptr, runtime.thread_budget())
        self._density = nnz / self.X.size
        return bad

    def density(self):
        """The fraction of non-zero inputs (counted per row, for the CSR form)."""
        if self._density is None:
            if kernel_dtype(self.X.dtype):
                self._count()
            else:
                self._density = np.count_nonzero(self.X) / self.X.size
        return self._density

    def csr(self, net):
        """The CSR form ``(indptr, indices, values)`` in the working dtype."""
        if self._csr is None:
            self.density()
            self._csr = net._sparse_inputs(self.X, "training_data inputs", self._indptr)
        return self._csr

    def dense(self, net):
        """The inputs as a C-contiguous array of the working dtype."""
        if self._dense is None:
            self._dense = net._working(self.X, "training_data inputs")
        return self._dense
