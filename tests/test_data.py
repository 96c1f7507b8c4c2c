"""IDX reader, MNIST loader, data-folder search and batch iterator (minicnn.data)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from idx_helpers import (gzip_bytes, idx_bytes, synthetic_mnist, write_bytes, write_idx,
                         write_mnist_dir)
from minicnn import data
from minicnn.data import (ALL_FILES, MNIST_MEAN, MNIST_STD, MNISTNotFoundError, batches,
                          default_cache_dir, ensure_mnist, find_data_dir, load_mnist,
                          num_batches, read_idx)

RNG = np.random.default_rng(1234)
IMAGES = RNG.integers(0, 256, size=(3, 4, 5), dtype=np.uint8)
LABELS = RNG.integers(0, 10, size=7, dtype=np.uint8)


@pytest.fixture
def env(monkeypatch, tmp_path):
    """A clean search environment: no $MINICNN_DATA, cache under tmp_path."""
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return monkeypatch


# ---------------------------------------------------------------------- read_idx
@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("array", [IMAGES, LABELS], ids=["images", "labels"])
def test_read_idx_round_trip(tmp_path, gz, array):
    path = write_idx(tmp_path / "f", array, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_gzip_detected_by_magic_bytes_not_extension(tmp_path):
    gz_without_ext = write_idx(tmp_path / "images", IMAGES, gz=True)
    raw_with_ext = write_idx(tmp_path / "labels.gz", LABELS, gz=False)
    np.testing.assert_array_equal(read_idx(gz_without_ext), IMAGES)
    np.testing.assert_array_equal(read_idx(raw_with_ext), LABELS)


def test_read_idx_checks_expected_magic(tmp_path):
    path = write_idx(tmp_path / "labels", LABELS)
    with pytest.raises(ValueError, match="bad IDX magic") as err:
        read_idx(path, magic=data.IDX_IMAGES_MAGIC)
    msg = str(err.value)
    assert str(path) in msg and "2051" in msg and "found 2049" in msg


def test_missing_file_is_file_not_found_naming_it(tmp_path):
    path = tmp_path / "nope-idx3-ubyte.gz"
    with pytest.raises(FileNotFoundError, match="nope-idx3-ubyte.gz"):
        read_idx(path)


# One malformed file per case: (writer, words the message must contain).
MALFORMED = {
    "wrong magic (type byte 0x09)": (
        lambda p, gz: write_idx(p, IMAGES, gz, magic=0x0903),
        ["bad IDX magic", "found 2307", "data type 0x09"]),
    "nonzero leading bytes": (
        lambda p, gz: write_bytes(p, b"\x12\x34" + idx_bytes(LABELS)[2:], gz),
        ["bad IDX magic", "first two bytes are not zero"]),
    "wrong number of dims": (
        lambda p, gz: write_idx(p, IMAGES.reshape(3, 20), gz),
        ["bad IDX magic", "found 2050", "2 dims"]),
    "zero dimension": (
        lambda p, gz: write_bytes(p, idx_bytes(IMAGES)[:4] + bytes(4) + idx_bytes(IMAGES)[8:], gz),
        ["bad dimensions 0×4×5", "positive"]),
    "truncated payload": (
        lambda p, gz: write_idx(p, IMAGES, gz, drop=1),
        ["truncated", "header says 3×4×5 = 60 bytes of pixels, found 59"]),
    "truncated labels": (
        lambda p, gz: write_idx(p, LABELS, gz, drop=7),
        ["truncated", "header says 7 = 7 bytes of labels, found 0"]),
    "trailing bytes": (
        lambda p, gz: write_idx(p, IMAGES, gz, extra=b"\0\0\0"),
        ["3 trailing bytes", "= 60 bytes of pixels, found 63"]),
    "header too short (magic)": (
        lambda p, gz: write_bytes(p, b"\0\0\x08", gz),
        ["header too short", "4-byte IDX magic", "found 3 bytes"]),
    "header too short (dims)": (
        lambda p, gz: write_bytes(p, idx_bytes(IMAGES)[:10], gz),
        ["header too short", "3 dimension sizes (12 bytes), found 6 bytes"]),
    "empty file": (
        lambda p, gz: write_bytes(p, b"", gz),
        ["header too short", "found 0 bytes"]),
    "implausibly large": (
        lambda p, gz: write_bytes(p, (2051).to_bytes(4, "big") + (100000).to_bytes(4, "big") * 3, gz),
        ["implausible dimensions", "100000×100000×100000"]),
}


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_idx_raises_value_error_naming_file(tmp_path, case, gz):
    writer, words = MALFORMED[case]
    path = writer(tmp_path / "train-images-idx3-ubyte", gz)
    with pytest.raises(ValueError) as err:
        read_idx(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ")
    for word in words:
        assert word in msg


@pytest.mark.parametrize("corrupt", ["garbage body", "cut stream", "flipped byte"])
def test_corrupt_gzip_raises_value_error_naming_file(tmp_path, corrupt):
    good = gzip_bytes(idx_bytes(IMAGES))
    bad = {
        "garbage body": good[:10] + b"\xff" * 40,
        "cut stream": good[:len(good) // 2],
        "flipped byte": good[:-8] + bytes([good[-8] ^ 0xFF]) + good[-7:],  # CRC mismatch
    }[corrupt]
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(bad)
    with pytest.raises(ValueError, match="corrupt gzip stream") as err:
        read_idx(path)
    assert str(path) in str(err.value)


# -------------------------------------------------------------------- load_mnist
@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
def test_load_mnist_shapes_dtypes_and_normalisation(tmp_path, gz):
    content = synthetic_mnist(n_train=12, n_test=7)
    write_mnist_dir(tmp_path, content, gz=gz)
    raw_train = read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    raw_labels = read_idx(tmp_path / ("train-labels-idx1-ubyte" + (".gz" if gz else "")))

    x, y = load_mnist(tmp_path, "train")
    assert x.shape == (12, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (12,) and y.dtype == np.int64
    expected = (raw_train.astype(np.float64) / 255 - MNIST_MEAN) / MNIST_STD
    np.testing.assert_allclose(x[:, 0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(y, raw_labels)

    xt, yt = load_mnist(tmp_path, "test")
    assert xt.shape == (7, 1, 28, 28) and yt.shape == (7,)


def test_load_mnist_limit_keeps_first_examples(tmp_path):
    write_mnist_dir(tmp_path, synthetic_mnist(n_train=12))
    x, y = load_mnist(tmp_path, "train")
    x5, y5 = load_mnist(tmp_path, "train", limit=5)
    np.testing.assert_array_equal(x5, x[:5])
    np.testing.assert_array_equal(y5, y[:5])
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="limit"):
            load_mnist(tmp_path, "train", limit=bad)


def test_load_mnist_rejects_unknown_split(tmp_path):
    write_mnist_dir(tmp_path, synthetic_mnist())
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "validation")


def test_load_mnist_count_mismatch_names_both_files(tmp_path):
    content = synthetic_mnist(n_train=12)
    content["train-labels-idx1-ubyte"] = idx_bytes(np.zeros(11, np.uint8))
    write_mnist_dir(tmp_path, content)
    with pytest.raises(ValueError) as err:
        load_mnist(tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in msg
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in msg
    assert "12 images" in msg and "11 labels" in msg


@pytest.mark.parametrize("bad_label", [10, 255])
def test_load_mnist_rejects_out_of_range_labels(tmp_path, bad_label):
    content = synthetic_mnist(n_test=7)
    labels = np.array([1, 2, 3, bad_label, 4, 5, 6], np.uint8)
    content["t10k-labels-idx1-ubyte"] = idx_bytes(labels)
    write_mnist_dir(tmp_path, content, gz=False)
    with pytest.raises(ValueError) as err:
        load_mnist(tmp_path, "test")
    msg = str(err.value)
    assert str(tmp_path / "t10k-labels-idx1-ubyte") in msg
    assert f"label {bad_label} at index 3" in msg and "0-9" in msg


def test_load_mnist_rejects_labels_file_in_place_of_images(tmp_path):
    content = synthetic_mnist()
    content["train-images-idx3-ubyte"] = content["train-labels-idx1-ubyte"]
    write_mnist_dir(tmp_path, content)
    with pytest.raises(ValueError, match="bad IDX magic.*2051.*found 2049"):
        load_mnist(tmp_path, "train")


def test_load_mnist_missing_files_gives_how_to(env, tmp_path):
    with pytest.raises(MNISTNotFoundError) as err:
        load_mnist(tmp_path, "train")
    msg = str(err.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte[.gz]" in msg
    assert "download_mnist.py" in msg


def test_load_mnist_gz_preferred_when_both_present(tmp_path):
    write_mnist_dir(tmp_path, synthetic_mnist(seed=1), gz=True)
    write_mnist_dir(tmp_path, synthetic_mnist(seed=2), gz=False)
    x, _ = load_mnist(tmp_path, "train")
    raw = read_idx(tmp_path / "train-images-idx3-ubyte.gz")
    np.testing.assert_allclose(x[:, 0], (raw / 255 - MNIST_MEAN) / MNIST_STD, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------- find_data_dir
def _mnist_folder(path: Path) -> Path:
    return write_mnist_dir(path, synthetic_mnist(n_train=2, n_test=2))


def test_default_cache_dir_honours_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "minicnn" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "minicnn" / "mnist"


def test_find_data_dir_order_arg_then_env_then_cache(env, tmp_path):
    arg = _mnist_folder(tmp_path / "arg")
    from_env = _mnist_folder(tmp_path / "env")
    cache = _mnist_folder(default_cache_dir())
    env.setenv("MINICNN_DATA", str(from_env))
    assert find_data_dir(arg) == arg
    assert find_data_dir(str(arg)) == arg
    assert find_data_dir() == from_env
    env.delenv("MINICNN_DATA")
    assert find_data_dir() == cache


def test_find_data_dir_accepts_raw_and_mixed_files(env, tmp_path):
    content = synthetic_mnist(n_train=2, n_test=2)
    folder = tmp_path / "mixed"
    write_mnist_dir(folder, {k: v for k, v in content.items() if "train" in k}, gz=False)
    write_mnist_dir(folder, {k: v for k, v in content.items() if "t10k" in k}, gz=True)
    assert find_data_dir(folder) == folder


def _assert_how_to(msg: str):
    for hint in ("python data_scripts/download_mnist.py", "--dest DIR", "--source DIR",
                 "minicnn train --download", "$MINICNN_DATA"):
        assert hint in msg, hint


def test_explicit_folder_lacking_files_raises_even_if_others_have_them(env, tmp_path):
    _mnist_folder(default_cache_dir())
    env.setenv("MINICNN_DATA", str(_mnist_folder(tmp_path / "env")))
    partial = tmp_path / "partial"
    write_mnist_dir(partial, {"train-images-idx3-ubyte": idx_bytes(IMAGES)})
    with pytest.raises(MNISTNotFoundError) as err:
        find_data_dir(partial)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(partial) in msg and "--data-dir" in msg
    missing_line = next(line for line in msg.splitlines() if "missing:" in line)
    assert "train-images" not in missing_line
    for name in ALL_FILES[1:]:
        assert name in missing_line
    _assert_how_to(msg)


def test_env_folder_lacking_files_raises(env, tmp_path):
    _mnist_folder(default_cache_dir())
    env.setenv("MINICNN_DATA", str(tmp_path / "empty"))
    with pytest.raises(MNISTNotFoundError) as err:
        find_data_dir()
    msg = str(err.value)
    assert str(tmp_path / "empty") in msg and "from $MINICNN_DATA" in msg
    _assert_how_to(msg)


def test_nothing_found_anywhere(env):
    with pytest.raises(MNISTNotFoundError) as err:
        find_data_dir()
    assert str(default_cache_dir()) in str(err.value)
    _assert_how_to(str(err.value))


def test_ensure_mnist_downloads_only_when_asked(env, tmp_path):
    import minicnn.download

    calls = []

    def fake_download(dest, **kwargs):
        calls.append(Path(dest))
        _mnist_folder(dest)
        return {}

    env.setattr(minicnn.download, "download_mnist", fake_download)
    with pytest.raises(MNISTNotFoundError):
        ensure_mnist()
    assert calls == []
    assert ensure_mnist(download=True) == default_cache_dir()
    assert calls == [default_cache_dir()]
    assert ensure_mnist(download=True) == default_cache_dir()  # now found: no second download
    assert len(calls) == 1
    explicit = tmp_path / "explicit"
    assert ensure_mnist(explicit, download=True) == explicit
    assert calls[-1] == explicit


def test_import_has_no_side_effects(tmp_path):
    """Importing the data modules neither downloads nor creates the cache folder."""
    code = ("import socket\n"
            "def refuse(*a, **k): raise AssertionError('network used at import')\n"
            "socket.socket.connect = refuse\n"
            "socket.create_connection = refuse\n"
            "import minicnn.data, minicnn.download\n")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg"), "HOME": str(tmp_path)}
    root = Path(__file__).resolve().parent.parent
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "xdg").exists()
    assert not (tmp_path / ".cache").exists()


# ----------------------------------------------------------------------- batches
def _xy(n):
    return np.arange(n * 2, dtype=np.float32).reshape(n, 2), np.arange(n)


@settings(deadline=None, max_examples=60)
@given(n=st.integers(0, 60), batch_size=st.integers(1, 70), seed=st.integers(0, 2**32),
       epoch=st.integers(0, 50), shuffle=st.booleans())
def test_batches_cover_every_example_once(n, batch_size, seed, epoch, shuffle):
    x, y = _xy(n)
    got = list(batches(x, y, batch_size, shuffle=shuffle, seed=seed, epoch=epoch))
    assert len(got) == num_batches(n, batch_size)
    sizes = [len(yb) for _, yb in got]
    assert all(s == batch_size for s in sizes[:-1])
    if n:
        assert sizes[-1] == n - batch_size * (len(got) - 1)
    seen = np.concatenate([yb for _, yb in got]) if got else np.array([], int)
    np.testing.assert_array_equal(np.sort(seen), np.arange(n))
    for xb, yb in got:  # x and y stay paired
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
    if not shuffle:
        np.testing.assert_array_equal(seen, np.arange(n))


def test_batches_last_partial_batch_kept():
    x, y = _xy(10)
    sizes = [len(yb) for _, yb in batches(x, y, 4, shuffle=True)]
    assert sizes == [4, 4, 2]
    assert num_batches(10, 4) == 3 and num_batches(8, 4) == 2 and num_batches(0, 4) == 0


def _order(seed, epoch, n=50):
    x, y = _xy(n)
    return np.concatenate([yb for _, yb in batches(x, y, 7, seed=seed, epoch=epoch)])


def test_batches_reproducible_and_differ_across_epochs_and_seeds():
    np.testing.assert_array_equal(_order(3, 0), _order(3, 0))
    np.testing.assert_array_equal(_order(3, 5), _order(3, 5))
    orders = [_order(3, epoch) for epoch in range(5)] + [_order(4, 0)]
    for i in range(len(orders)):
        for j in range(i):
            assert not np.array_equal(orders[i], orders[j]), (i, j)
    assert not np.array_equal(_order(3, 0), np.arange(50))  # actually shuffled


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, None])
def test_batch_size_validated_on_call(bad):
    x, y = _xy(4)
    with pytest.raises(ValueError, match="batch_size"):
        batches(x, y, bad)  # no iteration needed
    with pytest.raises(ValueError, match="batch_size"):
        num_batches(4, bad)


def test_batches_reject_length_mismatch():
    x, _ = _xy(4)
    with pytest.raises(ValueError, match="4 vs 3"):
        batches(x, np.arange(3), 2)


# ------------------------------------------------------------ real MNIST (CI only)
REAL = os.environ.get("MINICNN_DATA")
needs_real_mnist = pytest.mark.skipif(not REAL, reason="set MINICNN_DATA to a folder with real MNIST")


@pytest.fixture(scope="module")
def real_train():
    return load_mnist(None, "train")  # found through $MINICNN_DATA


@needs_real_mnist
def test_real_mnist_found_through_env():
    assert find_data_dir() == Path(REAL)


@needs_real_mnist
def test_real_mnist_train(real_train):
    x, y = real_train
    assert x.shape == (60000, 1, 28, 28) and x.dtype == np.float32
    assert y.shape == (60000,) and y.dtype == np.int64
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert abs(float(x.mean(dtype=np.float64))) < 1e-3
    assert abs(float(x.std(dtype=np.float64)) - 1) < 1e-3


@needs_real_mnist
def test_real_mnist_raw_pixel_statistics():
    path = data.find_mnist_file(find_data_dir(), "train-images-idx3-ubyte")
    raw = read_idx(path, data.IDX_IMAGES_MAGIC)
    n = raw.size  # exact integer sums, then mean/std of raw / 255
    total = int(raw.sum(dtype=np.int64))
    squares = int(np.dot(raw.ravel().astype(np.int64), raw.ravel().astype(np.int64)))
    mean = total / n / 255
    std = np.sqrt(squares / n / 255**2 - mean**2)
    assert abs(mean - MNIST_MEAN) < 1e-4
    assert abs(std - MNIST_STD) < 1e-4


@needs_real_mnist
def test_real_mnist_test():
    x, y = load_mnist(None, "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert set(np.unique(y).tolist()) == set(range(10))


@needs_real_mnist
@pytest.mark.parametrize("name", ALL_FILES)
def test_real_mnist_md5_matches_table(name):
    from minicnn.download import MNIST_MD5, check_file, content_md5

    path = data.find_mnist_file(find_data_dir(), name)
    assert content_md5(path) == MNIST_MD5[name]
    assert check_file(path, name) is None


def test_not_found_says_what_the_chosen_path_is_and_how_to_fill_it(tmp_path, monkeypatch):
    from minicnn.data import MNISTNotFoundError, find_data_dir
    afile = tmp_path / "afile"
    afile.write_text("x")
    monkeypatch.setenv("MINICNN_DATA", str(afile))
    with pytest.raises(MNISTNotFoundError, match=r"from \$MINICNN_DATA\): it is a file, not a folder"):
        find_data_dir()
    monkeypatch.setenv("MINICNN_DATA", str(tmp_path / "none"))
    with pytest.raises(MNISTNotFoundError) as e:
        find_data_dir()
    msg = str(e.value)
    assert ": no such folder" in msg and f"download_mnist.py --dest {tmp_path / 'none'}" in msg
    assert "into the cache folder" not in msg             # the cache cannot help an explicit folder
