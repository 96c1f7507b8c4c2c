"""Why Conv2D is im2col + BLAS: the measurement behind the choice.

    python -m benchmarks.conv_choice [--repeats 7]

Times forward + backward of the convolutions minicnn trains (the default
model's and the LeNet's), three ways, in one run:

* ``im2col+BLAS``: minicnn's Conv2D (Numba im2col/col2im + one GEMM per pass);
* ``numba direct``: straightforward parallel Numba loops written here for
  the comparison (prange over output planes; dW prange over filters);
* ``torch``: PyTorch CPU, when it can be imported.

The direct loops are correct (checked against Conv2D before timing) but
not part of the library: they lost.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from numba import njit, prange

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


def main(argv=None):
    p = argparse.ArgumentParser(description="im2col+BLAS vs direct Numba loops for Conv2D")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
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
               "im2col+BLAS ms": _median_ms(ours, args.repeats),
               "numba direct ms": _median_ms(direct, args.repeats)}
        if torch is not None:
            xt = torch.tensor(x, requires_grad=True)
            conv = torch.nn.Conv2d(C, F, 3, padding=1)
            dt = torch.tensor(dout)

            def tor():
                conv(xt).backward(dt)
            row["torch ms"] = _median_ms(tor, args.repeats)
        rows.append(row)
    import numba
    print(f"conv forward+backward, float32, median of {args.repeats}; numba threads "
          f"{numba.get_num_threads()} ({numba.threading_layer()})"
          + (f", torch threads {torch.get_num_threads()}" if torch is not None else ""))
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " | direct / im2col |")
    print("|" + "---|" * (len(cols) + 1))
    for r in rows:
        cells = [r["shape"]] + [f"{r[c]:.2f}" for c in cols[1:]]
        print("| " + " | ".join(cells) + f" | {r['numba direct ms'] / r['im2col+BLAS ms']:.1f}x |")


if __name__ == "__main__":
    main()
