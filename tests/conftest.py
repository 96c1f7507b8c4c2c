"""Shared fixtures: a small *learnable* synthetic MNIST written as IDX files.

Class k is a bright 6x6 square at one of ten fixed places, jittered by up
to 2 pixels, on noise: a real but easy task, so a short training run must
reach high accuracy.  Tests never touch the network.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from idx_helpers import write_idx

PLACES = [(2, 2), (2, 11), (2, 20), (11, 2), (11, 11), (11, 20), (20, 2), (20, 11), (20, 20), (6, 16)]


def learnable_digits(n: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = PLACES[k]
        r = int(np.clip(r + rng.integers(-2, 3), 0, 22))
        c = int(np.clip(c + rng.integers(-2, 3), 0, 22))
        images[i, r:r + 6, c:c + 6] = 255
    return images, labels


def write_mnist_folder(folder, n_train=600, n_test=200, seed=0, gz=True):
    os.makedirs(folder, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        images, labels = learnable_digits(n, s)
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte{ext}"), images, gz=gz)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte{ext}"), labels, gz=gz)
    return str(folder)


@pytest.fixture(scope="session")
def synthetic_mnist_dir(tmp_path_factory):
    """A folder with the four MNIST file names holding learnable synthetic digits."""
    return write_mnist_folder(tmp_path_factory.mktemp("mnist"))


@pytest.fixture
def real_mnist_dir():
    """The real MNIST folder from $MINICNN_DATA; skips when it is not set."""
    folder = os.environ.get("MINICNN_DATA")
    if not folder:
        pytest.skip("MINICNN_DATA is not set: real MNIST not available")
    return folder
