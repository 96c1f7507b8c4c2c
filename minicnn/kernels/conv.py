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
from numba import njit, prange


def _im2col(x, kh, kw, sh, sw, ph, pw, H_out, W_out, cols):
    """Unfold ``x`` (N, C, H, W) into ``cols`` (C*kh*kw, N*H_out*W_out).

    Parallel contract: prange over the C*kh*kw rows of ``cols``; each
    iteration writes only its own row, so iterations never race.
    """
    N, C, H, W = x.shape
    for r in prange(C * kh * kw):
        c = r // (kh * kw)
        i = (r // kw) % kh
        j = r % kw
        for n in range(N):
            base = n * H_out * W_out
            for oh in range(H_out):
                h = oh * sh - ph + i
                q0 = base + oh * W_out
                if h < 0 or h >= H:
                    for ow in range(W_out):
                        cols[r, q0 + ow] = 0.0
                    continue
                for ow in range(W_out):
                    w = ow * sw - pw + j
                    if 0 <= w < W:
                        cols[r, q0 + ow] = x[n, c, h, w]
                    else:
                        cols[r, q0 + ow] = 0.0


def _col2im(dcols, kh, kw, sh, sw, ph, pw, H_out, W_out, dx):
    """Fold ``dcols`` (C*kh*kw, N*H_out*W_out) back into ``dx`` (N, C, H, W).

    Backward rule (adjoint of im2col): every column entry is *added* to the
    input cell it was copied from; cells in padding are dropped::

        dx[n, c, oh*sh - ph + i, ow*sw - pw + j] += dcols[r, q]

    ``dx`` is overwritten (zeroed here first).  Parallel contract: prange
    over the N*C planes of ``dx``; each iteration accumulates only into its
    own plane, so overlapping windows (stride < kernel) cannot race.
    """
    N, C, H, W = dx.shape
    for plane in prange(N * C):
        n = plane // C
        c = plane % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0.0
        base = n * H_out * W_out
        for i in range(kh):
            for j in range(kw):
                r = (c * kh + i) * kw + j
                for oh in range(H_out):
                    h = oh * sh - ph + i
                    if h < 0 or h >= H:
                        continue
                    q0 = base + oh * W_out
                    for ow in range(W_out):
                        w = ow * sw - pw + j
                        if 0 <= w < W:
                            dx[n, c, h, w] += dcols[r, q0 + ow]


def _nchw_from_rows(y2d, b, out):
    """``out[n, f, k] = y2d[f, n*P + k] + b[f]``: the layout change after the
    GEMM, fused with the bias add.  ``y2d`` (F, N*P), ``b`` (F,), ``out``
    (N, F, P).  Parallel contract: prange over the N*F planes of ``out``."""
    N, F, P = out.shape
    for plane in prange(N * F):
        n = plane // F
        f = plane % F
        for k in range(P):
            out[n, f, k] = y2d[f, n * P + k] + b[f]


def _rows_from_nchw(d, out):
    """Copy ``d`` (N, F, P) into ``out`` (F, N*P), the inverse of
    :func:`_nchw_from_rows`.  Parallel contract: prange over the F rows."""
    N, F, P = d.shape
    for f in prange(F):
        for n in range(N):
            for k in range(P):
                out[f, n * P + k] = d[n, f, k]


im2col = njit(parallel=True, cache=True)(_im2col)
col2im = njit(parallel=True, cache=True)(_col2im)
nchw_from_rows = njit(parallel=True, cache=True)(_nchw_from_rows)
rows_from_nchw = njit(parallel=True, cache=True)(_rows_from_nchw)
