"""Adaptive average / max pooling kernels (global pooling and SPP reuse them).

Bins (PyTorch's rule, written out once here).  Along an axis of length
``L`` cut into ``out`` bins, output index ``i`` pools the cells
``[start(i), end(i))`` with::

    start(i) = floor(i * L / out)          = (i * L) // out
    end(i)   = ceil((i + 1) * L / out)     = ((i + 1) * L + out - 1) // out

When ``out`` does not divide ``L`` neighbouring bins overlap and differ in
size (10 -> 3: [0, 4), [3, 7), [6, 10)); when ``out > L`` one cell feeds
several bins.  Every bin is non-empty.

Shapes: ``x, dx : (N, C, H, W)``; ``out, dout, argmax : (N, C, oH, oW)``.
The output size is read from the shape of ``out`` (forward) and the input
size from the shape of ``dx`` (backward).  ``argmax`` holds the flat index
``h * W + w`` of the chosen cell inside its (H, W) plane, as PyTorch's
``return_indices`` does.

Parallel contract (every kernel here): prange over the N*C planes, or
over runs or blocks of consecutive planes; each iteration writes only its
own planes (and its own row of any scratch array, allocated before the
loop), so overlapping bins in the backward passes cannot race.  (Adaptive
max pooling's first pass also reads a few cells past a row's end, into
the next row or plane, and never uses them.)  Accumulation is in float64
whatever the input dtype; the result is stored in the output's dtype.
Arrays are C-contiguous (the layers pass them so); kernels view each plane
flat or as (H, W) rows and loop over contiguous cells from index 0, the
loops the compiler vectorises.
"""
import numpy as np
from numba import njit, prange

from minicnn.kernels.window import PLANE_RUNS, _plane_run


@njit(cache=True)
def _bins(length, bins):
    """The ``bins`` bins of ``length`` cells: arrays ``start, end`` with bin
    ``i`` the half-open range ``[floor(i*length/bins), ceil((i+1)*length/bins))``
    (PyTorch's rule).  Computed once per call, outside the parallel loop, so
    the hot loops do no integer division."""
    start = np.empty(bins, np.int64)
    end = np.empty(bins, np.int64)
    for i in range(bins):
        start[i] = (i * length) // bins
        end[i] = ((i + 1) * length + bins - 1) // bins
    return start, end


@njit(cache=True)
def _bin_areas(hs, he, ws, we):
    """``area[i * oW + j]`` = the cell count of bin (i, j), as float64, for
    the row bins ``[hs[i], he[i])`` and column bins ``[ws[j], we[j])``
    (:func:`_bins`): the adaptive average divisors, flat in output order."""
    oH = hs.shape[0]
    oW = ws.shape[0]
    area = np.empty(oH * oW)
    for i in range(oH):
        for j in range(oW):
            area[i * oW + j] = (he[i] - hs[i]) * (we[j] - ws[j])
    return area


@njit(cache=True, fastmath={"reassoc"})
def _sum_any_order(a):
    """``sum(a)`` of a 1-D contiguous array, accumulated in float64, in an
    order the compiler chooses: ``reassoc`` (and no other fast-math flag)
    lets it keep several vector lanes of partial sums and add them at the
    end, 3-4x faster than one chain of dependent additions.  The order is
    fixed by the compiled code, so a given build always returns the same
    bits (serial and parallel callers too); another build or machine may
    differ in the last bit of the float64 sum."""
    s = np.float64(0.0)
    for q in range(a.shape[0]):
        s += a[q]
    return s


@njit(cache=True)
def _max_bits_and_nan(bits, mask, inf):
    """One pass over a float plane seen as integers (``bits``: the plane
    viewed as signed ints of the same width, 1-D contiguous) ->
    ``(best_bits, has_nan)``.

    As signed integers, floats with the sign bit clear (+0.0 and up) are
    in their float order and above every float with it set; those (-0.0
    and below) are in reverse order.  So, NaN aside, the largest float's
    bits are the largest integer ``hi`` if ``hi >= 0``, else the smallest
    integer ``lo`` (all values negative or -0.0: the one nearest zero).
    ``has_nan`` = any ``|v| > inf`` (``mask`` = all bits but the sign,
    ``inf`` = the bits of +inf): a NaN of either sign.  Integer max, min
    and OR reductions: the compiler vectorises them without fast-math
    flags (a float ``>`` max reduction stays scalar even with them, as
    Numba does not flag the ``select``).  ``best_bits`` means nothing when
    ``has_nan``.
    """
    hi = bits[0]
    lo = bits[0]
    nan = False
    for q in range(bits.shape[0]):
        v = bits[q]
        hi = v if v > hi else hi
        lo = v if v < lo else lo
        nan |= (v & mask) > inf
    return (hi if hi >= 0 else lo), nan


@njit(cache=True)
def _first_match(bits, target, care):
    """Smallest ``q`` with ``bits[q] & care == target & care`` (``bits`` 1-D
    contiguous ints; ``bits.shape[0]`` if none): a branch-free min
    reduction over the whole row, with the index in ``bits``' own integer
    type, which the compiler vectorises (an early-exit scan does not, and
    was 2x slower on float32 planes of 784 cells)."""
    t = bits.dtype.type
    n = t(bits.shape[0])
    r = n
    care = t(care)
    want = t(target & care)
    for q in range(bits.shape[0]):
        r = min(r, t(q) if (bits[q] & care) == want else n)
    return r


