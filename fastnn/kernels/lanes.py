"""Lane vectors: 16 neurons at a time, written in LLVM IR.

The sparse-input driver (:mod:`.sparse`) stores the first layer's ``W``
transposed, so that one input's weights to 16 neurons are one lane vector
(one AVX-512 register of float32, two of float64).  Per non-zero input the
forward pass is one vector multiply-add (:func:`_lanes_sparse_dot`) and so is
the update (:func:`_lanes_sparse_axpy`).

The row kernels hold up to eight lane vectors of sums in registers while
they run over a list of rows (:func:`_lanes_rows`: the ``"optim"`` driver's
first layer, any width: a sample's non-zero inputs in the forward pass, an
input's samples in the mini-batch for the gradient; without AVX-512 its
vectors are one register each, up to ``MAX_ROW_VECTORS`` of them) or over
the neurons of the layer above (:func:`_lanes_rows_combine`: every driver's
backpropagation); each sum runs in the order of the plain loop it replaces,
so they round as it did.

Why IR and not a Numba loop: LLVM fully unrolls a 16-iteration loop and then
cannot rule out that the accumulator and ``W`` overlap, so it emits 16 scalar
multiply-adds, each stored back; the sparse first layer written that way ran
1.5-3x slower than the dense kernels.

No intrinsic checks bounds: the caller guarantees every index
(``idx`` in ``[0, n_in)``, the lane vectors inside their arrays).
"""

import contextlib

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._llvm import _splat, target_has_avx512

LANES = 16  # neurons per lane vector: one AVX-512 register of float32 (two of float64)
NARROW = 4  # inputs per vector of :func:`_lanes_rows_combine` after the whole lane vectors


def _lane_vector_args(W, idx, val, vec):
    """Whether the argument types fit the lane-vector intrinsics."""
    return (
        isinstance(W, types.Array)
        and W.ndim == 1
        and isinstance(W.dtype, types.Float)
        and all(
            isinstance(a, types.Array) and a.ndim == 1 and a.dtype == W.dtype for a in (val, vec)
        )
        and isinstance(idx, types.Array)
        and idx.ndim == 1
        and isinstance(idx.dtype, types.Integer)
    )


class _LaneIR:
    """IR helpers for one call of a lane-vector intrinsic, arguments looked up by name.

    ``names`` are the intrinsic's parameter names in order; array arguments
    are reached through :meth:`ptr` / :meth:`vptr`, integer arguments through
    :meth:`intp` (as ``intp`` values).  ``W`` is always the first argument.
    Vectors have ``LANES`` lanes, or ``lanes(dtype)`` when that function is given.
    """

    def __init__(self, context, builder, signature, args, names, lanes=None):
        self.context, self.builder = context, builder
        self.types = dict(zip(names, signature.args))
        self.values = dict(zip(names, args))
        self.arrays = {
            n: context.make_array(t)(context, builder, self.values[n])
            for n, t in self.types.items()
            if isinstance(t, types.Array)
        }
        self.dtype = self.types[names[0]].dtype
        self.lanes = LANES if lanes is None else lanes(self.dtype)
        self.vty = ir.VectorType(context.get_value_type(self.dtype), self.lanes)
        self.align = self.dtype.bitwidth // 8  # lane vectors are only element-aligned

    def intp(self, name):
        """Integer argument ``name`` as an ``intp`` value."""
        return self.context.cast(self.builder, self.values[name], self.types[name], types.intp)

    def scalar(self, name):
        """Scalar argument ``name`` in the dtype of ``W``."""
        return self.context.cast(self.builder, self.values[name], self.types[name], self.dtype)

    def ptr(self, name, index):
        """Pointer to ``name[index]``."""
        return cgutils.get_item_pointer(
            self.context,
            self.builder,
            self.types[name],
            self.arrays[name],
            [index],
            wraparound=False,
        )

    def vptr(self, name, index):
        """Pointer to the lane vector ``name[index:index + lanes]``."""
        return self.builder.bitcast(self.ptr(name, index), self.vty.as_pointer())

    def load(self, name, index):
        """``name[index]`` (a scalar)."""
        return self.builder.load(self.ptr(name, index))

    def weight_index(self, p):
        """``woff + idx[p]*ld``: where non-zero number ``p``'s weights start in ``W``."""
        b = self.builder
        col = self.context.cast(b, self.load("idx", p), self.types["idx"].dtype, types.intp)
        return b.add(self.intp("woff"), b.mul(col, self.intp("ld")))

    def weight_row(self, p):
        """Pointer to the lane vector ``W[woff + idx[p]*ld:]`` of non-zero number ``p``."""
        return self.vptr("W", self.weight_index(p))

    def splat(self, x):
        """A lane vector with every lane ``x``."""
        return _splat(self.builder, self.vty, x)

    def fma(self, a, b, c):
        """``a * b + c`` lane by lane, one fused multiply-add (``llvm.fma``)."""
        name = "llvm.fma.v%d%s" % (self.lanes, "f32" if self.dtype == types.float32 else "f64")
        fn = cgutils.get_or_insert_function(
            self.builder.module, ir.FunctionType(self.vty, [self.vty] * 3), name
        )
        return self.builder.call(fn, [a, b, c])


