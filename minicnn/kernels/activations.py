"""ReLU forward and backward as one pass each over a flat array.

Shapes: every array is 1-D of the same length ``L`` (the layer passes
C-contiguous arrays flattened with ``reshape(-1)``).

Forward::

    y    = x if x > 0 else 0,   NaN stays NaN (as torch.relu / np.maximum)
    mask = x > 0                (False for NaN and for x <= 0)

Backward (the gradient at 0 is 0, as in PyTorch)::

    dx = dout if mask else 0

Parallel contract: prange over blocks of ``BLOCK`` consecutive elements;
iteration ``b`` writes only ``[b*BLOCK, (b+1)*BLOCK)`` of its outputs.
Inside a block the loop runs over views indexed from 0, so Numba can prove
every index non-negative and vectorises it (an index like ``start + k``
keeps a negative-index check per element, which blocks SIMD).
"""
from numba import njit, prange

BLOCK = 4096


def _relu_forward(x, y, mask):
    """x: (L,) -> y: (L,) same dtype, mask: (L,) bool; both overwritten."""
    L = x.shape[0]
    for b in prange((L + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, L)
        xs, ys, ms = x[lo:hi], y[lo:hi], mask[lo:hi]
        for k in range(hi - lo):
            v = xs[k]
            pos = v > 0
            ms[k] = pos
            ys[k] = v if pos or v != v else 0.0


def _relu_backward(dout, mask, dx):
    """dout: (L,), mask: (L,) bool -> dx: (L,), overwritten."""
    L = dout.shape[0]
    for b in prange((L + BLOCK - 1) // BLOCK):
        lo = b * BLOCK
        hi = min(lo + BLOCK, L)
        ds, ms, xs = dout[lo:hi], mask[lo:hi], dx[lo:hi]
        for k in range(hi - lo):
            xs[k] = ds[k] if ms[k] else 0.0


relu_forward = njit(parallel=True, cache=True)(_relu_forward)
relu_backward = njit(parallel=True, cache=True)(_relu_backward)
