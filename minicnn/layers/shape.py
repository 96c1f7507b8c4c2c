"""Layers that only rearrange values: Flatten and Concat.

Flatten: (N, d1, d2, ...) -> (N, d1*d2*...); backward reshapes back.
Concat(axis=1): [(N, C1, ...), (N, C2, ...)] -> (N, C1 + C2, ...);
backward slices dout back into the pieces.
"""
from __future__ import annotations

import numpy as np

from minicnn.layers.base import Layer


class Flatten(Layer):
    """Flatten all but the batch axis."""

    def __init__(self, name=None):
        super().__init__(name)
        self._shape = None

    def forward(self, x):
        x = self._as_input(x, (2, 3, 4, 5))
        self._shape = x.shape
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))

    def backward(self, dout):
        self._need_forward("_shape")
        dout = self._check_dout(dout, (self._shape[0], int(np.prod(self._shape[1:]))))
        return dout.reshape(self._shape)


class Concat(Layer):
    """Concatenate several inputs along ``axis`` (default 1, the channels or
    features).  All other dimensions must agree."""

    def __init__(self, axis=1, name=None):
        super().__init__(name)
        if isinstance(axis, bool) or not isinstance(axis, int) or axis < 1:
            raise ValueError(f"{self.name}: axis must be an int >= 1 (axis 0 is the batch), got {axis!r}")
        self.axis = axis
        self._sizes = None

    def config(self):
        return {"axis": self.axis}

    def forward(self, *xs):
        if len(xs) < 2:
            raise ValueError(f"{self.name}: expects at least 2 inputs, got {len(xs)}")
        xs = [self._as_input(x, (2, 3, 4, 5), f"input {i}") for i, x in enumerate(xs)]
        first = xs[0]
        for i, x in enumerate(xs[1:], 1):
            if x.ndim != first.ndim or self.axis >= x.ndim or \
                    x.shape[:self.axis] + x.shape[self.axis + 1:] != first.shape[:self.axis] + first.shape[self.axis + 1:]:
                raise ValueError(f"{self.name}: input {i} has shape {x.shape}, which cannot be concatenated "
                                 f"with input 0 of shape {first.shape} along axis {self.axis}")
        dtype = np.result_type(*xs)
        self._sizes = [x.shape[self.axis] for x in xs]
        self._shape = first.shape[:self.axis] + (sum(self._sizes),) + first.shape[self.axis + 1:]
        return np.concatenate(xs, axis=self.axis).astype(dtype, copy=False)

    def backward(self, dout):
        self._need_forward("_sizes")
        dout = self._check_dout(dout, self._shape)
        cuts = np.cumsum(self._sizes)[:-1]
        return tuple(np.split(dout, cuts, axis=self.axis))
