"""Candidate kernel changes, measured against the kernels minicnn ships.

The library is not changed here: each candidate is a plain function
compiled beside the current one, run on the same input, and checked to give
the same result before it is timed.  The report lists current / candidate;
``benchmarks/README.md`` keeps the ones that did not help.

    layer overhead      MaxPool2D layer fwd+bwd vs its two kernels called directly
                        on preallocated arrays (allocation, checks, reshapes)
    2x2 select scan     max pool 2x2/2 forward with branch-free selects and a
                        rarely taken NaN fix-up (same ties and NaN rule)
    2x2 fused backward  max pool 2x2/2 backward writing each 2x2 block once
                        (no separate zeroing pass, no scatter)
    2x2 recompute       max pool 2x2/2 without an argmax array: forward writes
                        only y, backward re-finds the winner in x
    fastmath            the average- and LP-pooling forward kernels compiled
                        with fastmath=True (what the flag buys where it is legal)
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from benchmarks.harness import log, measure
from minicnn.kernels import pooling as K


def _max2x2_forward_select(x, out, argmax):
    """Same result as ``minicnn.kernels.pooling._maxpool2d_2x2_forward``
    (first maximum wins ties; a NaN wins, the last NaN scanned), written as
    branch-free selects over the four taps a, b, c, d, plus a fix-up for
    windows holding a NaN (rare, so the branch is predicted)."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(Ho):
            h = 2 * oh
            for ow in range(Wo):
                w = 2 * ow
                a = x[p, h, w]
                b = x[p, h, w + 1]
                c = x[p, h + 1, w]
                d = x[p, h + 1, w + 1]
                best = a
                k = 0
                t = b > best
                best = b if t else best
                k = 1 if t else k
                t = c > best
                best = c if t else best
                k = 2 if t else k
                t = d > best
                best = d if t else best
                k = 3 if t else k
                if (a != a) | (b != b) | (c != c) | (d != d):      # the last NaN wins
                    k = 3 if d != d else (2 if c != c else (1 if b != b else 0))
                    best = d if k == 3 else (c if k == 2 else (b if k == 1 else a))
                out[p, oh, ow] = best
                argmax[p, oh, ow] = (h + (k >> 1)) * W + w + (k & 1)


def _max2x2_backward_fused(dout, argmax, dx):
    """dx (P, H, W) from dout, argmax (P, Ho, Wo) of a full 2x2/2 max pool:
    each 2x2 block is written once, the winner gets dout, the others 0.
    Rows/cols beyond 2*Ho (odd H) are zeroed.  prange over planes."""
    P, H, W = dx.shape
    Ho, Wo = dout.shape[1], dout.shape[2]
    for p in prange(P):
        for oh in range(Ho):
            h = 2 * oh
            for ow in range(Wo):
                w = 2 * ow
                a = argmax[p, oh, ow]
                g = dout[p, oh, ow]
                dx[p, h, w] = g if a == h * W + w else 0.0
                dx[p, h, w + 1] = g if a == h * W + w + 1 else 0.0
                dx[p, h + 1, w] = g if a == (h + 1) * W + w else 0.0
                dx[p, h + 1, w + 1] = g if a == (h + 1) * W + w + 1 else 0.0
            for w in range(2 * Wo, W):
                dx[p, h, w] = 0.0
                dx[p, h + 1, w] = 0.0
        for h in range(2 * Ho, H):
            for w in range(W):
                dx[p, h, w] = 0.0


def _max2x2_forward_noidx(x, out):
    """y only (no argmax array); same comparison rule as the shipped kernel."""
    P, H, W = x.shape
    Ho, Wo = out.shape[1], out.shape[2]
    for p in prange(P):
        for oh in range(Ho):
            h = 2 * oh
            for ow in range(Wo):
                w = 2 * ow
                best = x[p, h, w]
                v = x[p, h, w + 1]
                if v > best or math.isnan(v):
                    best = v
                v = x[p, h + 1, w]
                if v > best or math.isnan(v):
                    best = v
                v = x[p, h + 1, w + 1]
                if v > best or math.isnan(v):
                    best = v
                out[p, oh, ow] = best


def _max2x2_backward_recompute(dout, x, dx):
    """Re-find each window's winner in x (first max, NaN wins) and write the
    2x2 block once.  Assumes H, W even (the experiment's shapes)."""
    P, H, W = dx.shape
    Ho, Wo = dout.shape[1], dout.shape[2]
    for p in prange(P):
        for oh in range(Ho):
            h = 2 * oh
            for ow in range(Wo):
                w = 2 * ow
                best = x[p, h, w]
                k = 0
                v = x[p, h, w + 1]
                if v > best or math.isnan(v):
                    best = v
                    k = 1
                v = x[p, h + 1, w]
                if v > best or math.isnan(v):
                    best = v
                    k = 2
                v = x[p, h + 1, w + 1]
                if v > best or math.isnan(v):
                    k = 3
                g = dout[p, oh, ow]
                dx[p, h, w] = g if k == 0 else 0.0
                dx[p, h, w + 1] = g if k == 1 else 0.0
                dx[p, h + 1, w] = g if k == 2 else 0.0
                dx[p, h + 1, w + 1] = g if k == 3 else 0.0


