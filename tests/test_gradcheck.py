"""Backpropagation agrees with finite differences of the cost, for every activation/cost pair."""

import numpy as np
import pytest
from scipy.optimize import approx_fprime, check_grad

from fastnn import Network
from helpers import COMBOS, make_data


@pytest.mark.parametrize("hidden,output,cost", COMBOS)
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_gradient_matches_finite_differences(hidden, output, cost, weight_decay):
    sizes = [6, 5, 4, 3]
    net = Network(
        sizes,
        activation=hidden,
        output=output,
        cost=cost,
        dtype=np.float64,
        seed=2,
        weight_decay=weight_decay,
    )
    X, y = make_data(9, sizes[0], sizes[-1], seed=5)
    X += 0.05  # keep relu pre-activations away from the kink at 0
    theta0 = net.parameters.copy()

    def f(theta):
        net.parameters[...] = theta
        return net.cost(X, y)

    def g(theta):
        net.parameters[...] = theta
        return net.gradient(X, y)

    numeric = approx_fprime(theta0, f, 1e-7)
    analytic = g(theta0)
    assert np.linalg.norm(analytic) > 1e-3  # a real, non-trivial gradient
    np.testing.assert_allclose(analytic, numeric, rtol=1e-4, atol=1e-6)
    assert check_grad(f, g, theta0, epsilon=1e-7) < 1e-5 * max(1.0, np.linalg.norm(analytic))


def test_gradient_views_are_per_layer():
    net = Network([6, 4, 3], dtype=np.float64, seed=0)
    X, y = make_data(5, 6, 3)
    grad = net.gradient(X, y)
    gW, gb = net.views(grad)
    assert [w.shape for w in gW] == [(4, 6), (3, 4)]
    assert [b.shape for b in gb] == [(4,), (3,)]
    gW[0][0, 0] = 123.0
    assert grad[0] == 123.0  # views, not copies
