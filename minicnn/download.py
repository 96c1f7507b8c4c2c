"""Get the four MNIST files: download them from mirrors, or import them from a local folder.

Safety rules, for both ways in:

* every file is checked against the MD5 of its *decompressed* content
  (:data:`MNIST_MD5`), so a recompressed ``.gz`` or a raw copy verifies too;
* a file is written to a temporary file in the destination folder, verified,
  and only then renamed to its final name with ``os.replace`` (atomic); the
  temporary file is removed in a ``finally`` on any failure, including
  ``KeyboardInterrupt``, so nothing partial is ever left behind;
* files already present that verify are skipped.

The URL opener is a parameter (``opener``, default ``urllib.request.urlopen``)
so tests fake the network.  Nothing here runs at import time.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import BinaryIO, Callable

from tqdm import tqdm

from minicnn.data import ALL_FILES, default_cache_dir, find_mnist_file, open_maybe_gzip

# Tried in this order.  yann.lecun.com often answers 403 now; it stays as a last resort.
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)

# MD5 of the DECOMPRESSED content of each file (canonical MNIST release).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

USER_AGENT = "minicnn-mnist-downloader"
_CHUNK = 1 << 16


class DownloadError(RuntimeError):
    """MNIST could not be fetched: every mirror failed for a file, or a
    ``--source`` file is missing or fails its checksum.  One-line message."""


class _BadResponse(Exception):
    """A mirror answered, but not with the whole file."""


# ---------------------------------------------------------------------- checking
def content_md5(path) -> str:
    """MD5 (hex) of the file's content, decompressed first if it is gzipped."""
    digest = hashlib.md5(usedforsecurity=False)
    with open_maybe_gzip(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_file(path, name: str) -> str | None:
    """None if ``path`` holds MNIST file ``name`` (MD5 of decompressed content
    matches :data:`MNIST_MD5`), else a one-line reason why not."""
    try:
        found = content_md5(path)
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        return f"unreadable or corrupt gzip ({type(exc).__name__}: {exc})"
    expected = MNIST_MD5[name]
    if found != expected:
        return f"MD5 of decompressed content is {found}, expected {expected}"
    return None


def _write_verified(final: Path, name: str, fill: Callable[[BinaryIO], None]) -> str | None:
    """Write a temporary file next to ``final`` with ``fill(out)``, verify it as
    MNIST file ``name`` and ``os.replace`` it to ``final``.

    Returns None when installed, else the reason it was rejected.  Exceptions
    from ``fill`` propagate.  The temporary file never outlives this call.
    """
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    installed = False
    try:
        with os.fdopen(fd, "wb") as out:
            fill(out)
        problem = check_file(tmp, name)
        if problem is None:
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; data files are world-readable
            os.replace(tmp, final)
            installed = True
        return problem
    finally:
        if not installed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _fetch_all(dest, fetch_one: Callable[[str, Path], tuple[Path, str]], log) -> dict[str, str]:
    """For each MNIST file: skip it if present and verified, else ``fetch_one(name, dest)``
    -> (installed path, how).  Returns ``{name: how it got there}``."""
    dest = default_cache_dir() if dest is None else Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    log = log or (lambda message: None)
    actions = {}
    for name in ALL_FILES:
        existing = find_mnist_file(dest, name)  # the copy load_mnist would read
        problem = None if existing is None else check_file(existing, name)
        if existing is not None and problem is None:
            actions[name] = "already present"
            continue
        if existing is not None:
            log(f"{existing}: {problem}; fetching a fresh copy")
        installed, actions[name] = fetch_one(name, dest)
        log(f"{installed.name}: {actions[name]}, MD5 verified")
        for other in (dest / f"{name}.gz", dest / name):  # drop a stale copy under the other name
            if other != installed and other.is_file() and check_file(other, name) is not None:
                other.unlink()
                log(f"{other}: removed (failed its checksum)")
    return actions


def summary(actions: dict[str, str], dest) -> str:
    """One line, e.g. ``MNIST ready in DIR: 3 downloaded, 1 already present``."""
    counts: dict[str, int] = {}
    for how in actions.values():
        verb = how.split(" ")[0] if how != "already present" else how
        counts[verb] = counts.get(verb, 0) + 1
    parts = ", ".join(f"{k} {verb}" for verb, k in counts.items())
    return f"MNIST ready in {dest}: {parts} ({len(actions)} files, MD5 verified)"


# ------------------------------------------------------------------- downloading
def _stream(url: str, out: BinaryIO, opener, timeout: float, progress: bool) -> None:
    """Copy the body at ``url`` into ``out`` with a tqdm byte counter."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    with opener(request, timeout=timeout) as response:
        length = getattr(response, "headers", {}).get("Content-Length")
        total = int(length) if length and str(length).isdigit() else None
        got = 0
        with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                  desc=url.rsplit("/", 1)[-1], disable=not progress, leave=False) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                got += len(chunk)
                bar.update(len(chunk))
    if total is not None and got != total:
        raise _BadResponse(f"incomplete body: {got} of {total} bytes")


def _download_one(filename: str, name: str, dest: Path, mirrors, opener, timeout, progress,
                  log) -> str:
    """Try each mirror in turn for ``filename``; return the URL that worked."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            problem = _write_verified(dest / filename, name,
                                      lambda out: _stream(url, out, opener, timeout, progress))
        except urllib.error.HTTPError as exc:
            problem = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            problem = f"URL error: {exc.reason}"
        except (OSError, http.client.HTTPException, _BadResponse) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return url
        failures.append(f"{url}: {problem}")
        if log:
            log(f"{url}: {problem}; discarded")
    raise DownloadError(f"could not download {filename}: all {len(failures)} mirrors failed: "
                        + "; ".join(failures))


