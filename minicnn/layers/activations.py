"""Activation functions.

ReLU:  y = max(x, 0);  dx = dout * [x > 0]   (the gradient at x == 0 is 0,
as in PyTorch; NaN inputs give NaN outputs, as torch.relu does).
"""
from __future__ import annotations

import numpy as np

from minicnn.layers.base import Layer


class ReLU(Layer):
    """Elementwise max(x, 0); any shape."""

    def __init__(self, name=None):
        super().__init__(name)
        self._mask = None

    def forward(self, x):
        x = self._as_input(x, (2, 3, 4, 5))
        self._mask = x > 0
        return np.maximum(x, x.dtype.type(0))      # np.maximum propagates NaN

    def backward(self, dout):
        self._need_forward("_mask")
        dout = self._check_dout(dout, self._mask.shape)
        return np.where(self._mask, dout, dout.dtype.type(0))
