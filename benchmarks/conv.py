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
from benchmarks.harness import log, measure_phases
from benchmarks.report import make_record

LAYERS = [("lenet.conv1", 64, 1, 8, 28), ("lenet.conv2", 64, 8, 16, 14),
          ("default.conv1", 64, 1, 32, 28), ("default.conv2", 64, 32, 64, 14)]
TINY = [("tiny.conv", 2, 3, 4, 8)]


def _torch_calls(ctx, x, layer, g, channels_last):
    """PyTorch's (forward, backward, forward+backward) of the layer, as
    functions of no arguments (backward reuses one forward's graph)."""
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
    return (fwd, lambda: torch.autograd.grad(y, (tx, tW, tb), tg, retain_graph=True),
            lambda: torch.autograd.grad(f(), (tx, tW, tb), tg))


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

        W, b = layer.params["W"], layer.params["b"]
        _, cache = R.conv_forward(x, W, b, 1, 1)
        calls = {   # per phase (fwd, bwd, fwd+bwd): the functions compared, timed in alternation
            "minicnn": (lambda: layer.forward(x), lambda: layer.backward(g),
                        lambda: (layer.forward(x), layer.backward(g))),
            "numpy": (lambda: R.conv_forward(x, W, b, 1, 1), lambda: R.conv_backward(g, cache),
                      lambda: R.conv_backward(g, R.conv_forward(x, W, b, 1, 1)[1])),
        }
        if ctx.torch is not None:
            calls["torch"] = _torch_calls(ctx, x, layer, g, False)
            calls["torch_cl"] = _torch_calls(ctx, x, layer, g, True)
        times = measure_phases(calls, ctx.timing, ctx.np_timing,
                               before=lambda: layer.forward(x))    # the backward needs a forward
        shape = f"{N}x{C}x{H}x{H} -> {F_}"
        for t, phase, b_ in zip(times, ("fwd", "bwd", "fwd+bwd"), (nb, nb, 2 * nb)):
            recs.append(make_record("conv", name, phase, {"minicnn": t["minicnn"], "numpy": t["numpy"],
                                                          "copy": ctx.copy(b_), "torch": t.get("torch"),
                                                          "torch_cl": t.get("torch_cl")},
                                    config="3x3 p1", shape=shape))
    return recs