def download_mnist(dest=None, *, mirrors=MIRRORS, opener=None, timeout: float = 60.0,
                   progress: bool = True, log: Callable[[str], None] | None = print
                   ) -> dict[str, str]:
    """Download the four ``.gz`` files into ``dest`` (default: the cache folder).

    Mirrors are tried in order per file; a failed or unverifiable download is
    discarded and the next mirror tried.  ``opener(request, timeout=...)``
    returns a response with ``read(n)`` and ``headers`` (default
    ``urllib.request.urlopen``).  Returns ``{name: "already present" |
    "downloaded from URL"}``; raises :class:`DownloadError` listing every
    mirror's failure when none works for a file.
    """
    opener = opener or urllib.request.urlopen
    if not mirrors:
        raise ValueError("no mirrors given")

    def fetch_one(name: str, folder: Path) -> tuple[Path, str]:
        url = _download_one(f"{name}.gz", name, folder, mirrors, opener, timeout, progress, log)
        return folder / f"{name}.gz", f"downloaded from {url}"

    return _fetch_all(dest, fetch_one, log)


# --------------------------------------------------------------------- importing
def import_mnist(source, dest=None, *, log: Callable[[str], None] | None = print
                 ) -> dict[str, str]:
    """Copy the four files from a local folder ``source`` (``name.gz`` or raw
    ``name``) into ``dest`` (default: the cache folder), verifying each.

    Returns ``{name: "already present" | "imported from PATH"}``; raises
    :class:`DownloadError` when a source file is missing or fails its checksum.
    """
    source = Path(source).expanduser()
    if not source.is_dir():
        raise DownloadError(f"--source {source}: not a folder")

    def fetch_one(name: str, folder: Path) -> tuple[Path, str]:
        src = find_mnist_file(source, name)
        if src is None:
            raise DownloadError(f"{source}: missing {name}.gz (or raw {name})")
        final = folder / src.name

        def copy(out: BinaryIO) -> None:
            with open(src, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)

        problem = _write_verified(final, name, copy)
        if problem is not None:
            raise DownloadError(f"{src}: {problem}; not imported")
        return final, f"imported from {src}"

    return _fetch_all(dest, fetch_one, log)
