"""2-D convolution as im2col + one BLAS matrix product.

Shapes::

    x : (N, C_in, H, W)      W : (C_out, C_in, kH, kW)      b : (C_out,)
    y : (N, C_out, H_out, W_out),  H_out = floor((H + 2p - kH) / s) + 1
        (geometry.output_size, PyTorch's formula)

Forward (cross-correlation, as in PyTorch)::

    y[n, f, oh, ow] = b[f] + sum_{c,i,j} W[f, c, i, j] * x_pad[n, c, oh*s + i, ow*s + j]

With ``cols = im2col(x)`` of shape (C_in*kH*kW, N*H_out*W_out) and
``Wm = W.reshape(C_out, -1)`` this is ``Y = Wm @ cols + b``.  Backward,
with ``dY`` the upstream gradient laid out as (C_out, N*H_out*W_out)::

    dW = dY @ cols.T          db = dY.sum(axis=1)
    dx = col2im(Wm.T @ dY)    (each column entry added back where it came from)

Measured choice: im2col + BLAS beats direct Numba loops for the channel
counts minicnn trains (see benchmarks/).
"""
from __future__ import annotations

import numbers

import numpy as np

from minicnn import seeding
from minicnn.kernels.conv import col2im, im2col, nchw_from_rows, rows_from_nchw
from minicnn.layers.base import Layer
from minicnn.layers.geometry import check_window, pair, window_output_shape
from minicnn.threads import run_kernel


def _positive_int(layer, name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(f"{layer}: {name} must be a positive int, got {v!r}")
    return int(v)


class Conv2D(Layer):
    """Conv2D(in_channels, out_channels, kernel_size, stride=1, padding=0).

    He (Kaiming-normal) initialisation: ``W ~ N(0, 2 / fan_in)`` with
    ``fan_in = C_in*kH*kW``; ``b = 0``.  Zero padding.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, name=None):
        super().__init__(name)
        self.in_channels = _positive_int(self.name, "in_channels", in_channels)
        self.out_channels = _positive_int(self.name, "out_channels", out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", self.name)
        self.stride = pair(stride, "stride", self.name)
        self.padding = pair(padding, "padding", self.name)
        check_window(self.name, self.kernel_size, self.stride, self.padding, max_padding=None)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        W = seeding.generator().standard_normal((self.out_channels, self.in_channels, kh, kw))
        self.params = {"W": (W * np.sqrt(2.0 / fan_in)).astype(np.float32),
                       "b": np.zeros(self.out_channels, np.float32)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._cols = None      # cached im2col matrix (reused buffer)
        self._x_shape = None

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def _buffer(self, attr, shape, dtype):
        """Reuse a scratch array across steps when shape and dtype match."""
        buf = getattr(self, attr, None)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype)
            setattr(self, attr, buf)
        return buf

    def forward(self, x):
        x = self._as_input(x, 4)
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"{self.name}: expected {self.in_channels} input channels, "
                             f"got input of shape {x.shape} with {C}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride, self.padding)
        dt = self.dtype
        cols = self._buffer("_cols", (C * kh * kw, N * Ho * Wo), dt)
        run_kernel(im2col, np.ascontiguousarray(x), kh, kw, sh, sw, ph, pw, Ho, Wo, cols)
        y2d = self._buffer("_y2d", (self.out_channels, N * Ho * Wo), dt)
        np.matmul(self.params["W"].reshape(self.out_channels, -1), cols, out=y2d)
        y = np.empty((N, self.out_channels, Ho * Wo), dt)
        run_kernel(nchw_from_rows, y2d, self.params["b"], y)
        self._x_shape = x.shape
        return y.reshape(N, self.out_channels, Ho, Wo)

    def backward(self, dout):
        return self._backward(dout, input_grad=True)

    def backward_params(self, dout):
        """dW and db only: skips ``Wm.T @ dY`` and ``col2im``."""
        self._backward(dout, input_grad=False)

    def _backward(self, dout, input_grad):
        self._need_forward("_x_shape")
        N, C, H, W = self._x_shape
        F = self.out_channels
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        P = self._cols.shape[1] // N
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride, self.padding)
        dout = self._check_dout(dout, (N, F, Ho, Wo))
        dt = self.dtype
        d2 = self._buffer("_d2", (F, N * P), dt)
        run_kernel(rows_from_nchw, np.ascontiguousarray(dout, dtype=dt).reshape(N, F, P), d2)
        Wm = self.params["W"].reshape(F, -1)
        np.matmul(d2, self._cols.T, out=self.grads["W"].reshape(F, -1))
        np.sum(d2, axis=1, out=self.grads["b"])
        if not input_grad:
            return None
        dcols = self._buffer("_dcols", self._cols.shape, dt)
        np.matmul(Wm.T, d2, out=dcols)
        dx = np.empty(self._x_shape, dt)
        run_kernel(col2im, dcols, kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
        return dx
