"""The team: members of one parallel region that meet at spin barriers.

Drivers that run a whole epoch as one parallel region (:mod:`.split`,
:mod:`.hybrid`, :mod:`.sparse`) start ``want`` iterations of a ``prange``;
each iteration joins the team (:func:`_join`) and gets a slot.  Members then
meet at :func:`_barrier` once or twice per mini-batch.  ``sync`` is an int64
array of 48 entries: ``sync[0]`` counts joins, ``sync[16]`` holds the size of
a team closed early, ``sync[32]`` counts barrier arrivals (each on its own
cache line).  The team's size never changes results: every driver cuts the
work into pieces whose layout depends only on the batch and network sizes.

Every parallel region (these drivers', and the chunk regions of
:mod:`.dense` and :mod:`.optim`) calls its member function by address
(:func:`member_address`, :func:`._llvm._call_native`) instead of directly,
so that compiling the region does not compile the member's call tree again.
"""

import numpy as np
from numba import njit, types
from numba._dispatcher import compute_fingerprint

from ._jit import _opts
from ._llvm import _atomic_add, _atomic_cas, _atomic_load, _spin_pause, _yield_cpu

_CLOSED = 1 << 40  # marks a closed team in the join counter
_PATIENCE = 1 << 20  # spins (about 10-30 ms) to wait for the team's members
_SPINS_BEFORE_YIELD = 2000  # a barrier wait longer than this (tens of us) yields the CPU


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


_ADDRESSES = {}  # member_address's key -> the member's address


def member_address(member, args):
    """The address of ``member`` (an ``@njit`` function whose first two arguments are int64:
    a slot or chunk and their count) compiled for the arguments that follow, ``args``:
    what a driver hands to :func:`._llvm._call_native`.

    Compiles ``member`` (or loads it from the cache) the first time.  The
    types are looked up once per combination, keyed by Numba's fingerprint of
    the arguments (dtypes, dimensions, layouts, read-only flags; a few
    microseconds, where ``typeof`` of each took 0.28 ms a call) plus what it
    leaves out: the arguments' classes (named tuples of the same fields) and
    whether all arrays are aligned.
    """
    try:
        key = (member, compute_fingerprint(args), tuple(map(type, args)), _all_aligned(args))
    except (TypeError, ValueError):  # a type Numba has no fingerprint for
        key = None
    address = _ADDRESSES.get(key) if key is not None else None
    if address is None:
        sig = (types.int64, types.int64) + tuple(member.typeof_pyval(a) for a in args)
        member.compile(sig)
        compiled = member.overloads[sig]
        address = compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name)
        if key is not None:
            _ADDRESSES[key] = address
    return address


def _all_aligned(args):
    """Whether every array in ``args`` (tuples searched too) is aligned."""
    for a in args:
        if isinstance(a, tuple):
            if not _all_aligned(a):
                return False
        elif isinstance(a, np.ndarray) and not a.flags.aligned:
            return False
    return True
