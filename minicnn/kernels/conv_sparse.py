"""Convolution backward from a mostly-zero output gradient.

Behind a max pooling and a ReLU most of a convolution's output gradient is
zero: the pooling passes a gradient to one cell in each window, and the
ReLU only to the windows whose maximum was positive.  In the default model
(conv-pool-ReLU) about 3 % of the second convolution's output gradient is
non-zero once training is under way.  The GEMMs of the im2col path
multiply every one of those zeros; these kernels visit only the non-zero
entries, which is exact arithmetic on the same terms (adding a product of
0 changes no finite sum).

Shapes::

    nz_pos, nz_val : (F, N, cap)  the non-zero entries of the output
                                  gradient dY (N, F, Ho, Wo) as one list per
                                  (filter f, sample n): ``nz_cnt[f, n]``
                                  entries, position ``oh << 16 | ow``
                                  (int32; Ho, Wo < 2**15), in increasing
                                  (oh, ow) order, and value
    nz_cnt         : (F, N)
    xt   : (N, Hp, Wp*C)       the input, zero-padded (Hp = H + 2 pH,
                               Wp = W + 2 pW) and channels last: cell
                               (n, h', w', c) at xt[n, h', w'*C + c]
    wt   : (F, kH, kW*C)       the weights, channels last: W[f, c, i, j] at
                               wt[f, i, j*C + c]
    dwt  : (F, kH, kW*C)       the weight gradient in wt's layout
    dxt  : (N, Hp, Wp*C)       scratch: the padded input gradient, channels last
    dx   : (N, C, H, W)

Rules (the convolution's backward, summed over the non-zero ``g = dY[n, f,
oh, ow]`` only; ``x'`` is the padded input)::

    dW[f, c, i, j]                      += g * x'[n, c, oh*sH + i, ow*sW + j]
    dx'[n, c, oh*sH + i, ow*sW + j]     += g * W[f, c, i, j]

For a fixed ``(oh, ow)`` and kernel row ``i`` the ``kW*C`` cells those
rules touch are contiguous in the channels-last layouts, so each non-zero
costs ``kH`` loops of ``kW*C`` multiply-adds over contiguous memory, the
loops the compiler vectorises.  Sums are in the array dtype, in the order
n, oh, ow (dW, four entries at a time: below) and f, oh, ow (dx), then i
and j: the same terms as the GEMMs (``dY @ cols.T`` and
``col2im(Wm.T @ dY)``) in another order.
Positions are stored as ``oh << 16 | ow`` because splitting a flat index
needs an integer division per entry, which cost dx a third of its time.
The entry loops index flat arrays at unsigned (``np.uint64``) offsets: an
index that Numba cannot prove non-negative gets a negative-index check
that stops the loop vectorising, and a slice per kernel row instead cost
20 % (2.78 against 2.25 ms for dx, 2.4-2.7 against 2.0 ms for dW, at 20 %
non-zero).

Zero times a non-finite number is NaN, and these kernels skip the zero
entries, so they would drop NaNs the GEMMs produce: the layer takes this
path only when the input and the weights are all finite (``finite``
below).
"""
import numpy as np
from numba import njit, prange


def _pad_channels_last(x, bits, mask, inf, ph, pw, xt, finite):
    """``xt[n, ph + h, (pw + w)*C + c] = x[n, c, h, w]``, zero elsewhere;
    ``finite[n]`` = every value of sample n is finite.
    x (N, C, H, W) -> xt (N, H + 2ph, (W + 2pw)*C), finite (N,) bool.
    ``bits`` (N, C*H*W): x viewed as signed integers of its width, ``mask``
    all bits but the sign, ``inf`` the bits of +inf: a value is an infinity
    or a NaN iff ``bits & mask >= inf``, and that max reduction over
    integers vectorises (a float test in the copy loop made it 1.6x
    slower).  The copy reads x in memory order and writes at stride C (a
    loop over the channels innermost read at stride H*W, and compiled to
    gathers): 64x32x14x14, 2 threads, 165 -> 143 us with x in cache,
    379 -> 301 us after a 64 MB sweep (medians of 7 alternating rounds,
    Intel VM, 2026-11-25); inside the default model's training step
    331 -> 316 us (20 alternating rounds of 30 steps).
    Parallel contract: prange over the N samples; iteration n writes only
    xt[n] and finite[n]."""
    N, C, H, W = x.shape
    Hp, L = xt.shape[1], xt.shape[2]
    for n in prange(N):
        b = bits[n]
        hi = mask ^ mask
        for q in range(b.shape[0]):
            hi = max(hi, b[q] & mask)
        finite[n] = hi < inf
        plane = xt[n]
        for r in range(Hp):
            row = plane[r]
            if r < ph or r >= ph + H:
                for q in range(L):
                    row[q] = 0.0
            else:
                for q in range(pw * C):
                    row[q] = 0.0
                for q in range((pw + W) * C, L):
                    row[q] = 0.0
        for c in range(C):
            for h in range(H):
                row = plane[ph + h]
                src = x[n, c, h]
                for w in range(W):
                    row[np.uint64((pw + w) * C + c)] = src[w]


