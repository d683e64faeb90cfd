"""Activations, their derivatives and the output-layer deltas and costs.

``exp`` is computed in vector registers (:func:`_exp_inplace`): no libm call,
within one ulp of ``np.exp`` (tested), in blocks of 16 and 8 with constant
trip counts because activation vectors are short.  Sigmoid and softmax use it.
Activation codes come from :mod:`fastnn.layout`.
"""

import numpy as np
from numba import njit

from ..layout import CROSS_ENTROPY, EXP, IDENTITY, QUADRATIC, RELU, SIGMOID, TANH
from ._jit import _0, _1, _dot_opts, _exact_opts, _opts
from ._llvm import _fma, _times_pow2

# exp(r) on |r| <= ln(2)/2 as a polynomial: Taylor terms to r**7 in float32 (truncation
# below 2e-8, under one ulp) and to r**13 in float64 (below 1e-17).
_INV_FACT32 = tuple(np.float32(1.0 / np.prod(np.arange(1.0, k + 1))) for k in range(8))
_INV_FACT64 = tuple(1.0 / float(np.prod(np.arange(1.0, k + 1))) for k in range(14))
_LOG2E32, _LN2_HI32, _LN2_LO32 = (
    np.float32(1.4426950408889634),
    np.float32(0.693359375),
    np.float32(-2.12194440e-4),
)
_LN2_HI64, _LN2_LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_EXP_MAX32, _EXP_MIN32 = np.float32(88.3), np.float32(-87.3)


@njit(inline="always", **_exact_opts)
def _exp32(x):
    """exp(x) in float32 (see :func:`_exp_inplace`)."""
    x = _EXP_MAX32 if x > _EXP_MAX32 else x
    x = _EXP_MIN32 if x < _EXP_MIN32 else x
    k = np.floor(_fma(x, _LOG2E32, np.float32(0.5)))
    r = _fma(-k, _LN2_LO32, _fma(-k, _LN2_HI32, x))
    c = _INV_FACT32
    p = c[7]
    for i in range(6, -1, -1):
        p = _fma(p, r, c[i])
    return _times_pow2(p, np.int32(k))


@njit(inline="always", **_exact_opts)
def _exp64(x):
    """exp(x) in float64 (see :func:`_exp_inplace`)."""
    x = 709.0 if x > 709.0 else x
    x = -708.0 if x < -708.0 else x
    k = np.floor(_fma(x, 1.4426950408889634, 0.5))
    r = _fma(-k, _LN2_LO64, _fma(-k, _LN2_HI64, x))
    c = _INV_FACT64
    p = c[13]
    for i in range(12, -1, -1):
        p = _fma(p, r, c[i])
    return _times_pow2(p, np.int64(k))


@njit(inline="always", **_exact_opts)
def _exp_or_sigmoid(x, sigmoid, f32):
    """``1/(1 + exp(-x))`` if ``sigmoid``, else ``exp(x)``; float32 maths if ``f32``.

    The sigmoid of +-inf is 1 or about 1e-38 (``exp`` clamps its argument), NaN stays NaN.
    """
    if sigmoid:
        e = _exp32(-x) if f32 else _exp64(-x)
        return _1 / (_1 + e)
    return _exp32(x) if f32 else _exp64(x)


@njit(**_exact_opts)
def _exp_inplace(a, sigmoid=False):
    """``a[j] = exp(a[j])`` (or the sigmoid ``1/(1 + exp(-a[j]))``) in vector registers.

    No call to libm: range reduction ``x = k ln2 + r`` (ln2 in two parts,
    Cody-Waite, which reassociation would undo: no ``reassoc`` here), a
    polynomial for ``exp(r)`` and ``2**k`` from its bits.  Every multiply-add
    is an explicit :func:`._llvm._fma` and nothing else may be fused (no
    ``contract``): with ``contract``, the copies of this function that LLVM
    optimised inside different callers fused differently, and float64 runs
    that compiled the kernels trained to other weights than runs that loaded
    them from the cache.  Within one ulp of
    ``np.exp`` (tested).  Arguments are clamped to the finite range of the
    dtype (results stay finite and normal: ``exp(-200)`` gives about 1e-38
    in float32, not 0); NaN stays NaN.  Blocks of 16 and 8 with constant
    trip counts: activation vectors are short, and LLVM's vectorised loop
    would want 64 of them (run as scalars, 42 sigmoids a sample took 8 ms
    per MNIST epoch, more than libm's 6 ms).
    """
    n = a.shape[0]
    f32 = a.itemsize == 4
    j = 0
    while j + 16 <= n:
        b = a[j : j + 16]
        for t in range(16):
            b[t] = _exp_or_sigmoid(b[t], sigmoid, f32)
        j += 16
    if j + 8 <= n:
        b = a[j : j + 8]
        for t in range(8):
            b[t] = _exp_or_sigmoid(b[t], sigmoid, f32)
        j += 8
    for t in range(j, n):
        a[t] = _exp_or_sigmoid(a[t], sigmoid, f32)


