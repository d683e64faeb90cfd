"""Numba kernels: forward pass, backpropagation, SGD update and the epoch driver.

Every kernel is a pure function over arrays it is given; nothing here allocates
in a hot loop.  The Python layer (:mod:`fastnn.network`) validates inputs and
allocates the buffers once.

Parameter layout
----------------
All parameters live in one contiguous vector ``theta``.  Layer ``l`` (mapping
``sizes[l]`` inputs to ``sizes[l+1]`` outputs) owns ``W`` of shape
``(n_out, n_in)`` in row-major order starting at ``offs[l]``, immediately
followed by its bias ``b`` of length ``n_out``.  The gradient has the same
layout.  Activations and deltas of a mini-batch live in ``(m, H)`` buffers with
``H = sum(sizes[1:])``; layer ``l``'s outputs occupy columns
``aoff[l]:aoff[l] + sizes[l+1]``.

What makes the kernels fast (measured on the 2-core test machine)
------------------------------------------------------------------
* Memory order: ``W`` is row-major ``(n_out, n_in)``, so a neuron's weights and
  a sample's inputs are contiguous rows; the long inner loop runs over ``n_in``
  (784 in the first layer) and vectorises to full-width SIMD.  ``fastmath``
  allows the reassociation a vectorised dot product needs, in the dot-product
  kernels only (elsewhere it made a kernel compute differently when compiled
  than when loaded from the cache; tested); ``nnan``/``ninf`` are left out so
  non-finite values are still detected.
* Row views, not ``base + k`` indexing: the inner loops index views
  (``w = theta[o:o + n_in]; w[k]``) with the loop counter.  With a computed
  offset Numba must allow for negative indices on every access, which stopped
  LLVM from vectorising: 3.6x slower for the first layer.
* Precision: float32 constants (``_0``, ``_1``) instead of float literals,
  which Numba promotes to float64 (the float32 kernels had been accumulating in
  double precision, at half the speed).
* Blocking over the mini-batch: eight samples x two neurons at a time (16
  accumulators), so each weight row is loaded once per eight samples and each
  input row once per two neurons in the forward pass; the same blocking in the
  weight gradient, where each gradient row is then read and written once per
  eight samples.  Then four samples x two neurons, and the last samples one at
  a time over four (forward) or two (gradient) neurons.  First-layer forward
  of W1: 52 GFLOP/s per core unblocked, about 2x that with four samples.
  Eight instead of four: W3 on 2 threads 0.155 to 0.138 s (the first layer's
  ``W`` and gradient, 400 KB each, stream from L2 half as often), W4 batch
  2.3 to 2.05 ms, W1 at batch 1024 0.027 to 0.025 s.
* Work split: a mini-batch is cut into ``n_chunks`` contiguous chunks that run
  in parallel (``prange``), each accumulating a private gradient.  The layout
  depends only on the batch size and the parameter count (never on the thread
  count) and chunk gradients are summed in chunk order, so trained weights are
  bit-identical whatever ``numba.set_num_threads`` says.  One parallel region
  per mini-batch (about 2 us with the OpenMP layer).
* Small mini-batches (8-32 samples) of networks whose first layer holds
  nearly all parameters (W1, W2) split the *first layer by neurons* instead
  (:func:`train_epoch_split`).  The whole epoch is one parallel region: a
  team of one member per thread, each owning a range of neuron pairs whose
  rows of ``W`` stay in its core's cache all epoch.  Per step a member runs
  the small later layers itself (every member the same, on a private copy of
  their parameters), updates its own rows with the step's deltas and at once
  computes their outputs for the next mini-batch; then one spin barrier
  (atomic counter).  Only first-layer outputs cross cores.  On this VM a
  cache line takes 50 ns from core to core in some hours and 200 ns in
  others, and the per-step fork/join of ``prange`` (about 2.3 us, plus the
  lines it moves) had made two threads slower than one in the slow hours.
  W1 on 2 threads: 48 ms, against 58-65 ms with a parallel region per step
  and 60-64 ms splitting the batch; W2: 63 ms against 77 ms.  The next
  mini-batch's input rows (random rows of the training set) are prefetched
  one step ahead (``llvm.prefetch``): 80 to 70 ms on one thread.  Each
  neuron pair runs over the mini-batch in groups of four or five samples,
  whichever recomputes fewer (:func:`_group_size`); buffers and the parameter
  vector are cache-line aligned so that no line is written by two members.
* Wider first layers (32 neurons or more, at least 80% of the parameters;
  W3) use the same kind of team in :func:`train_epoch_hybrid`: each member
  owns blocks of 16 first-layer neurons, computes their outputs for the whole
  mini-batch and later updates their rows in place (no gradient buffer for
  the first layer), while the later layers run by fixed sample chunks.  Two
  barriers per step.  Splitting W3's batch moved chunk gradients and updated
  parameters (about 440 KB) between cores every step and ran 0.20-0.235 s in
  the VM's slow hours; this moves about 40 KB.  W3 on 2 threads: 0.113 s
  against 0.131 s in the same (fast) hour; 784-128-64-10 at batch 10: 0.25 s
  against 0.56 s.
* A mini-batch of fewer than eight samples is one chunk and runs without a
  parallel region (W1 at batch 1 on 2 threads: 0.33 s with, 0.21 s without).
* The update pass sums the chunk gradients, updates ``theta`` and zeroes the
  buffers in one sweep.  When each worker zeroed its own buffer at the start
  of a step, the buffer's cache lines crossed cores twice per step and two
  threads were *slower* than one at batch 10 (128 ms against 86 ms per W1
  epoch); now they are faster (about 60 ms against 78 ms).
* Inference checks its input for NaN/inf on the way: the forward kernel counts
  non-finite first-layer pre-activations instead of the Python layer scanning
  ``X`` first (which alone took longer than the forward pass of W4).

* Sparse inputs (MNIST pixels are 81% zero; at most 40% non-zero, first
  layers of at most 32 neurons) train with :func:`train_epoch_sparse`, which
  skips the zeros: the first layer's ``W`` transposed, so that one input's
  weights to 16 neurons are one AVX-512 vector, and per non-zero input one
  vector multiply-add forward and one in the update (W1 on 2 threads: 24-25
  ms against 41-44 ms dense; W2 28 ms against 54 ms; all batch sizes of W1
  1.2-2.9x).  Three things made it pay, where an earlier sparse first layer
  written as a Numba loop over the 16 neurons ran 1.5-3x *slower* than
  dense: (1) LLVM fully unrolls a 16-iteration loop and then did not
  vectorise it (16 scalar multiply-adds, each stored back, as it cannot rule
  out that the accumulator and ``W`` overlap), so the lane kernels
  (:func:`_lanes_sparse_dot`, :func:`_lanes_sparse_axpy`) are written in
  LLVM IR with vector types; (2) a sample's non-zeros sit at a random place
  in memory: without prefetching (two mini-batches ahead) the forward pass
  took 19 ms of memory waits against 4 ms; (3) int16 column indices (2.5
  ms).  Every member keeps a whole private copy of the parameters and
  applies every update itself, so weights never cross cores.  The later
  layers stay on the dense chunk kernels: running them in lane vectors too
  (both layouts of ``W``) was 15% slower, sample by sample 40% slower.
* Sigmoid and softmax compute ``exp`` in vector registers
  (:func:`_exp_inplace`: no libm call, within one ulp), in blocks of 16 and 8
  with constant trip counts; with the plain loop LLVM's vectorised body
  wanted 64 elements, and activation vectors of 10-16 ran as scalars.

What did not pay: prefetching in the sample-split driver (no gain); chunks
of fewer than four samples lose the blocking.  Nor did sharing the blocked
dot-product loops between :func:`_dense_forward` and :func:`_rows_forward`
through a helper returning the eight sums: W1 on one thread 3-7% slower, so
the loops stay written out.
"""

import platform

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from .layout import SIGMOID, RELU, TANH, QUADRATIC, CROSS_ENTROPY

MAX_CHUNKS = 8
SPLIT_MIN_BATCH = 8
SPLIT_MAX_BATCH = 32
SPLIT_MIN_SHARE = 0.95
HYBRID_MIN_SHARE = 0.8
UPDATE_BLOCK = 8192
PARALLEL_UPDATE_MIN = 65536
_HYBRID_BLOCK = 16  # first-layer neurons per block of the hybrid driver (whole cache lines)
_CLOSED = 1 << 40  # marks a closed team in the join counter
_PATIENCE = 1 << 20  # spins (about 10-30 ms) to wait for the team's members
_SPINS_BEFORE_YIELD = 2000  # a barrier wait longer than this (tens of us) yields the CPU
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_HAS_SCHED_YIELD = platform.system() in ("Linux", "Darwin", "FreeBSD")

# contract lets LLVM fuse multiply-adds; no nnan/ninf so that non-finite values are still
# detected.  error_model="numpy": a float division by zero gives inf/nan (caught by the
# Python layer as divergence) instead of raising inside a parallel region.
_opts = dict(cache=True, fastmath={"contract", "nsz"}, nogil=True, error_model="numpy")
# reassoc as well, only for the dot products, whose sums must be reordered to vectorise.
# Everywhere else it let LLVM rewrite expressions differently when a kernel was compiled
# than when the same kernel was loaded from Numba's cache (the sigmoid derivative
# a*(1-a)), so a first run trained to other weights than every later one.
_dot_opts = dict(_opts, fastmath={"reassoc", "contract", "nsz"})

# float32 constants: Numba promotes float32 (op) float64-literal to float64, so
# plain ``1.0`` would silently run float32 kernels in double precision.  A
# float32 constant keeps float32 arithmetic in float32 and float64 in float64.
_0 = np.float32(0.0)
_1 = np.float32(1.0)


def _item_pointer(context, builder, signature, args):
    """LLVM pointer to ``arr[index]`` for an intrinsic called as ``f(arr, index, ...)``."""
    aryty, idxty = signature.args[0], signature.args[1]
    ary = context.make_array(aryty)(context, builder, args[0])
    idx = context.cast(builder, args[1], idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [idx], wraparound=False)


