"""Average pooling kernels (forward and backward), PyTorch's divisor rule.

Conventions (planes, geometry, parallel contract): :mod:`minicnn.kernels.window`.
"""
from numba import njit, prange

from minicnn.kernels.window import _avg_divisor, _avg_extents, _inner_windows, _zero_uncovered_2x2


# --------------------------------------------------------------------- average
def _avgpool2d_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, out):
    """Average pooling with PyTorch's divisor rule.

    x: (P, H, W) -> out: (P, H_out, W_out).

    Forward: ``out = sum(x[window inside the input]) / divisor`` with
    ``divisor = divisor_override`` if it is > 0, else the window area
    clamped to the padded input ``[-p, L+p)`` if ``count_include_pad``,
    else the number of cells inside the input (see :func:`_avg_extents`).
    Arithmetic in the planes' dtype, as PyTorch does it: the sum starts at
    +0 and adds the cells in row-major order, then is divided by the
    divisor converted to that dtype (float32 planes give PyTorch's float32
    result bit for bit).

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    nhs, h_los, h_his = _avg_extents(H_out, kh, sh, ph, H)
    nws, w_los, w_his = _avg_extents(W_out, kw, sw, pw, W)
    dt = out.dtype.type
    for p in prange(P):
        for oh in range(H_out):
            nh, h_lo, h_hi = nhs[oh], h_los[oh], h_his[oh]
            for ow in range(W_out):
                nw, w_lo, w_hi = nws[ow], w_los[ow], w_his[ow]
                s = dt(0)
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        s += x[p, h, w]
                div = _avg_divisor(nh * nw, (h_hi - h_lo) * (w_hi - w_lo), count_include_pad,
                                   divisor_override)
                out[p, oh, ow] = s / dt(div)


@njit(cache=True, inline='always')
def _sum9(x, p, h, w):
    """``sum(x[p, h:h+3, w:w+3])`` in x's dtype, from +0 in row-major order."""
    s = x.dtype.type(0)
    s += x[p, h, w]
    s += x[p, h, w + 1]
    s += x[p, h, w + 2]
    s += x[p, h + 1, w]
    s += x[p, h + 1, w + 1]
    s += x[p, h + 1, w + 2]
    s += x[p, h + 2, w]
    s += x[p, h + 2, w + 1]
    s += x[p, h + 2, w + 2]
    return s


def _avgpool2d_3x3_forward(x, sh, sw, ph, pw, count_include_pad, divisor_override, out):
    """:func:`_avgpool2d_forward` for a 3x3 window (any stride, padding 0 or
    1): same shapes, same sums in the same order, same result bit for bit.

    The windows wholly inside the input (rows ``h .. h+2`` and columns
    ``ow_a <= ow < ow_b``) add their nine taps written out, in row-major
    order, and divide by ``divisor_override`` or 9; the others (the border)
    go through the general loops.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    nhs, h_los, h_his = _avg_extents(H_out, 3, sh, ph, H)
    nws, w_los, w_his = _avg_extents(W_out, 3, sw, pw, W)
    ow_a, ow_b = _inner_windows(W_out, 3, sw, pw, W)
    dt = out.dtype.type
    div9 = dt(_avg_divisor(9, 9, count_include_pad, divisor_override))
    for p in prange(P):
        for oh in range(H_out):
            h = oh * sh - ph
            h_lo, h_hi = h_los[oh], h_his[oh]
            full_rows = h_lo == h and h_hi == h + 3
            for lo, hi, inner in ((0, ow_a, False), (ow_a, ow_b, full_rows), (ow_b, W_out, False)):
                if inner:
                    for ow in range(lo, hi):
                        out[p, oh, ow] = _sum9(x, p, h, ow * sw - pw) / div9
                    continue
                for ow in range(lo, hi):
                    w_lo, w_hi = w_los[ow], w_his[ow]
                    s = dt(0)
                    for hh in range(h_lo, h_hi):
                        for ww in range(w_lo, w_hi):
                            s += x[p, hh, ww]
                    div = _avg_divisor(nhs[oh] * nws[ow], (h_hi - h_lo) * (w_hi - w_lo),
                                       count_include_pad, divisor_override)
                    out[p, oh, ow] = s / dt(div)


def _avgpool2d_2x2_forward(x, divisor, out):
    """:func:`_avgpool2d_forward` for kernel 2x2, stride 2, no padding, every
    window full: ``out = (a + b + c + d) / divisor`` (divisor 4 unless
    overridden), summed in the same order, same result bit for bit.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    dt = out.dtype.type
    div = dt(divisor)
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                s = dt(0)
                s += x[p, h, w]
                s += x[p, h, w + 1]
                s += x[p, h + 1, w]
                s += x[p, h + 1, w + 1]
                out[p, oh, ow] = s / div


