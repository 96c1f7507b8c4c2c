"""Download MNIST (or import it from a local folder), verified by MD5.

    python data_scripts/download_mnist.py                  # into ~/.cache/minicnn/mnist
    python data_scripts/download_mnist.py --dest DIR       # into DIR
    python data_scripts/download_mnist.py --source DIR     # offline: import from DIR

A thin command line over :mod:`minicnn.download`, which holds the logic (the
``minicnn train --download`` command uses the same code).  Exit codes: 0 done,
1 failed (one-line message on stderr), 2 bad arguments (argparse's usage
errors, and a ``--dest`` that is not a folder or a ``--source`` that is not an
existing folder, one line, checked before anything is fetched), 130 interrupted.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from minicnn import download
except ModuleNotFoundError as exc:  # a source checkout before `pip install -e .`
    if exc.name != "minicnn":
        raise
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from minicnn import download

from minicnn.cli import number
from minicnn.data import default_cache_dir
from minicnn.paths import file_in_the_way


# seconds, a finite number > 0 (``urlopen`` raises a ValueError below 0, and 0
# makes every connection fail at once)
_timeout = number(float, 0.0, "a number of seconds > 0", strict=True)


def _path_problem(flag: str, path: Path, must_exist: bool, given: bool = True) -> str | None:
    """None if ``path`` is a folder (or, unless ``must_exist``, does not exist
    yet and can be created), else a one-line reason naming ``flag`` (``given``:
    False when ``path`` is the default, not the user's)."""
    where = f"{flag} {path}" if given else f"the default folder {path} (no {flag} given)"
    blocker = file_in_the_way(path)
    if blocker == path.absolute():
        return f"{where}: is a file; {flag} must be a folder"
    if must_exist and not path.is_dir():
        return f"{where}: does not exist; {flag} must be a folder holding the MNIST files"
    if blocker is not None:
        return f"{where}: cannot be created: {blocker} is a file; {flag} must be a folder"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="download_mnist.py",
        description="Download the four MNIST files (or import them from a local folder) "
                    "and verify the MD5 of their decompressed content.")
    parser.add_argument("--dest", type=Path, default=None, metavar="DIR",
                        help=f"folder to put the files in (default: {default_cache_dir()})")
    parser.add_argument("--source", type=Path, default=None, metavar="DIR",
                        help="import from this local folder instead of downloading")
    parser.add_argument("--timeout", type=_timeout, default=60.0, metavar="SECONDS",
                        help="network timeout per request, seconds > 0 (default: 60)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or per-file messages")
    return parser.parse_args(argv)


def main(argv=None, opener=None) -> int:
    """Run the command; ``opener`` replaces ``urllib.request.urlopen`` (tests)."""
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse already printed
        return int(exc.code or 0)
    dest = args.dest.expanduser() if args.dest is not None else default_cache_dir()
    log = None if args.quiet else print
    problem = _path_problem("--dest", dest, must_exist=False, given=args.dest is not None)
    if problem is None and args.source is not None:
        problem = _path_problem("--source", args.source.expanduser(), must_exist=True)
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        if args.source is not None:
            actions = download.import_mnist(args.source, dest, log=log)
        else:
            actions = download.download_mnist(dest, opener=opener, timeout=args.timeout,
                                              progress=not args.quiet, log=log)
    except (download.DownloadError, OSError) as exc:
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: no partial file was left in {dest}", file=sys.stderr)
        return 130
    print(download.summary(actions, dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
