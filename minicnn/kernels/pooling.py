"""Window pooling kernels: max, max-unpool, average, power-average (LP).

Every kernel works on *planes*: the layer reshapes an NCHW array to
``(P, H, W)`` with ``P = N*C`` (C-contiguous) and allocates the outputs.

Geometry (all kernels)::

    window (oh, ow) reads rows  oh*sh - ph + i*dh,  i = 0 .. kh-1
                          cols  ow*sw - pw + j*dw,  j = 0 .. kw-1
    H_out, W_out = minicnn.layers.geometry.output_size(...)   (PyTorch's formula)

The kernels take ``H_out, W_out`` from the shape of the output array the
caller passes in.  Cells outside the input are padding: they are never
read (max treats them as -inf, average counts them only in the divisor).

Parallel contract (all kernels): ``prange`` over the P planes; iteration
``p`` reads plane ``p`` of its inputs and writes only plane ``p`` of its
outputs.  Overlapping windows (e.g. 3x3 stride 2) therefore accumulate
their gradients serially inside one iteration and cannot race.  Outputs are
fully overwritten (backward kernels zero their plane of ``dx`` first), so
buffers can be reused across steps.

Each kernel is a plain function ``_name`` (the readable reference; with
``NUMBA_DISABLE_JIT=1`` it runs as Python and ``prange`` is ``range``),
compiled by name at the bottom: ``name = njit(parallel=True, cache=True)(_name)``.
(To get a serial build, e.g. in a test, use ``njit(_name)`` *without*
``cache=True``: Numba's cache index does not record the ``parallel`` flag,
so a second cached build of the same function would share its entries.)
All kernels accept float32 and float64 arrays (sums and LP powers are
float64); index arrays are int64.  The 2x2 kernels (kernel 2, stride 2, no
padding, every window full) and 3x3 kernels (any stride, padding <= 1) are
the common cases written out tap by tap: the general kernels' tap loops
run only 2 or 3 times per window and cost more than the arithmetic.  They
give the same results as the general kernels (bit for bit, except that the
2x2 backward kernels may keep a -0.0 where the general ones give 0.0).
"""
import math

import numpy as np
from numba import njit, prange


