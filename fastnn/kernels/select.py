"""Which epoch driver trains a network: the choice rules, and the drivers by name.

Every driver computes the same exact SGD (they differ from each other only in
rounding, and each is bit-identical across thread counts); the choice is one
of speed, made once per ``SGD`` call from the sizes, the batch and the
density of the inputs:

=========== ==============================================================
``sparse``  inputs at most 40% non-zero, a hidden first layer of at most 32
            neurons (W1, W2 on MNIST, at every batch size)
``hybrid``  a hidden first layer of 32+ neurons holding 80%+ of the
            parameters, batch 8 or more (W3)
``split``   batch 8-32, a hidden first layer holding 95%+ of the parameters
``samples`` everything else (and every network without a hidden layer)
=========== ==============================================================

The thresholds were measured on the 2-core CI machine against the other
drivers; ``docs/performance-notes.md`` records the comparisons.
"""

from typing import Callable, NamedTuple

from ..layout import count_params
from .dense import samples_buffers, train_epoch
from .hybrid import HYBRID_BLOCK, hybrid_buffers, hybrid_units, train_epoch_hybrid
from .lanes import LANES
from .sparse import sparse_buffers, sparse_units, train_epoch_sparse
from .split import split_buffers, split_units, train_epoch_split

SPLIT_MIN_BATCH = 8
SPLIT_MAX_BATCH = 32
SPLIT_MIN_SHARE = 0.95  # of the parameters in the first layer
HYBRID_MIN_SHARE = 0.8
SPARSE_MAX_DENSITY = 0.4  # the crossover with the dense drivers is about 0.5


def _first_layer_holds(sizes, share):
    """Whether the first layer holds at least ``share`` of the parameters."""
    n_first = sizes[0] * sizes[1] + sizes[1]
    return n_first >= share * count_params(sizes)


def use_sparse(sizes, m, density):
    """Whether the ``"sparse"`` driver should train this network on inputs of this density.

    Inputs with at most ``SPARSE_MAX_DENSITY`` non-zero values, at least one
    hidden layer, and a first layer of at most ``2 * LANES`` neurons (each
    member updates a whole private copy of it; from 64 neurons on the dense
    drivers are as fast).
    """
    return len(sizes) >= 3 and sizes[1] <= 2 * LANES and density <= SPARSE_MAX_DENSITY


def use_hybrid(sizes, m):
    """Whether the ``"hybrid"`` driver should train batches of ``m``.

    From ``SPLIT_MIN_BATCH`` samples up, when the first layer has at least two
    blocks of ``HYBRID_BLOCK`` neurons (so that a team can share it), holds at
    least ``HYBRID_MIN_SHARE`` of the parameters and is followed by another
    layer.
    """
    return (
        len(sizes) >= 3
        and sizes[1] >= 2 * HYBRID_BLOCK
        and m >= SPLIT_MIN_BATCH
        and _first_layer_holds(sizes, HYBRID_MIN_SHARE)
    )


def use_neuron_split(sizes, m):
    """Whether the ``"split"`` driver should train batches of ``m``.

    Small mini-batches (``SPLIT_MIN_BATCH`` to ``SPLIT_MAX_BATCH``) of networks
    with a hidden first layer holding at least ``SPLIT_MIN_SHARE`` of the
    parameters (784-16-16-10: 97%, 784-30-10: 99%).
    """
    return (
        len(sizes) >= 3
        and SPLIT_MIN_BATCH <= m <= SPLIT_MAX_BATCH
        and _first_layer_holds(sizes, SPLIT_MIN_SHARE)
    )


def choose_driver(sizes, batch, density):
    """The driver for a network of ``sizes`` trained in batches of ``batch`` on inputs
    with a fraction ``density`` of non-zero values: ``"sparse"``, ``"hybrid"``,
    ``"split"`` or ``"samples"``."""
    if use_sparse(sizes, batch, density):
        return "sparse"
    if use_hybrid(sizes, batch):
        return "hybrid"
    if use_neuron_split(sizes, batch):
        return "split"
    return "samples"


class Driver(NamedTuple):
    """An epoch driver and what it needs.

    ``epoch(theta, sizes, offs, aoff, hid, out, cost, *inputs, y, perm, m,
    buf, team, eta, decay)`` trains one epoch in place and returns (sum of
    costs, number correct); ``inputs`` is ``(X,)``, or the CSR form
    ``(indptr, indices, values)`` when ``sparse_inputs``.
    ``buffers(sizes, m, dtype, team)`` allocates ``buf`` (a NamedTuple) for
    batches of up to ``m`` and teams of up to ``team`` members;
    ``units(sizes, m)`` is the most members that get work.
    ``needs_hidden``: the driver needs at least one hidden layer.
    """

    name: str
    epoch: Callable
    buffers: Callable
    units: Callable
    sparse_inputs: bool
    needs_hidden: bool


DRIVERS = {
    "sparse": Driver("sparse", train_epoch_sparse, sparse_buffers, sparse_units, True, True),
    "hybrid": Driver("hybrid", train_epoch_hybrid, hybrid_buffers, hybrid_units, False, True),
    "split": Driver("split", train_epoch_split, split_buffers, split_units, False, True),
    "samples": Driver("samples", train_epoch, samples_buffers, lambda sizes, m: 1, False, False),
}
