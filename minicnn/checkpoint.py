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
execute code.  Every array's shape is checked against the architecture,
and an architecture declaring far more parameter values than the file
holds is refused before anything is built (:data:`ALLOCATION_SLACK`).
Whatever is wrong with a file, loading it raises :class:`CheckpointError`
naming it (or FileNotFoundError).
"""
from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile

import numpy as np

from minicnn.model import model_from_config

FORMAT = "minicnn-checkpoint"
VERSION = 1
ALLOCATION_SLACK = 1 << 24
"""How many parameter values beyond those stored a saved architecture may
declare before :func:`load` refuses it unbuilt.  Within it the layers are
built and a missing or misshapen array is named; beyond it, a file of a few
bytes could otherwise make ``load`` allocate gigabytes."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file."""


def atomic_write_bytes(path: str, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` via a finished temporary file beside it,
    so a crash never leaves a half-written file under the final name.

    ``replace=True``: the temporary file is renamed over ``path``.
    ``replace=False``: an existing ``path`` is left alone and False is
    returned; the name is claimed with a hard link to the temporary file (so
    two writers cannot both take it), or where the filesystem has no hard
    links, with an exclusive create that the finished file then replaces.
    Returns True when ``path`` now holds ``data``."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
    try:
        umask = os.umask(0)          # mkstemp makes the file 0600; give it open()'s usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:              # no hard links here
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                return False
            os.replace(tmp, path)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path}: is a folder, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(6)
    if head == b"\x93NUMPY":
        raise CheckpointError(f"checkpoint {path}: a single .npy array, not an .npz archive")
    if not head.startswith(b"PK"):      # every zip file (so every .npz) starts with PK
        raise CheckpointError(f"checkpoint {path}: not a minicnn checkpoint (an .npz archive, "
                              f"which starts with the bytes PK; this file starts with {head!r})")
    try:
        with np.load(path, allow_pickle=False) as z:     # a zip (checked above): an NpzFile
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e):    # numpy refuses object arrays without allow_pickle
            raise CheckpointError(f"checkpoint {path}: refused: it holds pickled objects, "
                                  f"which could execute code ({e})") from None
        raise CheckpointError(f"checkpoint {path}: an entry is not a readable array: {e}") from None
    except Exception as e:    # zip, .npy header and I/O errors of a damaged file, of any type
        raise CheckpointError(f"checkpoint {path}: not a readable .npz file "
                              f"(truncated or corrupt?): {type(e).__name__}: {e}") from None
    odd = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if odd:
        raise CheckpointError(f"checkpoint {path}: entries {odd} are not .npy arrays")
    if "__meta__" not in arrays:
        raise CheckpointError(f"checkpoint {path}: no __meta__ entry; not a minicnn checkpoint")
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path}: __meta__ is not valid JSON: {e}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: not a {FORMAT} file")
    version = meta.get("version")
    if type(version) is not int or version != VERSION:
        raise CheckpointError(f"checkpoint {path}: format version {version!r} "
                              f"is not supported (this minicnn reads version {VERSION})")
    if not isinstance(meta.get("architecture"), dict) or not isinstance(meta.get("extra", {}), dict):
        raise CheckpointError(f"checkpoint {path}: __meta__ needs an 'architecture' object "
                              "(and 'extra', if present, an object)")
    meta.setdefault("extra", {})
    return meta, arrays


def _declared_param_values(architecture: dict) -> int:
    """How many parameter values the layers of a saved architecture would
    allocate (``Layer.param_shapes`` of each layer's config), counted before
    any is built, so that a crafted file cannot make :func:`load` allocate
    more than the file holds.  Layers whose config is malformed count 0:
    building them reports the error."""
    from minicnn.layers import LAYERS

    specs = architecture.get("layers") or architecture.get("nodes") or []
    total = 0
    for spec in specs if isinstance(specs, list) else []:
        cls = LAYERS.get(spec.get("class")) if isinstance(spec, dict) else None
        config = spec.get("config") if cls is not None else None
        if not isinstance(config, dict):
            continue
        try:
            kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
            for shape in cls.param_shapes(**kwargs).values():
                if all(isinstance(d, int) and d > 0 for d in shape):
                    total += math.prod(shape)
        except (TypeError, ValueError):
            continue
    return total


def load(path: str):
    """Rebuild the model from ``path`` and fill in its weights.

    Returns ``(model, meta, optim_arrays)``; ``optim_arrays`` holds the
    optimiser state (keys without the ``optim/`` prefix) for
    ``Optimizer.load_state_arrays``.
    """
    meta, arrays = read(path)
    stored = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    declared = _declared_param_values(meta["architecture"])
    stored_values = sum(v.size for v in stored.values())
    if declared > stored_values + ALLOCATION_SLACK:
        raise CheckpointError(f"checkpoint {path}: the architecture declares {declared:,} parameter "
                              f"values, the file holds {stored_values:,}")
    try:
        model = model_from_config(meta["architecture"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: bad architecture: {e}") from None
    except MemoryError:
        raise CheckpointError(f"checkpoint {path}: its architecture is too large to build "
                              "in this machine's memory") from None
    expected = dict(model.named_params())
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
