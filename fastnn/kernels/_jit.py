"""Compile options and constants shared by every kernel module.

* ``_opts``: ``cache=True`` (Numba's on-disk cache, see :mod:`.cache`),
  ``nogil`` (two Python threads can train at once), ``error_model="numpy"``
  (a float division by zero gives inf/nan, caught by the Python layer as
  divergence, instead of raising inside a parallel region) and the
  fast-math flags ``contract`` (fused multiply-adds) and ``nsz``.  Never
  ``nnan``/``ninf``: non-finite values must stay detectable.
* ``_dot_opts`` adds ``reassoc``, only for the dot-product kernels, whose sums
  must be reordered to vectorise.  Everywhere else ``reassoc`` let LLVM
  rewrite an expression differently when a kernel was compiled than when it
  was loaded from the cache (the sigmoid derivative ``a*(1-a)``), so a
  script's first run trained to other weights than every later run.
* ``_exact_opts`` drops ``contract``: for code that says where it fuses
  (:func:`._llvm.fma_ir`) and must round the same in every copy LLVM makes of
  it.  Numba links a kernel's callees into each caller as ``linkonce_odr``
  copies, which LLVM optimises in the caller's context, so whether a
  multiply and an add were fused could differ between the copy a run that
  compiled used and the one a run that loaded the cache used (``exp`` in
  float64: other weights on a script's first run).
* ``_0`` and ``_1`` are float32 constants: Numba promotes ``float32 op
  float64-literal`` to float64, so a plain ``1.0`` would silently run the
  float32 kernels in double precision.  A float32 constant keeps float32
  arithmetic in float32 and float64 in float64.
"""

import numpy as np

_opts = dict(cache=True, fastmath={"contract", "nsz"}, nogil=True, error_model="numpy")
_dot_opts = dict(_opts, fastmath={"reassoc", "contract", "nsz"})
_exact_opts = dict(_opts, fastmath={"nsz"})

_0 = np.float32(0.0)
_1 = np.float32(1.0)
