"""Adaptive average / max pooling kernels (global pooling and SPP reuse them).

Bins (PyTorch's rule, written out once here).  Along an axis of length
``L`` cut into ``out`` bins, output index ``i`` pools the cells
``[start(i), end(i))`` with::

    start(i) = floor(i * L / out)          = (i * L) // out
    end(i)   = ceil((i + 1) * L / out)     = ((i + 1) * L + out - 1) // out

When ``out`` does not divide ``L`` neighbouring bins overlap and differ in
size (10 -> 3: [0, 4), [3, 7), [6, 10)); when ``out > L`` one cell feeds
several bins.  Every bin is non-empty.

Shapes: ``x, dx : (N, C, H, W)``; ``out, dout, argmax : (N, C, oH, oW)``.
The output size is read from the shape of ``out`` (forward) and the input
size from the shape of ``dx`` (backward).  ``argmax`` holds the flat index
``h * W + w`` of the chosen cell inside its (H, W) plane, as PyTorch's
``return_indices`` does.

Parallel contract (every kernel here): prange over the N*C planes; each
iteration reads and writes only its own plane, so overlapping bins in the
backward passes cannot race.  Accumulation is in float64 whatever the
input dtype; the result is stored in the output's dtype.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True)
def _bin(i, length, bins):
    """Bin ``i`` of ``length`` cells split into ``bins``: the half-open range
    ``[floor(i*length/bins), ceil((i+1)*length/bins))`` (PyTorch's rule)."""
    return (i * length) // bins, ((i + 1) * length + bins - 1) // bins


def _adaptive_avg_forward(x, out):
    """Adaptive average pooling, ``x`` (N, C, H, W) -> ``out`` (N, C, oH, oW).

    ``out[n, c, i, j] = sum(x[n, c, h0:h1, w0:w1]) / ((h1 - h0) * (w1 - w0))``
    with ``[h0, h1)`` bin ``i`` of H into oH and ``[w0, w1)`` bin ``j`` of
    W into oW (module docstring).  ``out`` is overwritten.
    Parallel contract: prange over the N*C planes; iteration p writes only
    plane p of ``out``.
    """
    N, C, H, W = x.shape
    oH = out.shape[2]
    oW = out.shape[3]
    for p in prange(N * C):
        n = p // C
        c = p % C
        for i in range(oH):
            h0, h1 = _bin(i, H, oH)
            for j in range(oW):
                w0, w1 = _bin(j, W, oW)
                s = np.float64(0.0)
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        s += x[n, c, h, w]
                out[n, c, i, j] = s / ((h1 - h0) * (w1 - w0))


def _adaptive_avg_backward(dout, dx):
    """Backward of adaptive average pooling, ``dout`` (N, C, oH, oW) ->
    ``dx`` (N, C, H, W).

    Rule: each output spreads its gradient evenly over its bin, and a cell
    in several (overlapping) bins collects from each of them::

        dx[n, c, h0:h1, w0:w1] += dout[n, c, i, j] / ((h1 - h0) * (w1 - w0))

    ``dx`` is overwritten (zeroed here first).  Parallel contract: prange
    over the N*C planes; iteration p accumulates only into plane p of
    ``dx``, so overlapping bins cannot race.
    """
    N, C, H, W = dx.shape
    oH = dout.shape[2]
    oW = dout.shape[3]
    for p in prange(N * C):
        n = p // C
        c = p % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0.0
        for i in range(oH):
            h0, h1 = _bin(i, H, oH)
            for j in range(oW):
                w0, w1 = _bin(j, W, oW)
                g = np.float64(dout[n, c, i, j]) / ((h1 - h0) * (w1 - w0))
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        dx[n, c, h, w] += g


def _adaptive_max_forward(x, out, argmax):
    """Adaptive max pooling, ``x`` (N, C, H, W) -> ``out``, ``argmax``
    (N, C, oH, oW), both overwritten.

    ``out[n, c, i, j] = max(x[n, c, h0:h1, w0:w1])`` over bin (i, j) (module
    docstring); ``argmax`` is the flat in-plane index ``h * W + w`` of that
    cell.  Ties: the first maximum in row-major scan order wins (strict
    ``>``).  NaN propagates: a NaN in the bin makes the output NaN and its
    index the last NaN scanned -- the comparison PyTorch's CPU kernel uses,
    ``v > best or isnan(v)``.
    Parallel contract: prange over the N*C planes; iteration p writes only
    plane p of ``out`` and ``argmax``.
    """
    N, C, H, W = x.shape
    oH = out.shape[2]
    oW = out.shape[3]
    for p in prange(N * C):
        n = p // C
        c = p % C
        for i in range(oH):
            h0, h1 = _bin(i, H, oH)
            for j in range(oW):
                w0, w1 = _bin(j, W, oW)
                best = x[n, c, h0, w0]
                best_k = h0 * W + w0
                for h in range(h0, h1):
                    for w in range(w0, w1):
                        v = x[n, c, h, w]
                        if v > best or v != v:
                            best = v
                            best_k = h * W + w
                out[n, c, i, j] = best
                argmax[n, c, i, j] = best_k


def _argmax_backward(dout, argmax, dx):
    """Route each output gradient to the one input cell it came from.

    ``dout``, ``argmax`` (N, C, oH, oW) -> ``dx`` (N, C, H, W)::

        dx[n, c].flat[argmax[n, c, i, j]] += dout[n, c, i, j]

    Entries with ``argmax < 0`` route nowhere (stochastic pooling marks an
    all-zero window that way).  Used by adaptive/global/pyramid max pooling
    and by stochastic and fractional max pooling.  ``dx`` is overwritten
    (zeroed here first).  Parallel contract: prange over the N*C planes;
    iteration p accumulates only into plane p of ``dx``, so cells chosen by
    several outputs cannot race.
    """
    N, C, H, W = dx.shape
    oH = dout.shape[2]
    oW = dout.shape[3]
    for p in prange(N * C):
        n = p // C
        c = p % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0.0
        for i in range(oH):
            for j in range(oW):
                k = argmax[n, c, i, j]
                if k >= 0:
                    dx[n, c, k // W, k % W] += dout[n, c, i, j]


adaptive_avg_forward = njit(parallel=True, cache=True)(_adaptive_avg_forward)
adaptive_avg_backward = njit(parallel=True, cache=True)(_adaptive_avg_backward)
adaptive_max_forward = njit(parallel=True, cache=True)(_adaptive_max_forward)
argmax_backward = njit(parallel=True, cache=True)(_argmax_backward)
