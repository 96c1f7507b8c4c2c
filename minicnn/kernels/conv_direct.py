"""Direct 3x3 stride-1 convolution for layers with few input channels.

The im2col + GEMM path (:mod:`minicnn.kernels.conv`) is what most layers
use.  For a layer with few input channels (the first layer of an image
net: 1 channel for MNIST, 3 for RGB) the GEMM's inner dimension is only
``C*9`` long, and the column matrix, the GEMM output and the layout change
back to NCHW cost more memory traffic than the arithmetic.  These kernels
compute the same sums straight from a zero-padded copy of the input.

Shapes::

    x   : (N, C, H, W)
    xp  : (N, C, Hp, Wp)   the input with its zero padding, Hp = H + 2 pH,
                           Wp = W + 2 pW  (:func:`_pad_sample`)
    w   : (F, C, 3, 3)     b : (F,)
    y   : (N, F, Ho, Wo)   Ho = Hp - 2,  Wo = Wp - 2

**The flat-row trick.**  Number the cells of a padded plane ``q' = h*Wp + v``
and give the output the same row pitch, ``q = oh*Wp + ow``.  Tap ``(i, j)``
of output ``q`` then reads cell ``q + i*Wp + j``: one constant shift per
tap for the whole plane, so each tap is a single long loop over
``q < L = (Ho - 1)*Wp + Wo`` instead of ``Ho`` short rows, and that loop
vectorises.  Entries with ``ow >= Wo`` are computed too (they straddle two
rows) and thrown away when the result is copied out; the last entry read
is cell ``Hp*Wp - 1``, so nothing is read past the plane.

Forward, per output cell (float arithmetic in the array dtype, in this
order)::

    y[n, f, oh, ow] = b[f] + sum_c sum_{i,j} w[f, c, i, j] * xp[n, c, oh + i, ow + j]

Weight gradient (the first layer of a net needs no input gradient; when
one is needed, :class:`minicnn.layers.conv.Conv2D` takes it from the GEMM
path, which does not need the column matrix)::

    dW[f, c, i, j] = sum_n sum_{oh,ow} dY[n, f, oh, ow] * xp[n, c, oh + i, ow + j]
    db[f]          = sum_n sum_{oh,ow} dY[n, f, oh, ow]

**After 2x2 max pooling** (``pool=True``, used by
:meth:`minicnn.layers.conv.Conv2D.backward_maxpool2x2`): the weight
gradient takes the gradient of the pooled output and the pooling's
winners and rebuilds each plane of ``dY`` (zero but at the winners, the
max-pool backward) in its scratch row, so the full-resolution ``dY`` is
never written to memory.  The values are those of the pooling layer's
backward followed by this one, bit for bit.  (Pooling inside the forward
kernel was measured too, and was slower than the pooling kernel after
it: see benchmarks/README.md.)

Those are long dot products; :func:`weight_grad` lets LLVM reorder their
additions (``fastmath={"reassoc"}``, nothing else) so they vectorise.  The
order is then the compiler's, fixed per build and independent of the
thread count (each filter is summed by one thread), as a BLAS GEMM's is.
"""
import numpy as np
from numba import njit, prange


@njit(cache=True, inline="always")
def _pad_sample(x, ph, pw, xp):
    """``xp[c] = x[c]`` surrounded by ``ph`` rows and ``pw`` columns of zeros,
    for every channel of one sample: x (C, H, W), xp (C, H + 2ph, W + 2pw)."""
    C, H, W = x.shape
    Hp, Wp = xp.shape[1], xp.shape[2]
    for c in range(C):
        for r in range(Hp):
            row = xp[c, r]
            if r < ph or r >= ph + H:
                for v in range(Wp):
                    row[v] = 0.0
                continue
            for v in range(pw):
                row[v] = 0.0
            inner = row[pw:pw + W]
            src = x[c, r - ph]
            for v in range(W):
                inner[v] = src[v]
            for v in range(pw + W, Wp):
                row[v] = 0.0


