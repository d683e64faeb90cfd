"""The Network API: data formats, views, persistence, reproducibility and bad input."""

import numpy as np
import pytest

from fastnn import Network
from helpers import make_data


def test_layer_count_and_parameter_count_are_properties():
    net = Network([784, 16, 16, 10])
    assert net.num_layers == 4 and net.n_params == 13002


def test_parameters_are_one_vector_with_views():
    net = Network([784, 16, 16, 10], seed=0)
    assert net.n_params == 13002
    assert net.parameters.dtype == np.float32 and net.parameters.flags.c_contiguous
    assert [w.shape for w in net.weights] == [(16, 784), (16, 16), (10, 16)]
    assert [b.shape for b in net.biases] == [(16,), (16,), (10,)]
    for a in net.weights + net.biases:
        assert np.shares_memory(a, net.parameters)
    net.weights[1][2, 3] = 42.0
    assert net.parameters[784 * 16 + 16 + 2 * 16 + 3] == 42.0


def test_init_scales():
    std = Network([400, 300, 10], init="standard", seed=0, dtype=np.float64)
    sc = Network([400, 300, 10], init="scaled", seed=0, dtype=np.float64)
    assert std.weights[0].std() == pytest.approx(1.0, rel=0.02)
    assert sc.weights[0].std() == pytest.approx(1 / np.sqrt(400), rel=0.02)
    assert sc.biases[0].std() == pytest.approx(1.0, rel=0.3)


def test_nielsen_style_pairs_and_arrays_train_identically():
    X, y = make_data(200, 12, 3)
    pairs = [(x.reshape(-1, 1), np.eye(3)[k].reshape(-1, 1)) for x, k in zip(X, y)]
    test_pairs = [(x.reshape(-1, 1), int(k)) for x, k in zip(X[:50], y[:50])]
    a, b = Network([12, 5, 3], seed=1), Network([12, 5, 3], seed=1)
    ha = a.SGD((X, y), 2, 10, 1.0, test_data=(X[:50], y[:50]), quiet=True)
    hb = b.SGD(pairs, 2, 10, 1.0, test_data=test_pairs, quiet=True)
    assert np.array_equal(a.parameters, b.parameters)
    assert ha["test_correct"] == hb["test_correct"]
    assert a.evaluate(test_pairs) == a.evaluate((X[:50], y[:50]))


def test_uint8_pixels_are_scaled_once():
    rng = np.random.default_rng(0)
    Xu = rng.integers(0, 256, (40, 8), dtype=np.uint8)
    net = Network([8, 4, 2], seed=0, dtype=np.float64)
    np.testing.assert_array_equal(net.feedforward(Xu), net.feedforward(Xu / 255.0))


