"""fastnn on a Dask cluster: warm workers, one model shipped once per worker for prediction.

Needs ``pip install 'fastnn[dask]'`` (dask, distributed, dask-ml); ``import
fastnn`` never imports them.  Everything else works with Dask's own tools:

* searches: ``with joblib.parallel_backend("dask"): GridSearchCV(...).fit(X, y)``
  (or ``RandomizedSearchCV``, ``cross_validate``) over
  :class:`fastnn.MLPClassifier`;
* data larger than memory: ``dask_ml.wrappers.Incremental(fastnn.MLPClassifier())``
  (``partial_fit`` once per block) and ``dask_ml.model_selection.HyperbandSearchCV``;
* prediction at scale: ``dask_ml.wrappers.ParallelPostFit`` or :func:`predict`.

Inside a Dask worker, fastnn's kernels use the worker's thread budget (its
``nthreads`` shared by the tasks running on it, see
:func:`fastnn.runtime.thread_budget`), never all the machine's cores: Dask's
nanny sets ``OMP_NUM_THREADS=1`` for NumPy's libraries but nothing for Numba.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import time
from collections import defaultdict
from urllib.parse import urlparse

import numpy as np

try:
    from distributed import WorkerPlugin, get_client
except ImportError as e:  # exercised by a subprocess test
    raise ImportError(
        f"fastnn.dask needs Dask (dask, distributed, dask-ml): pip install 'fastnn[dask]' ({e})"
    ) from e

from .warmup import warmup as _warmup

#: What a search over the estimators needs: their epoch driver and inference.
DEFAULT_GROUPS = ("optim", "inference")
#: Modules a search's first task on each worker would otherwise import: the estimators
#: and scikit-learn's search tasks (about 1.3 s of imports on the 2-core CI machine).
SEARCH_MODULES = ("fastnn.estimators", "sklearn.model_selection")


def _warm(dtypes, groups):
    t = time.perf_counter()
    _warmup(dtypes, groups, progress=None)
    if importlib.util.find_spec("sklearn") is not None:
        for name in SEARCH_MODULES:
            importlib.import_module(name)
    return time.perf_counter() - t


def _host(address):
    return urlparse(address).hostname or address


def warmup(client=None, dtypes=("float32",), groups=DEFAULT_GROUPS):
    """Compile (or load from the cache) fastnn's kernels on every worker of ``client``, and
    import the estimators and scikit-learn's search modules there (:data:`SEARCH_MODULES`,
    when scikit-learn is installed).

    Workers on one host share the kernel cache, so one worker per host
    compiles first and the others then load what it wrote (a fraction of a
    second each) instead of all compiling at once.  Returns ``{worker
    address: seconds}``.  Call it once after the cluster starts, before the
    first search; for workers that join later, register :class:`WarmupPlugin`.
    """
    client = client or get_client()
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    by_host = defaultdict(list)
    for w in workers:
        by_host[_host(w)].append(w)
    first = [ws[0] for ws in by_host.values()]
    rest = [w for ws in by_host.values() for w in ws[1:]]
    times = client.run(_warm, tuple(dtypes), tuple(groups), workers=first)
    if rest:
        times.update(client.run(_warm, tuple(dtypes), tuple(groups), workers=rest))
    return times


class WarmupPlugin(WorkerPlugin):
    """A worker plugin that warms fastnn's kernels when a worker starts (``dtypes``,
    ``groups`` as for :func:`warmup`): ``client.register_plugin(WarmupPlugin())``.

    The compile runs off the worker's event loop, so the worker keeps answering
    the scheduler meanwhile; tasks that arrive first wait for the kernels as they
    would without the plugin.
    """

    name = "fastnn-warmup"

    def __init__(self, dtypes=("float32",), groups=DEFAULT_GROUPS):
        self.dtypes, self.groups = tuple(dtypes), tuple(groups)
        self.seconds = None

    async def setup(self, worker):
        loop = asyncio.get_running_loop()
        self.seconds = await loop.run_in_executor(None, _warm, self.dtypes, self.groups)


def _predict_block(block, model, method):
    return getattr(model, method)(block)


def predict(model, X, method="predict", client=None):
    """``model.<method>`` over the rows of the dask array ``X``, block by block.

    The fitted ``model`` is scattered to every worker once (not embedded in
    every task) and each block's task uses the worker's copy.  Returns a
    dask array: labels for ``predict``, ``(n, n_outputs)`` for
    ``predict_proba``/``predict_log_proba``.
    """
    import dask.array as da

    if not isinstance(X, da.Array) or X.ndim != 2:
        raise TypeError("X must be a two-dimensional dask array")
    client = client or get_client()
    if X.chunks[1] != (X.shape[1],):
        X = X.rechunk({1: -1})
    shipped = client.scatter(model, broadcast=True, hash=False)
    probe = getattr(model, method)(np.zeros((1, X.shape[1]), X.dtype))
    if probe.ndim == 1:
        return X.map_blocks(
            _predict_block, shipped, method, drop_axis=1, dtype=probe.dtype, meta=probe[:0]
        )
    return X.map_blocks(
        _predict_block,
        shipped,
        method,
        chunks=(X.chunks[0], (probe.shape[1],)),
        dtype=probe.dtype,
        meta=probe[:0],
    )