@njit(cache=True)
def _last_nan(a):
    """Largest ``q`` with ``a[q]`` NaN; ``a`` (1-D) must hold a NaN."""
    q = a.shape[0] - 1
    while a[q] == a[q]:
        q -= 1
    return q


@njit(cache=True)
def _global_max_plane(x, bits, mask, inf):
    """Index of the max pooling answer of one whole plane: ``x`` 1-D
    contiguous floats, ``bits`` the same cells viewed as the same-width
    signed ints, ``mask`` all bits but the sign, ``inf`` the bits of +inf.
    The first maximum (strict ``>`` scan), or the last NaN if any."""
    best, nan = _max_bits_and_nan(bits, mask, inf)
    if nan:
        return _last_nan(x)
    care = mask if (best & mask) == 0 else bits.dtype.type(-1)   # a zero: either sign matches
    return _first_match(bits, best, care)


@njit(cache=True, inline='always')
def _column_sums(xp, p, h0, h1, colsum, c):
    """``colsum[c, w] = x[h0, w] + x[h0 + 1, w] + ... + x[h1 - 1, w]`` for
    every column w of plane p (``xp`` (P, H, W)), in float64, added left to
    right.  Up to four rows per loop along the width, so each loop stores
    its sums once: one row per loop, storing the partial sums after each,
    ran about 1.4x slower on rows of 14 cells (:func:`_adaptive_avg_forward`)."""
    W = xp.shape[2]
    u = np.uint64                                   # uint64 rows: kernels/__init__
    n = min(h1 - h0, 4)
    if n == 4:
        for w in range(W):
            colsum[c, w] = (np.float64(xp[p, u(h0), w]) + xp[p, u(h0 + 1), w]
                            + xp[p, u(h0 + 2), w] + xp[p, u(h0 + 3), w])
    elif n == 3:
        for w in range(W):
            colsum[c, w] = np.float64(xp[p, u(h0), w]) + xp[p, u(h0 + 1), w] + xp[p, u(h0 + 2), w]
    elif n == 2:
        for w in range(W):
            colsum[c, w] = np.float64(xp[p, u(h0), w]) + xp[p, u(h0 + 1), w]
    else:
        for w in range(W):
            colsum[c, w] = xp[p, u(h0), w]
    h = h0 + n
    while h1 - h >= 4:
        for w in range(W):
            colsum[c, w] = (colsum[c, w] + xp[p, u(h), w] + xp[p, u(h + 1), w]
                            + xp[p, u(h + 2), w] + xp[p, u(h + 3), w])
        h += 4
    if h1 - h == 3:
        for w in range(W):
            colsum[c, w] = colsum[c, w] + xp[p, u(h), w] + xp[p, u(h + 1), w] + xp[p, u(h + 2), w]
    elif h1 - h == 2:
        for w in range(W):
            colsum[c, w] = colsum[c, w] + xp[p, u(h), w] + xp[p, u(h + 1), w]
    elif h1 - h == 1:
        for w in range(W):
            colsum[c, w] = colsum[c, w] + xp[p, u(h), w]


@njit(cache=True, inline='always')
def _run_sum(a, p, w0, w1):
    """``a[p, w0] + a[p, w0 + 1] + ... + a[p, w1 - 1]``, added left to
    right, four terms per step of straight-line code (fewer loop steps
    than one term per step)."""
    u = np.uint64
    s = a[p, u(w0)]
    w = w0 + 1
    while w1 - w >= 4:
        s = s + a[p, u(w)] + a[p, u(w + 1)] + a[p, u(w + 2)] + a[p, u(w + 3)]
        w += 4
    if w1 - w == 3:
        s = s + a[p, u(w)] + a[p, u(w + 1)] + a[p, u(w + 2)]
    elif w1 - w == 2:
        s = s + a[p, u(w)] + a[p, u(w + 1)]
    elif w1 - w == 1:
        s = s + a[p, u(w)]
    return s


