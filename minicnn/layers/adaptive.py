"""Adaptive, global and spatial-pyramid pooling: a fixed output size for any input size.

Bins (PyTorch's ``AdaptiveAvgPool2d`` / ``AdaptiveMaxPool2d`` rule): output
index ``i`` of ``out`` bins along an axis of length ``L`` pools the cells
``[floor(i*L/out), ceil((i+1)*L/out))``; for ``L % out != 0`` neighbouring
bins overlap and differ in size.  The kernels are in
:mod:`minicnn.kernels.adaptive`.

Forward / backward::

    avg:  y = mean(x[bin])          dx[bin] += dout / |bin|
    max:  y = max(x[bin])           dx[argmax] += dout
          (first maximum in row-major order wins ties; NaN propagates)

Shapes: ``x : (N, C, H, W)``; adaptive ``y : (N, C, oH, oW)``; global
``y : (N, C)``; pyramid ``y : (N, C * sum(l*l for l in levels))``.
"""
from __future__ import annotations

import numbers

import numpy as np

from minicnn.kernels.adaptive import (adaptive_avg_backward, adaptive_avg_forward,
                                      adaptive_max_forward, adaptive_max_merge,
                                      argmax_backward, pyramid_max_backward)
from minicnn.layers.base import Layer, flag
from minicnn.threads import run_kernel

MERGE_WORK_PER_CELL = 4
"""The pyramid's merge weighs each fine cell it reads as this many
elements for :func:`~minicnn.threads.run_kernel`'s serial/parallel choice
(``PARALLEL_MIN_SIZE`` elements): a merge compares (value, index) pairs
under the NaN and tie rule, several operations per cell, so threads pay
off on far fewer cells than for an elementwise kernel.  Measured on the
2-core VM, 2026-11-24, halving merges with a numpy reduction between calls
(medians of 350), serial -> 2 threads: 2048 fine cells 9.7 -> 20.2 us,
4096 22.4 -> 23.7 us, 8192 22.5-27.1 -> 26.1-28.3 us, 16384 41.4-51.9 ->
35.8-40.2 us, 65536 293 -> 132 us.  The crossover lies between 8K and 16K
cells; the factor 4 puts the switch at 8K (``4 * 8K = PARALLEL_MIN_SIZE``).
The pyramid's 2x2 -> 1x1 merge on 64x64x14x14 planes (16384 fine cells)
was serial before; the pyramid's forward there (levels 1, 2, 4), old and
new alternating in one process (medians of 270): 1263-1265 -> 1185-1212 us."""


def adaptive_output_size(value, layer: str) -> tuple:
    """Validate ``output_size``: an int or an ``(h, w)`` pair whose entries
    are ints or ``None`` (``None`` keeps that input dimension, as in
    PyTorch).  Returns ``(h, w)``; TypeError / ValueError name ``layer``."""
    def ok(v):
        return v is None or (isinstance(v, numbers.Integral) and not isinstance(v, bool))

    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        hw = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(ok(v) for v in value):
        hw = tuple(None if v is None else int(v) for v in value)
    else:
        raise TypeError(f"{layer}: output_size must be an int or a pair of ints/None, "
                        f"got {value!r}")
    if any(v is not None and v <= 0 for v in hw):
        raise ValueError(f"{layer}: output_size must be > 0, got {value!r}")
    return hw


def _resolve(hw, H, W):
    """Replace ``None`` entries of an output size by the input size."""
    return (H if hw[0] is None else hw[0], W if hw[1] is None else hw[1])


def _check_nonempty(layer, x):
    """Every bin must hold a cell: H, W >= 1.  (PyTorch raises for an empty
    plane too, except that its 1x1 average of one is NaN: docs/pooling.md.)"""
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{layer}: input spatial size must be non-empty, got shape {x.shape}")
    return x


def _avg(x, oh, ow):
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    run_kernel(adaptive_avg_forward, np.ascontiguousarray(x), out)
    return out


def _avg_backward(dout, x_shape, dtype):
    dx = np.empty(x_shape, dtype)
    run_kernel(adaptive_avg_backward, np.ascontiguousarray(dout, dtype=dtype), dx)
    return dx


def _max(x, oh, ow):
    out = np.empty(x.shape[:2] + (oh, ow), x.dtype)
    argmax = np.empty(out.shape, np.int64)
    run_kernel(adaptive_max_forward, np.ascontiguousarray(x), out, argmax)
    return out, argmax


