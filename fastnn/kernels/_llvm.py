"""LLVM intrinsics the kernels need and Numba does not offer.

Each is a Numba ``@intrinsic`` that emits a few LLVM instructions:

* :func:`_prefetch` -- ``llvm.prefetch``: start loading a cache line;
* :func:`_atomic_add`, :func:`_atomic_load`, :func:`_atomic_cas` -- the
  atomics the team barrier (:mod:`.team`) is built from;
* :func:`_yield_cpu` (``sched_yield``) and :func:`_spin_pause` (x86 ``pause``)
  -- what a waiting team member does;
* :func:`_call_native` -- a call of a compiled team member by its address;
* :func:`_stack_values` -- a small scratch array on the caller's stack;
* :func:`_flush_subnormals` and :func:`_restore_fp` -- the x86 MXCSR's
  flush-to-zero mode around the optimiser's update (:mod:`.optim`);
* :func:`_compress_nonzeros` -- ``llvm.masked.compressstore``: the non-zeros
  of 16 inputs into the CSR arrays (:mod:`.csr`), and :func:`_pack_nonzeros`,
  the same for 8 inputs with AVX2's lane permutation (``vpermps``);

the instruction builders :func:`fma_ir` (``llvm.fma``: one rounding where
the code says so), :func:`floor_ir` and :func:`times_pow2_ir` (``p * 2**k`` from the exponent
bits), from which :mod:`.activations` builds its ``exp``; and
:func:`target_has_avx512` and :func:`target_has_avx2`, which the kernels
shaped by the vector registers ask (:data:`.dense.FORWARD_BLOCK`,
:data:`.csr.COMPRESS_STORES`, :data:`.csr.PACK_STORES`).
"""

import functools
import platform

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils, config
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")
_HAS_SCHED_YIELD = platform.system() in ("Linux", "Darwin", "FreeBSD")


@functools.cache
def _target_features():
    """The CPU features Numba compiles for: ``NUMBA_CPU_FEATURES`` when set, else the
    host's (less AVX when ``NUMBA_ENABLE_AVX=0``), as Numba's JIT codegen chooses them."""
    if config.CPU_FEATURES is not None:
        return config.CPU_FEATURES.split(",")
    from numba.core.codegen import get_host_cpu_features

    return get_host_cpu_features().split(",")


def target_has_avx512():
    """Whether Numba compiles for a CPU with AVX-512 (foundation)."""
    return "+avx512f" in _target_features()


def target_has_avx2():
    """Whether Numba compiles for an x86 CPU with AVX2."""
    return _X86 and "+avx2" in _target_features()


def _pointer(context, builder, aryty, ary, index, indexty):
    """LLVM pointer to ``ary[index]`` (1-D array, no bounds check)."""
    a = context.make_array(aryty)(context, builder, ary)
    i = context.cast(builder, index, indexty, types.intp)
    return cgutils.get_item_pointer(context, builder, aryty, a, [i], wraparound=False)


def _item_pointer(context, builder, signature, args):
    """LLVM pointer to ``arr[index]`` for an intrinsic called as ``f(arr, index, ...)``."""
    return _pointer(context, builder, signature.args[0], args[0], args[1], signature.args[1])


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
            builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]), name
        )
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _atomic_add(typingctx, arr, index, value):
    """``arr[index] += value`` as one atomic read-modify-write; returns the old value."""
    if not (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and arr.dtype == types.int64
        and isinstance(index, types.Integer)
        and isinstance(value, types.Integer)
    ):
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
    if not (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and arr.dtype == types.int64
        and isinstance(index, types.Integer)
    ):
        return None
    sig = types.int64(arr, index)

    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature, args)
        return builder.load_atomic(ptr, "acquire", 8)

    return sig, codegen


@intrinsic
def _atomic_cas(typingctx, arr, index, expected, new):
    """Set ``arr[index] = new`` if it equals ``expected``, atomically; returns the old value."""
    if not (
        isinstance(arr, types.Array)
        and arr.ndim == 1
        and arr.dtype == types.int64
        and isinstance(index, types.Integer)
        and isinstance(expected, types.Integer)
        and isinstance(new, types.Integer)
    ):
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
                builder.module, ir.FunctionType(ir.IntType(32), []), "sched_yield"
            )
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
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause"
            )
            builder.call(fn, [])
        return context.get_dummy_value()

    return sig, codegen


# MXCSR bits: flush results below the smallest normal number to zero (FTZ) and read
# such operands as zero (DAZ)
_MXCSR_FTZ_DAZ = 0x8040


