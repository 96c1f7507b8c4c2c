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
compiled by name below: ``name = njit(parallel=True, cache=True)(_name)``.
All kernels accept float32 and float64 arrays; index arrays are int64.
"""
import math

import numpy as np
from numba import njit, prange


# --------------------------------------------------------------------- helpers
@njit(cache=True)
def _taps(start, k, d, L):
    """Tap range ``[t0, t1)`` of a dilated window starting at ``start``.

    Tap ``t`` sits at ``start + t*d``; the taps inside ``[0, L)`` are
    exactly ``t0 <= t < t1`` (empty when ``t0 >= t1``).
    """
    t0 = 0 if start >= 0 else (d - 1 - start) // d   # first t with start + t*d >= 0
    t1 = min(k, (L - start + d - 1) // d)          # first t with start + t*d >= L
    return t0, t1


@njit(cache=True)
def _avg_extent(o, k, s, pad, L):
    """Rows (or cols) of average-pooling window ``o``, PyTorch's rule.

    Returns ``(count, lo, hi)``: ``count`` is the window length clamped to
    the padded input ``[-pad, L + pad)`` (used by count_include_pad), and
    ``[lo, hi)`` is the part inside the input ``[0, L)`` (the cells summed).
    """
    start = o * s - pad
    end = min(start + k, L + pad)
    return end - start, max(start, 0), min(end, L)


# ------------------------------------------------------------------------- max
def _maxpool2d_forward(x, kh, kw, sh, sw, ph, pw, dh, dw, out, argmax):
    """Max pooling with implicit -inf padding and dilation.

    x: (P, H, W) -> out: (P, H_out, W_out), argmax: (P, H_out, W_out) int64.

    Forward: ``out = max over the window taps inside the input``, scanned in
    row-major order with PyTorch's update rule ``if v > best or isnan(v)``:
    the *first* maximum wins ties, and a NaN anywhere makes the result NaN
    (the index of the last NaN is recorded, as in PyTorch).
    ``argmax`` is the flat index ``h*W + w`` of the winner in its H*W plane;
    it starts at the first tap inside the input (so an all -inf window still
    routes its gradient somewhere, like PyTorch).  A window with no tap
    inside the input (possible only with dilation) gives -inf and index -1.
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(H_out):
            h0 = oh * sh - ph
            i0, i1 = _taps(h0, kh, dh, H)
            for ow in range(W_out):
                w0 = ow * sw - pw
                j0, j1 = _taps(w0, kw, dw, W)
                best = -np.inf
                best_idx = -1
                if i0 < i1 and j0 < j1:
                    best_idx = (h0 + i0 * dh) * W + w0 + j0 * dw
                for i in range(i0, i1):
                    h = h0 + i * dh
                    for j in range(j0, j1):
                        w = w0 + j * dw
                        v = x[p, h, w]
                        if v > best or math.isnan(v):
                            best = v
                            best_idx = h * W + w
                out[p, oh, ow] = best
                argmax[p, oh, ow] = best_idx


def _maxpool2d_2x2_forward(x, out, argmax):
    """The common case of :func:`_maxpool2d_forward`: kernel 2x2, stride 2,
    no padding, no dilation (every window is full).  Same shapes, same
    result bit for bit: the four taps in row-major order a, b, c, d with the
    rule ``if v > best or isnan(v)``.
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(H_out):
            h = 2 * oh
            for ow in range(W_out):
                w = 2 * ow
                best = x[p, h, w]
                idx = h * W + w
                v = x[p, h, w + 1]
                if v > best or math.isnan(v):
                    best = v
                    idx = h * W + w + 1
                v = x[p, h + 1, w]
                if v > best or math.isnan(v):
                    best = v
                    idx = (h + 1) * W + w
                v = x[p, h + 1, w + 1]
                if v > best or math.isnan(v):
                    best = v
                    idx = (h + 1) * W + w + 1
                out[p, oh, ow] = best
                argmax[p, oh, ow] = idx


def _maxpool2d_backward(dout, argmax, dx):
    """Backward of max pooling: the whole gradient goes to the recorded argmax.

    dout, argmax: (P, H_out, W_out) -> dx: (P, H, W), overwritten.

    Rule: ``dx[argmax] += dout`` (index -1, an empty window, routes nothing).
    Overlapping windows may share an argmax; their gradients add.
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    flat = dx.reshape((P, H * W))
    for p in prange(P):
        flat[p, :] = 0.0
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
    """
    P, H_in, W_in = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    flat = out.reshape((P, H_out * W_out))
    for p in prange(P):
        flat[p, :] = 0.0
        for i in range(H_in):
            for j in range(W_in):
                flat[p, indices[p, i, j]] = x[p, i, j]


def _maxunpool2d_backward(dout, indices, dx):
    """Backward of max unpooling: gather.

    dout: (P, H_out, W_out) C-contiguous, indices: (P, H_in, W_in)
    -> dx: (P, H_in, W_in), overwritten.  Rule: ``dx = dout.flat[indices]``.
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
    else the number of cells inside the input (see :func:`_avg_extent`).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(H_out):
            nh, h_lo, h_hi = _avg_extent(oh, kh, sh, ph, H)
            for ow in range(W_out):
                nw, w_lo, w_hi = _avg_extent(ow, kw, sw, pw, W)
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


