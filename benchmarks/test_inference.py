"""W4: forward pass of W1's network over the test images, batched and one at a time."""

import pytest

from fastnn import bench
from harness import run_benchmark

CASES = [
    ("W4-batch", "reference"),
    ("W4-batch", "fastnn-f32"),
    ("W4-single", "reference"),
    ("W4-single", "fastnn-f32"),
]


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_inference(benchmark, data, case):
    runs = bench.inference_runs(data, single_images=200)
    benchmark.group = case[0]
    run_benchmark(benchmark, runs[case])