@intrinsic
def _call_native(typingctx, address, args):
    """Call the compiled Numba function at ``address`` (an integer) with the arguments in the
    tuple ``args``; it must return nothing and have been compiled for exactly these argument
    types (:func:`.team.member_address` gets such an address).

    A parallel region that calls a member function directly links the
    member's whole call tree into the region's module and into its caller's,
    and LLVM optimises and emits it twice more: on the 2-core CI machine
    :func:`.sparse.train_epoch_sparse`'s region took 13.4 s to compile on
    top of its member, 1.6-1.8 s calling it by address.  Called so, the
    member is compiled once, in its own module, and runs as fast; errors it
    reports are passed on as from a direct call.
    """
    if not (isinstance(address, types.Integer) and isinstance(args, types.BaseTuple)):
        return None
    sig = types.none(address, args)

    def codegen(context, builder, signature, llargs):
        argtys = list(signature.args[1])
        values = [builder.extract_value(llargs[1], i) for i in range(len(argtys))]
        fnty = context.call_conv.get_function_type(types.none, argtys)
        fn = builder.inttoptr(llargs[0], fnty.as_pointer())
        status, _ = context.call_conv.call_function(builder, fn, types.none, argtys, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _stack_values(typingctx, like, n):
    """A pointer to ``n`` (a literal) values of the dtype of the array ``like``, on the
    stack of the calling function (reserved in its entry block, once: no allocation per
    call), aligned to a cache line; ``numba.carray`` makes an array of it, valid until
    that function returns."""
    if not (isinstance(like, types.Array) and isinstance(n, types.IntegerLiteral)):
        return None
    sig = types.CPointer(like.dtype)(like, n)

    def codegen(context, builder, signature, args):
        ty = context.get_value_type(like.dtype)
        with builder.goto_entry_block():
            slot = builder.alloca(ir.ArrayType(ty, n.literal_value))
        slot.align = 64
        return builder.bitcast(slot, ty.as_pointer())

    return sig, codegen


def _mxcsr_call(builder, name, slot):
    """``llvm.x86.sse.{name}`` (``stmxcsr``/``ldmxcsr``) on the 32-bit ``slot``."""
    i8p = ir.IntType(8).as_pointer()
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [i8p]), "llvm.x86.sse." + name
    )
    builder.call(fn, [builder.bitcast(slot, i8p)])


@intrinsic
def _flush_subnormals(typingctx):
    """Make this thread's float arithmetic treat subnormal numbers as zero (x86 MXCSR's
    FTZ and DAZ bits; nothing elsewhere); returns the old state for :func:`_restore_fp`.

    Memory operations are not moved across the two calls (they have side
    effects), so the arithmetic between them, which loads its operands after
    the first and stores its results before the second, runs in that mode.
    """
    sig = types.int32()

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        if not _X86:
            return i32(0)
        old = cgutils.alloca_once(builder, i32)
        _mxcsr_call(builder, "stmxcsr", old)
        mode = cgutils.alloca_once_value(
            builder, builder.or_(builder.load(old), i32(_MXCSR_FTZ_DAZ))
        )
        _mxcsr_call(builder, "ldmxcsr", mode)
        return builder.load(old)

    return sig, codegen


@intrinsic
def _restore_fp(typingctx, state):
    """Put back the floating-point state :func:`_flush_subnormals` returned."""
    if not isinstance(state, types.Integer):
        return None
    sig = types.void(state)

    def codegen(context, builder, signature, args):
        if _X86:
            value = context.cast(builder, args[0], signature.args[0], types.int32)
            _mxcsr_call(builder, "ldmxcsr", cgutils.alloca_once_value(builder, value))
        return context.get_dummy_value()

    return sig, codegen


def times_pow2_ir(builder, value, k):
    """LLVM instructions for ``value * 2**k`` (``value`` an LLVM float or double, ``k`` an
    integer of its width, in the normal exponent range).

    ``2**k`` is built from its bits (exponent field ``k + bias``), so a loop
    of these vectorises where a call to ``ldexp`` would not.
    """
    f32 = isinstance(value.type, ir.FloatType)
    ity = ir.IntType(32 if f32 else 64)
    mant, bias = (23, 127) if f32 else (52, 1023)
    scale = builder.bitcast(builder.shl(builder.add(k, ity(bias)), ity(mant)), value.type)
    return builder.fmul(value, scale)


def fma_ir(builder, a, b, c):
    """``llvm.fma``: ``a * b + c`` with one rounding, for LLVM values of one float type.

    A fused multiply-add that does not depend on where LLVM inlines the
    code: ``contract`` lets LLVM fuse or not as it optimises each copy of a
    function, and the copies compiled into different callers did not agree.
    """
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(a.type, [a.type] * 3), "llvm.fma." + _float_name(a.type)
    )
    return builder.call(fn, [a, b, c])


