"""MNIST data: the IDX file reader, the MNIST loader and the batch iterator.

IDX format (LeCun's MNIST page), all integers big-endian::

    byte 0-1   0x00 0x00
    byte 2     data type: 0x08 = unsigned byte (the only type MNIST uses)
    byte 3     number of dimensions
    then       one uint32 per dimension
    then       the payload: prod(dims) values, row-major, nothing after it

So the magic number (bytes 0-3 as one uint32) is 2051 = 0x803 for images
(ubyte, 3 dims: N, rows, cols) and 2049 = 0x801 for labels (ubyte, 1 dim: N).
Files may be gzipped or raw; gzip is recognised by its magic bytes 1f 8b, not
by the file name.  Every malformed file raises a ``ValueError`` that names the
file and says what was expected and what was found.

Where MNIST is looked for (:func:`find_data_dir`): the ``data_dir`` argument
(``--data-dir``), else ``$MINICNN_DATA``, else the cache folder
``$XDG_CACHE_HOME/minicnn/mnist`` (``~/.cache/minicnn/mnist``).  Nothing is ever
downloaded unless asked for (:func:`ensure_mnist` with ``download=True``, which
uses :mod:`minicnn.download`).
"""
from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

# The four MNIST files, per split: (images, labels).  Each may be stored as
# ``name.gz`` or as the raw ``name``; when both exist the ``.gz`` one is read.
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
ALL_FILES = MNIST_FILES["train"] + MNIST_FILES["test"]

# Mean and standard deviation of the 60000*28*28 MNIST *training* pixels after
# scaling to [0, 1] (the constants torchvision's MNIST examples use).  Both
# splits are standardised with these training statistics.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

IDX_IMAGES_MAGIC = 2051  # 0x00000803: ubyte, 3 dims (N, rows, cols)
IDX_LABELS_MAGIC = 2049  # 0x00000801: ubyte, 1 dim (N,)
_MAGIC_MEANING = {IDX_IMAGES_MAGIC: "images: ubyte, 3 dims", IDX_LABELS_MAGIC: "labels: ubyte, 1 dim"}
_MAX_PAYLOAD = 1 << 31  # "sane": no IDX file we read holds more than 2 GiB of values
GZIP_MAGIC = b"\x1f\x8b"


class MNISTNotFoundError(FileNotFoundError):
    """MNIST files are missing; the message says where we looked and how to get them."""


class MNISTFormatError(ValueError):
    """An MNIST (IDX) file is corrupt: bad header, wrong size, labels that are
    not digits, images and labels that do not pair up.  The message names
    the file."""


# ----------------------------------------------------------------- reading IDX files
def is_gzip(path) -> bool:
    """True when the file starts with the gzip magic bytes 1f 8b."""
    with open(path, "rb") as f:
        return f.read(2) == GZIP_MAGIC


def open_maybe_gzip(path) -> BinaryIO:
    """Open ``path`` for binary reading, decompressing it if it is gzipped."""
    return gzip.open(path, "rb") if is_gzip(path) else open(path, "rb")


def read_idx(path, magic: int | None = None) -> np.ndarray:
    """Read one IDX file (gzipped or raw) -> uint8 array of the shape its header gives.

    ``magic``: the magic number required (2051 images, 2049 labels); ``None``
    accepts either.  Raises ``FileNotFoundError`` if the file is missing and
    :class:`MNISTFormatError` (a ValueError) naming the file for a bad
    header, a payload that is shorter or longer than the header says, or a
    corrupt gzip stream.
    """
    path = Path(path)
    gzipped = is_gzip(path)  # FileNotFoundError names the path
    with open_maybe_gzip(path) as f:
        if not gzipped:
            return _read_idx_stream(f, path, magic, os.fstat(f.fileno()).st_size)
        try:
            return _read_idx_stream(f, path, magic, None)
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise MNISTFormatError(f"{path}: corrupt gzip stream ({exc})") from exc


