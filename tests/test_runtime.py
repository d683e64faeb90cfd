"""The runtime: the CPUs a process may use, the thread tuner, Python threads."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastnn
from fastnn import runtime


def _cgroup(tmp_path, files, proc="0::/\n"):
    tmp_path = tmp_path / str(len(list(tmp_path.iterdir())))  # a fresh tree for each call
    for rel, text in files.items():
        p = tmp_path / "cg" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "self-cgroup").write_text(proc)
    return dict(root=str(tmp_path / "cg"), proc_cgroup=str(tmp_path / "self-cgroup"))


def test_cgroup_v2_quota_of_the_group_and_its_parents(tmp_path):
    assert runtime.cgroup_cpu_limit(**_cgroup(tmp_path, {"cpu.max": "150000 100000\n"})) == 2
    assert runtime.cgroup_cpu_limit(**_cgroup(tmp_path, {"cpu.max": "max 100000\n"})) is None
    files = {
        "cpu.max": "max 100000",
        "kube/pod/cpu.max": "max 100000",
        "kube/cpu.max": "50000 100000",
    }  # the parent's quota binds the pod
    assert runtime.cgroup_cpu_limit(**_cgroup(tmp_path, files, "0::/kube/pod\n")) == 1


def test_cgroup_v1_quota(tmp_path):
    v1 = {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000"}
    assert runtime.cgroup_cpu_limit(**_cgroup(tmp_path, v1, "2:cpu,cpuacct:/\n")) == 3
    none = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    assert runtime.cgroup_cpu_limit(**_cgroup(tmp_path, none, "1:cpu:/\n")) is None


def test_no_cgroup_files_means_no_quota(tmp_path):
    assert (
        runtime.cgroup_cpu_limit(root=str(tmp_path / "none"), proc_cgroup=str(tmp_path / "none"))
        is None
    )


def test_usable_cpus_are_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: 1)
    assert runtime._usable_cpus() == 1
    monkeypatch.setattr(runtime, "cgroup_cpu_limit", lambda: None)
    assert runtime._usable_cpus() >= 1


def _drive(tuner, seconds_per_sample, calls):
    """Run ``calls`` calls of 100 samples; ``seconds_per_sample(threads)`` is the machine."""
    chosen = []
    for _ in range(calls):
        t, share = tuner.choose()
        n = int(100 * share)
        tuner.record(t, seconds_per_sample(t) * n, n)
        chosen.append((t, share))
    return chosen


def test_tuner_keeps_all_threads_on_an_idle_machine_and_seldom_tries_one():
    tuner = runtime.ThreadTuner(2)
    chosen = _drive(tuner, {2: 1.0, 1: 1.6}.get, 300)
    assert tuner.current == 2
    trials = [i for i, (t, share) in enumerate(chosen) if t == 1]
    assert trials[0] == 2 and chosen[2] == (1, 1.0)  # measured once, early, in full
    assert all(chosen[i][1] == 0.25 for i in trials[1:])  # then on quarter calls
    assert len(trials) <= 7  # 8, 16, 32, 64, 128 calls apart


def test_tuner_moves_to_one_thread_when_a_busy_process_slows_the_team():
    tuner = runtime.ThreadTuner(2)
    machine = {2: 1.0, 1: 1.6}
    _drive(tuner, machine.get, 50)
    machine.update({2: 5.4, 1: 1.9})  # a busy process appears: the team waits
    chosen = _drive(tuner, machine.get, 200)
    assert tuner.current == 1
    slow = sum(machine[t] * share for t, share in chosen)
    best = sum(machine[1] * share for _, share in chosen)
    assert slow / best < 1.15  # within 15% of always running one thread
    machine.update({2: 1.0, 1: 1.6})  # and back when it stops
    _drive(tuner, machine.get, 300)
    assert tuner.current == 2


def test_tuner_reacts_at_once_to_load_after_a_long_idle_run():
    """After hundreds of idle calls its trials are 128 calls apart; a slowdown of the
    current choice makes it weigh the other at once (here its last figure already wins)."""
    tuner = runtime.ThreadTuner(2)
    machine = {2: 1.0, 1: 1.6}
    _drive(tuner, machine.get, 400)
    assert tuner.interval == runtime.ThreadTuner.LONGEST
    machine.update({2: 5.4, 1: 1.9})
    chosen = _drive(tuner, machine.get, 6)
    assert chosen[0] == (2, 1.0) and all(t == 1 for t, _ in chosen[1:])  # from the next call
    machine.update({2: 1.0, 1: 1.6})  # one thread gets no slower when the load goes:
    _drive(tuner, machine.get, 300)  # the scheduled trials find two threads again
    assert tuner.current == 2


def test_tuner_beside_busy_processes_seldom_tries_the_team_again():
    """Beside two busy processes a team of two ran 8x slower per sample than one thread,
    and one thread's own timings jumped by 30% and more from call to call.  Those jumps
    must not set off trials of the team (more load only slows it further); the trials
    that remain are eighth-sized, so the tuner stays within a few percent of one thread."""
    rng = np.random.default_rng(0)
    tuner = runtime.ThreadTuner(2)
    _drive(tuner, {2: 1.0, 1: 1.6}.get, 50)  # idle first: settled on the team
    cost = best = 0.0
    chosen = []
    for _ in range(400):
        noise = rng.lognormal(0, 0.4)
        machine = {1: 1.9 * noise, 2: 15.0 * noise}
        chosen += _drive(tuner, machine.get, 1)
        t, share = chosen[-1]
        cost += machine[t] * share
        best += machine[1] * share
    trials = [share for t, share in chosen[10:] if t == 2]
    assert tuner.current == 1
    assert len(trials) <= 8 and set(trials) == {runtime.ThreadTuner.TEAM_TRIAL}
    assert cost / best < 1.06  # before: 1.15, with 26 quarter-sized trials


def _beside_busy_with_lucky_team_calls(tuner, seed):
    """Cost of 400 calls over always running one thread, beside busy processes where one
    team call in three is fast (the neighbours off the CPU for a moment) and the rest 8x
    slower than one thread; the tuner has settled on the team on the idle machine first."""
    rng = np.random.default_rng(seed)
    _drive(tuner, {2: 1.0, 1: 1.6}.get, 50)
    cost = best = 0.0
    for _ in range(400):
        noise = rng.lognormal(0, 0.4)
        machine = {1: 1.9 * noise, 2: (1.1 if rng.random() < 1 / 3 else 15.0) * noise}
        ((t, share),) = _drive(tuner, machine.get, 1)
        cost += machine[t] * share
        best += machine[1] * share
    return cost / best


def test_tuner_repeats_a_winning_team_trial_before_switching():
    """A lucky team trial used to hand the next full call to the team (8x slower); a win
    must now be repeated first.  Before: median 1.10 over these seeds, up to 1.17."""
    costs = [_beside_busy_with_lucky_team_calls(runtime.ThreadTuner(2), s) for s in range(10)]
    assert np.median(costs) < 1.05 and max(costs) < 1.12
    tuner = runtime.ThreadTuner(2)  # and on an idle machine it still finds the team again
    _drive(tuner, {2: 5.4, 1: 1.9}.get, 60)
    assert tuner.current == 1
    _drive(tuner, {2: 1.0, 1: 1.6}.get, 100)
    assert tuner.current == 2


def test_tuner_with_one_thread_never_tries_anything():
    tuner = runtime.ThreadTuner(1)
    assert {c for c in _drive(tuner, lambda t: 1.0, 20)} == {(1, 1.0)}


THREADS_SCRIPT = r"""
import threading, numpy as np, fastnn
rng = np.random.default_rng(0)
X = rng.random((3000, 50)).astype(np.float32)
y = rng.integers(0, 10, 3000)

