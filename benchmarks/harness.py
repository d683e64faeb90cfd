"""Running one contender under pytest-benchmark (imported by the benchmark modules).

Quick by default (a tenth of the training set, one round: it proves the suite
works, as in CI).  ``FASTNN_BENCH=full`` runs whole epochs with more rounds.
"""

import os
import time

FULL = os.environ.get("FASTNN_BENCH") == "full"


def run_benchmark(benchmark, run, flops=None):
    """Time ``run.fn`` with pytest-benchmark and attach epoch-level figures."""
    rounds = 5 if FULL else 1
    if FULL:
        # let the previous contender's thread pools go idle (see fastnn.bench.time_interleaved)
        time.sleep(0.5)
    benchmark.pedantic(run.fn, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        note=run.note, threads=str(run.threads), scale=run.scale, samples=run.samples
    )
    if flops is not None:
        benchmark.extra_info["gflop_per_epoch"] = flops / 1e9
    stats = getattr(benchmark, "stats", None)
    if stats is not None and getattr(stats, "stats", None) is not None:
        med = stats.stats.median * run.scale
        benchmark.extra_info["epoch_median_s"] = med
        if flops is not None and med > 0:
            benchmark.extra_info["gflops"] = flops / med / 1e9