def _read_idx_stream(f: BinaryIO, path: Path, magic: int | None, file_size: int | None) -> np.ndarray:
    """Parse header and payload from ``f``; ``file_size`` is known for raw files only."""
    head = f.read(4)
    if len(head) < 4:
        raise MNISTFormatError(f"{path}: header too short: expected a 4-byte IDX magic number, "
                               f"found {len(head)} bytes")
    found = int.from_bytes(head, "big")
    allowed = (magic,) if magic is not None else (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC)
    if found not in allowed:
        expected = " or ".join(f"{m} ({_MAGIC_MEANING.get(m, 'unknown')})" for m in allowed)
        decoded = (f"data type 0x{head[2]:02X}, {head[3]} dims" if head[:2] == b"\0\0"
                   else "first two bytes are not zero")
        raise MNISTFormatError(f"{path}: bad IDX magic number: expected {expected}, "
                               f"found {found} (0x{found:08X}: {decoded})")

    ndim = head[3]
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise MNISTFormatError(f"{path}: header too short: magic {found} announces {ndim} dimension "
                               f"sizes ({4 * ndim} bytes), found {len(raw_dims)} bytes")
    dims = tuple(int.from_bytes(raw_dims[4 * i:4 * i + 4], "big") for i in range(ndim))
    shape = "×".join(map(str, dims))
    n = math.prod(dims)
    if 0 in dims:
        raise MNISTFormatError(f"{path}: bad dimensions {shape}: every dimension must be positive")
    if n > _MAX_PAYLOAD:
        raise MNISTFormatError(f"{path}: implausible dimensions {shape} = {n} bytes: "
                               f"expected at most {_MAX_PAYLOAD} bytes")

    if file_size is not None:  # raw file: compare sizes before allocating anything
        found_bytes = file_size - 4 - 4 * ndim
        if found_bytes != n:
            raise _payload_error(path, dims, found_bytes)
    data = np.empty(n, dtype=np.uint8)
    got = _read_into(f, data)
    if got < n:
        raise _payload_error(path, dims, got)
    extra = _count_remaining(f)
    if extra:
        raise _payload_error(path, dims, n + extra)
    return data.reshape(dims)


def _payload_error(path: Path, dims: tuple[int, ...], found: int) -> MNISTFormatError:
    shape, expected = "×".join(map(str, dims)), math.prod(dims)
    what = {1: "labels", 3: "pixels"}.get(len(dims), "values")
    problem = "truncated" if found < expected else f"{found - expected} trailing bytes"
    return MNISTFormatError(f"{path}: {problem}: header says {shape} = {expected} bytes of {what}, "
                            f"found {found}")


def _read_into(f: BinaryIO, out: np.ndarray) -> int:
    """Fill ``out`` (uint8) from ``f`` until full or end of file; return bytes read."""
    view = memoryview(out)
    total = 0
    while total < len(view):
        k = f.readinto(view[total:])
        if not k:
            break
        total += k
    return total


def _count_remaining(f: BinaryIO) -> int:
    total = 0
    while chunk := f.read(1 << 20):
        total += len(chunk)
    return total


# -------------------------------------------------------------------- finding MNIST
def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/minicnn/mnist``, or ``~/.cache/minicnn/mnist`` when unset."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "minicnn" / "mnist"


def find_mnist_file(folder, name: str) -> Path | None:
    """``folder/name.gz`` if it exists, else ``folder/name`` if it exists, else None."""
    for candidate in (Path(folder) / f"{name}.gz", Path(folder) / name):
        if candidate.is_file():
            return candidate
    return None


def missing_files(folder, names=ALL_FILES) -> list[str]:
    """The MNIST names (of ``names``) with neither ``name.gz`` nor ``name`` in ``folder``."""
    return [name for name in names if find_mnist_file(folder, name) is None]