def _count_nonzero(a):
    """Number of entries of ``a`` (any shape, C-contiguous) that are not 0
    (NaN counts).  Parallel contract: a prange reduction over the flat
    array; integer addition, so the count is exact in any order."""
    flat = a.reshape(a.size)
    c = 0
    for q in prange(flat.shape[0]):
        c += flat[q] != 0.0
    return c


def _nonzeros_from_nchw(d, Wo, nz_pos, nz_val, nz_cnt):
    """The non-zero entries of ``d`` (N, F, Ho*Wo) as the lists of the
    module docstring (cap >= Ho*Wo).
    Parallel contract: prange over the (n, f) planes in memory order; each
    writes only its own list."""
    N, F, P = d.shape
    Ho = P // Wo
    for t in prange(N * F):
        n = t // F
        f = t % F
        src = d[n, f]
        pos = nz_pos[f, n]
        val = nz_val[f, n]
        k = 0
        for oh in range(Ho):
            row = src[oh * Wo:(oh + 1) * Wo]
            for ow in range(Wo):
                if row[ow] != 0.0:
                    pos[k] = (oh << 16) | ow
                    val[k] = row[ow]
                    k += 1
        nz_cnt[f, n] = k


def _nonzeros_from_maxpool2x2(dout, argmax, Wo, nz_pos, nz_val, nz_cnt):
    """The lists of :func:`_nonzeros_from_nchw` for the gradient a 2x2
    max-pool backward would produce (zero but ``dx[argmax] = 0 + dout``),
    read from the pooled gradient and its winners without forming it.
    dout, argmax: (N, F, H2, W2), argmax the flat index ``oh*Wo + ow`` of
    each window's winner.  Pooled row i covers output rows 2i and 2i + 1;
    its winners in row 2i are counted first (``top``), so one pass can put
    those at ``k, k+1, ...`` and the others after them: the positions come
    out increasing, as from the full gradient.  A plane with no non-zero
    value is skipped after a vectorised count.  The pass has no branch: a
    zero entry is written too, to the list's last slot, which no entry
    keeps when any is zero (such a plane has fewer than H2*W2 entries);
    with an ``if`` per entry, taken about half the time, the kernel took
    402-428 against 364-375 µs (medians of 5 alternating rounds) on a
    batch from step 300 of the default model's training (64x64x7x7, 43 %
    non-zero).  Slots at and after ``nz_cnt`` hold junk.
    nz_pos, nz_val: (F, N, >= H2*W2); nz_cnt: (F, N).
    Parallel contract: prange over the (n, f) planes in memory order; each
    writes only its own list."""
    N, F, H2, W2 = dout.shape
    P2 = H2 * W2
    flat = dout.reshape((N * F, P2))
    junk = nz_pos.shape[2] - 1                # the slot zero entries are written to
    for t in prange(N * F):
        n = t // F
        f = t % F
        row = flat[t]
        nonzero = 0
        for q in range(P2):
            nonzero += row[q] != 0.0
        k = 0
        if nonzero > 0:
            g = dout[n, f]
            a = argmax[n, f]
            pos = nz_pos[f, n]
            val = nz_val[f, n]
            for i in range(H2):
                below = (2 * i + 1) * Wo      # winners below this flat index are in row 2i
                top = 0
                for j in range(W2):
                    top += (g[i, j] != 0.0) & (a[i, j] < below)
                kt = k                        # next slot for a row-2i winner
                kb = k + top                  # next slot for a row-(2i+1) winner
                for j in range(W2):
                    v = g[i, j]
                    nz = v != 0.0
                    up = a[i, j] < below
                    d = (kt if up else kb) if nz else junk
                    oh = 2 * i + 1 - up
                    pos[d] = (oh << 16) | (a[i, j] - oh * Wo)
                    val[d] = v
                    kt += up & nz
                    kb += (not up) & nz
                k = kb
        nz_cnt[f, n] = k


@njit(inline="always", cache=True)
def _offset(a, sh, sw, C, row):
    """The flat offset in one sample's padded channels-last plane (``row``
    cells a row, ``C`` channels) of the first cell of the window at output
    position ``a = oh << 16 | ow``, as ``np.uint64`` (module docstring)."""
    return np.uint64((a >> 16) * sh) * row + np.uint64((a & 0xFFFF) * sw * C)


