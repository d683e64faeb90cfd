"""fastnn.inspect: the input-gradient kernel against its NumPy twin and finite differences,
gradient tracking in SGD, and the numbers behind the figures."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import inspect as I
from fastnn import reference as R
from helpers import COMBOS, make_data


def _net(h="sigmoid", o="sigmoid", c="quadratic", sizes=(7, 5, 4, 3), dtype=np.float64, seed=1):
    return fastnn.Network(list(sizes), activation=h, output=o, cost=c, dtype=dtype, seed=seed)


def _targets(net, rng, n):
    """(layer, neurons) pairs covering the cost and every layer."""
    out = [(None, None)]
    for layer in range(net.num_layers - 1):
        out.append((layer, rng.integers(0, net.sizes[layer + 1], n)))
    return out


@pytest.mark.parametrize("h,o,c", COMBOS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_input_gradient_matches_reference(h, o, c, dtype):
    net = _net(h, o, c, dtype=dtype)
    X, y = make_data(9, 7, 3, seed=2, dtype=dtype, density=0.8)
    rng = np.random.default_rng(0)
    for layer, neurons in _targets(net, rng, len(X)):
        if layer is None:
            got = I.input_gradient(net, X, y)
            want, _ = R.input_gradient(net.parameters, net.sizes, X, y, -1, None, h, o, c)
        else:
            got = I.input_gradient(net, X, layer=layer, neuron=neurons)
            want, _ = R.input_gradient(net.parameters, net.sizes, X, None, layer, neurons, h, o, c)
        assert got.dtype == dtype
        tol = 1e-12 if dtype == np.float64 else 2e-5
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("h,o,c", COMBOS[::3])
def test_input_gradient_finite_differences(h, o, c):
    net = _net(h, o, c)
    X, y = make_data(5, 7, 3, seed=3, density=1.0)
    X += 0.05  # away from ReLU kinks in the first layer's inputs

    def scalar(Xp, layer, neurons):
        acts = R.forward(net.parameters, net.sizes, Xp, h, o)
        if layer is None:
            Y = R.one_hot(y, 3, Xp.dtype)
            return R.cost(acts[-1], Y, fastnn.layout.COSTS[c])
        return acts[layer + 1][np.arange(len(Xp)), neurons]

    rng = np.random.default_rng(4)
    for layer, neurons in _targets(net, rng, len(X)):
        if layer is None:
            got = I.input_gradient(net, X, y)
        else:
            got = I.input_gradient(net, X, layer=layer, neuron=neurons)
        fd = np.empty_like(X)
        eps = 1e-6
        for k in range(X.shape[1]):
            E = np.zeros_like(X)
            E[:, k] = eps
            fd[:, k] = (scalar(X + E, layer, neurons) - scalar(X - E, layer, neurons)) / (2 * eps)
        np.testing.assert_allclose(got, fd, atol=1e-7)


def test_input_gradient_rejects_bad_requests():
    net = _net()
    X, y = make_data(3, 7, 3)
    with pytest.raises(ValueError, match="give y"):
        I.input_gradient(net, X)
    with pytest.raises(ValueError, match="not a mix"):
        I.input_gradient(net, X, y, layer=0, neuron=1)
    with pytest.raises(ValueError, match=r"neuron must be in \[0, 4\]"):
        I.input_gradient(net, X, layer=0, neuron=5)
    with pytest.raises(ValueError, match=r"layer must be in \[-3, 2\]"):
        I.input_gradient(net, X, layer=3, neuron=0)
    with pytest.raises(ValueError, match=r"one per row of X \(3\), got shape \(2,\)"):
        I.input_gradient(net, X, layer=0, neuron=[0, 1])
    with pytest.raises(TypeError, match="neuron must be an integer"):
        I.input_gradient(net, X, layer=0, neuron=0.5)
    with pytest.raises(ValueError, match=r"shape \(n_samples, 7\)"):
        I.input_gradient(net, X[:, :6], y)
    X[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        I.input_gradient(net, X, y)


def test_weight_images_are_weight_products():
    net = _net()
    np.testing.assert_array_equal(I.weight_images(net, 0), net.weights[0])
    np.testing.assert_allclose(I.weight_images(net, 1), net.weights[1] @ net.weights[0])
    np.testing.assert_allclose(
        I.weight_images(net, -1), net.weights[2] @ net.weights[1] @ net.weights[0]
    )


def test_preferred_input_of_a_first_layer_neuron_is_its_weight_signs():
    """A first-layer sigmoid neuron is maximised over [0, 1]^n by x = (w > 0)."""
    net = _net(sizes=(30, 4, 3))
    X, act = I.preferred_inputs(net, 0, steps=400, step=0.05)
    assert X.min() >= 0 and X.max() <= 1
    np.testing.assert_array_equal(X > 0.5, net.weights[0] > 0)
    best = 1 / (1 + np.exp(-(np.maximum(net.weights[0], 0).sum(axis=1) + net.biases[0])))
    np.testing.assert_allclose(act, best, rtol=1e-6)


def test_preferred_inputs_reject_a_bad_step():
    with pytest.raises(ValueError, match="step must be a finite real number, got nan"):
        I.preferred_inputs(_net(), 0, step=float("nan"))
    with pytest.raises(ValueError, match="step must be positive, got -0.1"):
        I.preferred_inputs(_net(), 0, step=-0.1)


def test_preferred_inputs_raise_deeper_activations():
    net = _net(h="relu", o="softmax", c="log_loss", sizes=(20, 8, 6, 3))
    start = I.preferred_inputs(net, 1, steps=0)[1]
    X, act = I.preferred_inputs(net, 1, steps=100)
    assert (act >= start - 1e-12).all() and (act > start).any()
    assert X.shape == (6, 20)


def test_layer_activations_match_reference():
    net = _net()
    x = make_data(1, 7, 3)[0][0]
    acts = I.layer_activations(net, x)
    ref = R.forward(net.parameters, net.sizes, x[None, :])
    assert [a.shape for a in acts] == [(5,), (4,), (3,)]
    for a, r in zip(acts, ref[1:]):
        np.testing.assert_allclose(a, r[0], rtol=1e-12)


def test_gradient_norms_and_top_components():
    net = _net()
    X, y = make_data(20, 7, 3, seed=5)
    g = net.gradient(X, y)
    norms = I.gradient_norms(net, X, y)
    gW, gb = net.views(g)
    want = [np.sqrt((W**2).sum() + (b**2).sum()) for W, b in zip(gW, gb)]
    np.testing.assert_allclose(norms, want, rtol=1e-12)
    top = I.top_gradient_components(net, X, y, k=5)
    assert [t["value"] for t in top] == sorted((t["value"] for t in top), key=abs, reverse=True)
    assert abs(top[0]["value"]) == np.abs(g).max()
    for t in top:  # each entry names the component it reports
        W, b = gW[t["layer"]], gb[t["layer"]]
        comp = b[t["neuron"]] if t["input"] is None else W[t["neuron"], t["input"]]
        assert t["value"] == -comp


def test_costs_lousiest_and_confusion():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    net = _net(h="relu", o="softmax", c="log_loss")
    X, y = make_data(200, 7, 3, seed=6)
    c = I.example_costs(net, X, y)
    p = net.feedforward(X)
    np.testing.assert_allclose(c, -np.log(p[np.arange(200), y]), rtol=1e-12)
    assert np.isclose(c.mean(), net.cost(X, y))
    worst = I.lousiest(net, X, y, k=7)
    np.testing.assert_array_equal(worst["index"], np.argsort(-c, kind="stable")[:7])
    np.testing.assert_array_equal(worst["predicted"], net.predict(X[worst["index"]]))
    cm = I.confusion_matrix(net, X, y)
    np.testing.assert_array_equal(
        cm, sklearn_metrics.confusion_matrix(y, net.predict(X), labels=[0, 1, 2])
    )


def test_noise_inputs_and_response():
    u = I.noise_inputs("uniform", 500, 784, seed=1)
    s = I.noise_inputs("sparse", 500, 784, density=0.2, seed=1)
    assert u.min() >= 0 and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01
    assert abs(np.count_nonzero(s) / s.size - 0.2) < 0.01 and s.max() <= 1
    assert not I.noise_inputs("blank", 1, 784).any()
    with pytest.raises(ValueError, match="kind must be"):
        I.noise_inputs("pink", 1, 784)
    net = fastnn.Network([784, 16, 10], seed=0)
    digits = s[:50]
    res = I.noise_response(net, n=300, digits=digits)
    assert set(res) == {"uniform", "sparse", "blank", "digits"}
    assert res["sparse"]["density"] == np.count_nonzero(digits) / digits.size
    for r in res.values():
        assert len(r["class_fractions"]) == 10
        assert np.isclose(sum(r["class_fractions"]), 1.0)
        assert 0.1 <= r["mean_top_output"] <= 1
    assert max(res["blank"]["class_fractions"]) == 1.0


# ---------------------------------------------------------------------- gradient tracking
def test_track_gradients_records_probe_norms_and_changes_nothing():
    X, y = make_data(300, 7, 3, seed=7)
    a, b = _net(), _net()
    h0 = a.SGD((X, y), 3, 10, 0.5, quiet=True)
    start = I.gradient_norms(b, X[:100], y[:100])
    h1 = b.SGD((X, y), 3, 10, 0.5, quiet=True, track_gradients=100)
    np.testing.assert_array_equal(a.parameters, b.parameters)
    assert "gradient_norms" not in h0
    assert len(h1["gradient_norms"]) == 3 and all(len(g) == 3 for g in h1["gradient_norms"])
    np.testing.assert_allclose(h1["gradient_norms"][0], start, rtol=1e-10)
    # each epoch's entry is measured at the parameters the epoch starts from
    after_two = _net()
    after_two.SGD((X, y), 2, 10, 0.5, quiet=True)
    want = I.gradient_norms(after_two, X[:100], y[:100])
    np.testing.assert_allclose(h1["gradient_norms"][-1], want, rtol=1e-10)
    with pytest.raises(ValueError, match="track_gradients must be True, False or a number"):
        b.SGD((X, y), 1, 10, 0.5, quiet=True, track_gradients="yes")


def test_track_gradients_includes_weight_decay():
    X, y = make_data(50, 7, 3, seed=8)
    net = fastnn.Network([7, 5, 3], weight_decay=0.3, dtype=np.float64, seed=0)
    want = I.gradient_norms(net, X, y)
    h = net.SGD((X, y), 1, 10, 0.1, quiet=True, track_gradients=True)
    np.testing.assert_allclose(h["gradient_norms"][0], want, rtol=1e-10)


@pytest.mark.mnist
def test_first_layer_gradient_is_much_smaller_at_initialisation(mnist):
    """Nielsen's chapter 5: in 784-16-16-10 (sigmoid), the first layer learns slowest."""
    (X, y), _ = mnist
    net = fastnn.Network([784, 16, 16, 10], seed=0)
    h = net.SGD((X[:5000], y[:5000]), 2, 10, 3.0, quiet=True, track_gradients=True)
    first, _, last = h["gradient_norms"][0]
    assert first < 0.2 * last