_DOT_ARGS = ("W", "woff", "ld", "idx", "val", "p0", "p1", "dst", "doff")
_AXPY_ARGS = ("W", "woff", "ld", "idx", "val", "p0", "p1", "src", "soff", "alpha")


@intrinsic
def _lanes_sparse_dot(typingctx, W, woff, ld, idx, val, p0, p1, dst, doff):
    """Forward pass of 16 neurons over one sparse input; the same as::

        for p in range(p0, p1):
            c = woff + idx[p] * ld
            dst[doff:doff + 16] += val[p] * W[c:c + 16]

    except for rounding: one vector multiply-add per non-zero into four
    independent accumulators (``p`` modulo 4 for the whole quads, the tail
    into the first), summed pairwise, then added to ``dst``.  ``W`` is the
    layer's weights transposed, ``ld`` values per input.  No bounds checks.
    """
    if not _lane_vector_args(W, idx, val, dst):
        return None
    sig = types.void(W, woff, ld, idx, val, p0, p1, dst, doff)

    def codegen(context, builder, signature, args):
        v = _LaneIR(context, builder, signature, args, _DOT_ARGS)
        intp = context.get_value_type(types.intp)
        zero = ir.Constant(v.vty, [0.0] * LANES)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(4)]

        def term(p, acc):  # acc += val[p] * (lane vector of input idx[p])
            w = builder.load(v.weight_row(p), align=v.align)
            builder.store(v.fma(v.splat(v.load("val", p)), w, builder.load(acc)), acc)

        p0_, p1_ = v.intp("p0"), v.intp("p1")
        quads = builder.sdiv(builder.sub(p1_, p0_), intp(4))
        with cgutils.for_range(builder, quads) as loop:
            base = builder.add(p0_, builder.mul(loop.index, intp(4)))
            for k in range(4):
                term(builder.add(base, intp(k)), accs[k])
        tail = builder.add(p0_, builder.mul(quads, intp(4)))
        with cgutils.for_range(builder, builder.sub(p1_, tail)) as loop:
            term(builder.add(tail, loop.index), accs[0])
        a = [builder.load(acc) for acc in accs]
        total = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
        out = v.vptr("dst", v.intp("doff"))
        builder.store(builder.fadd(builder.load(out, align=v.align), total), out, align=v.align)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def _lanes_sparse_axpy(typingctx, W, woff, ld, idx, val, p0, p1, src, soff, alpha):
    """Update of 16 neurons' weights from one sparse input; the same as::

        for p in range(p0, p1):
            c = woff + idx[p] * ld
            W[c:c + 16] += (alpha * val[p]) * src[soff:soff + 16]

    with one fused multiply-add per non-zero: only the rows of the non-zero
    inputs move.  ``src`` must not overlap ``W``.  No bounds checks.
    """
    if not (_lane_vector_args(W, idx, val, src) and isinstance(alpha, types.Float)):
        return None
    sig = types.void(W, woff, ld, idx, val, p0, p1, src, soff, alpha)

    def codegen(context, builder, signature, args):
        v = _LaneIR(context, builder, signature, args, _AXPY_ARGS)
        alpha_ = v.scalar("alpha")
        d = builder.load(v.vptr("src", v.intp("soff")), align=v.align)
        p0_ = v.intp("p0")
        with cgutils.for_range(builder, builder.sub(v.intp("p1"), p0_)) as loop:
            p = builder.add(p0_, loop.index)
            row = v.weight_row(p)
            x = v.splat(builder.fmul(alpha_, v.load("val", p)))
            builder.store(v.fma(x, d, builder.load(row, align=v.align)), row, align=v.align)
        return context.get_dummy_value()

    return sig, codegen