@intrinsic
def _prefetch(typingctx, arr, index):
    """Hint the CPU to start loading the cache line of ``arr[index]`` (1-D array).

    ``llvm.prefetch``: no effect on results, never faults.  Used to fetch the
    next mini-batch's input rows (random rows of the training set) while the
    current one is computed.
    """
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and isinstance(index, types.Integer)):
        return None
    sig = types.void(arr, index)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature, args)
        if getattr(ptr.type, "is_opaque", False):
            name = "llvm.prefetch.p0"
        else:  # typed pointers (older llvmlite)
            ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
            name = "llvm.prefetch.p0i8"
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name)
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _atomic_add(typingctx, arr, index, value):
    """``arr[index] += value`` as one atomic read-modify-write; returns the old value."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64
            and isinstance(index, types.Integer) and isinstance(value, types.Integer)):
        return None
    sig = types.int64(arr, index, value)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature, args)
        val = context.cast(builder, args[2], signature.args[2], types.int64)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")
    return sig, codegen


@intrinsic
def _atomic_load(typingctx, arr, index):
    """``arr[index]`` read with acquire ordering (never cached in a register)."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64
            and isinstance(index, types.Integer)):
        return None
    sig = types.int64(arr, index)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature, args)
        return builder.load_atomic(ptr, "acquire", 8)
    return sig, codegen


@intrinsic
def _atomic_cas(typingctx, arr, index, expected, new):
    """Set ``arr[index] = new`` if it equals ``expected``, atomically; returns the old value."""
    if not (isinstance(arr, types.Array) and arr.ndim == 1 and arr.dtype == types.int64
            and isinstance(index, types.Integer) and isinstance(expected, types.Integer)
            and isinstance(new, types.Integer)):
        return None
    sig = types.int64(arr, index, expected, new)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature, args)
        exp = context.cast(builder, args[2], signature.args[2], types.int64)
        val = context.cast(builder, args[3], signature.args[3], types.int64)
        res = builder.cmpxchg(ptr, exp, val, "seq_cst", "seq_cst")
        return builder.extract_value(res, 0)
    return sig, codegen


@intrinsic
def _yield_cpu(typingctx):
    """Give the CPU to another runnable thread (``sched_yield``; nothing where it is missing)."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _HAS_SCHED_YIELD:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _spin_pause(typingctx):
    """The CPU's spin-wait hint (``pause`` on x86), nothing elsewhere."""
    sig = types.void()

    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return sig, codegen


# ----------------------------------------------------------------------------
# lane vectors: 16 neurons at a time, for sparse inputs
# ----------------------------------------------------------------------------

LANES = 16  # neurons per lane vector: one AVX-512 register of float32 (two of float64)


def _lane_vector_args(W, idx, val, vec):
    """Whether the arrays fit :func:`_lanes_sparse_dot` / :func:`_lanes_sparse_axpy`."""
    return (isinstance(W, types.Array) and W.ndim == 1 and isinstance(W.dtype, types.Float)
            and all(isinstance(a, types.Array) and a.ndim == 1 and a.dtype == W.dtype
                    for a in (val, vec))
            and isinstance(idx, types.Array) and idx.ndim == 1
            and isinstance(idx.dtype, types.Integer))


def _lane_vector_codegen(context, builder, signature, args):
    """Shared set-up of the lane-vector intrinsics: arrays, offsets as intp, vector type."""
    Wt, _, _, It, Vt, _, _, St, _ = signature.args[:9]
    arrays = [context.make_array(t)(context, builder, a)
              for t, a in ((Wt, args[0]), (It, args[3]), (Vt, args[4]), (St, args[7]))]
    ints = [context.cast(builder, args[k], signature.args[k], types.intp) for k in (1, 2, 5, 6, 8)]
    vty = ir.VectorType(context.get_value_type(Wt.dtype), LANES)

    def ptr(which, index):
        t = (Wt, It, Vt, St)[which]
        return cgutils.get_item_pointer(context, builder, t, arrays[which], [index],
                                        wraparound=False)

    def vptr(which, index):
        return builder.bitcast(ptr(which, index), vty.as_pointer())

    def row(p, woff, ld):  # pointer to the lane vector of W for non-zero number p
        i = context.cast(builder, builder.load(ptr(1, p)), It.dtype, types.intp)
        return vptr(0, builder.add(woff, builder.mul(i, ld)))

    def splat(x):
        i32 = ir.IntType(32)
        v = builder.insert_element(ir.Constant(vty, ir.Undefined), x, i32(0))
        return builder.shuffle_vector(v, ir.Constant(vty, ir.Undefined),
                                      ir.Constant(ir.VectorType(i32, LANES), [0] * LANES))

    def fma(a, b, c):
        name = "llvm.fma.v%d%s" % (LANES, "f32" if Wt.dtype == types.float32 else "f64")
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3), name)
        return builder.call(fn, [a, b, c])

    return ints, vty, Wt.dtype.bitwidth // 8, ptr, vptr, row, splat, fma


@intrinsic
def _lanes_sparse_dot(typingctx, W, woff, ld, idx, val, p0, p1, dst, doff):
    """``dst[doff:doff+16] += sum_p val[p] * W[woff + idx[p]*ld : +16]`` over ``p in [p0, p1)``.

    The forward pass of 16 neurons over one sparse input (``idx``/``val`` its
    non-zero positions and values): one vector multiply-add per non-zero,
    four independent accumulators, summed pairwise at the end.  ``W`` is the
    layer's weights transposed, ``ld`` values per input.  No bounds checks:
    the caller guarantees every index.
    """
    if not _lane_vector_args(W, idx, val, dst):
        return None
    sig = types.void(W, woff, ld, idx, val, p0, p1, dst, doff)

    def codegen(context, builder, signature, args):
        (woff_, ld_, p0_, p1_, doff_), vty, align, ptr, vptr, row, splat, fma = \
            _lane_vector_codegen(context, builder, signature, args)
        intp = context.get_value_type(types.intp)
        zero = ir.Constant(vty, [0.0] * LANES)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]

        def term(p, acc):
            w = builder.load(row(p, woff_, ld_), align=align)
            builder.store(fma(splat(builder.load(ptr(2, p))), w, builder.load(acc)), acc)

        nq = builder.sdiv(builder.sub(p1_, p0_), intp(4))
        with cgutils.for_range(builder, nq) as loop:
            base = builder.add(p0_, builder.mul(loop.index, intp(4)))
            for k in range(4):
                term(builder.add(base, intp(k)), accs[k])
        tail = builder.add(p0_, builder.mul(nq, intp(4)))
        with cgutils.for_range(builder, builder.sub(p1_, tail)) as loop:
            term(builder.add(tail, loop.index), accs[0])
        a = [builder.load(acc) for acc in accs]
        total = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
        dp = vptr(3, doff_)
        builder.store(builder.fadd(builder.load(dp, align=align), total), dp, align=align)
        return context.get_dummy_value()
    return sig, codegen


@intrinsic
def _lanes_sparse_axpy(typingctx, W, woff, ld, idx, val, p0, p1, src, soff, alpha):
    """``W[woff + idx[p]*ld : +16] += (alpha * val[p]) * src[soff:soff+16]`` for ``p in [p0, p1)``.

    The weight update of 16 neurons from one sparse input: only the rows of
    its non-zero inputs move.  ``src`` must not overlap ``W``.  No bounds
    checks: the caller guarantees every index.
    """
    if not (_lane_vector_args(W, idx, val, src) and isinstance(alpha, types.Float)):
        return None
    sig = types.void(W, woff, ld, idx, val, p0, p1, src, soff, alpha)

    def codegen(context, builder, signature, args):
        (woff_, ld_, p0_, p1_, soff_), vty, align, ptr, vptr, row, splat, fma = \
            _lane_vector_codegen(context, builder, signature, args)
        a = context.cast(builder, args[9], signature.args[9], signature.args[0].dtype)
        d = builder.load(vptr(3, soff_), align=align)
        with cgutils.for_range(builder, builder.sub(p1_, p0_)) as loop:
            p = builder.add(p0_, loop.index)
            wp = row(p, woff_, ld_)
            x = splat(builder.fmul(a, builder.load(ptr(2, p))))
            builder.store(fma(x, d, builder.load(wp, align=align)), wp, align=align)
        return context.get_dummy_value()
    return sig, codegen


def update_blocks(sizes, offs):
    """Fixed blocks ``(start, stop, is_weight)`` covering the parameter vector."""
    blocks = []
    for l in range(len(sizes) - 1):
        n_in, n_out = sizes[l], sizes[l + 1]
        w0 = offs[l]
        b0 = w0 + n_in * n_out
        for lo, hi, is_w in ((w0, b0, 1), (b0, b0 + n_out, 0)):
            for s in range(lo, hi, UPDATE_BLOCK):
                blocks.append((s, min(s + UPDATE_BLOCK, hi), is_w))
    return np.array(blocks, dtype=np.int64)


@intrinsic
def _times_pow2(typingctx, p, k):
    """``p * 2**k`` for a float ``p`` and an integer ``k`` in the normal exponent range.

    ``2**k`` is built from its bits (exponent field ``k + bias``), so a loop
    of these vectorises where a call to ``ldexp`` would not.
    """
    if not (isinstance(p, types.Float) and isinstance(k, types.Integer)):
        return None
    sig = p(p, k)

    def codegen(context, builder, signature, args):
        bits = p.bitwidth
        ity = ir.IntType(bits)
        mant, bias = (23, 127) if bits == 32 else (52, 1023)
        ki = context.cast(builder, args[1], signature.args[1], types.int64)
        ki = builder.trunc(ki, ity) if bits == 32 else ki
        scale = builder.bitcast(builder.shl(builder.add(ki, ity(bias)), ity(mant)),
                                context.get_value_type(p))
        return builder.fmul(args[0], scale)
    return sig, codegen


