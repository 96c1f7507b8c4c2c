"""Translation robustness and variable-size input, for the pooling study.

Shifts.  ``shift_images(x, dy, dx)`` moves every image ``dy`` rows down and
``dx`` columns right (negative: up / left); the pixels that come in from the
border take the *background* value.  MNIST arrays from ``load_mnist`` are
normalised, ``(p / 255 - 0.1307) / 0.3081``, so a black (p = 0) pixel is
``BACKGROUND = -0.1307 / 0.3081 ~ -0.4242``, not 0: filling with 0 would draw
a faint grey border that no training image has.

Directions: the 8 compass directions, ``(dy, dx)`` in {-1, 0, 1}^2 minus
(0, 0), times the distance d = 1, 2, 3 (a diagonal shift at distance d moves
d rows *and* d columns).  Per distance we report the accuracy averaged over
the 8 directions and the fraction of predictions equal to the prediction on
the unshifted image ("unchanged").

Canvases.  ``to_canvas(x, size, mode)`` puts 28x28 digits on a size x size
canvas: ``"pad"`` centres the digit on background (a size < 28 crops the
border, which in MNIST is background anyway); ``"rescale"`` resizes the
whole image bilinearly (half-pixel centres, PyTorch's
``align_corners=False``).
"""
from __future__ import annotations

import numpy as np

from minicnn.data import MNIST_MEAN, MNIST_STD
from minicnn.train import predict

# the normalised value of a black pixel, computed in float32 exactly as load_mnist does
BACKGROUND = float((np.float32(0) - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD))

DIRECTIONS = {"N": (-1, 0), "NE": (-1, 1), "E": (0, 1), "SE": (1, 1),
              "S": (1, 0), "SW": (1, -1), "W": (0, -1), "NW": (-1, -1)}
DISTANCES = (1, 2, 3)


def shift_images(x: np.ndarray, dy: int, dx: int, fill: float = BACKGROUND) -> np.ndarray:
    """x: (N, C, H, W) -> same shape, content moved ``dy`` rows down and ``dx``
    columns right; vacated pixels = ``fill``.  ``out[.., r, c] = x[.., r - dy, c - dx]``."""
    N, C, H, W = x.shape
    out = np.full_like(x, fill)
    if abs(dy) >= H or abs(dx) >= W:
        return out
    out[..., max(dy, 0):H + min(dy, 0), max(dx, 0):W + min(dx, 0)] = \
        x[..., max(-dy, 0):H + min(-dy, 0), max(-dx, 0):W + min(-dx, 0)]
    return out


def all_shifts(distances=DISTANCES):
    """[(distance, direction name, dy, dx)]: 8 directions per distance."""
    return [(d, name, d * uy, d * ux) for d in distances for name, (uy, ux) in DIRECTIONS.items()]


def shift_robustness(model, x, y, distances=DISTANCES, batch_size: int = 500) -> dict:
    """Accuracy and unchanged-prediction fraction under every shift.

    Returns ``{"clean_accuracy": a, "distances": {d: {"accuracy", "unchanged",
    "directions": {name: {"accuracy", "unchanged"}}}}}`` (fractions in [0, 1];
    per distance the mean over the 8 directions)."""
    base = predict(model, x, batch_size)
    out = {"clean_accuracy": float(np.mean(base == y)), "distances": {}}
    for d, name, dy, dx in all_shifts(distances):
        p = predict(model, shift_images(x, dy, dx), batch_size)
        per = out["distances"].setdefault(str(d), {"directions": {}})["directions"]
        per[name] = {"accuracy": float(np.mean(p == y)), "unchanged": float(np.mean(p == base))}
    for entry in out["distances"].values():
        dirs = entry["directions"].values()
        entry["accuracy"] = float(np.mean([v["accuracy"] for v in dirs]))
        entry["unchanged"] = float(np.mean([v["unchanged"] for v in dirs]))
    return out


# ----------------------------------------------------------------- canvases
def _resize_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights, half-pixel centres:
    source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, clamped to the edge."""
    src = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    w = src - lo
    R = np.zeros((n_out, n_in))
    np.add.at(R, (np.arange(n_out), lo), 1 - w)
    np.add.at(R, (np.arange(n_out), hi), w)
    return R


def to_canvas(x: np.ndarray, size: int, mode: str = "pad", fill: float = BACKGROUND) -> np.ndarray:
    """x: (N, C, H, W) -> (N, C, size, size): centred on background (``pad``)
    or bilinearly resized (``rescale``)."""
    N, C, H, W = x.shape
    if mode == "rescale":
        Rh, Rw = _resize_matrix(size, H), _resize_matrix(size, W)
        return np.einsum("ih,nchw,jw->ncij", Rh, x, Rw, optimize=True).astype(x.dtype)
    if mode != "pad":
        raise ValueError(f"mode must be 'pad' or 'rescale', got {mode!r}")
    out = np.full((N, C, size, size), fill, x.dtype)
    # offsets of the source inside the canvas (negative: the source is cropped)
    oy, ox = (size - H) // 2, (size - W) // 2
    sy, sx = max(-oy, 0), max(-ox, 0)
    ty, tx = max(oy, 0), max(ox, 0)
    h, w = min(H - sy, size - ty), min(W - sx, size - tx)
    out[:, :, ty:ty + h, tx:tx + w] = x[:, :, sy:sy + h, sx:sx + w]
    return out


def canvas_accuracy(model, x, y, sizes, modes=("pad", "rescale"), batch_size: int = 500) -> dict:
    """``{mode: {size: accuracy}}`` of ``model`` on digits placed on canvases."""
    return {mode: {str(s): float(np.mean(predict(model, to_canvas(x, s, mode), batch_size) == y))
                   for s in sizes} for mode in modes}


def fixed_size_error(model, x, size: int = 32) -> str:
    """Feed ``model`` (built for 28x28) ``size`` x ``size`` canvases and return
    the error line for the report: ``fixed-size model on 32×32: ValueError: ...``."""
    try:
        predict(model, to_canvas(x[:2], size, "pad"))
    except ValueError as e:
        return f"fixed-size model on {size}×{size}: ValueError: {e}"
    return f"fixed-size model on {size}×{size}: no error (unexpected)"