# Row kernels: the same sums as plain loops over a row of neurons, ``nv`` lane
# vectors at a time held in registers.  A Numba loop ``a[j] += v * w[j]`` over a
# row loads and stores ``a`` once per non-zero (LLVM cannot keep a row in
# registers across the loop over non-zeros); these load it once.  Each neuron's
# sum runs in the order of the loop they replace (one multiply-add per term, in
# order), so results are bit-identical to it.


@contextlib.contextmanager
def _row_loop(builder, start, stop, unroll):
    """``for i in range(start, stop)`` over ``intp`` values, yielding ``i``; unless
    ``unroll``, the loop carries ``llvm.loop.unroll.disable``.  ``cgutils.for_range``
    builds the same loop but keeps its back-edge branch, which holds that hint, to itself."""
    intp = start.type
    pre = builder.block
    cond = builder.append_basic_block("row.cond")
    body = builder.append_basic_block("row.body")
    end = builder.append_basic_block("row.end")
    builder.branch(cond)
    builder.position_at_end(cond)
    i = builder.phi(intp)
    i.add_incoming(start, pre)
    builder.cbranch(builder.icmp_signed("<", i, stop), body, end)
    builder.position_at_end(body)
    yield i
    i.add_incoming(builder.add(i, ir.Constant(intp, 1)), builder.block)
    latch = builder.branch(cond)
    if not unroll:  # a loop ID: a node of its own whose first operand is itself, then the
        # hints (Module.add_metadata would hand every loop the same node)
        module = builder.module
        hint = module.add_metadata([ir.MetaDataString(module, "llvm.loop.unroll.disable")])
        loop_id = ir.MDValue(module, [hint], name=str(len(module.metadata)))
        loop_id.operands = (loop_id, hint)
        latch.set_metadata("llvm.loop", loop_id)
    builder.position_at_end(end)


def _vector_count(nv):
    """The literal ``nv`` (lane vectors per call) as an int, or None."""
    if isinstance(nv, types.IntegerLiteral) and nv.literal_value in (1, 2, 4, 8):
        return nv.literal_value
    return None


_ROWS_ARGS = ("W", "woff", "ld", "idx", "val", "p0", "p1", "vec", "voff", "nv", "t")
# The row kernel's vectors and how many of them one call holds in registers.  With
# AVX-512: lane vectors of 16 (one register of float32, two of float64), eight of them.
# Without (AVX2: 16 registers of 256 bits): one register each (8 float32, 4 float64),
# up to sixteen, and LLVM must not unroll the loop over the non-zeros (two iterations'
# values do not fit beside the sums).  A row of 100 float32 neurons is then 12 whole
# vectors and one of 4 lanes, and the broadcast value, the mask and a loaded vector fit
# beside them; lane vectors of 16 wasted a register on an all-masked half and spilled
# sums to the stack.  Sixteen sums and a mask spill a few, but cost less than a second
# pass over the non-zeros (rows of 128).  docs/performance-notes.md has the figures.
_ROW_AVX512 = target_has_avx512()
MAX_ROW_VECTORS = 8 if _ROW_AVX512 else 16


def _row_lanes_of(dtype):
    """Lanes of :func:`_lanes_rows`'s vectors for a float ``dtype`` (a Numba type)."""
    return LANES if _ROW_AVX512 else 256 // dtype.bitwidth


def row_lanes(W):
    """Lanes of :func:`_lanes_rows`'s vectors for ``W``'s dtype (a compile-time constant)."""


@overload(row_lanes)
def _row_lanes_typed(W):
    n = _row_lanes_of(W.dtype)
    return lambda W: n


