"""MNIST downloader and importer (minicnn.download, data_scripts/download_mnist.py).

The network is faked: an injected opener serves bytes from memory.  An
autouse fixture makes any real network use fail the test.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from idx_helpers import gzip_bytes, idx_bytes, md5, synthetic_mnist, write_bytes, write_mnist_dir
from minicnn import download
from minicnn.data import ALL_FILES, find_data_dir
from minicnn.download import MIRRORS, DownloadError, check_file, download_mnist, import_mnist

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "data_scripts" / "download_mnist.py"
M1, M2, M3 = MIRRORS
GZ = [f"{name}.gz" for name in ALL_FILES]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to use the real network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def content(monkeypatch):
    """Synthetic MNIST (name -> raw IDX bytes); the MD5 table is patched to match it."""
    content = synthetic_mnist(n_train=30, n_test=10)
    monkeypatch.setattr(download, "MNIST_MD5", {name: md5(raw) for name, raw in content.items()})
    return content


class FakeResponse:
    """A urlopen response: ``read(n)`` in small pieces, ``headers``, context manager.
    ``on_read(pos)`` is called before each read (to interrupt midway)."""

    def __init__(self, body: bytes, length: int | None = -1, piece: int = 1000, on_read=None):
        self.body, self.pos, self.piece, self.on_read = body, 0, piece, on_read
        length = len(body) if length == -1 else length
        self.headers = {} if length is None else {"Content-Length": str(length)}

    def read(self, n=-1):
        if self.on_read:
            self.on_read(self.pos)
        n = self.piece if n is None or n < 0 else min(n, self.piece)
        chunk = self.body[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class FakeWeb:
    """The injected opener: ``routes[url]`` is bytes, an exception to raise, or
    a zero-argument callable returning a response.  Unknown URLs answer 404."""

    def __init__(self, routes):
        self.routes, self.requests, self.timeouts = routes, [], []

    def __call__(self, request, timeout=None):
        url = request.full_url
        self.requests.append(url)
        self.timeouts.append(timeout)
        assert request.get_header("User-agent") == download.USER_AGENT
        route = self.routes.get(url)
        if route is None:
            raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
        if isinstance(route, BaseException):
            raise route
        return route() if callable(route) else FakeResponse(route)


def forbidden(url):
    return urllib.error.HTTPError(url, 403, "Forbidden", {}, None)


def good_routes(content, mirror=M1):
    return {mirror + f"{name}.gz": gzip_bytes(raw) for name, raw in content.items()}


def corrupted(raw: bytes) -> bytes:
    """Same length, one pixel changed, validly gzipped: only the MD5 can tell."""
    return gzip_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))


def assert_complete(dest: Path, content, names=ALL_FILES):
    """dest holds exactly ``names`` as verified .gz files with the right content."""
    assert sorted(os.listdir(dest)) == sorted(f"{name}.gz" for name in names)
    for name in names:
        assert check_file(dest / f"{name}.gz", name) is None
        assert gzip.decompress((dest / f"{name}.gz").read_bytes()) == content[name]


# ------------------------------------------------------------------- mirror order
def test_403_then_corrupt_then_good_mirror(content, tmp_path):
    routes = {}
    for name, raw in content.items():
        routes[M1 + f"{name}.gz"] = forbidden(M1 + f"{name}.gz")
        routes[M2 + f"{name}.gz"] = corrupted(raw)
        routes[M3 + f"{name}.gz"] = gzip_bytes(raw)
    web, log = FakeWeb(routes), []
    actions = download_mnist(tmp_path, opener=web, progress=False, log=log.append)

    assert web.requests == [m + f for f in GZ for m in MIRRORS]
    assert actions == {name: f"downloaded from {M3}{name}.gz" for name in ALL_FILES}
    assert_complete(tmp_path, content)
    assert sum("HTTP 403 Forbidden" in line for line in log) == 4
    assert sum("MD5 of decompressed content is" in line for line in log) == 4


def test_first_good_mirror_wins_and_others_untouched(content, tmp_path):
    web = FakeWeb(good_routes(content, M1))
    download_mnist(tmp_path, opener=web, progress=False, log=None, timeout=7.5)
    assert web.requests == [M1 + f for f in GZ]
    assert web.timeouts == [7.5] * 4
    assert_complete(tmp_path, content)


def test_broken_gzip_and_short_body_are_discarded(content, tmp_path):
    routes = good_routes(content, M3)
    for name, raw in content.items():
        good = gzip_bytes(raw)
        routes[M1 + f"{name}.gz"] = good[:len(good) // 2]  # cut gzip stream, honest length
        routes[M2 + f"{name}.gz"] = lambda good=good: FakeResponse(good[:-100], length=len(good))
    log = []
    download_mnist(tmp_path, opener=FakeWeb(routes), progress=False, log=log.append)
    assert_complete(tmp_path, content)
    assert sum("corrupt gzip" in line for line in log) == 4
    assert sum("incomplete body" in line for line in log) == 4


def test_recompressed_and_uncompressed_content_verify(content, tmp_path):
    """The MD5 is of the decompressed content: any gzip wrapper of it is accepted."""
    routes = {}
    for i, (name, raw) in enumerate(content.items()):
        routes[M1 + f"{name}.gz"] = gzip_bytes(raw, level=1 + 2 * i)
    download_mnist(tmp_path, opener=FakeWeb(routes), progress=False, log=None)
    assert_complete(tmp_path, content)
    for name in ALL_FILES:  # stored as served, not recompressed
        assert (tmp_path / f"{name}.gz").read_bytes() == routes[M1 + f"{name}.gz"]


def test_progress_bar_without_content_length(content, tmp_path, capsys):
    routes = {M1 + f"{name}.gz": (lambda b=gzip_bytes(raw): FakeResponse(b, length=None))
              for name, raw in content.items()}
    download_mnist(tmp_path, opener=FakeWeb(routes), progress=True, log=None)
    assert_complete(tmp_path, content)
    assert "train-images-idx3-ubyte.gz" in capsys.readouterr().err  # the tqdm bar


# --------------------------------------------------------------- failure, cleanup
def test_all_mirrors_fail_lists_each_and_leaves_nothing(content, tmp_path):
    name = "train-images-idx3-ubyte"
    routes = {M1 + f"{name}.gz": forbidden(M1 + f"{name}.gz"),
              M2 + f"{name}.gz": urllib.error.URLError("Name or service not known"),
              M3 + f"{name}.gz": corrupted(content[name])}
    with pytest.raises(DownloadError) as err:
        download_mnist(tmp_path, opener=FakeWeb(routes), progress=False, log=None)
    msg = str(err.value)
    assert "\n" not in msg and f"could not download {name}.gz" in msg
    assert f"{M1}{name}.gz: HTTP 403 Forbidden" in msg
    assert f"{M2}{name}.gz: URL error: Name or service not known" in msg
    assert f"{M3}{name}.gz: MD5 of decompressed content is" in msg
    assert os.listdir(tmp_path) == []


def test_failure_on_a_later_file_keeps_completed_files_only(content, tmp_path):
    routes = good_routes(content, M1)
    del routes[M1 + "t10k-images-idx3-ubyte.gz"]  # 404 everywhere
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_mnist(tmp_path, opener=FakeWeb(routes), progress=False, log=None)
    assert_complete(tmp_path, content, names=ALL_FILES[:2])


def test_timeout_and_connection_errors_try_next_mirror(content, tmp_path):
    routes = good_routes(content, M3)
    for name in content:
        routes[M1 + f"{name}.gz"] = TimeoutError("timed out")
        routes[M2 + f"{name}.gz"] = ConnectionResetError("reset by peer")
    download_mnist(tmp_path, opener=FakeWeb(routes), progress=False, log=None)
    assert_complete(tmp_path, content)


def test_keyboard_interrupt_midway_leaves_nothing_partial(content, tmp_path):
    seen_during_download = []
    victim = "t10k-images-idx3-ubyte"  # third file: the first two are already complete

    def interrupt(pos):
        if pos >= 200:
            seen_during_download.extend(os.listdir(tmp_path))
            raise KeyboardInterrupt

    routes = good_routes(content, M1)
    body = routes[M1 + f"{victim}.gz"]
    routes[M1 + f"{victim}.gz"] = lambda: FakeResponse(body, piece=100, on_read=interrupt)
    with pytest.raises(KeyboardInterrupt):
        download_mnist(tmp_path, opener=FakeWeb(routes), progress=False, log=None)
    # the partial file existed while downloading, and is gone now
    assert any(f.endswith(".part") and victim in f for f in seen_during_download)
    assert_complete(tmp_path, content, names=ALL_FILES[:2])


def test_present_files_skipped_and_corrupt_ones_replaced(content, tmp_path):
    good_gz = "train-images-idx3-ubyte"
    good_raw = "train-labels-idx1-ubyte"
    bad_raw = "t10k-images-idx3-ubyte"
    write_bytes(tmp_path / f"{good_gz}.gz", content[good_gz], gz=True)
    write_bytes(tmp_path / good_raw, content[good_raw])
    write_bytes(tmp_path / bad_raw, content[bad_raw][:-1] + b"\x07")
    web = FakeWeb(good_routes(content, M1))
    actions = download_mnist(tmp_path, opener=web, progress=False, log=None)

    assert web.requests == [M1 + f"{bad_raw}.gz", M1 + "t10k-labels-idx1-ubyte.gz"]
    assert actions[good_gz] == actions[good_raw] == "already present"
    assert actions[bad_raw].startswith("downloaded from")
    assert not (tmp_path / bad_raw).exists()  # the corrupt copy is gone
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"{good_gz}.gz", good_raw, f"{bad_raw}.gz", "t10k-labels-idx1-ubyte.gz"])
    assert download.summary(actions, tmp_path) == (
        f"MNIST ready in {tmp_path}: 2 already present, 2 downloaded (4 files, MD5 verified)")


def test_default_dest_is_the_cache_folder(content, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    download_mnist(opener=FakeWeb(good_routes(content)), progress=False, log=None)
    assert_complete(tmp_path / "minicnn" / "mnist", content)


# ---------------------------------------------------------------------- --source
def mixed_source(folder: Path, content) -> Path:
    write_mnist_dir(folder, {k: v for k, v in content.items() if "images" in k}, gz=True)
    write_mnist_dir(folder, {k: v for k, v in content.items() if "labels" in k}, gz=False)
    return folder


def test_import_from_local_folder(content, tmp_path):
    source = mixed_source(tmp_path / "src", content)
    dest = tmp_path / "dest"
    actions = import_mnist(source, dest, log=None)
    assert sorted(os.listdir(dest)) == sorted(os.listdir(source))
    for f in os.listdir(source):
        assert (dest / f).read_bytes() == (source / f).read_bytes()
    assert all(how.startswith(f"imported from {source}") for how in actions.values())
    assert find_data_dir(dest) == dest
    again = import_mnist(source, dest, log=None)
    assert set(again.values()) == {"already present"}


def test_import_rejects_wrong_file_and_leaves_nothing(content, tmp_path):
    source = mixed_source(tmp_path / "src", content)
    bad = "t10k-labels-idx1-ubyte"
    (source / bad).write_bytes(idx_bytes(np.zeros(10, np.uint8)))
    dest = tmp_path / "dest"
    with pytest.raises(DownloadError) as err:
        import_mnist(source, dest, log=None)
    msg = str(err.value)
    assert str(source / bad) in msg and "MD5 of decompressed content is" in msg
    assert sorted(os.listdir(dest)) == sorted(  # the three good files, nothing else
        f for f in os.listdir(source) if not f.startswith(bad))


def test_import_missing_file_or_folder(content, tmp_path):
    source = mixed_source(tmp_path / "src", content)
    (source / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DownloadError, match="missing train-labels-idx1-ubyte.gz"):
        import_mnist(source, tmp_path / "dest", log=None)
    with pytest.raises(DownloadError, match="not a folder"):
        import_mnist(tmp_path / "nowhere", tmp_path / "dest", log=None)


# ---------------------------------------------------------------------- the script
@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("download_mnist_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_import(script, content, tmp_path, capsys):
    source = mixed_source(tmp_path / "src", content)
    dest = tmp_path / "dest"
    assert script.main(["--source", str(source), "--dest", str(dest), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out == f"MNIST ready in {dest}: 4 imported (4 files, MD5 verified)\n"
    assert err == ""
    assert find_data_dir(dest) == dest


def test_script_download_into_default_cache(script, content, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert script.main(["-q"], opener=FakeWeb(good_routes(content, M2))) == 0
    dest = tmp_path / "minicnn" / "mnist"
    assert capsys.readouterr().out == f"MNIST ready in {dest}: 4 downloaded (4 files, MD5 verified)\n"
    assert_complete(dest, content)


def test_script_verbose_output_lists_files(script, content, tmp_path, capsys):
    assert script.main(["--dest", str(tmp_path)], opener=FakeWeb(good_routes(content))) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith(f"MNIST ready in {tmp_path}: 4 downloaded")
    assert sum("MD5 verified" in line for line in out[:-1]) == 4


def one_line_error(capsys) -> str:
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.count("\n") == 1
    return err


def test_script_download_failure_is_one_line(script, content, tmp_path, capsys):
    assert script.main(["--dest", str(tmp_path), "-q"], opener=FakeWeb({})) == 1
    err = one_line_error(capsys)
    assert err.startswith("error: could not download train-images-idx3-ubyte.gz")
    assert all(m in err for m in MIRRORS)
    assert os.listdir(tmp_path) == []


def test_script_import_failure_is_one_line(script, content, tmp_path, capsys):
    source = mixed_source(tmp_path / "src", content)
    (source / "t10k-labels-idx1-ubyte").write_bytes(b"not MNIST")
    assert script.main(["--source", str(source), "--dest", str(tmp_path / "dest"), "-q"]) == 1
    assert "MD5 of decompressed content is" in one_line_error(capsys)


def test_script_source_must_be_an_existing_folder(script, content, tmp_path, capsys):
    """A missing --source is said to be missing (not "not a folder"), a file
    is said to be a file: one line, exit 2 (bad arguments), nothing created."""
    dest = tmp_path / "dest"
    assert script.main(["--source", str(tmp_path / "nowhere"), "--dest", str(dest), "-q"]) == 2
    err = one_line_error(capsys)
    assert err == f"error: --source {tmp_path / 'nowhere'}: does not exist; --source must be a folder " \
                  "holding the MNIST files\n"
    (tmp_path / "afile").write_bytes(b"x")
    assert script.main(["--source", str(tmp_path / "afile"), "--dest", str(dest), "-q"]) == 2
    assert one_line_error(capsys) == f"error: --source {tmp_path / 'afile'}: is a file; --source must be a folder\n"
    assert not dest.exists()


def test_script_dest_must_be_a_folder_checked_before_downloading(script, content, tmp_path, capsys):
    """--dest naming a file, or a path under a file, is refused before any
    request: one line naming --dest (it printed "[Errno 17] File exists")."""
    afile = tmp_path / "afile"
    afile.write_bytes(b"keep me")
    web = FakeWeb(good_routes(content))
    assert script.main(["--dest", str(afile), "-q"], opener=web) == 2
    assert one_line_error(capsys) == f"error: --dest {afile}: is a file; --dest must be a folder\n"
    assert script.main(["--dest", str(afile / "sub"), "-q"], opener=web) == 2
    assert one_line_error(capsys) == (f"error: --dest {afile / 'sub'}: cannot be created: {afile} is a file; "
                                      "--dest must be a folder\n")
    source = mixed_source(tmp_path / "src", content)
    assert script.main(["--source", str(source), "--dest", str(afile), "-q"]) == 2
    assert "--dest" in one_line_error(capsys)
    assert web.requests == [] and afile.read_bytes() == b"keep me"


def test_script_default_dest_that_is_a_file_is_named(script, content, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "minicnn").mkdir()
    (tmp_path / "minicnn" / "mnist").write_bytes(b"x")
    assert script.main(["-q"], opener=FakeWeb(good_routes(content))) == 2
    err = one_line_error(capsys)
    assert err.startswith(f"error: the default folder {tmp_path / 'minicnn' / 'mnist'} (no --dest given): is a file")


def test_script_interrupt_exit_code(script, content, tmp_path, capsys):
    def interrupted(request, timeout=None):
        raise KeyboardInterrupt

    assert script.main(["--dest", str(tmp_path), "-q"], opener=interrupted) == 130
    assert "interrupted" in one_line_error(capsys)
    assert os.listdir(tmp_path) == []


def test_script_usage_errors(script, capsys):
    assert script.main(["--no-such-option"]) == 2
    assert "usage:" in capsys.readouterr().err
    assert script.main(["--timeout", "soon"]) == 2
    assert "argument --timeout: expected a number of seconds > 0, got 'soon'" in capsys.readouterr().err
    assert script.main(["--help"]) == 0
    assert "--source" in capsys.readouterr().out


@pytest.mark.parametrize("value", ["-1", "0", "-0", "nan", "inf", "-inf", "1e-400"])
def test_script_timeout_must_be_a_finite_positive_number(script, content, tmp_path, capsys, value):
    """-1 gave a ValueError traceback from the socket, 0 failed every mirror
    ("Operation now in progress"), nan and inf were accepted: argparse
    refuses each, naming --timeout, and nothing is fetched."""
    web = FakeWeb(good_routes(content))
    assert script.main([f"--timeout={value}", "--dest", str(tmp_path), "-q"], opener=web) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and "Traceback" not in err
    assert err.splitlines()[-1] == (f"download_mnist.py: error: argument --timeout: "
                                    f"expected a number of seconds > 0, got {value!r}")
    assert web.requests == [] and os.listdir(tmp_path) == []


def test_script_passes_a_valid_timeout_on(script, content, tmp_path):
    web = FakeWeb(good_routes(content))
    assert script.main(["--timeout", "0.5", "--dest", str(tmp_path), "-q"], opener=web) == 0
    assert web.timeouts == [0.5] * 4


def test_script_runs_as_a_file_from_anywhere(content, tmp_path):
    """`python data_scripts/download_mnist.py` works from a checkout without install.

    MD5 table patching does not reach a subprocess, so this uses a wrong file
    and checks the refusal: exit 1, one line, nothing left in dest."""
    source = mixed_source(tmp_path / "src", content)
    dest = tmp_path / "dest"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--source", str(source),
                             "--dest", str(dest), "-q"],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "MD5 of decompressed content is" in result.stderr
    assert os.listdir(dest) == []


# ------------------------------------------------------------ real MNIST (CI only)
REAL = os.environ.get("MINICNN_DATA")


@pytest.mark.skipif(not REAL, reason="set MINICNN_DATA to a folder with real MNIST")
def test_real_mnist_source_import(script, tmp_path, capsys):
    assert script.main(["--source", REAL, "--dest", str(tmp_path), "-q"]) == 0
    assert "4 imported" in capsys.readouterr().out
    assert find_data_dir(tmp_path) == tmp_path
    for name in ALL_FILES:
        path = tmp_path / f"{name}.gz"
        assert path.read_bytes() == (Path(REAL) / f"{name}.gz").read_bytes()
        assert check_file(path, name) is None
    assert sorted(os.listdir(tmp_path)) == sorted(GZ)