def _forward(x, ph, pw, w, b, xp, acc, y):
    """``y = conv3x3(pad(x), w) + b`` (stride 1); ``xp`` receives the padded
    input (:func:`_pad_sample`), which the weight gradient reads again.

    Two filters per pass over the input plane, so each loaded input value
    serves 18 multiplications; ``acc`` (N, 2, Ho*Wp) is scratch holding the
    two filters' flat-row sums for sample ``n`` (row ``n`` is used only by
    iteration ``n``).  With an odd F the last pass computes the last filter
    twice and stores it once.  Each output is ``b[f]``, then for every
    channel the nine taps in row-major order, added one by one.

    Parallel contract: prange over the samples; iteration ``n`` writes only
    ``xp[n]``, ``y[n]`` and ``acc[n]``.
    """
    N, C, Hp, Wp = xp.shape
    F = w.shape[0]
    Ho, Wo = y.shape[2], y.shape[3]
    L = (Ho - 1) * Wp + Wo
    xf = xp.reshape((N, C, Hp * Wp))
    for n in prange(N):
        _pad_sample(x[n], ph, pw, xp[n])
        a0 = acc[n, 0]
        a1 = acc[n, 1]
        for f0 in range(0, F, 2):
            f1 = min(f0 + 1, F - 1)
            b0, b1 = b[f0], b[f1]
            for q in range(L):
                a0[q] = b0
                a1[q] = b1
            for c in range(C):
                u00, u01, u02 = w[f0, c, 0, 0], w[f0, c, 0, 1], w[f0, c, 0, 2]
                u10, u11, u12 = w[f0, c, 1, 0], w[f0, c, 1, 1], w[f0, c, 1, 2]
                u20, u21, u22 = w[f0, c, 2, 0], w[f0, c, 2, 1], w[f0, c, 2, 2]
                v00, v01, v02 = w[f1, c, 0, 0], w[f1, c, 0, 1], w[f1, c, 0, 2]
                v10, v11, v12 = w[f1, c, 1, 0], w[f1, c, 1, 1], w[f1, c, 1, 2]
                v20, v21, v22 = w[f1, c, 2, 0], w[f1, c, 2, 1], w[f1, c, 2, 2]
                r0 = xf[n, c, 0:L + 2]
                r1 = xf[n, c, Wp:Wp + L + 2]
                r2 = xf[n, c, 2 * Wp:2 * Wp + L + 2]
                for q in range(L):
                    x00, x01, x02 = r0[q], r0[q + 1], r0[q + 2]
                    x10, x11, x12 = r1[q], r1[q + 1], r1[q + 2]
                    x20, x21, x22 = r2[q], r2[q + 1], r2[q + 2]
                    s = a0[q]
                    s += u00 * x00
                    s += u01 * x01
                    s += u02 * x02
                    s += u10 * x10
                    s += u11 * x11
                    s += u12 * x12
                    s += u20 * x20
                    s += u21 * x21
                    s += u22 * x22
                    a0[q] = s
                    t = a1[q]
                    t += v00 * x00
                    t += v01 * x01
                    t += v02 * x02
                    t += v10 * x10
                    t += v11 * x11
                    t += v12 * x12
                    t += v20 * x20
                    t += v21 * x21
                    t += v22 * x22
                    a1[q] = t
            _copy_out(a0, Wp, y[n, f0])
            if f1 != f0:
                _copy_out(a1, Wp, y[n, f1])


@njit(cache=True, inline="always")
def _copy_out(a, Wp, dst):
    """``dst[oh, ow] = a[oh*Wp + ow]``: drop the straddling entries."""
    Ho, Wo = dst.shape
    for oh in range(Ho):
        src = a[oh * Wp:oh * Wp + Wo]
        row = dst[oh]
        for ow in range(Wo):
            row[ow] = src[ow]


@njit(cache=True, inline="always")
def _unpool_into(d, am, Wp, g):
    """``g`` (one scratch row of pitch ``Wp``, ``Wo = Wp - 2``) = the 2x2
    max-pool backward of ``d`` (H2, W2) with winners ``am`` (flat indices
    ``oh*Wo + ow``): zero, then ``g[winner] += d``, in row-major order."""
    H2, W2 = d.shape
    Wo = Wp - 2
    zero = g.dtype.type(0)
    for q in range(g.shape[0]):
        g[q] = zero
    for i in range(H2):
        for j in range(W2):
            off = am[i, j] - (2 * i * Wo + 2 * j)            # 0, 1, Wo or Wo + 1
            q = 2 * i * Wp + 2 * j + off + (Wp - Wo) * (off >= Wo)
            g[np.uint64(q)] += d[i, j]                        # uint64: kernels/__init__


