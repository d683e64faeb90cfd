"""Argument checks shared by the API: each raises a ValueError or TypeError naming the problem."""

import numbers

import numpy as np

from .layout import count_params

#: The most parameters a network may have (4 GiB of float32), checked before anything is
#: allocated.
MAX_PARAMS = 2**30


def _layer_sizes(sizes):
    """``sizes`` as a list of Python ints, checked: at least two, each a positive integer,
    and at most ``MAX_PARAMS`` parameters in all (counted before anything is allocated)."""
    example = "input first, e.g. [784, 30, 10]"
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"sizes must be a sequence of layer sizes, {example}; got {sizes!r}")
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes needs at least two layers, {example}; got {sizes!r}")
    for s in sizes:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(f"sizes must be positive integers, {example}; got {s!r} in {sizes!r}")
    sizes = [int(s) for s in sizes]
    n = count_params(sizes)
    if n > MAX_PARAMS:
        raise ValueError(
            f"sizes {sizes} give {n:,} parameters; fastnn allows at most {MAX_PARAMS:,} "
            f"({MAX_PARAMS * 4 / 2**30:.0f} GiB in float32)"
        )
    return sizes


def _check_choice(name, value, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {value!r}")
    return value


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _positive_real(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ValueError(f"{name} must be a finite real number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be {bound}, got {value!r}")
    return float(value)
