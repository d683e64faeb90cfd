"""The benchmark command: quick mode runs, writes JSON, compares against a saved result."""

import json

import numpy as np

from fastnn import bench
from fastnn.cli import main


def test_flop_counts():
    # 784-16-16-10: 12960 multiply-adds forward per sample; gradient the same; deltas 416
    assert bench.forward_flops([784, 16, 16, 10], 1) == 2 * 12960
    per_sample = 2 * 12960 * 2 + 2 * (256 + 160)
    assert bench.train_flops([784, 16, 16, 10], 60000, 10) == per_sample * 60000 + 2 * 13002 * 6000


def test_time_interleaved_alternates_who_follows_the_first_run():
    calls = []
    runs = [bench.Run(lambda i=i: calls.append(i), 1) for i in range(3)]
    times = bench.time_interleaved(runs, 4, budget=1e9, alternate=True)
    assert calls == [0, 1, 2] + [0, 1, 2, 0, 2, 1, 0, 1, 2, 0, 2, 1]  # warm-up calls, 4 rounds
    assert [len(t) for t in times] == [4, 4, 4]
    calls.clear()
    bench.time_interleaved(runs, 2, budget=1e9)
    assert calls == [0, 1, 2] * 3
    calls.clear()
    times = bench.time_interleaved(runs[:2], 4, budget=1e9, swap=True)
    assert calls == [0, 1] + [0, 1, 1, 0, 0, 1, 1, 0]  # each of a pair first every other round
    assert [len(t) for t in times] == [4, 4]


def test_quick_bench_table_json_and_regression_check(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = [
        "bench",
        "--quick",
        "--no-compile",
        "--quiet",
        "--workloads",
        "W4",
        "--json",
        str(out),
        "--plot",
        "",
    ]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "W4-batch" in table and "fastnn-f32" in table and "reference" in table
    report = json.loads(out.read_text())
    rows = {(r["workload"], r["contender"]): r for r in report["results"]}
    assert set(rows) == {
        ("W4-batch", "reference"),
        ("W4-batch", "fastnn-f32"),
        ("W4-single", "reference"),
        ("W4-single", "fastnn-f32"),
    }
    assert all(r["median_s"] > 0 and r["samples_per_s"] > 0 for r in rows.values())
    assert rows[("W4-batch", "reference")]["speedup"] == 1.0
    assert report["peak_gflops"] > 0 and report["data"] in ("mnist", "synthetic")
    # an earlier result 10x faster than this one must be flagged (exit status 1)
    old = dict(report, results=[dict(r, median_s=r["median_s"] / 10) for r in report["results"]])
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert main(args + ["--compare", str(tmp_path / "old.json")]) == 1
    assert "REGRESSION" in capsys.readouterr().out


def test_markdown_is_rendered_from_a_run_and_from_its_json(tmp_path, capsys):
    out = tmp_path / "r.json"
    args = [
        "bench",
        "--quick",
        "--no-compile",
        "--quiet",
        "--workloads",
        "W1",
        "--contenders",
        "fastnn-f32,reference",
        "--json",
        str(out),
        "--plot",
        "",
        "--markdown",
    ]
    assert main(args) == 0
    md = capsys.readouterr().out
    assert f"`python -m fastnn {' '.join(args)}`" in md  # the command that made the numbers
    assert "| W1 | fastnn f32, 1 thread |" in md and "| W1 | reference (NumPy mini-batch) |" in md
    for busy in (1, 2):  # default threads and one thread, timed in turn beside busy processes
        assert md.count(f"| W1-busy{busy} | fastnn f32") == 2
        assert f"W1 beside {busy} busy: " in md
    assert "W1 batch-size sweep" in md and "| batch | 1 | 10 | 32 | 128 | 1024 |" in md
    assert main(["bench", "--render", str(out)]) == 0
    again = capsys.readouterr().out
    assert again.strip() == md.split("results written to")[0].strip()


def test_estimator_summary_gives_the_ratio_of_medians_and_its_range_over_rounds():
    from fastnn.bench_estimators import estimator_summary

    def row(workload, contender, times, note="whole fit, 10 epochs; test accuracy 97.50%"):
        return dict(
            workload=workload,
            contender=contender,
            median_s=float(np.median(times)),
            times=times,
            note=note,
        )

    res = [
        row("W5", "fastnn-est", [0.10, 0.20, 0.12]),
        row("W5", "sklearn-est", [0.50, 0.60, 0.72]),
        row("W1-est", "fastnn-est", [0.08, 0.09]),
        row("W1-est", "network-sgd", [0.10, 0.06]),
    ]
    lines = estimator_summary(res)
    # medians 0.12 and 0.60: 5.0x; the rounds 5.0x, 3.0x and 6.0x, paired by round
    assert "W5: fastnn's `fit` 5.0x faster than scikit-learn's (0.120 against 0.600 s" in lines[1]
    assert lines[1].endswith("; 3.0-6.0x in the 3 rounds).")
    assert lines[2].endswith("(1.06x; 0.80-1.50x in the 2 rounds).")  # medians 0.085, 0.08
    assert not any(line.startswith("W6") for line in lines)  # no rows, no line
    one_round = [dict(r, times=r["times"][:1]) for r in res]
    assert estimator_summary(one_round)[1].endswith("97.50%).")  # no range from one round
