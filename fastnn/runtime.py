"""How training runs in its process: threads, team size, epoch segments, fork safety.

* :func:`num_threads` sets Numba's thread count for a call;
  :func:`_team_size` and :func:`_usable_cpus` size an epoch driver's team;
  :func:`thread_budget` is what a call uses by default (inside a Dask
  worker, the worker's share; :func:`parallel_section` enforces it).
* An epoch runs as calls of whole mini-batches of about ``SEGMENT_FLOPS`` of
  work (:func:`_segment_samples`), so that Ctrl-C is seen between calls.
* A process forked after the GNU OpenMP runtime ran a parallel region cannot
  run one itself (the runtime aborts it); :func:`_check_not_forked` turns that
  into a clear error, and ``forked_after_openmp()`` lets inference run
  serially instead.
"""

import contextlib
import math
import numbers
import os
import sys
import threading

import numba

#: Work per call of an epoch driver, in floating-point operations (about 6 per parameter
#: and sample).  An epoch runs as calls of whole mini-batches of about this much work (a
#: few milliseconds), so that Ctrl-C (KeyboardInterrupt) is seen promptly and the thread
#: count can follow the load (ThreadTuner); results do not depend on it.
SEGMENT_FLOPS = 1e9


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
            "processes with the 'spawn' or 'forkserver' method "
            "(multiprocessing.get_context('spawn')), or fork them before the parent trains. "
            "Inference still works here, serially."
        )


def _team_size(most):
    """Members of a training team: one per Numba thread, at most ``most`` (tests replace it)."""
    return min(numba.get_num_threads(), most)


