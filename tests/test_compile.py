"""Each kernel compiles once per argument types: no second copy for a literal or an
omitted argument, which only lengthens a cold start (a process with an empty cache)."""

import json
import os
import subprocess
import sys

import pytest

# Kernels that take a literal on purpose, one compiled version per value.
LITERAL_ON_PURPOSE = {
    "dense._combine_lanes": "ns, a literal 4 or 1, picks the block of samples its sums unroll",
    "dense._update_block": "the split driver's literal flags: int64 ones trained other bits",
}

# Warm the drivers in a fresh cache, then list every kernel that has two or more
# compiled versions whose argument types differ only by a literal or an omitted
# argument (``Literal[int](0)`` beside ``int64``, ``omitted(default=False)`` beside
# ``bool``).  A kernel compiled in this process lists the versions it has compiled.
_SCAN = """
import importlib, json, pkgutil
from numba import typeof, types
from numba.core.registry import CPUDispatcher
from fastnn.warmup import warmup
import fastnn.kernels as K

warmup(groups=("sparse", "split", "hybrid", "optim"), progress=None)

def plain(t):
    if isinstance(t, types.Omitted):
        return typeof(t.value)
    return types.unliteral(t)

twice = {}
for info in pkgutil.iter_modules(K.__path__):
    mod = importlib.import_module("fastnn.kernels." + info.name)
    for name, f in vars(mod).items():
        if isinstance(f, CPUDispatcher) and f.__module__ == mod.__name__:
            seen = {}
            for sig in f.signatures:
                seen.setdefault(tuple(plain(t) for t in sig), []).append(str(sig))
            for sigs in seen.values():
                if len(sigs) > 1:  # keyed by module: optim has an _update_block of its own
                    twice.setdefault(info.name + "." + name, []).append(sigs)
print(json.dumps(twice))
"""


@pytest.mark.slow
def test_no_kernel_compiles_twice_for_a_literal_or_omitted_argument(tmp_path):
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    r = subprocess.run(
        [sys.executable, "-c", _SCAN], capture_output=True, text=True, env=env, timeout=900
    )
    assert r.returncode == 0, r.stderr
    twice = json.loads(r.stdout.splitlines()[-1])
    assert set(LITERAL_ON_PURPOSE) <= set(twice)  # the scan sees literal versions
    unexpected = {k: v for k, v in twice.items() if k not in LITERAL_ON_PURPOSE}
    assert unexpected == {}