def floor_ir(builder, x):
    """``llvm.floor`` of the LLVM float value ``x``."""
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(x.type, [x.type]), "llvm.floor." + _float_name(x.type)
    )
    return builder.call(fn, [x])


def _float_name(ty):
    """``f32`` or ``f64`` for an LLVM float type."""
    return "f32" if isinstance(ty, ir.FloatType) else "f64"


COMPRESS = 16  # inputs per call of :func:`_compress_nonzeros`


def _splat(builder, vty, x):
    """A vector of type ``vty`` with every lane ``x``."""
    i32 = ir.IntType(32)
    undef = ir.Constant(vty, ir.Undefined)
    v = builder.insert_element(undef, x, i32(0))
    return builder.shuffle_vector(
        v, undef, ir.Constant(ir.VectorType(i32, vty.count), [0] * vty.count)
    )


def _compress_types(row, k0, indices, values, p, divisor):
    return (
        isinstance(row, types.Array)
        and row.ndim == 1
        and isinstance(row.dtype, (types.Integer, types.Float))
        and isinstance(indices, types.Array)
        and indices.ndim == 1
        and isinstance(indices.dtype, types.Integer)
        and isinstance(values, types.Array)
        and values.ndim == 1
        and isinstance(values.dtype, types.Float)
        and all(isinstance(t, types.Integer) for t in (k0, p))
        and isinstance(divisor, types.Float)
    )


def _load_nonzeros(context, builder, signature, args, n):
    """For ``f(row, k0, indices, values, p, divisor, ...)``: ``row[k0:k0 + n]`` loaded as a
    vector, converted to ``values.dtype`` as ``astype`` converts and divided by ``divisor``
    unless it is 1; returns ``(values vector, non-zero mask)`` (NaN counts as non-zero)."""
    rowt, k0t, _, valt, _, divt = signature.args[:6]
    row_, k0_, _, _, _, div_ = args[:6]
    src = rowt.dtype
    vsrc = ir.VectorType(context.get_value_type(src), n)
    vval = ir.VectorType(context.get_value_type(valt.dtype), n)
    ptr = _pointer(context, builder, rowt, row_, k0_, k0t)
    x = builder.load(builder.bitcast(ptr, vsrc.as_pointer()), align=1)
    if isinstance(src, types.Float):
        mask = builder.fcmp_unordered("!=", x, ir.Constant(vsrc, [0.0] * n))
        if src.bitwidth < valt.dtype.bitwidth:
            v = builder.fpext(x, vval)
        elif src.bitwidth > valt.dtype.bitwidth:
            v = builder.fptrunc(x, vval)
        else:
            v = x
    else:
        mask = builder.icmp_unsigned("!=", x, ir.Constant(vsrc, [0] * n))
        v = builder.sitofp(x, vval) if src.signed else builder.uitofp(x, vval)
    d = context.cast(builder, div_, divt, valt.dtype)
    one = builder.fcmp_ordered("==", d, ir.Constant(d.type, 1.0))
    return builder.select(one, v, builder.fdiv(v, _splat(builder, vval, d))), mask


def _count_mask(builder, context, mask, n):
    """The number of set lanes of an ``n``-lane mask, as an intp."""
    bits = builder.bitcast(mask, ir.IntType(n))
    popcount = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.IntType(n), [ir.IntType(n)]), "llvm.ctpop.i%d" % n
    )
    return builder.zext(builder.call(popcount, [bits]), context.get_value_type(types.intp))


