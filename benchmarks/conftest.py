"""pytest-benchmark suite over the workloads and contenders of fastnn.bench.

``python -m fastnn bench`` prints the same comparison as one table.
"""

import pytest

from fastnn import bench
from harness import FULL


@pytest.fixture(scope="session")
def data():
    return bench.load_data(quick=not FULL)