# exp(r) on |r| <= ln(2)/2 as a polynomial: Taylor terms to r**7 in float32 (truncation
# below 2e-8, under one ulp) and to r**13 in float64 (below 1e-17).
_INV_FACT32 = tuple(np.float32(1.0 / np.prod(np.arange(1.0, k + 1))) for k in range(8))
_INV_FACT64 = tuple(1.0 / float(np.prod(np.arange(1.0, k + 1))) for k in range(14))
_LOG2E32, _LN2_HI32, _LN2_LO32 = np.float32(1.4426950408889634), np.float32(0.693359375), \
    np.float32(-2.12194440e-4)
_LN2_HI64, _LN2_LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_EXP_MAX32, _EXP_MIN32 = np.float32(88.3), np.float32(-87.3)


@njit(inline="always", **_opts)
def _exp32(x):
    """exp(x) in float32 (see :func:`_exp_inplace`)."""
    x = _EXP_MAX32 if x > _EXP_MAX32 else x
    x = _EXP_MIN32 if x < _EXP_MIN32 else x
    k = np.floor(x * _LOG2E32 + np.float32(0.5))
    r = (x - k * _LN2_HI32) - k * _LN2_LO32
    c = _INV_FACT32
    p = c[7]
    for i in range(6, -1, -1):
        p = p * r + c[i]
    return _times_pow2(p, np.int32(k))


@njit(inline="always", **_opts)
def _exp64(x):
    """exp(x) in float64 (see :func:`_exp_inplace`)."""
    x = 709.0 if x > 709.0 else x
    x = -708.0 if x < -708.0 else x
    k = np.floor(x * 1.4426950408889634 + 0.5)
    r = (x - k * _LN2_HI64) - k * _LN2_LO64
    c = _INV_FACT64
    p = c[13]
    for i in range(12, -1, -1):
        p = p * r + c[i]
    return _times_pow2(p, np.int64(k))


@njit(inline="always", **_opts)
def _exp_or_sigmoid(x, sigmoid, f32):
    """``1/(1 + exp(-x))`` if ``sigmoid``, else ``exp(x)``; float32 maths if ``f32``."""
    if sigmoid:
        e = _exp32(-x) if f32 else _exp64(-x)
        return (x - x + _1) / (_1 + e)
    return _exp32(x) if f32 else _exp64(x)


@njit(**_opts)
def _exp_inplace(a, sigmoid=False):
    """``a[j] = exp(a[j])`` (or the sigmoid ``1/(1 + exp(-a[j]))``) in vector registers.

    No call to libm: range reduction ``x = k ln2 + r`` (ln2 in two parts,
    Cody-Waite, which reassociation would undo: no ``reassoc`` here), a
    polynomial for ``exp(r)`` and ``2**k`` from its bits; within one ulp of
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
        b = a[j:j + 16]
        for t in range(16):
            b[t] = _exp_or_sigmoid(b[t], sigmoid, f32)
        j += 16
    if j + 8 <= n:
        b = a[j:j + 8]
        for t in range(8):
            b[t] = _exp_or_sigmoid(b[t], sigmoid, f32)
        j += 8
    for t in range(j, n):
        a[t] = _exp_or_sigmoid(a[t], sigmoid, f32)

# ----------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------

@njit(**_opts)
def _activate(a, act):
    """Apply activation ``act`` in place to the vector ``a``."""
    n = a.shape[0]
    if act == SIGMOID:
        _exp_inplace(a, True)
    elif act == RELU:
        for j in range(n):
            if a[j] < _0:
                a[j] = _0
    elif act == TANH:
        for j in range(n):
            a[j] = np.tanh(a[j])
    else:  # SOFTMAX
        zmax = a[0]
        for j in range(1, n):
            if a[j] > zmax:
                zmax = a[j]
        for j in range(n):
            a[j] -= zmax
        _exp_inplace(a)
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
    else:  # TANH
        return _1 - a * a


# Inner loops index row *views* (w[k], x0[k]) with the loop counter, never
# base + k: Numba must otherwise handle negative indices on every access,
# which stops LLVM from vectorising (3.6x slower for the first layer).

@njit(**_dot_opts)
def _dense_forward(theta, woff, boff, n_in, n_out, src, rows, c0, dst, d0, s0, s1):
    """dst[i, d0+j] = b[j] + sum_k W[j, k] * src[rows[i], c0+k] for i in [s0, s1).

    ``W`` (row-major, ``n_out`` rows) starts at ``theta[woff]`` and ``b`` at ``theta[boff]``.
    """
    b = theta[boff:boff + n_out]
    zero = theta[0] * _0
    i = s0
    while i + 8 <= s1:  # two neurons x eight samples: 16 accumulators
        x0 = src[rows[i], c0:c0 + n_in]
        x1 = src[rows[i + 1], c0:c0 + n_in]
        x2 = src[rows[i + 2], c0:c0 + n_in]
        x3 = src[rows[i + 3], c0:c0 + n_in]
        x4 = src[rows[i + 4], c0:c0 + n_in]
        x5 = src[rows[i + 5], c0:c0 + n_in]
        x6 = src[rows[i + 6], c0:c0 + n_in]
        x7 = src[rows[i + 7], c0:c0 + n_in]
        j = 0
        while j < n_out:
            nj = min(2, n_out - j)
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            v = theta[woff + (j + nj - 1) * n_in:woff + (j + nj) * n_in]  # w when nj == 1
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            a4 = zero
            a5 = zero
            a6 = zero
            a7 = zero
            c0_ = zero
            c1_ = zero
            c2_ = zero
            c3_ = zero
            c4_ = zero
            c5_ = zero
            c6_ = zero
            c7_ = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
                a4 += w[k] * x4[k]
                a5 += w[k] * x5[k]
                a6 += w[k] * x6[k]
                a7 += w[k] * x7[k]
                c0_ += v[k] * x0[k]
                c1_ += v[k] * x1[k]
                c2_ += v[k] * x2[k]
                c3_ += v[k] * x3[k]
                c4_ += v[k] * x4[k]
                c5_ += v[k] * x5[k]
                c6_ += v[k] * x6[k]
                c7_ += v[k] * x7[k]
            bj = b[j]
            dst[i, d0 + j] = a0 + bj
            dst[i + 1, d0 + j] = a1 + bj
            dst[i + 2, d0 + j] = a2 + bj
            dst[i + 3, d0 + j] = a3 + bj
            dst[i + 4, d0 + j] = a4 + bj
            dst[i + 5, d0 + j] = a5 + bj
            dst[i + 6, d0 + j] = a6 + bj
            dst[i + 7, d0 + j] = a7 + bj
            if nj == 2:
                bv = b[j + 1]
                dst[i, d0 + j + 1] = c0_ + bv
                dst[i + 1, d0 + j + 1] = c1_ + bv
                dst[i + 2, d0 + j + 1] = c2_ + bv
                dst[i + 3, d0 + j + 1] = c3_ + bv
                dst[i + 4, d0 + j + 1] = c4_ + bv
                dst[i + 5, d0 + j + 1] = c5_ + bv
                dst[i + 6, d0 + j + 1] = c6_ + bv
                dst[i + 7, d0 + j + 1] = c7_ + bv
            j += nj
        i += 8
    while i + 4 <= s1:
        x0 = src[rows[i], c0:c0 + n_in]
        x1 = src[rows[i + 1], c0:c0 + n_in]
        x2 = src[rows[i + 2], c0:c0 + n_in]
        x3 = src[rows[i + 3], c0:c0 + n_in]
        j = 0
        while j + 2 <= n_out:  # two neurons x four samples: 8 accumulators
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            v = theta[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            c0_ = zero
            c1_ = zero
            c2_ = zero
            c3_ = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
                c0_ += v[k] * x0[k]
                c1_ += v[k] * x1[k]
                c2_ += v[k] * x2[k]
                c3_ += v[k] * x3[k]
            dst[i, d0 + j] = a0 + b[j]
            dst[i + 1, d0 + j] = a1 + b[j]
            dst[i + 2, d0 + j] = a2 + b[j]
            dst[i + 3, d0 + j] = a3 + b[j]
            dst[i, d0 + j + 1] = c0_ + b[j + 1]
            dst[i + 1, d0 + j + 1] = c1_ + b[j + 1]
            dst[i + 2, d0 + j + 1] = c2_ + b[j + 1]
            dst[i + 3, d0 + j + 1] = c3_ + b[j + 1]
            j += 2
        while j < n_out:
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += w[k] * x1[k]
                a2 += w[k] * x2[k]
                a3 += w[k] * x3[k]
            dst[i, d0 + j] = a0 + b[j]
            dst[i + 1, d0 + j] = a1 + b[j]
            dst[i + 2, d0 + j] = a2 + b[j]
            dst[i + 3, d0 + j] = a3 + b[j]
            j += 1
        i += 4
    while i < s1:  # remaining samples one by one, four neurons at a time
        x0 = src[rows[i], c0:c0 + n_in]
        j = 0
        while j + 4 <= n_out:
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            v = theta[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            u = theta[woff + (j + 2) * n_in:woff + (j + 3) * n_in]
            t = theta[woff + (j + 3) * n_in:woff + (j + 4) * n_in]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                a1 += v[k] * x0[k]
                a2 += u[k] * x0[k]
                a3 += t[k] * x0[k]
            dst[i, d0 + j] = a0 + b[j]
            dst[i, d0 + j + 1] = a1 + b[j + 1]
            dst[i, d0 + j + 2] = a2 + b[j + 2]
            dst[i, d0 + j + 3] = a3 + b[j + 3]
            j += 4
        while j < n_out:
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            a0 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
            dst[i, d0 + j] = a0 + b[j]
            j += 1
        i += 1


@njit(**_opts)
def _dense_grad(g, woff, boff, n_in, n_out, D, e0, src, rows, c0, s0, s1):
    """g[W_jk] += sum_i D[i, e0+j] * src[rows[i], c0+k];  g[b_j] += sum_i D[i, e0+j].

    The ``W`` part starts at ``g[woff]``, the ``b`` part at ``g[boff]``.
    """
    gb = g[boff:boff + n_out]
    i = s0
    while i + 8 <= s1:  # eight samples x two neurons: each gradient row read and written once
        x0 = src[rows[i], c0:c0 + n_in]
        x1 = src[rows[i + 1], c0:c0 + n_in]
        x2 = src[rows[i + 2], c0:c0 + n_in]
        x3 = src[rows[i + 3], c0:c0 + n_in]
        x4 = src[rows[i + 4], c0:c0 + n_in]
        x5 = src[rows[i + 5], c0:c0 + n_in]
        x6 = src[rows[i + 6], c0:c0 + n_in]
        x7 = src[rows[i + 7], c0:c0 + n_in]
        j = 0
        while j < n_out:
            nj = min(2, n_out - j)
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            gv = g[woff + (j + nj - 1) * n_in:woff + (j + nj) * n_in]  # unused when nj == 1
            d0 = D[i, e0 + j]
            d1 = D[i + 1, e0 + j]
            d2 = D[i + 2, e0 + j]
            d3 = D[i + 3, e0 + j]
            d4 = D[i + 4, e0 + j]
            d5 = D[i + 5, e0 + j]
            d6 = D[i + 6, e0 + j]
            d7 = D[i + 7, e0 + j]
            if nj == 2:
                f0 = D[i, e0 + j + 1]
                f1 = D[i + 1, e0 + j + 1]
                f2 = D[i + 2, e0 + j + 1]
                f3 = D[i + 3, e0 + j + 1]
                f4 = D[i + 4, e0 + j + 1]
                f5 = D[i + 5, e0 + j + 1]
                f6 = D[i + 6, e0 + j + 1]
                f7 = D[i + 7, e0 + j + 1]
                for k in range(n_in):
                    gw[k] += (((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
                              + ((d4 * x4[k] + d5 * x5[k]) + (d6 * x6[k] + d7 * x7[k])))
                    gv[k] += (((f0 * x0[k] + f1 * x1[k]) + (f2 * x2[k] + f3 * x3[k]))
                              + ((f4 * x4[k] + f5 * x5[k]) + (f6 * x6[k] + f7 * x7[k])))
                gb[j + 1] += ((f0 + f1) + (f2 + f3)) + ((f4 + f5) + (f6 + f7))
            else:
                for k in range(n_in):
                    gw[k] += (((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
                              + ((d4 * x4[k] + d5 * x5[k]) + (d6 * x6[k] + d7 * x7[k])))
            gb[j] += ((d0 + d1) + (d2 + d3)) + ((d4 + d5) + (d6 + d7))
            j += nj
        i += 8
    while i + 4 <= s1:
        x0 = src[rows[i], c0:c0 + n_in]
        x1 = src[rows[i + 1], c0:c0 + n_in]
        x2 = src[rows[i + 2], c0:c0 + n_in]
        x3 = src[rows[i + 3], c0:c0 + n_in]
        j = 0
        while j + 2 <= n_out:  # two neurons x four samples
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            gv = g[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            d0 = D[i, e0 + j]
            d1 = D[i + 1, e0 + j]
            d2 = D[i + 2, e0 + j]
            d3 = D[i + 3, e0 + j]
            e0_ = D[i, e0 + j + 1]
            e1_ = D[i + 1, e0 + j + 1]
            e2_ = D[i + 2, e0 + j + 1]
            e3_ = D[i + 3, e0 + j + 1]
            for k in range(n_in):
                gw[k] += (d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])
                gv[k] += (e0_ * x0[k] + e1_ * x1[k]) + (e2_ * x2[k] + e3_ * x3[k])
            gb[j] += (d0 + d1) + (d2 + d3)
            gb[j + 1] += (e0_ + e1_) + (e2_ + e3_)
            j += 2
        while j < n_out:
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            d0 = D[i, e0 + j]
            d1 = D[i + 1, e0 + j]
            d2 = D[i + 2, e0 + j]
            d3 = D[i + 3, e0 + j]
            for k in range(n_in):
                gw[k] += (d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k])
            gb[j] += (d0 + d1) + (d2 + d3)
            j += 1
        i += 4
    while i < s1:  # remaining samples one by one, two neurons at a time
        x0 = src[rows[i], c0:c0 + n_in]
        j = 0
        while j + 2 <= n_out:
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            gv = g[woff + (j + 1) * n_in:woff + (j + 2) * n_in]
            d0 = D[i, e0 + j]
            e0_ = D[i, e0 + j + 1]
            for k in range(n_in):
                gw[k] += d0 * x0[k]
                gv[k] += e0_ * x0[k]
            gb[j] += d0
            gb[j + 1] += e0_
            j += 2
        while j < n_out:
            gw = g[woff + j * n_in:woff + (j + 1) * n_in]
            d0 = D[i, e0 + j]
            for k in range(n_in):
                gw[k] += d0 * x0[k]
            gb[j] += d0
            j += 1
        i += 1


@njit(**_opts)
def _dense_backprop(theta, woff, n_in, n_out, D, e0, A, a0, act, s0, s1):
    """D[i, a0+k] = (sum_j W[j, k] * D[i, e0+j]) * act'(A[i, a0+k])."""
    i = s0
    while i < s1:
        nb = 4 if i + 4 <= s1 else 1
        for t in range(nb):
            D[i + t, a0:a0 + n_in] = 0.0
        if nb == 4:
            t0 = D[i, a0:a0 + n_in]
            t1 = D[i + 1, a0:a0 + n_in]
            t2 = D[i + 2, a0:a0 + n_in]
            t3 = D[i + 3, a0:a0 + n_in]
            for j in range(n_out):
                w = theta[woff + j * n_in:woff + (j + 1) * n_in]
                d0 = D[i, e0 + j]
                d1 = D[i + 1, e0 + j]
                d2 = D[i + 2, e0 + j]
                d3 = D[i + 3, e0 + j]
                for k in range(n_in):
                    t0[k] += w[k] * d0
                    t1[k] += w[k] * d1
                    t2[k] += w[k] * d2
                    t3[k] += w[k] * d3
        else:
            t0 = D[i, a0:a0 + n_in]
            for j in range(n_out):
                w = theta[woff + j * n_in:woff + (j + 1) * n_in]
                d0 = D[i, e0 + j]
                for k in range(n_in):
                    t0[k] += w[k] * d0
        for t in range(nb):
            dt = D[i + t, a0:a0 + n_in]
            at = A[i + t, a0:a0 + n_in]
            for k in range(n_in):
                dt[k] *= _derivative(at[k], act)
        i += nb


