"""How training runs in its process: threads, team size, epoch segments, fork safety.

* :func:`num_threads` sets Numba's thread count for a call;
  :func:`_team_size` and :func:`_usable_cpus` size an epoch driver's team.
* An epoch runs as calls of whole mini-batches of about ``SEGMENT_FLOPS`` of
  work (:func:`_segment_samples`), so that Ctrl-C is seen between calls.
* A process forked after the GNU OpenMP runtime ran a parallel region cannot
  run one itself (the runtime aborts it); :func:`_check_not_forked` turns that
  into a clear error, and ``forked_after_openmp()`` lets inference run
  serially instead.
"""

import contextlib
import numbers
import os

import numba

#: Work per call of an epoch driver, in floating-point operations (about 6 per parameter
#: and sample).  An epoch runs as calls of whole mini-batches of about this much work, so
#: that Ctrl-C (KeyboardInterrupt) is seen within a few tens of milliseconds; results do
#: not depend on it.
SEGMENT_FLOPS = 4e9


def _segment_samples(n_params, m):
    """Samples per call of an epoch driver: whole mini-batches, about SEGMENT_FLOPS of work."""
    return max(1, int(SEGMENT_FLOPS // (6 * n_params)) // m) * m


# A process forked after GNU OpenMP ran a parallel region cannot run one itself (the OpenMP
# runtime aborts it).  The child learns this at fork time and refuses to train with a clear
# error; its inference runs serially.
_FORKED_AFTER_OPENMP = False


def _after_fork_in_child():
    global _FORKED_AFTER_OPENMP
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run in the parent
        return
    if layer == "omp":
        _FORKED_AFTER_OPENMP = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _check_not_forked():
    if _FORKED_AFTER_OPENMP:
        raise RuntimeError(
            "fastnn cannot train in a process forked from one that already ran fastnn's "
            "parallel kernels (the GNU OpenMP runtime aborts such a child). Start worker "
            "processes with the 'spawn' or 'forkserver' method (multiprocessing.get_context"
            "('spawn')), or train before nothing else has in the parent. Inference still works "
            "here, serially."
        )


def _team_size(most):
    """Members of a training team: one per Numba thread, at most ``most`` (tests replace it)."""
    return min(numba.get_num_threads(), most)


def _usable_cpus():
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@contextlib.contextmanager
def num_threads(threads):
    """Run the enclosed code with ``numba.set_num_threads(threads)`` (None: leave as is)."""
    if threads is None:
        yield
        return
    limit = numba.config.NUMBA_NUM_THREADS
    if (
        isinstance(threads, bool)
        or not isinstance(threads, numbers.Integral)
        or not 1 <= threads <= limit
    ):
        raise ValueError(f"threads must be an integer from 1 to {limit}, got {threads!r}")
    before = numba.get_num_threads()
    numba.set_num_threads(int(threads))
    try:
        yield
    finally:
        numba.set_num_threads(before)


def forked_after_openmp():
    """Whether this process was forked after its parent ran OpenMP parallel regions."""
    return _FORKED_AFTER_OPENMP
