"""The benchmark report: the plain table, the README's Markdown, regressions, the sweep plot.

Each function takes the report dict that :func:`fastnn.bench.run_suite` returns
(and ``python -m fastnn bench --json`` writes).
"""

import time

from .bench_dask import search_summary
from .bench_estimators import estimator_summary


def format_table(report):
    head = (
        f"{'workload':<12}{'contender':<12}{'batch':>6}{'threads':>8}{'median s':>11}"
        f"{'samples/s':>12}{'vs ref':>8}{'GFLOP/s':>9}{'% peak':>8}  note"
    )
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        lines.append(
            f"{r['workload']:<12}{r['contender']:<12}{r['batch'] or '':>6}"
            f"{str(r['threads']):>8}{r['median_s']:>11.4f}{r['samples_per_s']:>12,.0f}"
            f"{sp:>8}{r['gflops']:>9.1f}{100 * r['peak_share']:>7.1f}%  {r['note']}"
        )
    for s in report.get("skipped", []):
        lines.append(f"{s['workload']:<12}{s['contender']:<12} skipped: {s['reason']}")
    m = report["machine"]
    lines.append(
        f"machine: {m['cpu']}, {m['cores']} cores, numba {m['numba']} "
        f"({m['threading_layer']} threads), numpy {m['numpy']}; data: {report['data']}; "
        f"peak {report['peak_gflops']:.1f} GFLOP/s (float32 BLAS product)"
    )
    if report.get("compile"):
        c = report["compile"]
        lines.append(
            f"cold start (import, first epoch, first predict): empty cache {c['cold_s']:.1f} s, "
            f"warm cache {c['warm_s']:.2f} s"
        )
    if report.get("cold_start"):
        lines.append(
            "python -m fastnn train --epochs 1: first epoch done "
            f"{report['cold_start']['launch_to_first_epoch_end_s']:.2f} s after launch"
        )
    return "\n".join(lines)


_LABELS = {
    "fastnn-f64": "fastnn f64",
    "reference": "reference (NumPy mini-batch)",
    "per-sample": "per-sample loop, `network.py` style",
    "sklearn": "scikit-learn MLPClassifier `partial_fit`",
    "pytorch": "PyTorch eager",
    "jax": "JAX `jit` + `lax.scan`",
}
_ROW_LABELS = {
    ("W1-calls", "sgd-1x10"): "`SGD`, one call of 10 epochs (per epoch)",
    ("W1-calls", "sgd-1x10-track"): "`SGD`, one call of 10 epochs, `track_gradients=True`",
    ("W1-calls", "sgd-10x1"): "`SGD`, 10 calls of one epoch (per epoch)",
    ("W1-calls", "sgd-10x1-prep"): "`SGD` on `prepare`d data, 10 calls (per epoch)",
    ("W5", "fastnn-est"): "`fastnn.MLPClassifier.fit`",
    ("W5", "sklearn-est"): "scikit-learn `MLPClassifier.fit`",
    ("W6", "fastnn-est"): "`fastnn.MLPClassifier.fit`",
    ("W6", "sklearn-est"): "scikit-learn `MLPClassifier.fit`",
    ("W1-est", "fastnn-est"): "`fastnn.MLPClassifier.fit` (sgd, W1's network)",
    ("W1-est", "network-sgd"): "`Network.SGD` (log-loss, same network and batch)",
    ("W7", "search-serial"): "`GridSearchCV`, `n_jobs=1` (per search)",
    ("W7", "search-dask"): "`GridSearchCV` on a Dask `LocalCluster` (per search)",
    ("W7", "search-loky"): "`GridSearchCV`, joblib `n_jobs=2` (per search)",
    ("W4-batch", "fastnn-f32"): "fastnn, 10,000 images in one call",
    ("W4-batch", "reference"): "reference, one BLAS product per layer",
    ("W4-single", "fastnn-f32"): "fastnn, one image per call",
    ("W4-single", "reference"): "reference, one image per call",
}


