"""Numba kernels: forward pass, backpropagation, SGD update and the epoch drivers.

Where things are
----------------
================ ==============================================================
module           defines
================ ==============================================================
``_jit``         compile options (``_opts``, ``_dot_opts``, ``_exact_opts``),
                 float32 constants
``_llvm``        LLVM intrinsics: prefetch, atomics, pause/yield, ``p * 2**k``,
                 ``fma``, compress-store, a scratch array on the stack
``lanes``        16-neuron lane vectors in LLVM IR: sparse inputs, row sums
``activations``  vectorised ``exp``, activations, derivatives, output deltas
``dense``        blocked forward / gradient / backprop, the ``"samples"`` driver,
                 the full-batch gradient
``inference``    forward pass of many samples (each row the same way), or of one
``inputs``       the gradient of a neuron or of the cost with respect to the input
``optim``        the ``"optim"`` driver: momentum, Nesterov, Adam, sample weights,
                 target matrices (scikit-learn's estimators, step for step)
``columns``      its epoch for CSR inputs: the first layer split by input columns
``team``         joining a team, its spin barrier, members' addresses
``split``        the ``"split"`` driver (first layer by neuron pairs)
``hybrid``       the ``"hybrid"`` driver (first layer by neuron blocks)
``sparse``       the ``"sparse"`` driver
``csr``          the CSR form of the inputs (counted, checked and filled by rows)
``shuffle``      scikit-learn's sample order (NumPy's legacy shuffle) in compiled code
``select``       the choice rules, :func:`choose_driver` and :data:`DRIVERS`
``buffers``      cache-line aligned allocation
``cache``        where compiled kernels are cached; the whole-package cache key
``_startup``     spares Numba's first compile an import of ``scipy.linalg``
================ ==============================================================

Every kernel is a pure function over arrays it is given; nothing allocates
in a hot loop.  The Python layer (:mod:`fastnn.network`) validates inputs
once, asks :func:`choose_driver` (or is told a driver by name), allocates
the driver's buffers with ``DRIVERS[name].buffers`` and calls its epoch
function.  Measurements behind the design: ``docs/performance-notes.md``.

Glossary of arguments
---------------------
The kernels take flat arguments, except that each epoch driver takes its
buffers as one NamedTuple ``buf`` (its ``*Buffers`` class) and unpacks it at
the top (measured: no change in epoch time or compile time).  The same names
mean the same thing everywhere:

``theta``
    the parameter vector.  Layer ``l`` maps ``sizes[l]`` inputs to
    ``sizes[l+1]`` outputs; its ``W`` ``(n_out, n_in)`` is row-major at
    ``offs[l]``, followed by its bias ``b`` (``n_out``).  Gradients ``g``,
    ``G[c]`` and private copies ``P[slot]`` use the same layout (a copy of
    ``theta[base:]`` uses offsets ``offp = offs - base``).
``sizes``, ``offs``, ``aoff``
    int64 arrays: neurons per layer; start of each layer's ``W`` in
    ``theta``; first column of each layer's outputs in ``A``/``D``.
``hid``, ``out``, ``cost``
    codes of the hidden activation, the output activation and the cost
    (:mod:`fastnn.layout`).
``X``, ``y``; ``indptr``, ``indices``, ``values``
    inputs ``(n, sizes[0])`` and int64 labels; the CSR form of the inputs.
``perm``, ``rows``, ``ident``
    the epoch's sample order; the samples of one mini-batch
    (``perm[b0:b1]``); ``arange(m)`` (the rows of ``A`` when ``A`` is the
    input of a layer).
``m``, ``mb``, ``s0:s1``
    the batch size; this mini-batch's size (the last may be smaller); a
    range of samples within the mini-batch (a chunk).
``A``, ``D``
    activations and deltas, ``(m, H)`` with ``H >= sum(sizes[1:])``: layer
    ``l``'s outputs in columns ``aoff[l]:aoff[l] + sizes[l+1]``.
``G``, ``CS``, ``stats``
    chunk gradient sums (``G[c]`` like ``theta``), chunk cost sums and
    correct counts (``(MAX_CHUNKS, 2)``).
``sync``, ``want``, ``slot``, ``team``
    the team's int64 counters (:mod:`.team`); members asked for; a member's
    number; the size of the team that formed.
``eta``, ``decay``, ``step``, ``keep``
    learning rate; L2 weight decay; ``eta / mb``; ``1 - eta * decay``.

Buffer shapes are stated once, in each driver's ``*Buffers`` class.
"""

from . import _startup
from . import cache as _cache

_cache.install()  # before any kernel is defined: every kernel gets the package-wide key
_startup.defer_scipy_linalg()  # before Numba's first compile or cache load

from .activations import _exp_inplace  # noqa: E402
from .buffers import line_aligned_empty, whole_lines  # noqa: E402
from .csr import count_rows, csr_rows  # noqa: E402
from .dense import (  # noqa: E402
    MAX_CHUNKS,
    PARALLEL_UPDATE_MIN,
    UPDATE_BLOCK,
    SamplesBuffers,
    chunk_count,
    gradient,
    samples_buffers,
    sgd_step,
    train_epoch,
    update_blocks,
)
from .hybrid import HYBRID_BLOCK, HybridBuffers, hybrid_buffers, train_epoch_hybrid  # noqa: E402
from .inference import forward, forward_one, forward_rows  # noqa: E402
from .lanes import LANES  # noqa: E402
from .select import (  # noqa: E402
    DRIVERS,
    SPARSE_MAX_DENSITY,
    Driver,
    choose_driver,
    use_hybrid,
    use_neuron_split,
    use_sparse,
)
from .sparse import (  # noqa: E402
    SparseBuffers,
    sparse_buffers,
    sparse_chunks,
    train_epoch_sparse,
)
from .split import SplitBuffers, split_buffers, train_epoch_split  # noqa: E402

clear_cache = _cache.clear

__all__ = [
    "DRIVERS",
    "HYBRID_BLOCK",
    "LANES",
    "MAX_CHUNKS",
    "PARALLEL_UPDATE_MIN",
    "UPDATE_BLOCK",
    "Driver",
    "HybridBuffers",
    "SamplesBuffers",
    "SparseBuffers",
    "SplitBuffers",
    "choose_driver",
    "SPARSE_MAX_DENSITY",
    "chunk_count",
    "clear_cache",
    "count_rows",
    "csr_rows",
    "forward",
    "forward_one",
    "forward_rows",
    "gradient",
    "hybrid_buffers",
    "line_aligned_empty",
    "samples_buffers",
    "sgd_step",
    "sparse_buffers",
    "sparse_chunks",
    "split_buffers",
    "train_epoch",
    "train_epoch_hybrid",
    "train_epoch_sparse",
    "train_epoch_split",
    "update_blocks",
    "use_hybrid",
    "use_neuron_split",
    "use_sparse",
    "whole_lines",
    "_exp_inplace",
]