def _masked_memory(builder, name, vty, ptr_type, mask_type):
    """``llvm.masked.load`` or ``llvm.masked.store`` (``name``) of lane vectors ``vty``."""
    i32 = ir.IntType(32)
    if name == "load":
        fty = ir.FunctionType(vty, [ptr_type, i32, mask_type, vty])
    else:
        fty = ir.FunctionType(ir.VoidType(), [vty, ptr_type, i32, mask_type])
    element = "f32" if isinstance(vty.element, ir.FloatType) else "f64"
    vector = "v%d%s" % (vty.count, element)
    pointer = "p0" if getattr(ptr_type, "is_opaque", False) else "p0" + vector
    return cgutils.get_or_insert_function(
        builder.module, fty, "llvm.masked.%s.%s.%s" % (name, vector, pointer)
    )


@intrinsic
def _lanes_rows(typingctx, W, woff, ld, idx, val, p0, p1, vec, voff, nv, t):
    """``n = (nv-1)*L + t`` neurons of rows over one sparse input, with ``L`` the
    vector's lanes (:func:`row_lanes`); the same as::

        for p in range(p0, p1):
            c = woff + idx[p] * ld
            vec[voff:voff + n] += val[p] * W[c:c + n]

    with ``vec`` kept in ``nv`` vectors in registers, the last of which
    holds only its first ``t`` lanes (masked loads and stores, which touch no
    memory in the other lanes): one multiply-add per non-zero and lane, in
    ``p`` order.  ``nv``: 1 to ``MAX_ROW_VECTORS`` (a switch over one compiled
    loop per count); ``t``: 1 to ``L``.  No bounds checks.
    """
    if not (
        _lane_vector_args(W, idx, val, vec)
        and isinstance(nv, types.Integer)
        and isinstance(t, types.Integer)
    ):
        return None
    nv, t = types.unliteral(nv), types.unliteral(t)  # one version for every count
    sig = types.void(W, woff, ld, idx, val, p0, p1, vec, voff, nv, t)

    def codegen(context, builder, signature, args):
        v = _LaneIR(context, builder, signature, args, _ROWS_ARGS, _row_lanes_of)
        nl = v.lanes
        intp = context.get_value_type(types.intp)
        # The lane mask from a compare of integer lanes as wide as the values: with AVX2
        # that compare's result is the mask vmaskmovps/pd takes; from wider lanes LLVM
        # re-packed it in every iteration.
        iw = ir.IntType(v.dtype.bitwidth)
        lane = ir.VectorType(iw, nl)
        tw = v.intp("t")
        if iw.width < types.intp.bitwidth:
            tw = builder.trunc(tw, iw)
        mask = builder.icmp_signed(
            "<", ir.Constant(lane, list(range(nl))), _splat(builder, lane, tw)
        )
        voff_, p0_ = v.intp("voff"), v.intp("p0")
        align = ir.IntType(32)(v.align)
        ptr_type = v.vty.as_pointer()
        masked_load = _masked_memory(builder, "load", v.vty, ptr_type, mask.type)
        masked_store = _masked_memory(builder, "store", v.vty, ptr_type, mask.type)
        zero = ir.Constant(v.vty, [0.0] * nl)

        def rows(n):  # the loop for n vectors, the last one masked
            def load(q, ptr):
                if q < n - 1:
                    return builder.load(ptr, align=v.align)
                return builder.call(masked_load, [ptr, align, mask, zero])

            vecs = [v.vptr("vec", builder.add(voff_, intp(nl * q))) for q in range(n)]
            held = [cgutils.alloca_once(builder, v.vty) for _ in range(n)]
            for q, (acc, ptr) in enumerate(zip(held, vecs)):
                builder.store(load(q, ptr), acc)
            with _row_loop(builder, p0_, v.intp("p1"), _ROW_AVX512) as p:
                x = v.splat(v.load("val", p))
                row = v.weight_index(p)
                for q in range(n):
                    w = load(q, v.vptr("W", builder.add(row, intp(nl * q))))
                    builder.store(v.fma(x, w, builder.load(held[q])), held[q])
            for q, (acc, ptr) in enumerate(zip(held, vecs)):
                if q < n - 1:
                    builder.store(builder.load(acc), ptr, align=v.align)
                else:
                    builder.call(masked_store, [builder.load(acc), ptr, align, mask])

        done = builder.append_basic_block("rows.done")
        switch = builder.switch(v.intp("nv"), done)
        for n in range(1, MAX_ROW_VECTORS + 1):
            case = builder.append_basic_block("rows.%d" % n)
            switch.add_case(intp(n), case)
            builder.position_at_end(case)
            rows(n)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