def _label(r, cores):
    """A row's contender as the README names it."""
    if (r["workload"], r["contender"]) in _ROW_LABELS:
        return _ROW_LABELS.get((r["workload"], r["contender"]), r["contender"])
    threads = r["threads"]
    if r["contender"].startswith("fastnn"):
        name = _LABELS.get(r["contender"], "fastnn f32")
        if threads == "all":  # the default: up to all threads, as the tuner finds faster
            return f"{name}, default threads (up to {cores})"
        return f"{name}, {threads} thread{'s' * (threads != 1)}"
    if r["contender"] == "per-sample":
        share = r["note"].split("timed on ")[-1].split(" of")[0] if "timed on" in r["note"] else ""
        return _LABELS["per-sample"] + (f" ({share} timed, scaled)" if share else "")
    return _LABELS.get(r["contender"], r["contender"])


def _busy_summary(res):
    """Lines comparing default threads with one thread beside busy processes."""
    busy = {}
    for r in res:
        if "-busy" in r["workload"]:
            busy.setdefault(r["workload"], {})[str(r["threads"])] = r["median_s"]
    parts = [
        f"{w.replace('-busy', ' beside ')} busy: {t['all'] / t['1']:.2f}x"
        for w, t in sorted(busy.items())
        if "all" in t and "1" in t
    ]
    if not parts:
        return []
    return [
        "",
        "Beside busy processes (`python -c 'while True: pass'`), the default thread count's "
        "epoch time over one thread's, timed in turn under the same load: "
        + "; ".join(parts)
        + ".",
    ]


