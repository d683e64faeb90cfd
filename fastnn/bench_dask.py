"""Benchmark row W7: a hyper-parameter search, serial against a Dask cluster and joblib.

An 8-candidate, 2-fold ``GridSearchCV`` of a 784-32-10 ``fastnn.MLPClassifier``
(adam, batch 200, ``SEARCH_EPOCHS`` epochs) on the training images, timed
whole three ways, in turn within every round:

* ``serial``: ``n_jobs=1`` in this process (joblib's ``sequential`` backend:
  inside a ``parallel_backend("dask")`` block even ``n_jobs=1`` runs on the
  cluster), fastnn's default threads;
* ``dask``: ``joblib.parallel_backend("dask")`` on a ``LocalCluster`` of two
  worker processes with one thread each, their profiler off (started and
  warmed once, before timing: ``fastnn.dask.warmup``; the data scattered to
  every worker once, ``parallel_backend("dask", scatter=[X, y])``, with the
  active memory manager stopped so that the copies stay, as the README's
  recipe says);
* ``loky``: joblib's own ``n_jobs=2`` (worker processes reused across rounds).

Every other round times ``loky`` before ``dask`` (``alternate`` in
:func:`fastnn.bench.time_interleaved`): whichever search came right after
the serial one ran 4-12% slower.

The cluster start, warm-up and scatter are timed apart (``cluster_start_s``,
``warmup_s``, ``scatter_s``), as is each task of the search (``task_s``: one fit and its
scoring), from which the README estimates larger searches.  The warm-up call of
each contender records how many search tasks (fits) each cluster worker ran
(``tasks_on_cluster``): none for ``serial`` and ``loky``, the 16 fits spread over
both workers for ``dask``.  joblib may batch several fits into one Dask task
when they are quick; a task's key says how many (``batch_of_..._3_calls-...``).
"""

from __future__ import annotations

import re
import time
import warnings

SEARCH_EPOCHS = 5
_CALLS = re.compile(r"_(\d+)_calls-")  # the number of calls in a joblib batch's task key
GRID = {"alpha": [1e-4, 1e-2], "learning_rate_init": [1e-3, 3e-3], "batch_size": [100, 200]}


def _search(n_jobs):
    from sklearn.model_selection import GridSearchCV

    from . import MLPClassifier

    est = MLPClassifier(hidden_layer_sizes=(32,), max_iter=SEARCH_EPOCHS, random_state=0)
    return GridSearchCV(est, GRID, cv=2, n_jobs=n_jobs)


def search_runs(data, rounds, budget, log=print):
    """Results of W7 (``fastnn.bench.Result``) and a dict of the one-off costs."""
    import dask
    import distributed
    import joblib

    from . import dask as fdask
    from .bench import Run, _result, time_interleaved

    X, y = data.X, data.y
    extra = {}
    t = time.perf_counter()
    # as the README's recipe: no stack sampling every 10 ms in workers whose cores the
    # fits keep busy (2-6% of W7's fit time)
    with dask.config.set({"distributed.worker.profile.enabled": False}):
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
    client = distributed.Client(cluster)
    extra["cluster_start_s"] = time.perf_counter() - t
    try:
        t = time.perf_counter()
        fdask.warmup(client)
        extra["warmup_s"] = time.perf_counter() - t
        # the active memory manager would drop the scattered copies within seconds
        client.amm.stop()
        fits, tasks = {}, {}

        def search(kind):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if kind == "dask":
                    fits[kind] = _search(2).fit(X, y)
                else:  # inside the dask context below: name the backend
                    with joblib.parallel_backend("sequential" if kind == "serial" else "loky"):
                        fits[kind] = _search(1 if kind == "serial" else 2).fit(X, y)

        def run(kind):
            def fn():
                if kind in tasks:
                    return search(kind)
                with distributed.get_task_stream(client) as stream:
                    search(kind)
                counts = {}
                for task in stream.data:
                    calls = _CALLS.search(str(task["key"]))
                    n = int(calls.group(1)) if calls else 1
                    counts[task["worker"]] = counts.get(task["worker"], 0) + n
                tasks[kind] = sorted(counts.values(), reverse=True)

            return Run(fn, 16 * (len(X) // 2) * SEARCH_EPOCHS, 1.0, threads="all")

        kinds = ("serial", "dask", "loky")
        runs = [run(k) for k in kinds]
        t = time.perf_counter()
        # the data goes to every worker once, as a user's session would ship it once
        with joblib.parallel_backend("dask", scatter=[X, y]):
            extra["scatter_s"] = time.perf_counter() - t
            times = time_interleaved(runs, rounds, budget, alternate=True)
        same = all(
            list(fits[k].cv_results_["mean_test_score"])
            == list(fits["serial"].cv_results_["mean_test_score"])
            for k in kinds
        )
        res = fits["serial"].cv_results_
        extra["task_s"] = float((res["mean_fit_time"] + res["mean_score_time"]).mean())
        extra["identical_cv_results"] = same
        extra["tasks_on_cluster"] = tasks
        results = []
        for kind, r, ts in zip(kinds, runs, times):
            r.note = (
                "8 candidates x 2 folds, whole search"
                + (", 2 workers x 1 thread" if kind == "dask" else "")
                + (", n_jobs=2" if kind == "loky" else "")
                + ("" if same else "; cv_results_ differ from serial")
            )
            out = _result("W7", f"search-{kind}", 0, r, ts, 0.0)
            results.append(out)
            log(f"  W7         search-{kind:<6} {out.median_s:9.3f} s per search")
        return results, extra
    finally:
        client.close()
        cluster.close()


def search_summary(res, extra):
    """Markdown lines: the cluster's and loky's speed-up over the serial search."""
    by = {r["contender"]: r["median_s"] for r in res if r["workload"] == "W7"}
    if not {"search-serial", "search-dask", "search-loky"} <= set(by):
        return []
    s, d, lk = by["search-serial"], by["search-dask"], by["search-loky"]
    line = (
        f"W7 (8-candidate, 2-fold search of 784-32-10, {SEARCH_EPOCHS} epochs): serial "
        f"{s:.2f} s, Dask LocalCluster (2 workers x 1 thread) {d:.2f} s ({s / d:.2f}x faster), "
        f"joblib `n_jobs=2` {lk:.2f} s ({s / lk:.2f}x)"
    )
    if extra:
        line += (
            f"; once per session: cluster start {extra.get('cluster_start_s', 0):.1f} s, "
            f"warm-up {extra.get('warmup_s', 0):.1f} s, data scatter "
            f"{extra.get('scatter_s', 0):.1f} s; {extra.get('task_s', 0):.2f} s per task "
            f"(one fit + scoring, serial); identical `cv_results_`: "
            f"{'yes' if extra.get('identical_cv_results') else 'no'}"
        )
        tasks = extra.get("tasks_on_cluster")
        if tasks:
            line += "; tasks per cluster worker: " + ", ".join(
                f"{kind} {'+'.join(map(str, tasks.get(kind) or [0]))}"
                for kind in ("serial", "dask", "loky")
            )
    return ["", line + "."]