@njit(**_opts)
def _count_nonfinite(a):
    bad = 0
    for j in range(a.shape[0]):
        if not np.isfinite(a[j]):
            bad += 1
    return bad


@njit(**_opts)
def _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1):
    """Forward pass of samples ``rows[s0:s1]`` of ``X``; outputs into ``A[s0:s1]``.

    Returns the number of first-layer pre-activations that are not finite
    (inference uses it to reject NaN/inf input; training ignores it).
    """
    L = sizes.shape[0] - 1
    bad = 0
    for l in range(L):
        n_in, n_out = sizes[l], sizes[l + 1]
        boff = offs[l] + n_in * n_out
        if l == 0:
            _dense_forward(theta, offs[0], boff, n_in, n_out, X, rows, 0, A, aoff[0], s0, s1)
            for i in range(s0, s1):
                bad += _count_nonfinite(A[i, aoff[0]:aoff[0] + n_out])
        else:
            _dense_forward(theta, offs[l], boff, n_in, n_out, A, ident, aoff[l - 1], A, aoff[l],
                           s0, s1)
        act = out if l == L - 1 else hid
        for i in range(s0, s1):
            _activate(A[i, aoff[l]:aoff[l] + sizes[l + 1]], act)
    return bad


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
            c -= np.log(max(p, 1e-300))
        elif j == label:  # LOG_LOSS
            c -= np.log(max(a[j], 1e-300))
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
        c, best = _output_delta(A[i, c0:c0 + sizes[L]], D[i, c0:c0 + sizes[L]], lab, out, cost)
        total += c
        if best == lab:
            correct += 1
    return total, correct