def _max_backward(dout, argmax, x_shape, dtype):
    dx = np.empty(x_shape, dtype)
    run_kernel(argmax_backward, np.ascontiguousarray(dout, dtype=dtype), argmax, dx)
    return dx


class AdaptiveAvgPool2D(Layer):
    """AdaptiveAvgPool2D(output_size): average over adaptive bins.

    ``output_size``: int or (h, w); ``None`` in the pair keeps that input
    dimension.  ``(N, C, H, W) -> (N, C, oH, oW)``.
    Backward: ``dx[bin] += dout / |bin|`` (cells in overlapping bins sum).
    """

    def __init__(self, output_size, name=None):
        super().__init__(name)
        self.output_size = adaptive_output_size(output_size, self.name)
        self._x_shape = None

    def config(self):
        return {"output_size": list(self.output_size)}

    def forward(self, x):
        x = _check_nonempty(self.name, self._as_input(x, 4))
        oh, ow = _resolve(self.output_size, *x.shape[2:])
        self._x_shape, self._dtype_used = x.shape, x.dtype
        return _avg(x, oh, ow)

    def backward(self, dout):
        self._need_forward("_x_shape")
        N, C, H, W = self._x_shape
        dout = self._check_dout(dout, (N, C) + _resolve(self.output_size, H, W))
        return _avg_backward(dout, self._x_shape, self._dtype_used)


class AdaptiveMaxPool2D(Layer):
    """AdaptiveMaxPool2D(output_size, return_indices=False): max over adaptive bins.

    ``(N, C, H, W) -> (N, C, oH, oW)``; with ``return_indices=True`` forward
    returns ``(y, indices)``, ``indices`` the flat in-plane index
    ``h * W + w`` of each maximum (int64, PyTorch's convention), and
    ``backward`` still takes the gradient of ``y`` only.
    Ties: first maximum in row-major order; NaN propagates.
    Backward: ``dx[argmax] += dout``.
    """

    def __init__(self, output_size, return_indices=False, name=None):
        super().__init__(name)
        self.output_size = adaptive_output_size(output_size, self.name)
        self.return_indices = flag(self.name, "return_indices", return_indices)
        self._argmax = None

    def config(self):
        return {"output_size": list(self.output_size), "return_indices": self.return_indices}

    def forward(self, x):
        x = _check_nonempty(self.name, self._as_input(x, 4))
        oh, ow = _resolve(self.output_size, *x.shape[2:])
        y, self._argmax = _max(x, oh, ow)
        self._x_shape, self._dtype_used = x.shape, x.dtype
        return (y, self._argmax.copy()) if self.return_indices else y

    def backward(self, dout):
        self._need_forward("_argmax")
        dout = self._check_dout(dout, self._argmax.shape)
        return _max_backward(dout, self._argmax, self._x_shape, self._dtype_used)


class GlobalAvgPool2D(Layer):
    """GlobalAvgPool2D(): mean over each (H, W) plane, ``(N, C, H, W) -> (N, C)``.

    Adaptive average pooling to 1x1, flattened.  Backward:
    ``dx[n, c, :, :] = dout[n, c] / (H * W)``; ``dout`` has shape (N, C).
    """

    def __init__(self, name=None):
        super().__init__(name)
        self._x_shape = None

    def forward(self, x):
        x = _check_nonempty(self.name, self._as_input(x, 4))
        self._x_shape, self._dtype_used = x.shape, x.dtype
        return _avg(x, 1, 1).reshape(x.shape[:2])

    def backward(self, dout):
        self._need_forward("_x_shape")
        N, C = self._x_shape[:2]
        dout = self._check_dout(dout, (N, C))
        return _avg_backward(dout.reshape(N, C, 1, 1), self._x_shape, self._dtype_used)


class GlobalMaxPool2D(Layer):
    """GlobalMaxPool2D(): max over each (H, W) plane, ``(N, C, H, W) -> (N, C)``.

    Adaptive max pooling to 1x1, flattened (first maximum wins ties; NaN
    propagates).  Backward: ``dx[n, c].flat[argmax] = dout[n, c]``; ``dout``
    has shape (N, C).
    """

    def __init__(self, name=None):
        super().__init__(name)
        self._argmax = None

    def forward(self, x):
        x = _check_nonempty(self.name, self._as_input(x, 4))
        y, self._argmax = _max(x, 1, 1)
        self._x_shape, self._dtype_used = x.shape, x.dtype
        return y.reshape(x.shape[:2])

    def backward(self, dout):
        self._need_forward("_argmax")
        N, C = self._x_shape[:2]
        dout = self._check_dout(dout, (N, C))
        return _max_backward(dout.reshape(N, C, 1, 1), self._argmax, self._x_shape,
                             self._dtype_used)