def test_feedforward_shapes_follow_input():
    net = Network([6, 4, 3], seed=0)
    X, _ = make_data(5, 6, 3)
    out = net.feedforward(X)
    assert out.shape == (5, 3)
    assert net.feedforward(X[0]).shape == (3,)
    np.testing.assert_allclose(
        net.feedforward(X[0].reshape(-1, 1)), out[0].reshape(-1, 1), rtol=1e-6
    )
    assert net.predict(X).shape == (5,) and net.predict(X).dtype.kind == "i"
    p = net.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    assert np.array_equal(p.argmax(axis=1), net.predict(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_rows_outputs_do_not_depend_on_its_place_in_the_batch(dtype):
    """The forward kernels' blocks of samples round differently; feedforward runs every
    row of a 2-D batch through the widest block, so a row's outputs are the same bits
    alone, in a shuffled batch or after a remainder of any length.  (A 1-D sample takes
    the one-sample kernel, whose sums may differ in the last bit.)"""
    net = Network([37, 23, 9, 4], seed=2, dtype=dtype)
    X, _ = make_data(29, 37, 4)
    out = net.feedforward(X)
    order = np.random.default_rng(0).permutation(len(X))
    assert np.array_equal(net.feedforward(X[order]), out[order])
    for k in range(len(X)):
        assert np.array_equal(net.feedforward(X[k : k + 1]), out[k : k + 1])
        assert np.array_equal(net.feedforward(X[k:]), out[k:])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_block_of_rows_runs_serially_with_the_bits_of_the_parallel_blocks(dtype, monkeypatch):
    """Up to one block of rows (64) runs the block kernel in the calling thread, without
    the parallel region (which a small first ``predict`` then never compiles); its rows
    get the same bits as inside a batch of many blocks, and non-finite input is still
    caught."""
    from fastnn.kernels import inference

    net = Network([50, 23, 9, 4], seed=3, dtype=dtype)
    X = np.random.default_rng(1).random((200, 50)).astype(dtype)
    out = net.feedforward(X)  # 200 rows: four blocks in parallel

    def no_region(*args):
        raise AssertionError("one block started the parallel region")

    monkeypatch.setattr(inference, "_forward", no_region)
    for lo, hi in ((0, 1), (3, 10), (0, 64), (136, 200)):
        assert np.array_equal(net.feedforward(X[lo:hi]), out[lo:hi])
    X[5, 7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        net.predict(X[:64])


def test_history_and_printing(capsys):
    X, y = make_data(300, 10, 3)
    net = Network([10, 6, 3], seed=0)
    h = net.SGD((X, y), 3, 10, 2.0, test_data=(X[:100], y[:100]))
    lines = capsys.readouterr().out.strip().splitlines()
    assert [l.split(":")[0] for l in lines] == ["Epoch 0", "Epoch 1", "Epoch 2"]
    assert lines[-1].split(":")[1].split("(")[0].strip() == f"{h['test_correct'][-1]} / 100"
    assert h["epoch"] == [0, 1, 2]
    assert all(s > 0 for s in h["seconds"])
    assert all(0 <= a <= 1 for a in h["train_accuracy"] + h["test_accuracy"])
    assert h["train_cost"][-1] < h["train_cost"][0]
    net.SGD((X, y), 1, 10, 2.0, quiet=True)
    assert capsys.readouterr().out == ""


def test_training_lowers_cost_for_every_configuration():
    X, y = make_data(600, 10, 3, seed=3)
    for hidden, output, cost, eta in [
        ("sigmoid", "sigmoid", "quadratic", 3.0),
        ("relu", "softmax", "log_loss", 0.1),
        ("tanh", "sigmoid", "cross_entropy", 0.5),
    ]:
        net = Network([10, 8, 3], activation=hidden, output=output, cost=cost, seed=0)
        before = net.cost(X, y)
        net.SGD((X, y), 5, 10, eta, quiet=True)
        assert net.cost(X, y) < before, (hidden, output, cost)


def test_save_load_round_trip_is_exact(tmp_path):
    for dtype in (np.float32, np.float64):
        net = Network(
            [7, 5, 3],
            activation="tanh",
            cost="log_loss",
            weight_decay=0.01,
            init="standard",
            dtype=dtype,
            seed=4,
        )
        path = tmp_path / f"net-{np.dtype(dtype).name}.npz"
        net.save(path)
        back = Network.load(path)
        assert back.parameters.dtype == net.parameters.dtype
        assert np.array_equal(back.parameters, net.parameters)
        assert (
            back.sizes,
            back.activation,
            back.output,
            back.cost_name,
            back.weight_decay,
            back.init,
        ) == (net.sizes, "tanh", "softmax", "log_loss", 0.01, "standard")
        X, _ = make_data(4, 7, 3)
        assert np.array_equal(back.feedforward(X), net.feedforward(X))
    with np.load(path, allow_pickle=False) as f:  # documented keys, no pickle needed
        assert str(f["format"]) == "fastnn-network" and int(f["version"]) == 1


def test_load_rejects_other_files(tmp_path):
    np.savez(tmp_path / "x.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a fastnn network"):
        Network.load(tmp_path / "x.npz")


def test_divergence_raises_and_restores():
    X, y = make_data(100, 10, 3)
    net = Network([10, 4, 3], activation="relu", cost="log_loss", seed=0, dtype=np.float32)
    net.SGD((X, y), 1, 10, 0.1, quiet=True)
    before = net.parameters.copy()
    with pytest.raises(FloatingPointError, match="diverged in epoch 0"):
        net.SGD((X, y), 3, 10, 1e30, quiet=True)  # absurd step: parameters overflow
    assert np.array_equal(net.parameters, before)
    with pytest.raises(FloatingPointError, match="restored"):
        net.update_mini_batch((X, y), 1e300)
    assert np.array_equal(net.parameters, before)


# ---------------------------------------------------------------- bad input
X_OK, Y_OK = make_data(20, 5, 3)


@pytest.mark.parametrize("sizes", [[5], [], [5, 0, 3], "784,10", None, [5, -2]])
def test_bad_sizes(sizes):
    with pytest.raises((TypeError, ValueError), match="sizes"):
        Network(sizes)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(activation="softplus"), "activation"),
        (dict(output="relu"), "output"),
        (dict(cost="hinge"), "cost"),
        (dict(cost="log_loss", output="sigmoid"), "log_loss"),
        (dict(cost="cross_entropy", output="softmax"), "cross_entropy"),
        (dict(init="zeros"), "init"),
        (dict(weight_decay=-1.0), "weight_decay"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Network([5, 3], **kwargs)


def test_bad_dtype():
    with pytest.raises(TypeError, match="dtype"):
        Network([5, 3], dtype=np.int32)


@pytest.mark.parametrize(
    "X,y,exc,match",
    [
        (X_OK[:, :4], Y_OK, ValueError, r"shape \(n_samples, 5\)"),
        (X_OK, Y_OK[:-1], ValueError, "20 labels"),
        (X_OK, Y_OK + 3, ValueError, "outside 0..2"),
        (X_OK, -Y_OK - 1, ValueError, "outside 0..2"),
        (X_OK, Y_OK + 0.5, ValueError, "integer class labels"),
        (np.where(np.eye(20, 5) > 0, np.nan, X_OK), Y_OK, ValueError, "NaN or infinite"),
        (np.where(np.eye(20, 5) > 0, np.inf, X_OK), Y_OK, ValueError, "NaN or infinite"),
        (X_OK[:0], Y_OK[:0], ValueError, "empty"),
        (X_OK.astype(str), Y_OK, TypeError, "real numbers"),
        (X_OK > 0.5, Y_OK, TypeError, "real numbers"),
        (X_OK, Y_OK.astype(str), TypeError, "integer class labels"),
        (np.full((20, 5), 1e300), Y_OK, ValueError, "too large for float32"),
    ],
)
def test_bad_training_data(X, y, exc, match):
    net = Network([5, 4, 3], seed=0)
    with pytest.raises(exc, match=match):
        net.SGD((X, y), 1, 10, 1.0, quiet=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eta=0.0), "eta"),
        (dict(eta=-1.0), "eta"),
        (dict(eta=float("nan")), "eta"),
        (dict(mini_batch_size=0), "mini_batch_size"),
        (dict(mini_batch_size=2.5), "mini_batch_size"),
        (dict(epochs=0), "epochs"),
        (dict(threads=0), "threads"),
        (dict(threads=10**6), "threads"),
    ],
)
def test_bad_training_settings(kwargs, match):
    args = dict(epochs=1, mini_batch_size=10, eta=1.0)
    args.update(kwargs)
    threads = args.pop("threads", None)
    with pytest.raises(ValueError, match=match):
        Network([5, 4, 3]).SGD((X_OK, Y_OK), threads=threads, quiet=True, **args)


