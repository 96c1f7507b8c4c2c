"""Power-average (LP) pooling kernels (forward and backward).

Conventions (planes, geometry, parallel contract): :mod:`minicnn.kernels.window`.
"""
import math

import numpy as np
from numba import njit, prange

from minicnn.kernels.window import (PLANE_RUNS, _add9, _avg_extents, _inner_windows, _output_cells,
                                    _plane_run, _window_rows_3x3s2, _zero_uncovered_2x2)


@njit(cache=True, inline='always')
def _power(v, p):
    """``v ** p`` as PyTorch's ``pow`` computes it: C ``pow``, but ``v * v``
    for p = 2, ``sqrt(v)`` for p = 0.5 and ``1 / sqrt(v)`` for p = -0.5
    (the exponents PyTorch turns into those operations; they differ from C
    ``pow`` only at -inf, where the root is NaN and ``pow`` gives +inf or
    +0, and at -0.0)."""
    if p == 2.0:
        return v * v
    if p == 1.0:
        return v
    if p == 0.5:
        return math.sqrt(v) if v >= 0.0 else math.nan
    if p == -0.5:
        if not v >= 0.0:
            return math.nan
        r = math.sqrt(v)
        return 1.0 / r if r != 0.0 else math.copysign(math.inf, r)   # no division by 0 in Numba
    return v ** p


@njit(cache=True, inline='always')
def _root(s, p):
    """``s ** (1/p)`` (C ``pow``); ``sqrt`` for p = 2 (the same, correctly rounded)."""
    if p == 2.0:
        return math.sqrt(s) if s >= 0.0 else math.nan
    if p == 1.0:
        return s
    return s ** (1.0 / p)


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
def _lp_window_backward(dx, p, h_lo, h_hi, w_lo, w_hi, g):
    """``dx[p, window] += g`` over ``[h_lo, h_hi) x [w_lo, w_hi)``: a
    window's share, added to the share sums (see :func:`_lppool2d_backward`)."""
    for h in range(h_lo, h_hi):
        for w in range(w_lo, w_hi):
            dx[p, h, w] += g


@njit(cache=True, inline='always')
def _lp_times_power(dxp, xp, pm1):
    """``dx = S * x ** (p-1)`` over a flat plane whose ``dx`` holds the share
    sums ``S`` (power and product in float64); 0 where ``S == 0``, so that a
    cell no window sends anything to gets 0 even where ``x ** (p-1)`` is
    infinite (x = 0 with p < 1)."""
    for q in range(dxp.shape[0]):
        sq = dxp[q]
        dxp[q] = sq * _power(np.float64(xp[q]), pm1) if sq != 0.0 else 0.0


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


@njit(cache=True, inline='always')
def _lp_split(plane, e, o, norm_type):
    """``e[m] = x[2m] ** p``, ``o[m] = x[2m+1] ** p`` (float64) over a flat
    plane of even width: the powers of its even and odd columns."""
    for m in range(e.shape[0] - 1):
        e[m] = _power(np.float64(plane[2 * m]), norm_type)
        o[m] = _power(np.float64(plane[2 * m + 1]), norm_type)