def _sparse_weight_grad(nz_pos, nz_val, nz_cnt, xt, kh, kw, sh, sw, dwt, db):
    """dW and db from the non-zero lists (module docstring): ``dwt`` (F, kh,
    kw*C) in float arithmetic of its dtype; ``db[f]`` the sum of filter f's
    entries, in float64, rounded once.  Both overwritten.
    Filters go in blocks of 8, and for each sample all the block's lists
    are taken while that sample's input (xt[n], 32 KB for 32 channels of
    16x16) is in cache: 1.5x faster than a filter's whole pass at a time
    at 9 % non-zero.  Each filter still adds its terms in the order n, oh,
    ow, so the block size does not change a bit.
    A (filter, sample) list is taken four entries at a time,
    ``dW[f] += (g0*x0 + g1*x1) + (g2*x2 + g3*x3)`` with ``xk`` the
    entry's input window, then the last ``cnt % 4`` one by one: a quarter
    of the loads and stores of ``dW[f]``, 2.12-2.16 -> 1.54-1.58 ms on the
    default model's 32->64 layer at 20 % non-zero (benchmarks/README.md).
    Parallel contract: prange over the blocks of filters; iteration b reads
    only its filters' lists and writes only their dwt[f] and db[f]."""
    F, N = nz_cnt.shape
    KC = np.uint64(dwt.shape[2])
    C = dwt.shape[2] // kw
    L = np.uint64(xt.shape[1] * xt.shape[2])         # one sample's cells
    row = np.uint64(xt.shape[2])                      # one padded row's cells
    xflat = xt.reshape(xt.size)
    B = 8
    for blk in prange((F + B - 1) // B):
        f0 = blk * B
        f1 = min(F, f0 + B)
        for f in range(f0, f1):
            for i in range(kh):
                for q in range(dwt.shape[2]):
                    dwt[f, i, q] = 0.0
        for n in range(N):
            x0 = np.uint64(n) * L
            for f in range(f0, f1):
                acc = dwt[f].reshape(dwt[f].size)
                pos = nz_pos[f, n]
                val = nz_val[f, n]
                cnt = nz_cnt[f, n]
                cnt4 = cnt - cnt % 4
                for k in range(0, cnt4, 4):          # four entries per pass over dW[f]
                    s0 = x0 + _offset(pos[k], sh, sw, C, row)
                    s1 = x0 + _offset(pos[k + 1], sh, sw, C, row)
                    s2 = x0 + _offset(pos[k + 2], sh, sw, C, row)
                    s3 = x0 + _offset(pos[k + 3], sh, sw, C, row)
                    g0, g1, g2, g3 = val[k], val[k + 1], val[k + 2], val[k + 3]
                    for i in range(np.uint64(kh)):
                        o = i * row
                        dst = i * KC
                        for q in range(KC):
                            acc[dst + q] += ((g0 * xflat[s0 + o + q] + g1 * xflat[s1 + o + q])
                                             + (g2 * xflat[s2 + o + q] + g3 * xflat[s3 + o + q]))
                for k in range(cnt4, cnt):
                    first = x0 + _offset(pos[k], sh, sw, C, row)
                    g = val[k]
                    for i in range(np.uint64(kh)):
                        src = first + i * row
                        dst = i * KC
                        for q in range(KC):
                            acc[dst + q] += g * xflat[src + q]
        for f in range(f0, f1):
            s = 0.0
            for n in range(N):
                for k in range(nz_cnt[f, n]):
                    s += nz_val[f, n, k]
            db[f] = s


def _sparse_input_grad(nz_pos, nz_val, nz_cnt, wt, kh, kw, sh, sw, ph, pw, dxt, dx):
    """dx from the non-zero lists (module docstring): summed in the padded
    channels-last scratch ``dxt`` (N, Hp, Wp*C), then cropped and written to
    ``dx`` (N, C, H, W), overwritten.  Parallel contract: prange over the N
    samples; iteration n reads only sample n's lists and writes only dxt[n]
    and dx[n]."""
    F = nz_cnt.shape[0]
    N, C, H, W = dx.shape
    KC = np.uint64(wt.shape[2])
    row = np.uint64(dxt.shape[2])
    wflat = wt.reshape(wt.size)
    for n in prange(N):
        plane = dxt[n]
        pflat = plane.reshape(plane.size)
        for q in range(pflat.shape[0]):
            pflat[q] = 0.0
        for f in range(F):
            w0 = np.uint64(f * kh) * KC
            for k in range(nz_cnt[f, n]):
                a = nz_pos[f, n, k]
                g = nz_val[f, n, k]
                first = _offset(a, sh, sw, C, row)
                for i in range(np.uint64(kh)):
                    dst = first + i * row
                    src = w0 + i * KC
                    for q in range(KC):
                        pflat[dst + q] += g * wflat[src + q]
        for c in range(C):
            for h in range(H):
                src = plane[ph + h]
                out = dx[n, c, h]
                for w in range(W):
                    out[w] = src[(pw + w) * C + c]


pad_channels_last = njit(parallel=True, cache=True)(_pad_channels_last)
count_nonzero = njit(parallel=True, cache=True)(_count_nonzero)
nonzeros_from_nchw = njit(parallel=True, cache=True)(_nonzeros_from_nchw)
nonzeros_from_maxpool2x2 = njit(parallel=True, cache=True)(_nonzeros_from_maxpool2x2)
sparse_weight_grad = njit(parallel=True, cache=True)(_sparse_weight_grad)
sparse_input_grad = njit(parallel=True, cache=True)(_sparse_input_grad)
