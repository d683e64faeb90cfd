import os

import numpy as np
import pytest

from fastnn.datasets import MNISTNotFoundError, load_mnist


@pytest.fixture(scope="session")
def mnist():
    """Real MNIST as float32 in [0, 1]; skipped locally without the files, an error in CI."""
    try:
        return load_mnist(dtype=np.float32)
    except MNISTNotFoundError:
        if os.environ.get("CI"):
            raise
        pytest.skip("MNIST not found: set FASTNN_DATA to the folder holding mnist/")
