"""The command line on real MNIST."""

import os
import subprocess
import sys

import pytest

from fastnn import Network


@pytest.mark.mnist
def test_train_prints_progress_and_saves(tmp_path, mnist):
    out = tmp_path / "m.npz"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastnn",
            "train",
            "--epochs",
            "2",
            "--sizes",
            "784,16,10",
            "--threads",
            "1",
            "--save",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=os.environ.copy(),
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("training 784-16-10")
    assert lines[1].startswith("Epoch 0: ") and lines[2].startswith("Epoch 1: ")
    acc = float(lines[3].split("test accuracy ")[1].split("%")[0])
    net = Network.load(out)
    (_, _), (Xt, yt) = mnist
    assert acc == pytest.approx(100 * net.accuracy(Xt, yt), abs=0.005)
    assert acc > 85


def test_train_reports_bad_options(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fastnn",
            "train",
            "--sizes",
            "784,10",
            "--eta",
            "-1",
            "--data-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "FASTNN_DATA": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path)},
    )
    assert r.returncode == 2
    assert "MNIST files not found" in r.stderr


def test_bad_sizes_option():
    r = subprocess.run(
        [sys.executable, "-m", "fastnn", "train", "--sizes", "784"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "sizes" in r.stderr
