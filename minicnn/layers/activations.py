"""Activation functions.

ReLU:  y = max(x, 0);  dx = dout * [x > 0]   (the gradient at x == 0 is 0,
as in PyTorch; NaN inputs give NaN outputs, as torch.relu does).
"""
from __future__ import annotations

import numpy as np

from minicnn.kernels.activations import relu_backward, relu_forward
from minicnn.layers.base import FLOAT_DTYPES, Layer
from minicnn.threads import run_kernel


class ReLU(Layer):
    """Elementwise max(x, 0); any shape."""

    def __init__(self, name=None):
        super().__init__(name)
        self._mask = None

    def forward(self, x):
        x = np.ascontiguousarray(self._as_input(x, (2, 3, 4, 5)))
        y = np.empty_like(x)
        self._mask = np.empty(x.shape, np.bool_)
        run_kernel(relu_forward, x.reshape(-1), y.reshape(-1), self._mask.reshape(-1), size=x.size)
        return y

    def backward(self, dout):
        self._need_forward("_mask")
        dout = self._check_dout(dout, self._mask.shape)
        if dout.dtype.type not in FLOAT_DTYPES:
            dout = dout.astype(np.float32)
        dout = np.ascontiguousarray(dout)
        dx = np.empty_like(dout)
        run_kernel(relu_backward, dout.reshape(-1), self._mask.reshape(-1), dx.reshape(-1), size=dout.size)
        return dx
