"""Average pooling kernels (forward and backward), PyTorch's divisor rule.

Conventions (planes, geometry, parallel contract): :mod:`minicnn.kernels.window`.
"""
import numpy as np
from numba import njit, prange

from minicnn.kernels.window import (PLANE_RUNS, _add9, _avg_divisor, _avg_extents, _inner_windows,
                                    _output_cells, _plane_run, _window_rows_3x3s2,
                                    _zero_uncovered_2x2)


# --------------------------------------------------------------------- average
def _avgpool2d_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, out):
    """Average pooling with PyTorch's divisor rule.

    x: (P, H, W) -> out: (P, H_out, W_out).

    Forward: ``out = sum(x[window inside the input]) / divisor`` with
    ``divisor = divisor_override`` if it is not 0, else the window area
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


@njit(cache=True)
def _avg_divisor_table(H, W, H_out, W_out, kh, kw, sh, sw, ph, pw, count_include_pad,
                       divisor_override, like):
    """``D[oh, ow]``: the divisor of every window (:func:`_avgpool2d_forward`'s
    rule), as an (H_out, W_out) array of ``like``'s dtype."""
    nhs, h_los, h_his = _avg_extents(H_out, kh, sh, ph, H)
    nws, w_los, w_his = _avg_extents(W_out, kw, sw, pw, W)
    D = np.empty((H_out, W_out), like.dtype)
    for oh in range(H_out):
        for ow in range(W_out):
            D[oh, ow] = _avg_divisor(nhs[oh] * nws[ow],
                                     (h_his[oh] - h_los[oh]) * (w_his[ow] - w_los[ow]),
                                     count_include_pad, divisor_override)
    return D


