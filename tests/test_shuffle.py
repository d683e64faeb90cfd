"""The estimators' sample order: NumPy's legacy shuffle in compiled code, against scikit-learn."""

import numpy as np
import pytest

sklearn = pytest.importorskip("sklearn")
from sklearn.utils import shuffle  # noqa: E402

from fastnn.kernels.shuffle import shuffled  # noqa: E402


def _same_state(a, b):
    sa, sb = a.get_state(), b.get_state()
    return sa[0] == sb[0] and np.array_equal(sa[1], sb[1]) and sa[2:] == sb[2:]


# lengths around the powers of two (where the draws' masks change) and the 624 words
# MT19937 makes at a time
@pytest.mark.parametrize("n", [1, 2, 3, 5, 64, 65, 623, 624, 625, 1000, 4097, 60000])
@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1])
def test_same_order_and_generator_state_as_scikit_learn(n, seed):
    want_rs, got_rs = np.random.RandomState(seed), np.random.RandomState(seed)
    skip = (n * 7 + seed) % 700  # start anywhere in the generator's 624 words
    want_rs.random_sample(skip)
    got_rs.random_sample(skip)
    want_rs.standard_normal()  # a cached Gaussian kept across the shuffle
    got_rs.standard_normal()
    a = np.arange(n, dtype=np.int64) * 3 + 1
    want = got = a
    for _ in range(3):  # epochs: each shuffle permutes the last one's order
        want = shuffle(want, random_state=want_rs)
        got = shuffled(got, got_rs)
        assert np.array_equal(got, want)
        assert _same_state(got_rs, want_rs)
    assert np.array_equal(a, np.arange(n) * 3 + 1)  # a copy: the input is left alone
    assert got_rs.standard_normal() == want_rs.standard_normal()


def test_a_fresh_generator_refills_its_words_first():
    # a newly seeded RandomState stands at position 624: the first draw makes new words
    want_rs, got_rs = np.random.RandomState(3), np.random.RandomState(3)
    assert got_rs.get_state()[2] == 624
    a = np.arange(1000, dtype=np.int64)
    assert np.array_equal(shuffled(a, got_rs), shuffle(a, random_state=want_rs))
    assert _same_state(got_rs, want_rs)


def test_other_bit_generators_go_through_scikit_learn():
    want_rs = np.random.RandomState(np.random.PCG64(5))
    got_rs = np.random.RandomState(np.random.PCG64(5))
    a = np.arange(100, dtype=np.int64)
    assert np.array_equal(shuffled(a, got_rs), shuffle(a, random_state=want_rs))
    assert got_rs.random_sample() == want_rs.random_sample()