def _usable_cpus():
    """CPUs this process may really use: its affinity mask (where the OS has one), capped
    by a cgroup CPU quota (containers: ``docker --cpus``, Kubernetes CPU limits) and,
    in a task of a Dask worker, by the worker's share (:func:`_dask_task_threads`)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    cpus = max(1, min(cpus, quota)) if quota else cpus
    share = _dask_task_threads()
    return min(cpus, share) if share else cpus


def _dask_task_threads():
    """In a Dask worker (a thread running one of its tasks, or a worker process): the
    worker's thread count (``nthreads``, ``threads_per_worker``) divided among the tasks
    it is running now (at least 1).  Else None.  Dask's nanny sets
    ``OMP_NUM_THREADS=1`` for BLAS but nothing for Numba, which would otherwise
    start one thread per core in every worker.  Looks only if ``distributed``
    is already imported (it never imports it)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return None
    try:
        worker = distributed.get_worker()
    except (ValueError, AttributeError):  # not in a task: a worker process's own worker
        workers = list(getattr(getattr(distributed, "Worker", None), "_instances", ()))
        if len(workers) != 1:
            return None
        worker = workers[0]
    state = getattr(worker, "state", worker)
    try:
        nthreads = int(state.nthreads)
        running = int(state.executing_count)
    except (AttributeError, TypeError, ValueError):
        return None
    return max(1, nthreads // max(1, running))


def thread_budget():
    """The most threads a fastnn call in this thread uses by default: Numba's thread
    count (``NUMBA_NUM_THREADS``, as set by joblib's loky workers), capped by the CPUs
    this process may use and, in a Dask task, by its worker's share."""
    return min(numba.get_num_threads(), _usable_cpus())


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """CPUs allowed by this process's cgroup CPU quota, rounded up; None without a quota.

    cgroup v2: ``cpu.max`` (``"150000 100000"``: 1.5 CPUs; ``"max 100000"``: no
    quota) in the process's group and each parent up to ``root``, the smallest
    counting.  cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` (quota -1:
    none) under ``root/cpu,cpuacct`` or ``root/cpu``.
    """
    limits = []
    groups = [""]
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[2].startswith("/"):
            groups.append(parts[2].rstrip("/"))
    for group in groups:  # v2: this group and its parents
        path = group
        while True:
            text = _read(os.path.join(root + path, "cpu.max"))
            if text:
                quota, _, period = text.partition(" ")
                if quota != "max" and period:
                    limits.append(int(quota) / int(period))
            if not path:
                break
            path = os.path.dirname(path) if path != "/" else ""
            path = "" if path == "/" else path
    for sub in ("cpu,cpuacct", "cpu"):  # v1
        quota = _read(os.path.join(root, sub, "cpu.cfs_quota_us"))
        period = _read(os.path.join(root, sub, "cpu.cfs_period_us"))
        if quota and period and int(quota) > 0 and int(period) > 0:
            limits.append(int(quota) / int(period))
    if not limits:
        return None
    return max(1, math.ceil(min(limits) - 1e-9))


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


class ThreadTuner:
    """Chooses the thread count of each driver call: all threads, or one.

    Beside other busy processes, a team whose member the OS has descheduled
    makes every other member wait; then one thread is faster than all.  The
    tuner times every call (seconds per sample: a moving average for the
    current choice, the latest trial for the other), keeps its choice unless
    the other is at least 15% faster, and now and then tries the other on a
    quarter-sized call: after 8 calls, then at doubling intervals up to 128
    while the choice holds, from 8 again when it flips.  When the current
    choice becomes 30% slower than it was when last confirmed (a busy
    process has appeared), it tries the other on the next call instead of
    waiting out the interval: after a long idle run that wait was up to 128
    calls, and a bench run beside two busy processes stayed on both threads,
    1.4-1.6x slower than one.  A slowdown of one thread does not trigger a
    trial: more load makes the team slower still, and the timings beside
    busy processes jump by 30% and more from call to call (beside two, 4
    of 7 W1 epochs carried such a trial, each costing 1.2-2.5 normal
    calls).  Trials of the team are eighth-sized calls, and a trial that wins is
    repeated once before the team takes over: beside busy processes a team
    call is now and then fast (the neighbours off the CPU for a moment), and
    each such lucky trial cost a full team call up to 10x slower than one
    thread (a W2 epoch beside two busy processes ran a trial and then 3
    full team calls: 0.98 s against 0.19 s on one thread).  Trained weights are
    bit-identical whatever the thread count, so this changes speed only.
    """

    FIRST, LONGEST, WEIGHT, MARGIN, SLOWDOWN, TEAM_TRIAL = 8, 128, 0.3, 0.85, 1.3, 0.125

    def __init__(self, threads):
        self.options = (threads, 1) if threads > 1 else (threads,)
        self.rate = {}  # threads -> seconds per sample (moving average)
        self.current = threads
        self.interval = self.FIRST
        self.countdown = self.FIRST
        self.calls = 0
        self.settled = None  # rate of the current choice when last confirmed
        self.confirming = False  # a team trial won: the next call repeats it

    def choose(self):
        """``(threads, share)``: the thread count for the next call and the share of a
        normal call's samples to give it (1; 0.25 when trying one thread, 0.125 when
        trying the team again: beside busy processes a team ran up to 10x slower)."""
        if len(self.options) == 1:
            return self.current, 1.0
        if self.calls < 2:  # the first call may compile or load the kernels: not timed
            return self.options[0], 1.0
        if self.options[1] not in self.rate:
            return self.options[1], 1.0
        self.countdown -= 1
        if self.countdown <= 0:
            if self.current == self.options[0]:
                return self.options[1], 0.25
            return self.options[0], self.TEAM_TRIAL
        return self.current, 1.0

    def record(self, threads, seconds, samples):
        """Time of a call of ``samples`` samples run with ``threads`` threads."""
        self.calls += 1
        if self.calls == 1 or samples == 0:
            return
        r = seconds / samples
        one = self.options[-1]
        if (
            threads == self.options[0] != self.current  # a trial of the team
            and not self.confirming
            and r < self.MARGIN * self.rate.get(one, 0.0)
        ):
            self.confirming = True  # it won: maybe by luck, so once more before switching
            self.countdown = 1
            return
        self.confirming = False
        old = self.rate.get(threads)
        if old is None or threads != self.current:  # a trial: the old figure is stale
            self.rate[threads] = r
        else:
            self.rate[threads] = (1 - self.WEIGHT) * old + self.WEIGHT * r
        if len(self.options) == 1 or len(self.rate) < 2:
            return
        if threads == self.current:
            if self.settled is None:
                self.settled = self.rate[threads]
            elif (
                threads == self.options[0]  # a team that slows down: maybe a busy neighbour
                and self.rate[threads] > self.SLOWDOWN * self.settled
                and self.countdown > 1
            ):
                self.countdown = 1  # the load changed: try the other choice next
                self.interval = self.FIRST
        other = self.options[1] if self.current == self.options[0] else self.options[0]
        # the other choice must be clearly faster to take over: timings beside busy
        # processes are noisy, and flapping between the two costs more than either
        best = other if self.rate[other] < self.MARGIN * self.rate[self.current] else self.current
        if threads != self.current and self.countdown <= 0:  # a trial of the other choice
            self.interval = (
                self.FIRST if best != self.current else min(2 * self.interval, self.LONGEST)
            )
            self.countdown = self.interval
            self.settled = self.rate[self.current]
        if best != self.current:
            self.current = best
            self.interval = self.countdown = self.FIRST
            self.settled = self.rate[best]


_TUNERS = {}


def tuner_for(key):
    """The process's :class:`ThreadTuner` for one kind of driver call (``key``: driver,
    sizes, batch, dtype, thread count); load is a property of the machine, so what one
    ``SGD`` call learned serves the next."""
    tuner = _TUNERS.get(key)
    if tuner is None:
        tuner = _TUNERS[key] = ThreadTuner(key[-1])
    return tuner


_SERIAL = threading.Lock()


@contextlib.contextmanager
def parallel_section():
    """Enclose a call of a parallel kernel.

    In a Dask worker, the kernel runs with at most the worker's share of
    threads (:func:`_dask_task_threads`).  Numba's ``workqueue`` threading
    layer aborts the process when two Python
    threads run parallel regions at once; under it (or before the first
    parallel region has chosen a layer) calls take turns.  Under the OpenMP
    and TBB layers this costs nothing and threads overlap.
    """
    share = _dask_task_threads()
    if share is not None and numba.get_num_threads() > share:
        with num_threads(share), parallel_section():
            yield
        return
    try:
        serial = numba.threading_layer() == "workqueue"
    except ValueError:  # no parallel region has run yet: the layer is not chosen
        serial = True
    if not serial:
        yield
        return
    with _SERIAL:
        yield