# --------------------------------------------------------------------- helpers
@njit(cache=True)
def _tap_ranges(n_out, k, s, pad, d, L):
    """Per window ``o < n_out`` of one axis, the taps inside the input.

    Tap ``t`` of window ``o`` sits at ``o*s - pad + t*d``; the taps inside
    ``[0, L)`` are ``t0[o] <= t < t1[o]`` (none when ``t0[o] >= t1[o]``).
    Computed once per call, so the hot loops do no division.
    """
    t0 = np.empty(n_out, np.int64)
    t1 = np.empty(n_out, np.int64)
    for o in range(n_out):
        start = o * s - pad
        t0[o] = 0 if start >= 0 else (d - 1 - start) // d   # first t with start + t*d >= 0
        t1[o] = min(k, (L - start + d - 1) // d)          # first t with start + t*d >= L
    return t0, t1


@njit(cache=True)
def _avg_extents(n_out, k, s, pad, L):
    """Per window ``o < n_out`` of one axis, PyTorch's average-pooling extent.

    Window ``o`` spans ``[start, end)`` with ``start = o*s - pad`` and
    ``end = min(start + k, L + pad)`` (clamped to the padded input).
    Returns arrays ``count = end - start`` (used by count_include_pad) and
    ``[lo, hi) = [max(start, 0), min(end, L))``, the cells inside the input.
    """
    count = np.empty(n_out, np.int64)
    lo = np.empty(n_out, np.int64)
    hi = np.empty(n_out, np.int64)
    for o in range(n_out):
        start = o * s - pad
        end = min(start + k, L + pad)
        count[o], lo[o], hi[o] = end - start, max(start, 0), min(end, L)
    return count, lo, hi


@njit(cache=True)
def _avg_divisor(n_padded, n_inside, count_include_pad, divisor_override):
    """PyTorch's average-pooling divisor: ``divisor_override`` if > 0, else
    the window's cells in the padded input if ``count_include_pad``, else
    its cells inside the input."""
    if divisor_override > 0:
        return divisor_override
    return n_padded if count_include_pad else n_inside


@njit(cache=True)
def _inner_windows(n_out, k, s, pad, L):
    """``(o_a, o_b)``: the windows ``o_a <= o < o_b`` of one axis that lie
    wholly inside ``[0, L)`` (start ``o*s - pad >= 0``, end ``<= L``).
    They form one run; ``o_a == o_b`` if there are none."""
    o_a = 0
    while o_a < n_out and o_a * s - pad < 0:
        o_a += 1
    o_b = o_a
    while o_b < n_out and o_b * s - pad + k <= L:
        o_b += 1
    return o_a, o_b


@njit(cache=True, inline='always')
def _power(v, p):
    """``v ** p`` (C ``pow``), with the common p = 1 and p = 2 done without a call."""
    if p == 2.0:
        return v * v
    if p == 1.0:
        return v
    return v ** p


@njit(cache=True, inline='always')
def _root(s, p):
    """``s ** (1/p)`` (C ``pow``); ``sqrt`` for p = 2 (the same, correctly rounded)."""
    if p == 2.0:
        return math.sqrt(s) if s >= 0.0 else math.nan
    if p == 1.0:
        return s
    return s ** (1.0 / p)


# ------------------------------------------------------------------------- max
@njit(cache=True)
def _max_window(x, p, h0, w0, dh, dw, i0, i1, j0, j1):
    """Max and flat argmax of one window of plane ``p`` (PyTorch's rule).

    The window's taps are ``(h0 + i*dh, w0 + j*dw)`` for ``i0 <= i < i1``,
    ``j0 <= j < j1`` (the taps inside the input, see :func:`_tap_ranges`),
    scanned in row-major order with ``if v > best or isnan(v)``: the first
    maximum wins ties, and a NaN makes the result NaN with the index of the
    last NaN.  The rule is applied in two steps so the common case is
    branch-free: the scan uses ``v > best`` and notes whether a NaN was
    seen; only then is the window scanned again for its last NaN.  The
    index starts at the first tap (so an all -inf window still routes its
    gradient, like PyTorch); no tap at all gives ``(-inf, -1)``.
    """
    W = x.shape[2]
    best = -np.inf
    best_idx = -1
    if i0 < i1 and j0 < j1:
        best_idx = (h0 + i0 * dh) * W + w0 + j0 * dw
    nan = False
    for i in range(i0, i1):
        h = h0 + i * dh
        for j in range(j0, j1):
            w = w0 + j * dw
            v = x[p, h, w]
            nan |= v != v
            gt = v > best
            best = v if gt else best
            best_idx = h * W + w if gt else best_idx
    if nan:                                     # rare: the last NaN wins
        for i in range(i0, i1):
            h = h0 + i * dh
            for j in range(j0, j1):
                w = w0 + j * dw
                if x[p, h, w] != x[p, h, w]:
                    best = x[p, h, w]
                    best_idx = h * W + w
    return best, best_idx


@njit(cache=True)
def _has_nan(flat, p):
    """Whether row ``p`` of ``flat`` (planes as (P, H*W)) holds a NaN.  One
    long loop, so it vectorises (kept out of line: inlined into a prange
    body it slowed the whole kernel down)."""
    nan = False
    for q in range(flat.shape[1]):
        nan |= flat[p, q] != flat[p, q]
    return nan


@njit(cache=True)
def _maxpool_plane(x, p, sh, sw, ph, pw, dh, dw, i0s, i1s, j0s, j1s, out, argmax):
    """Plane ``p`` of :func:`_maxpool2d_forward`, window by window; the tap
    ranges ``i0s .. j1s`` come from :func:`_tap_ranges`."""
    for oh in range(out.shape[1]):
        h0 = oh * sh - ph
        for ow in range(out.shape[2]):
            out[p, oh, ow], argmax[p, oh, ow] = _max_window(
                x, p, h0, ow * sw - pw, dh, dw, i0s[oh], i1s[oh], j0s[ow], j1s[ow])


def _maxpool2d_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, out, argmax):
    """Max pooling with implicit -inf padding and dilation.

    x: (P, H, W) -> out: (P, H_out, W_out), argmax: (P, H_out, W_out) int64.

    Forward: ``out = max over the window taps inside the input``, scanned in
    row-major order with PyTorch's rule ``if v > best or isnan(v)``: the
    *first* maximum wins ties, and a NaN anywhere makes the result NaN with
    the index of the last NaN (see :func:`_max_window`).  ``argmax`` is the
    flat index ``h*W + w`` of the winner in its H*W plane; it starts at the
    first tap inside the input (so an all -inf window still routes its
    gradient, like PyTorch).  A window with no tap inside the input
    (possible only with dilation) gives -inf and index -1.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    i0s, i1s = _tap_ranges(H_out, kh, sh, ph, dh, H)
    j0s, j1s = _tap_ranges(W_out, kw, sw, pw, dw, W)
    for p in prange(P):
        _maxpool_plane(x, p, sh, sw, ph, pw, dh, dw, i0s, i1s, j0s, j1s, out, argmax)


@njit(cache=True, inline='always')
def _max9(x, p, r0, r1, r2, c0, c1, c2):
    """``(best, k)``: the first maximum of the nine taps ``x[p, r, c]``,
    ``r`` in (r0, r1, r2), ``c`` in (c0, c1, c2), in row-major order
    (tap ``k = 3*i + j``); ``v > best`` (NaN is not looked for here)."""
    t0, t1, t2 = x[p, r0, c0], x[p, r0, c1], x[p, r0, c2]
    t3, t4, t5 = x[p, r1, c0], x[p, r1, c1], x[p, r1, c2]
    t6, t7, t8 = x[p, r2, c0], x[p, r2, c1], x[p, r2, c2]
    best, k = t0, 0
    gt = t1 > best
    best = t1 if gt else best
    k = 1 if gt else k
    gt = t2 > best
    best = t2 if gt else best
    k = 2 if gt else k
    gt = t3 > best
    best = t3 if gt else best
    k = 3 if gt else k
    gt = t4 > best
    best = t4 if gt else best
    k = 4 if gt else k
    gt = t5 > best
    best = t5 if gt else best
    k = 5 if gt else k
    gt = t6 > best
    best = t6 if gt else best
    k = 6 if gt else k
    gt = t7 > best
    best = t7 if gt else best
    k = 7 if gt else k
    gt = t8 > best
    best = t8 if gt else best
    k = 8 if gt else k
    return best, k


def _maxpool2d_3x3_forward(x, sh, sw, ph, pw, out, argmax):
    """:func:`_maxpool2d_forward` for a 3x3 window without dilation (any
    stride, padding 0 or 1): same shapes, same rule, same result bit for bit.

    The nine taps are written out in row-major order (:func:`_max9`), which
    is what makes this path fast: the general kernel's 3-iteration tap loops
    cost more than the comparisons.  Border windows need no special case: a
    tap row or column outside the input is replaced by the nearest one
    inside (``clamp``).  That only repeats taps of the same window, and as
    the clamp is monotone, the first occurrence of each cell keeps its
    row-major rank, so the first maximum (value *and* index) is unchanged.
    (Every window has a tap inside: padding <= 1.)  Clamping every window
    costs less than splitting off the border ones.  A plane holding a NaN
    (rare) goes window by window through :func:`_max_window` instead, which
    applies the NaN rule.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    i0s, i1s = _tap_ranges(H_out, 3, sh, ph, 1, H)
    j0s, j1s = _tap_ranges(W_out, 3, sw, pw, 1, W)
    flat = x.reshape((P, H * W))
    for p in prange(P):
        if _has_nan(flat, p):
            _maxpool_plane(x, p, sh, sw, ph, pw, 1, 1, i0s, i1s, j0s, j1s, out, argmax)
            continue
        for oh in range(H_out):
            h = oh * sh - ph
            r0, r1, r2 = max(h, 0), min(h + 1, H - 1), min(h + 2, H - 1)
            for ow in range(W_out):
                w = ow * sw - pw
                best, k = _max9(x, p, r0, r1, r2, max(w, 0), min(w + 1, W - 1), min(w + 2, W - 1))
                out[p, oh, ow] = best
                argmax[p, oh, ow] = (min(max(h + k // 3, 0), H - 1) * W
                                     + min(max(w + k % 3, 0), W - 1))


def _maxpool2d_2x2_forward(x, out, argmax):
    """:func:`_maxpool2d_forward` for kernel 2x2, stride 2, no padding, no
    dilation, every window full (``2*H_out <= H``, ``2*W_out <= W``).

    Same shapes, same rule, same result bit for bit: the taps a, b, c, d in
    row-major order, first maximum wins, then the last NaN if any.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                a, b = x[p, h, w], x[p, h, w + 1]
                c, d = x[p, h + 1, w], x[p, h + 1, w + 1]
                best, idx = a, h * W + w
                if b > best:
                    best, idx = b, h * W + w + 1
                if c > best:
                    best, idx = c, h * W + W + w
                if d > best:
                    best, idx = d, h * W + W + w + 1
                if (a != a) | (b != b) | (c != c) | (d != d):   # rare: the last NaN wins
                    for v, k in ((a, h * W + w), (b, h * W + w + 1),
                                 (c, h * W + W + w), (d, h * W + W + w + 1)):
                        if v != v:
                            best, idx = v, k
                out[p, oh, ow] = best
                argmax[p, oh, ow] = idx


def _maxpool2d_backward(dout, argmax, dx):
    """Backward of max pooling: the whole gradient goes to the recorded argmax.

    dout, argmax: (P, H_out, W_out) -> dx: (P, H, W), overwritten.

    Rule: ``dx[argmax] += dout`` (index -1, an empty window, routes nothing).
    Overlapping windows may share an argmax; their gradients add.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    flat = dx.reshape((P, H * W))
    for p in prange(P):
        for q in range(H * W):
            flat[p, q] = 0.0
        for oh in range(H_out):
            for ow in range(W_out):
                a = argmax[p, oh, ow]
                if a >= 0:
                    flat[p, a] += dout[p, oh, ow]


# ------------------------------------------------------------------ max unpool
def _maxunpool2d_forward(x, indices, out):
    """Partial inverse of max pooling: scatter each value to its index.

    x, indices: (P, H_in, W_in) -> out: (P, H_out, W_out), overwritten.

    Forward: ``out = 0; out.flat[indices] = x`` per plane, in row-major order
    of ``x`` (if two entries share an index, the later one wins).  Indices
    must lie in ``[0, H_out*W_out)``; the layer checks that.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: the unpooled size the layer chose (MaxUnpool2D).
    """
    P, H_in, W_in = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    flat = out.reshape((P, H_out * W_out))
    for p in prange(P):
        for q in range(H_out * W_out):
            flat[p, q] = 0.0
        for i in range(H_in):
            for j in range(W_in):
                flat[p, indices[p, i, j]] = x[p, i, j]


def _maxunpool2d_backward(dout, indices, dx):
    """Backward of max unpooling: gather.

    dout: (P, H_out, W_out) C-contiguous, indices: (P, H_in, W_in)
    -> dx: (P, H_in, W_in), overwritten.  Rule: ``dx = dout.flat[indices]``.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: the unpooled size the layer chose (MaxUnpool2D).
    """
    P, H_in, W_in = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    flat = dout.reshape((P, H_out * W_out))
    for p in prange(P):
        for i in range(H_in):
            for j in range(W_in):
                dx[p, i, j] = flat[p, indices[p, i, j]]


# --------------------------------------------------------------------- average
def _avgpool2d_forward(x, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, out):
    """Average pooling with PyTorch's divisor rule.

    x: (P, H, W) -> out: (P, H_out, W_out).

    Forward: ``out = sum(x[window inside the input]) / divisor`` with
    ``divisor = divisor_override`` if it is > 0, else the window area
    clamped to the padded input ``[-p, L+p)`` if ``count_include_pad``,
    else the number of cells inside the input (see :func:`_avg_extents`).

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    nhs, h_los, h_his = _avg_extents(H_out, kh, sh, ph, H)
    nws, w_los, w_his = _avg_extents(W_out, kw, sw, pw, W)
    for p in prange(P):
        for oh in range(H_out):
            nh, h_lo, h_hi = nhs[oh], h_los[oh], h_his[oh]
            for ow in range(W_out):
                nw, w_lo, w_hi = nws[ow], w_los[ow], w_his[ow]
                s = 0.0
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        s += x[p, h, w]
                if divisor_override > 0:
                    div = divisor_override
                elif count_include_pad:
                    div = nh * nw
                else:
                    div = (h_hi - h_lo) * (w_hi - w_lo)
                out[p, oh, ow] = s / div


@njit(cache=True, inline='always')
def _sum9(x, p, h, w):
    """``sum(x[p, h:h+3, w:w+3])`` in float64, row-major order."""
    s = 0.0
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
    nine = np.int64(9)         # int64 like the extents (so NUMBA_DISABLE_JIT divides alike too)
    div9 = _avg_divisor(nine, nine, count_include_pad, divisor_override)
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
                    s = 0.0
                    for hh in range(h_lo, h_hi):
                        for ww in range(w_lo, w_hi):
                            s += x[p, hh, ww]
                    out[p, oh, ow] = s / _avg_divisor(nhs[oh] * nws[ow], (h_hi - h_lo) * (w_hi - w_lo),
                                                      count_include_pad, divisor_override)


def _avgpool2d_2x2_forward(x, divisor, out):
    """:func:`_avgpool2d_forward` for kernel 2x2, stride 2, no padding, every
    window full: ``out = (a + b + c + d) / divisor`` (divisor 4 unless
    overridden), summed in the same order, same result bit for bit.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                s = 0.0
                s += x[p, h, w]
                s += x[p, h, w + 1]
                s += x[p, h + 1, w]
                s += x[p, h + 1, w + 1]
                out[p, oh, ow] = s / divisor


def _avgpool2d_backward(dout, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, dx):
    """Backward of average pooling: spread each gradient over its window.

    dout: (P, H_out, W_out) -> dx: (P, H, W), overwritten.

    Rule: ``dx[window inside the input] += dout / divisor`` (divisor as in
    :func:`_avgpool2d_forward`); padding cells receive nothing.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    nhs, h_los, h_his = _avg_extents(H_out, kh, sh, ph, H)
    nws, w_los, w_his = _avg_extents(W_out, kw, sw, pw, W)
    for p in prange(P):
        for h in range(H):
            for w in range(W):
                dx[p, h, w] = 0.0
        for oh in range(H_out):
            nh, h_lo, h_hi = nhs[oh], h_los[oh], h_his[oh]
            for ow in range(W_out):
                nw, w_lo, w_hi = nws[ow], w_los[ow], w_his[ow]
                if divisor_override > 0:
                    div = divisor_override
                elif count_include_pad:
                    div = nh * nw
                else:
                    div = (h_hi - h_lo) * (w_hi - w_lo)
                g = dout[p, oh, ow] / div
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
    nine = np.int64(9)         # int64 like the extents (so NUMBA_DISABLE_JIT divides alike too)
    div9 = _avg_divisor(nine, nine, count_include_pad, divisor_override)
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
                    g = dout[p, oh, ow] / _avg_divisor(nhs[oh] * nws[ow], (h_hi - h_lo) * (w_hi - w_lo),
                                                       count_include_pad, divisor_override)
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
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                g = dout[p, oh, ow] / divisor
                dx[p, h, w] = g
                dx[p, h, w + 1] = g
                dx[p, h + 1, w] = g
                dx[p, h + 1, w + 1] = g
            for w in range(2 * W_out, W):
                dx[p, h, w] = 0.0
                dx[p, h + 1, w] = 0.0
        for h in range(2 * H_out, H):
            for w in range(W):
                dx[p, h, w] = 0.0


# ---------------------------------------------------------------- power (LP)
@njit(cache=True, inline='always')
def _lp_window(x, p, h_lo, h_hi, w_lo, w_hi, norm_type, kh, kw):
    """``(kh*kw / n) * sum(x[window] ** p)`` over the n cells of the window
    ``[h_lo, h_hi) x [w_lo, w_hi)``, powers and sum in float64."""
    s = 0.0
    for h in range(h_lo, h_hi):
        for w in range(w_lo, w_hi):
            s += _power(np.float64(x[p, h, w]), norm_type)
    n = (h_hi - h_lo) * (w_hi - w_lo)
    if n != kh * kw:
        s = s * (kh * kw) / n
    return s


@njit(cache=True, inline='always')
def _lp_window_backward(dx, x, p, h_lo, h_hi, w_lo, w_hi, g, pm1):
    """``dx[window] += g * x[window] ** (p-1)`` over ``[h_lo, h_hi) x [w_lo, w_hi)``."""
    for h in range(h_lo, h_hi):
        for w in range(w_lo, w_hi):
            dx[p, h, w] += g * _power(np.float64(x[p, h, w]), pm1)


@njit(cache=True, inline='always')
def _lp_sum9(x, p, h, w, norm_type):
    """``sum(x[p, h:h+3, w:w+3] ** norm_type)`` in float64, row-major order."""
    s = 0.0
    s += _power(np.float64(x[p, h, w]), norm_type)
    s += _power(np.float64(x[p, h, w + 1]), norm_type)
    s += _power(np.float64(x[p, h, w + 2]), norm_type)
    s += _power(np.float64(x[p, h + 1, w]), norm_type)
    s += _power(np.float64(x[p, h + 1, w + 1]), norm_type)
    s += _power(np.float64(x[p, h + 1, w + 2]), norm_type)
    s += _power(np.float64(x[p, h + 2, w]), norm_type)
    s += _power(np.float64(x[p, h + 2, w + 1]), norm_type)
    s += _power(np.float64(x[p, h + 2, w + 2]), norm_type)
    return s


@njit(cache=True, inline='always')
def _lp_add9(dx, x, p, h, w, g, pm1):
    """``dx[p, h:h+3, w:w+3] += g * x[...] ** pm1``, cell by cell, row-major."""
    dx[p, h, w] += g * _power(np.float64(x[p, h, w]), pm1)
    dx[p, h, w + 1] += g * _power(np.float64(x[p, h, w + 1]), pm1)
    dx[p, h, w + 2] += g * _power(np.float64(x[p, h, w + 2]), pm1)
    dx[p, h + 1, w] += g * _power(np.float64(x[p, h + 1, w]), pm1)
    dx[p, h + 1, w + 1] += g * _power(np.float64(x[p, h + 1, w + 1]), pm1)
    dx[p, h + 1, w + 2] += g * _power(np.float64(x[p, h + 1, w + 2]), pm1)
    dx[p, h + 2, w] += g * _power(np.float64(x[p, h + 2, w]), pm1)
    dx[p, h + 2, w + 1] += g * _power(np.float64(x[p, h + 2, w + 1]), pm1)
    dx[p, h + 2, w + 2] += g * _power(np.float64(x[p, h + 2, w + 2]), pm1)


def _lppool2d_forward(x, norm_type, kh, kw, sh, sw, out, sums):
    """Power-average (LP) pooling, no padding, as PyTorch computes it.

    x: (P, H, W) -> out, sums: (P, H_out, W_out).

    Forward, with ``n`` the number of cells of the window inside the input
    (``n = kh*kw`` except for the last windows in ceil mode)::

        sums = (kh*kw / n) * sum(x[window] ** p)       # PyTorch: avg_pool(x**p) * kh*kw
        out  = sums ** (1/p)

    Powers and sums are float64 (for float32 input too), added in row-major
    order.  Powers follow C ``pow``: a negative base with a non-integer
    exponent gives NaN (so for odd p a negative ``sums`` gives NaN unless
    1/p is an integer; p = 1 gives the plain window sum).

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    _, h_los, h_his = _avg_extents(H_out, kh, sh, 0, H)
    _, w_los, w_his = _avg_extents(W_out, kw, sw, 0, W)
    for p in prange(P):
        for oh in range(H_out):
            for ow in range(W_out):
                s = _lp_window(x, p, h_los[oh], h_his[oh], w_los[ow], w_his[ow], norm_type, kh, kw)
                sums[p, oh, ow] = s
                out[p, oh, ow] = _root(s, norm_type)


def _lppool2d_2x2_forward(x, norm_type, out, sums):
    """:func:`_lppool2d_forward` for kernel 2x2, stride 2, every window full
    (``2*H_out <= H``, ``2*W_out <= W``): the four taps written out, same
    result bit for bit.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                s = 0.0
                s += _power(np.float64(x[p, h, w]), norm_type)
                s += _power(np.float64(x[p, h, w + 1]), norm_type)
                s += _power(np.float64(x[p, h + 1, w]), norm_type)
                s += _power(np.float64(x[p, h + 1, w + 1]), norm_type)
                sums[p, oh, ow] = s
                out[p, oh, ow] = _root(s, norm_type)


def _lppool2d_3x3_forward(x, norm_type, sh, sw, out, sums):
    """:func:`_lppool2d_forward` for a 3x3 window (any stride): same result
    bit for bit.  The windows wholly inside the input (all of them, except
    the last ones in ceil mode) add their nine powers written out, in
    row-major order; the others go through the general loop.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    _, h_los, h_his = _avg_extents(H_out, 3, sh, 0, H)
    _, w_los, w_his = _avg_extents(W_out, 3, sw, 0, W)
    oh_a, oh_b = _inner_windows(H_out, 3, sh, 0, H)
    ow_a, ow_b = _inner_windows(W_out, 3, sw, 0, W)
    q = norm_type
    for p in prange(P):
        for oh in range(H_out):
            h = oh * sh
            for lo, hi, inner in ((0, ow_a, False), (ow_a, ow_b, oh_a <= oh < oh_b),
                                  (ow_b, W_out, False)):
                if not inner:
                    for ow in range(lo, hi):
                        s = _lp_window(x, p, h_los[oh], h_his[oh], w_los[ow], w_his[ow], q, 3, 3)
                        sums[p, oh, ow] = s
                        out[p, oh, ow] = _root(s, q)
                    continue
                for ow in range(lo, hi):
                    w = ow * sw
                    if q == 2.0:                # a literal 2: _power's branches fold away
                        s = _lp_sum9(x, p, h, w, 2.0)
                    else:
                        s = _lp_sum9(x, p, h, w, q)
                    sums[p, oh, ow] = s
                    out[p, oh, ow] = _root(s, q)


def _lppool2d_backward(dout, x, out, sums, norm_type, kh, kw, sh, sw, dx):
    """Backward of LP pooling.

    dout, out, sums: (P, H_out, W_out), x: (P, H, W) -> dx: (P, H, W), overwritten.

    With ``c = kh*kw / n`` and ``out = (c * sum x**p) ** (1/p)``::

        d out / d x_i = c * x_i**(p-1) * out / sums
        dx[window] += dout * c * out / sums * x[window] ** (p-1)

    Where ``sums == 0`` the gradient is defined as 0 (as PyTorch documents).

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    pm1 = norm_type - 1.0
    _, h_los, h_his = _avg_extents(H_out, kh, sh, 0, H)
    _, w_los, w_his = _avg_extents(W_out, kw, sw, 0, W)
    flat = dx.reshape((P, H * W))
    for p in prange(P):
        for q in range(H * W):
            flat[p, q] = 0.0
        for oh in range(H_out):
            h_lo, h_hi = h_los[oh], h_his[oh]
            for ow in range(W_out):
                w_lo, w_hi = w_los[ow], w_his[ow]
                s = sums[p, oh, ow]
                if s == 0.0:
                    continue
                n = (h_hi - h_lo) * (w_hi - w_lo)
                g = dout[p, oh, ow] * out[p, oh, ow] / s
                if n != kh * kw:
                    g = g * (kh * kw) / n
                _lp_window_backward(dx, x, p, h_lo, h_hi, w_lo, w_hi, g, pm1)


def _lppool2d_3x3_backward(dout, x, out, sums, norm_type, sh, sw, dx):
    """:func:`_lppool2d_backward` for the 3x3 case of
    :func:`_lppool2d_3x3_forward`: same result bit for bit (every cell gets
    the same additions in the same order: windows in row-major order); the
    inner windows' nine cells written out, the others by the general loop.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    pm1 = norm_type - 1.0
    _, h_los, h_his = _avg_extents(H_out, 3, sh, 0, H)
    _, w_los, w_his = _avg_extents(W_out, 3, sw, 0, W)
    oh_a, oh_b = _inner_windows(H_out, 3, sh, 0, H)
    ow_a, ow_b = _inner_windows(W_out, 3, sw, 0, W)
    flat = dx.reshape((P, H * W))
    for p in prange(P):
        for q in range(H * W):
            flat[p, q] = 0.0
        for oh in range(H_out):
            h = oh * sh
            h_lo, h_hi = h_los[oh], h_his[oh]
            for lo, hi, inner in ((0, ow_a, False), (ow_a, ow_b, oh_a <= oh < oh_b),
                                  (ow_b, W_out, False)):
                for ow in range(lo, hi):
                    s = sums[p, oh, ow]
                    if s == 0.0:
                        continue
                    w = ow * sw
                    g = dout[p, oh, ow] * out[p, oh, ow] / s
                    if not inner:
                        w_lo, w_hi = w_los[ow], w_his[ow]
                        n = (h_hi - h_lo) * (w_hi - w_lo)
                        if n != 9:
                            g = g * 9 / n
                        _lp_window_backward(dx, x, p, h_lo, h_hi, w_lo, w_hi, g, pm1)
                        continue
                    if pm1 == 1.0:              # p = 2: a literal 1, the power folds away
                        _lp_add9(dx, x, p, h, w, g, 1.0)
                    else:
                        _lp_add9(dx, x, p, h, w, g, pm1)


def _lppool2d_2x2_backward(dout, x, out, sums, norm_type, dx):
    """:func:`_lppool2d_backward` for the 2x2 case of
    :func:`_lppool2d_2x2_forward`: windows do not overlap, so each cell is
    written once, ``dx = dout * out / sums * x ** (p-1)`` (0 where
    ``sums == 0`` and in a last odd row or column).  Same values as the
    general kernel (which adds to 0.0, so it never returns -0.0).

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    pm1 = norm_type - 1.0
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                s = sums[p, oh, ow]
                g = dout[p, oh, ow] * out[p, oh, ow] / s if s != 0.0 else 0.0
                dx[p, h, w] = g * _power(np.float64(x[p, h, w]), pm1)
                dx[p, h, w + 1] = g * _power(np.float64(x[p, h, w + 1]), pm1)
                dx[p, h + 1, w] = g * _power(np.float64(x[p, h + 1, w]), pm1)
                dx[p, h + 1, w + 1] = g * _power(np.float64(x[p, h + 1, w + 1]), pm1)
            for w in range(2 * W_out, W):
                dx[p, h, w] = 0.0
                dx[p, h + 1, w] = 0.0
        for h in range(2 * H_out, H):
            for w in range(W):
                dx[p, h, w] = 0.0


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
    nine = np.int64(9)          # int64 like the average kernels' divisor
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


# ------------------------------------------------------------------- compiled
maxpool2d_forward = njit(parallel=True, cache=True)(_maxpool2d_forward)
maxpool2d_2x2_forward = njit(parallel=True, cache=True)(_maxpool2d_2x2_forward)
maxpool2d_3x3_forward = njit(parallel=True, cache=True)(_maxpool2d_3x3_forward)
maxpool2d_backward = njit(parallel=True, cache=True)(_maxpool2d_backward)
maxunpool2d_forward = njit(parallel=True, cache=True)(_maxunpool2d_forward)
maxunpool2d_backward = njit(parallel=True, cache=True)(_maxunpool2d_backward)
avgpool2d_forward = njit(parallel=True, cache=True)(_avgpool2d_forward)
avgpool2d_2x2_forward = njit(parallel=True, cache=True)(_avgpool2d_2x2_forward)
avgpool2d_3x3_forward = njit(parallel=True, cache=True)(_avgpool2d_3x3_forward)
avgpool2d_backward = njit(parallel=True, cache=True)(_avgpool2d_backward)
avgpool2d_2x2_backward = njit(parallel=True, cache=True)(_avgpool2d_2x2_backward)
avgpool2d_3x3_backward = njit(parallel=True, cache=True)(_avgpool2d_3x3_backward)
lppool2d_forward = njit(parallel=True, cache=True)(_lppool2d_forward)
lppool2d_2x2_forward = njit(parallel=True, cache=True)(_lppool2d_2x2_forward)
lppool2d_3x3_forward = njit(parallel=True, cache=True)(_lppool2d_3x3_forward)
lppool2d_backward = njit(parallel=True, cache=True)(_lppool2d_backward)
lppool2d_2x2_backward = njit(parallel=True, cache=True)(_lppool2d_2x2_backward)
lppool2d_3x3_backward = njit(parallel=True, cache=True)(_lppool2d_3x3_backward)
mixedpool2d_combine = njit(parallel=True, cache=True)(_mixedpool2d_combine)
mixedpool2d_backward_combine = njit(parallel=True, cache=True)(_mixedpool2d_backward_combine)
mixedpool2d_3x3_forward = njit(parallel=True, cache=True)(_mixedpool2d_3x3_forward)