def _lppool2d_3x3s2_forward(x, norm_type, out, sums):
    """:func:`_lppool2d_forward` for a 3x3 window, stride 2, even width W,
    ``W_out = W/2 - 1`` and ``H_out = (H - 3)//2 + 1`` (floor mode, every
    window full): same powers, same sums in the same order, same result bit
    for bit.

    Per plane, with ``Wh = W/2`` and ``m = r*Wh + j``: the powers of the
    even and odd columns, ``e[m] = x[r, 2j] ** p`` and ``o[m] = x[r, 2j+1]
    ** p``, each computed once (the 3x3 kernel computes a cell's power once
    per window holding it, 2.25 times on average); then, for every centre
    row c (only every other one is an output row), the window sum
    ``e[m] + o[m] + e[m+1]`` over rows c-1, c, c+1 in row-major order from
    0, in one long loop over the plane that the compiler vectorises; then
    output row oh is centre row ``2*oh + 1``.  (Its last column, j = Wh-1,
    is not an output: it reads a zero past the plane's end.)  The output
    rows' sums are gathered into one float64 row per plane, and ``sums``
    and the roots are taken from it in loops over the whole output plane:
    for p = 2 the square roots then vectorise (128x16x24x24, 2 threads,
    627-656 -> 429-459 us; a root per output inside the row loops, the
    previous version, did not vectorise).

    Parallel: prange over runs of consecutive planes (as
    :func:`~minicnn.kernels.max_pooling._maxpool2d_3x3s2_forward`);
    iteration c writes only its planes and its rows of the scratch arrays.
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    Wh = W // 2
    n = H * Wh
    t_end = (H - 2) * Wh                 # centre rows 1 .. H-2
    xf = x.reshape((P, H * W))
    n_chunks = min(P, PLANE_RUNS)
    E = np.empty((n_chunks, n + 1), np.float64)    # cell n is zeroed below
    O = np.empty((n_chunks, n + 1), np.float64)
    V = np.empty((n_chunks, max(t_end, 0)), np.float64)
    no = H_out * W_out
    src = _output_cells(H_out, W_out, Wh, 2, 0)    # output cell m's window sum is v[src[m]]
    U = np.empty((n_chunks, no), np.float64)
    sf = sums.reshape((P, no))
    of = out.reshape((P, no))
    for c in prange(n_chunks):
        E[c, n] = O[c, n] = 0.0
        e, o, v, u = E[c], O[c], V[c], U[c]
        e0, o0, f0 = E[c, :t_end], O[c, :t_end], E[c, 1:t_end + 1]                   # row c-1
        e1, o1, f1 = E[c, Wh:Wh + t_end], O[c, Wh:Wh + t_end], E[c, Wh + 1:Wh + t_end + 1]
        e2, o2, f2 = E[c, 2 * Wh:2 * Wh + t_end], O[c, 2 * Wh:2 * Wh + t_end], E[c, 2 * Wh + 1:]
        p_lo, p_hi = _plane_run(c, n_chunks, P)
        for p in range(p_lo, p_hi):
            if norm_type == 2.0:             # a literal 2: _power's branches fold away
                _lp_split(xf[p], e, o, 2.0)
            else:
                _lp_split(xf[p], e, o, norm_type)
            for t in range(t_end):
                s = 0.0
                s += e0[t]
                s += o0[t]
                s += f0[t]
                s += e1[t]
                s += o1[t]
                s += f1[t]
                s += e2[t]
                s += o2[t]
                s += f2[t]
                v[t] = s
            for m in range(no):               # the output rows' sums, float64
                u[m] = v[src[m]]
            sp, op = sf[p], of[p]
            for m in range(no):
                sp[m] = u[m]
            if norm_type == 2.0:             # a literal 2: the root is a sqrt that vectorises
                for m in range(no):
                    op[m] = _root(u[m], 2.0)
            else:
                for m in range(no):
                    op[m] = _root(u[m], norm_type)


def _lppool2d_backward(dout, x, out, sums, norm_type, kh, kw, sh, sw, dx):
    """Backward of LP pooling.

    dout, out, sums: (P, H_out, W_out), x: (P, H, W) -> dx: (P, H, W), overwritten.

    With ``c = kh*kw / n`` and ``out = (c * sum x**p) ** (1/p)``::

        d out / d x_i = c * x_i**(p-1) * out / sums
        share g = dout * c * out / sums             (one per window)
        dx = x ** (p-1) * S,   S[cell] = sum of the shares of its windows

    PyTorch's order (the backward of ``avg_pool(x ** p)`` gives S, then the
    power's derivative multiplies it).  The shares are computed and summed
    in the planes' dtype, windows in row-major order (as in average
    pooling); the power and the product in float64.  Where ``sums == 0``
    the window sends nothing (its gradient is defined as 0, as PyTorch
    documents), and a cell with ``S == 0`` gets 0.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    pm1 = norm_type - 1.0
    _, h_los, h_his = _avg_extents(H_out, kh, sh, 0, H)
    _, w_los, w_his = _avg_extents(W_out, kw, sw, 0, W)
    flat = dx.reshape((P, H * W))
    xf = x.reshape((P, H * W))
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
                _lp_window_backward(dx, p, h_lo, h_hi, w_lo, w_hi, g)
        if pm1 == 1.0:                       # p = 2: a literal 1, the power folds away
            _lp_times_power(flat[p], xf[p], 1.0)
        else:
            _lp_times_power(flat[p], xf[p], pm1)


