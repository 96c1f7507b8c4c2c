"""Conv2D forward and backward on the layers of ``lenet`` and ``default``.

All 3x3, stride 1, padding 1, batch 64, float32::

    lenet.conv1    64x1x28x28  -> 8       lenet.conv2    64x8x14x14  -> 16
    default.conv1  64x1x28x28  -> 32      default.conv2  64x32x14x14 -> 64

Backward computes dx, dW and db everywhere (PyTorch: ``autograd.grad`` with
respect to x, W and b).  Copy roof: x+y bytes (fwd), dy+dx (bwd).
"""
from __future__ import annotations

import numpy as np

import minicnn as mc
from benchmarks import references as R
from benchmarks.harness import log, measure
from benchmarks.report import make_record

LAYERS = [("lenet.conv1", 64, 1, 8, 28), ("lenet.conv2", 64, 8, 16, 14),
          ("default.conv1", 64, 1, 32, 28), ("default.conv2", 64, 32, 64, 14)]
TINY = [("tiny.conv", 2, 3, 4, 8)]


def _torch_times(ctx, x, layer, g, channels_last):
    torch = ctx.torch
    F = torch.nn.functional
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    tx = torch.from_numpy(x.copy()).contiguous(memory_format=fmt).requires_grad_(True)
    tW = torch.from_numpy(layer.params["W"].copy()).contiguous(memory_format=fmt).requires_grad_(True)
    tb = torch.from_numpy(layer.params["b"].copy()).requires_grad_(True)
    tg = torch.from_numpy(g).contiguous(memory_format=fmt)
    f = lambda: F.conv2d(tx, tW, tb, padding=1)

    def fwd():
        with torch.no_grad():
            return f()

    y = f()
    return (measure(fwd, ctx.timing),
            measure(lambda: torch.autograd.grad(y, (tx, tW, tb), tg, retain_graph=True), ctx.timing),
            measure(lambda: torch.autograd.grad(f(), (tx, tW, tb), tg), ctx.timing))


def run(ctx) -> list[dict]:
    recs = []
    for name, N, C, F_, H in (TINY if ctx.tiny else LAYERS):
        log(f"[conv] {name}")
        rng = np.random.default_rng(0)
        mc.manual_seed(0)
        layer = mc.Conv2D(C, F_, 3, padding=1)
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        y = layer.forward(x)
        g = rng.standard_normal(y.shape).astype(np.float32)
        nb = x.nbytes + y.nbytes

        mc_f = measure(lambda: layer.forward(x), ctx.timing)
        layer.forward(x)
        mc_b = measure(lambda: layer.backward(g), ctx.timing)
        mc_fb = measure(lambda: (layer.forward(x), layer.backward(g)), ctx.timing)

        W, b = layer.params["W"], layer.params["b"]
        _, cache = R.conv_forward(x, W, b, 1, 1)
        np_f = measure(lambda: R.conv_forward(x, W, b, 1, 1), ctx.np_timing)
        np_b = measure(lambda: R.conv_backward(g, cache), ctx.np_timing)
        np_fb = measure(lambda: R.conv_backward(g, R.conv_forward(x, W, b, 1, 1)[1]), ctx.np_timing)

        tt = tc = (None, None, None)
        if ctx.torch is not None:
            tt = _torch_times(ctx, x, layer, g, False)
            tc = _torch_times(ctx, x, layer, g, True)
        shape = f"{N}x{C}x{H}x{H} -> {F_}"
        for k, (phase, m, n, b_) in enumerate((("fwd", mc_f, np_f, nb), ("bwd", mc_b, np_b, nb),
                                               ("fwd+bwd", mc_fb, np_fb, 2 * nb))):
            recs.append(make_record("conv", name, phase, {"minicnn": m, "numpy": n, "copy": ctx.copy(b_),
                                                          "torch": tt[k], "torch_cl": tc[k]},
                                    config="3x3 p1", shape=shape))
    return recs
