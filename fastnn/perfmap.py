"""Name the compiled kernels in a Linux ``perf`` profile.

Numba's machine code lives in memory that belongs to no file, so ``perf
report`` shows bare addresses for it.  perf names such code from a map
``/tmp/perf-<pid>.map`` (a line ``start size name`` per function, hex
numbers) that the profiled process writes; :func:`write_perf_map` writes it
for every function Numba has compiled or loaded from its cache in this
process, under its Python name (``fastnn.kernels.columns._rows_dot[v11]``, the
tag telling overloads apart).  Run a script under it::

    perf record -F 2000 -o perf.data python -m fastnn.perfmap script.py [args]
    perf report -i perf.data --sort symbol

``python -m fastnn.perfmap`` runs the script as ``python script.py`` would and
writes the map when it ends (perf reads the map when it reports); a process
that runs on can call :func:`write_perf_map` itself once its kernels are
loaded.  ``perf report --sort pid,symbol`` splits the samples by thread.

Functions are sized up to the next one's start.  The map depends on Numba
internals (its JIT engine's table of defined symbols); if they change,
:func:`write_perf_map` raises ``RuntimeError``.
"""

import os
import re
import sys

_SEGMENT = re.compile(r"(\d+)")
_ESCAPES = re.compile(r"(?:_[0-9a-f]{2})+")
_LAST_SIZE = 1 << 16  # the size given to the highest function (no next start)


def _unescape(match):
    """A run of Numba's ``_xx`` escapes as the characters they stand for, when they are
    ones it escapes (UTF-8 bytes of characters other than letters, digits and ``_``);
    else the text as it is.  Numba leaves ``_`` unescaped, so ``_de`` in ``_dense`` is
    text, not the byte 0xde."""
    text = match.group(0)
    try:
        chars = bytes.fromhex(text.replace("_", "")).decode("utf-8")
    except UnicodeDecodeError:
        return text
    if any(c.isascii() and (c.isalnum() or c == "_" or not c.isprintable()) for c in chars):
        return text
    return chars


def readable_name(symbol):
    """``symbol`` (Numba's Itanium-style mangled name) as dotted Python names plus its
    version tag: ``_ZN6fastnn7kernels7columns9_rows_dotB3v11B...`` gives
    ``fastnn.kernels.columns._rows_dot[v11]``.  Other names are returned as they are."""
    if not symbol.startswith("_ZN"):
        return symbol
    parts, pos = [], 3
    while pos < len(symbol) and symbol[pos].isdigit():
        digits = _SEGMENT.match(symbol, pos).group(1)
        n = int(digits)
        pos += len(digits)
        parts.append(_ESCAPES.sub(_unescape, symbol[pos : pos + n]))
        pos += n
    if not parts:
        return symbol
    name = ".".join(parts)
    if symbol.startswith("B", pos):  # the first ABI tag: Numba's version number
        n = _SEGMENT.match(symbol, pos + 1)
        if n:
            start = pos + 1 + len(n.group(1))
            name += "[%s]" % symbol[start : start + int(n.group(1))]
    return name


def _symbols():
    """``{address: symbol}`` of every function Numba's JIT engine holds."""
    from numba.core.registry import cpu_target

    try:
        engine = cpu_target.target_context.codegen()._engine
        names = set(engine._defined_symbols)
        lookup = engine.get_function_address
    except AttributeError as e:  # pragma: no cover - a Numba without these internals
        raise RuntimeError(f"this Numba's JIT engine cannot be listed: {e}") from None
    out = {}
    for name in names:
        if name.startswith("_ZN08NumbaEnv"):  # environments: data, not code
            continue
        address = lookup(name)
        if address:
            out[address] = name
    return out


def write_perf_map(path=None):
    """Write the perf map of this process's compiled functions to ``path`` (default
    ``/tmp/perf-<pid>.map``, where perf looks); returns ``(path, number of functions)``."""
    from .persistence import write_atomic

    symbols = _symbols()
    starts = sorted(symbols)
    path = os.fspath(path) if path is not None else f"/tmp/perf-{os.getpid()}.map"
    lines = []
    for i, start in enumerate(starts):
        size = starts[i + 1] - start if i + 1 < len(starts) else _LAST_SIZE
        lines.append(f"{start:x} {size:x} {readable_name(symbols[start])}\n")
    write_atomic(path, lambda f: f.write("".join(lines).encode()), "the map's file path")
    return path, len(starts)


def main(argv=None):
    """``python -m fastnn.perfmap script.py [args]``: run the script, then write the map."""
    import runpy

    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print("usage: python -m fastnn.perfmap script.py [args]", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
    try:
        runpy.run_path(argv[0], run_name="__main__")
    finally:
        path, n = write_perf_map()
        print(f"fastnn.perfmap: {n} compiled functions mapped in {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
