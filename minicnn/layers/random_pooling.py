"""Pooling with random windows or random picks: stochastic and fractional max pooling.

Both layers own a seeded ``np.random.Generator`` (``seed`` argument,
``reseed(seed)`` to restart it) and draw fresh randomness on every forward
call; the kernels in :mod:`minicnn.kernels.random_pooling` receive the
draws as arrays and are deterministic.

* ``StochasticPool2D`` (Zeiler & Fergus 2013): training samples one cell per
  window with probability ``p_m = a_m / sum(a)``; evaluation outputs the
  expectation ``sum(p_m a_m) = sum(a^2) / sum(a)``.
* ``FractionalMaxPool2D`` (Graham 2014, PyTorch's ``FractionalMaxPool2d``):
  max pooling over pseudo-random, overlapping windows whose count is set by
  ``output_size`` or ``output_ratio`` rather than by a stride.
"""
from __future__ import annotations

import numbers

import numpy as np

from minicnn.kernels.adaptive import argmax_backward
from minicnn.kernels.random_pooling import (fractional_intervals, fractional_max_forward,
                                            stochastic_pool_eval_backward,
                                            stochastic_pool_eval_forward,
                                            stochastic_pool_forward)
from minicnn.threads import run_kernel
from minicnn.layers.base import Layer, flag
from minicnn.layers.geometry import check_window, pair, window_output_shape


def _check_seed(seed, layer):
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"{layer}: seed must be None or an int, got {seed!r}")
    if seed is not None and seed < 0:
        raise ValueError(f"{layer}: seed must be >= 0, got {seed!r}")
    return None if seed is None else int(seed)


class StochasticPool2D(Layer):
    """StochasticPool2D(kernel_size, stride=None, seed=None), after Zeiler & Fergus 2013.

    ``(N, C, H, W) -> (N, C, oH, oW)``, ``oH = (H - kH) // sH + 1`` (no
    padding; ``stride`` defaults to ``kernel_size``).  Inputs must be
    non-negative and finite (e.g. after a ReLU): ValueError otherwise.

    Training (``layer.train()``, the default), per window with cells
    ``a_m`` and ``S = sum(a)``: draw ``u ~ U[0, 1)`` (one per output, shape
    (N, C, oH, oW), from the layer's generator) and pick the first cell in
    row-major order with ``u * S < a_0 + ... + a_m`` -- cell ``m`` with
    probability ``a_m / S``.  Output ``a_m``; backward ``dx[m] += dout``.
    A window with ``S = 0`` outputs 0 and passes no gradient.

    Evaluation (``layer.eval()``): ``y = sum(a^2) / sum(a)`` (0 when
    ``S = 0``), with the exact backward
    ``dx[m] += dout * (2 a_m S - sum(a^2)) / S^2``.
    """

    def __init__(self, kernel_size, stride=None, seed=None, name=None):
        super().__init__(name)
        self.kernel_size = pair(kernel_size, "kernel_size", self.name)
        self.stride = self.kernel_size if stride is None else pair(stride, "stride", self.name)
        check_window(self.name, self.kernel_size, self.stride, (0, 0), max_padding=None)
        self.seed = _check_seed(seed, self.name)
        self.rng = np.random.default_rng(self.seed)
        self._cache = None

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "seed": self.seed}

    def reseed(self, seed):
        """Restart the sampling generator at ``seed`` (for reproducible draws)."""
        self.rng = np.random.default_rng(_check_seed(seed, self.name))

    def forward(self, x):
        x = self._as_input(x, 4)
        ok = (x >= 0) & (x < np.inf)
        if not ok.all():
            bad = x[~ok].flat[0]
            raise ValueError(f"{self.name}: input must be non-negative and finite "
                             f"(p_m = a_m / sum(a) is a probability), found {bad!r}")
        x = np.ascontiguousarray(x)
        N, C, H, W = x.shape
        oh, ow = window_output_shape(self.name, (H, W), self.kernel_size, self.stride, (0, 0))
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        out = np.empty((N, C, oh, ow), x.dtype)
        if self.training:
            u = self.rng.random((N, C, oh, ow))
            index = np.empty(out.shape, np.int64)
            run_kernel(stochastic_pool_forward, x, u, kh, kw, sh, sw, out, index)
            self._cache = ("train", index, x.shape, x.dtype)
        else:
            run_kernel(stochastic_pool_eval_forward, x, kh, kw, sh, sw, out)
            self._cache = ("eval", x, x.shape, x.dtype)
        return out

    def backward(self, dout):
        self._need_forward("_cache")
        mode, saved, shape, dtype = self._cache
        N, C, H, W = shape
        oh, ow = window_output_shape(self.name, (H, W), self.kernel_size, self.stride, (0, 0))
        dout = np.ascontiguousarray(self._check_dout(dout, (N, C, oh, ow)), dtype=dtype)
        dx = np.empty(shape, dtype)
        if mode == "train":
            run_kernel(argmax_backward, dout, saved, dx)
        else:
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            run_kernel(stochastic_pool_eval_backward, saved, dout, kh, kw, sh, sw, dx)
        return dx


