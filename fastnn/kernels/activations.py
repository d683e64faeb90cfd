"""Activations, their derivatives and the output-layer deltas and costs.

``exp`` is computed in vector registers (:func:`_exp_inplace`): no libm call,
within one ulp of ``np.exp`` (tested), in blocks of 16 and 8 with constant
trip counts because activation vectors are short.  Sigmoid and softmax use it;
a softmax layer of a few outputs runs the exps of a block of rows at once
(:func:`_activate_rows`).  Activation codes come from :mod:`fastnn.layout`.
"""

import numpy as np
from llvmlite import ir
from numba import carray, njit, types
from numba.extending import intrinsic

from ..layout import CROSS_ENTROPY, EXP, IDENTITY, QUADRATIC, RELU, SIGMOID, SOFTMAX, TANH
from ._jit import _0, _1, _dot_opts, _exact_opts, _opts
from ._llvm import _stack_values, floor_ir, fma_ir, times_pow2_ir

SOFTMAX_BLOCK = 128  # values: the softmax of rows of n outputs runs its exps for
# SOFTMAX_BLOCK // n rows at a time (:func:`_softmax_rows`)

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


def _exp_ir(builder, x):
    """LLVM instructions for exp(``x``), an LLVM float or double value.

    Clamped to the finite range, ``k = floor(x log2(e) + 1/2)``,
    ``r = x - k ln2`` with ln2 in two parts (Cody-Waite), the Taylor
    polynomial of ``exp(r)`` by Horner's rule, times ``2**k`` from its bits;
    every multiply-add one ``llvm.fma`` (see :func:`_exp_inplace`).
    """
    ty = x.type
    f32 = isinstance(ty, ir.FloatType)
    hi, lo = (_EXP_MAX32, _EXP_MIN32) if f32 else (709.0, -708.0)
    log2e = _LOG2E32 if f32 else 1.4426950408889634
    ln2_hi, ln2_lo = (_LN2_HI32, _LN2_LO32) if f32 else (_LN2_HI64, _LN2_LO64)
    coefs = _INV_FACT32 if f32 else _INV_FACT64

    def c(v):
        return ir.Constant(ty, float(v))

    x = builder.select(builder.fcmp_ordered(">", x, c(hi)), c(hi), x)
    x = builder.select(builder.fcmp_ordered("<", x, c(lo)), c(lo), x)
    k = floor_ir(builder, fma_ir(builder, x, c(log2e), c(0.5)))
    nk = builder.fneg(k)
    r = fma_ir(builder, nk, c(ln2_lo), fma_ir(builder, nk, c(ln2_hi), x))
    p = c(coefs[-1])
    for coef in coefs[-2::-1]:
        p = fma_ir(builder, p, r, c(coef))
    ki = builder.fptosi(k, ir.IntType(32 if f32 else 64))
    return times_pow2_ir(builder, p, ki)


@intrinsic
def _exp(typingctx, x):
    """exp(``x``) for a float32 or float64 ``x``, as straight LLVM instructions
    (:func:`_exp_ir`).  Written as Numba functions inlined by Numba
    (``inline="always"``), the float32 and float64 versions at every call
    site, :func:`_exp_inplace` took 1.9-3.3 s to compile, mostly copying
    Numba IR; from these instructions 0.3-0.5 s, the same bits and speed."""
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        return _exp_ir(builder, args[0])

    return x(x), codegen


@intrinsic
def _relu(typingctx, x):
    """``0 if x < 0 else x`` (NaN and -0 kept), as LLVM instructions that vectorise to a
    maximum and a plain store.

    Written as Numba code, ``a[j] = 0 if a[j] < 0 else a[j]`` lets LLVM see that
    the store writes back what it loaded unless ``a[j] < 0``, so it stores
    conditionally: masked vector stores (``vmaskmovps``), slow on AMD's cores;
    a hidden layer of 100 neurons spent 0.8 ns a value (4-5 ms of a one-thread W5
    epoch).
    ``freeze`` of the loaded value hides that it is the value in memory: then a
    ``vmaxps`` and a plain store, 0.3 ns a value.
    """
    if not isinstance(x, types.Float):
        return None

    def codegen(context, builder, signature, args):
        v = ir.instructions.Instruction(builder.block, args[0].type, "freeze", [args[0]])
        builder._insert(v)  # llvmlite's IRBuilder has no freeze()
        zero = ir.Constant(v.type, 0.0)
        return builder.select(builder.fcmp_ordered("<", v, zero), zero, v)

    return x(x), codegen