def format_markdown(report):
    """The README's performance section body: machine line, table, sweep, notes (Markdown)."""
    command = report.get("command", "python -m fastnn bench")
    m = report["machine"]
    cores = m["cores"]
    res = report["results"]
    lines = [
        f"Measured on {report.get('date', time.strftime('%Y-%m-%d'))} with `{command}` "
        f"({'quick' if report['quick'] else 'full'} mode, medians) on {m['cpu']}, "
        f"{cores} cores: numba {m['numba']} ({m['threading_layer']} threading layer), "
        f"numpy {m['numpy']}, Python {m['python']}; data: {report['data']}; float32 BLAS "
        f"peak {report['peak_gflops']:.0f} GFLOP/s.",
        "",
        "| workload | contender | median s / epoch | vs reference | GFLOP/s | note |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    order = ["W1", "W1-calls", "W1-busy1", "W1-busy2", "W2", "W2-busy1", "W2-busy2"]
    order += ["W3", "W3-busy1", "W3-busy2", "W4-batch", "W4-single", "W5", "W6", "W1-est", "W7"]
    rows = [r for r in res if r["workload"].split("-threads")[0] in order]
    rows.sort(
        key=lambda r: (
            order.index(r["workload"].split("-threads")[0]),
            0 if r["contender"] == "fastnn-f32" else 1,
            "-threads" in r["workload"],
        )
    )
    for r in rows:
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else ""
        note = (
            r["note"]
            if r["contender"].startswith(("fastnn", "sgd", "sklearn-est", "search"))
            else ""
        )
        lines.append(
            f"| {r['workload'].split('-threads')[0]} | {_label(r, cores)} | "
            f"{r['median_s']:.4g} | {sp} | {r['gflops']:.1f} | {note} |"
        )
    for sk in report.get("skipped", []):
        lines.append(
            f"| {sk['workload']} | {_LABELS.get(sk['contender'], sk['contender'])} | "
            f"| | | skipped: {sk['reason']} |"
        )
    lines += _busy_summary(res)
    calls = {r["contender"]: r["median_s"] for r in res if r["workload"] == "W1-calls"}
    if "sgd-1x10" in calls and "sgd-1x10-track" in calls:
        lines += [
            "",
            "Recording per-layer gradient norms (`track_gradients=True`, 1,000-sample probe) "
            f"costs {100 * (calls['sgd-1x10-track'] / calls['sgd-1x10'] - 1):+.1f}% of a W1 "
            "`SGD` call (timed in turn with the plain call).",
        ]
    lines += estimator_summary(res)
    lines += search_summary(res, report.get("search"))
    w1 = {r["contender"]: r["median_s"] for r in res if r["workload"] == "W1"}
    if "fastnn-f32" in w1 and "per-sample" in w1:
        lines += [
            "",
            f"W1 is **{w1['per-sample'] / w1['fastnn-f32']:.0f}x faster than the "
            f"per-sample loop** ({w1['per-sample']:.3f} s against {w1['fastnn-f32']:.4f} s).",
        ]
    sweep = {(r["contender"], r["batch"]): r for r in res if r["workload"] == "W1-batch"}
    batches = sorted({b for _, b in sweep})
    if batches:
        lines += [
            "",
            "W1 batch-size sweep (fastnn f32, all threads, against the reference; "
            "at batch 1 the reference is the per-sample loop):",
            "",
            "| batch | " + " | ".join(str(b) for b in batches) + " |",
            "| --- |" + " ---: |" * len(batches),
            "| fastnn s / epoch | "
            + " | ".join(
                f"{sweep[('fastnn-f32', b)]['median_s']:.4f}" if ("fastnn-f32", b) in sweep else ""
                for b in batches
            )
            + " |",
            "| speed-up | "
            + " | ".join(
                f"{sweep[('fastnn-f32', b)]['speedup']:.1f}x"
                if sweep.get(("fastnn-f32", b), {}).get("speedup")
                else ""
                for b in batches
            )
            + " |",
        ]
    if report.get("compile"):
        c = report["compile"]
        lines += [
            "",
            "Cold start (a fresh process: `import fastnn`, the first SGD epoch of the "
            "default 784-16-16-10 network on 2,000 sparse images, a first `predict`): "
            f"{c['cold_s']:.1f} s with an empty kernel cache, {c['warm_s']:.2f} s with a "
            "warm one.",
        ]
    if report.get("cold_start"):
        lines.append(
            "`python -m fastnn train --epochs 1` with a warm cache finishes its first "
            f"epoch {report['cold_start']['launch_to_first_epoch_end_s']:.2f} s after "
            "launch."
        )
    return "\n".join(lines)


def compare(report, old, threshold):
    """Rows whose median time grew by more than ``threshold`` (a fraction) against ``old``."""
    before = {
        (r["workload"], r["contender"], r["batch"], str(r["threads"])): r["median_s"]
        for r in old["results"]
    }
    flagged = []
    for r in report["results"]:
        key = (r["workload"], r["contender"], r["batch"], str(r["threads"]))
        if key in before and r["median_s"] > before[key] * (1 + threshold):
            flagged.append((key, before[key], r["median_s"]))
    return flagged


def plot(report, path):
    """PNG of the W1 batch-size sweep and the thread sweep (needs matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res = report["results"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for c in ("fastnn-f32", "reference"):
        pts = sorted(
            (r["batch"], r["samples_per_s"])
            for r in res
            if r["workload"] == "W1-batch" and r["contender"] == c
        )
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=c)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("mini-batch size")
    ax1.set_ylabel("training samples / s")
    ax1.set_title("W1 784-16-16-10: batch-size sweep")
    ax1.legend()
    labels, values = [], []
    for r in res:
        if r["contender"] == "fastnn-f32" and r["workload"] in (
            "W1",
            "W1-threads",
            "W2",
            "W2-threads",
            "W3",
            "W3-threads",
        ):
            labels.append(f"{r['workload'].split('-')[0]}\n{r['threads']} thr")
            values.append(r["samples_per_s"])
    ax2.bar(range(len(values)), values)
    ax2.set_xticks(range(len(values)), labels)
    ax2.set_ylabel("training samples / s")
    ax2.set_title("fastnn float32: thread sweep")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