def _sample_count(ns):
    """The literal ``ns`` (samples per call) as an int, or None."""
    if isinstance(ns, types.IntegerLiteral) and ns.literal_value in (1, 4):
        return ns.literal_value
    return None


@intrinsic
def _lanes_rows_combine(typingctx, W, woff, ld, n, D, i, dcol, tcol, ns, nv, width):
    """Deltas one layer down, ``ns`` samples x ``nv`` vectors of ``width`` inputs; the same
    as::

        for s in range(ns):
            t = D[i + s, tcol:tcol + nv*width]
            t[:] = 0
            for j in range(n):
                t += W[woff + j*ld:woff + j*ld + nv*width] * D[i + s, dcol + j]

    ``W`` row-major with ``ld`` values per row (the layer's ``n`` neurons by
    its inputs), ``D`` a 2-D array of the same dtype; the ``ns*nv``
    accumulators stay in registers, one multiply-add per term in ``j``
    order.  ``ns``: a literal 1 or 4; ``nv``: 1, 2, 4 or 8; ``width``: a literal
    ``LANES`` (16) or :data:`NARROW` (4, for the inputs after the last whole lane vector,
    which a plain loop summed one at a time: W5's backpropagation from 10 neurons to
    100, one thread, 60,000 samples, 4.2-5.1 ms with its last 4 inputs in that loop,
    2.3-4.1 ms in a vector of 4, the same bits).  No bounds checks; the written
    columns must not overlap ``D[:, dcol:dcol + n]``.
    """
    s_, n_ = _sample_count(ns), _vector_count(nv)
    w_ = width.literal_value if isinstance(width, types.IntegerLiteral) else None
    if (
        s_ is None
        or n_ is None
        or w_ not in (LANES, NARROW)
        or not (isinstance(W, types.Array) and W.ndim == 1 and isinstance(W.dtype, types.Float))
        or not (isinstance(D, types.Array) and D.ndim == 2 and D.dtype == W.dtype)
    ):
        return None
    sig = types.void(W, woff, ld, n, D, i, dcol, tcol, ns, nv, width)

    def codegen(context, builder, signature, args):
        names = ("W", "woff", "ld", "n", "D", "i", "dcol", "tcol")
        v = _LaneIR(context, builder, signature, args, names, lambda dtype: w_)
        intp = context.get_value_type(types.intp)
        Dty, Dary = v.types["D"], v.arrays["D"]

        def d_ptr(row, col):
            return cgutils.get_item_pointer(
                context, builder, Dty, Dary, [row, col], wraparound=False
            )

        rows = [builder.add(v.intp("i"), intp(s)) for s in range(s_)]
        zero = ir.Constant(v.vty, [0.0] * w_)
        accs = [[cgutils.alloca_once_value(builder, zero) for _ in range(n_)] for _ in rows]
        woff_, ld_, dcol_ = v.intp("woff"), v.intp("ld"), v.intp("dcol")
        with cgutils.for_range(builder, v.intp("n")) as loop:
            j = loop.index
            base = builder.add(woff_, builder.mul(j, ld_))
            w = [
                builder.load(v.vptr("W", builder.add(base, intp(w_ * q))), align=v.align)
                for q in range(n_)
            ]
            for row, acc in zip(rows, accs):
                x = v.splat(builder.load(d_ptr(row, builder.add(dcol_, j))))
                for q in range(n_):
                    builder.store(v.fma(w[q], x, builder.load(acc[q])), acc[q])
        tcol_ = v.intp("tcol")
        for row, acc in zip(rows, accs):
            for q in range(n_):
                out = builder.bitcast(
                    d_ptr(row, builder.add(tcol_, intp(w_ * q))), v.vty.as_pointer()
                )
                builder.store(builder.load(acc[q]), out, align=v.align)
        return context.get_dummy_value()

    return sig, codegen
