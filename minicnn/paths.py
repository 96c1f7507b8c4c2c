"""Checks on folders given on a command line, made before any work starts,
so that a bad path fails at once with one line instead of after a run.

Used by ``minicnn train`` (``--save``, ``--metrics``), ``minicnn study``
(``--run-dir``), ``data_scripts/download_mnist.py`` (``--dest``) and
``python -m benchmarks`` (``--out``); each caller words its own message
around what these return.
"""
from __future__ import annotations

import os
from pathlib import Path


def file_in_the_way(path) -> Path | None:
    """What stops ``path`` from being a folder, without creating anything:
    ``path`` itself when it exists and is not a folder, else its nearest
    existing ancestor when that is not a folder (``FILE/x``); None when
    ``path`` is a folder or could be created as one."""
    path = Path(path).absolute()
    if path.exists():
        return None if path.is_dir() else path
    parent = next((p for p in path.parents if p.exists()), None)
    return parent if parent is not None and not parent.is_dir() else None


def make_writable_folder(folder) -> str | None:
    """Create ``folder`` (with its parents) if it is missing; None when it
    then is a folder this process can write in, else why not:
    ``"cannot create the folder F: <reason>"`` or ``"the folder F is not
    writable"``."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        return f"cannot create the folder {folder}: {e.strerror or e}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    return None