@njit(**_opts)
def _activate(a, act):
    """Apply activation ``act`` in place to the vector ``a``."""
    n = a.shape[0]
    # A run-time bool for _exp_inplace: literal True/False arguments would compile it twice.
    sigmoid = act == SIGMOID
    if act == SIGMOID:
        _exp_inplace(a, sigmoid)
    elif act == RELU:
        for j in range(n):
            if a[j] < _0:
                a[j] = _0
    elif act == TANH:
        for j in range(n):
            a[j] = np.tanh(a[j])
    elif act == IDENTITY:
        pass
    elif act == EXP:
        _exp_inplace(a, sigmoid)
    else:  # SOFTMAX
        zmax = a[0]
        for j in range(1, n):
            if a[j] > zmax:
                zmax = a[j]
        for j in range(n):
            a[j] -= zmax
        _exp_inplace(a, sigmoid)
        s = a[0] - a[0]
        for j in range(n):
            s += a[j]
        inv = _1 / s
        for j in range(n):
            a[j] *= inv


@njit(**_opts)
def _derivative(a, act):
    """Derivative of the hidden activation expressed through its output ``a``."""
    if act == SIGMOID:
        return a * (_1 - a)
    elif act == RELU:
        return _1 if a > _0 else _0
    elif act == IDENTITY:
        return _1
    else:  # TANH
        return _1 - a * a


@njit(**_dot_opts)
def _any_nonfinite(A, s0, s1, c0, c1):
    """1 if any value of ``A[s0:s1, c0:c1]`` is NaN or infinite, else 0.

    A sum of ``value * 0`` (NaN exactly when a value is NaN or infinite): no
    branch per value, one call per block of samples, reassociated so that it
    vectorises (without ``nnan``/``ninf`` LLVM may not fold ``value * 0``).
    """
    z = _0 * _0
    for i in range(s0, s1):
        row = A[i, c0:c1]
        for j in range(row.shape[0]):
            z += row[j] * _0
    return 0 if z == z else 1


@njit(**_opts)
def _count_nonfinite(a):
    bad = 0
    for j in range(a.shape[0]):
        if not np.isfinite(a[j]):
            bad += 1
    return bad


@njit(inline="always", **_opts)
def _log_clamped(p):
    """``log(max(p, 1e-300))`` in float64, except that NaN stays NaN (a NaN output must make
    the cost NaN, which training reports as divergence, not a finite 690)."""
    if p < 1e-300:
        return np.log(1e-300)
    return np.log(np.float64(p))


@njit(**_opts)
def _output_delta(a, d, label, out, cost):
    """Output-layer delta ``d`` for output activations ``a``; returns (cost, predicted class)."""
    n = a.shape[0]
    c = 0.0
    best = 0
    for j in range(n):
        if a[j] > a[best]:
            best = j
        y = _1 if j == label else _0
        d[j] = a[j] - y
        if cost == QUADRATIC:
            c += 0.5 * (a[j] - y) * (a[j] - y)
        elif cost == CROSS_ENTROPY:
            p = a[j] if j == label else _1 - a[j]
            c -= _log_clamped(p)
        elif j == label:  # LOG_LOSS
            c -= _log_clamped(a[j])
    if cost == QUADRATIC:
        if out == SIGMOID:
            for j in range(n):
                d[j] *= a[j] * (_1 - a[j])
        else:  # softmax Jacobian: delta = J^T (a - y)
            s = a[0] - a[0]
            for j in range(n):
                s += d[j] * a[j]
            for j in range(n):
                d[j] = a[j] * (d[j] - s)
    return c, best


@njit(**_opts)
def _output_deltas(sizes, aoff, out, cost, y, rows, A, D, s0, s1):
    """Output-layer deltas of samples ``s0:s1``; returns (sum of costs, number correct)."""
    L = sizes.shape[0] - 1
    c0 = aoff[L - 1]
    total = 0.0
    correct = 0
    for i in range(s0, s1):
        lab = y[rows[i]]
        c, best = _output_delta(A[i, c0 : c0 + sizes[L]], D[i, c0 : c0 + sizes[L]], lab, out, cost)
        total += c
        if best == lab:
            correct += 1
    return total, correct
