"""Convolution kernels: im2col / col2im as parallel Numba loops.

The convolution itself is one BLAS matrix product over the column matrix
(see :class:`minicnn.layers.conv.Conv2D`); these kernels only move data.

Layout (shared by both kernels)::

    x     : (N, C, H, W)
    cols  : (C*kH*kW, N*H_out*W_out)
            row    r = (c*kH + i)*kW + j          (channel, kernel row, kernel col)
            column q = (n*H_out + oh)*W_out + ow  (sample, output row, output col)
    cols[r, q] = x[n, c, oh*sH - pH + i, ow*sW - pW + j]   (0 outside the input)

Output size: ``minicnn.layers.geometry.output_size`` (PyTorch's formula,
floor mode, dilation 1).

With ``Wm = W.reshape(C_out, C*kH*kW)`` the forward pass is
``y = Wm @ cols (+ b)``; backward is ``dW = dY @ cols.T``,
``dcols = Wm.T @ dY`` and ``dx = col2im(dcols)``.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True)
def _inside(n_out, s, offset, L):
    """The outputs ``o`` in ``[lo, hi)`` whose tap ``o*s + offset`` lies in
    ``[0, L)`` (``0 <= lo <= hi <= n_out``).  Hoisting this out of the
    copy loops leaves them branch-free, so they vectorise."""
    lo = 0 if offset >= 0 else (s - 1 - offset) // s
    hi = 0 if offset > L - 1 else (L - 1 - offset) // s + 1
    lo = min(lo, n_out)
    hi = max(min(hi, n_out), lo)
    return lo, hi


def _im2col(x, kh, kw, sh, sw, ph, pw, H_out, W_out, cols):
    """Unfold ``x`` (N, C, H, W) into ``cols`` (C*kh*kw, N*H_out*W_out).

    Two loop shapes, the same result:

    * stride 1 with ``W_out == W`` (e.g. 3x3 padding 1, the common case):
      row ``r = (c, i, j)`` of sample ``n`` is the plane ``x[n, c]`` read
      at a constant flat offset ``off = (i - ph)*W + (j - pw)``, so it is
      one long contiguous copy, then the cells whose tap falls in the
      padding (whole rows above/below, ``pw`` columns at each side) are
      set to 0 (:func:`_shifted_plane`);
      with a kernel 3 wide (so column padding 1) the three rows ``(c, i,
      0..2)`` are written in one pass over the plane
      (:func:`_three_shifted_planes`);
    * otherwise output row by output row (:func:`_strided_rows`).

    Parallel contract: prange over the (channel c, sample n) pairs;
    iteration ``(c, n)`` writes only the blocks
    ``cols[(c*kh + i)*kw + j, n*H_out*W_out:(n+1)*H_out*W_out]`` of its
    channel's kh*kw rows, so iterations never race.  (One iteration per
    (row, sample) pair instead cost ~25 % more on 14x14 planes: 4,608 tiny
    tasks for 8 channels at batch 64.)
    """
    N, C, H, W = x.shape
    flat = sh == 1 and sw == 1 and W_out == W
    xf = x.reshape((N, C, H * W))
    P = H_out * W_out
    for t in prange(C * N):
        c = t // N
        n = t % N
        for i in range(kh):
            r = (c * kh + i) * kw
            if flat and kw == 3:
                _three_shifted_planes(xf[n, c], i - ph, H_out, W, cols[r, n * P:(n + 1) * P],
                                      cols[r + 1, n * P:(n + 1) * P], cols[r + 2, n * P:(n + 1) * P])
                continue
            for j in range(kw):
                dst = cols[r + j, n * P:(n + 1) * P]
                if flat:
                    _shifted_plane(xf[n, c], i - ph, j - pw, H_out, W, dst)
                else:
                    _strided_rows(x[n, c], i - ph, j - pw, sh, sw, H_out, W_out, dst)


@njit(cache=True, inline="always")
def _shifted_plane(src, di, dj, H_out, W, dst):
    """``dst[oh*W + ow] = src[(oh + di)*W + ow + dj]`` when that cell is inside
    the (H, W) plane ``src`` (flat, H*W), else 0; ``dst`` is (H_out*W,).

    The copy runs over one contiguous range indexed from 0 (Numba can prove
    such indices non-negative and vectorises the loop); cells whose column
    ``ow + dj`` wraps into a neighbouring row are then zeroed.
    """
    oh_lo, oh_hi, off, q0, q1 = _shift_run(di, dj, H_out, src.shape[0] // W, W)
    for q in range(q0):
        dst[q] = 0.0
    d = dst[q0:q1]
    s = src[q0 + off:q1 + off]
    for q in range(q1 - q0):
        d[q] = s[q]
    tail = dst[q1:]
    for q in range(H_out * W - q1):
        tail[q] = 0.0
    _zero_wrapped_columns(dst, oh_lo, oh_hi, dj, W)


@njit(cache=True, inline="always")
def _three_shifted_planes(src, di, H_out, W, d0, d1, d2):
    """:func:`_shifted_plane` for the taps ``j = 0, 1, 2`` of one kernel row
    at once (a kernel 3 wide with column padding 1, stride 1)::

        d_j[oh*W + ow] = src[(oh + di)*W + ow + j - 1]   inside the plane, else 0

    ``src`` is the (H, W) plane, flat; ``d0, d1, d2`` are (H_out*W,).  The
    block's rows inside the plane, entries ``[q0, q1)``, read one run ``s``
    of the plane (starting at ``q0 + di*W``): ``d1`` is ``s``, and ``d0``
    and ``d2`` are ``s`` moved one cell right and left, all three written
    in one loop over the run (im2col 1.4-1.8x faster than with three
    :func:`_shifted_plane` calls, on 14x14 planes; benchmarks/README.md).
    Then the entries that read column -1 or column W (the padding) are
    zeroed: column 0 of ``d0`` and column W-1 of ``d2``, which also covers
    the two ends of the run.
    """
    oh_lo, oh_hi, off, q0, q1 = _shift_run(di, 0, H_out, src.shape[0] // W, W)
    n = q1 - q0
    for q in range(q0):                                  # rows above the plane
        d0[q] = 0.0
        d1[q] = 0.0
        d2[q] = 0.0
    t0, t1, t2 = d0[q1:], d1[q1:], d2[q1:]               # rows below it
    for q in range(H_out * W - q1):
        t0[q] = 0.0
        t1[q] = 0.0
        t2[q] = 0.0
    if n == 0:
        return
    s = src[q0 + off:q1 + off]
    a, b, c = d0[q0:q1], d1[q0:q1], d2[q0:q1]
    b[0] = s[0]
    if n > 1:
        c[0] = s[1]
        for q in range(1, n - 1):                        # q - 1 >= 0: the loop vectorises
            a[q] = s[q - 1]
            b[q] = s[q]
            c[q] = s[q + 1]
        a[n - 1] = s[n - 2]
        b[n - 1] = s[n - 1]
    for r in range(n // W):
        a[r * W] = 0.0
        c[r * W + W - 1] = 0.0


@njit(cache=True, inline="always")
def _shift_run(di, dj, H_out, H, W):
    """The flat shift shared by :func:`_shifted_plane`, :func:`_three_shifted_planes`
    (with ``dj = 0``: the centre tap's run) and their adjoints:
    entry ``q = oh*W + ow`` of an (H_out, W) block meets cell ``q + off``,
    ``off = di*W + dj``, of the (H, W) plane.  Returns ``(oh_lo, oh_hi,
    off, q0, q1)``: the rows ``oh_lo <= oh < oh_hi`` whose row ``oh + di``
    is inside the plane, and the run ``[q0, q1)`` of those rows' entries
    whose ``q + off`` stays inside ``[0, H*W)`` (it differs from the rows'
    span only at cells whose column wraps, which the callers zero).
    ``0 <= q0 <= q1 <= H_out*W``: with one output row and a tap up and to
    the left, ``-off`` exceeds the block, so ``q0`` is clamped to it."""
    oh_lo, oh_hi = _inside(H_out, 1, di, H)
    off = di * W + dj
    q0 = min(max(oh_lo * W, -off), H_out * W)
    q1 = max(min(oh_hi * W, H * W - off), q0)
    return oh_lo, oh_hi, off, q0, q1


@njit(cache=True, inline="always")
def _zero_wrapped_columns(a, oh_lo, oh_hi, dj, W):
    """Zero ``a[oh*W + ow]`` for the rows ``oh_lo <= oh < oh_hi`` and the
    columns whose ``ow + dj`` falls outside ``[0, W)``: there the flat
    shift wraps into a neighbouring row (those cells are padding)."""
    lo, hi = _inside(W, 1, dj, W)
    for oh in range(oh_lo, oh_hi):
        for ow in range(lo):
            a[oh * W + ow] = 0.0
        for ow in range(hi, W):
            a[oh * W + ow] = 0.0


@njit(cache=True, inline="always")
def _strided_rows(src, di, dj, sh, sw, H_out, W_out, dst):
    """``dst[oh*W_out + ow] = src[oh*sh + di, ow*sw + dj]`` inside the (H, W)
    plane ``src``, else 0; ``dst`` is (H_out*W_out,).  The general case,
    output row by output row."""
    H, W = src.shape
    lo, hi = _inside(W_out, sw, dj, W)
    for oh in range(H_out):
        h = oh * sh + di
        q0 = oh * W_out
        if h < 0 or h >= H:
            for ow in range(W_out):
                dst[q0 + ow] = 0.0
            continue
        for ow in range(lo):
            dst[q0 + ow] = 0.0
        for ow in range(lo, hi):
            dst[q0 + ow] = src[h, ow * sw + dj]
        for ow in range(hi, W_out):
            dst[q0 + ow] = 0.0


def _col2im(dcols, kh, kw, sh, sw, ph, pw, H_out, W_out, dx):
    """Fold ``dcols`` (C*kh*kw, N*H_out*W_out) back into ``dx`` (N, C, H, W).

    Backward rule (adjoint of im2col): every column entry is *added* to the
    input cell it was copied from; entries whose tap fell in the padding
    are dropped::

        dx[n, c, oh*sh - ph + i, ow*sw - pw + j] += dcols[r, q]

    Each cell collects its contributions in the order of the taps
    ``(i, j)``.  In the stride-1, ``W_out == W`` case the entries of
    ``dcols`` that belong to padding columns are first set to 0 (``dcols``
    is scratch: it is modified there), so each tap becomes one contiguous
    add over the plane (the mirror of :func:`_shifted_plane`); adding
    those zeros leaves every sum unchanged.  With a kernel 3 wide the three
    taps of a kernel row are added in one pass
    (:func:`_add_three_shifted_planes`), each cell still in tap order.

    ``dx`` is overwritten (zeroed here first).  Parallel contract: prange
    over the N*C planes of ``dx``; each iteration writes only its own plane
    and the entries of ``dcols`` rows ``(c, *, *)`` of its sample, so
    overlapping windows (stride < kernel) cannot race.
    """
    N, C, H, W = dx.shape
    flat = sh == 1 and sw == 1 and W_out == W
    dxf = dx.reshape((N, C, H * W))
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        d = dxf[n, c]
        for q in range(H * W):
            d[q] = 0.0
        base = n * H_out * W_out
        for i in range(kh):
            r = (c * kh + i) * kw
            if flat and kw == 3:
                _add_three_shifted_planes(dcols[r, base:base + H_out * W_out],
                                          dcols[r + 1, base:base + H_out * W_out],
                                          dcols[r + 2, base:base + H_out * W_out], i - ph, H_out, d)
                continue
            for j in range(kw):
                src = dcols[r + j, base:base + H_out * W_out]
                if flat:
                    _add_shifted_plane(src, i - ph, j - pw, H_out, d)
                else:
                    _add_strided_rows(src, i - ph, j - pw, sh, sw, H_out, W_out, dx[n, c])


@njit(cache=True, inline="always")
def _add_shifted_plane(src, di, dj, H_out, dst):
    """Adjoint of :func:`_shifted_plane`: ``dst[(oh + di)*W + ow + dj] +=
    src[oh*W + ow]`` for the cells inside the plane; ``src`` (H_out*W,)
    has its padding-column entries zeroed first, ``dst`` is (H*W,) flat."""
    W = src.shape[0] // H_out
    oh_lo, oh_hi, off, q0, q1 = _shift_run(di, dj, H_out, dst.shape[0] // W, W)
    _zero_wrapped_columns(src, oh_lo, oh_hi, dj, W)
    d = dst[q0 + off:q1 + off]
    s = src[q0:q1]
    for q in range(q1 - q0):
        d[q] += s[q]


@njit(cache=True, inline="always")
def _add_three_shifted_planes(e0, e1, e2, di, H_out, dst):
    """Adjoint of :func:`_three_shifted_planes`, as three
    :func:`_add_shifted_plane` calls (taps j = 0, 1, 2) in one pass::

        dst[(oh + di)*W + ow + j - 1] += e_j[oh*W + ow]   for cells inside the plane

    ``e0, e1, e2`` (H_out*W,) are scratch: the entries that belong to the
    padding (column 0 of ``e0``, column W-1 of ``e2``) are zeroed first.
    Over the run ``d`` of plane rows the block's rows ``[oh_lo, oh_hi)``
    reach, cell ``q`` collects ``a[q + 1]`` (tap 0 of the output one column
    right), ``b[q]`` and ``c[q - 1]``, added in that order (the taps'
    order, so each sum is bit for bit that of the three calls; the zeroed
    entries add +0 to a sum that started at +0, which changes nothing).
    The run's first cell has no ``c[-1]`` and its last no ``a[n]``.  One
    read-modify-write pass over the plane instead of three: col2im
    1.3-1.7x faster on 14x14 planes (benchmarks/README.md).
    """
    W = e1.shape[0] // H_out
    oh_lo, oh_hi, off, q0, q1 = _shift_run(di, 0, H_out, dst.shape[0] // W, W)
    n = q1 - q0
    if n == 0:
        return
    a, b, c = e0[q0:q1], e1[q0:q1], e2[q0:q1]
    for r in range(n // W):
        a[r * W] = 0.0
        c[r * W + W - 1] = 0.0
    d = dst[q0 + off:q1 + off]
    if n == 1:
        d[0] += b[0]
        return
    d[0] = (d[0] + a[1]) + b[0]
    dm, am, bm = d[1:n - 1], a[2:], b[1:n - 1]           # cells 1 .. n-2
    for q in range(n - 2):
        v = dm[q]
        v += am[q]
        v += bm[q]
        v += c[q]
        dm[q] = v
    d[n - 1] = (d[n - 1] + b[n - 1]) + c[n - 2]


@njit(cache=True, inline="always")
def _add_strided_rows(src, di, dj, sh, sw, H_out, W_out, dst):
    """Adjoint of :func:`_strided_rows`: ``dst[oh*sh + di, ow*sw + dj] +=
    src[oh*W_out + ow]`` for the cells inside the (H, W) plane ``dst``."""
    H, W = dst.shape
    lo, hi = _inside(W_out, sw, dj, W)
    for oh in range(H_out):
        h = oh * sh + di
        if h < 0 or h >= H:
            continue
        q0 = oh * W_out
        for ow in range(lo, hi):
            dst[h, ow * sw + dj] += src[q0 + ow]


def _nchw_from_rows(y2d, b, out):
    """``out[n, f, k] = y2d[f, n*P + k] + b[f]``: the layout change after the
    GEMM, fused with the bias add.  ``y2d`` (F, N*P), ``b`` (F,), ``out``
    (N, F, P).  Parallel contract: prange over the N*F planes of ``out``."""
    N, F, P = out.shape
    for plane in prange(N * F):
        n = plane // F
        f = plane % F
        src = y2d[f, n * P:(n + 1) * P]
        dst = out[n, f]
        bf = b[f]
        for k in range(P):
            dst[k] = src[k] + bf


def _rows_from_nchw(d, out):
    """Copy ``d`` (N, F, P) into ``out`` (F, N*P), the inverse of
    :func:`_nchw_from_rows`.  Parallel contract: prange over the (f, n)
    pairs; each writes only ``out[f, n*P:(n+1)*P]``."""
    N, F, P = d.shape
    for t in prange(F * N):
        f = t // N
        n = t % N
        src = d[n, f]
        dst = out[f, n * P:(n + 1) * P]
        for k in range(P):
            dst[k] = src[k]


def _rows_from_maxpool2x2(dout, argmax, Ho, Wo, out):
    """The 2x2 max-pool backward followed by :func:`_rows_from_nchw`, without
    the full NCHW gradient: ``dout``, ``argmax`` (N, F, Ho//2, Wo//2) ->
    ``out`` (F, N*Ho*Wo), where ``out[f, n*P:(n+1)*P]`` is 0 but at the
    winners, which get ``0 + dout`` (``dx[argmax] += dout``).  The same bits
    as the two steps.  Parallel contract: prange over the (f, n) pairs; each
    writes only ``out[f, n*P:(n+1)*P]``."""
    N, F, H2, W2 = dout.shape
    P = Ho * Wo
    for t in prange(F * N):
        f = t // N
        n = t % N
        dst = out[f, n * P:(n + 1) * P]
        for k in range(P):
            dst[k] = 0.0
        for i in range(H2):
            for j in range(W2):
                dst[np.uint64(argmax[n, f, i, j])] += dout[n, f, i, j]   # uint64: kernels/__init__


im2col = njit(parallel=True, cache=True)(_im2col)
col2im = njit(parallel=True, cache=True)(_col2im)
nchw_from_rows = njit(parallel=True, cache=True)(_nchw_from_rows)
rows_from_nchw = njit(parallel=True, cache=True)(_rows_from_nchw)
rows_from_maxpool2x2 = njit(parallel=True, cache=True)(_rows_from_maxpool2x2)
