"""Benchmark definitions and runner: fastnn against the NumPy reference and the usual peers.

The workloads, contenders and FLOP counts are defined here once.  Both the
pytest-benchmark suite in ``benchmarks/`` and ``python -m fastnn bench`` use
them; the latter times them itself and prints one table (see :func:`main`).

Workloads (all MNIST-shaped; real MNIST when found, else seeded synthetic data):

* W1 "seed": 784-16-16-10, sigmoid, quadratic cost, SGD batch 10, eta 3.0, one epoch.
* W2 "classic": 784-30-10, same settings.
* W3 "modern": 784-128-64-10, ReLU hidden, softmax + log-loss, batch 64, eta 0.1.
* W4 "inference": W1's network over the 10,000 test images, as one batch and
  one image at a time (the latency case).

A contender is a function ``make(workload, data, threads) -> Run``; ``Run.fn()``
does the timed work once and ``Run.scale`` converts its time to one epoch
(contenders that time a fixed fraction of the epoch say so in ``Run.note``).
Peers that are not importable are skipped with the reason.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import reference
from .bench_estimators import estimator_runs
from .bench_peers import jax_contender, sklearn_contender, torch_contender
from .bench_pipeline import (
    busy_processes,
    cold_start,
    compile_times,
    sgd_call_runs,
)
from .bench_report import compare, format_markdown, format_table, plot
from .datasets import MNISTNotFoundError, load_mnist
from .network import Network
from .runtime import num_threads

WORKLOADS = {
    "W1": dict(
        title="seed",
        sizes=[784, 16, 16, 10],
        activation="sigmoid",
        output="sigmoid",
        cost="quadratic",
        batch=10,
        eta=3.0,
    ),
    "W2": dict(
        title="classic",
        sizes=[784, 30, 10],
        activation="sigmoid",
        output="sigmoid",
        cost="quadratic",
        batch=10,
        eta=3.0,
    ),
    "W3": dict(
        title="modern",
        sizes=[784, 128, 64, 10],
        activation="relu",
        output="softmax",
        cost="log_loss",
        batch=64,
        eta=0.1,
    ),
}
BATCH_SWEEP = (1, 10, 32, 128, 1024)


class Skip(Exception):
    """A contender cannot run here (a peer is not installed); the message says why."""


@dataclass
class Data:
    X: np.ndarray  # training inputs, float32 in [0, 1], (n, 784)
    y: np.ndarray  # int64 labels
    Xt: np.ndarray  # test inputs
    yt: np.ndarray
    source: str  # 'mnist' or 'synthetic'


@dataclass
class Run:
    fn: object  # callable doing the timed work once
    samples: int  # samples processed by one call
    scale: float = 1.0  # multiply one call's time by this for one epoch
    note: str = ""
    threads: object = None


@dataclass
class Result:
    workload: str
    contender: str
    batch: int
    threads: object
    median_s: float
    samples_per_s: float
    gflops: float
    rounds: int
    note: str = ""
    speedup: float = None
    peak_share: float = None
    times: list = field(default_factory=list)


# ----------------------------------------------------------------------------- data, FLOPs


def load_data(quick=False, data_dir=None):
    """Real MNIST when found (``data_dir``, ``$FASTNN_DATA``, cache), else synthetic data.

    ``quick`` keeps a tenth of the training set.
    """
    try:
        (X, y), (Xt, yt) = load_mnist(data_dir, dtype=np.float32)
        source = "mnist"
    except MNISTNotFoundError:
        rng = np.random.default_rng(0)
        X = rng.random((60000, 784), dtype=np.float32) * (rng.random((60000, 784)) < 0.19)
        y = rng.integers(0, 10, 60000)
        Xt = rng.random((10000, 784), dtype=np.float32) * (rng.random((10000, 784)) < 0.19)
        yt = rng.integers(0, 10, 10000)
        source = "synthetic"
    if quick:
        X, y = X[:6000], y[:6000]
    return Data(np.ascontiguousarray(X), y, np.ascontiguousarray(Xt), yt, source)


def train_flops(sizes, n, batch):
    """Floating-point operations of one SGD epoch over ``n`` samples.

    Per sample: forward ``2*n_in*n_out`` per layer, weight gradient the same,
    back-propagated delta the same for every layer but the first; per
    mini-batch: the update, 2 per parameter.  Activations are not counted.
    The dense count for every contender, also for fastnn's sparse driver,
    which skips the zero inputs: its GFLOP/s are dense-equivalent rates.
    """
    macs = [a * b for a, b in zip(sizes[:-1], sizes[1:])]
    per_sample = 2 * sum(macs) * 2 + 2 * sum(macs[1:])
    n_params = sum(m + b for m, b in zip(macs, sizes[1:]))
    return per_sample * n + 2 * n_params * -(-n // batch)


def forward_flops(sizes, n):
    return 2 * sum(a * b for a, b in zip(sizes[:-1], sizes[1:])) * n


def measure_peak(n=2048, rounds=5):
    """float32 GFLOP/s of a large matrix product (NumPy's BLAS, all cores), median of rounds."""
    rng = np.random.default_rng(0)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


# ----------------------------------------------------------------------------- contenders


def _network(w, dtype=np.float32, seed=0):
    return Network(
        w["sizes"],
        activation=w["activation"],
        output=w["output"],
        cost=w["cost"],
        dtype=dtype,
        seed=seed,
    )


def fastnn_contender(dtype):
    def make(w, data, threads):
        net = _network(w, dtype)
        X, y, run_epoch = net._trainer((data.X, data.y), w["batch"], w["eta"])
        rng = np.random.default_rng(0)
        note = ""
        if getattr(run_epoch, "driver", None) == "sparse":
            zeros = 1 - np.count_nonzero(data.X) / data.X.size
            note = f"sparse driver: skips the zero inputs ({100 * zeros:.0f}%)"

        def fn():
            with num_threads(threads):
                run_epoch(rng.permutation(len(X)))

        return Run(fn, len(X), note=note, threads=threads or "all")

    return make


def reference_contender(w, data, threads):
    net = _network(w, np.float32)
    theta = net.parameters.copy()
    rng = np.random.default_rng(0)

    def fn():
        reference.train_epoch(
            theta,
            w["sizes"],
            data.X,
            data.y,
            rng.permutation(len(data.X)),
            w["batch"],
            w["eta"],
            0.0,
            w["activation"],
            w["output"],
            w["cost"],
        )

    return Run(fn, len(data.X), note="NumPy, BLAS threads as configured", threads="BLAS")


def per_sample_contender(fraction):
    def make(w, data, threads):
        net = _network(w, np.float32)
        theta = net.parameters.copy()
        n = len(data.X)
        n_batches = max(1, int(n * fraction) // w["batch"])
        perm = np.random.default_rng(0).permutation(n)

        def fn():
            reference.train_epoch_per_sample(
                theta,
                w["sizes"],
                data.X,
                data.y,
                perm,
                w["batch"],
                w["eta"],
                0.0,
                w["activation"],
                w["output"],
                w["cost"],
                n_batches=n_batches,
            )

        done = n_batches * w["batch"]
        return Run(
            fn,
            done,
            scale=n / done,
            note=f"per-sample loop, timed on {100 * done / n:.0f}% of the epoch and scaled",
            threads="BLAS",
        )

    return make


TRAIN_CONTENDERS = {
    "fastnn-f32": fastnn_contender(np.float32),
    "fastnn-f64": fastnn_contender(np.float64),
    "reference": reference_contender,
    "per-sample": per_sample_contender(0.05),
    "sklearn": sklearn_contender,
    "pytorch": torch_contender,
    "jax": jax_contender,
}


def inference_runs(data, single_images=1000):
    """W4: W1's network over the test set, as one batch and one image at a time."""
    w = WORKLOADS["W1"]
    net = _network(w, np.float32)
    theta, sizes = net.parameters, w["sizes"]
    Xt = data.Xt
    k = min(single_images, len(Xt))
    scale = len(Xt) / k
    note = f"{k} single-image calls, scaled to {len(Xt)}"

    def ref_batch():
        reference.forward(theta, sizes, Xt)

    def ref_single():
        for i in range(k):
            reference.forward(theta, sizes, Xt[i : i + 1])

    def fast_batch():
        net.feedforward(Xt)

    def fast_single():
        for i in range(k):
            net.feedforward(Xt[i])

    return {
        ("W4-batch", "reference"): Run(ref_batch, len(Xt), note="one BLAS product per layer"),
        ("W4-batch", "fastnn-f32"): Run(fast_batch, len(Xt)),
        ("W4-single", "reference"): Run(ref_single, k, scale, note),
        ("W4-single", "fastnn-f32"): Run(fast_single, k, scale, note),
    }


# ----------------------------------------------------------------------------- timing


def time_interleaved(runs, rounds, budget, settle=0.0, pause=0.0, alternate=False, swap=False):
    """Times of each of ``runs`` (scaled to one epoch), timed in turn within every round.

    This VM's speed drifts by up to 2x over minutes: each round times every
    run once, so a slow phase hits all of them alike, and the medians compare
    contenders measured over the same stretch of time.  One warm-up call
    each; stops after ``rounds`` rounds or when the total exceeds ``budget``
    seconds (at least one round).

    ``settle`` seconds of sleep come once before the first call, ``pause``
    seconds before every call.  Either lets the thread pools of whatever ran
    before go idle: OpenBLAS, OpenMP and XLA workers spin for a while after
    their last task, and a contender timed while they spin on the same cores
    runs up to 2-3x slower (fastnn's W4 batch right after the reference's
    BLAS products: 6.2 ms against 2.3 ms).  Contenders of different libraries
    in one round need ``pause``.

    ``alternate``: every other round times the runs after the first in
    reverse order, so that each of them follows the first one as often as
    the others do (over an even number of rounds).  W7's search right after
    the serial one ran 4-12% slower than in the next place, whichever
    search it was (the Dask cluster's or joblib's), even after a 2 s pause.

    ``swap``: every other round times all the runs in reverse order, so that
    each of a pair goes first as often as the other.
    """
    if settle:
        time.sleep(settle)
    for run in runs:
        if pause:
            time.sleep(pause)
        run.fn()
    times = [[] for _ in runs]
    for r in range(rounds):
        order = list(range(len(runs)))
        if alternate and r % 2:
            order[1:] = order[:0:-1]
        if swap and r % 2:
            order.reverse()
        for i in order:
            run, ts = runs[i], times[i]
            if pause:
                time.sleep(pause)
            t = time.perf_counter()
            run.fn()
            ts.append((time.perf_counter() - t) * run.scale)
        if sum(map(sum, times)) > budget:
            break
    return times


def _result(workload, contender, batch, run, times, flops):
    med = statistics.median(times)
    n = run.samples * run.scale
    return Result(
        workload,
        contender,
        batch,
        run.threads,
        med,
        n / med,
        flops / med / 1e9,
        len(times),
        run.note,
        times=times,
    )


# ----------------------------------------------------------------------------- the suite


def run_suite(quick=False, data_dir=None, contenders=None, workloads=None, log=print):
    """Run every workload x contender, the sweeps and W4; returns the report dict."""
    import numba

    data = load_data(quick, data_dir)
    rounds, budget, settle = (2, 2.0, 0.1) if quick else (7, 20.0, 0.5)
    cores = numba.config.NUMBA_NUM_THREADS
    results, skipped = [], []
    log(
        f"data: {data.source} ({len(data.X)} training images), {'quick' if quick else 'full'} "
        f"mode, {cores} threads"
    )
    peak = measure_peak(1024 if quick else 2048)
    log(f"float32 peak (BLAS matrix product): {peak:.1f} GFLOP/s")

    def record(group):
        """Time ``group``'s rows ``(workload, contender, batch, run, flops)`` in turn."""
        runs = [row[3] for row in group]
        times = time_interleaved(runs, rounds, len(runs) * budget, pause=settle)
        for (wname, cname, batch, run, flops), ts in zip(group, times):
            r = _result(wname, cname, batch, run, ts, flops)
            results.append(r)
            log(
                f"  {wname:<10} {cname:<11} batch {batch:<5} threads {str(r.threads):<5} "
                f"{r.median_s:9.4f} s"
            )

    for wname, w in WORKLOADS.items():
        if workloads and wname not in workloads:
            continue
        flops = train_flops(w["sizes"], len(data.X), w["batch"])
        group = []  # every contender and the thread sweep, timed in turn
        for cname, make in TRAIN_CONTENDERS.items():
            if contenders and cname not in contenders:
                continue
            try:
                run = make(w, data, None)
            except Skip as e:
                skipped.append(dict(workload=wname, contender=cname, reason=str(e)))
                log(f"  {wname:<10} {cname:<11} skipped: {e}")
                continue
            group.append((wname, cname, w["batch"], run, flops))
        if not contenders or "fastnn-f32" in contenders:  # thread sweep
            for threads in sorted({1, cores}):
                if threads == cores:
                    continue  # the 'all cores' run is the main one above
                run = fastnn_contender(np.float32)(w, data, threads)
                group.append((wname + "-threads", "fastnn-f32", w["batch"], run, flops))
        record(group)

    if (not workloads or "W1" in workloads) and (not contenders or "fastnn-f32" in contenders):
        # whole SGD calls, data preparation included: what a pipeline sees
        w = WORKLOADS["W1"]
        flops = train_flops(w["sizes"], len(data.X), w["batch"])  # per epoch, as the times
        calls = sgd_call_runs(w, data)  # in turn within each round: their ratios matter
        times = time_interleaved(list(calls.values()), rounds, len(calls) * budget, settle)
        for (cname, run), ts in zip(calls.items(), times):
            r = _result("W1-calls", cname, w["batch"], run, ts, flops)
            results.append(r)
            log(f"  W1-calls   {cname:<14} batch {w['batch']:<5} {r.median_s:9.4f} s")

    # beside busy processes: default threads against one thread, interleaved, same load
    for wname in ("W1",) if quick else ("W1", "W2", "W3"):
        if (workloads and wname not in workloads) or (
            contenders and "fastnn-f32" not in contenders
        ):
            continue
        w = WORKLOADS[wname]
        flops = train_flops(w["sizes"], len(data.X), w["batch"])
        for busy in (1, 2):
            runs = [fastnn_contender(np.float32)(w, data, threads) for threads in (None, 1)]
            with busy_processes(busy):
                times = time_interleaved(runs, rounds, 2 * budget, settle)
            for run, ts in zip(runs, times):
                run.note = f"beside {busy} busy process{'es' * (busy > 1)}" + (
                    f"; {run.note}" if run.note else ""
                )
                r = _result(f"{wname}-busy{busy}", "fastnn-f32", w["batch"], run, ts, flops)
                results.append(r)
                log(
                    f"  {r.workload:<10} fastnn-f32  batch {w['batch']:<5} threads "
                    f"{str(r.threads):<5} {r.median_s:9.4f} s"
                )

    if not workloads or "W1" in workloads:  # batch sweep of W1
        w1 = WORKLOADS["W1"]
        for batch in BATCH_SWEEP:
            w = dict(w1, batch=batch)
            flops = train_flops(w["sizes"], len(data.X), batch)
            group = []
            for cname in ("fastnn-f32", "reference"):
                if contenders and cname not in contenders:
                    continue
                if cname == "reference" and batch == 1:
                    run = per_sample_contender(0.05 if not quick else 0.2)(w, data, None)
                    run.note = "reference at batch 1, " + run.note
                else:
                    run = TRAIN_CONTENDERS[cname](w, data, None)
                group.append(("W1-batch", cname, batch, run, flops))
            record(group)

    if (not workloads or {"W5", "W6"} & set(workloads)) and (
        not contenders or {"fastnn-est", "sklearn-est"} & set(contenders)
    ):
        try:
            import sklearn  # noqa: F401

            # five rounds (three until full26): W6's three rounds gave 4.0x, 3.7x and 2.8x
            # in full22, and its median 4.1x, 5.7x and 3.2x in full24-full26
            results += estimator_runs(data, quick, min(rounds, 5), 10 * budget, log, settle)
        except ImportError as e:
            skipped.append(dict(workload="W5", contender="sklearn-est", reason=str(e)))

    search = None
    if (not workloads or "W7" in workloads) and not contenders:  # a search on a Dask cluster
        try:
            from .bench_dask import search_runs

            more, search = search_runs(data, min(rounds, 4), 8 * budget, log)
            results += more
        except ImportError as e:
            skipped.append(dict(workload="W7", contender="search-dask", reason=str(e)))

    if not workloads or "W4" in workloads:
        record(
            [
                (
                    wname,
                    cname,
                    0,
                    run,
                    forward_flops(WORKLOADS["W1"]["sizes"], run.samples * run.scale),
                )
                for (wname, cname), run in inference_runs(data, 200 if quick else 1000).items()
                if not contenders or cname in contenders
            ]
        )

    _derive(results, peak)
    return dict(
        machine=machine_info(),
        data=data.source,
        quick=quick,
        peak_gflops=peak,
        results=[_as_dict(r) for r in results],
        skipped=skipped,
        search=search,
    )


def _derive(results, peak):
    """Speed-up versus the reference of the same workload and batch, share of peak."""
    ref = {
        (r.workload.split("-threads")[0], r.batch): r.median_s
        for r in results
        if r.contender == "reference"
    }
    for r in results:
        base = ref.get((r.workload.split("-threads")[0], r.batch))
        r.speedup = base / r.median_s if base else None
        r.peak_share = r.gflops / peak if peak else None


def _as_dict(r):
    return {k: v for k, v in r.__dict__.items()}


def machine_info():
    import numba

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return dict(
        cpu=cpu,
        cores=os.cpu_count(),
        python=platform.python_version(),
        numpy=np.__version__,
        numba=numba.__version__,
        threading_layer=_threading_layer(),
    )


def _threading_layer():
    import numba

    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return None


def main(args):
    report = run_suite(
        quick=args.quick,
        data_dir=args.data_dir,
        contenders=args.contenders.split(",") if args.contenders else None,
        workloads=args.workloads.split(",") if args.workloads else None,
        log=(lambda *a: None)
        if args.quiet
        else (lambda *a: print(*a, file=sys.stderr, flush=True)),
    )
    if not args.no_compile:
        report["compile"] = compile_times()
        if report["data"] == "mnist":
            report["cold_start"] = cold_start(args.data_dir)
    report["date"] = time.strftime("%Y-%m-%d")
    report["command"] = "python -m fastnn " + " ".join(getattr(args, "argv", None) or ["bench"])
    if args.markdown:
        print(format_markdown(report))
    else:
        print(format_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"results written to {args.json}")
    if args.plot:
        try:
            plot(report, args.plot)
            print(f"plot written to {args.plot}")
        except ImportError:
            print("no plot: matplotlib is not installed (pip install 'fastnn[plot]')")
    if args.compare:
        with open(args.compare) as f:
            flagged = compare(report, json.load(f), args.threshold)
        for key, old, new in flagged:
            print(
                f"REGRESSION {key}: {old:.4f} s -> {new:.4f} s "
                f"(+{100 * (new / old - 1):.0f}%, threshold {100 * args.threshold:.0f}%)"
            )
        if flagged:
            return 1
        print(f"no regression beyond {100 * args.threshold:.0f}% against {args.compare}")
    return 0


def _check_args(args):
    """What is wrong with the bench command's arguments (before anything runs), or None."""
    for flag, value, known in (
        ("--workloads", args.workloads, ("W1", "W2", "W3", "W4", "W5", "W6", "W7")),
        ("--contenders", args.contenders, (*TRAIN_CONTENDERS, "fastnn-est", "sklearn-est")),
    ):
        unknown = [v for v in (value or "").split(",") if value and v not in known]
        if unknown:
            return f"{flag}: unknown {', '.join(unknown)} (known: {', '.join(known)})"
    for flag, path in (("--compare", args.compare), ("--render", args.render)):
        if path:
            try:
                with open(path) as f:
                    json.load(f)["results"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                return f"{flag} {path}: not a readable benchmark result ({e})"
    return None


def add_parser(sub):
    p = sub.add_parser(
        "bench",
        help="run the benchmark suite and print one table",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a tenth of the data and few rounds (proves the suite works)",
    )
    p.add_argument("--data-dir", default=None, help="MNIST folder (else synthetic data)")
    p.add_argument("--json", default="bench-results/latest.json", help="write results here")
    p.add_argument(
        "--plot", default="bench-results/sweeps.png", help="PNG of the sweeps (needs matplotlib)"
    )
    p.add_argument(
        "--compare",
        default=None,
        metavar="OLD_JSON",
        help="flag regressions against an earlier result (exit status 1)",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.10,
        help="regression threshold as a fraction of the old median",
    )
    p.add_argument(
        "--contenders",
        default=None,
        help="comma-separated subset of: " + ",".join(TRAIN_CONTENDERS),
    )
    p.add_argument(
        "--workloads", default=None, help="comma-separated subset of W1,W2,W3,W4,W5,W6,W7"
    )
    p.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the JIT compile-time and cold-start measurements",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the README's performance tables (Markdown) instead of the table",
    )
    p.add_argument(
        "--render",
        metavar="JSON",
        default=None,
        help="print the Markdown of an earlier run's JSON without running anything",
    )

    def run(args):
        problem = _check_args(args)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        if args.render:
            with open(args.render) as f:
                print(format_markdown(json.load(f)))
            return 0
        for path in (args.json, args.plot):
            if path and os.path.dirname(path):
                os.makedirs(os.path.dirname(path), exist_ok=True)
        return main(args)

    p.set_defaults(func=run)