def _weight_grad(xp, dy, argmax, pool, xs, gy, dw, db):
    """``dW`` and ``db`` of the forward above (formulas in the module
    docstring).  ``gy`` (F, Ho*Wp) is scratch: row ``f`` holds one plane of
    ``dY[:, f]`` laid out with the padded row pitch and zeros in the
    straddling entries, so every tap is one flat dot product
    ``sum_q gy[f, q] * xp_flat[n, c, q + i*Wp + j]`` over ``q < L``.

    ``pool`` False: ``dy`` is dY (N, F, Ho, Wo); ``argmax`` is not used.
    ``pool`` True: ``dy`` is the gradient of the pooled output and
    ``argmax`` the forward's winners, both (N, F, Ho//2, Wo//2); the plane
    of dY is the max-pool backward's ``0; dY[argmax] += dy``, built in the
    scratch row (a winner's offset inside its window is ``0, 1, Wo`` or
    ``Wo + 1``, so no division is needed to place it).

    ``xs`` (N, C, 2, Hp*Wp - 2) is scratch: each padded plane, flat, shifted
    by one and by two cells (``xs[n, c, j-1, q] = xp_flat[n, c, q + j]``),
    so the nine taps read nine arrays at the same index ``q``.  Read from
    one array at ``q``, ``q + 1`` and ``q + 2``, LLVM reuses each load in
    the next iterations and the vectorised loop spends its time shuffling
    registers: 0.78-0.81 ms against 0.53-0.56 ms for 64x1x28x28 -> 32,
    copies included (benchmarks/README.md).  Same products, same sums.

    Parallel contract: a prange over the (sample, channel) pairs fills
    ``xs[n, c]``; then a prange over the filters, where iteration ``f``
    writes only ``dw[f]``, ``db[f]`` and ``gy[f]``.
    """
    N, C, Hp, Wp = xp.shape
    F = dw.shape[0]
    Ho, Wo = Hp - 2, Wp - 2
    L = (Ho - 1) * Wp + Wo
    xf = xp.reshape((N, C, Hp * Wp))
    zero = dw.dtype.type(0)
    for t in prange(N * C):
        src = xf[t // C, t % C]
        s1 = xs[t // C, t % C, 0]
        s2 = xs[t // C, t % C, 1]
        for q in range(Hp * Wp - 2):
            s1[q] = src[q + 1]
            s2[q] = src[q + 2]
    for f in prange(F):
        g = gy[f]
        for q in range(Ho * Wp):
            g[q] = zero
        for c in range(C):
            for i in range(3):
                for j in range(3):
                    dw[f, c, i, j] = zero
        bsum = zero
        for n in range(N):
            if pool:
                _unpool_into(dy[n, f], argmax[n, f], Wp, g)
            else:
                src = dy[n, f]
                for oh in range(Ho):
                    row = g[oh * Wp:oh * Wp + Wo]
                    s = src[oh]
                    for ow in range(Wo):
                        row[ow] = s[ow]
            tb = zero
            for q in range(L):
                tb += g[q]
            bsum += tb
            for c in range(C):
                r00, r01, r02 = xf[n, c, 0:L], xs[n, c, 0, 0:L], xs[n, c, 1, 0:L]
                r10, r11, r12 = xf[n, c, Wp:Wp + L], xs[n, c, 0, Wp:Wp + L], xs[n, c, 1, Wp:Wp + L]
                r20, r21, r22 = (xf[n, c, 2 * Wp:2 * Wp + L], xs[n, c, 0, 2 * Wp:2 * Wp + L],
                                 xs[n, c, 1, 2 * Wp:2 * Wp + L])
                t00 = t01 = t02 = t10 = t11 = t12 = t20 = t21 = t22 = zero
                for q in range(L):
                    d = g[q]
                    t00 += d * r00[q]
                    t01 += d * r01[q]
                    t02 += d * r02[q]
                    t10 += d * r10[q]
                    t11 += d * r11[q]
                    t12 += d * r12[q]
                    t20 += d * r20[q]
                    t21 += d * r21[q]
                    t22 += d * r22[q]
                dw[f, c, 0, 0] += t00
                dw[f, c, 0, 1] += t01
                dw[f, c, 0, 2] += t02
                dw[f, c, 1, 0] += t10
                dw[f, c, 1, 1] += t11
                dw[f, c, 1, 2] += t12
                dw[f, c, 2, 0] += t20
                dw[f, c, 2, 1] += t21
                dw[f, c, 2, 2] += t22
        db[f] = bsum


forward = njit(parallel=True, cache=True)(_forward)
weight_grad = njit(parallel=True, cache=True, fastmath={"reassoc"})(_weight_grad)
