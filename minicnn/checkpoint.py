"""Checkpoints: an ``.npz`` of arrays plus the architecture as JSON.

Format (version 1)::

    __meta__          uint8 array holding UTF-8 JSON:
                      {"format": "minicnn-checkpoint", "version": 1,
                       "architecture": model.config(), "extra": {...}}
    param/<name>      one array per model parameter (e.g. param/conv2d.W)
    optim/<key>       optimiser state (optional), see Optimizer.state_arrays

Safety: files are written to a temporary file beside the target and
renamed into place (atomic on POSIX), and always read with
``np.load(..., allow_pickle=False)``, so loading a checkpoint can never
execute code.  Every array's shape is checked against the architecture.
"""
from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile

import numpy as np

from minicnn.model import model_from_config

FORMAT = "minicnn-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file."""


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file + rename, so a crash
    never leaves a half-written file under the final name."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save(path: str, model, optimizer=None, extra: dict | None = None) -> None:
    """Save ``model`` (architecture + weights), optionally the optimiser
    state and an ``extra`` JSON-able dict (training position, RNG states)."""
    meta = {"format": FORMAT, "version": VERSION, "architecture": model.config(),
            "extra": extra or {}}
    arrays = {"__meta__": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
    for name, p in model.named_params():
        arrays[f"param/{name}"] = p
    if optimizer is not None:
        for k, v in optimizer.state_arrays().items():
            arrays[f"optim/{k}"] = np.asarray(v)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read(path: str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read and validate a checkpoint file: ``(meta, arrays)``.  Raises
    FileNotFoundError or :class:`CheckpointError` naming ``path``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:  # raised by numpy for object (pickled) arrays
        raise CheckpointError(f"checkpoint {path}: refused: it holds pickled objects, "
                              f"which could execute code ({e})") from None
    except (zipfile.BadZipFile, OSError, EOFError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: not a readable .npz file "
                              f"(truncated or corrupt?): {e}") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"checkpoint {path}: no __meta__ entry; not a minicnn checkpoint")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: __meta__ is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a {FORMAT} file")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {meta.get('version')!r} "
                              f"is not supported (this minicnn reads version {VERSION})")
    return meta, arrays


def load(path: str):
    """Rebuild the model from ``path`` and fill in its weights.

    Returns ``(model, meta, optim_arrays)``; ``optim_arrays`` holds the
    optimiser state (keys without the ``optim/`` prefix) for
    ``Optimizer.load_state_arrays``.
    """
    meta, arrays = read(path)
    try:
        model = model_from_config(meta["architecture"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: bad architecture: {e}") from None
    expected = dict(model.named_params())
    stored = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    missing = sorted(set(expected) - set(stored))
    unknown = sorted(set(stored) - set(expected))
    if missing or unknown:
        raise CheckpointError(f"checkpoint {path}: parameters do not match the architecture: "
                              f"missing {missing}, unexpected {unknown}")
    for name, p in expected.items():
        v = stored[name]
        if v.shape != p.shape:
            raise CheckpointError(f"checkpoint {path}: parameter {name} has shape {v.shape}, "
                                  f"the architecture needs {p.shape}")
        if v.dtype not in (np.float32, np.float64):
            raise CheckpointError(f"checkpoint {path}: parameter {name} has dtype {v.dtype}, "
                                  "expected float32 or float64")
    if stored:
        model.astype(np.result_type(*stored.values()))
    for name, p in model.named_params():
        p[...] = stored[name]
    optim = {k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}
    return model, meta, optim