# ---------------------------------------------------------------------- report and commands
@pytest.fixture(scope="module")
def trained_model(tmp_path_factory, mnist):
    (X, y), _ = mnist
    net = fastnn.Network([784, 16, 16, 10], seed=0)
    net.SGD((X[:20000], y[:20000]), 2, 10, 3.0, quiet=True)
    return net.save(tmp_path_factory.mktemp("model") / "m.npz")


def _run(args, env_extra=None, code=None):
    env = dict(os.environ, **(env_extra or {}))
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "fastnn", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.mnist
def test_inspect_command_writes_figures_json_and_report(trained_model, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    r = _run(["inspect", str(trained_model), "--out", str(out), "--image", "3"])
    assert r.returncode == 0, r.stderr
    d = json.loads((out / "inspect.json").read_text())
    assert len(d["gradient_norms"]) == 3 and all(g > 0 for g in d["gradient_norms"])
    assert d["gradient_norms_at_init"][0] < 0.2 * d["gradient_norms_at_init"][-1]
    assert len(d["noise_class_fractions"]) == 10
    assert np.isclose(sum(d["noise_class_fractions"]), 1.0)
    assert d["test_accuracy"] > 0.85 and d["image"]["index"] == 3
    assert np.array(d["confusion_matrix"]).sum() == 10000
    assert len(d["lousiest"]["index"]) == 16
    pngs = sorted(p.name for p in out.glob("*.png"))
    for name in (
        "weights_layer1.png",
        "weights_layer2.png",
        "preferred_layer1.png",
        "activations.png",
        "gradient_norms.png",
        "lousiest.png",
        "confusion.png",
        "noise.png",
    ):
        assert name in pngs
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    for name in pngs:
        assert f"]({name})" in report
    assert "wrote 11 files" in r.stdout


_NO_MPL = (
    "import sys; sys.modules['matplotlib'] = None; from fastnn.cli import main; "
    "sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.mnist
def test_inspect_without_matplotlib_writes_json_and_says_how(trained_model, tmp_path):
    r = _run(["inspect", str(trained_model), "--out", str(tmp_path)], code=_NO_MPL)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inspect.json"]
    assert r.stdout.strip().splitlines()[-1] == (
        "matplotlib is not installed: for the figures, pip install 'fastnn[plot]'"
    )


def test_inspect_command_errors(tmp_path):
    r = _run(["inspect", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "missing.npz" in r.stderr
    fastnn.Network([10, 3], seed=0).save(tmp_path / "small.npz")
    r = _run(["inspect", str(tmp_path / "small.npz"), "--out", str(tmp_path / "o")])
    assert r.returncode == 2 and "takes 10 inputs, not MNIST's 784" in r.stderr
    (tmp_path / "file").write_text("")
    r = _run(["inspect", str(tmp_path / "small.npz"), "--out", str(tmp_path / "file")])
    assert r.returncode == 2 and "--out" in r.stderr


@pytest.mark.mnist
def test_memorization_experiment(tmp_path, mnist):
    """Shuffled labels: train accuracy far above chance, test accuracy at chance."""
    r = _run(["experiment", "memorization", "--n", "500", "--epochs", "20", "--out", str(tmp_path)])
    assert r.returncode == 0, r.stderr
    d = json.loads((tmp_path / "memorization.json").read_text())
    for key in ("true_labels", "shuffled_labels", "random_pixels"):
        for series in ("train_accuracy", "test_accuracy", "train_cost"):
            assert len(d[key][series]) == 20
    true, shuffled, pixels = d["true_labels"], d["shuffled_labels"], d["random_pixels"]
    assert true["test_accuracy"][-1] > 0.8
    assert shuffled["train_accuracy"][-1] > 0.6
    assert shuffled["train_accuracy"][2] < true["train_accuracy"][2]  # but slower
    assert max(shuffled["test_accuracy"][-5:]) < 0.2
    assert pixels["train_accuracy"][-1] > 0.6 and max(pixels["test_accuracy"][-5:]) < 0.2
    if pytest.importorskip("matplotlib"):
        assert (tmp_path / "memorization.png").read_bytes()[:4] == b"\x89PNG"


def test_memorization_command_errors(tmp_path):
    r = _run(["experiment", "memorization", "--n", "0", "--out", str(tmp_path)])
    assert r.returncode == 2 and "--n must be at least 1" in r.stderr
    r = _run(["experiment", "memorization", "--sizes", "784,10,3", "--out", str(tmp_path)])
    assert r.returncode == 2 and "must start with 784 and end with 10" in r.stderr


def test_figures_draw_from_history_and_results():
    figures = pytest.importorskip("fastnn.figures")
    h = {"gradient_norms": [[0.01, 0.1, 1.0], [0.02, 0.05, 0.1]]}
    fig = figures.gradient_norms_figure(h)
    assert len(fig.axes[0].lines) == 3
    assert fig.axes[0].get_yscale() == "log"
    res = {
        k: {"train_accuracy": [0.1, 0.2], "test_accuracy": [0.1, 0.1], "train_cost": [1, 0.5]}
        for k in ("true_labels", "shuffled_labels", "random_pixels")
    }
    assert len(figures.memorization_figure(res).axes) == 3


def test_import_fastnn_imports_no_matplotlib():
    code = "import sys, fastnn, fastnn.inspect; print('matplotlib' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.stdout.strip() == "False", r.stderr