def _adaptive_avg_forward(x, out):
    """Adaptive average pooling, ``x`` (N, C, H, W) -> ``out`` (N, C, oH, oW).

    ``out[n, c, i, j] = sum(x[n, c, h0:h1, w0:w1]) / ((h1 - h0) * (w1 - w0))``
    with ``[h0, h1)`` bin ``i`` of H into oH and ``[w0, w1)`` bin ``j`` of
    W into oW (module docstring).  ``out`` is overwritten.

    Order of the float64 sum.  Output size 1x1 (global average): the plane
    is one contiguous run and :func:`_sum_any_order` adds it in vector
    lanes.  Otherwise: for each row bin the column sums
    ``colsum[w] = x[h0, w] + x[h0 + 1, w] + ... + x[h1 - 1, w]`` are formed
    for the whole width at once (a loop over contiguous cells that the
    compiler vectorises), then each output adds ``colsum[w0] + ... +
    colsum[w1 - 1]``.  (A bin-by-bin scan was 3x slower: its additions form
    one dependent chain.)  Both sums go up to four terms per step
    (:func:`_column_sums`, :func:`_run_sum`): 64x64x14x14 -> 4x4, 236 ->
    169 µs; 64x32x28x28 -> 4x4, 189 -> 151 µs (float32, 2 threads).  The
    sums are divided by the bins' areas in one loop over the output plane
    (the same float64 quotients; 4-5 % faster than dividing each bin's sum
    where it is formed).  The scratch rows are one per run of consecutive
    planes, reused plane after plane while they are in the first-level
    cache: 64x64x14x14 -> 4x4 144 -> 129 µs, 64x32x28x28 151 -> 137,
    128x16x24x24 112 -> 104 against one row per plane (2026-11-25, Intel
    VM).
    Parallel contract: prange over runs of consecutive planes; iteration c
    writes only its planes of ``out`` and row c of the scratch ``colsum``
    and ``sums``.
    """
    N, C, H, W = x.shape
    oH = out.shape[2]
    oW = out.shape[3]
    P = N * C
    xp = x.reshape((P, H, W))
    op = out.reshape((P, oH, oW))
    if oH == 1 and oW == 1:                 # global average: one long contiguous sum
        xflat = x.reshape((P, H * W))
        oflat = out.reshape(P)
        for p in prange(P):
            oflat[p] = _sum_any_order(xflat[p]) / (H * W)
        return
    n_runs = min(P, PLANE_RUNS)
    colsum = np.empty((n_runs, W))
    sums = np.empty((n_runs, oH * oW))        # the bins' sums, then divided in one loop
    hs, he = _bins(H, oH)
    ws, we = _bins(W, oW)
    area = _bin_areas(hs, he, ws, we)
    of = out.reshape((P, oH * oW))
    for c in prange(n_runs):
        p_lo, p_hi = _plane_run(c, n_runs, P)
        for p in range(p_lo, p_hi):
            for i in range(oH):
                _column_sums(xp, p, hs[i], he[i], colsum, c)
                for j in range(oW):
                    sums[c, i * oW + j] = _run_sum(colsum, c, ws[j], we[j])
            for m in range(oH * oW):
                of[p, m] = sums[c, m] / area[m]


@njit(cache=True)
def _row_bands(hs, he, H):
    """The rows' bands: rows ``h`` in the same row bins ``i`` (``hs[i] <= h
    < he[i]``) form a band, and the bins of a row are consecutive.  Returns
    ``band, lo, hi``: row ``h`` is in band ``band[h]``, whose row bins are
    ``lo[t] .. hi[t] - 1``; bands are numbered top to bottom (14 rows into
    4 bins: 6 bands, rows 3 and 10 in two bins each)."""
    first = np.full(H, hs.shape[0], np.int64)
    last = np.zeros(H, np.int64)
    for i in range(hs.shape[0]):
        for h in range(hs[i], he[i]):
            first[h] = min(first[h], i)
            last[h] = max(last[h], i + 1)
    band = np.empty(H, np.int64)
    n = 0
    for h in range(H):
        if h == 0 or first[h] != first[h - 1] or last[h] != last[h - 1]:
            n += 1
        band[h] = n - 1
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    for h in range(H):
        lo[band[h]] = first[h]
        hi[band[h]] = last[h]
    return band, lo, hi


PLANE_BLOCK = 32    # planes per iteration of the short-row backward
SHORT_ROW = 24      # rows of fewer cells take the backward across planes


@njit(cache=True, inline='always')
def _add_share(Tt, w0, w1, sm, nb):
    """``Tt[w, b] += sm[b]`` for ``w0 <= w < w1`` and the block's ``nb``
    planes ``b``: one bin's shares added to a band's templates
    (:func:`_adaptive_avg_backward`, short rows), each sum rounded to the
    templates' dtype."""
    for w in range(w0, w1):
        tw = Tt[np.uint64(w)]                    # uint64: kernels/__init__
        for b in range(nb):
            tw[b] += sm[b]


