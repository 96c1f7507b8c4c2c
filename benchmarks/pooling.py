"""Every pooling layer: forward, backward and forward+backward.

Configurations (float32, NCHW)::

    window layers   2x2 stride 2 on 64x32x28x28, 64x64x14x14, 128x16x24x24
                    overlapping 3x3 stride 2 (padding 1 where the layer has padding)
    adaptive        to 1x1 and to 4x4;  global avg/max;  SPP levels (1, 2, 4)

``--quick`` runs the 2x2 configurations on all three shapes and the others
on the first shape only.

Beside each minicnn figure: the copy roof (``np.copyto`` of input+output
bytes), the naive numpy reference (``references.py``) and PyTorch, NCHW and
channels_last (forward under ``no_grad``; backward = ``autograd.grad``
with a random upstream gradient, graph kept from one forward; forward+
backward = both, fresh graph each call).  Per phase, minicnn, numpy and
the two PyTorch layouts are sampled in alternation
(``harness.measure_phases``), so the ratios compare the same minutes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

import minicnn as mc
from benchmarks import references as R
from benchmarks.harness import log, measure_phases
from benchmarks.report import make_record

SHAPES = [(64, 32, 28, 28), (64, 64, 14, 14), (128, 16, 24, 24)]
TINY_SHAPES = [(2, 3, 8, 8)]

# torch_kind: "builtin"    a PyTorch op (or a composition of PyTorch pooling ops)
#             "emulation"  PyTorch has no such layer: the column is our own
#                          tensor-op emulation and no target is computed
#             None         no torch column


@dataclass
class PoolCase:
    layer: str
    config: str
    shape: tuple
    build: Callable                 # () -> minicnn layer
    mc_forward: Callable            # (layer, st) -> y
    np_forward: Callable            # (st) -> (y, cache)
    np_backward: Callable           # (cache, g) -> dx
    torch_forward: Callable | None  # (torch, F, x, st_t) -> y
    torch_kind: str | None = "builtin"
    setup: Callable = None          # (rng, shape) -> st (numpy arrays)
    torch_setup: Callable = None    # (torch, st) -> dict of tensors besides x
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def label(self):
        return f"{self.layer} {self.config}"


def _default_setup(rng, shape):
    return {"x": rng.standard_normal(shape).astype(np.float32)}


def _nonneg_setup(rng, shape):
    return {"x": np.abs(rng.standard_normal(shape)).astype(np.float32)}


# ------------------------------------------------------------ the cases
def _window_cases(shape, k, s, p):
    """Max, Avg, LP, Mixed, Stochastic, FractionalMax, MaxUnpool at one window."""
    N, C, H, W = shape
    ov = k != s
    cfg = f"{k}x{k}/{s}" + (f" p{p}" if p else "")
    cfg_np = f"{k}x{k}/{s}"            # layers without padding
    Ho = (H + 2 * p - k) // s + 1
    Wo = (W + 2 * p - k) // s + 1
    cases = []

    cases.append(PoolCase(
        "MaxPool2D", cfg, shape, lambda: mc.MaxPool2D(k, s, p),
        lambda L, st: L.forward(st["x"]),
        lambda st: ((r := R.maxpool_forward(st["x"], k, s, p))[0], (r[1], st["x"].shape)),
        lambda c, g: R.maxpool_backward(g, *c),
        lambda torch, F, x, t: F.max_pool2d(x, k, s, p)))

    cases.append(PoolCase(
        "AvgPool2D", cfg, shape, lambda: mc.AvgPool2D(k, s, p),
        lambda L, st: L.forward(st["x"]),
        lambda st: (R.avgpool_forward(st["x"], k, s, p), st["x"].shape),
        lambda c, g: R.avgpool_backward(g, c, k, s, p),
        lambda torch, F, x, t: F.avg_pool2d(x, k, s, p)))

    def lp_np(st):
        y, sums = R.lppool_forward(st["x"], 2.0, k, s)
        return y, (st["x"], y, sums)
    cases.append(PoolCase(
        "LPPool2D", cfg_np + " p=2", shape, lambda: mc.LPPool2D(2, k, s),
        lambda L, st: L.forward(st["x"]), lp_np,
        lambda c, g: R.lppool_backward(g, c[0], c[1], c[2], 2.0, k, s),
        lambda torch, F, x, t: F.lp_pool2d(x, 2.0, k, s)))

    cases.append(PoolCase(
        "MixedPool2D", cfg_np + " a=0.5", shape, lambda: mc.MixedPool2D(k, s, alpha=0.5),
        lambda L, st: L.forward(st["x"]),
        lambda st: ((r := R.mixedpool_forward(st["x"], k, s, 0.5))[0], (r[1], st["x"].shape)),
        lambda c, g: R.mixedpool_backward(g, c[0], c[1], k, s, 0.5),
        lambda torch, F, x, t: 0.5 * F.max_pool2d(x, k, s) + 0.5 * F.avg_pool2d(x, k, s),
        notes="torch: 0.5*max_pool2d + 0.5*avg_pool2d"))

    def sto_np(st):
        x = st["x"]
        u = st["rng"].random((x.shape[0], x.shape[1]) + R.windows(x[:1, :1], k, s).shape[2:4])
        y, idx = R.stochastic_forward(x, u, k, s)
        return y, (idx, x.shape)

    def sto_setup(rng, shp):
        st = _nonneg_setup(rng, shp)
        st["rng"] = np.random.default_rng(1)
        return st

    def sto_torch_setup(torch, st):
        x = st["x"]
        Hs, Ws = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
        u = np.random.default_rng(2).random((x.shape[0], x.shape[1], Hs, Ws))
        return {"u": torch.from_numpy(u)}

    def sto_torch(torch, F, x, t):
        win = x.unfold(2, k, s).unfold(3, k, s)
        flat = win.reshape(*win.shape[:4], k * k)
        cs = flat.detach().double().cumsum(-1)
        hit = ((t["u"] * cs[..., -1])[..., None] < cs).to(torch.uint8)
        return flat.gather(-1, hit.argmax(-1, keepdim=True))[..., 0]

    cases.append(PoolCase(
        "StochasticPool2D", cfg_np + " train", shape, lambda: mc.StochasticPool2D(k, s, seed=0),
        lambda L, st: L.forward(st["x"]), sto_np,
        lambda c, g: R.maxpool_backward(g, *c), sto_torch, torch_kind="emulation",
        setup=sto_setup, torch_setup=sto_torch_setup,
        notes="input |x|; torch has no stochastic pooling: unfold+cumsum+gather emulation"))

    # fractional: same output size as the max pool of this window
    fo = (Ho, Wo)

    def frac_setup(rng, shp):
        st = _default_setup(rng, shp)
        st["samples"] = np.random.default_rng(3).random((shp[0], shp[1], 2), dtype=np.float32)
        return st

    def frac_np(st):
        y, idx = R.fractional_forward(st["x"], st["samples"], k, fo)
        return y, (idx, st["x"].shape)

    cases.append(PoolCase(
        "FractionalMaxPool2D", f"{k}x{k} -> {fo[0]}x{fo[1]}", shape,
        lambda: mc.FractionalMaxPool2D(k, output_size=fo, seed=0),
        lambda L, st: L.forward(st["x"]), frac_np, lambda c, g: R.maxpool_backward(g, *c),
        lambda torch, F, x, t: F.fractional_max_pool2d(x, k, output_size=fo,
                                                       _random_samples=t["samples"]),
        setup=frac_setup, torch_setup=lambda torch, st: {"samples": torch.from_numpy(st["samples"])},
        notes="torch: fixed _random_samples (minicnn draws new ones per call)"))

    def unpool_setup(rng, shp):
        x = rng.standard_normal(shp).astype(np.float32)
        y, idx = mc.MaxPool2D(k, s, p, return_indices=True).forward(x)
        return {"x": np.ascontiguousarray(y), "indices": idx, "out_hw": (H, W)}

    cases.append(PoolCase(
        "MaxUnpool2D", cfg + f" -> {H}x{W}", shape, lambda: mc.MaxUnpool2D(k, s, p),
        lambda L, st: L.forward(st["x"], st["indices"], st["out_hw"]),
        lambda st: (R.maxunpool_forward(st["x"], st["indices"], st["out_hw"]), st["indices"]),
        lambda c, g: R.maxunpool_backward(g, c),
        lambda torch, F, x, t: F.max_unpool2d(x, t["indices"], k, s, p, output_size=(H, W)),
        setup=unpool_setup, torch_setup=lambda torch, st: {"indices": torch.from_numpy(st["indices"])},
        notes="input: the max-pooled map and its indices; the shape column is the unpooled size"))
    for c in cases:
        c.extra["overlapping"] = ov
    return cases


def _adaptive_cases(shape, sizes=(1, 4), spp=True, global_=True):
    cases = []
    for o in sizes:
        cases.append(PoolCase(
            "AdaptiveAvgPool2D", f"-> {o}x{o}", shape, lambda o=o: mc.AdaptiveAvgPool2D(o),
            lambda L, st: L.forward(st["x"]),
            lambda st, o=o: (R.adaptive_avg_forward(st["x"], o, o), st["x"].shape),
            lambda c, g: R.adaptive_avg_backward(g, c),
            lambda torch, F, x, t, o=o: F.adaptive_avg_pool2d(x, o)))
        cases.append(PoolCase(
            "AdaptiveMaxPool2D", f"-> {o}x{o}", shape, lambda o=o: mc.AdaptiveMaxPool2D(o),
            lambda L, st: L.forward(st["x"]),
            lambda st, o=o: ((r := R.adaptive_max_forward(st["x"], o, o))[0], (r[1], st["x"].shape)),
            lambda c, g: R.adaptive_max_backward(g, *c),
            lambda torch, F, x, t, o=o: F.adaptive_max_pool2d(x, o)))
    if global_:
        cases.append(PoolCase(
            "GlobalAvgPool2D", "-> (N, C)", shape, mc.GlobalAvgPool2D,
            lambda L, st: L.forward(st["x"]),
            lambda st: (R.global_avg_forward(st["x"]), st["x"].shape),
            lambda c, g: R.global_avg_backward(g, c),
            lambda torch, F, x, t: F.adaptive_avg_pool2d(x, 1).flatten(1)))
        cases.append(PoolCase(
            "GlobalMaxPool2D", "-> (N, C)", shape, mc.GlobalMaxPool2D,
            lambda L, st: L.forward(st["x"]),
            lambda st: ((r := R.global_max_forward(st["x"]))[0], (r[1], st["x"].shape)),
            lambda c, g: R.global_max_backward(g, *c),
            lambda torch, F, x, t: F.adaptive_max_pool2d(x, 1).flatten(1)))
    if spp:
        lv = (1, 2, 4)
        cases.append(PoolCase(
            "SpatialPyramidPool2D", "max (1, 2, 4)", shape, lambda: mc.SpatialPyramidPool2D(lv, "max"),
            lambda L, st: L.forward(st["x"]),
            lambda st: ((r := R.spp_forward(st["x"], lv))[0], (r[1], st["x"].shape)),
            lambda c, g: R.spp_backward(g, c[0], c[1], lv),
            lambda torch, F, x, t: torch.cat([F.adaptive_max_pool2d(x, v).flatten(1) for v in lv], 1),
            notes="torch: cat of adaptive_max_pool2d(x, l).flatten(1)"))
    return cases


def cases(quick=False, tiny=False):
    shapes = TINY_SHAPES if tiny else SHAPES
    out = []
    for i, shape in enumerate(shapes):
        out += _window_cases(shape, 2, 2, 0)
        if not quick or i == 0:
            out += _window_cases(shape, 3, 2, 1)
            out += _adaptive_cases(shape)
    return out


# ------------------------------------------------------------- measuring
def _torch_calls(case, st, y_shape, g, ctx, channels_last):
    """PyTorch's (forward, backward, forward+backward) of the case, as
    functions of no arguments (backward reuses one forward's graph)."""
    torch = ctx.torch
    F = torch.nn.functional
    cl = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.from_numpy(st["x"].copy())
    if channels_last:
        x = x.contiguous(memory_format=cl)
    x.requires_grad_(True)
    extra = case.torch_setup(torch, st) if case.torch_setup else {}
    if "samples" in extra:
        extra["samples"] = extra["samples"].to(x.dtype)
    tg = torch.from_numpy(g)
    if channels_last and tg.dim() == 4:
        tg = tg.contiguous(memory_format=cl)
    f = case.torch_forward

    def fwd():
        with torch.no_grad():
            return f(torch, F, x, extra)

    y = f(torch, F, x, extra)
    if tuple(y.shape) != tuple(y_shape):
        raise AssertionError(f"{case.label}: torch output {tuple(y.shape)} != minicnn {y_shape}")
    return (fwd, lambda: torch.autograd.grad(y, x, tg, retain_graph=True),
            lambda: torch.autograd.grad(f(torch, F, x, extra), x, tg))


def run_case(case: PoolCase, ctx) -> list[dict]:
    rng = np.random.default_rng(0)
    st = (case.setup or _default_setup)(rng, case.shape)
    layer = case.build()
    y = case.mc_forward(layer, st)
    g = rng.standard_normal(y.shape).astype(np.float32)
    nb_f = st["x"].nbytes + y.nbytes
    nb_b = g.nbytes + st["x"].nbytes          # dout in, dx (the input's shape) out

    _, cache = case.np_forward(st)
    calls = {   # per phase (fwd, bwd, fwd+bwd): the functions compared, timed in alternation
        "minicnn": (lambda: case.mc_forward(layer, st), lambda: layer.backward(g),
                    lambda: (case.mc_forward(layer, st), layer.backward(g))),
        "numpy": (lambda: case.np_forward(st), lambda: case.np_backward(cache, g),
                  lambda: case.np_backward(case.np_forward(st)[1], g)),
    }
    if ctx.torch is not None and case.torch_forward is not None:
        calls["torch"] = _torch_calls(case, st, y.shape, g, ctx, channels_last=False)
        calls["torch_cl"] = _torch_calls(case, st, y.shape, g, ctx, channels_last=True)
    times = measure_phases(calls, ctx.timing, ctx.np_timing,
                           before=lambda: case.mc_forward(layer, st))     # backward needs a forward

    shape = "x".join(map(str, case.shape))
    common = dict(section="pooling", name=case.layer, config=case.config, shape=shape,
                  notes=case.notes, torch_kind=case.torch_kind if ctx.torch is not None else None)
    recs = []
    for t, phase, nb in zip(times, ("fwd", "bwd", "fwd+bwd"), (nb_f, nb_b, nb_f + nb_b)):
        recs.append(make_record(phase=phase, times={
            "minicnn": t["minicnn"], "copy": ctx.copy(nb), "numpy": t["numpy"],
            "torch": t.get("torch"), "torch_cl": t.get("torch_cl")}, **common))
    return recs


def run(ctx) -> list[dict]:
    out = []
    todo = cases(quick=ctx.quick, tiny=ctx.tiny)
    for i, case in enumerate(todo, 1):
        log(f"[pooling {i}/{len(todo)}] {case.label} {'x'.join(map(str, case.shape))}")
        out += run_case(case, ctx)
    return out
