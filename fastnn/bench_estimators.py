"""Benchmark rows of the scikit-learn estimators: whole ``fit`` calls, fastnn against scikit-learn.

* W5: scikit-learn's ``MLPClassifier`` defaults (hidden (100,), relu, adam,
  batch 200, learning rate 1e-3, alpha 1e-4), 10 epochs;
* W6: ``solver='sgd'``, momentum 0.9 with Nesterov, hidden (256, 128),
  batch 32, 10 epochs;
* W1-est: W1's network (784-16-16-10, sigmoid hidden layers, batch 10)
  through ``fastnn.MLPClassifier`` (sgd, no momentum, no alpha) against
  ``Network.SGD`` with the same sizes and batch.

Each ``fit`` is timed whole (data validation and conversion included, as a
user sees it), the contenders in turn within every round; times are per
epoch; the notes give the test accuracy.
"""

import warnings

EPOCHS = 10

ESTIMATOR_WORKLOADS = {
    "W5": dict(hidden_layer_sizes=(100,)),
    "W6": dict(
        hidden_layer_sizes=(256, 128),
        solver="sgd",
        momentum=0.9,
        nesterovs_momentum=True,
        batch_size=32,
        learning_rate_init=0.01,
    ),
}


def _fit_run(make, data, epochs):
    from .bench import Run

    out = {}

    def fn():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out["estimator"] = make().fit(data.X, data.y)

    return Run(fn, len(data.X) * epochs, 1.0 / epochs, threads="all"), out


def _accuracy(out, data):
    """Test accuracy of the last estimator fitted (not timed)."""
    return float((out["estimator"].predict(data.Xt) == data.yt).mean())


def estimator_runs(data, quick, rounds, budget, log=print, pause=0.0):
    """Results (``fastnn.bench.Result``) of W5, W6 and W1-est, timed in turn, ``pause``
    seconds of sleep before every fit (:func:`fastnn.bench.time_interleaved`)."""
    from sklearn.neural_network import MLPClassifier as SkMLP

    from . import MLPClassifier, Network
    from .bench import WORKLOADS, _result, time_interleaved, train_flops

    epochs = 2 if quick else EPOCHS
    results = []
    for wname, params in ESTIMATOR_WORKLOADS.items():
        kw = dict(params, max_iter=epochs, random_state=0)
        runs, accs = [], []
        for cls in (MLPClassifier, SkMLP):
            run, acc = _fit_run(lambda cls=cls, kw=kw: cls(**kw), data, epochs)
            runs.append(run)
            accs.append(acc)
        times = time_interleaved(runs, rounds, budget, pause=pause)
        sizes = [784, *params["hidden_layer_sizes"], 10]
        flops = train_flops(sizes, len(data.X), kw.get("batch_size", 200))
        for cname, run, ts, acc in zip(("fastnn-est", "sklearn-est"), runs, times, accs):
            run.note = (
                f"whole fit, {epochs} epochs; test accuracy {100 * _accuracy(acc, data):.2f}%"
            )
            r = _result(wname, cname, kw.get("batch_size", 200), run, ts, flops)
            results.append(r)
            log(f"  {wname:<10} {cname:<11} {r.median_s:9.4f} s per epoch ({run.note})")

    # W1 through the estimator against Network.SGD, both on float32 pixels in [0, 1]
    w = WORKLOADS["W1"]

    def network():
        net = Network(w["sizes"], activation="sigmoid", output="softmax", cost="log_loss", seed=0)
        net.SGD((data.X, data.y), epochs, w["batch"], 0.5, quiet=True)
        return net

    est_kw = dict(
        hidden_layer_sizes=tuple(w["sizes"][1:-1]),
        activation="logistic",
        solver="sgd",
        momentum=0.0,
        alpha=0.0,
        batch_size=w["batch"],
        learning_rate_init=0.5,
        max_iter=epochs,
        random_state=0,
    )

    def estimator():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return MLPClassifier(**est_kw).fit(data.X, data.y)

    from .bench import Run

    runs = [
        Run(estimator, len(data.X) * epochs, 1.0 / epochs, threads="all"),
        Run(network, len(data.X) * epochs, 1.0 / epochs, threads="all"),
    ]
    # a fit of W1 takes about a second, and this VM switches between speeds about 1.4x
    # apart within seconds (both contenders' times fall near 0.09 or near 0.13 s an
    # epoch): seven rounds, the estimator always first, gave 1.01x-1.37x in four runs of
    # nearly the same code.  Fifteen rounds, each contender first in every other one.
    times = time_interleaved(
        runs, rounds if quick else max(rounds, 15), budget, pause=pause, swap=True
    )
    flops = train_flops(w["sizes"], len(data.X), w["batch"])
    for cname, run, ts in zip(("fastnn-est", "network-sgd"), runs, times):
        run.note = f"whole fit/SGD call, {epochs} epochs, float32 pixels"
        r = _result("W1-est", cname, w["batch"], run, ts, flops)
        results.append(r)
        log(f"  {'W1-est':<10} {cname:<11} {r.median_s:9.4f} s per epoch")
    return results


def _round_ratios(num, den, digits):
    """``"; a-bx in the n rounds"``: the range of ``num``'s time over ``den``'s within each
    round (both timed in turn, so a round's pair shares the VM's state); empty for fewer
    than two rounds."""
    pairs = list(zip(num.get("times") or [], den.get("times") or []))
    if len(pairs) < 2:
        return ""
    ratios = [x / y for x, y in pairs]
    return f"; {min(ratios):.{digits}f}-{max(ratios):.{digits}f}x in the {len(pairs)} rounds"


def estimator_summary(res):
    """Markdown lines: fastnn's fit against scikit-learn's (W5, W6) and Network.SGD (W1-est),
    with the range of the ratio over the rounds."""
    by = {(r["workload"], r["contender"]): r for r in res}
    lines = []
    for w in ("W5", "W6"):
        a, b = by.get((w, "fastnn-est")), by.get((w, "sklearn-est"))
        if a and b:
            lines.append(
                f"{w}: fastnn's `fit` {b['median_s'] / a['median_s']:.1f}x faster than "
                f"scikit-learn's ({a['median_s']:.3f} against {b['median_s']:.3f} s per epoch; "
                f"{a['note'].split('; ')[1]} against {b['note'].split('; ')[1].split(' ')[-1]}"
                f"{_round_ratios(b, a, 1)})."
            )
    a, b = by.get(("W1-est", "fastnn-est")), by.get(("W1-est", "network-sgd"))
    if a and b:
        lines.append(
            f"W1 through `fastnn.MLPClassifier`: {a['median_s']:.4f} s per epoch against "
            f"{b['median_s']:.4f} s for `Network.SGD` ({a['median_s'] / b['median_s']:.2f}x"
            f"{_round_ratios(a, b, 2)})."
        )
    return ["", *lines] if lines else []