max2x2_forward_select = njit(parallel=True, cache=True)(_max2x2_forward_select)
max2x2_backward_fused = njit(parallel=True, cache=True)(_max2x2_backward_fused)
max2x2_forward_noidx = njit(parallel=True, cache=True)(_max2x2_forward_noidx)
max2x2_backward_recompute = njit(parallel=True, cache=True)(_max2x2_backward_recompute)
# No cache=True here: Numba's cache key ignores fastmath, so a cached fastmath
# build of the library's own functions could be loaded by the library itself.
avgpool2d_forward_fastmath = njit(parallel=True, fastmath=True)(K._avgpool2d_forward)
lppool2d_forward_fastmath = njit(parallel=True, fastmath=True)(K._lppool2d_forward)


def run(ctx, shape=None) -> list[dict]:
    import minicnn as mc

    shape = shape or ((2, 3, 8, 8) if ctx.tiny else (64, 32, 28, 28))
    N, C, H, W = shape
    P, Ho, Wo = N * C, H // 2, W // 2
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    xp = x.reshape(P, H, W)
    g = rng.standard_normal((P, Ho, Wo)).astype(np.float32)
    y = np.empty((P, Ho, Wo), np.float32)
    am = np.empty((P, Ho, Wo), np.int64)
    dx = np.empty_like(xp)
    dx2 = np.empty_like(xp)
    y2 = np.empty_like(y)
    label = "x".join(map(str, shape))
    T = ctx.timing
    out = []

    def shipped():
        K.maxpool2d_2x2_forward(xp, y, am)
        K.maxpool2d_backward(g, am, dx)

    log("[experiments] max pool 2x2")
    shipped()
    layer = mc.MaxPool2D(2)
    g4 = g.reshape(N, C, Ho, Wo)
    same = bool(np.array_equal(layer.forward(x), y.reshape(N, C, Ho, Wo)) and
                np.array_equal(layer.backward(g4), dx.reshape(shape)))
    t_layer = measure(lambda: (layer.forward(x), layer.backward(g4)), T)
    t_kern = measure(shipped, T)
    out.append({"name": "MaxPool2D 2x2 fwd+bwd: layer -> kernels on preallocated arrays", "shape": label,
                "current": t_layer, "candidate": t_kern, "same": same,
                "note": "the gap is the layer's allocation, checks and reshapes"})

    def fresh():
        yy, aa, dd = np.empty_like(y), np.empty_like(am), np.empty_like(xp)
        K.maxpool2d_2x2_forward(xp, yy, aa)
        K.maxpool2d_backward(g, aa, dd)

    out.append({"name": "MaxPool2D 2x2 fwd+bwd: kernels with new np.empty outputs each call -> preallocated",
                "shape": label, "current": measure(fresh, T), "candidate": t_kern, "same": True,
                "note": "the part of the layer overhead that is allocation (page faults on fresh memory)"})

    def select():
        max2x2_forward_select(xp, y2, am2)
        K.maxpool2d_backward(g, am2, dx2)

    am2 = np.empty_like(am)
    select()
    out.append({"name": "max pool 2x2 fwd: branchy scan -> branch-free selects + NaN fix-up (kernels, fwd+bwd)",
                "shape": label, "current": t_kern, "candidate": measure(select, T),
                "same": bool(np.array_equal(y, y2) and np.array_equal(am, am2) and np.array_equal(dx, dx2))})

    def fused():
        K.maxpool2d_2x2_forward(xp, y, am)
        max2x2_backward_fused(g, am, dx2)

    fused()
    out.append({"name": "max pool 2x2 bwd: zero+scatter -> fused 2x2 block write (kernels, fwd+bwd)",
                "shape": label, "current": t_kern, "candidate": measure(fused, T),
                "same": bool(np.array_equal(dx, dx2))})

    def recompute():
        max2x2_forward_noidx(xp, y2)
        max2x2_backward_recompute(g, xp, dx2)

    recompute()
    out.append({"name": "max pool 2x2: int64 argmax -> no argmax, backward re-finds the max (kernels, fwd+bwd)",
                "shape": label, "current": t_kern, "candidate": measure(recompute, T),
                "same": bool(np.array_equal(y, y2) and np.array_equal(dx, dx2)),
                "note": "backward then needs x (a reference, no copy); return_indices still needs argmax"})

    log("[experiments] fastmath")
    ya, yb = np.empty_like(y), np.empty_like(y)
    args = (2, 2, 2, 2, 0, 0, True, 0)
    K.avgpool2d_forward(xp, *args, ya)
    avgpool2d_forward_fastmath(xp, *args, yb)
    out.append({"name": "AvgPool2D 2x2 fwd kernel: fastmath=False -> True", "shape": label,
                "current": measure(lambda: K.avgpool2d_forward(xp, *args, ya), T),
                "candidate": measure(lambda: avgpool2d_forward_fastmath(xp, *args, yb), T),
                "same": bool(np.allclose(ya, yb, rtol=1e-6, atol=1e-6))})
    s1, s2 = np.empty_like(y), np.empty_like(y)
    K.lppool2d_forward(xp, 2.0, 2, 2, 2, 2, ya, s1)
    lppool2d_forward_fastmath(xp, 2.0, 2, 2, 2, 2, yb, s2)
    out.append({"name": "LPPool2D p=2 2x2 fwd kernel: fastmath=False -> True", "shape": label,
                "current": measure(lambda: K.lppool2d_forward(xp, 2.0, 2, 2, 2, 2, ya, s1), T),
                "candidate": measure(lambda: lppool2d_forward_fastmath(xp, 2.0, 2, 2, 2, 2, yb, s2), T),
                "same": bool(np.allclose(ya, yb, rtol=1e-5, atol=1e-6))})
    for e in out:
        for k in ("current", "candidate"):
            e[k] = e[k].to_dict()
        e["current/candidate"] = e["current"]["median"] / e["candidate"]["median"]
    return out