def _adaptive_avg_backward(dout, dx):
    """Backward of adaptive average pooling, ``dout`` (N, C, oH, oW) ->
    ``dx`` (N, C, H, W).

    Rule: each output spreads its gradient evenly over its bin, and a cell
    in several (overlapping) bins collects from each of them::

        dx[n, c, h0:h1, w0:w1] += dout[n, c, i, j] / ((h1 - h0) * (w1 - w0))

    with ``g = dout / |bin|`` in float64 and each ``+=`` rounded to dx's
    dtype, bins taken in row-major order.  ``dx`` is overwritten.
    Four paths, all equal to that rule bit for bit.

    * Output size 1x1: each plane is filled with ``0.0 + g``.
    * Bins tiling the plane (``oH`` divides H and ``oW`` divides W): every
      cell is in one bin and gets ``0.0 + g``; the row of those values is
      built once per row bin and copied to each of its rows.
    * Otherwise the bins overlap, and row templates serve: in row-major
      order a cell (h, w) receives the bins ``i`` of its row's band
      (:func:`_row_bands`), each with the bins ``j`` of its column, i
      before j, so its value depends on the band alone.

      - Rows of :data:`SHORT_ROW` cells or more, plane by plane: a row is
        built (zeroed, then its bins' shares added along it) where its band
        begins, and copied from the row above elsewhere.  The shares ``g``
        are divided first, in one loop over each output plane.
      - Shorter rows, across planes: on rows of 14 cells the loops along
        a row are too short for the compiler's vector code.  Planes go in
        blocks of :data:`PLANE_BLOCK`.  For a block, the shares are divided
        into ``share[m, b]`` (bin m, plane b of the block), then each band's
        template ``T[t, w, b]`` is built bin by bin in row-major order (a
        cell's first bin stores ``0.0 + g``, the later ones add), every
        step a loop over the block's planes that the compiler vectorises.
        Last, each plane's cells are copied from its templates through one
        table ``src[q]`` (cell ``q = h * W + w`` -> its template entry).

      Against the plane-by-plane path (float32, 2 threads): 64x64x14x14 ->
      4x4 491 -> 275 µs, 64x64x10x10 -> 3x3 315 -> 158, 64x32x20x20 -> 3x3
      296 -> 209; but 32x32x32x32 -> 3x3 194 -> 248 and 8x64x56x56 -> 3x3
      206 -> 379, where rows are long enough to vectorise and the
      template copy, one cell at a time, costs more.  (float64: 14x14
      463 -> 315, 20x20 267 -> 249, 28x28 367 -> 484.)  Hence the
      threshold of 24 cells.

    Parallel contract: prange over the N*C planes, or over blocks of them
    (short rows); an iteration writes only its planes of ``dx`` and its own
    row or block of the scratch ``grow``, ``share`` and ``T``, so
    overlapping bins cannot race.
    """
    N, C, H, W = dx.shape
    oH = dout.shape[2]
    oW = dout.shape[3]
    P = N * C
    dp = dout.reshape((P, oH, oW))
    xp = dx.reshape((P, H, W))
    if oH == 1 and oW == 1:                 # global average: fill each plane with one value
        dflat = dout.reshape(P)
        xflat = dx.reshape((P, H * W))
        for p in prange(P):
            g = 0.0 + np.float64(dflat[p]) / (H * W)
            for q in range(H * W):
                xflat[p, q] = g
        return
    hs, he = _bins(H, oH)
    ws, we = _bins(W, oW)
    if H % oH == 0 and W % oW == 0:         # bins tile the plane
        grow = np.empty((P, W), dx.dtype)
        for p in prange(P):
            for i in range(oH):
                h0, h1 = hs[i], he[i]
                for j in range(oW):
                    w0, w1 = ws[j], we[j]
                    g = np.float64(dp[p, i, j]) / ((h1 - h0) * (w1 - w0))
                    for w in range(w0, w1):
                        grow[p, np.uint64(w)] = 0.0 + g   # rounded to dx's dtype once; uint64: kernels/__init__
                for h in range(h0, h1):
                    for w in range(W):
                        xp[p, np.uint64(h), w] = grow[p, w]
        return
    band, lo, hi = _row_bands(hs, he, H)
    area = _bin_areas(hs, he, ws, we)
    if W >= SHORT_ROW:                      # long rows: build each plane's rows along W
        share = np.empty((P, oH, oW))
        sf = share.reshape((P, oH * oW))
        df = dout.reshape((P, oH * oW))
        for p in prange(P):
            for m in range(oH * oW):
                sf[p, m] = np.float64(df[p, m]) / area[m]
            for h in range(H):
                row = xp[p, h]
                if h > 0 and band[h] == band[h - 1]:
                    above = xp[p, h - 1]
                    for w in range(W):
                        row[w] = above[w]
                    continue
                for w in range(W):
                    row[w] = 0.0
                for i in range(lo[band[h]], hi[band[h]]):
                    gi = share[p, np.uint64(i)]
                    for j in range(oW):
                        g = gi[j]
                        for w in range(ws[j], we[j]):
                            row[w] += g
        return
    nbands = lo.shape[0]
    B = PLANE_BLOCK
    src = np.empty(H * W, np.int64)           # cell q <- T[band(q), w(q), plane 0], flat
    for h in range(H):
        for w in range(W):
            src[h * W + w] = (band[h] * W + w) * B
    nblocks = (P + B - 1) // B
    share = np.empty((nblocks, oH * oW, B))
    T = np.empty((nblocks, nbands, W, B), dx.dtype)
    df = dout.reshape((P, oH * oW))
    xf = dx.reshape((P, H * W))
    for k in prange(nblocks):
        p0 = k * B
        nb = min(B, P - p0)
        s = share[k]
        for m in range(oH * oW):
            for b in range(nb):
                s[m, b] = np.float64(df[p0 + b, m]) / area[m]
        for t in range(nbands):
            Tt = T[k, t]
            i = lo[t]                                   # the band's first row bin: first touches
            for j in range(oW):
                sm = s[np.uint64(i * oW + j)]
                seen = we[j - 1] if j > 0 else 0        # columns below this were in bin j - 1 too
                _add_share(Tt, ws[j], min(seen, we[j]), sm, nb)
                for w in range(max(ws[j], seen), we[j]):
                    tw = Tt[np.uint64(w)]
                    for b in range(nb):
                        tw[b] = 0.0 + sm[b]             # rounded to dx's dtype
            for i in range(lo[t] + 1, hi[t]):
                for j in range(oW):
                    _add_share(Tt, ws[j], we[j], s[np.uint64(i * oW + j)], nb)
        Tf = T[k].reshape(nbands * W * B)
        for b in range(nb):
            o = xf[p0 + b]
            for q in range(H * W):
                o[q] = Tf[np.uint64(src[q] + b)]