def _lppool2d_3x3_backward(dout, x, out, sums, norm_type, sh, sw, dx):
    """:func:`_lppool2d_backward` for the 3x3 case of
    :func:`_lppool2d_3x3_forward`: same result bit for bit (every cell gets
    the same shares in the same order: windows in row-major order); the
    inner windows' nine cells written out, the others by the general loop.
    Each window's ``dout * out / sums`` is computed first, in one loop over
    the output plane, where the divisions vectorise (64x32x28x28 3x3/2,
    p = 2: 1820-2104 -> 1695-1701 us; 64x64x14x14 801-804 -> 747-748 us).

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
    xf = x.reshape((P, H * W))
    no = H_out * W_out
    G = np.empty((P, no), dout.dtype)        # each window's dout * out / sums
    one = dout.dtype.type(1.0)
    df, of, sf = dout.reshape((P, no)), out.reshape((P, no)), sums.reshape((P, no))
    for p in prange(P):
        gp, dp, op, sp = G[p], df[p], of[p], sf[p]
        for m in range(no):                  # one loop over the plane: the divisions vectorise
            gp[m] = dp[m] * op[m] / (sp[m] if sp[m] != 0.0 else one)   # sums == 0: not used
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
                    g = G[p, oh * W_out + ow]
                    if not inner:
                        w_lo, w_hi = w_los[ow], w_his[ow]
                        n = (h_hi - h_lo) * (w_hi - w_lo)
                        if n != 9:
                            g = g * 9 / n
                        _lp_window_backward(dx, p, h_lo, h_hi, w_lo, w_hi, g)
                        continue
                    _add9(dx, p, h, w, g)
        if pm1 == 1.0:                       # p = 2: a literal 1, the power folds away
            _lp_times_power(flat[p], xf[p], 1.0)
        else:
            _lp_times_power(flat[p], xf[p], pm1)


def _lppool2d_3x3s2_backward(dout, x, out, sums, norm_type, dx):
    """:func:`_lppool2d_backward` for the windows of
    :func:`_lppool2d_3x3s2_forward` (3x3, stride 2, even W, every window
    full), the share sums in gather form: same result bit for bit.

    Window (oh, ow) covers rows ``2oh .. 2oh+2`` and columns ``2ow ..
    2ow+2``, so a cell is in at most two window rows ``lo < hi`` and two
    window columns: column ``2j`` in windows ``j-1`` and ``j``, column
    ``2j+1`` in window j only.  The scatter form adds the shares to +0 in
    row-major window order; here each cell computes that sum itself,
    ``0 + g[lo, j-1] + g[lo, j] + g[hi, j-1] + g[hi, j]`` and ``0 + g[lo, j]
    + g[hi, j]``, reading the shares from a scratch ``g`` whose window (oh,
    ow) sits at row oh, column ow + 1.  A window that does not exist, or
    whose ``sums == 0``, is a share of +0, which changes no sum (the sums
    start at +0 and so are never -0).  Then ``dx = S * x ** (p-1)`` over the
    plane.  (64x64x14x14, p = 2, 2 threads: 351 us, against 824 us for
    the 3x3 kernel as it was, adding each window's ``g * x ** (p-1)`` to
    its cells.)

    Parallel: prange over runs of consecutive planes; iteration c writes
    only its planes of ``dx`` and its rows of the scratch arrays.
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    Wh = W // 2
    Wg = Wh + 1                              # scratch columns: W_out + 2
    pm1 = norm_type - 1.0
    dt = dx.dtype.type
    lohi = _window_rows_3x3s2(H, H_out, 0, Wg)      # each row's window rows in g (H_out: zeros)
    n_chunks = min(P, PLANE_RUNS)
    G = np.empty((n_chunks, (H_out + 1) * Wg), dx.dtype)     # zeroed per run, below
    no = H_out * W_out
    gpos = _output_cells(H_out, W_out, Wg, 1, 0) + 1     # the cell of G that window m's share goes to
    T = np.empty((n_chunks, no), dx.dtype)
    df, of, sf = dout.reshape((P, no)), out.reshape((P, no)), sums.reshape((P, no))
    flat = dx.reshape((P, H * W))
    xf = x.reshape((P, H * W))
    one = dt(1.0)
    zero = dt(0.0)
    for c in prange(n_chunks):
        p_lo, p_hi = _plane_run(c, n_chunks, P)
        t, gc = T[c], G[c]
        for q in range(gc.shape[0]):         # the cells no window's share goes to stay 0
            gc[q] = 0.0
        for p in range(p_lo, p_hi):
            dp, op, sp = df[p], of[p], sf[p]
            for m in range(no):              # one loop over the plane: the divisions vectorise
                sm = sp[m]
                t[m] = dp[m] * op[m] / (sm if sm != 0.0 else one) if sm != 0.0 else zero
            for m in range(no):
                gc[np.uint64(gpos[m])] = t[m]     # uint64: no wraparound (kernels/__init__)
            for r in range(H):
                lo, hi = lohi[r, 0], lohi[r, 1]
                g0, g1 = G[c, lo:lo + Wg], G[c, hi:hi + Wg]
                row = dx[p, r]
                for j in range(Wh):
                    ev = dt(0)
                    ev += g0[j]
                    ev += g0[j + 1]
                    ev += g1[j]
                    ev += g1[j + 1]
                    od = dt(0)
                    od += g0[j + 1]
                    od += g1[j + 1]
                    row[2 * j] = ev
                    row[2 * j + 1] = od
            if pm1 == 1.0:                   # p = 2: a literal 1, the power folds away
                _lp_times_power(flat[p], xf[p], 1.0)
            else:
                _lp_times_power(flat[p], xf[p], pm1)