def _ratio_pair(value, layer):
    """``output_ratio`` as a pair of floats in the open interval (0, 1)."""
    def real(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    if real(value):
        r = (float(value), float(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(real(v) for v in value):
        r = (float(value[0]), float(value[1]))
    else:
        raise TypeError(f"{layer}: output_ratio must be a float or a pair of floats, got {value!r}")
    if not all(0.0 < v < 1.0 for v in r):
        raise ValueError(f"{layer}: output_ratio must be between 0 and 1 (exclusive), "
                         f"got {value!r}")
    return r


class FractionalMaxPool2D(Layer):
    """FractionalMaxPool2D(kernel_size, output_size=None, output_ratio=None, seed=None,
    return_indices=False), after Graham 2014 with PyTorch's ``FractionalMaxPool2d``
    semantics.

    Exactly one of ``output_size`` (int or (oH, oW)) and ``output_ratio``
    (float or pair in (0, 1); ``oH = int(H * ratio_h)``) must be given.
    Every forward draws samples ``u`` of shape (N, C, 2) from the layer's
    generator -- ``u[..., 0]`` for the width, ``u[..., 1]`` for the height,
    PyTorch's ``_random_samples`` layout; the last draw is kept in
    ``self.samples``.  Per (sample, channel) the window starts are
    ``rows = fractional_intervals(u[..., 1], H, oH, kH)`` (and likewise the
    columns), and::

        y[n, c, i, j] = max(x[n, c, rows[i]:rows[i] + kH, cols[j]:cols[j] + kW])

    Needs ``kH + oH - 1 <= H`` and ``kW + oW - 1 <= W`` (checked at forward).
    Ties: first maximum in row-major order; NaN propagates.  The windows
    are random in evaluation mode too, as in PyTorch.
    Backward: ``dx[argmax] += dout``.  With ``return_indices=True`` forward
    returns ``(y, indices)`` (flat in-plane indices, int64).
    """

    def __init__(self, kernel_size, output_size=None, output_ratio=None, seed=None,
                 return_indices=False, name=None):
        super().__init__(name)
        self.kernel_size = pair(kernel_size, "kernel_size", self.name)
        if min(self.kernel_size) <= 0:
            raise ValueError(f"{self.name}: kernel_size must be > 0, got {kernel_size!r}")
        if output_size is None and output_ratio is None:
            raise ValueError(f"{self.name}: requires specifying either an output_size or an "
                             f"output_ratio")
        if output_size is not None and output_ratio is not None:
            raise ValueError(f"{self.name}: only one of output_size and output_ratio may be "
                             f"specified, got output_size={output_size!r}, "
                             f"output_ratio={output_ratio!r}")
        self.output_size = None
        self.output_ratio = None
        if output_size is not None:
            self.output_size = pair(output_size, "output_size", self.name)
            if min(self.output_size) <= 0:
                raise ValueError(f"{self.name}: output_size must be > 0, got {output_size!r}")
        else:
            self.output_ratio = _ratio_pair(output_ratio, self.name)
        self.return_indices = flag(self.name, "return_indices", return_indices)
        self.seed = _check_seed(seed, self.name)
        self.rng = np.random.default_rng(self.seed)
        self.samples = None
        self._argmax = None

    def config(self):
        return {"kernel_size": list(self.kernel_size),
                "output_size": None if self.output_size is None else list(self.output_size),
                "output_ratio": None if self.output_ratio is None else list(self.output_ratio),
                "seed": self.seed, "return_indices": self.return_indices}

    def reseed(self, seed):
        """Restart the sample generator at ``seed`` (for reproducible windows)."""
        self.rng = np.random.default_rng(_check_seed(seed, self.name))

    def output_hw(self, H, W) -> tuple[int, int]:
        """(oH, oW) for an (H, W) input; ValueError naming the sizes if the
        windows do not fit (PyTorch: output_size + kernel_size - 1 <= input size)."""
        if self.output_size is not None:
            oh, ow = self.output_size
        else:
            oh, ow = int(H * self.output_ratio[0]), int(W * self.output_ratio[1])
            if min(oh, ow) < 1:
                raise ValueError(f"{self.name}: output_ratio={self.output_ratio} gives output "
                                 f"size {(oh, ow)} for input size {(H, W)}; need >= 1")
        kh, kw = self.kernel_size
        for what, k, o, L in (("height", kh, oh, H), ("width", kw, ow, W)):
            if k + o - 1 > L:
                raise ValueError(
                    f"{self.name}: need kernel_size + output_size - 1 <= input size, but pool "
                    f"{what} {k} + output {what} {o} - 1 = {k + o - 1} > input {what} {L} "
                    f"(input size {(H, W)})")
        return oh, ow

    def forward(self, x):
        x = np.ascontiguousarray(self._as_input(x, 4))
        N, C, H, W = x.shape
        oh, ow = self.output_hw(H, W)
        kh, kw = self.kernel_size
        self.samples = self.rng.random((N, C, 2), dtype=x.dtype)
        rows = fractional_intervals(self.samples[..., 1], H, oh, kh)
        cols = fractional_intervals(self.samples[..., 0], W, ow, kw)
        out = np.empty((N, C, oh, ow), x.dtype)
        argmax = np.empty(out.shape, np.int64)
        run_kernel(fractional_max_forward, x, rows, cols, kh, kw, out, argmax)
        self._argmax, self._x_shape, self._dtype_used = argmax, x.shape, x.dtype
        return (out, argmax.copy()) if self.return_indices else out

    def backward(self, dout):
        self._need_forward("_argmax")
        dout = self._check_dout(dout, self._argmax.shape)
        dx = np.empty(self._x_shape, self._dtype_used)
        run_kernel(argmax_backward, np.ascontiguousarray(dout, dtype=self._dtype_used),
                   self._argmax, dx)
        return dx