class SpatialPyramidPool2D(Layer):
    """SpatialPyramidPool2D(levels=(1, 2, 4), mode="max"), after He et al. 2014 (SPPNet).

    For each level ``l`` (in the given order) the input is adaptively
    pooled to ``l x l`` and flattened per sample; the pieces are
    concatenated::

        y = concat_l( adaptive_pool(x, (l, l)).reshape(N, C*l*l) )

    so ``(N, C, H, W) -> (N, C * sum(l*l))`` (21*C for levels 1, 2, 4) for
    any ``H, W >= max(levels)``.  Feature order: level by level; inside a
    level channel-major, ``c*l*l + i*l + j`` (``torch.flatten(pooled, 1)``).
    Backward: each level's slice of ``dout`` goes through that level's
    adaptive backward; the input gradients of the levels are summed.
    Max mode computes the same values in fewer passes: levels are taken
    from the largest down, and a level that divides one already computed is
    merged from the smallest such level's result (``adaptive_max_merge``:
    4 -> 2 -> 1); one kernel routes every level's gradient
    (``pyramid_max_backward``).
    """

    def __init__(self, levels=(1, 2, 4), mode="max", name=None):
        super().__init__(name)
        if not isinstance(levels, (tuple, list)) or not all(
                isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in levels):
            raise TypeError(f"{self.name}: levels must be a tuple of ints, got {levels!r}")
        if len(levels) == 0 or min(levels) <= 0:
            raise ValueError(f"{self.name}: levels must be a non-empty tuple of ints > 0, "
                             f"got {levels!r}")
        if mode not in ("max", "avg"):
            raise ValueError(f"{self.name}: mode must be 'max' or 'avg', got {mode!r}")
        self.levels = tuple(int(v) for v in levels)
        self.mode = mode
        self._x_shape = None
        self._argmax = None

    def config(self):
        return {"levels": list(self.levels), "mode": self.mode}

    @property
    def features_per_channel(self) -> int:
        """``sum(l*l for l in levels)``: the output has ``C`` times this many features."""
        return sum(v * v for v in self.levels)

    def forward(self, x):
        x = _check_nonempty(self.name, self._as_input(x, 4))
        N, C, H, W = x.shape
        top = max(self.levels)
        if H < top or W < top:
            raise ValueError(f"{self.name}: input spatial size {(H, W)} is smaller than the "
                             f"largest pyramid level {top} (levels={self.levels}); "
                             f"need H, W >= {top}")
        x = np.ascontiguousarray(x)
        self._x_shape, self._dtype_used = x.shape, x.dtype
        if self.mode == "avg":
            return np.concatenate([_avg(x, v, v).reshape(N, C * v * v) for v in self.levels],
                                  axis=1)
        # max: one pass over x for the largest level; a level that divides a
        # level already done is merged from the smallest such (its bins are
        # unions of that level's bins): 4 -> 2 -> 1
        fine = {}
        for v in sorted(set(self.levels), reverse=True):
            finer = [u for u in fine if u % v == 0]
            if finer:
                u = min(finer)
                y = np.empty((N, C, v, v), x.dtype)
                argmax = np.empty(y.shape, np.int64)
                run_kernel(adaptive_max_merge, fine[u][0], fine[u][1], y, argmax,
                           size=MERGE_WORK_PER_CELL * fine[u][0].size)
                fine[v] = y, argmax
            else:
                fine[v] = _max(x, v, v)
        y = np.concatenate([fine[v][0].reshape(N, C * v * v) for v in self.levels], axis=1)
        self._argmax = np.concatenate([fine[v][1].reshape(N, C * v * v) for v in self.levels],
                                      axis=1)
        return y

    def backward(self, dout):
        self._need_forward("_x_shape")
        N, C = self._x_shape[:2]
        dout = self._check_dout(dout, (N, C * self.features_per_channel))
        if self.mode == "max":
            dx = np.empty(self._x_shape, self._dtype_used)
            run_kernel(pyramid_max_backward, np.ascontiguousarray(dout, dtype=self._dtype_used),
                       self._argmax, np.array(self.levels, np.int64), dx)
            return dx
        dx = np.zeros(self._x_shape, self._dtype_used)
        start = 0
        for v in self.levels:
            d = dout[:, start:start + C * v * v].reshape(N, C, v, v)
            start += C * v * v
            dx += _avg_backward(d, self._x_shape, self._dtype_used)
        return dx