@njit(cache=True, inline='always')
def _order_key(bits, q):
    """The int64 key of a float32 cell at flat index ``q`` (``bits``: the
    cell's bits as an int32, sign-extended), ordered as the max scan
    prefers cells, NaN aside.  High 32 bits: the value's order as a signed
    integer -- the bits themselves for +0.0 and up; below, the low 31 bits
    flipped and one added, so -0.0 ties with +0.0 and more negative floats
    get smaller keys -- and ``INT32_MAX``, above +inf, for a NaN of either
    sign.  Low 32 bits: ``2**32 - 1 - q``, so of two equal values the
    smaller index (the first in row-major order) has the larger key."""
    m = bits >> 31                                   # 0, or -1 for a set sign bit
    s = (bits ^ (m & 0x7FFFFFFF)) - m
    s = 0x7FFFFFFF if (bits & 0x7FFFFFFF) > 0x7F800000 else s
    return (s << 32) | (0xFFFFFFFF - q)


@njit(cache=True, inline='always')
def _column_winners(xw, base, W, Wr, hs, he, colmax, colarg, c):
    """Pass 1 of :func:`_adaptive_max_forward` for one plane: the plane is
    ``xw[base:base + H*W]`` (``xw`` all of x, flat), read as rows of ``Wr``
    cells from each row's start (``Wr`` may exceed W: the cells past the
    row are the next row's, and their columns' winners are never read).
    For each row bin i, ``colmax[c, i, w]`` / ``colarg[c, i, w]`` become
    the winner of column w over the bin's rows and its flat index
    ``h * W + w`` (first maximum, or last NaN), for w < Wr.  Three rows per
    loop along the row, keeping the winners in registers between them:
    588 -> 542 µs against one row per loop (the whole forward of that
    time, 64x64x14x14 -> 4x4, float32; 28x28: 469 -> 423)."""
    u = np.uint64                                  # uint64 offsets: kernels/__init__
    for i in range(hs.shape[0]):
        h0, h1 = hs[i], he[i]
        r = xw[u(base + h0 * W):u(base + h0 * W + Wr)]
        for w in range(Wr):
            colmax[c, i, w] = r[w]
            colarg[c, i, w] = h0 * W + w
        h = h0 + 1
        while h1 - h >= 3:                         # three rows per loop, stored once
            r0 = xw[u(base + h * W):u(base + h * W + Wr)]
            r1 = xw[u(base + (h + 1) * W):u(base + (h + 1) * W + Wr)]
            r2 = xw[u(base + (h + 2) * W):u(base + (h + 2) * W + Wr)]
            for w in range(Wr):
                m = colmax[c, i, w]
                a = colarg[c, i, w]
                v = r0[w]
                take = (v > m) | (v != v)          # no short-circuit: vectorises
                m = v if take else m
                a = h * W + w if take else a
                v = r1[w]
                take = (v > m) | (v != v)
                m = v if take else m
                a = (h + 1) * W + w if take else a
                v = r2[w]
                take = (v > m) | (v != v)
                colmax[c, i, w] = v if take else m
                colarg[c, i, w] = (h + 2) * W + w if take else a
            h += 3
        while h < h1:
            r0 = xw[u(base + h * W):u(base + h * W + Wr)]
            for w in range(Wr):
                v = r0[w]
                take = (v > colmax[c, i, w]) | (v != v)
                colmax[c, i, w] = v if take else colmax[c, i, w]
                colarg[c, i, w] = h * W + w if take else colarg[c, i, w]
            h += 1


@njit(cache=True, inline='always')
def _bins_by_key(bits, kp, xp, W, hs, he, ws, we, gidx, op, ap):
    """Pass 2 of :func:`_adaptive_max_forward` for one float32 plane:
    ``bits`` (oH*Wp,) int32 are the bits of the plane's column winners,
    ``kp`` (oH*Wp,) int64 their flat indices (overwritten), ``xp`` (H*W,)
    the plane; writes ``op``, ``ap`` (oH*oW,), the plane's outputs and
    indices.

    Each column winner becomes its :func:`_order_key` (one loop over the
    plane's oH*Wp winners), and a bin's answer is the largest key among
    its columns: the largest value, and of equal values (-0.0 and 0.0
    included) the smallest flat index -- the first maximum in row-major
    order, as the scan finds it.  The output is read back from ``x`` at
    that index (so a zero keeps the first one's sign).  The bins take
    their keys through a table, ``kp[gidx[d, m]]`` = column ``d`` of bin
    ``m`` (a narrower bin repeats its last column), in loops over all of a
    plane's bins; a bin whose largest key is a NaN's scans its cells for
    the last NaN instead (rare).  The keys overwrite ``kp``, and the bins'
    largest keys go to ``ap`` until decoded.  64x64x14x14 -> 4x4, the
    whole forward: 542 -> 439 µs against the float64 pass 2 (values, then
    indices, column by column within each bin); 64x32x28x28: 423 -> 393."""
    oW = ws.shape[0]
    for t in range(kp.shape[0]):
        kp[t] = _order_key(np.int64(bits[t]), kp[t])
    for m in range(op.shape[0]):
        ap[m] = kp[np.uint64(gidx[0, m])]           # uint64: kernels/__init__
    for d in range(1, gidx.shape[0]):
        for m in range(op.shape[0]):
            ap[m] = max(ap[m], kp[np.uint64(gidx[d, m])])
    for m in range(op.shape[0]):
        k = 0xFFFFFFFF - (ap[m] & 0xFFFFFFFF)
        if (ap[m] >> 32) == 0x7FFFFFFF:             # a NaN in the bin: the last NaN
            i = m // oW
            j = m - i * oW
            for h in range(hs[i], he[i]):
                for w in range(ws[j], we[j]):
                    q = h * W + w
                    k = q if xp[q] != xp[q] else k
        op[m] = xp[np.uint64(k)]
        ap[m] = k


