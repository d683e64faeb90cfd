"""MNIST loading: the four official gzipped IDX files.

Where the files are looked for, in order:

1. the ``data_dir`` argument (the folder holding the files, or its ``mnist``
   sub-folder);
2. ``$FASTNN_DATA/mnist``;
3. the user cache, ``$XDG_CACHE_HOME/fastnn/mnist`` (default
   ``~/.cache/fastnn/mnist``).

With ``download=True`` missing files are fetched into the user cache from
``$FASTNN_MNIST_URL`` or the public mirrors below, checked against the
official MD5 sums and moved into place atomically (a failed or corrupt
download leaves nothing behind).
"""

from __future__ import annotations

import gzip
import hashlib
import numbers
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
_TIMEOUT = 30


class MNISTNotFoundError(FileNotFoundError):
    """The MNIST files are in none of the places fastnn looks."""


def cache_dir():
    """The user cache folder for MNIST (``$XDG_CACHE_HOME/fastnn/mnist``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastnn" / "mnist"


def search_dirs(data_dir=None):
    """The folders looked in, in order."""
    dirs = []
    if data_dir is not None:
        if not Path(data_dir).is_dir():
            raise MNISTNotFoundError(f"data_dir {data_dir} does not exist or is not a folder")
        dirs += [Path(data_dir), Path(data_dir) / "mnist"]
    if os.environ.get("FASTNN_DATA"):
        dirs.append(Path(os.environ["FASTNN_DATA"]) / "mnist")
    dirs.append(cache_dir())
    return dirs


#: The most data bytes an IDX file may declare (MNIST's largest file holds 47 MB).
MAX_IDX_BYTES = 1 << 30


def read_idx(path, magic=None, max_bytes=MAX_IDX_BYTES):
    """Read one gzipped (or plain) IDX file into a uint8 array of its shape.

    The header is read and checked first, then exactly the bytes it declares
    (at most ``max_bytes``), so a corrupt header or a decompression bomb
    cannot make it read or allocate more.  Raises ``ValueError`` naming the
    file when it is truncated, corrupt, longer than its header says, not IDX,
    or not of the expected ``magic`` number.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4:
                raise ValueError(f"{path}: too short to be an IDX file ({len(head)} bytes)")
            zero, dtype_code, ndim = struct.unpack(">HBB", head)
            found_magic = struct.unpack(">I", head)[0]
            if zero != 0 or dtype_code != 0x08 or ndim == 0:
                raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {found_magic})")
            if magic is not None and found_magic != magic:
                raise ValueError(f"{path}: wrong magic number {found_magic}, expected {magic}")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise ValueError(f"{path}: truncated IDX header")
            shape = struct.unpack(f">{ndim}I", dims)
            size = int(np.prod(shape, dtype=object))
            if size > max_bytes:
                raise ValueError(
                    f"{path}: IDX header declares shape {shape} ({size:,} bytes), more than "
                    f"the {max_bytes:,} accepted: corrupt"
                )
            raw = f.read(size + 1)
    except (EOFError, OSError, zlib.error) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(
            f"{path}: cannot decompress ({e}); the file is truncated or corrupt. "
            "Delete it and provide the official file again."
        ) from None
    if len(raw) != size:
        held = f"{len(raw)}" if len(raw) < size else "more"
        raise ValueError(
            f"{path}: IDX header promises {size} bytes of data for shape {shape}, "
            f"file holds {held}: truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


def md5sum(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_mnist(dest=None, base_urls=None, quiet=False):
    """Fetch the missing official MNIST files into ``dest`` (default: the user cache).

    Each file is written to a temporary file beside its final name, its MD5
    checked against the official sum, then renamed into place; on any failure
    the temporary file is removed and the next mirror tried.
    """
    import urllib.error  # here: urllib.request and http.client take 30-60 ms to import
    import urllib.request

    dest = Path(dest) if dest is not None else cache_dir()
    dest.mkdir(parents=True, exist_ok=True)
    if base_urls is None:
        env = os.environ.get("FASTNN_MNIST_URL")
        base_urls = [env] if env else list(MIRRORS)
    for name, md5 in FILES.values():
        target = dest / name
        if target.exists() and md5sum(target) == md5:
            continue
        errors = []
        for base in base_urls:
            url = base.rstrip("/") + "/" + name
            fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=dest)
            try:
                with (
                    os.fdopen(fd, "wb") as out,
                    urllib.request.urlopen(url, timeout=_TIMEOUT) as response,
                ):
                    while True:
                        block = response.read(1 << 20)
                        if not block:
                            break
                        out.write(block)
                got = md5sum(tmp)
                if got != md5:
                    raise ValueError(f"MD5 {got} does not match the official {md5}")
                os.replace(tmp, target)
                if not quiet:
                    print(f"downloaded {url} -> {target}")
                break
            except (OSError, ValueError, urllib.error.URLError) as e:
                errors.append(f"{url}: {e}")
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            raise OSError(f"could not download {name}:\n  " + "\n  ".join(errors))
    return dest


def find_mnist(data_dir=None):
    """The first folder holding all four MNIST files, or None."""
    for d in search_dirs(data_dir):
        if all((d / name).is_file() for name, _ in FILES.values()):
            return d
    return None


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    dtype: npt.DTypeLike = np.float32,
    validation: bool | int = False,
    download: bool = False,
) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Load MNIST as arrays.

    Parameters
    ----------
    data_dir : path, optional
        Folder holding the four ``*-ubyte.gz`` files (looked in first).
    dtype : numpy dtype
        ``uint8`` for raw pixels 0..255, or a float dtype for pixels scaled to
        [0, 1].
    validation : bool or int
        Split the last images of the training set off as a validation set:
        ``True`` for the classic 50,000 / 10,000 split, or the number of
        validation images.
    download : bool
        Fetch missing files into the user cache (checksum-verified).

    Returns
    -------
    ``((X_train, y_train), (X_test, y_test))``, or
    ``((X_train, y_train), (X_val, y_val), (X_test, y_test))`` with
    ``validation``.  ``X`` has shape ``(n, 784)``; ``y`` holds int64 labels.
    """
    dtype = np.dtype(dtype)
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise TypeError(f"dtype must be uint8 or a float dtype, got {dtype}")
    if not isinstance(validation, (bool, np.bool_, numbers.Integral)):
        raise TypeError(f"validation must be True, False or a whole number, got {validation!r}")
    n_val = 10000 if validation is True or validation is np.True_ else int(validation)
    if not 0 <= n_val < 60000:
        raise ValueError(f"validation must be True, False or a size below 60000, got {validation}")
    folder = find_mnist(data_dir)
    if folder is None and download:
        folder = download_mnist()
    if folder is None:
        looked = "\n  ".join(str(d) for d in search_dirs(data_dir))
        raise MNISTNotFoundError(
            "MNIST files not found. Looked in:\n  " + looked + "\n"
            "Put the four official files (" + ", ".join(n for n, _ in FILES.values()) + ") in "
            "one of these folders, set FASTNN_DATA to a folder with an 'mnist' sub-folder "
            "holding them, or call load_mnist(download=True) / "
            "'python -m fastnn train --download' when online."
        )
    arrays = {}
    for key, (name, _) in FILES.items():
        arrays[key] = read_idx(
            folder / name, IMAGE_MAGIC if key.endswith("images") else LABEL_MAGIC
        )
    out = []
    for part in ("train", "test"):
        images, labels = arrays[part + "_images"], arrays[part + "_labels"]
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(
                f"{folder / FILES[part + '_images'][0]}: expected 28x28 images, "
                f"got shape {images.shape}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"{folder}: {labels.shape[0]} {part} labels for {images.shape[0]} images"
            )
        if labels.max() > 9:
            raise ValueError(f"{folder / FILES[part + '_labels'][0]}: label above 9")
        X = images.reshape(images.shape[0], 784)
        if dtype != np.uint8:
            X = X.astype(dtype)
            X /= 255
        out.append((X, labels.astype(np.int64)))
    (X, y), test = out
    if n_val:
        cut = X.shape[0] - n_val
        return (X[:cut], y[:cut]), (X[cut:], y[cut:]), test
    return (X, y), test
