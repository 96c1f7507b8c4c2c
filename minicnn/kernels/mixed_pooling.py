"""Mixed pooling kernels: ``a*max + b*avg`` in one pass, and the combine steps.

Conventions (planes, geometry, parallel contract): :mod:`minicnn.kernels.window`.
"""
from numba import njit, prange

from minicnn.kernels.max_pooling import _max9, _max_window, _has_nan
from minicnn.kernels.avg_pooling import _sum9


# ---------------------------------------------------------------- mixed
def _mixedpool2d_3x3_forward(x, sh, sw, a, b, out, argmax, diff):
    """Mixed pooling over 3x3 windows without padding (every window full,
    floor mode) in one pass: max, argmax and average from the same nine
    taps, then the combination.

    x: (P, H, W) -> out, argmax, diff: (P, H_out, W_out).

    Per window: ``mx, argmax`` as :func:`_maxpool2d_3x3_forward`, ``av =
    sum / 9`` as :func:`_avgpool2d_3x3_forward`, both rounded to the
    planes' dtype (stored, then read back), then ``out = a*mx + b*av`` and
    ``diff = mx - av`` as :func:`_mixedpool2d_combine`: the same result as
    the three kernels, bit for bit.  A plane holding a NaN takes its max
    window by window from :func:`_max_window` (the NaN rule) in a loop of
    its own: a branch per window in the fast loop costs more than that.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    flat = x.reshape((P, H * W))
    nine = out.dtype.type(9)    # the average kernels' divisor, in the planes' dtype
    for p in prange(P):
        if _has_nan(flat, p):
            for oh in range(H_out):
                for ow in range(W_out):
                    out[p, oh, ow], argmax[p, oh, ow] = _max_window(
                        x, p, oh * sh, ow * sw, 1, 1, 0, 3, 0, 3)
                    diff[p, oh, ow] = _sum9(x, p, oh * sh, ow * sw) / nine
                    mx, av = out[p, oh, ow], diff[p, oh, ow]
                    out[p, oh, ow] = a * mx + b * av
                    diff[p, oh, ow] = mx - av
            continue
        for oh in range(H_out):
            h = oh * sh
            for ow in range(W_out):
                w = ow * sw
                mx, k = _max9(x, p, h, h + 1, h + 2, w, w + 1, w + 2)
                argmax[p, oh, ow] = (h + k // 3) * W + w + k % 3
                diff[p, oh, ow] = _sum9(x, p, h, w) / nine
                av = diff[p, oh, ow]
                out[p, oh, ow] = a * mx + b * av
                diff[p, oh, ow] = mx - av


def _mixedpool2d_combine(mx, av, a, b, out):
    """Mixed pooling's forward from its two parts, in one pass.

    mx, av: (P, H_out, W_out) max- and average-pooled planes -> out, same
    shape; ``av`` is overwritten with ``mx - av`` (the gradient of alpha
    needs it; reusing the buffer saves an allocation).

    Forward: ``out = a*mx + b*av`` with ``a = alpha``, ``b = 1 - alpha`` as
    scalars of the planes' dtype (so float32 planes combine in float32, as
    numpy's ``a*mx + (1-a)*av`` does).  Backward: see
    :func:`_mixedpool2d_backward_combine`.

    Parallel: prange over the P planes; iteration p writes only plane p.
    """
    P, H_out, W_out = mx.shape
    m = mx.reshape((P, H_out * W_out))
    v = av.reshape((P, H_out * W_out))
    y = out.reshape((P, H_out * W_out))
    for p in prange(P):
        for q in range(H_out * W_out):
            y[p, q] = a * m[p, q] + b * v[p, q]
            v[p, q] = m[p, q] - v[p, q]


def _mixedpool2d_backward_combine(dmax, davg, a, b):
    """Mixed pooling's input gradient from its two parts, in place.

    dmax, davg: (P, H, W), the max- and average-pooling input gradients of
    the same ``dout``; ``dmax`` is overwritten with ``a*dmax + b*davg``
    (``a``, ``b`` scalars of the planes' dtype, as in
    :func:`_mixedpool2d_combine`).

    Parallel: prange over the P planes; iteration p writes only plane p.
    """
    P, H, W = dmax.shape
    m = dmax.reshape((P, H * W))
    v = davg.reshape((P, H * W))
    for p in prange(P):
        for q in range(H * W):
            m[p, q] = a * m[p, q] + b * v[p, q]


mixedpool2d_combine = njit(parallel=True, cache=True)(_mixedpool2d_combine)
mixedpool2d_backward_combine = njit(parallel=True, cache=True)(_mixedpool2d_backward_combine)
mixedpool2d_3x3_forward = njit(parallel=True, cache=True)(_mixedpool2d_3x3_forward)