@njit(**_opts)
def _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident,
                    A, D, G, gc, s0, s1):
    """Forward + backprop of samples ``s0:s1``; gradient *sums* added into ``G[gc]``.

    Returns (sum of costs, number of correct predictions) of those samples.
    """
    L = sizes.shape[0] - 1
    g = G[gc]  # all zeros on entry (the update pass leaves it so)
    _forward_chunk(theta, sizes, offs, aoff, hid, out, X, rows, ident, A, s0, s1)
    total, correct = _output_deltas(sizes, aoff, out, cost, y, rows, A, D, s0, s1)
    for l in range(L - 1, -1, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        boff = offs[l] + n_in * n_out
        if l == 0:
            _dense_grad(g, offs[0], boff, n_in, n_out, D, aoff[0], X, rows, 0, s0, s1)
        else:
            _dense_grad(g, offs[l], boff, n_in, n_out, D, aoff[l], A, ident, aoff[l - 1], s0, s1)
            _dense_backprop(theta, offs[l], n_in, n_out, D, aoff[l], A, aoff[l - 1], hid, s0, s1)
    return total, correct


@njit(**_opts)
def _update_block(theta, G, nc, lo, hi, is_w, step, keep):
    """theta[p] = keep*theta[p] - step * sum_c G[c, p] for p in [lo, hi) (keep = 1 for biases).

    The chunk gradients are summed in chunk order and set back to zero in the
    same pass, so the buffers are all zero when the next step starts.
    """
    th = theta[lo:hi]
    step = theta.dtype.type(step)  # update in the working precision, like the reference
    keep = theta.dtype.type(keep if is_w else 1.0)
    g0 = G[0, lo:hi]
    if nc == 1:
        for p in range(hi - lo):
            th[p] = keep * th[p] - step * g0[p]
            g0[p] = 0
    elif nc == 2:
        g1 = G[1, lo:hi]
        for p in range(hi - lo):
            th[p] = keep * th[p] - step * (g0[p] + g1[p])
            g0[p] = 0
            g1[p] = 0
    else:
        for c in range(1, nc):
            gc = G[c, lo:hi]
            for p in range(hi - lo):
                g0[p] += gc[p]
                gc[p] = 0
        for p in range(hi - lo):
            th[p] = keep * th[p] - step * g0[p]
            g0[p] = 0


@njit(**_opts)
def chunk_count(m, n_params):
    """Number of chunks a mini-batch of ``m`` samples is split into.

    Depends only on the batch size and the parameter count, so results do not
    depend on the number of threads.  Each chunk keeps a private gradient of
    ``n_params`` values; larger networks get larger chunks so that summing the
    chunk gradients stays cheap compared to computing them.
    """
    per_chunk = max(4, n_params // 4096)
    return max(1, min(MAX_CHUNKS, m // per_chunk))


@njit(parallel=True, **_opts)
def sgd_step(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G,
             blocks, par_update, eta, decay, stats):
    """One exact SGD step on the mini-batch ``X[rows]``, updating ``theta`` in place.

    The mini-batch is split into ``chunk_count`` chunks that run in parallel,
    then the chunk gradients are summed in chunk order and
    ``W <- (1 - eta*decay) W - eta/m sum grad``, ``b <- b - eta/m sum grad``.
    Returns (sum of per-sample costs, number of correct predictions), both
    measured before the update.
    """
    m = rows.shape[0]
    nc = chunk_count(m, G.shape[1])
    if nc == 1:  # no parallel region for one chunk: waking the threads would only cost time
        cs, cc = _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                                 ident, A, D, G, 0, 0, m)
        stats[0, 0] = cs
        stats[0, 1] = cc
    else:
        for c in prange(nc):
            s0 = c * m // nc
            s1 = (c + 1) * m // nc
            cs, cc = _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                                     ident, A, D, G, c, s0, s1)
            stats[c, 0] = cs
            stats[c, 1] = cc
    total = 0.0
    correct = 0.0
    for c in range(nc):
        total += stats[c, 0]
        correct += stats[c, 1]
    step = eta / m
    keep = 1.0 - eta * decay
    if par_update:
        for bi in prange(blocks.shape[0]):
            _update_block(theta, G, nc, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2], step, keep)
    else:
        for bi in range(blocks.shape[0]):
            _update_block(theta, G, nc, blocks[bi, 0], blocks[bi, 1], blocks[bi, 2], step, keep)
    return total, correct


@njit(**_opts)
def train_epoch(theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, ident, A, D, G,
                blocks, par_update, eta, decay, stats):
    """One epoch of SGD over ``X[perm]`` in mini-batches of ``m`` (the last may be smaller).

    The loop over mini-batches runs in compiled code; each step is one
    parallel region (:func:`sgd_step`).  Returns the sums of per-sample costs
    and of correct predictions, each measured on its mini-batch just before
    that mini-batch's update.
    """
    n = perm.shape[0]
    total = 0.0
    correct = 0.0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        cs, cc = sgd_step(theta, sizes, offs, aoff, hid, out, cost, X, y, perm[b0:b1], ident,
                          A, D, G, blocks, par_update, eta, decay, stats)
        total += cs
        correct += cc
    return total, correct


# ----------------------------------------------------------------------------
# small mini-batches: the first layer split by neurons
# ----------------------------------------------------------------------------

def use_neuron_split(sizes, m):
    """Whether mini-batches of ``m`` train faster with :func:`train_epoch_split`.

    True for small mini-batches (``SPLIT_MIN_BATCH`` to ``SPLIT_MAX_BATCH``)
    of networks with a hidden first layer holding at least ``SPLIT_MIN_SHARE``
    of the parameters (784-16-16-10: 97%, 784-30-10: 99%).  A choice of speed
    only: both epoch drivers compute the same SGD.
    """
    if len(sizes) < 3:
        return False
    n_first = sizes[0] * sizes[1] + sizes[1]
    total = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return SPLIT_MIN_BATCH <= m <= SPLIT_MAX_BATCH and n_first >= SPLIT_MIN_SHARE * total


@njit(**_opts)
def _group_size(m):
    """Samples per blocked group of the neuron split: 4 or 5, whichever computes fewer slots.

    A last partial group is recomputed as a whole group, so ``m`` samples cost
    ``ceil(m/g)*g`` slots: for the classic batch of 10, groups of five need 10
    slots where fours need 12 (W1 on 2 threads: 45 to 42 ms).  Ties go to five
    (fewer passes over the rows of ``W``).
    """
    if m < 5:
        return 4
    return 5 if (m + 4) // 5 * 5 <= (m + 3) // 4 * 4 else 4


@njit(**_opts)
def _rows_update(theta, bias, n_in, j, nj, X, rows, D, step, keep):
    """First layer, neurons ``j:j+nj`` (nj = 1 or 2): ``W <- keep*W - step*sum_i D[i,j] x_i``.

    ``x_i = X[rows[i]]``; the deltas are ``D[:, 0:n_out]``; the bias moves by
    ``-step * sum_i D[i, j]`` (``bias[j]``).  Samples go in groups of
    :func:`_group_size` (four or five); when fewer remain, the group is the last
    samples of the mini-batch with the deltas of those already counted set to
    zero, so every group runs a blocked loop and no sample counts twice.
    """
    m = rows.shape[0]
    w = theta[j * n_in:(j + 1) * n_in]
    v = theta[(j + nj - 1) * n_in:(j + nj) * n_in]  # the second row (w itself when nj == 1)
    zero = theta[0] * _0
    gs = _group_size(m)
    i = 0
    while i < m:
        kk = keep if i == 0 else keep - keep + _1
        if gs == 5:
            s = min(i, m - 5)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            x4 = X[rows[s + 4]]
            d0 = step * D[s, j] if s >= i else zero
            d1 = step * D[s + 1, j] if s + 1 >= i else zero
            d2 = step * D[s + 2, j] if s + 2 >= i else zero
            d3 = step * D[s + 3, j] if s + 3 >= i else zero
            d4 = step * D[s + 4, j]
            if nj == 2:
                e0 = step * D[s, j + 1] if s >= i else zero
                e1 = step * D[s + 1, j + 1] if s + 1 >= i else zero
                e2 = step * D[s + 2, j + 1] if s + 2 >= i else zero
                e3 = step * D[s + 3, j + 1] if s + 3 >= i else zero
                e4 = step * D[s + 4, j + 1]
                for k in range(n_in):
                    w[k] = kk * w[k] - (((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
                                        + d4 * x4[k])
                    v[k] = kk * v[k] - (((e0 * x0[k] + e1 * x1[k]) + (e2 * x2[k] + e3 * x3[k]))
                                        + e4 * x4[k])
            else:
                for k in range(n_in):
                    w[k] = kk * w[k] - (((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
                                        + d4 * x4[k])
            i = s + 5
        elif m >= 4:
            s = min(i, m - 4)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            d0 = step * D[s, j] if s >= i else zero
            d1 = step * D[s + 1, j] if s + 1 >= i else zero
            d2 = step * D[s + 2, j] if s + 2 >= i else zero
            d3 = step * D[s + 3, j]
            if nj == 2:
                e0 = step * D[s, j + 1] if s >= i else zero
                e1 = step * D[s + 1, j + 1] if s + 1 >= i else zero
                e2 = step * D[s + 2, j + 1] if s + 2 >= i else zero
                e3 = step * D[s + 3, j + 1]
                for k in range(n_in):
                    w[k] = kk * w[k] - ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
                    v[k] = kk * v[k] - ((e0 * x0[k] + e1 * x1[k]) + (e2 * x2[k] + e3 * x3[k]))
            else:
                for k in range(n_in):
                    w[k] = kk * w[k] - ((d0 * x0[k] + d1 * x1[k]) + (d2 * x2[k] + d3 * x3[k]))
            i = s + 4
        else:  # fewer than four samples in the whole mini-batch
            x0 = X[rows[i]]
            d0 = step * D[i, j]
            e0 = step * D[i, j + nj - 1]
            if nj == 2:
                for k in range(n_in):
                    w[k] = kk * w[k] - d0 * x0[k]
                    v[k] = kk * v[k] - e0 * x0[k]
            else:
                for k in range(n_in):
                    w[k] = kk * w[k] - d0 * x0[k]
            i += 1
    for t in range(nj):
        g = zero
        for i in range(m):
            g += D[i, j + t]
        bias[j + t] -= step * g


@njit(**_dot_opts)
def _rows_forward(theta, bias, n_in, j, nj, X, rows, E, act):
    """First layer, neurons ``j:j+nj``: ``E[j, i] = act(W[j] . X[rows[i]] + bias[j])`` for all i.

    Samples in groups of :func:`_group_size` (four or five); a last group of
    fewer is taken as the last samples of the mini-batch (recomputing some
    outputs, with identical results).
    """
    m = rows.shape[0]
    w = theta[j * n_in:(j + 1) * n_in]
    v = theta[(j + nj - 1) * n_in:(j + nj) * n_in]
    bw = bias[j]
    bv = bias[j + nj - 1]
    zero = theta[0] * _0
    gs = _group_size(m)
    i = 0
    while i < m:
        if gs == 5:
            s = min(i, m - 5)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            x4 = X[rows[s + 4]]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            a4 = zero
            if nj == 2:
                c0 = zero
                c1 = zero
                c2 = zero
                c3 = zero
                c4 = zero
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
                    a4 += w[k] * x4[k]
                    c0 += v[k] * x0[k]
                    c1 += v[k] * x1[k]
                    c2 += v[k] * x2[k]
                    c3 += v[k] * x3[k]
                    c4 += v[k] * x4[k]
                E[j + 1, s] = c0 + bv
                E[j + 1, s + 1] = c1 + bv
                E[j + 1, s + 2] = c2 + bv
                E[j + 1, s + 3] = c3 + bv
                E[j + 1, s + 4] = c4 + bv
            else:
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
                    a4 += w[k] * x4[k]
            E[j, s] = a0 + bw
            E[j, s + 1] = a1 + bw
            E[j, s + 2] = a2 + bw
            E[j, s + 3] = a3 + bw
            E[j, s + 4] = a4 + bw
            i = s + 5
        elif m >= 4:
            s = min(i, m - 4)
            x0 = X[rows[s]]
            x1 = X[rows[s + 1]]
            x2 = X[rows[s + 2]]
            x3 = X[rows[s + 3]]
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            if nj == 2:
                c0 = zero
                c1 = zero
                c2 = zero
                c3 = zero
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
                    c0 += v[k] * x0[k]
                    c1 += v[k] * x1[k]
                    c2 += v[k] * x2[k]
                    c3 += v[k] * x3[k]
                E[j + 1, s] = c0 + bv
                E[j + 1, s + 1] = c1 + bv
                E[j + 1, s + 2] = c2 + bv
                E[j + 1, s + 3] = c3 + bv
            else:
                for k in range(n_in):
                    a0 += w[k] * x0[k]
                    a1 += w[k] * x1[k]
                    a2 += w[k] * x2[k]
                    a3 += w[k] * x3[k]
            E[j, s] = a0 + bw
            E[j, s + 1] = a1 + bw
            E[j, s + 2] = a2 + bw
            E[j, s + 3] = a3 + bw
            i = s + 4
        else:
            x0 = X[rows[i]]
            a0 = zero
            c0 = zero
            for k in range(n_in):
                a0 += w[k] * x0[k]
                c0 += v[k] * x0[k]
            E[j, i] = a0 + bw
            E[j + nj - 1, i] = c0 + bv
            i += 1
    for t in range(nj):
        _activate(E[j + t, 0:m], act)


@njit(**_opts)
def _prefetch_rows(X, rows, n_in):
    """Start loading the input rows ``X[rows]`` into the cache."""
    step = max(1, 64 // X.itemsize)
    for r in range(rows.shape[0]):
        xr = X[rows[r]]
        for k in range(0, n_in, step):
            _prefetch(xr, k)


@njit(**_opts)
def _join(sync, want, patience):
    """Join the team that trains this epoch; returns ``(slot, team size)``, or ``(-1, 0)``.

    ``sync[0]`` counts the members who have joined.  Members wait until all
    ``want`` have joined.  If they do not within ``patience`` spins (the
    threading layer ran iterations of the ``prange`` one after another, or
    gave fewer threads), the first member closes the team as it stands:
    ``sync[16]`` gets the team size and ``sync[0]`` the ``_CLOSED`` mark, so
    late arrivals leave at once and the team never waits for a thread that
    is not running.
    """
    slot = _atomic_add(sync, 0, 1)
    if slot >= _CLOSED:
        return -1, 0
    spins = 0
    while True:
        s = _atomic_load(sync, 0)
        if s >= _CLOSED:
            return slot, _atomic_load(sync, 16)
        if s >= want:
            return slot, want
        spins += 1
        if slot == 0 and spins > patience:  # the first member closes the team
            sync[16] = s  # published by the CAS below (release)
            if _atomic_cas(sync, 0, s, s + _CLOSED) == s:
                return slot, s
        _spin_pause()


@njit(**_opts)
def _barrier(sync, team, k):
    """The ``k``-th barrier (1, 2, ...) of the team: returns once all ``team`` members reached it.

    Spins (a barrier usually takes well under a microsecond), then yields the
    CPU: when more threads want to run than there are CPUs, a member that has
    been descheduled gets a CPU back instead of waiting for the next time
    slice while the others spin.
    """
    _atomic_add(sync, 32, 1)
    target = k * team
    spins = 0
    while _atomic_load(sync, 32) < target:
        spins += 1
        if spins > _SPINS_BEFORE_YIELD:  # a member is not running: let it have this CPU
            _yield_cpu()
        else:
            _spin_pause()


@njit(**_opts)
def _team_member(slot, team, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, ident,
                 A, D, P, G, E, sync, eta, decay, stats):
    """One member's share of :func:`train_epoch_split` (see there)."""
    n = perm.shape[0]
    L = sizes.shape[0] - 1
    n_in = sizes[0]
    n1 = sizes[1]
    npairs = (n1 + 1) // 2
    j0 = 2 * (slot * npairs // team)  # this member's first-layer neurons j0:j1
    j1 = min(2 * ((slot + 1) * npairs // team), n1)
    base = n_in * n1  # theta[base:]: first-layer biases, then the later layers
    Pt = P[slot, 0:theta.shape[0] - base]
    Pt[:] = theta[base:]
    bias = Pt[0:n1]
    offp = offs - base  # the later layers' offsets in Pt
    At = A[slot]
    Dt = D[slot]
    Gt = G[slot:slot + 1]
    keep = theta.dtype.type(1.0 - eta * decay)
    total = 0.0
    correct = 0.0
    _prefetch_rows(X, perm[0:min(2 * m, n)], n_in)
    for j in range(j0, j1, 2):
        _rows_forward(theta, bias, n_in, j, min(2, j1 - j), X, perm[0:min(m, n)], E[0], hid)
    phase = 1
    _barrier(sync, team, phase)
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        mb = b1 - b0
        rows = perm[b0:b1]
        Eb = E[(b0 // m) % 2]
        for i in range(mb):  # all first-layer outputs, this member's and the others'
            for j in range(n1):
                At[i, j] = Eb[j, i]
        for l in range(1, L):
            n_in_l, n_out = sizes[l], sizes[l + 1]
            _dense_forward(Pt, offp[l], offp[l] + n_in_l * n_out, n_in_l, n_out, At, ident,
                           aoff[l - 1], At, aoff[l], 0, mb)
            act = out if l == L - 1 else hid
            for i in range(mb):
                _activate(At[i, aoff[l]:aoff[l] + sizes[l + 1]], act)
        c, kk = _output_deltas(sizes, aoff, out, cost, y, rows, At, Dt, 0, mb)
        total += c
        correct += kk
        for l in range(L - 1, 0, -1):  # down to the first layer's deltas Dt[:, 0:n1]
            n_in_l, n_out = sizes[l], sizes[l + 1]
            _dense_grad(Gt[0], offp[l], offp[l] + n_in_l * n_out, n_in_l, n_out, Dt, aoff[l], At,
                        ident, aoff[l - 1], 0, mb)
            _dense_backprop(Pt, offp[l], n_in_l, n_out, Dt, aoff[l], At, aoff[l - 1], hid, 0, mb)
        step = eta / mb
        for l in range(1, L):
            w0 = offp[l]
            bb = w0 + sizes[l] * sizes[l + 1]
            _update_block(Pt, Gt, 1, w0, bb, 1, step, 1.0 - eta * decay)
            _update_block(Pt, Gt, 1, bb, bb + sizes[l + 1], 0, step, 1.0)
        nxt = perm[b1:min(b1 + m, n)]
        _prefetch_rows(X, perm[min(b1 + m, n):min(b1 + 2 * m, n)], n_in)
        En = E[(b1 // m) % 2]
        for j in range(j0, j1, 2):
            nj = min(2, j1 - j)
            _rows_update(theta, bias, n_in, j, nj, X, rows, Dt, theta.dtype.type(step), keep)
            if nxt.shape[0] > 0:
                _rows_forward(theta, bias, n_in, j, nj, X, nxt, En, hid)
        if nxt.shape[0] > 0:
            phase += 1
            _barrier(sync, team, phase)
    theta[base + j0:base + j1] = bias[j0:j1]
    if slot == 0:
        theta[base + n1:] = Pt[n1:]
        stats[0, 0] = total
        stats[0, 1] = correct


@njit(parallel=True, **_opts)
def train_epoch_split(theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, ident,
                      A, D, P, G, E, sync, want, eta, decay, stats):
    """:func:`train_epoch` with the first layer split by neurons instead of the batch by samples.

    For small mini-batches, where a parallel region per step would cost as
    much as the step's arithmetic.  The whole epoch is one parallel region.
    Its ``want`` members (at most one per thread) each own a contiguous
    range of first-layer neuron pairs, whose rows of ``W`` stay in the
    member's cache all epoch.  Per mini-batch, each member

    1. gathers the first-layer outputs of all members (from ``E``);
    2. runs the small later layers itself on a private copy of all
       parameters after the first layer's weights (``P[slot]``: the first
       layer's biases and the later layers, identical in every member):
       forward, output deltas, backpropagation down to the first layer's
       deltas, update;
    3. updates its own first-layer rows with the mini-batch's deltas and at
       once computes their outputs for the next mini-batch into ``E`` (two
       buffers, alternating), and prefetches the inputs of the one after;
    4. waits at a barrier for the others.

    Members join through :func:`_join`, which closes the team if the threading
    layer does not run all ``want`` at once.  Returns (sum of costs, number
    correct), like :func:`train_epoch`.

    One barrier per step; only the first-layer outputs cross cores.  Each
    pair's arithmetic, and the later layers', is the same whatever the team
    size, so results are bit-identical for any thread count; they differ
    from :func:`train_epoch` only in rounding.  Buffers (at least): ``A``,
    ``D``: (want, m, H); ``P``: (want, n_params - sizes[0]*sizes[1]); ``G``:
    the same, all zero; ``E``: (2, sizes[1], m); ``sync``: int64, 48 entries.
    """
    for i in range(sync.shape[0]):
        sync[i] = 0
    for t in prange(want):
        slot, team = _join(sync, want, _PATIENCE)
        if slot >= 0:
            _team_member(slot, team, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m,
                         ident, A, D, P, G, E, sync, eta, decay, stats)
    return stats[0, 0], stats[0, 1]


# ----------------------------------------------------------------------------
# larger mini-batches: first layer by neurons, later layers by samples
# ----------------------------------------------------------------------------

def use_hybrid(sizes, m):
    """Whether mini-batches of ``m`` train faster with :func:`train_epoch_hybrid`.

    True from ``SPLIT_MIN_BATCH`` samples up when the first layer has at least
    two blocks of ``_HYBRID_BLOCK`` neurons (so that a team can share it),
    holds at least ``HYBRID_MIN_SHARE`` of the parameters, and is followed by
    another layer.  Measured on 2 threads against the other drivers: W3
    (784-128-64-10, batch 64) 0.113 s against 0.131 s splitting the samples,
    at batch 10 0.25 s against 0.56 s; 784-64-10 at batch 32 0.056 s against
    0.077 s with the neuron-pair split.  A choice of speed only.
    """
    if len(sizes) < 3 or sizes[1] < 2 * _HYBRID_BLOCK or m < SPLIT_MIN_BATCH:
        return False
    n_first = sizes[0] * sizes[1] + sizes[1]
    total = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    return n_first >= HYBRID_MIN_SHARE * total


@njit(**_opts)
def _hybrid_member(slot, team, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, ident,
                   A, D, P, G, CS, sync, eta, decay):
    """One member's share of :func:`train_epoch_hybrid` (see there)."""
    n = perm.shape[0]
    L = sizes.shape[0] - 1
    n_in = sizes[0]
    n1 = sizes[1]
    nblk = (n1 + _HYBRID_BLOCK - 1) // _HYBRID_BLOCK
    j0 = _HYBRID_BLOCK * (slot * nblk // team)  # this member's first-layer neurons j0:j1
    j1 = min(_HYBRID_BLOCK * ((slot + 1) * nblk // team), n1)
    nj = j1 - j0
    b1off = n_in * n1  # the first layer's biases in theta
    base = b1off + n1  # theta[base:]: the later layers, copied privately
    rest = theta.shape[0] - base
    Pt = P[slot, 0:rest]
    Pt[:] = theta[base:]
    offp = offs - base
    keep = theta.dtype.type(1.0 - eta * decay)
    first = perm[0:min(m, n)]
    _dense_forward(theta, j0 * n_in, b1off + j0, n_in, nj, X, first, 0, A, j0, 0, first.shape[0])
    for i in range(first.shape[0]):
        _activate(A[i, j0:j1], hid)
    phase = 1
    _barrier(sync, team, phase)
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        mb = b1 - b0
        rows = perm[b0:b1]
        nc = chunk_count(mb, theta.shape[0])
        for c in range(slot, nc, team):  # later layers, by fixed chunks of samples
            s0 = c * mb // nc
            s1 = (c + 1) * mb // nc
            g = G[c, 0:rest]
            for p in range(rest):
                g[p] = 0
            cs, cc = _later_layers(Pt, offp, sizes, aoff, hid, out, cost, y, rows, ident, A, D,
                                   g, s0, s1)
            CS[c, 0] += cs
            CS[c, 1] += cc
        phase += 1
        _barrier(sync, team, phase)
        step = theta.dtype.type(eta / mb)
        for l in range(1, L):  # every member updates its copy of the later layers alike
            w0 = offp[l]
            bb = w0 + sizes[l] * sizes[l + 1]
            _update_sum(Pt, G, nc, w0, bb, step, keep)
            _update_sum(Pt, G, nc, bb, bb + sizes[l + 1], step, step - step + _1)
        for i in range(mb):  # own first-layer neurons: W += (-step D)^T X, b += sum(-step D)
            for j in range(j0, j1):
                D[i, j] *= -step
        if keep != _1:
            for p in range(j0 * n_in, j1 * n_in):
                theta[p] *= keep
        _dense_grad(theta, j0 * n_in, b1off + j0, n_in, nj, D, j0, X, rows, 0, 0, mb)
        nxt = perm[b1:min(b1 + m, n)]
        if nxt.shape[0] > 0:
            _dense_forward(theta, j0 * n_in, b1off + j0, n_in, nj, X, nxt, 0, A, j0, 0,
                           nxt.shape[0])
            for i in range(nxt.shape[0]):
                _activate(A[i, j0:j1], hid)
            phase += 1
            _barrier(sync, team, phase)
    if slot == 0:
        theta[base:] = Pt


@njit(**_opts)
def _later_layers(P, offp, sizes, aoff, hid, out, cost, y, rows, ident, A, D, g, s0, s1):
    """Samples ``s0:s1`` through the layers after the first, and back.

    The first layer's outputs are in ``A[s0:s1]``; the later layers'
    parameters in ``P`` at offsets ``offp``.  Runs the forward pass, the
    output deltas and backpropagation down to the first layer's deltas
    ``D[s0:s1, 0:sizes[1]]``, adding the later layers' gradient sums into
    ``g`` (same offsets).  Returns (sum of costs, number correct).
    """
    L = sizes.shape[0] - 1
    for l in range(1, L):
        n_in, n_out = sizes[l], sizes[l + 1]
        _dense_forward(P, offp[l], offp[l] + n_in * n_out, n_in, n_out, A, ident, aoff[l - 1],
                       A, aoff[l], s0, s1)
        act = out if l == L - 1 else hid
        for i in range(s0, s1):
            _activate(A[i, aoff[l]:aoff[l] + n_out], act)
    cs, cc = _output_deltas(sizes, aoff, out, cost, y, rows, A, D, s0, s1)
    for l in range(L - 1, 0, -1):
        n_in, n_out = sizes[l], sizes[l + 1]
        _dense_grad(g, offp[l], offp[l] + n_in * n_out, n_in, n_out, D, aoff[l], A, ident,
                    aoff[l - 1], s0, s1)
        _dense_backprop(P, offp[l], n_in, n_out, D, aoff[l], A, aoff[l - 1], hid, s0, s1)
    return cs, cc


@njit(**_opts)
def _update_sum(theta, G, nc, lo, hi, step, keep):
    """theta[p] = keep*theta[p] - step * sum_c G[c, p] for p in [lo, hi), G left as it is."""
    for p in range(lo, hi):
        s = G[0, p]
        for c in range(1, nc):
            s += G[c, p]
        theta[p] = keep * theta[p] - step * s


@njit(parallel=True, **_opts)
def train_epoch_hybrid(theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m, ident,
                       A, D, P, G, CS, sync, want, eta, decay):
    """Epoch driver for larger mini-batches: first layer by neurons, later layers by samples.

    One parallel region per epoch, a team as in :func:`train_epoch_split`.
    Each member owns a range of first-layer neurons (in blocks of
    ``_HYBRID_BLOCK``): it computes their outputs for the whole mini-batch
    and, once the deltas are known, updates their rows in place (no gradient
    buffer for the first layer; its rows never leave the member's cache).
    The later layers run by fixed chunks of samples (:func:`chunk_count`,
    independent of the team size), each chunk's gradient into ``G[c]``, and
    every member updates its private copy of the later layers (``P[slot]``)
    from the chunk gradients summed in chunk order.  Two barriers per step.
    Bit-identical for any thread count.  Returns (sum of costs, number correct).
    Buffers: ``A``, ``D``: (m, >= H) shared; ``P``: (want, >= n_params - base);
    ``G``: (MAX_CHUNKS, same); ``CS``: (MAX_CHUNKS, 2); ``sync``: int64, 48.
    """
    for i in range(sync.shape[0]):
        sync[i] = 0
    for c in range(CS.shape[0]):
        CS[c, 0] = 0.0
        CS[c, 1] = 0.0
    for t in prange(want):
        slot, team = _join(sync, want, _PATIENCE)
        if slot >= 0:
            _hybrid_member(slot, team, theta, sizes, offs, aoff, hid, out, cost, X, y, perm, m,
                           ident, A, D, P, G, CS, sync, eta, decay)
    total = 0.0
    correct = 0.0
    for c in range(CS.shape[0]):
        total += CS[c, 0]
        correct += CS[c, 1]
    return total, correct


# ----------------------------------------------------------------------------
# sparse inputs (MNIST pixels are 81% zero): the first layer in lane vectors
# ----------------------------------------------------------------------------

SPARSE_MAX_DENSITY = 0.4
SPARSE_SAMPLES_PER_CHUNK = 5


def use_sparse(sizes, m, density):
    """Whether :func:`train_epoch_sparse` should train this network on this data.

    True for inputs with at most ``SPARSE_MAX_DENSITY`` non-zero values,
    networks with at least one hidden layer, and first layers of at most
    ``2 * LANES`` neurons, where each member's full copy of the first layer
    is cheap to update.  Measured on 2 threads (W1 at batch 10 unless said):
    1.7x the dense drivers at 19% non-zero (MNIST), 1.3x at 30%, even at
    50%; W2 1.9x; W1 at batch 1 to 1024 2.9x to 1.2x; 784-64-10 even, W3
    (128 neurons) 0.93x.  A choice of speed only: every driver computes the
    same SGD.
    """
    return len(sizes) >= 3 and sizes[1] <= 2 * LANES and density <= SPARSE_MAX_DENSITY


@njit(**_opts)
def sparse_rows(X, indptr, indices, values):
    """The CSR form of the 2-D array ``X``: fills ``indptr``, ``indices``, ``values``.

    Call with ``indptr`` of ``len(X) + 1`` and ``indices``/``values`` of
    length ``indptr[-1]`` after :func:`count_nonzero_rows` filled
    ``indptr[1:]``.  Row ``i``'s non-zeros are ``values[indptr[i]:indptr[i+1]]``
    at columns ``indices[...]``, ascending; each value is converted to
    ``values.dtype`` as NumPy's ``astype`` would (one pass, no temporaries:
    NumPy's ``nonzero`` and fancy indexing took 0.2-0.3 s for MNIST).
    """
    p = 0
    indptr[0] = 0
    for i in range(X.shape[0]):
        for k in range(X.shape[1]):
            if X[i, k] != 0:
                indices[p] = k
                values[p] = X[i, k]
                p += 1
        indptr[i + 1] = p


@njit(**_opts)
def count_nonzero_rows(X, counts):
    """``counts[i]`` = the number of non-zero values in row ``i`` of ``X``; returns the total."""
    total = 0
    for i in range(X.shape[0]):
        c = 0
        for k in range(X.shape[1]):
            c += X[i, k] != 0
        counts[i] = c
        total += c
    return total


@njit(**_opts)
def sparse_chunks(m):
    """Chunks of a mini-batch of ``m`` in :func:`train_epoch_sparse` (never the thread count)."""
    return max(1, min(MAX_CHUNKS, m // SPARSE_SAMPLES_PER_CHUNK))


@njit(**_opts)
def _prefetch_sparse_rows(indptr, indices, values, rows):
    """Start loading the non-zeros of the sparse input rows ``rows`` into the cache."""
    for r in range(rows.shape[0]):
        p0 = indptr[rows[r]]
        p1 = indptr[rows[r] + 1]
        for p in range(p0, p1, max(1, 64 // indices.itemsize)):
            _prefetch(indices, p)
        for p in range(p0, p1, max(1, 64 // values.itemsize)):
            _prefetch(values, p)


@njit(**_opts)
def _sparse_member(slot, team, theta, sizes, offs, aoff, hid, out, cost, indptr, indices, values,
                   y, perm, m, ident, A, D, P, G, Z, CS, sync, eta, decay):
    """One member's share of :func:`train_epoch_sparse` (see there)."""
    n = perm.shape[0]
    L = sizes.shape[0] - 1
    n_in = sizes[0]
    n1 = sizes[1]
    n1p = Z.shape[2]  # first-layer neurons padded to whole lane vectors
    wlen = n_in * n1p
    base = n_in * n1  # theta[base:]: first-layer biases, then the later layers
    rest = theta.shape[0] - base
    WT = P[slot, 0:wlen]  # private first layer, transposed: WT[k*n1p + j] = W[j, k]
    Pt = P[slot, wlen:wlen + rest]  # private copy of theta[base:]
    for k in range(n_in):
        for j in range(n1):
            WT[k * n1p + j] = theta[j * n_in + k]
        for j in range(n1, n1p):
            WT[k * n1p + j] = 0
    Pt[:] = theta[base:]
    bias = Pt[0:n1]
    offp = offs - base
    At = A[slot]
    Zt = Z[slot]
    keep = theta.dtype.type(1.0 - eta * decay)
    one = keep - keep + _1
    for b0 in range(0, min(2 * m, n), m):  # the first two mini-batches' inputs
        mb = min(m, n - b0)
        nc = sparse_chunks(mb)
        for c in range(slot, nc, team):
            _prefetch_sparse_rows(indptr, indices, values,
                                  perm[b0 + c * mb // nc:b0 + (c + 1) * mb // nc])
    phase = 0
    par = 0
    for b0 in range(0, n, m):
        b1 = min(b0 + m, n)
        mb = b1 - b0
        rows = perm[b0:b1]
        nc = sparse_chunks(mb)
        Dp = D[par]
        Gp = G[par]
        for c in range(slot, nc, team):  # this member's chunks of samples
            s0 = c * mb // nc
            s1 = (c + 1) * mb // nc
            # this chunk's inputs two mini-batches ahead (one ahead left 3 ms of misses)
            _prefetch_sparse_rows(indptr, indices, values,
                                  perm[min(b1 + m + s0, n):min(b1 + m + s1, n)])
            for i in range(s0, s1):
                s = rows[i]
                z = Zt[i]
                for j in range(n1):
                    z[j] = bias[j]
                for j in range(n1, n1p):
                    z[j] = 0
                for v in range(0, n1p, LANES):
                    _lanes_sparse_dot(WT, v, n1p, indices, values, indptr[s], indptr[s + 1], z, v)
                a = At[i, 0:n1]
                a[:] = z[0:n1]
                _activate(a, hid)
            g = Gp[c, 0:rest]
            for p in range(rest):
                g[p] = 0
            cs, cc = _later_layers(Pt, offp, sizes, aoff, hid, out, cost, y, rows, ident, At, Dp,
                                   g, s0, s1)
            CS[c, 0] += cs
            CS[c, 1] += cc
            for i in range(s0, s1):  # the first layer's bias gradient
                for j in range(n1):
                    g[j] += Dp[i, j]
        phase += 1
        _barrier(sync, team, phase)
        # every member applies the whole update to its own copy, in the same order
        step = theta.dtype.type(eta / mb)
        _update_sum(Pt, Gp, nc, 0, n1, step, one)
        for l in range(1, L):
            w0 = offp[l]
            bb = w0 + sizes[l] * sizes[l + 1]
            _update_sum(Pt, Gp, nc, w0, bb, step, keep)
            _update_sum(Pt, Gp, nc, bb, bb + sizes[l + 1], step, one)
        if keep != one:
            for p in range(wlen):
                WT[p] *= keep
        d = Zt[0]
        for i in range(mb):
            s = rows[i]
            for j in range(n1):
                d[j] = Dp[i, j]
            for j in range(n1, n1p):
                d[j] = 0
            for v in range(0, n1p, LANES):
                _lanes_sparse_axpy(WT, v, n1p, indices, values, indptr[s], indptr[s + 1], d, v,
                                   -step)
        par = 1 - par
    if slot == 0:
        for k in range(n_in):
            for j in range(n1):
                theta[j * n_in + k] = WT[k * n1p + j]
        theta[base:] = Pt


@njit(parallel=True, **_opts)
def train_epoch_sparse(theta, sizes, offs, aoff, hid, out, cost, indptr, indices, values, y,
                       perm, m, ident, A, D, P, G, Z, CS, sync, want, eta, decay):
    """Epoch driver for sparse inputs, given as CSR (``indptr``, ``indices``, ``values``).

    The first layer works in lane vectors of 16 neurons over the non-zero
    inputs only: a sample's forward pass is one vector multiply-add per
    non-zero input (:func:`_lanes_sparse_dot`), and the update moves only the
    rows of ``W`` of its non-zero inputs (:func:`_lanes_sparse_axpy`), with
    ``W`` transposed so that a row is one lane vector.

    One parallel region per epoch, a team as in :func:`train_epoch_split`.
    Every member keeps a private copy of all parameters (``P[slot]``: the
    first layer transposed and padded, then ``theta[n_in*n1:]``).  Per step
    the mini-batch is cut into :func:`sparse_chunks` fixed chunks of
    samples; each member runs its chunks through the whole network (forward,
    output deltas, backpropagation), writing the chunk's gradient of
    everything but the first layer's weights into ``G[par, c]`` and the
    first layer's deltas into ``D[par]``.  After one barrier, every member
    applies the whole update to its own copy, in the same order: chunk
    gradients summed in chunk order, first-layer rows moved sample by sample.
    The buffers alternate between steps (``par``), so one barrier per step
    suffices.  Only deltas and small gradients cross cores, never weights.
    Bit-identical for any thread count.  Returns (sum of costs, number
    correct).

    Buffers: ``A``: (want, m, >= H); ``D``: (2, m, >= H); ``P``: (want, >=
    n_in*n1p + n_params - n_in*n1); ``G``: (2, MAX_CHUNKS, >= n_params -
    n_in*n1); ``Z``: (want, m, n1p) with ``n1p`` a multiple of ``LANES``;
    ``CS``: (MAX_CHUNKS, 2); ``sync``: int64, 48.  ``indices`` must lie in
    ``[0, sizes[0])``: the lane kernels do not check them.
    """
    for i in range(sync.shape[0]):
        sync[i] = 0
    for c in range(CS.shape[0]):
        CS[c, 0] = 0.0
        CS[c, 1] = 0.0
    for t in prange(want):
        slot, team = _join(sync, want, _PATIENCE)
        if slot >= 0:
            _sparse_member(slot, team, theta, sizes, offs, aoff, hid, out, cost, indptr, indices,
                           values, y, perm, m, ident, A, D, P, G, Z, CS, sync, eta, decay)
    total = 0.0
    correct = 0.0
    for c in range(CS.shape[0]):
        total += CS[c, 0]
        correct += CS[c, 1]
    return total, correct


@njit(parallel=True, **_opts)
def gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows, ident, A, D, G, grad):
    """Sum over samples ``rows`` of the per-sample gradients, into ``grad``; returns cost sum."""
    m = rows.shape[0]
    nc = chunk_count(m, G.shape[1])
    costs = np.zeros(nc)
    for c in prange(nc):
        s0 = c * m // nc
        s1 = (c + 1) * m // nc
        cs, cc = _chunk_gradient(theta, sizes, offs, aoff, hid, out, cost, X, y, rows,
                                 ident, A, D, G, c, s0, s1)
        costs[c] = cs
    total = 0.0
    for c in range(nc):
        total += costs[c]
    for p in range(grad.shape[0]):
        g = G[0, p]
        G[0, p] = 0
        for c in range(1, nc):
            g += G[c, p]
            G[c, p] = 0
        grad[p] = g
    return total


@njit(parallel=True, **_opts)
def forward(theta, sizes, offs, aoff, hid, out, X, ident, A, block):
    """Forward pass of all rows of ``X`` into ``A`` (``ident`` is ``arange(len(X))``).

    ``A[:, aoff[-1]:]`` holds the network's output; rows are processed in
    parallel blocks of ``block`` samples.  Returns the number of first-layer
    pre-activations that are not finite: non-zero exactly when an input is NaN
    or infinite (or so large that the first layer overflows), which lets the
    Python layer reject such input without a separate pass over ``X``.
    """
    n = ident.shape[0]
    nblocks = (n + block - 1) // block
    bad = 0
    for bi in prange(nblocks):
        s0 = bi * block
        s1 = min(s0 + block, n)
        bad += _forward_chunk(theta, sizes, offs, aoff, hid, out, X, ident, ident, A, s0, s1)
    return bad


@njit(**_dot_opts)
def forward_one(theta, sizes, offs, aoff, hid, out, x, a):
    """Forward pass of the single sample ``x`` (1-D) into ``a`` (length ``sum(sizes[1:])``).

    The latency path: serial, no parallel region.  Returns the count of
    non-finite first-layer pre-activations, as :func:`forward` does.
    """
    L = sizes.shape[0] - 1
    bad = 0
    for l in range(L):
        n_in, n_out, woff = sizes[l], sizes[l + 1], offs[l]
        src = x if l == 0 else a[aoff[l - 1]:aoff[l - 1] + n_in]
        dst = a[aoff[l]:aoff[l] + n_out]
        b = theta[woff + n_in * n_out:woff + n_in * n_out + n_out]
        for j in range(n_out):
            w = theta[woff + j * n_in:woff + (j + 1) * n_in]
            acc = theta[0] * _0
            for k in range(n_in):
                acc += w[k] * src[k]
            dst[j] = acc + b[j]
        if l == 0:
            bad = _count_nonfinite(dst)
        _activate(dst, out if l == L - 1 else hid)
    return bad
