"""Accuracy on the real MNIST test set (FASTNN_DATA must point at the shared data in CI)."""

import numpy as np
import pytest

from fastnn import Network

pytestmark = pytest.mark.mnist


def _best_accuracy(sizes, init, mnist, seed):
    (X, y), (Xt, yt) = mnist
    net = Network(sizes, init=init, seed=seed)
    h = net.SGD((X, y), 10, 10, 3.0, test_data=(Xt, yt), quiet=True)
    assert len(h["test_accuracy"]) == 10
    return max(h["test_accuracy"])


def test_seed_network_scaled_init(mnist):
    # 784-16-16-10, sigmoid, quadratic cost, batch 10, eta 3.0, 'scaled' init.  Such a small
    # network's best accuracy varies with the seed (93.4-94.5% over seeds 0-4 when measured,
    # float32 and float64 alike), so the typical run is asserted: the median of three seeds.
    best = [_best_accuracy([784, 16, 16, 10], "scaled", mnist, seed) for seed in (0, 1, 2)]
    assert np.median(best) >= 0.935, best
    assert min(best) >= 0.93, best


def test_classic_network_standard_init(mnist):
    # Nielsen's 784-30-10 with his settings: standard N(0, 1) init, batch 10, eta 3.0
    assert _best_accuracy([784, 30, 10], "standard", mnist, 0) >= 0.94


def test_softmax_relu_network(mnist):
    (X, y), (Xt, yt) = mnist
    net = Network([784, 64, 10], activation="relu", cost="log_loss", seed=0)
    h = net.SGD((X, y), 2, 32, 0.1, test_data=(Xt, yt), quiet=True)
    assert h["test_accuracy"][-1] >= 0.95
