"""The kernels agree with the NumPy reference, and results do not depend on the thread count."""

import copy

import numba
import numpy as np
import pytest

from fastnn import Network, kernels, reference, runtime
from fastnn.kernels import split
from fastnn.kernels._llvm import _call_native
from helpers import COMBOS, make_data

SIZES = [30, 9, 7, 5]


def _net(hidden, output, cost, dtype=np.float64, sizes=SIZES, seed=1, weight_decay=0.0):
    return Network(
        sizes,
        activation=hidden,
        output=output,
        cost=cost,
        dtype=dtype,
        seed=seed,
        weight_decay=weight_decay,
    )


@pytest.mark.parametrize("hidden,output,cost", COMBOS)
def test_forward_matches_reference(hidden, output, cost):
    net = _net(hidden, output, cost)
    X, _ = make_data(23, SIZES[0], SIZES[-1])
    want = reference.forward(net.parameters, SIZES, X, hidden, output)[-1]
    np.testing.assert_allclose(net.feedforward(X), want, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("hidden,output,cost", COMBOS)
def test_gradient_and_cost_match_reference(hidden, output, cost):
    net = _net(hidden, output, cost)
    # 101 samples make 8 chunks of 12-13, so the 8-, 4- and 1-sample blocks all run
    X, y = make_data(101, SIZES[0], SIZES[-1])
    grad, total, _ = reference.backprop(net.parameters, SIZES, X, y, hidden, output, cost)
    np.testing.assert_allclose(net.gradient(X, y), grad / len(X), rtol=1e-10, atol=1e-12)
    assert net.cost(X, y) == pytest.approx(total / len(X), rel=1e-12)


@pytest.mark.parametrize("hidden,output,cost", COMBOS)
def test_one_step_matches_reference(hidden, output, cost):
    net = _net(hidden, output, cost, weight_decay=0.01)
    theta = net.parameters.copy()
    X, y = make_data(13, SIZES[0], SIZES[-1])
    c = net.update_mini_batch((X, y), eta=0.5)
    c_ref, _ = reference.sgd_step(theta, SIZES, X, y, 0.5, 0.01, hidden, output, cost)
    np.testing.assert_allclose(net.parameters, theta, rtol=1e-10, atol=1e-12)
    assert c == pytest.approx(c_ref / len(X), rel=1e-12)


def _epoch_pair(
    dtype,
    hidden="sigmoid",
    output="sigmoid",
    cost="quadratic",
    m=10,
    n=1003,
    sizes=SIZES,
    eta=0.5,
    driver=None,
):
    """Parameters after one epoch from fastnn and from the reference, same init and order."""
    net = _net(hidden, output, cost, dtype=dtype, sizes=sizes, weight_decay=1e-4)
    theta = net.parameters.copy()
    X, y = make_data(n, sizes[0], sizes[-1], dtype=dtype)
    perm = copy.deepcopy(net._rng).permutation(n)  # the order SGD will draw from its seeded stream
    h = net.SGD((X, y), 1, m, eta, quiet=True, _driver=driver)
    c_ref, k_ref = reference.train_epoch(
        theta, sizes, X, y, perm, m, eta, 1e-4, hidden, output, cost
    )
    return net, theta, h, c_ref / n, k_ref / n


@pytest.fixture(params=sorted(kernels.DRIVERS))
def driver(request):
    """Each of the epoch drivers by name (``Network.SGD(..., _driver=name)``)."""
    return request.param


@pytest.mark.parametrize("hidden,output,cost", COMBOS)
@pytest.mark.parametrize("m", [7, 10])
def test_epoch_matches_reference_float64(hidden, output, cost, m, driver):
    net, theta, h, c_ref, acc_ref = _epoch_pair(
        np.float64, hidden, output, cost, m=m, driver=driver
    )
    np.testing.assert_allclose(net.parameters, theta, rtol=1e-10, atol=1e-10)
    assert h["train_cost"][0] == pytest.approx(c_ref, rel=1e-10)
    assert h["train_accuracy"][0] == acc_ref


@pytest.mark.parametrize("sizes", [[30, 8, 5], [30, 9, 7, 5]])  # even and odd first layers
# every remainder of groups of four (m = 4, 6) and of five (5, 9, 10, 13, 17)
@pytest.mark.parametrize("m", [1, 3, 4, 5, 6, 9, 10, 13, 17])
def test_neuron_split_epoch_matches_reference(sizes, m):
    net, theta, h, c_ref, acc_ref = _epoch_pair(np.float64, m=m, n=203, sizes=sizes, driver="split")
    np.testing.assert_allclose(net.parameters, theta, rtol=1e-10, atol=1e-10)
    assert h["train_cost"][0] == pytest.approx(c_ref, rel=1e-10)
    assert h["train_accuracy"][0] == acc_ref


@pytest.mark.parametrize("sizes,m", [([30, 8, 5], 10), ([30, 9, 7, 5], 3)])
def test_neuron_split_team_trains_alone_when_its_members_run_one_after_another(
    sizes, m, monkeypatch
):
    # The epoch's team waits for all members it asked for.  Asking for two with one thread,
    # the threading layer runs the two iterations of the prange one after the other: the
    # first member must stop waiting, close the team and train alone (no deadlock), and the
    # late one must leave; the result is the same as with a team of one.
    X, y = make_data(300, sizes[0], sizes[-1], dtype=np.float32)
    results = []
    for team in (1, 2):
        monkeypatch.setattr(runtime, "_team_size", lambda most, team=team: team)
        net = Network(sizes, seed=2)
        net.SGD((X, y), 2, m, 0.5, quiet=True, threads=1, _driver="split")
        results.append(net.parameters.copy())
    assert np.array_equal(results[0], results[1])


def test_neuron_split_groups_of_four_or_five_whichever_wastes_less():
    assert [split._group_size(m) for m in (1, 4, 5, 8, 9, 10, 12, 16, 20, 32)] == [
        4,
        4,
        5,
        4,
        5,
        5,
        4,
        4,
        5,
        4,
    ]


# first layers of 48 and 40 neurons: blocks of 16, 16, 16 and 16, 16, 8, so a team of two
# members owns unequal shares; m = 33 leaves a last batch of 1 (n = 199)
@pytest.mark.parametrize("sizes", [[30, 48, 5], [30, 40, 7, 5]])
@pytest.mark.parametrize("m", [8, 10, 33])
def test_hybrid_epoch_matches_reference(sizes, m):
    net, theta, h, c_ref, acc_ref = _epoch_pair(
        np.float64, m=m, n=199, sizes=sizes, driver="hybrid"
    )
    np.testing.assert_allclose(net.parameters, theta, rtol=1e-10, atol=1e-10)
    assert h["train_cost"][0] == pytest.approx(c_ref, rel=1e-10)
    assert h["train_accuracy"][0] == acc_ref


def test_hybrid_team_trains_alone_when_its_members_run_one_after_another(monkeypatch):
    X, y = make_data(300, 30, 5, dtype=np.float32)
    results = []
    for team in (1, 2):
        monkeypatch.setattr(runtime, "_team_size", lambda most, team=team: team)
        net = Network([30, 48, 5], seed=2)
        net.SGD((X, y), 2, 10, 0.5, quiet=True, threads=1, _driver="hybrid")
        results.append(net.parameters.copy())
    assert np.array_equal(results[0], results[1])


def test_hybrid_is_used_for_wide_first_layers():
    assert kernels.use_hybrid([784, 128, 64, 10], 64)  # W3
    assert kernels.use_hybrid([784, 128, 64, 10], 10)
    assert kernels.use_hybrid([784, 32, 10], 1024)
    assert not kernels.use_hybrid([784, 16, 16, 10], 10)  # one block: nothing to share
    assert not kernels.use_hybrid([784, 30, 10], 64)
    assert not kernels.use_hybrid([784, 128, 64, 10], 4)  # small batch: one chunk, no team
    assert not kernels.use_hybrid([784, 32, 512, 10], 64)  # later layers too large
    assert not kernels.use_hybrid([784, 128], 64)  # no later layer


def test_neuron_split_is_used_for_small_batches_of_first_layer_heavy_networks():
    assert kernels.use_neuron_split([784, 16, 16, 10], 10)
    assert kernels.use_neuron_split([784, 30, 10], 10)
    assert not kernels.use_neuron_split([784, 30, 10], 64)  # large batch: split the samples
    assert not kernels.use_neuron_split([784, 30, 10], 4)
    assert not kernels.use_neuron_split([784, 128, 64, 10], 10)  # later layers too large
    assert not kernels.use_neuron_split([784, 10], 10)  # no hidden layer


@pytest.mark.parametrize("m", [1, 4, 10, 33])
def test_epoch_matches_reference_float32(m, driver):
    # float32 rounds differently in fastnn (fused multiply-adds, blocked sums) and in NumPy's
    # BLAS; after one epoch (1003 samples) the parameters agree to 2e-4 relative to their scale.
    net, theta, h, c_ref, _ = _epoch_pair(np.float32, m=m)
    assert net.parameters.dtype == np.float32
    scale = np.abs(theta).max()
    assert np.abs(net.parameters - theta).max() <= 2e-4 * scale
    assert h["train_cost"][0] == pytest.approx(c_ref, rel=1e-3)


def test_epoch_matches_reference_large_network(driver):
    # a network large enough for several chunks per mini-batch and the parallel update
    # (sample split), several team members (hybrid, neuron split)
    sizes = [200, 300, 40, 10]
    net, theta, *_ = _epoch_pair(
        np.float64, "relu", "softmax", "log_loss", m=64, n=400, sizes=sizes, eta=0.05
    )
    assert net.n_params >= 65536
    np.testing.assert_allclose(net.parameters, theta, rtol=1e-10, atol=1e-10)


# (the sparse driver is off here: test_sparse.py has its own) the first two go through the
# neuron split, the next two through the hybrid driver, the others split the mini-batch by
# samples
@pytest.mark.parametrize(
    "sizes,m,hidden",
    [
        ([784, 16, 16, 10], 10, "sigmoid"),
        ([784, 31, 10], 9, "sigmoid"),
        ([784, 128, 64, 10], 64, "relu"),
        ([784, 40, 10], 12, "sigmoid"),
        ([784, 16, 16, 10], 4, "relu"),
        ([50, 20, 10], 1024, "tanh"),
    ],
)
def test_bit_identical_across_thread_counts(sizes, m, hidden):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    X, y = make_data(3000, sizes[0], sizes[-1], dtype=np.float32, density=0.6)  # not sparse
    results = []
    for threads in (1, 2, numba.config.NUMBA_NUM_THREADS):
        net = Network(sizes, activation=hidden, seed=7)
        net.SGD((X, y), 2, m, 0.1, quiet=True, threads=threads)
        results.append(net.parameters.copy())
    for r in results[1:]:
        assert np.array_equal(results[0], r)


def test_same_seed_same_result_and_different_seed_differs():
    X, y = make_data(500, 20, 4)
    a, b, c = (Network([20, 8, 4], seed=s) for s in (3, 3, 4))
    for net in (a, b, c):
        net.SGD((X, y), 2, 10, 1.0, quiet=True)
    assert np.array_equal(a.parameters, b.parameters)
    assert not np.array_equal(a.parameters, c.parameters)


@pytest.mark.parametrize("hidden,output,cost", COMBOS[:4])
def test_per_sample_baseline_matches_minibatch_reference(hidden, output, cost):
    # the Nielsen-style per-sample loop (a benchmark baseline) computes the same epoch
    X, y = make_data(95, SIZES[0], SIZES[-1])
    net = _net(hidden, output, cost)
    a, b = net.parameters.copy(), net.parameters.copy()
    perm = np.random.default_rng(0).permutation(95)
    reference.train_epoch(a, SIZES, X, y, perm, 10, 0.5, 0.01, hidden, output, cost)
    reference.train_epoch_per_sample(b, SIZES, X, y, perm, 10, 0.5, 0.01, hidden, output, cost)
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_start_on_a_cache_line_and_stay_one_vector(dtype):
    # the neuron-split members write neighbouring rows of the parameter vector; aligned to
    # 64 bytes, rows of 784 float32/float64 values never share a cache line between members
    net = Network([784, 16, 16, 10], dtype=dtype, seed=0)
    assert net.parameters.ctypes.data % 64 == 0
    assert net.parameters.dtype == dtype and net.parameters.flags.c_contiguous
    net.weights[0][3, 5] = 42.0
    assert net.parameters[3 * 784 + 5] == 42.0


@pytest.mark.parametrize("driver", sorted(kernels.DRIVERS))
def test_an_epoch_cut_into_driver_calls_gives_the_same_weights(driver, monkeypatch):
    # SGD runs an epoch as calls of whole mini-batches (so that Ctrl-C is seen between
    # them); where it cuts must not change the weights, for any driver
    X, y = make_data(203, 30, 5, dtype=np.float32, density=0.3)
    results = []
    n_params = 30 * 40 + 40 + 40 * 7 + 7 + 7 * 5 + 5
    for flops in (1e18, 1.0, 6.0 * n_params * 30):  # one call; a batch a call; three
        monkeypatch.setattr(runtime, "SEGMENT_FLOPS", flops)
        net = Network([30, 40, 7, 5], seed=3, weight_decay=1e-3)
        h = net.SGD((X, y), 2, 10, 0.5, quiet=True, _driver=driver)
        results.append((net.parameters.copy(), h["train_accuracy"]))
    for params, acc in results[1:]:
        assert np.array_equal(params, results[0][0]) and acc == results[0][1]


@pytest.mark.parametrize("driver", sorted(kernels.DRIVERS))
def test_thread_count_changing_between_driver_calls_gives_the_same_weights(driver, monkeypatch):
    # the tuner may run any call of an epoch on all threads or on one, on a whole or a
    # quarter-sized call: weights must equal those of threads=1 whatever it chooses
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs at least 2 threads")
    X, y = make_data(403, 30, 5, dtype=np.float32, density=0.3)
    choices = iter(np.random.default_rng(0).integers(0, 4, 10**4).tolist())
    options = [(2, 1.0), (1, 1.0), (2, 0.25), (1, 0.25)]
    monkeypatch.setattr(runtime, "SEGMENT_FLOPS", 6.0 * 1567 * 40)  # 1567 parameters: 4 batches
    monkeypatch.setattr(runtime.ThreadTuner, "choose", lambda self: options[next(choices)])
    results = []
    for threads in (None, 1):
        net = Network([30, 40, 7, 5], seed=3, weight_decay=1e-3)
        net.SGD((X, y), 2, 10, 0.5, quiet=True, threads=threads, _driver=driver)
        results.append(net.parameters.copy())
    assert np.array_equal(results[0], results[1])


def test_avx_detection_follows_numba_cpu_features(monkeypatch):
    """Kernels that are shaped by the vector registers (dense.FORWARD_BLOCK, the CSR fill)
    ask whether Numba targets AVX-512 or AVX2: NUMBA_CPU_FEATURES when set, else the
    host's features."""
    import llvmlite.binding as ll
    from numba.core import config

    from fastnn.kernels import _llvm

    def detect(features=None, enable_avx=True):
        monkeypatch.setattr(config, "CPU_FEATURES", features)
        monkeypatch.setattr(config, "ENABLE_AVX", enable_avx)
        _llvm._target_features.cache_clear()  # the per-process cache
        return _llvm.target_has_avx512(), _llvm.target_has_avx2()

    x86 = _llvm._X86
    try:
        assert detect("+avx2,+avx512f,+fma") == (True, x86)
        assert detect("+avx2,-avx512f,+fma") == (False, x86)
        assert detect("-avx2,-avx512f") == (False, False)
        host = ll.get_host_cpu_features()
        assert detect() == (bool(host.get("avx512f")), x86 and bool(host.get("avx2")))
        assert detect(enable_avx=False) == (False, False)  # NUMBA_ENABLE_AVX=0
    finally:
        monkeypatch.undo()
        _llvm._target_features.cache_clear()


@numba.njit
def _member_writes_its_slot(slot, team, out, scale):
    out[slot] = scale * (slot + 1) + team


@numba.njit
def _member_that_raises(slot, team, out, scale):
    if scale < 0:
        raise ValueError("negative scale")
    out[slot] = scale


@numba.njit(parallel=True)
def _region_by_address(member, out, scale, want):
    for s in numba.prange(want):
        _call_native(member, (np.int64(s), np.int64(want), out, scale))


def test_a_member_called_by_address_runs_as_called_directly_and_is_not_linked():
    """Drivers call their team member by address (team.member_address, _llvm._call_native),
    so that compiling the parallel region does not compile the member's call tree again."""
    from fastnn.kernels.team import member_address

    for dtype in (np.float64, np.float32):
        out = np.zeros(3, dtype)
        scale = dtype(2.5)
        addr = member_address(_member_writes_its_slot, (out, scale))
        assert member_address(_member_writes_its_slot, (np.ones(5, dtype), scale)) == addr
        _region_by_address(addr, out, scale, 3)
        np.testing.assert_array_equal(out, [5.5, 8.0, 10.5])
    assert len(_member_writes_its_slot.signatures) == 2  # one per dtype, compiled once each
    f64 = member_address(_member_writes_its_slot, (np.zeros(1), 1.0))
    assert f64 != member_address(_member_writes_its_slot, (np.zeros(1, np.float32), 1.0))

    # The region's own code holds no copy of the member: only a call through the pointer.
    name = _member_writes_its_slot.overloads[
        _member_writes_its_slot.signatures[0]
    ].fndesc.llvm_func_name
    ir = "\n".join(_region_by_address.inspect_llvm().values())
    assert "define" in ir and f"@{name}" not in ir and f'"{name}"' not in ir


@numba.njit
def _serial_by_address(member, out, scale, want):
    for s in range(want):
        _call_native(member, (np.int64(s), np.int64(want), out, scale))


def test_an_error_in_a_member_called_by_address_reaches_the_caller():
    # as from a direct call (inside a parallel region Numba reports a SystemError either way)
    from fastnn.kernels.team import member_address

    out = np.zeros(2)
    addr = member_address(_member_that_raises, (out, 1.0))
    _serial_by_address(addr, out, 1.0, 2)
    assert list(out) == [1.0, 1.0]
    with pytest.raises(ValueError, match="negative scale"):
        _serial_by_address(addr, out, -1.0, 2)


def test_every_driver_calls_its_members_by_address():
    """The epoch drivers' parallel regions, sgd_step, gradient and the lbfgs objective call
    their members through addresses: a region that linked its member compiled its whole
    tree again (cold, train_epoch_sparse's region 13 s -> 1.7 s, a first MLPClassifier fit
    53 -> 36 s, the split driver's region 11 s)."""
    from fastnn.kernels import columns, dense, hybrid, optim, sparse, split, team

    team._ADDRESSES.clear()
    X, y = make_data(60, 30, 5, density=0.2, dtype=np.float32)
    for driver in ("sparse", "split", "samples"):
        Network([30, 8, 5], seed=0).SGD((X, y), 1, 10, 0.5, quiet=True, _driver=driver)
    Network([30, 32, 5], seed=0).SGD((X, y), 1, 16, 0.5, quiet=True, _driver="hybrid")
    n_dense = len(dense._chunk_member.signatures)
    Network([30, 8, 5], seed=0).gradient(X, y)
    Network([30, 8, 5], seed=0).update_mini_batch((X[:10], y[:10]), 0.5)
    assert len(dense._chunk_member.signatures) == n_dense  # the samples driver's member
    Xd = X + np.float32(0.5)  # dense inputs: Adam's dense path
    for inputs in (X, Xd):
        net = Network([30, 8, 5], seed=0, cost="log_loss")
        net.SGD((inputs, y), 1, 10, 0.01, quiet=True, optimizer="adam")
    members = [key[0] for key in team._ADDRESSES if key is not None]
    assert set(members) == {
        sparse._sparse_member,
        split._team_member,
        hybrid._hybrid_member,
        dense._chunk_member,
        optim._chunk_member,
        optim._update_member,
        columns._columns_member,
    }
    n_optim = len(optim._chunk_member.signatures)
    buf = optim.optim_buffers([30, 8, 5], 60, np.float32)
    grad = np.empty(net.n_params)
    T = np.eye(5, dtype=np.float32)[y]
    w = np.ones(60, np.float32)
    rows = np.arange(60, dtype=np.int64)
    optim.objective(*net._kernel_args()[:6], Xd, T, w, rows, buf, 0.0, grad)
    assert len(optim._chunk_member.signatures) == n_optim  # lbfgs runs Adam's dense member


def test_no_kernel_passes_an_integer_literal_to_another_kernel():
    """Numba types an integer constant passed inside compiled code as a literal and compiles
    the callee once more for it: ``warmup`` compiled ``_dense_grad`` four times (2-2.6 s
    each), ``_dense_forward`` three times.  Calls between ``@njit`` kernels pass
    ``np.int64`` values instead, except where the literal is wanted: ``_combine_lanes``'
    sample count (unrolled) and the split driver's ``_update_block`` flags (with int64
    ones that driver trained other bits).
    A literal that reaches a call through a variable is not seen here."""
    import ast
    from pathlib import Path

    wanted = {
        ("_dense_backprop", "_combine_lanes"),
        ("_team_member", "_update_block"),
    }

    def is_njit(fn):
        for d in fn.decorator_list:
            f = d.func if isinstance(d, ast.Call) else d
            if getattr(f, "id", getattr(f, "attr", None)) == "njit":
                return True
        return False

    trees = [ast.parse(p.read_text()) for p in Path(kernels.__file__).parent.glob("*.py")]
    funcs = [f for t in trees for f in ast.walk(t) if isinstance(f, ast.FunctionDef)]
    jitted = {f.name for f in funcs if is_njit(f)}
    assert {"_dense_grad", "_dense_forward", "_sgd_step"} <= jitted
    found = []
    for fn in funcs:
        if not is_njit(fn):
            continue
        for call in ast.walk(fn):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Name)
                and call.func.id in jitted
                and (fn.name, call.func.id) not in wanted
                and any(
                    isinstance(a, ast.Constant) and isinstance(a.value, (bool, int))
                    for a in call.args
                )
            ):
                found.append((fn.name, call.func.id, call.lineno))
    assert found == []
