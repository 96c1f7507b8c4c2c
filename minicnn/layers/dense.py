"""Fully connected layer.

Shapes: ``x (N, in) -> y (N, out)``, ``W (in, out)``, ``b (out,)``.

Forward:   y = x @ W + b
Backward:  dW = x.T @ dout,  db = sum_n dout[n],  dx = dout @ W.T
"""
from __future__ import annotations

import numpy as np

from minicnn import seeding
from minicnn.layers.base import Layer
from minicnn.layers.conv import _positive_int


class Dense(Layer):
    """Dense(in_features, out_features), He-initialised: W ~ N(0, 2/in), b = 0."""

    def __init__(self, in_features, out_features, name=None):
        super().__init__(name)
        self.in_features = _positive_int(self.name, "in_features", in_features)
        self.out_features = _positive_int(self.name, "out_features", out_features)
        shapes = self.param_shapes(self.in_features, self.out_features)
        W = seeding.generator().standard_normal(shapes["W"])
        self.params = {"W": (W * np.sqrt(2.0 / self.in_features)).astype(np.float32),
                       "b": np.zeros(shapes["b"], np.float32)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._x = None

    @staticmethod
    def param_shapes(in_features, out_features, **_):
        """The parameters' shapes for these constructor arguments."""
        return {"W": (in_features, out_features), "b": (out_features,)}

    def config(self):
        return {"in_features": self.in_features, "out_features": self.out_features}

    def forward(self, x):
        x = self._as_input(x, 2)
        if x.shape[1] != self.in_features:
            raise ValueError(f"{self.name}: expected input of shape (N, {self.in_features}), "
                             f"got {x.shape} ({x.shape[1]} features)")
        self._x = x
        return x @ self.params["W"] + self.params["b"]

    def backward(self, dout):
        dout = self.backward_params(dout)
        return dout @ self.params["W"].T

    def backward_params(self, dout):
        """dW and db only; returns the checked ``dout``, in the layer's dtype
        (as Conv2D casts it), so that ``dx`` has that dtype too."""
        self._need_forward("_x")
        dout = self._check_dout(dout, (self._x.shape[0], self.out_features))
        dout = dout.astype(self.params["W"].dtype, copy=False)
        np.matmul(self._x.T, dout, out=self.grads["W"])
        np.sum(dout, axis=0, out=self.grads["b"])
        return dout
