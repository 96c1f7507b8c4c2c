"""Max pooling and max unpooling kernels (forward and backward).

Conventions (planes, geometry, parallel contract): :mod:`minicnn.kernels.window`.
"""
import numpy as np
from numba import njit, prange

from minicnn.kernels.window import PLANE_RUNS, _output_cells, _plane_run, _tap_ranges


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
    (tap ``k = 3*i + j``); ``v > best`` (NaN is not looked for here).

    As a tree of :func:`_first_max3`: each row's first maximum (three
    independent chains of two selects), then the rows' winners in order, a
    later row taking over only if strictly greater.  That is the row-major
    first maximum (the first row
    holding the maximum, and in it the first column), with a chain of four
    dependent selects instead of eight: fractional max pooling 3x3 on
    64x64x14x14 -> 7x7, kernel alone, 1303-1309 -> 772-774 us; 64x32x28x28
    -> 14x14 1320-1324 -> 1052 us (2 threads, old and new alternating,
    2026-11-24 about 04:46 UTC)."""
    best, k = _first_max3(x[p, r0, c0], x[p, r0, c1], x[p, r0, c2], 0, 1, 2)
    mid, km = _first_max3(x[p, r1, c0], x[p, r1, c1], x[p, r1, c2], 3, 4, 5)
    low, kl = _first_max3(x[p, r2, c0], x[p, r2, c1], x[p, r2, c2], 6, 7, 8)
    return _first_max3(best, mid, low, k, km, kl)


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


BLOCK_CELLS = 2048
"""Cells per block of planes in :func:`_maxpool2d_3x3s2_forward`: planes
smaller than this are handled several at a time (2048: 10 planes of 14x14,
two of 28x28; 1024 and 4096 measured the same on 14x14)."""


@njit(cache=True, inline='always')
def _first_max3(a, b, c, ia, ib, ic):
    """``(best, index)``: the first maximum of the taps a, b, c (in that
    order, ``v > best``; NaN is not looked for) and the index given with
    it.  Branch-free selects, so loops of it vectorise."""
    best, k = a, ia
    gt = b > best
    best = b if gt else best
    k = ib if gt else k
    gt = c > best
    best = c if gt else best
    k = ic if gt else k
    return best, k


@njit(cache=True)
def _maxpool_3x3s2_block(xb, B, H, W, ph, e, o, hm, hk, vv, vi, out_v, out_i, src, base):
    """``B`` consecutive planes of :func:`_maxpool2d_3x3s2_forward`; False
    (nothing written) if any of them holds a NaN.

    ``xb`` (B*H*W,) the planes, flat; scratch ``e, o, hm, vv`` of the
    planes' dtype and ``hk, vi`` int32 (the width of float32 lanes: with
    int64 indices the selects ran 10-15% slower), each at least B*H*W/2
    long; ``out_v, out_i`` (B*H_out*W/2,) the output planes, flat;
    ``src, base`` the tables of step 4.  The block is handled as one tall
    plane of ``B*H`` rows, so that on small planes (14x14) every loop runs
    over many planes at once (25% faster than plane by plane; no change on
    24x24 or 28x28).  With ``Wh = W/2``
    and ``m = r*Wh + j`` (row r of the tall plane, output column j), every
    pass is one long loop over ``m`` that the compiler vectorises:

    1. ``e[m] = x[r, 2j]``, ``o[m] = x[r, 2j+1]`` (with W even, the flat
       block's even and odd cells), noting any NaN;
    2. row winners: window column j of row r covers columns 2j-1, 2j,
       2j+1, i.e. ``o[m-1], e[m], o[m]``: ``hm[m]`` its first maximum and
       ``hk[m]`` that cell's flat index in the block (column -1 is padding:
       the j = 0 entries are redone with only the two cells inside);
    3. column winners: for every centre row c in 1 .. B*H-2, ``vv[m]`` is
       the first maximum of the row winners of rows c-1, c, c+1 (``hm[m-Wh],
       hm[m], hm[m+Wh]``) and ``vi[m]`` its index (every row, though only
       every other one is an output row, and the rows at a plane's edges
       mix two planes and are never used: work thrown away, but the loop
       is one long vectorised run);
    4. output row ``oh`` of plane b is that plane's centre row ``c = 2*oh -
       ph + 1`` of ``vv, vi``.  A centre row on the plane's edge (padding
       above or below) takes the plane's rows inside, repeated (the clamp
       of :func:`_maxpool2d_3x3_forward`): rows 0, 0, 1 or H-2, H-1, H-1,
       whose first maximum is that of the two distinct rows (a two-way
       select: 8 % faster on 64x64x14x14 than the three-way one with
       clamped indices, 5 % on 28x28), written into ``vv, vi`` at that
       centre row first (whose pass-3 value mixed two planes).  Then every
       output cell ``t`` of the block is ``vv[src[t]]`` with index
       ``vi[src[t]] - base[t]`` (``base``: its plane's first cell in the
       block), in one loop over the block's outputs, against copying each
       output row (7-14 cells) on its own: 64x64x14x14 423 -> 374 µs,
       128x16x24x24 496 -> 464, 64x32x28x28 655 -> 632 (2 threads).
       ``src`` and ``base`` are built once per call for a whole block of
       B planes (a shorter last block uses their beginning).

    Rows first, then columns, gives the row-major first maximum: the first
    row holding the window's maximum, and in it the first column.
    """
    Wh = W // 2
    n = B * H * Wh
    nan = False
    for m in range(n):
        a = xb[2 * m]
        b = xb[2 * m + 1]
        e[m] = a
        o[m] = b
        nan |= (a != a) | (b != b)
    if nan:
        return False
    for m in range(1, n):
        hm[m], hk[m] = _first_max3(o[m - 1], e[m], o[m], np.int32(2 * m - 1), np.int32(2 * m),
                                    np.int32(2 * m + 1))
    for r in range(B * H):
        m = r * Wh
        hm[m], hk[m] = _first_max3(e[m], e[m], o[m], np.int32(2 * m), np.int32(2 * m),
                                    np.int32(2 * m + 1))
    up, mid, dn = hm[:n - 2 * Wh], hm[Wh:n - Wh], hm[2 * Wh:n]      # rows c-1, c, c+1
    kup, kmid, kdn = hk[:n - 2 * Wh], hk[Wh:n - Wh], hk[2 * Wh:n]
    vvm, vim = vv[Wh:n - Wh], vi[Wh:n - Wh]
    for j in range(n - 2 * Wh):
        vvm[j], vim[j] = _first_max3(up[j], mid[j], dn[j], kup[j], kmid[j], kdn[j])
    H_out = out_v.shape[0] // (B * Wh)
    for b in range(B):                          # centre rows on a plane's edge: into vv, vi
        for c in (1 - ph, 2 * (H_out - 1) - ph + 1):
            if c == 0 or c == H - 1:
                r0 = (b * H + max(c - 1, 0)) * Wh
                r2 = (b * H + min(c + 1, H - 1)) * Wh
                q = (b * H + c) * Wh
                for j in range(Wh):
                    gt = hm[r2 + j] > hm[r0 + j]
                    vv[q + j] = hm[r2 + j] if gt else hm[r0 + j]
                    vi[q + j] = hk[r2 + j] if gt else hk[r0 + j]
    for t in range(B * H_out * Wh):             # every output cell from its centre row
        q = np.uint64(src[t])
        out_v[t] = vv[q]
        out_i[t] = vi[q] - base[t]
    return True


def _maxpool2d_3x3s2_forward(x, ph, out, argmax):
    """:func:`_maxpool2d_forward` for a 3x3 window, stride 2, no dilation,
    column padding 1 and row padding ``ph`` (0 or 1), on planes of even
    width W with ``W_out = W/2`` (floor mode; AlexNet-style overlapping
    pooling): same shapes, same rule, same result bit for bit.

    Separable, in long vectorised loops over blocks of
    ``B = max(1, BLOCK_CELLS // (H*W))`` consecutive planes
    (:func:`_maxpool_3x3s2_block`); a block holding a NaN (rare) goes plane
    by plane and window by window through :func:`_max_window`, which
    applies the NaN rule.

    Parallel: the P planes are cut into runs of consecutive planes
    (:func:`~minicnn.kernels.window._plane_run`), and ``prange`` is over the
    runs; iteration ``c`` cuts its run into blocks and writes only its
    planes of ``out`` and ``argmax`` and row ``c`` of the scratch arrays
    (allocated once, before the loop).
    H_out, W_out: ``geometry.output_size`` (read from the output's shape).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    L, L_out = H * W, H_out * W_out
    B = max(1, BLOCK_CELLS // L)
    n = B * H * (W // 2)
    xf = x.reshape(P * L)
    of = out.reshape(P * L_out)
    af = argmax.reshape(P * L_out)
    n_chunks = min(P, PLANE_RUNS)
    e = np.empty((n_chunks, n), x.dtype)
    o = np.empty((n_chunks, n), x.dtype)
    hm = np.empty((n_chunks, n), x.dtype)
    vv = np.empty((n_chunks, n), x.dtype)
    hk = np.empty((n_chunks, n), np.int32)     # block indices: B*H*W < 2**31 as H*W is (layer)
    vi = np.empty((n_chunks, n), np.int32)
    i0s, i1s = _tap_ranges(H_out, 3, 2, ph, 1, H)
    j0s, j1s = _tap_ranges(W_out, 3, 2, 1, 1, W)
    Wh = W // 2
    first = _output_cells(H_out, W_out, Wh, 2, 1 - ph)     # plane 0's output cells in vv
    src = np.empty(B * L_out, np.int64)      # output cell t of a block <- vv[src[t]]
    base = np.empty(B * L_out, np.int64)     # block index of its plane's first cell
    for b in range(B):
        for m in range(L_out):
            src[b * L_out + m] = first[m] + b * H * Wh
            base[b * L_out + m] = b * L
    for c in prange(n_chunks):
        p_lo, p_hi = _plane_run(c, n_chunks, P)
        for p0 in range(p_lo, p_hi, B):
            nb = min(B, p_hi - p0)
            if not _maxpool_3x3s2_block(xf[p0 * L:(p0 + nb) * L], nb, H, W, ph, e[c], o[c], hm[c],
                                        hk[c], vv[c], vi[c], of[p0 * L_out:(p0 + nb) * L_out],
                                        af[p0 * L_out:(p0 + nb) * L_out], src, base):
                for p in range(p0, p0 + nb):
                    _maxpool_plane(x, p, 2, 2, ph, 1, 1, 1, i0s, i1s, j0s, j1s, out, argmax)


@njit(cache=True)
def _first_max4(a, b, c, d, ia, ib, ic, id_):
    """The 2x2 window rule: of the taps a, b, c, d (row-major order, flat
    indices ia..id_), the first maximum wins (strict ``>``); if any tap is
    NaN, the last NaN wins instead.  Returns ``(value, index)``; used by
    :func:`_maxpool2d_2x2_forward`.  (Written with one assignment per
    variable: tuple assignments made that kernel 40 % slower.)"""
    best = a
    idx = ia
    if b > best:
        best = b
        idx = ib
    if c > best:
        best = c
        idx = ic
    if d > best:
        best = d
        idx = id_
    if (a != a) | (b != b) | (c != c) | (d != d):   # rare: the last NaN wins
        if a != a:
            best = a
            idx = ia
        if b != b:
            best = b
            idx = ib
        if c != c:
            best = c
            idx = ic
        if d != d:
            best = d
            idx = id_
    return best, idx


def _maxpool2d_2x2_forward(x, out, argmax):
    """:func:`_maxpool2d_forward` for kernel 2x2, stride 2, no padding, no
    dilation, every window full (``2*H_out <= H``, ``2*W_out <= W``).

    Same shapes, same rule, same result bit for bit: the taps a, b, c, d in
    row-major order, first maximum wins, then the last NaN if any
    (:func:`_first_max4`).

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
                best, idx = _first_max4(x[p, h, w], x[p, h, w + 1], x[p, h + 1, w], x[p, h + 1, w + 1],
                                        h * W + w, h * W + w + 1, h * W + W + w, h * W + W + w + 1)
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
def _maxunpool2d_forward(x, indices, out, ok):
    """Partial inverse of max pooling: scatter each value to its index.

    x, indices: (P, H_in, W_in) -> out: (P, H_out, W_out), overwritten;
    ok: (P,) bool, written.

    Forward: ``out = 0; out.flat[indices] = x`` per plane, in row-major order
    of ``x`` (if two entries share an index, the later one wins).  The
    indices are checked against ``[0, H_out*W_out)`` in the scatter loop
    itself: an index outside is written to cell 0 instead (never outside
    the plane) and sets ``ok[p] = False``, and the layer raises, so a plane
    with a bad index is never returned.  (The previous version ran a
    min/max pass over the plane's indices before the scatter; it took
    7-13 % longer: 64x32x28x28 unpooled from 2x2/2 indices 248 -> 232 us,
    from 3x3/2 p1 indices 228 -> 197 us.)

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: the unpooled size the layer chose (MaxUnpool2D).
    """
    P, H_in, W_in = x.shape
    n = out.shape[1] * out.shape[2]
    out_flat = out.reshape((P, n))
    x_flat = x.reshape((P, H_in * W_in))
    idx_flat = indices.reshape((P, H_in * W_in))
    for p in prange(P):
        o, xp, ip = out_flat[p], x_flat[p], idx_flat[p]     # views indexed from 0: they vectorise
        for q in range(n):
            o[q] = 0.0
        bad = False
        for q in range(ip.shape[0]):
            k = ip[q]
            outside = (k < 0) | (k >= n)
            bad |= outside
            o[0 if outside else k] = xp[q]
        ok[p] = not bad


def _maxunpool2d_backward(dout, indices, dx):
    """Backward of max unpooling: gather.

    dout: (P, H_out, W_out) C-contiguous, indices: (P, H_in, W_in)
    -> dx: (P, H_in, W_in), overwritten.  Rule: ``dx = dout.flat[indices]``
    (indices checked by the forward pass).

    Parallel: prange over the P planes; iteration p writes only plane p.
    H_out, W_out: the unpooled size the layer chose (MaxUnpool2D).
    """
    P, H_in, W_in = dx.shape
    d_flat = dout.reshape((P, dout.shape[1] * dout.shape[2]))
    dx_flat = dx.reshape((P, H_in * W_in))
    idx_flat = indices.reshape((P, H_in * W_in))
    for p in prange(P):
        d, o, ip = d_flat[p], dx_flat[p], idx_flat[p]
        for q in range(ip.shape[0]):
            o[q] = d[np.uint64(ip[q])]           # in range: checked by the forward


maxpool2d_forward = njit(parallel=True, cache=True)(_maxpool2d_forward)
maxpool2d_2x2_forward = njit(parallel=True, cache=True)(_maxpool2d_2x2_forward)
maxpool2d_3x3_forward = njit(parallel=True, cache=True)(_maxpool2d_3x3_forward)
maxpool2d_3x3s2_forward = njit(parallel=True, cache=True)(_maxpool2d_3x3s2_forward)
maxpool2d_backward = njit(parallel=True, cache=True)(_maxpool2d_backward)
maxunpool2d_forward = njit(parallel=True, cache=True)(_maxunpool2d_forward)
maxunpool2d_backward = njit(parallel=True, cache=True)(_maxunpool2d_backward)
