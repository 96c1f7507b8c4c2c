"""Which Conv2D algorithm when: the measurements behind the rule.

    python -m benchmarks.conv_choice [--repeats 7]

Float32, batch 64, 3x3 padding 1, in one run:

1. minicnn's two algorithms, on the work of a first layer (forward, then
   ``dW`` and ``db`` only: ``backward_params``), timed in alternation:
   ``im2col+BLAS`` (``Conv2D.direct_max_taps = 0``) and ``direct``
   (:mod:`minicnn.kernels.conv_direct`), for 1 to 8 input channels.  The
   rule ``C_in*9 <= Conv2D.direct_max_taps`` comes from this table.
2. Forward + full backward (with ``dx``) of the four layers minicnn trains,
   shipped algorithm against straightforward parallel Numba loops written
   here for the comparison (prange over output planes; dW prange over
   filters) and PyTorch CPU when it can be imported.  The loops are correct
   (checked against Conv2D before timing) but not part of the library:
   they lost by 8-23x.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit, prange

from benchmarks.harness import Timing, measure_interleaved
from minicnn.layers.conv import Conv2D


@njit(parallel=True, cache=True)
def direct_forward(x, w, b, pad, out):
    """out[n, f, oh, ow] = b[f] + sum_{c,i,j} w[f,c,i,j] x[n, c, oh+i-pad, ow+j-pad]; stride 1."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho, Wo = out.shape[2], out.shape[3]
    for plane in prange(N * F):
        n, f = plane // F, plane % F
        for oh in range(Ho):
            for ow in range(Wo):
                acc = b[f]
                for c in range(C):
                    for i in range(kh):
                        h = oh + i - pad
                        if 0 <= h < H:
                            for j in range(kw):
                                ww = ow + j - pad
                                if 0 <= ww < W:
                                    acc += w[f, c, i, j] * x[n, c, h, ww]
                out[n, f, oh, ow] = acc


@njit(parallel=True, cache=True)
def direct_backward(x, w, dout, pad, dx, dw):
    """dw[f,c,i,j] = sum_{n,oh,ow} dout[n,f,oh,ow] x[n,c,oh+i-pad,ow+j-pad];
    dx[n,c,h,w] = sum_{f,i,j} dout[n,f,h-i+pad,w-j+pad] w[f,c,i,j]."""
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    Ho, Wo = dout.shape[2], dout.shape[3]
    for f in prange(F):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    acc = 0.0
                    for n in range(N):
                        for oh in range(Ho):
                            h = oh + i - pad
                            if 0 <= h < H:
                                for ow in range(Wo):
                                    ww = ow + j - pad
                                    if 0 <= ww < W:
                                        acc += dout[n, f, oh, ow] * x[n, c, h, ww]
                    dw[f, c, i, j] = acc
    for plane in prange(N * C):
        n, c = plane // C, plane % C
        for h in range(H):
            for ww in range(W):
                acc = 0.0
                for f in range(F):
                    for i in range(kh):
                        oh = h - i + pad
                        if 0 <= oh < Ho:
                            for j in range(kw):
                                ow = ww - j + pad
                                if 0 <= ow < Wo:
                                    acc += dout[n, f, oh, ow] * w[f, c, i, j]
                dx[n, c, h, ww] = acc


def _median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def first_layer_table(rng, repeats):
    """Forward + backward_params, im2col+BLAS against direct."""
    print("\nfirst-layer work (forward + dW, db), float32, batch 64, 3x3 p1; "
          f"median of {repeats} alternating rounds (harness.measure_interleaved)")
    print("| shape | C_in*9 | im2col+BLAS ms | direct ms | direct / im2col |")
    print("|---|---|---|---|---|")
    for (C, F, H) in [(1, 8, 28), (1, 32, 28), (2, 16, 28), (3, 16, 32), (3, 64, 32), (4, 16, 28),
                      (4, 16, 14), (8, 16, 14)]:
        x = rng.standard_normal((64, C, H, H)).astype(np.float32)
        dout = rng.standard_normal((64, F, H, H)).astype(np.float32)
        layers = {}
        for name, taps in (("im2col", 0), ("direct", 10**6)):
            layers[name] = layer = Conv2D(C, F, 3, padding=1)
            layer.direct_max_taps = taps
        layers["direct"].params["W"][...] = layers["im2col"].params["W"]
        ya, yb = layers["im2col"].forward(x), layers["direct"].forward(x)
        assert layers["direct"]._direct and not layers["im2col"]._direct
        assert np.allclose(ya, yb, rtol=1e-4, atol=1e-4)

        def work(layer):
            return lambda: (layer.forward(x), layer.backward_params(dout))
        fns = {k: work(v) for k, v in layers.items()}
        stats = measure_interleaved(fns, {k: Timing(repeats=repeats) for k in fns})
        ms = {k: 1e3 * st.median for k, st in stats.items()}
        print(f"| N64 {C}->{F} {H}x{H} | {9 * C} | {ms['im2col']:.2f} | {ms['direct']:.2f} | "
              f"{ms['direct'] / ms['im2col']:.2f}x |")


def main(argv=None):
    p = argparse.ArgumentParser(description="Conv2D algorithms: im2col+BLAS, direct, naive loops")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    first_layer_table(rng, args.repeats)
    rows = []
    for (N, C, F, H) in [(64, 1, 32, 28), (64, 32, 64, 14), (64, 1, 8, 28), (64, 8, 16, 14)]:
        layer = Conv2D(C, F, 3, padding=1)
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        dout = rng.standard_normal((N, F, H, H)).astype(np.float32)
        w, b = layer.params["W"], layer.params["b"]
        out, dx, dw = np.empty_like(dout), np.empty_like(x), np.empty_like(w)
        # correctness first: the competitor must compute the same thing
        direct_forward(x, w, b, 1, out)
        direct_backward(x, w, dout, 1, dx, dw)
        y = layer.forward(x)
        dx_ref = layer.backward(dout)
        assert np.allclose(out, y, atol=1e-3) and np.allclose(dx, dx_ref, atol=1e-3)
        assert np.allclose(dw, layer.grads["W"], rtol=1e-3, atol=1e-2)

        def ours():
            layer.forward(x)
            layer.backward(dout)

        def direct():
            direct_forward(x, w, b, 1, out)
            direct_backward(x, w, dout, 1, dx, dw)
        row = {"shape": f"N{N} {C}->{F} {H}x{H} k3 p1",
               "minicnn ms": _median_ms(ours, args.repeats),
               "naive loops ms": _median_ms(direct, args.repeats)}
        if torch is not None:
            xt = torch.tensor(x, requires_grad=True)
            conv = torch.nn.Conv2d(C, F, 3, padding=1)
            dt = torch.tensor(dout)

            def tor():
                conv(xt).backward(dt)
            row["torch ms"] = _median_ms(tor, args.repeats)
        rows.append(row)
    import numba
    print(f"\nconv forward+backward (with dx), float32, median of {args.repeats}; numba threads "
          f"{numba.get_num_threads()} ({numba.threading_layer()})"
          + (f", torch threads {torch.get_num_threads()}" if torch is not None else ""))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " | loops / minicnn |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        cells = [r["shape"]] + [f"{r[c]:.2f}" for c in cols[1:]]
        print("| " + " | ".join(cells) + f" | {r['naive loops ms'] / r['minicnn ms']:.1f}x |")


if __name__ == "__main__":
    main()