@intrinsic
def _compress_nonzeros(typingctx, row, k0, indices, values, p, divisor):
    """Store the non-zeros of ``row[k0:k0 + 16]`` at ``indices[p:]`` (their columns) and
    ``values[p:]`` (converted to ``values.dtype`` as ``astype`` converts, then divided by
    ``divisor`` unless it is 1); return how many there are.  The same as::

        for k in range(k0, k0 + 16):
            if row[k] != 0:
                indices[p] = k
                values[p] = values.dtype.type(row[k]) / divisor
                p += 1

    but with one vector compare and two compress-stores
    (``llvm.masked.compressstore``: ``vcompressps``/``vpcompressw`` on
    AVX-512, about 5x faster than the scalar loop for MNIST; without AVX-512
    LLVM expands them into a branch per lane, slower than the plain loop, and
    :func:`.csr.fill_rows` does not call this there).  NaN counts as non-zero.
    Only the non-zeros are written.  No bounds checks: the caller guarantees 16
    inputs from ``k0`` and room for the non-zeros from ``p``.
    """
    if not _compress_types(row, k0, indices, values, p, divisor):
        return None
    sig = types.intp(row, k0, indices, values, p, divisor)

    def codegen(context, builder, signature, args):
        _, k0t, idxt, valt, pt, _ = signature.args
        _, k0_, idx_, val_, p_, _ = args
        n = COMPRESS
        vidx = ir.VectorType(context.get_value_type(idxt.dtype), n)
        v, mask = _load_nonzeros(context, builder, signature, args, n)
        k0i = context.cast(builder, k0_, k0t, idxt.dtype)
        cols = builder.add(_splat(builder, vidx, k0i), ir.Constant(vidx, list(range(n))))
        for vec, aryty, ary, suffix in (
            (v, valt, val_, "f%d" % valt.dtype.bitwidth),
            (cols, idxt, idx_, "i%d" % idxt.dtype.bitwidth),
        ):
            ptr = _pointer(context, builder, aryty, ary, p_, pt)
            fn = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [vec.type, ptr.type, mask.type]),
                "llvm.masked.compressstore.v%d%s" % (n, suffix),
            )
            builder.call(fn, [vec, ptr, mask])
        return _count_mask(builder, context, mask, n)

    return sig, codegen


PACK = 8  # inputs per call of :func:`_pack_nonzeros`


def pack_table():
    """The lane orders of :func:`_pack_nonzeros`: entry ``m`` (a ``PACK``-bit mask) holds, one
    byte each from the lowest, the lanes whose bit is set in ascending order, then zeros."""
    table = np.zeros((1 << PACK, PACK), np.uint8)
    for m in range(1 << PACK):
        lanes = [j for j in range(PACK) if m >> j & 1]
        table[m, : len(lanes)] = lanes
    return table.view(np.uint64).ravel()


@intrinsic
def _pack_nonzeros(typingctx, row, k0, indices, values, p, divisor, table):
    """:func:`_compress_nonzeros` for ``row[k0:k0 + 8]`` into float32 ``values`` where there
    are no compress-stores (AVX2): the non-zeros are moved to the low lanes by one lane
    permutation (``vpermps``; its lane order from ``table``, :func:`pack_table`, indexed
    by the compare's mask), then all 8 lanes of the values and of their columns are stored
    from ``p``.  The lanes after the non-zeros write garbage there: the caller guarantees
    room for 8 values from ``p`` and that what follows is written later.  Returns the
    number of non-zeros.  Without AVX2 (code that is compiled but never run, see
    :data:`.csr.PACK_STORES`) the permutation is done lane by lane.
    """
    if not (
        _compress_types(row, k0, indices, values, p, divisor)
        and values.dtype == types.float32
        and isinstance(table, types.Array)
        and table.dtype == types.uint64
        and table.ndim == 1
    ):
        return None
    sig = types.intp(row, k0, indices, values, p, divisor, table)

    def codegen(context, builder, signature, args):
        _, k0t, idxt, valt, pt, _, tabt = signature.args
        _, k0_, idx_, val_, p_, _, tab_ = args
        n = PACK
        i32 = ir.IntType(32)
        v, mask = _load_nonzeros(context, builder, signature, args, n)
        bits = builder.zext(
            builder.bitcast(mask, ir.IntType(n)), context.get_value_type(types.intp)
        )
        order = builder.load(_pointer(context, builder, tabt, tab_, bits, types.intp))
        lanes = builder.zext(
            builder.bitcast(order, ir.VectorType(ir.IntType(8), n)), ir.VectorType(i32, n)
        )
        if target_has_avx2():
            fn = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(v.type, [v.type, lanes.type]),
                "llvm.x86.avx2.permps",
            )
            packed = builder.call(fn, [v, lanes])
        else:
            packed = ir.Constant(v.type, ir.Undefined)
            for j in range(n):
                lane = builder.extract_element(lanes, i32(j))
                packed = builder.insert_element(packed, builder.extract_element(v, lane), i32(j))
        vidx = ir.VectorType(context.get_value_type(idxt.dtype), n)
        k0i = context.cast(builder, k0_, k0t, types.int32)
        cols = builder.add(_splat(builder, lanes.type, k0i), lanes)
        if idxt.dtype.bitwidth < 32:
            cols = builder.trunc(cols, vidx)
        elif idxt.dtype.bitwidth > 32:
            cols = builder.zext(cols, vidx)
        for vec, aryty, ary in ((packed, valt, val_), (cols, idxt, idx_)):
            ptr = _pointer(context, builder, aryty, ary, p_, pt)
            builder.store(vec, builder.bitcast(ptr, vec.type.as_pointer()), align=1)
        return _count_mask(builder, context, mask, n)

    return sig, codegen