def _avgpool2d_3x3s2_forward(x, ph, count_include_pad, divisor_override, out):
    """:func:`_avgpool2d_forward` for a 3x3 window, stride 2, column padding
    1, row padding ``ph`` (0 or 1), even width W, ``W_out = W/2`` and
    ``H_out = (H + 2*ph - 3)//2 + 1`` (floor mode): same sums in the same
    order, same result bit for bit.

    Per plane, with ``Wh = W/2`` and ``m = r*Wh + j``, in long loops the
    compiler vectorises: ``e[m] = x[r, 2j]``, ``o[m] = x[r, 2j+1]`` and
    ``l[m] = x[r, 2j-1]`` (+0 for j = 0: column -1 is padding), stored with
    a row of zeros above and below the plane; then for every centre row c
    (every row, though only every other one is an output row) the window
    sum ``0 + l + e + o`` over rows c-1, c, c+1 in row-major order, divided
    by the window's divisor (``Df``: 1 on the rows that are not output
    rows), in one loop over the plane; then output cell ``m`` is that
    quotient at centre row ``2*oh - ph + 1`` (``src[m]``), in one loop over
    the output plane.  A tap outside the input adds +0, which changes
    nothing: a sum started at +0 is never -0.
    The split into ``e`` and ``o`` is one loop of stride-2 reads, which the
    compiler turns into whole-vector loads and lane permutes.
    64x64x14x14, 2 threads: 320 -> 270 us (dividing the whole plane in one
    loop and the gather, 320 -> 286; the rest from reading float32 cells
    as 64-bit pairs), 64x32x28x28 465 -> 395 us, on a 2-core AMD VM with
    AVX2.  On the Intel VM with AVX-512 those pairs compiled to truncating
    stores, and the stride-2 loop was faster (kernel alone, 9 alternating
    rounds, 2026-11-25): 200 -> 176 us on 4096x14x14, 365 -> 356 on
    2048x28x28, 262 -> 263 on 2048x24x24.

    Parallel: prange over runs of consecutive planes (as
    :func:`~minicnn.kernels.max_pooling._maxpool2d_3x3s2_forward`); iteration
    c writes only its planes and its rows of the scratch arrays.
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    Wh = W // 2
    n = H * Wh
    dt = out.dtype.type
    D = _avg_divisor_table(H, W, H_out, W_out, 3, 3, 2, 2, ph, 1, count_include_pad,
                           divisor_override, out)
    no = H_out * Wh
    src = _output_cells(H_out, Wh, Wh, 2, 1 - ph)   # out.flat[m] = v[src[m]]
    Df = np.empty(n, out.dtype)              # divisor of each centre row's window sum
    for t in range(n):                       # (np.ones would be a parallel region: kernels/__init__)
        Df[t] = 1.0
    Dflat = D.reshape(no)
    for m in range(no):
        Df[src[m]] = Dflat[m]
    xf = x.reshape((P, H * W))
    of = out.reshape((P, no))
    n_chunks = min(P, PLANE_RUNS)
    E = np.empty((n_chunks, n + 2 * Wh), x.dtype)    # rows 0 and H + 1 are zeroed below
    O = np.empty((n_chunks, n + 2 * Wh), x.dtype)
    L = np.empty((n_chunks, n + 2 * Wh), x.dtype)
    V = np.empty((n_chunks, n), x.dtype)
    for c in prange(n_chunks):
        for m in range(Wh):                  # the zero rows above and below the plane
            E[c, m] = O[c, m] = L[c, m] = 0.0
            E[c, Wh + n + m] = O[c, Wh + n + m] = L[c, Wh + n + m] = 0.0
        e_in, o_in, l_in = E[c, Wh:Wh + n], O[c, Wh:Wh + n], L[c, Wh:Wh + n]
        l0, e0, o0 = L[c, :n], E[c, :n], O[c, :n]                             # rows c-1
        l1, e1, o1 = L[c, Wh:Wh + n], E[c, Wh:Wh + n], O[c, Wh:Wh + n]        # rows c
        l2, e2, o2 = L[c, 2 * Wh:], E[c, 2 * Wh:], O[c, 2 * Wh:]              # rows c+1
        v = V[c]
        p_lo, p_hi = _plane_run(c, n_chunks, P)
        for p in range(p_lo, p_hi):
            plane = xf[p]
            for m in range(n):
                e_in[m] = plane[2 * m]
                o_in[m] = plane[2 * m + 1]
            for m in range(1, n):
                l_in[m] = o_in[m - 1]
            for r in range(H):
                l_in[r * Wh] = 0.0
            for t in range(n):
                s = dt(0)
                s += l0[t]
                s += e0[t]
                s += o0[t]
                s += l1[t]
                s += e1[t]
                s += o1[t]
                s += l2[t]
                s += e2[t]
                s += o2[t]
                v[t] = s / Df[t]
            op = of[p]
            for m in range(no):
                op[m] = v[src[m]]


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
                        _add9(dx, p, h, w, dout[p, oh, ow] / div9)
                    continue
                for ow in range(lo, hi):
                    w_lo, w_hi = w_los[ow], w_his[ow]
                    div = _avg_divisor(nhs[oh] * nws[ow], (h_hi - h_lo) * (w_hi - w_lo),
                                       count_include_pad, divisor_override)
                    g = dout[p, oh, ow] / dt(div)
                    for hh in range(h_lo, h_hi):
                        for ww in range(w_lo, w_hi):
                            dx[p, hh, ww] += g


def _avgpool2d_3x3s2_backward(dout, ph, count_include_pad, divisor_override, dx):
    """:func:`_avgpool2d_backward` for the windows of
    :func:`_avgpool2d_3x3s2_forward`, in gather form: same result bit for bit.

    A cell is in at most two window rows ``lo < hi`` and two window columns;
    the scatter form adds the shares ``g = dout / divisor`` of its windows in
    row-major window order to +0.  Here each cell computes that sum itself:
    ``0 + g[lo, b] + g[hi, b]`` for column ``2b`` (window column b only)
    and ``0 + g[lo, b] + g[lo, b+1] + g[hi, b] + g[hi, b+1]`` for column
    ``2b+1``.  A window that does not exist is a share of -0.0 (row
    H_out, column W_out of the scratch ``g``), which adds nothing to any
    value, +0 included.  Each input row is one loop over b that writes its
    even and odd cells.  The shares are divided in one loop over the output
    plane and then placed in ``g``'s rows (64x64x14x14, 2 threads: 360 ->
    330 us; 64x32x28x28 630-653 -> 563-566 us, against a division loop per
    output row of 7-14 cells).

    Parallel: prange over runs of consecutive planes; iteration c writes
    only its planes of ``dx`` and its row of the scratch ``g``.
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    Wh = W // 2
    Wg = W_out + 1
    dt = dx.dtype.type
    D = _avg_divisor_table(H, W, H_out, W_out, 3, 3, 2, 2, ph, 1, count_include_pad,
                           divisor_override, dx)
    lohi = _window_rows_3x3s2(H, H_out, ph, Wg)     # each row's window rows in g (H_out: -0.0)
    n_chunks = min(P, PLANE_RUNS)
    G = np.full((n_chunks, (H_out + 1) * Wg), -0.0, dx.dtype)
    no = H_out * W_out
    Df = D.reshape(no)
    gpos = _output_cells(H_out, W_out, Wg, 1, 0)    # the cell of G that output m's share goes to
    dflat = dout.reshape((P, no))
    T = np.empty((n_chunks, no), dx.dtype)
    for c in prange(n_chunks):
        p_lo, p_hi = _plane_run(c, n_chunks, P)
        t, gc = T[c], G[c]
        for p in range(p_lo, p_hi):
            dp = dflat[p]
            for m in range(no):              # one loop over the plane: the divisions vectorise
                t[m] = dp[m] / Df[m]
            for m in range(no):
                gc[np.uint64(gpos[m])] = t[m]     # uint64: no wraparound (kernels/__init__)
            for r in range(H):
                lo, hi = lohi[r, 0], lohi[r, 1]
                g0, g1 = G[c, lo:lo + Wg], G[c, hi:hi + Wg]
                row = dx[p, r]
                for j in range(Wh):
                    ev = dt(0)
                    ev += g0[j]
                    ev += g1[j]
                    od = dt(0)
                    od += g0[j]
                    od += g0[j + 1]
                    od += g1[j]
                    od += g1[j + 1]
                    row[2 * j] = ev
                    row[2 * j + 1] = od


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
avgpool2d_3x3s2_forward = njit(parallel=True, cache=True)(_avgpool2d_3x3s2_forward)
avgpool2d_3x3s2_backward = njit(parallel=True, cache=True)(_avgpool2d_3x3s2_backward)
