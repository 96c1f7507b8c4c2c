"""Stochastic pooling and fractional max pooling kernels.

The randomness is drawn by the layers (each with its own seeded
``np.random.Generator``) and passed in as arrays, so every kernel here is a
deterministic function of its arguments and safe to run in parallel.

Shapes: ``x, dx : (N, C, H, W)``; ``out, dout, index : (N, C, oH, oW)``.
``index`` holds the flat in-plane index ``h * W + w`` of the chosen cell
(or -1 for "no cell"); its backward is
:func:`minicnn.kernels.adaptive.argmax_backward`.

Parallel contract (every kernel here): prange over the N*C planes; each
iteration reads and writes only its own plane.
"""
import numpy as np
from numba import njit, prange

from minicnn.kernels.max_pooling import _has_nan, _max9


# ------------------------------------------------------------ stochastic pooling
# Window (i, j) covers rows [i*sh, i*sh + kh) and columns [j*sw, j*sw + kw)
# (no padding), with oH = (H - kh) // sh + 1 (geometry.output_size).
# Inside a window the cells a_0, ..., a_{K-1} (K = kh*kw) are taken in
# row-major order; S = sum a, Q = sum a^2, both accumulated in float64.

@njit(cache=True, inline='always')
def _window_max(x, n, c, h0, w0, kh, kw):
    """The largest cell of the window at (h0, w0), as float64."""
    m = np.float64(0.0)
    for k in range(kh * kw):
        m = max(m, np.float64(x[n, c, h0 + k // kw, w0 + k % kw]))
    return m


@njit(cache=True, inline='always')
def _scaled_sums(x, n, c, h0, w0, kh, kw):
    """``(M, s, q)`` of the window at (h0, w0): its largest cell ``M`` and,
    with ``b = a / M``, ``s = sum b`` and ``q = sum b**2`` in float64
    (``s >= 1``, so neither overflows nor underflows); ``(0, 0, 0)`` when
    every cell is 0."""
    top = _window_max(x, n, c, h0, w0, kh, kw)
    s = np.float64(0.0)
    q = np.float64(0.0)
    if top == 0.0:
        return top, s, q
    for k in range(kh * kw):
        b = np.float64(x[n, c, h0 + k // kw, w0 + k % kw]) / top
        s += b
        q += b * b
    return top, s, q


def _stochastic_pool_forward(x, u, kh, kw, sh, sw, out, index):
    """Training-mode stochastic pooling (Zeiler & Fergus 2013).

    ``x`` (N, C, H, W) non-negative, ``u`` (N, C, oH, oW) uniforms in
    [0, 1) -> ``out``, ``index`` (N, C, oH, oW), both overwritten.

    Each window samples cell ``m`` with probability ``p_m = a_m / S``
    (inverse-CDF sampling): ``m`` is the first cell, in row-major order,
    with ``u * S < a_0 + ... + a_m``.  Then ``out = a_m`` and
    ``index = h_m * W + w_m``.  Cells with ``a_m = 0`` are never chosen.
    A window with ``S = 0`` outputs 0 and ``index = -1`` (no gradient).
    Where ``S`` overflows to +inf (cells near the largest float) the same
    rule runs on the cells divided by the window's largest one.
    Backward (``argmax_backward``): ``dx[sampled cell] += dout``.
    Parallel contract: prange over the N*C planes; iteration p writes only
    plane p of ``out`` and ``index``.
    """
    N, C, H, W = x.shape
    oH = out.shape[2]
    oW = out.shape[3]
    K = kh * kw
    for p in prange(N * C):
        n = p // C
        c = p % C
        for i in range(oH):
            for j in range(oW):
                h0 = i * sh
                w0 = j * sw
                s = np.float64(0.0)
                for k in range(K):
                    s += x[n, c, h0 + k // kw, w0 + k % kw]
                scale = np.float64(1.0)
                if s == np.inf:                       # the sum of the scaled cells instead
                    scale, s, _ = _scaled_sums(x, n, c, h0, w0, kh, kw)
                pick = -1
                if s > 0.0:
                    t = u[n, c, i, j] * s
                    acc = np.float64(0.0)
                    for k in range(K):
                        acc += x[n, c, h0 + k // kw, w0 + k % kw] / scale
                        if t < acc:
                            pick = k
                            break
                if pick < 0:
                    out[n, c, i, j] = 0.0
                    index[n, c, i, j] = -1
                else:
                    h = h0 + pick // kw
                    w = w0 + pick % kw
                    out[n, c, i, j] = x[n, c, h, w]
                    index[n, c, i, j] = h * W + w


def _stochastic_pool_eval_forward(x, kh, kw, sh, sw, out):
    """Evaluation-mode stochastic pooling: the probability-weighted average.

    ``x`` (N, C, H, W) non-negative -> ``out`` (N, C, oH, oW), overwritten::

        out = sum_m p_m a_m = Q / S      (0 when S = 0)

    computed on the cells divided by the window's largest one, ``M``:
    ``out = M * q / s`` with ``s = sum a/M``, ``q = sum (a/M)**2``.  So
    neither ``Q`` nor ``S`` can overflow or underflow (``s >= 1``), which
    they did for cells above about 1e154 or below about 1e-154.

    Parallel contract: prange over the N*C planes; iteration p writes only
    plane p of ``out``.
    """
    N, C, H, W = x.shape
    oH = out.shape[2]
    oW = out.shape[3]
    for p in prange(N * C):
        n = p // C
        c = p % C
        for i in range(oH):
            for j in range(oW):
                top, s, q = _scaled_sums(x, n, c, i * sh, j * sw, kh, kw)
                out[n, c, i, j] = top * (q / s) if top > 0.0 else 0.0


def _stochastic_pool_eval_backward(x, dout, kh, kw, sh, sw, dx):
    """Exact backward of the evaluation-mode output ``Q / S``.

    ``x`` (N, C, H, W), ``dout`` (N, C, oH, oW) -> ``dx`` (N, C, H, W)::

        d(Q/S)/da_m = (2 a_m S - Q) / S^2 = (2 b_m - q/s) / s
        dx[cell m of window] += dout * (2 b_m - q/s) / s

    with ``b = a / M``, ``s``, ``q`` as in the forward (scaled by the
    window's largest cell ``M``, so that nothing overflows or underflows:
    ``dout / S**2`` did below about 1e-154).  Windows with ``S = 0``
    contribute nothing.  ``dx`` is overwritten (zeroed here first).
    Parallel contract: prange over the N*C planes; iteration p accumulates
    only into plane p of ``dx``, so overlapping windows (stride < kernel)
    cannot race.
    """
    N, C, H, W = x.shape
    oH = dout.shape[2]
    oW = dout.shape[3]
    K = kh * kw
    for p in prange(N * C):
        n = p // C
        c = p % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0.0
        for i in range(oH):
            for j in range(oW):
                top, s, q = _scaled_sums(x, n, c, i * sh, j * sw, kh, kw)
                if top == 0.0:
                    continue
                g = np.float64(dout[n, c, i, j]) / s
                y = q / s
                for k in range(K):
                    h = i * sh + k // kw
                    w = j * sw + k % kw
                    dx[n, c, h, w] += g * (2.0 * (np.float64(x[n, c, h, w]) / top) - y)


# --------------------------------------------------------- fractional max pooling

def fractional_intervals(u, in_size, out_size, pool):
    """Window starts of fractional max pooling (PyTorch's ``generate_intervals``).

    ``u``: samples in [0, 1) of any shape (M...) -> int64 (M..., out_size)::

        alpha  = (in_size - pool) / (out_size - 1)
        seq[i] = int((i + u) * alpha) - int(u * alpha)    for i < out_size - 1
        seq[out_size - 1] = in_size - pool

    so ``seq[0] = 0``, the last window ends exactly at the input's edge, and
    consecutive starts differ by floor(alpha) or ceil(alpha) (Graham 2014's
    pseudo-random sequence).  Window ``i`` is ``[seq[i], seq[i] + pool)``.

    Computed in ``u``'s dtype (float32 or float64), as PyTorch does, so the
    truncations agree with PyTorch's bit for bit (:func:`_interval_starts`).
    """
    u = np.asarray(u)
    if u.dtype not in (np.float32, np.float64):
        u = u.astype(np.float64)
    flat = np.ascontiguousarray(u).reshape(-1)
    seq = np.empty((flat.shape[0], out_size), np.int64)
    t = u.dtype.type
    alpha = t(in_size - pool) / t(out_size - 1) if out_size > 1 else t(0)
    _interval_starts(flat, alpha, in_size - pool, seq)
    return seq.reshape(u.shape + (out_size,))


@njit(cache=True)
def _interval_starts(u, alpha, last, seq):
    """``seq[m, i] = int((i + u[m]) * alpha) - int(u[m] * alpha)`` for
    ``i < out_size - 1`` and ``seq[m, out_size - 1] = last``; ``u`` (M,),
    ``seq`` (M, out_size).  ``i`` is cast to ``u``'s dtype first, so a
    float32 ``u`` (with a float32 ``alpha``) is computed in float32: an
    int64 ``i`` would promote the sum to float64 and change truncations.
    One loop over the samples: 64x32 samples into 14 starts, 77-80 ->
    39-40 us against the numpy form it replaced (four whole-array
    operations and a transposed copy); running it in parallel gained
    nothing at this size.
    """
    out_size = seq.shape[1]
    for m in range(u.shape[0]):
        v = u[m]
        base = int(v * alpha)
        for i in range(out_size - 1):
            seq[m, i] = int((u.dtype.type(i) + v) * alpha) - base
        seq[m, out_size - 1] = last


@njit(cache=True)
def _fractional_plane(xf, p, rf, cf, W, taps, of, af):
    """Plane ``p`` of :func:`_fractional_max_forward` (planes of width ``W``
    seen flat), window by window over the row-major tap offsets ``taps``
    (any kernel size, any values)."""
    plane = xf[p]
    T = taps.shape[0]
    for i in range(of.shape[1]):
        row0 = rf[p, i] * W
        for j in range(of.shape[2]):
            k0 = row0 + cf[p, j]
            best = plane[k0]
            best_k = k0
            nan = best != best
            for t in range(1, T):
                k = k0 + taps[t]
                v = plane[k]
                if v > best:
                    best = v
                    best_k = k
                nan |= v != v
            if nan:                   # rare: the last NaN in scan order wins
                for t in range(T):
                    k = k0 + taps[t]
                    if plane[k] != plane[k]:
                        best = plane[k]
                        best_k = k
            of[p, i, j] = best
            af[p, i, j] = best_k


@njit(cache=True, inline='always')
def _max4(a, b, c, d):
    """``(best, k)``: the first maximum of the taps a, b, c, d (row-major
    2x2 window, tap ``k = 2*i + j``) by ``v > best``; NaN is not looked for."""
    best, k = a, 0
    gt = b > best
    best = b if gt else best
    k = 1 if gt else k
    gt = c > best
    best = c if gt else best
    k = 2 if gt else k
    gt = d > best
    best = d if gt else best
    k = 3 if gt else k
    return best, k


def _fractional_max_forward(x, rows, cols, kh, kw, out, argmax):
    """Fractional max pooling (Graham 2014) over given window starts.

    ``x`` (N, C, H, W), ``rows`` (N, C, oH) and ``cols`` (N, C, oW) window
    starts from :func:`fractional_intervals` -> ``out``, ``argmax``
    (N, C, oH, oW), overwritten (all C-contiguous)::

        out[n, c, i, j] = max(x[n, c, r:r + kh, q:q + kw]),
        r = rows[n, c, i], q = cols[n, c, j]

    ``argmax`` = flat in-plane index ``h * W + w``.  Ties: first maximum in
    row-major scan order; NaN propagates (``v > best or isnan(v)``, as in
    PyTorch).  Backward (``argmax_backward``): ``dx[argmax] += dout``.

    How (general kernel size, :func:`_fractional_plane`): each plane is read
    as a flat row of H*W cells and the window's taps as offsets
    ``dh * W + dw`` from its top-left cell, listed once in row-major order.
    It keeps the first maximum with a plain ``v > best`` (NaN never wins
    that comparison) and notes whether a NaN was seen; only then is the
    window scanned again for its last NaN.  Same result as the
    ``v > best or isnan(v)`` scan, without its unpredictable branch (5x
    faster, see benchmarks/README.md).
    Kernel 2x2 and 3x3 (the common ones): the taps are written out and the
    first maximum is kept with branch-free selects (:func:`_max4`,
    :func:`~minicnn.kernels.max_pooling._max9`), the way the window-pooling
    kernels do; a plane holding a NaN (found by one pass over it, rare)
    takes the general path.  Same result bit for bit, 2-3x faster.
    Parallel contract: prange over the N*C planes; iteration p writes only
    plane p of ``out`` and ``argmax``.
    """
    N, C, H, W = x.shape
    oH = out.shape[2]
    oW = out.shape[3]
    P = N * C
    xf = x.reshape((P, H * W))
    xp = x.reshape((P, H, W))
    rf = rows.reshape((P, oH))
    cf = cols.reshape((P, oW))
    of = out.reshape((P, oH, oW))
    af = argmax.reshape((P, oH, oW))
    T = kh * kw
    taps = np.empty(T, np.int64)          # row-major tap offsets in the flat plane
    for t in range(T):
        taps[t] = (t // kw) * W + t % kw
    if kh == 2 and kw == 2:
        for p in prange(P):
            if _has_nan(xf, p):
                _fractional_plane(xf, p, rf, cf, W, taps, of, af)
                continue
            for i in range(oH):
                r = rf[p, i]
                for j in range(oW):
                    q = cf[p, j]
                    best, k = _max4(xp[p, r, q], xp[p, r, q + 1], xp[p, r + 1, q], xp[p, r + 1, q + 1])
                    of[p, i, j] = best
                    af[p, i, j] = (r + k // 2) * W + q + k % 2
    elif kh == 3 and kw == 3:
        for p in prange(P):
            if _has_nan(xf, p):
                _fractional_plane(xf, p, rf, cf, W, taps, of, af)
                continue
            for i in range(oH):
                r = rf[p, i]
                for j in range(oW):
                    q = cf[p, j]
                    best, k = _max9(xp, p, r, r + 1, r + 2, q, q + 1, q + 2)
                    of[p, i, j] = best
                    af[p, i, j] = (r + k // 3) * W + q + k % 3
    else:
        for p in prange(P):
            _fractional_plane(xf, p, rf, cf, W, taps, of, af)


stochastic_pool_forward = njit(parallel=True, cache=True)(_stochastic_pool_forward)
stochastic_pool_eval_forward = njit(parallel=True, cache=True)(_stochastic_pool_eval_forward)
stochastic_pool_eval_backward = njit(parallel=True, cache=True)(_stochastic_pool_eval_backward)
fractional_max_forward = njit(parallel=True, cache=True)(_fractional_max_forward)
