"""The peers of the benchmark suite: scikit-learn, PyTorch and JAX on the same workloads.

Each is a contender ``make(workload, data, threads) -> Run`` (see
:mod:`fastnn.bench`); a peer that is not installed raises ``Skip``.  Nothing
here is imported until a benchmark runs.
"""

import os

import numpy as np


def sklearn_contender(w, data, threads):
    from .bench import Run, Skip

    try:
        from sklearn.neural_network import MLPClassifier
    except ImportError as e:
        raise Skip(f"scikit-learn not importable ({e})") from None
    act = {"sigmoid": "logistic", "relu": "relu", "tanh": "tanh"}[w["activation"]]
    clf = MLPClassifier(
        hidden_layer_sizes=tuple(w["sizes"][1:-1]),
        activation=act,
        solver="sgd",
        batch_size=w["batch"],
        learning_rate_init=0.1,
        momentum=0.0,
        alpha=0.0,
        shuffle=True,
        random_state=0,
    )
    classes = np.arange(w["sizes"][-1])
    clf.partial_fit(data.X[:100], data.y[:100], classes=classes)

    def fn():
        clf.partial_fit(data.X, data.y)

    return Run(
        fn,
        len(data.X),
        note="MLPClassifier sgd partial_fit (log-loss, its only loss)",
        threads="BLAS",
    )


def _torch_model(w, torch):
    layers = []
    acts = {"sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}
    sizes = w["sizes"]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(acts[w["activation"]]())
    return torch.nn.Sequential(*layers)


def torch_contender(w, data, threads):
    from .bench import Run, Skip

    try:
        import torch
    except ImportError as e:
        raise Skip(f"PyTorch not importable ({e})") from None
    torch.manual_seed(0)
    model = _torch_model(w, torch)
    opt = torch.optim.SGD(model.parameters(), lr=w["eta"])
    X = torch.from_numpy(data.X)
    y = torch.from_numpy(data.y)
    m = w["batch"]
    n_out = w["sizes"][-1]
    quadratic = w["cost"] == "quadratic"
    nthreads = threads or os.cpu_count()

    def fn():
        torch.set_num_threads(nthreads)
        perm = torch.randperm(len(X))
        for b0 in range(0, len(X), m):
            idx = perm[b0 : b0 + m]
            xb, yb = X[idx], y[idx]
            opt.zero_grad()
            z = model(xb)
            if quadratic:
                a = torch.sigmoid(z)
                loss = 0.5 * ((a - torch.nn.functional.one_hot(yb, n_out)) ** 2).sum(1).mean()
            else:
                loss = torch.nn.functional.cross_entropy(z, yb)
            loss.backward()
            opt.step()

    return Run(fn, len(X), note=f"eager, {nthreads} threads", threads=nthreads)


def jax_contender(w, data, threads):
    from .bench import Run, Skip, _network

    try:
        import jax
        import jax.numpy as jnp
    except ImportError as e:
        raise Skip(f"JAX not importable ({e})") from None
    sizes, m, eta = w["sizes"], w["batch"], w["eta"]
    n = len(data.X) // m * m  # lax.scan needs equal mini-batches
    act = {"sigmoid": jax.nn.sigmoid, "relu": jax.nn.relu, "tanh": jnp.tanh}[w["activation"]]
    quadratic = w["cost"] == "quadratic"
    net = _network(w, np.float32)
    params = [(jnp.asarray(W), jnp.asarray(b)) for W, b in zip(net.weights, net.biases)]

    def loss(params, xb, yb):
        a = xb
        for i, (W, b) in enumerate(params):
            z = a @ W.T + b
            a = act(z) if i < len(params) - 1 else z
        Y = jax.nn.one_hot(yb, sizes[-1])
        if quadratic:
            return 0.5 * ((jax.nn.sigmoid(a) - Y) ** 2).sum(1).mean()
        return -(jax.nn.log_softmax(a) * Y).sum(1).mean()

    grad = jax.grad(loss)

    @jax.jit
    def epoch(params, X, y, perm):
        Xb = X[perm].reshape(-1, m, X.shape[1])
        yb = y[perm].reshape(-1, m)

        def step(p, batch):
            g = grad(p, *batch)
            return jax.tree_util.tree_map(lambda a, b: a - eta * b, p, g), None

        return jax.lax.scan(step, params, (Xb, yb))[0]

    X = jnp.asarray(data.X)
    y = jnp.asarray(data.y.astype(np.int32))
    rng = np.random.default_rng(0)
    state = {"p": params}
    jax.block_until_ready(epoch(params, X, y, jnp.asarray(rng.permutation(len(data.X))[:n])))

    def fn():
        perm = jnp.asarray(rng.permutation(len(data.X))[:n])
        state["p"] = jax.block_until_ready(epoch(state["p"], X, y, perm))

    return Run(fn, n, note="jit + lax.scan over mini-batches, XLA's own threads", threads="XLA")