def _chosen_folder(data_dir) -> tuple[Path, str]:
    """The one folder the search order picks, and why: arg, else $MINICNN_DATA, else cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), "given as data_dir / --data-dir"
    if os.environ.get("MINICNN_DATA"):
        return Path(os.environ["MINICNN_DATA"]).expanduser(), "from $MINICNN_DATA"
    return default_cache_dir(), "the default cache folder"


def _not_found(folder: Path, origin: str, missing: list[str]) -> MNISTNotFoundError:
    state = "" if folder.is_dir() else (": it is a file, not a folder" if folder.exists()
                                        else ": no such folder")
    into = ("python data_scripts/download_mnist.py              # download into the cache folder"
            if folder == default_cache_dir() else
            f"python data_scripts/download_mnist.py --dest {folder}   # download into this folder")
    lines = [
        "MNIST not found.",
        f"  looked in: {folder} ({origin}){state}",
        "  missing:   " + ", ".join(f"{name}[.gz]" for name in missing),
        f"  search order: --data-dir, then $MINICNN_DATA, then {default_cache_dir()}",
        "  (a folder given by --data-dir or $MINICNN_DATA is never replaced by a later one)",
        "To get MNIST (files are verified by MD5):",
        f"  {into}",
        "  python data_scripts/download_mnist.py --dest DIR   # download into DIR",
        "  python data_scripts/download_mnist.py --source DIR # import from a local folder of the files",
        "  minicnn train --download                           # download on first use",
    ]
    return MNISTNotFoundError("\n".join(lines))


def find_data_dir(data_dir=None) -> Path:
    """The folder holding all four MNIST files.

    Search order: ``data_dir`` (``--data-dir``), else ``$MINICNN_DATA``, else
    :func:`default_cache_dir`.  A folder given explicitly (argument or
    environment) that lacks files is an error, never silently replaced by a
    lower-priority one.  Raises :class:`MNISTNotFoundError` saying where it
    looked, which files are missing and how to get them.
    """
    folder, origin = _chosen_folder(data_dir)
    missing = missing_files(folder)
    if missing:
        raise _not_found(folder, origin, missing)
    return folder


def ensure_mnist(data_dir=None, download: bool = False) -> Path:
    """:func:`find_data_dir`, and if MNIST is not there and ``download`` is true,
    download it (verified) into the folder the search order chose: ``data_dir``
    if given, else ``$MINICNN_DATA`` if set, else the cache folder."""
    try:
        return find_data_dir(data_dir)
    except MNISTNotFoundError:
        if not download:
            raise
    from minicnn.download import download_mnist  # imported only when a download is wanted

    folder, _ = _chosen_folder(data_dir)
    download_mnist(folder)
    return find_data_dir(folder)


# -------------------------------------------------------------------- loading MNIST
def load_mnist(data_dir=None, split: str = "train", limit: int | None = None):
    """Load one MNIST split -> ``(images, labels)``.

    images: float32 ``(N, 1, 28, 28)``, ``(pixel / 255 - MNIST_MEAN) / MNIST_STD``;
    labels: int64 ``(N,)`` in 0..9.  ``data_dir=None`` searches as
    :func:`find_data_dir` does (only this split's two files must be there).  ``limit`` keeps the first ``limit`` examples
    (the whole file is still validated).
    """
    if split not in MNIST_FILES:
        raise ValueError(f"split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer))
                              or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    folder, origin = _chosen_folder(data_dir)
    names = MNIST_FILES[split]
    missing = missing_files(folder, names)
    if missing:
        raise _not_found(folder, origin, missing)
    image_path, label_path = (find_mnist_file(folder, name) for name in names)

    images = read_idx(image_path, IDX_IMAGES_MAGIC)
    labels = read_idx(label_path, IDX_LABELS_MAGIC)
    if len(images) != len(labels):
        raise MNISTFormatError(f"count mismatch: {image_path} holds {len(images)} images "
                               f"but {label_path} holds {len(labels)} labels")
    bad = np.flatnonzero(labels > 9)
    if bad.size:
        raise MNISTFormatError(f"{label_path}: label {labels[bad[0]]} at index {bad[0]}: "
                               f"expected digits 0-9")
    if limit is not None:
        images, labels = images[:limit], labels[:limit]

    n, rows, cols = images.shape
    x = images.reshape(n, 1, rows, cols).astype(np.float32)  # a copy we may scale in place
    x *= np.float32(1 / 255)
    x -= np.float32(MNIST_MEAN)
    x /= np.float32(MNIST_STD)
    return x, labels.astype(np.int64)


# -------------------------------------------------------------------------- batches
def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    return int(batch_size)


def num_batches(n: int, batch_size: int) -> int:
    """Batches per epoch: ``ceil(n / batch_size)`` (the last partial batch counts)."""
    batch_size = _check_batch_size(batch_size)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return -(-n // batch_size)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, shuffle: bool = True,
            seed: int = 0, epoch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Iterate over ``(x[idx], y[idx])`` mini-batches along axis 0.

    Every example appears exactly once per epoch; the last batch holds the
    ``n % batch_size`` leftovers when that is not 0.  With ``shuffle`` the order
    is a permutation drawn from ``np.random.default_rng([seed, epoch])``: the
    same ``(seed, epoch)`` gives the same order, each epoch a different one.
    Arguments are checked when called, not when iteration starts.
    """
    batch_size = _check_batch_size(batch_size)
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    order = np.random.default_rng([seed, epoch]).permutation(len(x)) if shuffle else None
    return _iter_batches(x, y, batch_size, order)


def _iter_batches(x, y, batch_size, order):
    for start in range(0, len(x), batch_size):
        if order is None:
            yield x[start:start + batch_size], y[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