@njit(inline="always", **_exact_opts)
def _exp_or_sigmoid(x, sigmoid):
    """``1/(1 + exp(-x))`` if ``sigmoid``, else ``exp(x)``, in the float type of ``x``.

    The sigmoid of +-inf is 1 or about 1e-38 (``exp`` clamps its argument), NaN stays NaN.
    The sigmoid's division is in float64 (rounded to float32 where it is stored), as
    since its first version.
    """
    if sigmoid:
        return _1 / (_1 + np.float64(_exp(-x)))
    return _exp(x)


@njit(**_exact_opts)
def _exp_inplace(a, sigmoid=False):
    """``a[j] = exp(a[j])`` (or the sigmoid ``1/(1 + exp(-a[j]))``) in vector registers.

    No call to libm: range reduction ``x = k ln2 + r`` (ln2 in two parts,
    Cody-Waite, which reassociation would undo: no ``reassoc`` here), a
    polynomial for ``exp(r)`` and ``2**k`` from its bits (:func:`_exp`,
    emitted as LLVM instructions).  Every multiply-add is an explicit
    ``llvm.fma`` and nothing else may be fused (no ``contract``): with
    ``contract``, the copies of this function that LLVM optimised inside
    different callers fused differently, and float64 runs that compiled the
    kernels trained to other weights than runs that loaded them from the
    cache.  Within one ulp of
    ``np.exp`` (tested).  Arguments are clamped to the finite range of the
    dtype (results stay finite and normal: ``exp(-200)`` gives about 1e-38
    in float32, not 0); NaN stays NaN.  Blocks of 16 and 8 with constant
    trip counts: activation vectors are short, and LLVM's vectorised loop
    would want 64 of them (run as scalars, 42 sigmoids a sample took 8 ms
    per MNIST epoch, more than libm's 6 ms).
    """
    n = a.shape[0]
    j = 0
    while j + 16 <= n:
        b = a[j : j + 16]
        for t in range(16):
            b[t] = _exp_or_sigmoid(b[t], sigmoid)
        j += 16
    if j + 8 <= n:
        b = a[j : j + 8]
        for t in range(8):
            b[t] = _exp_or_sigmoid(b[t], sigmoid)
        j += 8
    for t in range(j, n):
        a[t] = _exp_or_sigmoid(a[t], sigmoid)


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
            a[j] = _relu(a[j])
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
def _softmax_rows(A, s0, s1, col, n):
    """The softmax of each row ``A[i, col:col + n]``, ``i`` in ``[s0, s1)``, in place, for
    ``n <= SOFTMAX_BLOCK // 2``.

    The same values as :func:`_activate` row by row (the maximum, the
    differences, ``exp``, the sum in order, its reciprocal, the products), but
    the exps of ``SOFTMAX_BLOCK // n`` rows at a time run as one call of
    :func:`_exp_inplace` on a scratch array on the stack: row by row, 10
    outputs were a vector of 8 and two scalar ``exp``s whose latency the next
    row did not hide.  One thread, W5's two chunks of 100 rows of 10 (blocks
    of 12 rows), three runs: 138-199 cycles a row row by row, 37-55 here.
    """
    rows = SOFTMAX_BLOCK // n
    buf = carray(_stack_values(A, SOFTMAX_BLOCK), SOFTMAX_BLOCK)
    # False, but a run-time bool as _activate passes: the argument left out compiled a
    # second _exp_inplace (a compile event of 1.2-1.4 s in a cold start)
    sigmoid = n < 0
    i = s0
    while i < s1:
        k = min(rows, s1 - i)
        for t in range(k):
            a = A[i + t, col : col + n]
            b = buf[t * n : (t + 1) * n]
            zmax = a[0]
            for j in range(1, n):
                zmax = a[j] if a[j] > zmax else zmax
            for j in range(n):
                b[j] = a[j] - zmax
        _exp_inplace(buf[0 : k * n], sigmoid)
        for t in range(k):
            a = A[i + t, col : col + n]
            b = buf[t * n : (t + 1) * n]
            s = b[0] - b[0]
            for j in range(n):
                s += b[j]
            inv = _1 / s
            for j in range(n):
                a[j] = b[j] * inv
        i += k


@njit(**_opts)
def _activate_rows(A, s0, s1, col, n, act):
    """Activation ``act`` in place on each row ``A[i, col:col + n]``, ``i`` in ``[s0, s1)``
    (the softmax of rows of up to ``SOFTMAX_BLOCK // 2`` in blocks of rows,
    :func:`_softmax_rows`)."""
    if act == SOFTMAX and 2 * n <= SOFTMAX_BLOCK:
        _softmax_rows(A, s0, s1, col, n)
    else:
        for i in range(s0, s1):
            _activate(A[i, col : col + n], act)


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