def _avgpool2d_backward(dout, kh, kw, sh, sw, ph, pw, count_include_pad, divisor_override, dx):
    """Backward of average pooling: spread each gradient over its window.

    dout: (P, H_out, W_out) -> dx: (P, H, W), overwritten.

    Rule: ``dx[window inside the input] += dout / divisor`` (divisor as in
    :func:`_avgpool2d_forward`); padding cells receive nothing.
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    for p in prange(P):
        dx[p, :, :] = 0.0
        for oh in range(H_out):
            nh, h_lo, h_hi = _avg_extent(oh, kh, sh, ph, H)
            for ow in range(W_out):
                nw, w_lo, w_hi = _avg_extent(ow, kw, sw, pw, W)
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


# ---------------------------------------------------------------- power (LP)
def _lppool2d_forward(x, norm_type, kh, kw, sh, sw, out, sums):
    """Power-average (LP) pooling, no padding, as PyTorch computes it.

    x: (P, H, W) -> out, sums: (P, H_out, W_out).

    Forward, with ``n`` the number of cells of the window inside the input
    (``n = kh*kw`` except for the last windows in ceil mode)::

        sums = (kh*kw / n) * sum(x[window] ** p)       # PyTorch: avg_pool(x**p) * kh*kw
        out  = sums ** (1/p)

    Powers follow C ``pow``: a negative base with a non-integer exponent
    gives NaN (so for odd p a negative ``sums`` gives NaN unless 1/p is an
    integer; p = 1 gives the plain window sum).
    """
    P, H, W = x.shape
    H_out, W_out = out.shape[1], out.shape[2]
    inv = 1.0 / norm_type
    for p in prange(P):
        for oh in range(H_out):
            h_lo = oh * sh
            h_hi = min(h_lo + kh, H)
            for ow in range(W_out):
                w_lo = ow * sw
                w_hi = min(w_lo + kw, W)
                s = 0.0
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        s += x[p, h, w] ** norm_type
                n = (h_hi - h_lo) * (w_hi - w_lo)
                if n != kh * kw:
                    s = s * (kh * kw) / n
                sums[p, oh, ow] = s
                out[p, oh, ow] = s ** inv


def _lppool2d_backward(dout, x, out, sums, norm_type, kh, kw, sh, sw, dx):
    """Backward of LP pooling.

    dout, out, sums: (P, H_out, W_out), x: (P, H, W) -> dx: (P, H, W), overwritten.

    With ``c = kh*kw / n`` and ``out = (c * sum x**p) ** (1/p)``::

        d out / d x_i = c * x_i**(p-1) * out / sums
        dx[window] += dout * c * out / sums * x[window] ** (p-1)

    Where ``sums == 0`` the gradient is defined as 0 (as PyTorch documents).
    """
    P, H, W = dx.shape
    H_out, W_out = dout.shape[1], dout.shape[2]
    pm1 = norm_type - 1.0
    for p in prange(P):
        dx[p, :, :] = 0.0
        for oh in range(H_out):
            h_lo = oh * sh
            h_hi = min(h_lo + kh, H)
            for ow in range(W_out):
                w_lo = ow * sw
                w_hi = min(w_lo + kw, W)
                s = sums[p, oh, ow]
                if s == 0.0:
                    continue
                n = (h_hi - h_lo) * (w_hi - w_lo)
                g = dout[p, oh, ow] * out[p, oh, ow] / s
                if n != kh * kw:
                    g = g * (kh * kw) / n
                for h in range(h_lo, h_hi):
                    for w in range(w_lo, w_hi):
                        dx[p, h, w] += g * x[p, h, w] ** pm1


# ------------------------------------------------------------------- compiled
maxpool2d_forward = njit(parallel=True, cache=True)(_maxpool2d_forward)
maxpool2d_2x2_forward = njit(parallel=True, cache=True)(_maxpool2d_2x2_forward)
maxpool2d_backward = njit(parallel=True, cache=True)(_maxpool2d_backward)
maxunpool2d_forward = njit(parallel=True, cache=True)(_maxunpool2d_forward)
maxunpool2d_backward = njit(parallel=True, cache=True)(_maxunpool2d_backward)
avgpool2d_forward = njit(parallel=True, cache=True)(_avgpool2d_forward)
avgpool2d_backward = njit(parallel=True, cache=True)(_avgpool2d_backward)
lppool2d_forward = njit(parallel=True, cache=True)(_lppool2d_forward)
lppool2d_backward = njit(parallel=True, cache=True)(_lppool2d_backward)