@njit(cache=True, inline='always')
def _bins_by_scan(cm, ca, xp, ws, we, op, ap):
    """Pass 2 of :func:`_adaptive_max_forward` for one float64 plane:
    ``cm``, ``ca`` (oH, Wp) are its column winners and their indices,
    ``xp`` (H*W,) the plane -> ``op``, ``ap`` (oH, oW).  Each bin:
    ``best`` = the largest of its columns' winners (``>``: NaN is
    skipped), then the smallest flat index among the columns holding
    ``best``; for a zero the value is read back at that index (so -0.0 vs
    0.0 is the first one's).  If a column winner is NaN (rare), the NaN
    column with the largest flat index instead (the last NaN)."""
    u = np.uint64                                   # uint64: kernels/__init__
    for i in range(op.shape[0]):
        for j in range(op.shape[1]):
            w0 = u(ws[j])
            w1 = u(we[j])
            best = cm[i, w0]
            nan = best != best
            for w in range(w0 + u(1), w1):
                v = cm[i, w]
                best = v if v > best else best
                nan |= v != v
            k = xp.shape[0]
            for w in range(w0, w1):
                a = ca[i, w]
                k = a if (cm[i, w] == best) & (a < k) else k
            best = xp[u(k)] if best == 0.0 else best   # -0.0 or 0.0: the first one's
            if nan:                                     # rare: the last NaN wins
                k = -1
                for w in range(w0, w1):
                    if cm[i, w] != cm[i, w] and ca[i, w] > k:
                        best = cm[i, w]
                        k = ca[i, w]
            op[i, j] = best
            ap[i, j] = k


def _adaptive_max_forward(x, out, argmax):
    """Adaptive max pooling, ``x`` (N, C, H, W) -> ``out``, ``argmax``
    (N, C, oH, oW), both overwritten.

    ``out[n, c, i, j] = max(x[n, c, h0:h1, w0:w1])`` over bin (i, j) (module
    docstring); ``argmax`` is the flat in-plane index ``h * W + w`` of that
    cell.  Ties: the first maximum in row-major scan order wins (strict
    ``>``).  NaN propagates: a NaN in the bin makes the output NaN and its
    index the last NaN scanned -- the comparison PyTorch's CPU kernel uses,
    ``v > best or isnan(v)``.

    How: the same result as scanning each bin with that comparison, 4x
    faster (see benchmarks/README.md), in two passes over each plane, one
    plane after the other, on scratch rows small enough to stay in the
    first-level cache.
    Pass 1 (:func:`_column_winners`), for each row bin: every column ``w``
    of the plane keeps the winner of the bin's rows, ``colmax[w]`` and its
    flat index ``colarg[w]``, updated row by row with the same comparison
    over the whole width at once: a branch-free loop over contiguous cells
    that the compiler vectorises.  A column's winner is its first maximum,
    or its last NaN.  Pass 2 combines each bin's column winners
    (:func:`_bins_by_scan`; float32 gets the same answers from one integer
    key per column winner, :func:`_bins_by_key`).  Branch-free selects
    throughout: a scan with ``if`` spends most of its time on mispredicted
    branches.  (The passes are separate loops because, fused, the compiler
    stopped vectorising pass 1.)
    Pass 1's row loop is vectorised 4 cells wide here, and a row's last
    ``W % 4`` cells run in scalar code that branches on the data.  So when
    4 does not divide W, pass 1 reads each row ``Wp`` cells wide (W
    rounded up to a multiple of 8), the cells past the row being the next
    row's (their columns' winners are never read); only the last planes,
    where that would read past the end of ``x``, are read W wide.
    64x64x14x14 -> 4x4, float32, 2 threads: 335 -> 276 µs against passes
    over all planes with padded copies of them (28x28: 347 -> 265; 24x24:
    285 -> 242; benchmarks/README.md).
    Parallel contract: prange over runs of consecutive planes; iteration c
    uses row c of the scratch ``colmax``, ``colarg`` and writes only its
    planes of ``out`` and ``argmax``.

    Output size 1x1 in float32 (global max pooling): whole planes, each by
    :func:`_global_max_plane` on the plane and its bits (an int32 view):
    (1) one integer pass (:func:`_max_bits_and_nan`) finds the largest
    value's bits and whether the plane holds a NaN; (2) no NaN: the answer
    is the first cell equal to that value (:func:`_first_match`; a zero
    matches either sign, so of -0.0 and 0.0 the first one wins, as in the
    scan), and ``out`` is that cell's own value; NaN: the last NaN
    (:func:`_last_nan`).  Bit for bit the scan's answer, 2-3x faster than
    the general path: both passes are integer reductions the compiler
    vectorises without fast-math flags.  float64 keeps the general path
    (with 64-bit integers the two passes were slower on 28x28 and 24x24).
    Parallel contract: iteration p writes only ``out`` and ``argmax`` at p.
    """
    N, C, H, W = x.shape
    oH = out.shape[2]
    oW = out.shape[3]
    P = N * C
    if oH == 1 and oW == 1 and x.itemsize == 4:   # global max, float32: whole planes
        xflat = x.reshape((P, H * W))
        bits = xflat.view(np.int32)
        oflat = out.reshape(P)
        aflat = argmax.reshape(P)
        for p in prange(P):
            k = _global_max_plane(xflat[p], bits[p], np.int32(0x7FFFFFFF), np.int32(0x7F800000))
            oflat[p] = xflat[p, k]
            aflat[p] = k
        return
    xw = x.reshape(P * H * W)
    xflat = x.reshape((P, H * W))
    hs, he = _bins(H, oH)
    ws, we = _bins(W, oW)
    Wp = W if W % 4 == 0 else (W + 7) // 8 * 8   # row width of pass 1 (docstring)
    P_wide = P                                    # planes read Wp wide: all but the last few
    while P_wide > 0 and (P_wide - 1) * H * W + (H - 1) * W + Wp > P * H * W:
        P_wide -= 1
    nbins = oH * oW
    kw = 0
    for j in range(oW):
        kw = max(kw, we[j] - ws[j])
    gidx = np.empty((kw, nbins), np.int64)        # column d of bin m (a narrower bin repeats its last)
    for i in range(oH):
        for j in range(oW):
            for d in range(kw):
                gidx[d, i * oW + j] = i * Wp + ws[j] + min(d, we[j] - ws[j] - 1)
    n_runs = min(P, PLANE_RUNS)
    colmax = np.empty((n_runs, oH, Wp), x.dtype)
    colarg = np.empty((n_runs, oH, Wp), np.int64)
    bits = colmax.reshape((n_runs, oH * Wp)).view(np.int32)   # float32 winners' bits (unused for float64)
    keys = colarg.reshape((n_runs, oH * Wp))
    of = out.reshape((P, nbins))
    af = argmax.reshape((P, nbins))
    op = out.reshape((P, oH, oW))
    ap = argmax.reshape((P, oH, oW))
    for c in prange(n_runs):
        p_lo, p_hi = _plane_run(c, n_runs, P)
        for p in range(p_lo, p_hi):
            _column_winners(xw, p * H * W, W, Wp if p < P_wide else W, hs, he, colmax, colarg, c)
            if x.itemsize == 4:
                _bins_by_key(bits[c], keys[c], xflat[p], W, hs, he, ws, we, gidx, of[p], af[p])
            else:
                _bins_by_scan(colmax[c], colarg[c], xflat[p], ws, we, op[p], ap[p])


