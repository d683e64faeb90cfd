"""W1-W3 training epochs, the thread sweep and the W1 batch-size sweep."""

import numba
import numpy as np
import pytest

from fastnn import bench
from harness import run_benchmark


@pytest.mark.parametrize("contender", list(bench.TRAIN_CONTENDERS))
@pytest.mark.parametrize("workload", list(bench.WORKLOADS))
def test_epoch(benchmark, data, workload, contender):
    w = bench.WORKLOADS[workload]
    benchmark.group = f"{workload} {w['title']}: one epoch"
    try:
        run = bench.TRAIN_CONTENDERS[contender](w, data, None)
    except bench.Skip as e:
        pytest.skip(str(e))
    run_benchmark(benchmark, run, bench.train_flops(w["sizes"], len(data.X), w["batch"]))


@pytest.mark.parametrize("threads", sorted({1, numba.config.NUMBA_NUM_THREADS}))
@pytest.mark.parametrize("workload", ["W1", "W3"])
def test_threads(benchmark, data, workload, threads):
    w = bench.WORKLOADS[workload]
    benchmark.group = f"{workload}: thread sweep"
    run = bench.fastnn_contender(np.float32)(w, data, threads)
    run_benchmark(benchmark, run, bench.train_flops(w["sizes"], len(data.X), w["batch"]))


@pytest.mark.parametrize("contender", ["fastnn-f32", "reference"])
@pytest.mark.parametrize("batch", bench.BATCH_SWEEP)
def test_batch_sweep(benchmark, data, batch, contender):
    w = dict(bench.WORKLOADS["W1"], batch=batch)
    benchmark.group = f"W1 batch {batch}"
    if contender == "reference" and batch == 1:
        run = bench.per_sample_contender(0.05)(w, data, None)
    else:
        run = bench.TRAIN_CONTENDERS[contender](w, data, None)
    run_benchmark(benchmark, run, bench.train_flops(w["sizes"], len(data.X), batch))
