"""Write synthetic IDX files (gzipped or raw) for the data and download tests.

``idx_bytes`` builds a well-formed file; the keyword arguments of
``write_idx`` break it in one chosen way (magic, payload length, trailing bytes).
"""
from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np

from minicnn.data import IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, MNIST_FILES


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Header + payload of a uint8 IDX file holding ``array``.

    ``magic`` overrides the magic number (default 0x0800 | ndim, i.e. ubyte).
    """
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def gzip_bytes(data: bytes, level: int = 6) -> bytes:
    """gzip with mtime=0, so equal inputs give equal bytes."""
    return gzip.compress(data, compresslevel=level, mtime=0)


def write_bytes(path, data: bytes, gz: bool = False) -> Path:
    """Write ``data`` (gzip-compressed when ``gz``) to ``path``; return the path."""
    path = Path(path)
    path.write_bytes(gzip_bytes(data) if gz else data)
    return path


def write_idx(path, array: np.ndarray, gz: bool = False, magic: int | None = None,
              drop: int = 0, extra: bytes = b"") -> Path:
    """Write ``array`` as an IDX file; ``drop`` removes that many payload bytes
    from the end (truncation), ``extra`` is appended (trailing bytes)."""
    data = idx_bytes(array, magic)
    data = data[:len(data) - drop] + extra
    return write_bytes(path, data, gz)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def synthetic_mnist(n_train: int = 12, n_test: int = 7, seed: int = 0) -> dict[str, bytes]:
    """Raw (uncompressed) IDX bytes for the four MNIST names, 28x28 random images."""
    rng = np.random.default_rng(seed)
    content = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images_name, labels_name = MNIST_FILES[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        content[images_name] = idx_bytes(images, IDX_IMAGES_MAGIC)
        content[labels_name] = idx_bytes(labels, IDX_LABELS_MAGIC)
    return content


def write_mnist_dir(folder, content: dict[str, bytes], gz: bool = True) -> Path:
    """Write ``content`` (name -> raw IDX bytes) into ``folder`` as ``name.gz`` or ``name``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in content.items():
        write_bytes(folder / (f"{name}.gz" if gz else name), data, gz)
    return folder
