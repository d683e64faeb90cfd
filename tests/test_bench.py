"""The benchmark command: quick mode runs, writes JSON, compares against a saved result."""

import json

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
