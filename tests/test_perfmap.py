"""The perf symbol map of the compiled kernels (``fastnn.perfmap``)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from numba.core.itanium_mangler import PREFIX, mangle_identifier

from fastnn.kernels.csr import count_rows, scan_rows
from fastnn.perfmap import readable_name, write_perf_map


def _map(path):
    """The map's lines as ``(start, size, name)``."""
    rows = []
    for line in Path(path).read_text().splitlines():
        start, size, name = line.split(" ", 2)
        rows.append((int(start, 16), int(size, 16), name))
    return rows


def test_readable_name_undoes_numbas_mangling():
    mangled = PREFIX + mangle_identifier("fastnn.kernels.columns._rows_dot", abi_tags=("v11",))
    assert readable_name(mangled) == "fastnn.kernels.columns._rows_dot[v11]"
    local = PREFIX + mangle_identifier("m.f.<locals>.impl", uid=3)
    assert readable_name(local) == "m.f.<locals>.impl[v3]"
    assert readable_name("cfunc.abc") == "cfunc.abc"
    assert readable_name("_ZN08NumbaEnv1fB2v1") == "NumbaEnv.f[v1]"  # a length written 08
    # "_" is not escaped, so "_de", "_ad", "_ba", "_10" in names are text, not bytes
    for name in ("k.dense._dense_grad", "k._add_rows", "k._backprop_all", "k.layer_10", "k.π<2>"):
        assert readable_name(PREFIX + mangle_identifier(name, abi_tags=("v1",))) == name + "[v1]"


def test_map_covers_a_compiled_kernel(tmp_path):
    X = np.zeros((3, 5), np.float32)
    X[1, 2] = 1.0
    count_rows(X, np.empty(4, np.int64))
    sig = next(s for s in scan_rows.signatures if str(s[0].dtype) == "float32")
    overload = scan_rows.overloads[sig]
    address = overload.library.get_pointer_to_function(overload.fndesc.llvm_func_name)
    path, n = write_perf_map(tmp_path / "perf.map")
    rows = _map(path)
    assert n == len(rows) > 0
    assert [r[0] for r in rows] == sorted(r[0] for r in rows)
    assert all(size > 0 for _, size, _ in rows)
    hits = [name for start, size, name in rows if start <= address < start + size]
    assert len(hits) == 1 and hits[0].startswith("fastnn.kernels.csr.scan_rows["), hits


def test_module_runs_a_script_then_writes_the_map(tmp_path):
    script = tmp_path / "work.py"
    script.write_text(
        "import os, sys\n"
        "import numpy as np\n"
        "from fastnn.kernels.csr import count_rows\n"
        "count_rows(np.ones((2, 3)), np.empty(3, np.int64))\n"
        "print(os.getpid(), sys.argv[1:])\n"
    )
    r = subprocess.run(
        [sys.executable, "-m", "fastnn.perfmap", str(script), "arg"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    pid, argv = r.stdout.split(" ", 1)
    assert argv.strip() == "['arg']"
    path = f"/tmp/perf-{pid}.map"
    assert path in r.stderr
    try:
        names = [name for _, _, name in _map(path)]
    finally:
        os.remove(path)
    assert any(name.startswith("fastnn.kernels.csr.scan_rows[") for name in names)


def test_module_without_a_script_prints_its_usage():
    r = subprocess.run(
        [sys.executable, "-m", "fastnn.perfmap"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "usage" in r.stderr