def test_bad_test_data_and_pairs():
    net = Network([5, 4, 3])
    with pytest.raises(ValueError, match="test_data"):
        net.SGD((X_OK, Y_OK), 1, 10, 1.0, test_data=(X_OK, Y_OK + 5), quiet=True)
    with pytest.raises(ValueError, match="one-hot"):
        net.SGD([(x, np.full((3, 1), 0.5)) for x in X_OK], 1, 10, 1.0, quiet=True)
    with pytest.raises(ValueError, match="empty"):
        net.SGD([], 1, 10, 1.0, quiet=True)
    with pytest.raises(ValueError, match="shape"):
        net.feedforward(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        net.predict(np.full((2, 5), np.nan))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_inference_rejects_non_finite_input_on_every_path(bad):
    # inference leaves the NaN/inf check to the forward kernel's flag: every path must raise
    net = Network([5, 4, 3], seed=0)
    X = np.ones((9, 5), dtype=np.float32)
    X[7, 2] = bad
    for call in (
        net.predict,
        net.predict_proba,
        net.feedforward,
        lambda a: net.feedforward(a[7]),
        lambda a: net.feedforward(a[7].reshape(-1, 1)),
        lambda a: net.feedforward(a[7].astype(np.float64)),
        lambda a: net.accuracy(a, np.zeros(9, int)),
    ):
        with pytest.raises(ValueError, match="NaN or infinite"):
            call(X)


def test_inference_reports_overflow_and_bad_parameters():
    net = Network([5, 4, 3], seed=0, dtype=np.float32)
    with pytest.raises(ValueError, match="overflow"):
        net.predict(np.full((2, 5), 3e38, dtype=np.float32))
    net.parameters[3] = np.nan
    with pytest.raises(ValueError, match="parameters contain NaN"):
        net.feedforward(np.ones(5, dtype=np.float32))


def test_single_sample_latency_path_matches_batch():
    net = Network([30, 9, 7, 5], activation="tanh", cost="log_loss", seed=0, dtype=np.float64)
    X, _ = make_data(6, 30, 5)
    batch = net.feedforward(X)
    for i in range(6):
        np.testing.assert_allclose(net.feedforward(X[i]), batch[i], rtol=1e-12)
        np.testing.assert_allclose(net.feedforward(np.asfortranarray(X)[i]), batch[i], rtol=1e-12)


def test_prepared_data_train_alike_and_are_converted_once(monkeypatch):
    X, y = make_data(500, 20, 4, dtype=np.float64, density=0.2)
    a, b = Network([20, 8, 4], seed=5), Network([20, 8, 4], seed=5)
    calls = []
    real = Network._sparse_inputs
    monkeypatch.setattr(
        Network, "_sparse_inputs", lambda self, *k: calls.append(1) or real(self, *k)
    )
    prepared = b.prepare((X, y))
    for _ in range(3):  # a pipeline calling SGD once per epoch
        a.SGD((X, y), 1, 10, 0.5, quiet=True)
        b.SGD(prepared, 1, 10, 0.5, quiet=True)
    assert np.array_equal(a.parameters, b.parameters)
    assert len(calls) == 3 + 1  # three times for the raw arrays, once for the prepared ones
    assert len(prepared) == 500
    with pytest.raises(ValueError, match="prepare them with it"):
        Network([20, 8, 4], dtype=np.float64).SGD(prepared, 1, 10, 0.5, quiet=True)
    with pytest.raises(ValueError, match="20 inputs"):
        Network([21, 8, 4]).SGD(prepared, 1, 10, 0.5, quiet=True)
    with pytest.raises(ValueError, match="4 classes"):
        Network([20, 8, 5]).SGD(prepared, 1, 10, 0.5, quiet=True)