def train(seed, out):
    net = fastnn.Network([50, 24, 10], seed=seed)
    net.SGD((X, y), 2, 10, 0.5, quiet=True)
    out[seed] = (net.parameters.copy(), net.predict(X[:50]))

solo, both = {}, {}
for seed in (1, 2):
    train(seed, solo)
workers = [threading.Thread(target=train, args=(seed, both)) for seed in (1, 2)]
for w in workers:
    w.start()
for w in workers:
    w.join()
same = all(np.array_equal(solo[s][0], both[s][0]) and np.array_equal(solo[s][1], both[s][1])
           for s in (1, 2))
import numba
print(numba.threading_layer(), same)
"""


@pytest.mark.slow
@pytest.mark.parametrize("layer", ["default", "workqueue"])
def test_two_python_threads_train_at_once_as_they_would_alone(layer):
    # the workqueue layer aborts the process when two threads run parallel regions at
    # once: fastnn makes them take turns there; elsewhere they overlap
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastnn.__file__)))
    if layer != "default":
        env["NUMBA_THREADING_LAYER"] = layer
    r = subprocess.run(
        [sys.executable, "-c", THREADS_SCRIPT], env=env, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got_layer, same = r.stdout.split()
    assert same == "True"
    if layer != "default":
        assert got_layer == layer


def _train_in_worker(seed):
    """Run in a loky worker: train, and report the thread budget and the largest team."""
    import hashlib

    import numba
    import numpy as np

    import fastnn
    from fastnn import runtime as rt

    teams = []
    size = rt._team_size
    rt._team_size = lambda most: teams.append(size(most)) or teams[-1]
    try:
        rng = np.random.default_rng(seed)
        X = (rng.random((300, 784)) < 0.2).astype(np.uint8) * 255  # the sparse driver
        net = fastnn.Network([784, 16, 10], seed=seed)
        net.SGD((X, np.arange(300) % 10), 2, 10, 0.5, quiet=True)
    finally:
        rt._team_size = size
    digest = hashlib.md5(net.parameters.tobytes()).hexdigest()
    return numba.config.NUMBA_NUM_THREADS, max(teams), digest


def test_loky_workers_keep_to_their_thread_budget():
    """joblib gives each of n_jobs loky workers cpu_count // n_jobs threads through
    NUMBA_NUM_THREADS; fastnn's teams stay within it, and train as they would alone."""
    joblib = pytest.importorskip("joblib")
    n_jobs = 2
    budget = max(1, joblib.cpu_count() // n_jobs)
    with joblib.parallel_config(backend="loky", n_jobs=n_jobs):
        got = joblib.Parallel()(joblib.delayed(_train_in_worker)(s) for s in (0, 1))
    for threads, team, _ in got:
        assert threads == budget and 1 <= team <= budget
    alone = [_train_in_worker(s)[2] for s in (0, 1)]
    assert [d for _, _, d in got] == alone
