"""Model files: ``.npz`` archives without pickle, written atomically and read defensively.

:func:`write_model` (through :func:`write_atomic`, which also writes the
files of ``inspect`` and ``experiment``) writes beside the final name,
flushes to disk and renames, so a crash never leaves a half-written file
where a good one was.
:func:`read_model` checks the archive's members (names, dtypes, shapes, sizes)
from their headers before reading any of them, so a small hostile file cannot
make fastnn allocate gigabytes, and every problem is a ``ValueError`` naming
the file.
"""

import contextlib
import json
import os
import tempfile
import zipfile

import numpy as np

from ._checks import MAX_PARAMS, _layer_sizes
from .layout import count_params

FORMAT_NAME = "fastnn-network"
FORMAT_VERSION = 1


def write_model(path, fields):
    """Write the arrays ``fields`` to an ``.npz`` archive at exactly ``path``, atomically.

    Returns ``path`` (as a string).  A directory, or a folder that does not
    exist, raises ``OSError`` before anything is written.
    """
    return write_atomic(path, lambda f: np.savez(f, **fields), "the model file's path")


def write_atomic(path, write, what="a file path"):
    """Call ``write(f)`` on a binary file that becomes ``path`` only once it is complete.

    The file is written beside ``path``, flushed to disk and renamed over it,
    so an interrupted write leaves any earlier file at ``path`` whole.
    Returns ``path`` (as a string); a directory at ``path`` raises
    ``IsADirectoryError`` (asking for ``what``) before anything is written.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give {what}")
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as an ordinary new file (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


MODEL_KEYS = {  # key: (kind, dtype kinds it may have)
    "format": ("str", "U"),
    "version": ("int", "iu"),
    "sizes": ("ints", "iu"),
    "parameters": ("floats", "f"),
    "activation": ("str", "U"),
    "output": ("str", "U"),
    "cost": ("str", "U"),
    "init": ("str", "U"),
    "weight_decay": ("float", "f"),
}
SMALL = 1024  # the most values any key but ``parameters`` may hold


class InvalidModelFile(ValueError):
    """A file that is not a complete, consistent fastnn model file (the message names it)."""


def read_model(path):
    """The fields of a model file, checked: each member's type and size from its header
    before it is read (a small file that declares a huge array is refused without
    allocating it), then the format, the version, the sizes, and a finite parameter
    vector of the length the sizes need.  ``sizes`` is returned as a list of ints.
    """
    path = os.fspath(path)

    def bad(why):
        return InvalidModelFile(f"{path}: not a fastnn network file: {why}")

    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a model file")
    try:
        with zipfile.ZipFile(path) as z:
            names = {n[:-4]: n for n in z.namelist() if n.endswith(".npy")}
            missing = sorted(set(MODEL_KEYS) - set(names))
            if missing:
                raise bad(f"missing {', '.join(missing)}")
            headers = {}
            for key, name in names.items():
                if key not in MODEL_KEYS:
                    continue
                with z.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
                headers[key] = (shape, dtype)
            for key, (shape, dtype) in headers.items():
                kind, kinds = MODEL_KEYS[key]
                if dtype.kind not in kinds or dtype.hasobject:
                    raise bad(f"{key} has dtype {dtype}, expected {kind}")
                size = int(np.prod(shape))
                if kind in ("str", "int", "float") and shape != ():
                    raise bad(f"{key} must be a single value, got shape {shape}")
                if kind in ("ints", "floats") and len(shape) != 1:
                    raise bad(f"{key} must be a vector, got shape {shape}")
                limit = MAX_PARAMS if key == "parameters" else SMALL
                if size > limit:
                    raise bad(f"{key} declares {size:,} values (at most {limit:,})")
                if dtype.kind == "U" and dtype.itemsize > 4 * SMALL:
                    raise bad(f"{key} is a string of {dtype.itemsize // 4:,} characters")
        with np.load(path, allow_pickle=False) as f:
            raw = {key: f[key] for key in MODEL_KEYS}
    except (InvalidModelFile, FileNotFoundError, PermissionError):
        raise
    except Exception as e:  # whatever a damaged archive makes zipfile or NumPy raise
        raise bad(f"{type(e).__name__}: {e} (truncated or corrupt?)") from None
    out = {}
    for key, a in raw.items():
        kind = MODEL_KEYS[key][0]
        if kind == "str":
            out[key] = str(a)
        elif kind == "int":
            out[key] = int(a)
        elif kind == "float":
            out[key] = float(a)
        elif kind == "ints":
            out[key] = a
        else:  # the parameter vector, in native byte order
            out[key] = a.astype(a.dtype.newbyteorder("="), copy=False)
    if out["format"] != FORMAT_NAME:
        raise bad(f"format is {out['format']!r}, not {FORMAT_NAME!r}")
    if out["version"] != FORMAT_VERSION:
        raise InvalidModelFile(f"{path}: unsupported fastnn format version {out['version']}")
    try:
        out["sizes"] = _layer_sizes([int(s) for s in out["sizes"]])
    except (TypeError, ValueError) as e:
        raise bad(f"sizes: {e}") from None
    theta = out["parameters"]
    if theta.dtype not in (np.float32, np.float64):
        raise bad(f"parameters have dtype {theta.dtype}, not float32 or float64")
    n = count_params(out["sizes"])
    if theta.shape != (n,):
        raise bad(f"the parameter vector has shape {theta.shape}, sizes {out['sizes']} need ({n},)")
    if not np.isfinite(theta).all():
        raise bad("the parameters contain NaN or infinite values")
    return out


def write_json(path, obj):
    """:func:`write_atomic` of ``obj`` as indented JSON text."""
    return write_atomic(path, lambda f: f.write(json.dumps(obj, indent=1).encode()))