def _lppool2d_2x2_backward(dout, x, out, sums, norm_type, dx):
    """:func:`_lppool2d_backward` for the 2x2 case of
    :func:`_lppool2d_2x2_forward`: windows do not overlap, so each cell's
    share sum is its one window's share ``g = dout * out / sums`` (0 where
    ``sums == 0``), and ``dx = g * x ** (p-1)`` (0 where g == 0 and in a
    last odd row or column): the general kernel's values.

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    pm1 = norm_type - 1.0
    zero = dout.dtype.type(0.0)
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                s = sums[p, oh, ow]
                g = dout[p, oh, ow] * out[p, oh, ow] / s if s != 0.0 else zero
                if g == 0.0:
                    dx[p, h, w] = dx[p, h, w + 1] = dx[p, h + 1, w] = dx[p, h + 1, w + 1] = 0.0
                    continue
                dx[p, h, w] = g * _power(np.float64(x[p, h, w]), pm1)
                dx[p, h, w + 1] = g * _power(np.float64(x[p, h, w + 1]), pm1)
                dx[p, h + 1, w] = g * _power(np.float64(x[p, h + 1, w]), pm1)
                dx[p, h + 1, w + 1] = g * _power(np.float64(x[p, h + 1, w + 1]), pm1)
        _zero_uncovered_2x2(dx, p, H_out, W_out)


lppool2d_forward = njit(parallel=True, cache=True)(_lppool2d_forward)
lppool2d_2x2_forward = njit(parallel=True, cache=True)(_lppool2d_2x2_forward)
lppool2d_3x3_forward = njit(parallel=True, cache=True)(_lppool2d_3x3_forward)
lppool2d_3x3s2_forward = njit(parallel=True, cache=True)(_lppool2d_3x3s2_forward)
lppool2d_backward = njit(parallel=True, cache=True)(_lppool2d_backward)
lppool2d_2x2_backward = njit(parallel=True, cache=True)(_lppool2d_2x2_backward)
lppool2d_3x3_backward = njit(parallel=True, cache=True)(_lppool2d_3x3_backward)
lppool2d_3x3s2_backward = njit(parallel=True, cache=True)(_lppool2d_3x3s2_backward)