@njit(cache=True, inline='always')
def _better(v, q, best, k):
    """``(value, index)``: the better of the answer ``best`` (at flat index
    ``k``) and the candidate ``v`` (at ``q``) under the scan's rule: a NaN
    beats any number and of two NaN the larger index wins (the last NaN);
    otherwise the larger value, and on a tie the smaller index (the first
    maximum; -0.0 and 0.0 tie).  Branch-free (non-short-circuit ``|``)."""
    take = (v > best) | ((v == best) & (q < k)) | ((v != v) & ((best == best) | (q > k)))
    return (v if take else best), (q if take else k)


def _adaptive_max_merge(fine, fine_arg, out, argmax):
    """Adaptive max pooling to a coarser size, from the result of a finer one.

    ``fine``, ``fine_arg`` (N, C, fH, fW): an adaptive max pooling of some
    ``x`` (value and flat index) -> ``out``, ``argmax`` (N, C, oH, oW), the
    adaptive max pooling of the same ``x``, overwritten.  Needs ``oH``
    to divide ``fH`` and ``oW`` to divide ``fW``: then coarse bin ``i``
    is exactly the union of fine bins ``i*fH/oH .. (i+1)*fH/oH - 1`` (the
    floor/ceil bin rule nests), so its answer is the best of those fine
    answers under the scan's rule (:func:`_better`, a total order on
    (value, index), so the merges can also be chained: 4 -> 2 -> 1).  Used
    by the spatial pyramid: levels (1, 2, 4) cost one pass over ``x``.
    Halving (``fH = 2*oH``, ``fW = 2*oW``, the pyramid's common case) has
    its four candidates written out, as a tree: 64x64x4x4 -> 2x2, 2
    threads, 246-248 -> 90-91 us (the general loops took about 7 ns per
    candidate here).
    Parallel contract: prange over the N*C planes; iteration p writes only
    plane p of ``out`` and ``argmax``.
    """
    N, C, fH, fW = fine.shape
    oH = out.shape[2]
    oW = out.shape[3]
    P = N * C
    sh = fH // oH
    sw = fW // oW
    if sh == 2 and sw == 2:
        fv = fine.reshape((P, fH * fW))
        fa = fine_arg.reshape((P, fH * fW))
        of = out.reshape((P, oH * oW))
        af = argmax.reshape((P, oH * oW))
        for p in prange(P):
            v, a = fv[p], fa[p]
            for i in range(oH):
                for j in range(oW):
                    t = 2 * i * fW + 2 * j                      # top-left fine cell
                    b0, k0 = _better(v[t + 1], a[t + 1], v[t], a[t])
                    b1, k1 = _better(v[t + fW + 1], a[t + fW + 1], v[t + fW], a[t + fW])
                    best, k = _better(b1, k1, b0, k0)
                    of[p, i * oW + j] = best
                    af[p, i * oW + j] = k
        return
    fv3 = fine.reshape((P, fH, fW))
    fa3 = fine_arg.reshape((P, fH, fW))
    op = out.reshape((P, oH, oW))
    ap = argmax.reshape((P, oH, oW))
    for p in prange(P):
        for i in range(oH):
            for j in range(oW):
                best = fv3[p, i * sh, j * sw]
                k = fa3[p, i * sh, j * sw]
                for a in range(i * sh, i * sh + sh):
                    for b in range(j * sw, j * sw + sw):
                        best, k = _better(fv3[p, a, b], fa3[p, a, b], best, k)
                op[p, i, j] = best
                ap[p, i, j] = k


