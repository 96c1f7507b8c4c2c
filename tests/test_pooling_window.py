"""Window pooling (max, unpool, avg, LP, mixed): semantics as tests.

Naive loop references are written here, independent of the kernels and of
geometry.py, straight from the definitions (PyTorch's documented rules).
Hypothesis checks layers against them, forward and backward; fixed tests
pin the edge cases; the parallel kernels are checked bit for bit against
their serial compilation.
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import njit

from minicnn.kernels import pooling as K
from minicnn.layers.pooling import AvgPool2D, LPPool2D, MaxPool2D, MaxUnpool2D, MixedPool2D

SETTINGS = settings(deadline=None, max_examples=50,
                    suppress_health_check=[HealthCheck.too_slow])


# ============================================================ naive references
def n_windows(L, k, s, p, d=1, ceil=False):
    """How many windows fit along an axis of length L, counted one by one.

    Window n starts at n*s in padded coordinates [0, L + 2p) and spans
    eff = d*(k-1) + 1 cells.  Floor mode: the window must fit.  Ceil mode:
    a window is kept while the one before it had not reached the end of the
    padded input, unless it would start in the right padding.
    """
    eff = d * (k - 1) + 1
    count = 0
    for n in range(L + 2 * p + 1):
        start = n * s
        if ceil:
            keep = (n - 1) * s + eff < L + 2 * p and start < L + p
        else:
            keep = start + eff <= L + 2 * p
        count += keep
    return count


def taps(o, k, s, p, d):
    """Input coordinates of the k taps of window o (may be outside the input)."""
    return [o * s - p + i * d for i in range(k)]


def naive_maxpool(x, k, s, p=(0, 0), d=(1, 1), ceil=False):
    """(y, flat indices); padding never wins; first max wins; NaN wins (last NaN)."""
    N, C, H, W = x.shape
    Ho = n_windows(H, k[0], s[0], p[0], d[0], ceil)
    Wo = n_windows(W, k[1], s[1], p[1], d[1], ceil)
    y = np.empty((N, C, Ho, Wo))
    idx = np.empty((N, C, Ho, Wo), np.int64)
    for n in range(N):
        for c in range(C):
            for oh in range(Ho):
                for ow in range(Wo):
                    best, arg = -np.inf, -1
                    for h in taps(oh, k[0], s[0], p[0], d[0]):
                        for w in taps(ow, k[1], s[1], p[1], d[1]):
                            if not (0 <= h < H and 0 <= w < W):
                                continue
                            v = x[n, c, h, w]
                            if arg < 0 or v > best or math.isnan(v):
                                best, arg = v, h * W + w
                    y[n, c, oh, ow], idx[n, c, oh, ow] = best, arg
    return y, idx


def naive_maxpool_backward(dout, idx, x_shape):
    dx = np.zeros(x_shape)
    N, C, H, W = x_shape
    for n, c, oh, ow in np.ndindex(*dout.shape):
        a = idx[n, c, oh, ow]
        if a >= 0:
            dx[n, c, a // W, a % W] += dout[n, c, oh, ow]
    return dx


def _avg_windows(x_shape, k, s, p, ceil, count_include_pad, divisor_override):
    """Yield (oh, ow, cells inside the input, divisor) per the PyTorch rule:
    count_include_pad counts the taps inside the padded input [-p, L+p)."""
    N, C, H, W = x_shape
    Ho = n_windows(H, k[0], s[0], p[0], 1, ceil)
    Wo = n_windows(W, k[1], s[1], p[1], 1, ceil)
    for oh in range(Ho):
        for ow in range(Wo):
            rows, cols = taps(oh, k[0], s[0], p[0], 1), taps(ow, k[1], s[1], p[1], 1)
            cells = [(h, w) for h in rows for w in cols if 0 <= h < H and 0 <= w < W]
            padded = sum(1 for h in rows for w in cols
                         if -p[0] <= h < H + p[0] and -p[1] <= w < W + p[1])
            if divisor_override:
                div = divisor_override
            else:
                div = padded if count_include_pad else len(cells)
            yield oh, ow, cells, div


def naive_avgpool(x, k, s, p=(0, 0), ceil=False, count_include_pad=True, divisor_override=None):
    N, C, H, W = x.shape
    wins = list(_avg_windows(x.shape, k, s, p, ceil, count_include_pad, divisor_override))
    Ho, Wo = wins[-1][0] + 1, wins[-1][1] + 1
    y = np.empty((N, C, Ho, Wo))
    for n in range(N):
        for c in range(C):
            for oh, ow, cells, div in wins:
                y[n, c, oh, ow] = sum(x[n, c, h, w] for h, w in cells) / div
    return y


def naive_avgpool_backward(dout, x_shape, k, s, p=(0, 0), ceil=False, count_include_pad=True,
                           divisor_override=None):
    dx = np.zeros(x_shape)
    for oh, ow, cells, div in _avg_windows(x_shape, k, s, p, ceil, count_include_pad,
                                           divisor_override):
        for h, w in cells:
            dx[:, :, h, w] += dout[:, :, oh, ow] / div
    return dx


def naive_lppool(x, norm, k, s, ceil=False):
    """(y, dx_fn): y = (kh*kw/n * sum x^p)^(1/p) over the n cells of each window."""
    N, C, H, W = x.shape
    wins = list(_avg_windows(x.shape, k, s, (0, 0), ceil, False, None))
    Ho, Wo = wins[-1][0] + 1, wins[-1][1] + 1
    y = np.empty((N, C, Ho, Wo))
    S = np.empty_like(y)
    with np.errstate(invalid="ignore", divide="ignore"):
        for n in range(N):
            for c in range(C):
                for oh, ow, cells, ncell in wins:
                    scale = k[0] * k[1] / ncell
                    S[n, c, oh, ow] = scale * sum(np.power(x[n, c, h, w], norm) for h, w in cells)
                    y[n, c, oh, ow] = np.power(S[n, c, oh, ow], 1.0 / norm)

    def backward(dout):
        dx = np.zeros(x.shape)
        with np.errstate(invalid="ignore", divide="ignore"):
            for n in range(N):
                for c in range(C):
                    for oh, ow, cells, ncell in wins:
                        if S[n, c, oh, ow] == 0:
                            continue
                        scale = k[0] * k[1] / ncell
                        for h, w in cells:
                            dx[n, c, h, w] += (dout[n, c, oh, ow] * scale
                                               * np.power(x[n, c, h, w], norm - 1)
                                               * y[n, c, oh, ow] / S[n, c, oh, ow])
        return dx
    return y, backward


def naive_unpool(x, idx, out_hw):
    N, C, H, W = x.shape
    y = np.zeros((N, C) + tuple(out_hw))
    for n, c, i, j in np.ndindex(N, C, H, W):
        a = idx[n, c, i, j]
        y[n, c, a // out_hw[1], a % out_hw[1]] = x[n, c, i, j]
    return y


# ============================================================ strategies
@st.composite
def window_configs(draw, dilation=True, padding=True, ceil=True, max_hw=9):
    """Shapes and window hyper-parameters, PyTorch-valid except possibly an
    input too small for the window (the layer must then raise)."""
    cfg = {"shape": (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
                     draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw)))}
    cfg["k"] = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    cfg["s"] = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    cfg["d"] = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilation else (1, 1)
    effs = [d * (k - 1) + 1 for k, d in zip(cfg["k"], cfg["d"])]
    cfg["p"] = tuple(draw(st.integers(0, e // 2)) for e in effs) if padding else (0, 0)
    cfg["ceil"] = draw(st.booleans()) if ceil else False
    cfg["seed"] = draw(st.integers(0, 2**32 - 1))
    return cfg


def fits(cfg):
    H, W = cfg["shape"][2:]
    return (n_windows(H, cfg["k"][0], cfg["s"][0], cfg["p"][0], cfg["d"][0], cfg["ceil"]) >= 1
            and n_windows(W, cfg["k"][1], cfg["s"][1], cfg["p"][1], cfg["d"][1], cfg["ceil"]) >= 1)


def tie_heavy(shape, rng, special=True):
    """Small integers (many ties), sometimes with NaN and -inf sprinkled in."""
    x = rng.integers(-3, 4, size=shape).astype(np.float64)
    if special and rng.random() < 0.5:
        x[rng.random(shape) < 0.08] = np.nan
        x[rng.random(shape) < 0.08] = -np.inf
    return x


# ============================================================ property tests
@SETTINGS
@given(window_configs())
def test_maxpool_matches_naive(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = tie_heavy(cfg["shape"], rng)
    layer = MaxPool2D(cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"], return_indices=True)
    if not fits(cfg):
        with pytest.raises(ValueError, match="too small"):
            layer(x)
        return
    y, idx = layer(x)
    y_ref, idx_ref = naive_maxpool(x, cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"])
    np.testing.assert_array_equal(y, y_ref)          # NaN == NaN here
    np.testing.assert_array_equal(idx, idx_ref)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), naive_maxpool_backward(dout, idx_ref, x.shape),
                               rtol=1e-12, atol=0)


@SETTINGS
@given(window_configs(dilation=False), st.booleans(), st.sampled_from([None, 1, 3, 7, -4]))
def test_avgpool_matches_naive(cfg, count_include_pad, divisor_override):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"])
    layer = AvgPool2D(cfg["k"], cfg["s"], cfg["p"], cfg["ceil"], count_include_pad, divisor_override)
    if not fits(cfg):
        with pytest.raises(ValueError, match="too small"):
            layer(x)
        return
    args = (cfg["k"], cfg["s"], cfg["p"], cfg["ceil"], count_include_pad, divisor_override)
    y = layer(x)
    np.testing.assert_allclose(y, naive_avgpool(x, *args), rtol=1e-12, atol=1e-15)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), naive_avgpool_backward(dout, x.shape, *args),
                               rtol=1e-12, atol=1e-15)


@SETTINGS
@given(window_configs(dilation=False, padding=False), st.sampled_from([1.0, 1.5, 2.0, 3.0, 4.0]),
       st.booleans())
def test_lppool_matches_naive(cfg, norm, signed):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"])
    if not signed:
        x = np.abs(x) + 0.1
    layer = LPPool2D(norm, cfg["k"], cfg["s"], cfg["ceil"])
    if not fits(cfg):
        with pytest.raises(ValueError, match="too small"):
            layer(x)
        return
    y = layer(x)
    y_ref, backward_ref = naive_lppool(x, norm, cfg["k"], cfg["s"], cfg["ceil"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-15)   # NaN where y_ref is NaN
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), backward_ref(dout), rtol=1e-10, atol=1e-13)


@SETTINGS
@given(window_configs(dilation=False, padding=False, ceil=False), st.floats(0, 1),
       st.booleans())
def test_mixedpool_matches_naive(cfg, alpha, learnable):
    rng = np.random.default_rng(cfg["seed"])
    x = tie_heavy(cfg["shape"], rng, special=False)
    layer = MixedPool2D(cfg["k"], cfg["s"], alpha, learnable).astype(np.float64)
    if not fits(cfg):
        with pytest.raises(ValueError, match="too small"):
            layer(x)
        return
    if learnable:                       # the parameter is stored in float32 first
        alpha = float(np.float32(alpha))
        assert layer.params["alpha"][0] == alpha
    mx, idx = naive_maxpool(x, cfg["k"], cfg["s"])
    av = naive_avgpool(x, cfg["k"], cfg["s"])
    y = layer(x)
    np.testing.assert_allclose(y, alpha * mx + (1 - alpha) * av, rtol=1e-12, atol=1e-14)
    dout = rng.standard_normal(y.shape)
    dx_ref = (alpha * naive_maxpool_backward(dout, idx, x.shape)
              + (1 - alpha) * naive_avgpool_backward(dout, x.shape, cfg["k"], cfg["s"]))
    np.testing.assert_allclose(layer.backward(dout), dx_ref, rtol=1e-12, atol=1e-14)
    if learnable:
        np.testing.assert_allclose(layer.grads["alpha"], [np.sum(dout * (mx - av))], rtol=1e-12)
    else:
        assert layer.params == {} and layer.grads == {}


@SETTINGS
@given(window_configs(dilation=False, ceil=False), st.integers(-1, 1), st.integers(-1, 1))
def test_maxunpool_matches_naive(cfg, extra_h, extra_w):
    rng = np.random.default_rng(cfg["seed"])
    N, C, H, W = cfg["shape"]
    k, s, p = cfg["k"], cfg["s"], cfg["p"]
    default = [(L - 1) * st_ - 2 * pd + kk for L, kk, st_, pd in zip((H, W), k, s, p)]
    out_hw = (default[0] + extra_h * (s[0] - 1), default[1] + extra_w * (s[1] - 1))
    layer = MaxUnpool2D(k, s, p)
    x = rng.standard_normal(cfg["shape"])
    if min(out_hw) < 1:
        with pytest.raises(ValueError, match="output size"):
            layer(x, np.zeros(x.shape, np.int64), output_size=out_hw)
        return
    idx = rng.integers(0, out_hw[0] * out_hw[1], size=x.shape)      # duplicates allowed
    y = layer(x, idx, output_size=out_hw)
    np.testing.assert_array_equal(y, naive_unpool(x, idx, out_hw))
    dout = rng.standard_normal(y.shape)
    dx_ref = np.take_along_axis(dout.reshape(N, C, -1), idx.reshape(N, C, -1), axis=2)
    np.testing.assert_array_equal(layer.backward(dout), dx_ref.reshape(x.shape))


# ============================================================ kernels
def _kernel_cases(rng):
    """(kernel name, inputs, outputs) for every parallel kernel: float32,
    overlapping 3x3 stride-2 windows, ties and a NaN."""
    x = rng.standard_normal((6, 17, 13)).astype(np.float32)
    x[0, 3, 4] = np.nan
    x[1, :4, :4] = 1.0                                           # ties
    y, am = np.empty((6, 9, 7), np.float32), np.empty((6, 9, 7), np.int64)
    K.maxpool2d_forward(x, 3, 3, 2, 2, 1, 1, 1, 1, y, am)
    dout = rng.standard_normal((6, 9, 7)).astype(np.float32)
    xpos = np.abs(x) + 0.5
    xpos[0, 3, 4] = 2.0
    ylp, slp = np.empty((6, 5, 6), np.float32), np.empty((6, 5, 6), np.float32)
    K.lppool2d_forward(xpos, 3.0, 3, 3, 3, 2, ylp, slp)
    doutlp = rng.standard_normal((6, 5, 6)).astype(np.float32)
    up_idx = rng.integers(0, 17 * 13, size=(6, 9, 7))
    return {
        "maxpool2d_forward": ((x, 3, 3, 2, 2, 1, 1, 1, 1), (y, am)),
        "maxpool2d_forward dilated": ((x, 3, 2, 2, 1, 1, 1, 2, 1), (y, am)),
        "maxpool2d_2x2_forward": ((x,), (y[:, :8, :6], am[:, :8, :6])),
        "maxpool2d_3x3_forward": ((x, 2, 2, 1, 1), (y, am)),
        "maxpool2d_3x3s2_forward": ((np.ascontiguousarray(x[:, :, :12]), 1), (y[:, :, :6], am[:, :, :6])),
        "maxpool2d_backward": ((dout, am), (x,)),
        "avgpool2d_forward": ((x, 3, 3, 2, 2, 1, 1, False, 0), (y,)),
        "avgpool2d_2x2_forward": ((x, 4), (y[:, :8, :6],)),
        "avgpool2d_3x3_forward": ((x, 2, 2, 1, 1, False, 0), (y,)),
        "avgpool2d_3x3_backward": ((dout, 2, 2, 1, 1, True, 0), (x,)),
        "avgpool2d_3x3s2_forward": ((np.ascontiguousarray(x[:, :, :12]), 1, False, 0), (y[:, :, :6],)),
        "avgpool2d_3x3s2_backward": ((np.ascontiguousarray(dout[:, :, :6]), 1, True, 0),
                                     (x[:, :, :12],)),
        "avgpool2d_backward": ((dout, 3, 3, 2, 2, 1, 1, True, 0), (x,)),
        "avgpool2d_2x2_backward": ((dout[:, :8, :6].copy(), 3), (x,)),
        "lppool2d_forward": ((xpos, 3.0, 3, 3, 3, 2), (ylp, slp)),
        "lppool2d_forward p=2": ((xpos, 2.0, 3, 3, 3, 2), (ylp, slp)),
        "lppool2d_backward": ((doutlp, xpos, ylp, slp, 3.0, 3, 3, 3, 2), (x,)),
        "lppool2d_2x2_forward": ((xpos, 2.0), (y[:, :8, :6], y[:, :8, :6])),
        "lppool2d_2x2_backward": ((dout[:, :8, :6].copy(), xpos, np.abs(y[:, :8, :6]) + 1,
                                   np.abs(y[:, :8, :6]) + 2, 2.0), (x,)),
        "lppool2d_3x3_forward": ((xpos, 3.0, 3, 2), (ylp, slp)),
        "lppool2d_3x3_backward": ((doutlp, xpos, ylp, slp, 3.0, 3, 2), (x,)),
        "maxunpool2d_forward": ((dout, up_idx), (x, np.empty(6, bool))),
        "maxunpool2d_backward": ((x, up_idx), (y,)),
    }


KERNEL_CASES = list(_kernel_cases(np.random.default_rng(1)))


@pytest.mark.parametrize("case", KERNEL_CASES)
def test_parallel_equals_serial_bit_for_bit(case):
    args, like = _kernel_cases(np.random.default_rng(1))[case]
    name = case.split()[0]
    serial = njit(parallel=False)(getattr(K, "_" + name))       # not cached: see K's docstring
    outs_serial = tuple(np.full(o.shape, 7, o.dtype) for o in like)
    outs_par = tuple(np.full(o.shape, 7, o.dtype) for o in like)
    serial(*args, *outs_serial)
    getattr(K, name)(*args, *outs_par)
    for a, b in zip(outs_serial, outs_par):
        assert a.tobytes() == b.tobytes()
        assert not np.all(a == 7)


MIXED_3x3_SERIAL = njit(K._mixedpool2d_3x3_forward)    # built once: each build compiles anew


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W, s", [(3, 3, (1, 1)), (4, 3, (2, 1)), (9, 11, (1, 2)),
                                     (10, 11, (3, 2)), (13, 14, (4, 4)), (28, 28, (2, 2))])
def test_mixed_3x3_kernel_equals_the_three_kernels(dtype, H, W, s):
    rng = np.random.default_rng(H * 100 + W)
    x = tie_heavy((5, H, W), rng, special=False).astype(dtype)
    x[1, 0, 0] = np.nan                                   # NaN planes take the other loop
    x[2, -1, -1] = np.nan
    x[3] = -np.inf
    Ho, Wo = (H - 3) // s[0] + 1, (W - 3) // s[1] + 1
    a, b = dtype(0.3), dtype(1 - 0.3)
    mx, av, out = (np.empty((5, Ho, Wo), dtype) for _ in range(3))
    am = np.empty((5, Ho, Wo), np.int64)
    K.maxpool2d_forward(x, 3, 3, *s, 0, 0, 1, 1, mx, am)
    K.avgpool2d_forward(x, 3, 3, *s, 0, 0, True, 0, av)
    K.mixedpool2d_combine(mx, av, a, b, out)
    for kernel in (K.mixedpool2d_3x3_forward, MIXED_3x3_SERIAL):
        fused = [np.full((5, Ho, Wo), 7, dtype), np.full((5, Ho, Wo), 7, np.int64),
                 np.full((5, Ho, Wo), 7, dtype)]
        kernel(x, *s, a, b, *fused)
        for got, want in zip(fused, (out, am, av)):
            nan = np.isnan(got)                           # bit for bit, but for NaN's sign bit
            assert np.array_equal(nan, np.isnan(want)) and got[~nan].tobytes() == want[~nan].tobytes()


def test_mixed_combine_kernels_parallel_equals_serial_and_numpy():
    rng = np.random.default_rng(12)
    mx, av = (rng.standard_normal((6, 9, 7)).astype(np.float32) for _ in range(2))
    a, b = np.float32(0.3), np.float32(1 - 0.3)
    results = []
    for kernel in (K.mixedpool2d_combine, njit(K._mixedpool2d_combine)):
        out, diff = np.empty_like(mx), av.copy()
        kernel(mx, diff, a, b, out)
        results.append((out, diff))
    for out, diff in results:                        # numpy's float32 arithmetic, bit for bit
        assert out.tobytes() == (0.3 * mx + (1 - 0.3) * av).tobytes()
        assert diff.tobytes() == (mx - av).tobytes()
    results = []
    for kernel in (K.mixedpool2d_backward_combine, njit(K._mixedpool2d_backward_combine)):
        dmax = mx.copy()
        kernel(dmax, av, a, b)
        results.append(dmax)
    for dmax in results:
        assert dmax.tobytes() == (0.3 * mx + (1 - 0.3) * av).tobytes()


@pytest.mark.parametrize("make", [
    lambda: MaxPool2D(3, 2, 1), lambda: MaxPool2D(2), lambda: AvgPool2D(3, 2, 1),
    lambda: LPPool2D(2, 3, 2), lambda: MixedPool2D(2, alpha=0.3, learnable=True),
])
def test_parallel_layer_path_equals_small_batches(make):
    # the whole batch is big enough to run on all threads, one sample is not
    from minicnn.threads import PARALLEL_MIN_SIZE
    x = np.random.default_rng(10).standard_normal((5, 8, 30, 31)).astype(np.float32)
    assert x.size >= PARALLEL_MIN_SIZE > x[:1].size
    layer = make()
    y = layer(x)
    dout = np.random.default_rng(11).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dout)
    for i in range(len(x)):
        one = make()
        assert one(x[i:i + 1]).tobytes() == y[i:i + 1].tobytes()
        assert one.backward(dout[i:i + 1]).tobytes() == dx[i:i + 1].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_2x2_kernels_equal_general_kernels(dtype):
    rng = np.random.default_rng(2)
    x = tie_heavy((5, 11, 12), rng).astype(dtype)     # odd height: a row no window covers
    x[0, 0, :2] = np.nan                    # NaN first and second in a window
    x[1, 1, 1] = np.nan                     # NaN last
    x[2, :2, 2:4] = [[np.nan, 1.0], [np.nan, 2.0]]
    outs = [(np.empty((5, 5, 6), dtype), np.empty((5, 5, 6), np.int64)) for _ in range(2)]
    K.maxpool2d_2x2_forward(x, *outs[0])
    K.maxpool2d_forward(x, 2, 2, 2, 2, 0, 0, 1, 1, *outs[1])
    assert outs[0][0].tobytes() == outs[1][0].tobytes()
    assert outs[0][1].tobytes() == outs[1][1].tobytes()
    y_ref, idx_ref = naive_maxpool(x[None].astype(np.float64), (2, 2), (2, 2))
    np.testing.assert_array_equal(outs[0][0], y_ref[0])
    np.testing.assert_array_equal(outs[0][1], idx_ref[0])

    x = rng.standard_normal((5, 11, 12)).astype(dtype)
    for div in (4, 3):
        fast, general = np.empty((5, 5, 6), dtype), np.empty((5, 5, 6), dtype)
        K.avgpool2d_2x2_forward(x, div, fast)
        K.avgpool2d_forward(x, 2, 2, 2, 2, 0, 0, True, div if div != 4 else 0, general)
        assert fast.tobytes() == general.tobytes()
        dout = rng.standard_normal((5, 5, 6)).astype(dtype)
        fast, general = np.full(x.shape, 7, dtype), np.full(x.shape, 7, dtype)
        K.avgpool2d_2x2_backward(dout, div, fast)
        K.avgpool2d_backward(dout, 2, 2, 2, 2, 0, 0, True, div if div != 4 else 0, general)
        np.testing.assert_array_equal(fast, general)          # equal values (0.0 == -0.0)
        assert np.all(fast[:, 10, :] == 0)


# (H, W, stride, padding, ceil_mode): borders that are everything (1x1, 2x3
# planes), stride > kernel, stride 1, ceil mode windows hanging off the end
GEOMETRIES_3x3 = [(1, 1, (1, 1), (1, 1), False), (2, 3, (2, 2), (1, 1), True),
                  (3, 3, (1, 1), (0, 0), False), (7, 9, (2, 2), (1, 1), False),
                  (8, 8, (2, 2), (1, 1), True), (9, 11, (1, 2), (1, 0), True),
                  (10, 11, (3, 2), (0, 1), True), (13, 14, (4, 4), (1, 1), True),
                  (5, 6, (4, 1), (0, 1), False), (28, 28, (2, 2), (1, 1), False)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W, s, p, ceil", GEOMETRIES_3x3)
def test_3x3_max_kernel_equals_general_kernel(dtype, H, W, s, p, ceil):
    from minicnn.layers.geometry import output_size
    rng = np.random.default_rng(H * 100 + W)
    x = tie_heavy((8, H, W), rng, special=False).astype(dtype)
    x[1] = -np.inf                                        # all -inf: the first tap's index
    x[2, 0, 0] = np.nan                                   # NaN in a corner (border windows)
    x[3, H // 2, W // 2] = np.nan                         # NaN inside
    x[4, -1, :] = np.nan                                  # a NaN row (ties between NaNs)
    x[5] = 1.0                                            # all ties
    Ho = output_size(H, 3, s[0], p[0], 1, ceil)
    Wo = output_size(W, 3, s[1], p[1], 1, ceil)
    outs = [(np.full((8, Ho, Wo), 7, dtype), np.full((8, Ho, Wo), 7, np.int64)) for _ in range(2)]
    K.maxpool2d_3x3_forward(x, s[0], s[1], p[0], p[1], *outs[0])
    K.maxpool2d_forward(x, 3, 3, s[0], s[1], p[0], p[1], 1, 1, *outs[1])
    assert outs[0][0].tobytes() == outs[1][0].tobytes()
    assert outs[0][1].tobytes() == outs[1][1].tobytes()
    y_ref, idx_ref = naive_maxpool(x[None].astype(np.float64), (3, 3), s, p, ceil=ceil)
    np.testing.assert_array_equal(outs[0][0], y_ref[0])
    np.testing.assert_array_equal(outs[0][1], idx_ref[0])


# serial builds of the 3x3 stride-2 kernels, made once (each test reuses
# their compiled signatures; not cached on disk: see K's docstring)
SERIAL_3x3S2 = {name: njit(getattr(K, "_" + name)) for name in (
    "maxpool2d_3x3s2_forward", "avgpool2d_3x3s2_forward", "avgpool2d_3x3s2_backward",
    "lppool2d_3x3s2_forward", "lppool2d_3x3s2_backward")}

# (H, W, row padding) for the separable 3x3 stride-2 kernel (even W, column
# padding 1): one-row and two-row planes, odd and even H, the model shapes
GEOMETRIES_3x3S2 = [(1, 2, 1), (2, 2, 1), (2, 4, 1), (3, 4, 0), (4, 2, 0), (7, 10, 1),
                    (8, 8, 1), (9, 12, 0), (14, 14, 1), (24, 24, 1), (28, 28, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W, ph", GEOMETRIES_3x3S2)
def test_3x3s2_max_kernel_equals_general_kernel(dtype, H, W, ph):
    """The separable 3x3 stride-2 kernel (rows first, then columns, in long
    vectorised loops over blocks of planes) gives the general kernel's
    values and indices bit for bit: ties (many), signed zeros, infinities,
    NaN planes (their block takes the general path), threaded and serial.
    300 planes: runs of 4-5 planes, so small planes share a block (and a
    NaN plane's block holds clean planes) and 28x28 ones end runs with a
    block of one."""
    from minicnn.layers.geometry import output_size
    P = 300
    rng = np.random.default_rng(H * 100 + W + ph)
    x = tie_heavy((P, H, W), rng, special=False).astype(dtype)
    x[157, H - 1, 0] = np.nan
    x[1] = -np.inf
    x[2, 0, 0] = np.nan
    x[3, H // 2, W // 2] = np.nan
    x[4, -1, :] = np.nan
    x[5] = 1.0
    x[6] = rng.choice(np.array([0.0, -0.0], dtype), (H, W))    # -0.0 == 0.0: the first one wins
    x[7] = rng.choice(np.array([np.inf, -np.inf, 0.0, -0.0, 2.0], dtype), (H, W))
    x[8] = rng.standard_normal((H, W))
    Ho = output_size(H, 3, 2, ph, 1, False)
    Wo = output_size(W, 3, 2, 1, 1, False)
    assert Wo == W // 2
    want = (np.full((P, Ho, Wo), 7, dtype), np.full((P, Ho, Wo), 7, np.int64))
    K.maxpool2d_forward(x, 3, 3, 2, 2, ph, 1, 1, 1, *want)
    for kernel in (K.maxpool2d_3x3s2_forward, SERIAL_3x3S2['maxpool2d_3x3s2_forward']):
        got = (np.full((P, Ho, Wo), 7, dtype), np.full((P, Ho, Wo), 7, np.int64))
        kernel(x, ph, *got)
        assert got[0].tobytes() == want[0].tobytes()
        assert got[1].tobytes() == want[1].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W, ph", GEOMETRIES_3x3S2)
@pytest.mark.parametrize("count_include_pad, divisor_override", [(True, 0), (False, 0), (True, 5), (False, -3)])
def test_3x3s2_avg_kernels_equal_general_kernels(dtype, H, W, ph, count_include_pad,
                                                 divisor_override):
    """The 3x3 stride-2 average kernels (forward over split even/odd
    columns, backward in gather form) give the general kernels' bits: same
    additions in the same order, on ties, signed zeros and cancelling
    values, infinities and NaN (their bits), threaded and serial."""
    from minicnn.layers.geometry import output_size
    rng = np.random.default_rng(H * 100 + W + ph)
    x = rng.standard_normal((6, H, W)).astype(dtype)
    x[0] = rng.integers(-2, 3, (H, W))                          # exact cancellations: +0
    x[1] = -0.0
    x[2] = rng.choice(np.array([0.0, -0.0, 1e-30, -1e-30, 3.0], dtype), (H, W))
    x[3] = rng.choice(np.array([np.inf, -np.inf, np.nan, -np.nan, 1.0], dtype), (H, W))
    Ho = output_size(H, 3, 2, ph, 1, False)
    Wo = output_size(W, 3, 2, 1, 1, False)
    dout = rng.standard_normal((6, Ho, Wo)).astype(dtype)
    dout[0] = -0.0
    dout[1] = rng.integers(-2, 3, (Ho, Wo))
    args = (count_include_pad, divisor_override)
    want_y = np.full((6, Ho, Wo), 7, dtype)
    K.avgpool2d_forward(x, 3, 3, 2, 2, ph, 1, *args, want_y)
    want_dx = np.full((6, H, W), 7, dtype)
    K.avgpool2d_backward(dout, 3, 3, 2, 2, ph, 1, *args, want_dx)
    for fwd, bwd in ((K.avgpool2d_3x3s2_forward, K.avgpool2d_3x3s2_backward),
                     (SERIAL_3x3S2['avgpool2d_3x3s2_forward'], SERIAL_3x3S2['avgpool2d_3x3s2_backward'])):
        y = np.full((6, Ho, Wo), 7, dtype)
        fwd(x, ph, *args, y)
        assert y.tobytes() == want_y.tobytes()
        dx = np.full((6, H, W), 7, dtype)
        bwd(dout, ph, *args, dx)
        assert dx.tobytes() == want_dx.tobytes()


def test_3x3s2_kernels_are_used_where_they_apply(monkeypatch):
    """MaxPool2D and AvgPool2D(3, 2, 1) on an even width take the 3x3
    stride-2 kernels (AvgPool2D's backward too); ceil mode (an extra output
    column), an odd width and other paddings do not."""
    import minicnn.layers.pooling as LP
    calls = []

    def spy(real):
        def call(*args):
            calls.append(real)
            return real(*args)
        return call
    for name in ("maxpool2d_3x3s2_forward", "avgpool2d_3x3s2_forward", "avgpool2d_3x3s2_backward"):
        monkeypatch.setattr(LP.K, name, spy(getattr(K, name)))
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 10)).astype(np.float32)
    for make in (MaxPool2D, AvgPool2D):
        calls.clear()
        y = make(3, 2, 1).forward(x)
        make(3, 2, (0, 1)).forward(x)
        assert len(calls) == 2
        make(3, 2, 1, ceil_mode=True).forward(x)
        make(3, 2, 1).forward(x[..., :9])
        make(3, 2, 0).forward(x)
        make(3, 2, (1, 0)).forward(x)
        assert len(calls) == 2
    layer = AvgPool2D(3, 2, 1)
    layer.forward(x)
    layer.backward(np.ones_like(y))
    assert len(calls) == 4
    # the max kernel keeps in-plane indices as int32: a plane of 2**31 cells does not
    # qualify for it (the average kernels keep no indices and still apply)
    geometry = ((3, 3), (2, 2), (1, 1), (1, 1))
    assert LP._max_3x3s2(*geometry, (2**15, 2**15), (2**14, 2**14))
    assert not LP._max_3x3s2(*geometry, (2**16, 2**15), (2**15, 2**14))
    assert LP._overlapping_3x3s2(*geometry, (2**16, 2**15), (2**15, 2**14))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W, s, p, ceil", GEOMETRIES_3x3)
def test_3x3_avg_kernels_equal_general_kernels(dtype, H, W, s, p, ceil):
    from minicnn.layers.geometry import output_size
    rng = np.random.default_rng(H * 100 + W)
    x = rng.standard_normal((3, H, W)).astype(dtype)
    x[1, 0, 0] = np.nan                                  # NaN in a border window
    x[2, H // 2, W // 2] = np.inf                        # inf inside
    Ho = output_size(H, 3, s[0], p[0], 1, ceil)
    Wo = output_size(W, 3, s[1], p[1], 1, ceil)
    dout = rng.standard_normal((3, Ho, Wo)).astype(dtype)
    for count_include_pad in (True, False):
        for divisor_override in (0, 5, -3):
            args = (count_include_pad, divisor_override)
            fast, general = np.full((3, Ho, Wo), 7, dtype), np.full((3, Ho, Wo), 7, dtype)
            K.avgpool2d_3x3_forward(x, s[0], s[1], p[0], p[1], *args, fast)
            K.avgpool2d_forward(x, 3, 3, s[0], s[1], p[0], p[1], *args, general)
            assert fast.tobytes() == general.tobytes()
            fast, general = np.full(x.shape, 7, dtype), np.full(x.shape, 7, dtype)
            K.avgpool2d_3x3_backward(dout, s[0], s[1], p[0], p[1], *args, fast)
            K.avgpool2d_backward(dout, 3, 3, s[0], s[1], p[0], p[1], *args, general)
            assert fast.tobytes() == general.tobytes()


@pytest.mark.parametrize("norm", [1.0, 1.5, 2.0, 3.0])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W, s, ceil", [(1, 1, (2, 2), True), (2, 3, (2, 2), True), (3, 3, (1, 1), False),
                                           (9, 11, (1, 2), True), (10, 11, (3, 2), True),
                                           (13, 14, (4, 4), True), (28, 28, (2, 2), False)])
def test_lp_fast_kernels_equal_general_kernels(norm, dtype, H, W, s, ceil):
    from minicnn.layers.geometry import output_size
    rng = np.random.default_rng(H * 100 + W)
    x = rng.standard_normal((4, H, W)).astype(dtype)
    x[1] = 0.0                                            # sums == 0: zero gradient
    x[2, 0, 0] = np.nan
    x[3] = np.abs(x[3])
    for k, fwd, bwd, extra in (((3, 3), K.lppool2d_3x3_forward, K.lppool2d_3x3_backward, s),
                               ((2, 2), K.lppool2d_2x2_forward, K.lppool2d_2x2_backward, ())):
        kst = (2, 2) if k == (2, 2) else s
        Ho = output_size(H, k[0], kst[0], 0, 1, ceil)
        Wo = output_size(W, k[1], kst[1], 0, 1, ceil)
        if Ho < 1 or Wo < 1 or (k == (2, 2) and (2 * Ho > H or 2 * Wo > W)):
            continue
        outs = [(np.full((4, Ho, Wo), 7, dtype), np.full((4, Ho, Wo), 7, dtype)) for _ in range(2)]
        fwd(x, norm, *extra, *outs[0])
        K.lppool2d_forward(x, norm, *k, *kst, *outs[1])
        for a, b in zip(*outs):                           # bit for bit, but for NaN's sign bit
            nan = np.isnan(a)
            assert np.array_equal(nan, np.isnan(b)) and a[~nan].tobytes() == b[~nan].tobytes()
        dout = rng.standard_normal((4, Ho, Wo)).astype(dtype)
        fast, general = np.full(x.shape, 7, dtype), np.full(x.shape, 7, dtype)
        bwd(dout, x, *outs[0], norm, *extra, fast)
        K.lppool2d_backward(dout, x, *outs[1], norm, *k, *kst, general)
        np.testing.assert_array_equal(fast, general)      # values (0.0 == -0.0), NaN where NaN


@pytest.mark.parametrize("norm", [2.0, 3.0, 1.0, 1.5, 0.5])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H, W", [(3, 4), (4, 4), (5, 6), (9, 12), (14, 14), (24, 24), (28, 28)])
def test_lp_3x3s2_kernel_equals_general_kernel(norm, dtype, H, W):
    """The 3x3 stride-2 LP forward (each cell's power once, window sums over
    the split even/odd columns) and backward (share sums in gather form) give
    the general kernels' bits: same powers, same sums in the same order;
    signed inputs (NaN for odd and fractional p, as C pow), zeros, a NaN,
    infinities, windows with sums == 0; threaded and serial."""
    from minicnn.layers.geometry import output_size
    rng = np.random.default_rng(H * 100 + W)
    x = rng.standard_normal((5, H, W)).astype(dtype)
    x[1] = 0.0
    x[2, 0, 0] = np.nan
    x[3] = np.abs(x[3])
    x[4] = rng.choice(np.array([np.inf, 0.0, -0.0, 1e-20, 2.0], dtype), (H, W))
    Ho, Wo = output_size(H, 3, 2, 0, 1, False), output_size(W, 3, 2, 0, 1, False)
    assert Wo == W // 2 - 1
    want = (np.full((5, Ho, Wo), 7, dtype), np.full((5, Ho, Wo), 7, dtype))
    K.lppool2d_forward(x, norm, 3, 3, 2, 2, *want)
    for kernel in (K.lppool2d_3x3s2_forward, SERIAL_3x3S2['lppool2d_3x3s2_forward']):
        got = (np.full((5, Ho, Wo), 7, dtype), np.full((5, Ho, Wo), 7, dtype))
        kernel(x, norm, *got)
        for a, b in zip(got, want):                     # bit for bit, but for NaN's sign bit
            nan = np.isnan(a)
            assert np.array_equal(nan, np.isnan(b)) and a[~nan].tobytes() == b[~nan].tobytes()
    dout = rng.standard_normal((5, Ho, Wo)).astype(dtype)
    dout[0, 0, 0] = 0.0                                 # a zero share among nonzero ones
    dx_want = np.full(x.shape, 7, dtype)
    K.lppool2d_backward(dout, x, *want, norm, 3, 3, 2, 2, dx_want)
    for kernel in (K.lppool2d_3x3s2_backward, SERIAL_3x3S2['lppool2d_3x3s2_backward']):
        dx = np.full(x.shape, 7, dtype)
        kernel(dout, x, *want, norm, dx)
        nan = np.isnan(dx)
        assert np.array_equal(nan, np.isnan(dx_want))
        assert dx[~nan].tobytes() == dx_want[~nan].tobytes()


def test_lp_3x3s2_kernels_are_used_where_they_apply(monkeypatch):
    import minicnn.layers.pooling as LP
    calls = []
    for name in ("lppool2d_3x3s2_forward", "lppool2d_3x3s2_backward"):
        def spy(*args, real=getattr(K, name), name=name):
            calls.append(name)
            return real(*args)
        monkeypatch.setattr(LP.K, name, spy)
    x = np.abs(np.random.default_rng(0).standard_normal((2, 3, 9, 10))).astype(np.float32)
    for layer, xs, used in ((LPPool2D(2, 3, 2), x, True),
                            (LPPool2D(2, 3, 2, ceil_mode=True), x, False),   # a partial window
                            (LPPool2D(2, 3, 2), x[..., :9], False),          # odd width
                            (LPPool2D(2, 3, 1), x, False)):
        calls.clear()
        y = layer.forward(xs)
        layer.backward(np.ones_like(y))
        assert calls == (["lppool2d_3x3s2_forward", "lppool2d_3x3s2_backward"] if used else [])


def test_lp_float32_powers_are_float64():
    # the squares of float32 inputs are summed in float64: 3e-4**2 * 4 keeps every bit
    x = np.full((1, 1, 2, 2), 3.0001e-4, np.float32)
    y = LPPool2D(2, 2)(x)
    exact = np.sqrt(4 * np.float64(x[0, 0, 0, 0]) ** 2)
    assert y[0, 0, 0, 0] == np.float32(exact)


def test_2x2_ceil_mode_with_odd_size_uses_general_path():
    # 5x5 with ceil_mode has partial last windows: the fast path must not run
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y = MaxPool2D(2, ceil_mode=True)(x)
    np.testing.assert_array_equal(y[0, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]])


# ============================================================ dtypes and API
LAYERS = [
    lambda: MaxPool2D(3, 2, 1),
    lambda: MaxPool2D(2),
    lambda: AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False),
    lambda: LPPool2D(2, 3, 2),
    lambda: LPPool2D(float("inf"), 2),
    lambda: MixedPool2D(3, 2, alpha=0.3),
    lambda: MixedPool2D(2, alpha=0.3, learnable=True),
]


@pytest.mark.parametrize("make", LAYERS)
def test_float32_and_float64(make):
    x64 = np.random.default_rng(3).standard_normal((2, 3, 9, 8))
    results = {}
    for dtype in (np.float32, np.float64):
        layer = make().astype(dtype)
        y = layer(x64.astype(dtype))
        dx = layer.backward(np.ones_like(y))
        assert y.dtype == dtype and dx.dtype == dtype and dx.shape == x64.shape
        results[dtype] = (y, dx)
    np.testing.assert_allclose(results[np.float32][0], results[np.float64][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results[np.float32][1], results[np.float64][1], rtol=1e-5, atol=1e-5)


def test_maxunpool_float32_and_float64():
    for dtype in (np.float32, np.float64):
        x = np.arange(16, dtype=dtype).reshape(1, 1, 4, 4)
        y, idx = MaxPool2D(2, return_indices=True)(x)
        unpool = MaxUnpool2D(2)
        z = unpool(y, idx)
        assert z.dtype == dtype
        np.testing.assert_array_equal(z[0, 0], [[0, 0, 0, 0], [0, 5, 0, 7], [0, 0, 0, 0], [0, 13, 0, 15]])
        dx = unpool.backward(np.arange(16, dtype=dtype).reshape(1, 1, 4, 4))
        assert dx.dtype == dtype
        np.testing.assert_array_equal(dx[0, 0], [[5, 7], [13, 15]])


def test_integer_input_is_cast_to_float32():
    y = MaxPool2D(2)(np.arange(16).reshape(1, 1, 4, 4))
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[0, 0], [[5, 7], [13, 15]])


@pytest.mark.parametrize("make", LAYERS)
def test_backward_does_not_mutate_dout(make):
    layer = make()
    y = layer(np.random.default_rng(4).standard_normal((2, 2, 7, 7)).astype(np.float32))
    for dout in (np.random.default_rng(5).standard_normal(y.shape).astype(np.float32),
                 np.random.default_rng(5).standard_normal(y.shape)):          # float64 dout too
        before = dout.copy()
        layer.backward(dout)
        np.testing.assert_array_equal(dout, before)


def test_non_contiguous_input():
    x = np.random.default_rng(6).standard_normal((3, 2, 8, 8)).transpose(1, 0, 3, 2)
    y = MaxPool2D(3, 2, 1)(x)
    np.testing.assert_array_equal(y, naive_maxpool(np.ascontiguousarray(x), (3, 3), (2, 2), (1, 1))[0])


@pytest.mark.parametrize("make", LAYERS + [lambda: MaxUnpool2D((2, 3), 1, (1, 0)),
                                           lambda: AvgPool2D(2, divisor_override=3)])
def test_config_rebuilds_the_layer(make):
    layer = make()
    clone = type(layer)(**layer.config())
    assert clone.config() == layer.config()


# ============================================================ worked example and edge cases
def test_worked_example_4x4():
    x = np.arange(1, 17, dtype=np.float64).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(MaxPool2D(2, 2)(x)[0, 0], [[6, 8], [14, 16]])


def test_max_k1_s2_ceil_has_no_minus_inf():
    x = np.random.default_rng(7).standard_normal((1, 1, 6, 7))
    y = MaxPool2D(1, 2, ceil_mode=True)(x)
    assert y.shape == (1, 1, 3, 4)
    assert np.all(np.isfinite(y))
    np.testing.assert_array_equal(y, x[:, :, ::2, ::2])


def test_max_size5_k2_s2_p1_ceil_gives_3():
    y = MaxPool2D(2, 2, 1, ceil_mode=True)(np.zeros((1, 1, 5, 5)))
    assert y.shape == (1, 1, 3, 3)


def test_avg_7x7_k2_s3_ceil():
    x = np.arange(49.0).reshape(1, 1, 7, 7)
    y = AvgPool2D(2, 3, ceil_mode=True)(x)
    np.testing.assert_array_equal(y[0, 0], [[4, 7, 9.5], [25, 28, 30.5], [42.5, 45.5, 48]])


def test_avg_1x5_k12_s12_ceil():
    x = np.array([1.0, 2, 3, 4, 5]).reshape(1, 1, 1, 5)
    y = AvgPool2D((1, 2), (1, 2), ceil_mode=True)(x)
    np.testing.assert_array_equal(y[0, 0], [[1.5, 3.5, 5]])


@pytest.mark.parametrize("where", [0, 1, 3])
def test_max_nan_first_middle_last_propagates(where):
    x = np.array([[1.0, 5.0], [2.0, 3.0]]).reshape(1, 1, 2, 2)
    x.reshape(-1)[where] = np.nan
    for layer in (MaxPool2D(2, return_indices=True),
                  MaxPool2D(3, stride=3, padding=1, return_indices=True)):
        y, idx = layer(x)
        assert np.isnan(y[0, 0, 0, 0])
        assert idx[0, 0, 0, 0] == where                    # gradient goes to the NaN
        dx = layer.backward(np.ones_like(y))
        assert dx.reshape(-1)[where] == 1 and dx.sum() == 1


def test_max_all_nan_window_and_last_nan_index():
    x = np.full((1, 1, 2, 4), np.nan)
    x[0, 0, :, 2:] = [[np.nan, 1.0], [np.nan, 2.0]]
    y, idx = MaxPool2D(2, return_indices=True)(x)
    assert np.all(np.isnan(y))
    np.testing.assert_array_equal(idx[0, 0], [[5, 6]])     # PyTorch: the last NaN scanned


def test_max_all_negative_with_padding_stays_negative():
    x = -1.0 - np.random.default_rng(8).random((2, 3, 5, 6))
    y = MaxPool2D(3, 1, 1)(x)
    assert y.shape == x.shape and np.all(y < -1.0)
    # the corner window sees only the 2x2 in-input corner: padding is -inf, not 0
    assert y[0, 0, 0, 0] == x[0, 0, :2, :2].max()


def test_max_ties_gradient_goes_to_first():
    x = np.array([[1.0, 2.0], [2.0, 2.0]]).reshape(1, 1, 2, 2)
    layer = MaxPool2D(2)
    layer(x)
    dx = layer.backward(np.array([[[[3.0]]]]))
    np.testing.assert_array_equal(dx[0, 0], [[0, 3], [0, 0]])


def test_max_overlapping_windows_accumulate():
    # 3x3 stride 2 windows share a border; the shared maximum gets both gradients
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 2, 2] = 9.0
    layer = MaxPool2D(3, 2)
    layer(x)
    dx = layer.backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]))
    assert dx[0, 0, 2, 2] == 10.0 and dx.sum() == 10.0


def test_max_window_entirely_in_padding_gives_minus_inf_and_no_gradient():
    # dilation 3 on a 1-wide input: taps at -1 and 2, neither inside
    layer = MaxPool2D((1, 2), stride=2, padding=(0, 1), dilation=3, ceil_mode=True,
                      return_indices=True)
    x = np.array([[[[4.0]]]])
    y, idx = layer(x)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == -1
    np.testing.assert_array_equal(layer.backward(np.ones_like(y)), [[[[0.0]]]])


def test_avg_count_include_pad_and_divisor_override():
    x = np.ones((1, 1, 3, 3))
    assert AvgPool2D(3, 1, 1)(x)[0, 0, 0, 0] == 4 / 9
    assert AvgPool2D(3, 1, 1, count_include_pad=False)(x)[0, 0, 0, 0] == 1.0
    assert AvgPool2D(3, 1, 1, divisor_override=2)(x)[0, 0, 0, 0] == 2.0
    assert AvgPool2D(3, 1, 1, divisor_override=-2)(x)[0, 0, 0, 0] == -2.0      # as in PyTorch
    layer = AvgPool2D(2, divisor_override=-4)                                    # the 2x2 kernel
    assert layer(np.ones((1, 1, 2, 2)))[0, 0, 0, 0] == -1.0                     # 4 / -4
    np.testing.assert_array_equal(layer.backward(np.ones((1, 1, 1, 1))), np.full((1, 1, 2, 2), -0.25))
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match=r"AvgPool2D: divisor_override must be None or a non-zero int"):
            AvgPool2D(2, divisor_override=bad)


def test_lppool_p2_is_l2_norm_and_p1_signed_sum():
    x = np.array([[3.0, -4.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    assert LPPool2D(2, 2)(x)[0, 0, 0, 0] == 5.0
    assert LPPool2D(1, 2)(x)[0, 0, 0, 0] == -1.0
    assert np.isnan(LPPool2D(3, 2)(x)[0, 0, 0, 0])          # (-37)^(1/3): NaN, as PyTorch
    assert LPPool2D(float("inf"), 2)(x)[0, 0, 0, 0] == 4.0
    assert LPPool2D(float("-inf"), 2)(x)[0, 0, 0, 0] == 0.0


def test_lppool_zero_window_has_zero_gradient():
    layer = LPPool2D(2, 2)
    x = np.zeros((1, 1, 2, 4))
    x[0, 0, 0, 2] = 1.0
    layer(x)
    dx = layer.backward(np.ones((1, 1, 1, 2)))
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 1, 0], [0, 0, 0, 0]])


def test_mixed_alpha_extremes_are_max_and_avg():
    x = np.random.default_rng(9).standard_normal((2, 2, 6, 6))
    np.testing.assert_array_equal(MixedPool2D(2, alpha=1.0)(x), MaxPool2D(2)(x))
    np.testing.assert_allclose(MixedPool2D(2, alpha=0.0)(x), AvgPool2D(2)(x), rtol=1e-15)


def test_mixed_learnable_params():
    layer = MixedPool2D(2, alpha=0.25, learnable=True)
    assert set(layer.params) == {"alpha"} and layer.params["alpha"].shape == (1,)
    assert layer.params["alpha"][0] == 0.25
    assert MixedPool2D(2).params == {}


def test_unpool_default_and_full_output_size():
    # 5x5 pooled 2x2 gives 2x2; the default unpooled size is 4x4, too small
    # for indices into a 5-wide plane: output_size=(5, 5) restores the shape
    x = np.arange(25.0).reshape(1, 1, 5, 5)
    y, idx = MaxPool2D(2, return_indices=True)(x)
    np.testing.assert_array_equal(idx[0, 0], [[6, 8], [16, 18]])
    unpool = MaxUnpool2D(2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\).*found index 18"):
        unpool(y, idx)
    z = unpool(y, idx, output_size=(1, 1, 5, 5))             # full shape: last two used
    assert z.shape == (1, 1, 5, 5)
    np.testing.assert_array_equal(z, np.where(np.isin(x, [6, 8, 16, 18]), x, 0))
    assert MaxUnpool2D(2)(y, np.zeros_like(idx)).shape == (1, 1, 4, 4)


# ============================================================ invalid arguments
@pytest.mark.parametrize("make, match", [
    (lambda: MaxPool2D(2, padding=2), r"padding.*\(2, 2\)"),
    (lambda: MaxPool2D(3, padding=2, dilation=1), r"padding.*\(2, 2\)"),
    (lambda: MaxPool2D(2, stride=0), r"stride must be > 0, got \(0, 0\)"),
    (lambda: MaxPool2D(2, stride=(1, -1)), r"stride must be > 0, got \(1, -1\)"),
    (lambda: MaxPool2D(0), r"kernel_size must be > 0, got \(0, 0\)"),
    (lambda: MaxPool2D(2, dilation=0), r"dilation must be > 0, got \(0, 0\)"),
    (lambda: MaxPool2D(2, padding=-1), r"padding must be >= 0, got \(-1, -1\)"),
    (lambda: AvgPool2D(3, padding=2), r"padding.*\(2, 2\)"),
    (lambda: AvgPool2D(2, stride=0), r"stride must be > 0"),
    (lambda: AvgPool2D(2, divisor_override=0), r"divisor_override.*non-zero.*got 0"),
    (lambda: LPPool2D(0, 2), r"norm_type.*got 0"),
    (lambda: LPPool2D(-1.5, 2), r"norm_type.*got -1.5"),
    (lambda: LPPool2D(float("nan"), 2), r"norm_type.*got nan"),
    (lambda: LPPool2D(2, 0), r"kernel_size must be > 0"),
    (lambda: MixedPool2D(2, alpha=1.5), r"alpha.*\[0, 1\].*got 1.5"),
    (lambda: MixedPool2D(2, alpha=-0.1), r"alpha.*got -0.1"),
    (lambda: MixedPool2D(2, stride=0), r"stride must be > 0"),
    (lambda: MaxUnpool2D(0), r"kernel_size must be > 0"),
    (lambda: MaxUnpool2D(2, padding=-1), r"padding must be >= 0"),
])
def test_invalid_hyperparameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("make", [
    lambda: MaxPool2D(2, ceil_mode="yes"),
    lambda: MaxPool2D(2, return_indices=1),
    lambda: AvgPool2D(2, count_include_pad=None),
    lambda: MaxPool2D(2.5),
])
def test_invalid_types(make):
    with pytest.raises(TypeError):
        make()


@pytest.mark.parametrize("layer", [MaxPool2D(5), AvgPool2D(4), LPPool2D(2, 4),
                                   MixedPool2D(4), MaxPool2D(2, dilation=3)])
def test_output_smaller_than_one_raises_at_forward(layer):
    with pytest.raises(ValueError, match=r"too small.*output would be"):
        layer(np.zeros((1, 1, 3, 3)))


def test_wrong_rank_and_dout_shape():
    layer = MaxPool2D(2)
    with pytest.raises(ValueError, match="4-D"):
        layer(np.zeros((4, 4)))
    with pytest.raises(RuntimeError, match="before forward"):
        MaxPool2D(2).backward(np.zeros((1, 1, 2, 2)))
    layer(np.zeros((1, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"expected dout of shape \(1, 1, 2, 2\)"):
        layer.backward(np.zeros((1, 1, 3, 3)))


def test_unpool_invalid_arguments():
    x = np.ones((1, 1, 2, 2))
    unpool = MaxUnpool2D(2)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\).*found index 16"):
        unpool(x, np.array([[[[0, 1], [2, 16]]]]))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\).*found index -1"):
        unpool(x, np.array([[[[0, -1], [2, 3]]]]))
    many = np.zeros((3, 4, 2, 2), np.int64)                  # one bad plane among twelve
    many[1, 2, 1, 0] = 17
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 16\).*found index 17"):
        unpool(np.ones((3, 4, 2, 2)), many)
    huge = np.array([[[[0, 1], [2, 2**63 + 5]]]], np.uint64)         # not wrapped to a negative
    with pytest.raises(ValueError, match=rf"indices must lie in \[0, 16\).*found index {2**63 + 5}"):
        unpool(x, huge)
    with pytest.raises(ValueError, match="indices must have the shape"):
        unpool(x, np.zeros((1, 1, 2, 3), np.int64))
    with pytest.raises(TypeError, match="indices must be integers"):
        unpool(x, np.zeros((1, 1, 2, 2)))
    with pytest.raises(ValueError,
                       match=r"invalid output_size \(6, 4\): dim 0 must be strictly between 2 and 6"):
        unpool(x, np.zeros((1, 1, 2, 2), np.int64), output_size=(6, 4))
    with pytest.raises(ValueError, match="output_size must be"):
        unpool(x, np.zeros((1, 1, 2, 2), np.int64), output_size=(4, 4, 4))


def test_returned_indices_are_the_callers_own():
    """The indices a pooling layer returns are a copy: changing them does not
    change the gradient its backward computes (as AdaptiveMaxPool2D and
    FractionalMaxPool2D already did)."""
    import minicnn as mc
    x = np.random.default_rng(0).standard_normal((2, 3, 6, 6))
    for layer in (MaxPool2D(2, return_indices=True), MaxPool2D(3, 2, 1, return_indices=True),
                  mc.AdaptiveMaxPool2D(4, return_indices=True),
                  mc.FractionalMaxPool2D(2, output_size=4, seed=0, return_indices=True)):
        y, idx = layer.forward(x)
        g = np.random.default_rng(1).standard_normal(y.shape)
        want = layer.backward(g)
        idx[...] = 0
        np.testing.assert_array_equal(layer.backward(g), want, err_msg=layer.name)


def test_true_false_options_accept_numpy_bools():
    import minicnn as mc
    for make in (lambda v: MaxPool2D(2, return_indices=v), lambda v: mc.AdaptiveMaxPool2D(2, return_indices=v),
                 lambda v: mc.FractionalMaxPool2D(2, output_size=2, return_indices=v),
                 lambda v: mc.AvgPool2D(2, ceil_mode=v)):
        assert make(np.True_).config() == make(True).config()
        with pytest.raises(TypeError, match="must be True or False, got 1"):
            make(1)