def _avgpool2d_backward(dout, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, dx):
    """Backward of average pooling: spread each gradient over its window.

    dout: (P, H_out, W_out) -> dx: (P, H, W), overwritten.

    Rule: ``dx[window inside the input] += dout / divisor`` (divisor as in
    :func:`_avgpool2d_forward`); padding cells receive nothing.  Arithmetic
    in the planes' dtype, windows in row-major order, as PyTorch does it.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    nhs, h_los, h_his = _avg_extents(H_out, kh, sh, ph, H)
    nws, w_los, w_his = _avg_extents(W_out, kw, sw, pw, W)
    dt = dx.dtype.type
    for p in prange(P):
        for h in range(H):
            for w in range(W):
                dx[p, h, w] = 0.0
        for oh in range(H_out):
            nh, h_lo, h_hi = nhs[oh], h_los[oh], h_his[oh]
            for ow in range(W_out):
                nw, w_lo, w_hi = nws[ow], w_los[ow], w_his[ow]
                div = _avg_divisor(nh * nw, (h_hi - h_lo) * (w_hi - w_lo), count_include_pad,
                                   divisor_override)
                g = dout[p, oh, ow] / dt(div)
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        dx[p, h, w] += g


def _avgpool2d_3x3_backward(dout, sh, sw, ph, pw, count_include_pad, divisor_override, dx):
    """:func:`_avgpool2d_backward` for a 3x3 window (any stride, padding 0
    or 1): same result bit for bit, since every cell receives the same
    additions in the same order (windows in row-major order, each adding
    ``dout / divisor`` once).  Windows wholly inside the input add to their
    nine cells written out; the border windows use the general loops.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    nhs, h_los, h_his = _avg_extents(H_out, 3, sh, ph, H)
    nws, w_los, w_his = _avg_extents(W_out, 3, sw, pw, W)
    ow_a, ow_b = _inner_windows(W_out, 3, sw, pw, W)
    dt = dx.dtype.type
    div9 = dt(_avg_divisor(9, 9, count_include_pad, divisor_override))
    flat = dx.reshape((P, H * W))
    for p in prange(P):
        for q in range(H * W):
            flat[p, q] = 0.0
        for oh in range(H_out):
            h = oh * sh - ph
            h_lo, h_hi = h_los[oh], h_his[oh]
            full_rows = h_lo == h and h_hi == h + 3
            for lo, hi, inner in ((0, ow_a, False), (ow_a, ow_b, full_rows), (ow_b, W_out, False)):
                if inner:
                    for ow in range(lo, hi):
                        w = ow * sw - pw
                        g = dout[p, oh, ow] / div9
                        dx[p, h, w] += g
                        dx[p, h, w + 1] += g
                        dx[p, h, w + 2] += g
                        dx[p, h + 1, w] += g
                        dx[p, h + 1, w + 1] += g
                        dx[p, h + 1, w + 2] += g
                        dx[p, h + 2, w] += g
                        dx[p, h + 2, w + 1] += g
                        dx[p, h + 2, w + 2] += g
                    continue
                for ow in range(lo, hi):
                    w_lo, w_hi = w_los[ow], w_his[ow]
                    div = _avg_divisor(nhs[oh] * nws[ow], (h_hi - h_lo) * (w_hi - w_lo),
                                       count_include_pad, divisor_override)
                    g = dout[p, oh, ow] / dt(div)
                    for hh in range(h_lo, h_hi):
                        for ww in range(w_lo, w_hi):
                            dx[p, hh, ww] += g


def _avgpool2d_2x2_backward(dout, divisor, dx):
    """:func:`_avgpool2d_backward` for the 2x2 case: windows do not overlap,
    so each cell is written once, ``dx = dout / divisor``, and the cells no
    window covers (a last odd row or column) are 0.  Same values as the
    general kernel (which adds ``0.0 + g``, so it never returns -0.0).

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    div = dx.dtype.type(divisor)
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                g = dout[p, oh, ow] / div
                dx[p, h, w] = g
                dx[p, h, w + 1] = g
                dx[p, h + 1, w] = g
                dx[p, h + 1, w + 1] = g
        _zero_uncovered_2x2(dx, p, H_out, W_out)


avgpool2d_forward = njit(parallel=True, cache=True)(_avgpool2d_forward)
avgpool2d_2x2_forward = njit(parallel=True, cache=True)(_avgpool2d_2x2_forward)
avgpool2d_3x3_forward = njit(parallel=True, cache=True)(_avgpool2d_3x3_forward)
avgpool2d_backward = njit(parallel=True, cache=True)(_avgpool2d_backward)
avgpool2d_2x2_backward = njit(parallel=True, cache=True)(_avgpool2d_2x2_backward)
avgpool2d_3x3_backward = njit(parallel=True, cache=True)(_avgpool2d_3x3_backward)