def _argmax_backward(dout, argmax, dx):
    """Route each output gradient to the one input cell it came from.

    ``dout``, ``argmax`` (N, C, oH, oW) -> ``dx`` (N, C, H, W)::

        dx[n, c].flat[argmax[n, c, i, j]] += dout[n, c, i, j]

    Entries with ``argmax < 0`` route nowhere (stochastic pooling marks an
    all-zero window that way).  Used by adaptive/global/pyramid max pooling
    and by stochastic and fractional max pooling.  ``dx`` is overwritten
    (zeroed here first, as one flat run per plane).  Parallel contract:
    prange over the N*C planes; iteration p accumulates only into plane p
    of ``dx``, so cells chosen by several outputs cannot race.
    """
    N, C, H, W = dx.shape
    oH = dout.shape[2]
    oW = dout.shape[3]
    P = N * C
    L = H * W
    M = oH * oW
    dp = dout.reshape((P, M))
    ap = argmax.reshape((P, M))
    xp = dx.reshape((P, L))
    for p in prange(P):
        for q in range(L):
            xp[p, q] = 0.0
        for m in range(M):
            k = ap[p, m]
            if k >= 0:
                xp[p, k] += dp[p, m]


def _pyramid_max_backward(dout, argmax, levels, dx):
    """Backward of spatial pyramid max pooling: every level routes its
    gradients to its argmax cells, and the levels add up.

    ``dout``, ``argmax`` (N, F) in the pyramid's feature layout (level by
    level; inside level ``l``, ``c*l*l + i*l + j``), ``levels`` (E,) int64
    -> ``dx`` (N, C, H, W), overwritten::

        dx = sum over levels of  (dx_l = 0;  dx_l.flat[argmax] += dout)

    computed as that sum is, in dx's dtype, without a plane per level:
    where one level's bins overlap, a cell can be the argmax of several of
    its outputs, and their gradients must be summed before the level's
    total joins the cell.  A level whose bins tile the plane (``l``
    divides H and W) has one output per cell: its gradients are added
    directly.  Any other level: (1) ``before[m]`` = the value of
    each output's cell; (2) those cells are set to 0; (3) every output adds
    its gradient to its cell, in row-major order (the level's own sums);
    (4) ``total[m]`` = each cell's level sum; (5) each cell is set to
    ``before + total`` (outputs sharing a cell write the same value).
    The argmax cells are indexed as ``np.uint64`` (in range, no wraparound
    check: kernels/__init__).
    Parallel contract: prange over the N*C planes; iteration p writes only
    plane p of ``dx`` and row p of the scratch arrays.
    """
    N, C, H, W = dx.shape
    P = N * C
    L = H * W
    E = levels.shape[0]
    xf = dx.reshape((P, L))
    first = np.empty(E, np.int64)             # feature offset of each level
    offset = 0
    most = 0
    for e in range(E):
        first[e] = offset
        offset += C * levels[e] * levels[e]
        most = max(most, levels[e] * levels[e])
    before = np.empty((P, most), dx.dtype)
    total = np.empty((P, most), dx.dtype)
    for p in prange(P):
        n = p // C
        c = p % C
        for q in range(L):
            xf[p, q] = 0.0
        for e in range(E):
            M = levels[e] * levels[e]
            base = first[e] + c * M
            if H % levels[e] == 0 and W % levels[e] == 0:   # bins tile: one output per cell
                for m in range(M):
                    xf[p, np.uint64(argmax[n, base + m])] += dout[n, base + m]
                continue
            for m in range(M):
                before[p, m] = xf[p, np.uint64(argmax[n, base + m])]
            for m in range(M):
                xf[p, np.uint64(argmax[n, base + m])] = 0.0
            for m in range(M):
                xf[p, np.uint64(argmax[n, base + m])] += dout[n, base + m]
            for m in range(M):
                total[p, m] = xf[p, np.uint64(argmax[n, base + m])]
            for m in range(M):
                xf[p, np.uint64(argmax[n, base + m])] = before[p, m] + total[p, m]


adaptive_avg_forward = njit(parallel=True, cache=True)(_adaptive_avg_forward)
adaptive_avg_backward = njit(parallel=True, cache=True)(_adaptive_avg_backward)
adaptive_max_forward = njit(parallel=True, cache=True)(_adaptive_max_forward)
argmax_backward = njit(parallel=True, cache=True)(_argmax_backward)
adaptive_max_merge = njit(parallel=True, cache=True)(_adaptive_max_merge)
pyramid_max_backward = njit(parallel=True, cache=True)(_pyramid_max_backward)
