"""Where the compiled kernels are cached, and a cache key that cannot go stale.

Numba caches each compiled function next to its source file and checks only
that file for changes (numba issue 1833): with kernels spread over several
modules, an edit to :mod:`.activations` would leave stale machine code for a
kernel in :mod:`.dense` that inlined the old version.  The locator here
gives every kernel of this package one source stamp, a hash of all the
package's sources and of :mod:`fastnn.layout` (whose codes are compiled in),
so any edit invalidates every cached kernel.

It also picks a writable place, in this order: ``$NUMBA_CACHE_DIR``; the
package's ``__pycache__``; the user cache (``$XDG_CACHE_HOME/fastnn/numba``,
default ``~/.cache/fastnn/numba``); a folder in the temporary directory, with
one warning.  A read-only install or container therefore still runs and
caches.  Cached code is specific to the CPU model it was compiled for (Numba
keys each entry on the CPU name and features, so one folder can serve
several).

:func:`install` registers the locator before any kernel is defined;
:func:`clear` removes every cached kernel (``python -m fastnn clear-cache``).
"""

import functools
import hashlib
import os
import tempfile
import warnings

from numba.core import caching, config

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_LAYOUT = os.path.join(os.path.dirname(PACKAGE_DIR), "layout.py")
_SUFFIXES = (".nbi", ".nbc")


def _sources():
    names = sorted(n for n in os.listdir(PACKAGE_DIR) if n.endswith(".py"))
    return [os.path.join(PACKAGE_DIR, n) for n in names] + [_LAYOUT]


@functools.lru_cache(maxsize=None)
def _hash(stats):
    h = hashlib.sha256()
    for path, _, _ in stats:
        h.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()


def source_stamp():
    """Hash of every source file the kernels are compiled from (re-read when one changes)."""
    stats = []
    for path in _sources():
        st = os.stat(path)
        stats.append((path, st.st_mtime_ns, st.st_size))
    return _hash(tuple(stats))


def _writable(path):
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def _user_cache():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastnn", "numba")


def _temporary_cache():
    """A private folder in the temporary directory, or None where another user could plant
    machine code in it (it exists and is not ours alone)."""
    uid = os.getuid() if hasattr(os, "getuid") else None
    path = os.path.join(tempfile.gettempdir(), f"fastnn-numba-{uid or 'user'}")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        st = os.stat(path)
    except OSError:
        return None
    if uid is not None and (st.st_uid != uid or st.st_mode & 0o022):
        return None
    return path


def candidate_dirs():
    """The folders the kernels may be cached in, in order of preference."""
    sub = "fastnn-kernels-" + hashlib.sha1(PACKAGE_DIR.encode()).hexdigest()[:12]
    dirs = []
    if config.CACHE_DIR:
        dirs.append(os.path.join(config.CACHE_DIR, sub))
    dirs.append(os.path.join(PACKAGE_DIR, "__pycache__"))
    dirs.append(os.path.join(_user_cache(), sub))
    temporary = _temporary_cache()
    if temporary is not None:
        dirs.append(os.path.join(temporary, sub))
    return dirs


@functools.lru_cache(maxsize=None)
def cache_dir():
    """The folder this process caches the kernels in (the first writable candidate)."""
    dirs = candidate_dirs()
    for d in dirs:
        if _writable(d):
            if os.path.dirname(d) == _temporary_cache():
                warnings.warn(
                    f"fastnn: neither $NUMBA_CACHE_DIR, the package folder nor the user cache "
                    f"is writable; compiled kernels are cached in {d}, which may not last. "
                    "Set NUMBA_CACHE_DIR to a writable folder to keep them.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return d
    return None


class KernelCacheLocator(caching._CacheLocator):
    """Numba cache locator for the functions of this package (see the module notes)."""

    def __init__(self, py_func, py_file, path):
        self._py_file = py_file
        self._lineno = py_func.__code__.co_firstlineno
        self._path = path

    def ensure_cache_path(self):
        os.makedirs(self._path, exist_ok=True)

    def get_cache_path(self):
        return self._path

    def get_source_stamp(self):
        return source_stamp()

    def get_disambiguator(self):
        return str(self._lineno)

    @classmethod
    def from_function(cls, py_func, py_file):
        if os.path.dirname(os.path.abspath(py_file)) != PACKAGE_DIR:
            return None
        path = cache_dir()
        return None if path is None else cls(py_func, py_file, path)


def install():
    """Put :class:`KernelCacheLocator` first in Numba's list of locators (once)."""
    classes = caching.CacheImpl._locator_classes
    if KernelCacheLocator not in classes:
        classes.insert(0, KernelCacheLocator)


def clear():
    """Delete every cached kernel of this package, wherever it may be; returns the count."""
    removed = 0
    for d in candidate_dirs():
        try:
            names = os.listdir(d)
        except OSError:
            continue
        for n in names:
            if n.endswith(_SUFFIXES):
                try:
                    os.remove(os.path.join(d, n))
                    removed += 1
                except OSError:
                    pass
    return removed
