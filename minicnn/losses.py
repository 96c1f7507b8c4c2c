"""Softmax cross-entropy, fused and numerically stable.

For logits z (N, K) and integer labels y (N,)::

    log p[n, k] = z[n, k] - m[n] - log sum_j exp(z[n, j] - m[n]),  m[n] = max_j z[n, j]
    loss        = -(1/N) sum_n log p[n, y[n]]
    dloss/dz    = (softmax(z) - onehot(y)) / N

Subtracting the row maximum (log-sum-exp) keeps exp() finite for logits
as large as +-1e4 and beyond.
"""
from __future__ import annotations

import numbers

import numpy as np


class SoftmaxCrossEntropy:
    """``forward(logits, labels) -> mean loss``; ``backward() -> dlogits``."""

    name = "SoftmaxCrossEntropy"

    def __init__(self):
        self._probs = None
        self._labels = None

    def forward(self, logits, labels):
        logits = np.asarray(logits)
        labels = np.asarray(labels)
        if logits.ndim != 2:
            raise ValueError(f"{self.name}: expected logits of shape (N, K), got {logits.shape}")
        if logits.dtype.kind not in "biuf":                # the layers' dtype rule (layers/base.py)
            raise TypeError(f"{self.name}: expected real-valued logits, got dtype {logits.dtype}")
        if logits.shape[0] == 0:
            raise ValueError(f"{self.name}: the batch is empty (logits of shape {logits.shape}); "
                             "the mean loss of no examples is undefined")
        if logits.dtype not in (np.float32, np.float64):   # ints, float16: the float32 rule
            logits = logits.astype(np.float32)
        if labels.shape != (logits.shape[0],):
            raise ValueError(f"{self.name}: expected labels of shape ({logits.shape[0]},), got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: labels must be integers, got dtype {labels.dtype}")
        K = logits.shape[1]
        if labels.size and (labels.min() < 0 or labels.max() >= K):
            raise ValueError(f"{self.name}: labels must be in [0, {K - 1}], "
                             f"got values in [{labels.min()}, {labels.max()}]")
        shifted = logits - logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        sums = exp.sum(axis=1, keepdims=True)
        log_probs = shifted - np.log(sums)
        self._probs = exp / sums
        self._labels = labels
        rows = np.arange(logits.shape[0])
        return float(-log_probs[rows, labels].mean())

    def backward(self, dloss: float = 1.0):
        """Gradient of ``dloss * loss`` with respect to the logits."""
        if self._probs is None:
            raise RuntimeError(f"{self.name}.backward called before forward")
        if isinstance(dloss, (bool, np.bool_)) or not isinstance(dloss, numbers.Real):
            raise TypeError(f"{self.name}.backward: dloss must be a real number, got {type(dloss).__name__}")
        n = self._probs.shape[0]
        d = self._probs.copy()
        d[np.arange(n), self._labels] -= 1
        d *= dloss / n
        return d
