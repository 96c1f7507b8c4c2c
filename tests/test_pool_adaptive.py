"""Adaptive, global and spatial-pyramid pooling against naive references and PyTorch."""
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

from minicnn.gradcheck import check_gradients, tie_free
from minicnn.kernels import adaptive as K
from minicnn.layers.adaptive import (AdaptiveAvgPool2D, AdaptiveMaxPool2D, GlobalAvgPool2D,
                                     GlobalMaxPool2D, SpatialPyramidPool2D)

SETTINGS = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------- naive references
def ref_bins(L, out):
    """Bin i = [floor(i*L/out), ceil((i+1)*L/out)), with exact rational arithmetic."""
    return [(math.floor(Fraction(i * L, out)), math.ceil(Fraction((i + 1) * L, out)))
            for i in range(out)]


def ref_avg(x, oh, ow):
    N, C, H, W = x.shape
    y = np.zeros((N, C, oh, ow))
    for n in range(N):
        for c in range(C):
            for i, (h0, h1) in enumerate(ref_bins(H, oh)):
                for j, (w0, w1) in enumerate(ref_bins(W, ow)):
                    y[n, c, i, j] = x[n, c, h0:h1, w0:w1].mean()
    return y


def ref_avg_backward(x_shape, dout):
    N, C, H, W = x_shape
    oh, ow = dout.shape[2:]
    dx = np.zeros(x_shape)
    for n in range(N):
        for c in range(C):
            for i, (h0, h1) in enumerate(ref_bins(H, oh)):
                for j, (w0, w1) in enumerate(ref_bins(W, ow)):
                    dx[n, c, h0:h1, w0:w1] += dout[n, c, i, j] / ((h1 - h0) * (w1 - w0))
    return dx


def ref_max(x, oh, ow):
    """Max and flat in-plane index of the first maximum (np.argmax: first occurrence)."""
    N, C, H, W = x.shape
    y = np.zeros((N, C, oh, ow))
    idx = np.zeros((N, C, oh, ow), np.int64)
    for n in range(N):
        for c in range(C):
            for i, (h0, h1) in enumerate(ref_bins(H, oh)):
                for j, (w0, w1) in enumerate(ref_bins(W, ow)):
                    win = x[n, c, h0:h1, w0:w1]
                    k = int(np.argmax(win))
                    h, w = h0 + k // (w1 - w0), w0 + k % (w1 - w0)
                    y[n, c, i, j] = x[n, c, h, w]
                    idx[n, c, i, j] = h * W + w
    return y, idx


def ref_index_backward(x_shape, dout, idx):
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H * W))
    for n in range(N):
        for c in range(C):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    dx[n, c, idx[n, c, i, j]] += dout[n, c, i, j]
    return dx.reshape(x_shape)


@st.composite
def adaptive_case(draw):
    N, C = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    H, W = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    oh = draw(st.one_of(st.none(), st.integers(1, 2 * H)))
    ow = draw(st.one_of(st.none(), st.integers(1, 2 * W)))
    return (N, C, H, W), (oh, ow), draw(st.integers(0, 2**32 - 1))


def resolve(size, H, W):
    return (H if size[0] is None else size[0], W if size[1] is None else size[1])


# --------------------------------------------------------------- bins
@pytest.mark.parametrize("L,out,expected", [
    (10, 3, [(0, 4), (3, 7), (6, 10)]),
    (5, 3, [(0, 2), (1, 4), (3, 5)]),
])
def test_bins_known_cases(L, out, expected):
    assert ref_bins(L, out) == expected
    # the layer pools exactly these bins: probe each cell with a one-hot input
    layer = AdaptiveAvgPool2D((out, 1))
    for h in range(L):
        x = np.zeros((1, 1, L, 1))
        x[0, 0, h, 0] = 1.0
        y = layer.forward(x)[0, 0, :, 0]
        expect = [1.0 / (b - a) if a <= h < b else 0.0 for a, b in expected]
        np.testing.assert_allclose(y, expect, rtol=0, atol=1e-15)


@pytest.mark.parametrize("L,out", [(10, 3), (5, 3), (224, 13), (7, 10), (13, 13)])
def test_edge_sizes_match_floor_ceil_reference(L, out):
    rng = np.random.default_rng(L * 100 + out)
    x = rng.standard_normal((1, 2, L, L))
    np.testing.assert_allclose(AdaptiveAvgPool2D(out).forward(x), ref_avg(x, out, out),
                               rtol=1e-12, atol=1e-14)
    y, idx = AdaptiveMaxPool2D(out, return_indices=True).forward(x)
    ry, ridx = ref_max(x, out, out)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)


# --------------------------------------------------------------- property tests
@SETTINGS
@given(adaptive_case())
def test_avg_matches_reference(case):
    shape, size, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    oh, ow = resolve(size, *shape[2:])
    layer = AdaptiveAvgPool2D(size)
    y = layer.forward(x)
    assert y.shape == shape[:2] + (oh, ow) and y.dtype == np.float64
    np.testing.assert_allclose(y, ref_avg(x, oh, ow), rtol=1e-12, atol=1e-14)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), ref_avg_backward(shape, dout),
                               rtol=1e-12, atol=1e-14)


@SETTINGS
@given(adaptive_case(), st.booleans())
def test_max_matches_reference(case, with_ties):
    shape, size, seed = case
    rng = np.random.default_rng(seed)
    # small integers give many ties: the first maximum in row-major order must win
    x = rng.integers(0, 3, shape).astype(np.float64) if with_ties else rng.standard_normal(shape)
    oh, ow = resolve(size, *shape[2:])
    layer = AdaptiveMaxPool2D(size, return_indices=True)
    y, idx = layer.forward(x)
    ry, ridx = ref_max(x, oh, ow)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), ref_index_backward(shape, dout, ridx),
                               rtol=1e-12, atol=1e-14)


@SETTINGS
@given(adaptive_case())
def test_global_pools_match_numpy(case):
    shape, _, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    N, C, H, W = shape
    dout = rng.standard_normal((N, C))
    g = GlobalAvgPool2D()
    np.testing.assert_allclose(g.forward(x), x.mean(axis=(2, 3)), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(g.backward(dout),
                               np.broadcast_to(dout[:, :, None, None] / (H * W), shape),
                               rtol=1e-12, atol=1e-15)
    m = GlobalMaxPool2D()
    np.testing.assert_array_equal(m.forward(x), x.max(axis=(2, 3)))
    flat = x.reshape(N, C, H * W)
    expect = np.zeros_like(flat)
    np.put_along_axis(expect, flat.argmax(axis=2)[:, :, None], dout[:, :, None], axis=2)
    np.testing.assert_array_equal(m.backward(dout), expect.reshape(shape))


# --------------------------------------------------------------- special values
def test_max_nan_propagates_and_ties_pick_first():
    x = np.array([[[[1.0, np.nan, 3.0, 3.0],
                    [3.0, 0.0, 2.0, 1.0]]]])
    y, idx = AdaptiveMaxPool2D((1, 2), return_indices=True).forward(x)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 3.0
    assert idx[0, 0, 0, 0] == 1          # the NaN
    assert idx[0, 0, 0, 1] == 2          # first 3.0 in row-major order (not 3)
    x = np.full((1, 1, 2, 2), -np.inf)
    y, idx = AdaptiveMaxPool2D(1, return_indices=True).forward(x)
    assert y[0, 0, 0, 0] == -np.inf and idx[0, 0, 0, 0] == 0


# --------------------------------------------------------------- parallel == serial
SERIAL = {name: njit(parallel=False)(getattr(K, "_" + name)) for name in (
    "adaptive_avg_forward", "adaptive_avg_backward", "adaptive_max_forward", "argmax_backward")}


@pytest.mark.parametrize("shape,out", [((3, 5, 17, 11), (5, 4)), ((2, 3, 6, 9), (13, 2)),
                                       ((5, 30, 14, 14), (4, 4)), ((2, 9, 7, 30), (3, 4))])
def test_parallel_equals_serial_float32(shape, out):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    N, C, H, W = shape
    dout = rng.standard_normal((N, C) + out).astype(np.float32)
    results = []
    for get in (lambda name: getattr(K, name), SERIAL.__getitem__):
        ya = np.empty((N, C) + out, np.float32)
        get("adaptive_avg_forward")(x, ya)
        dxa = np.empty(shape, np.float32)
        get("adaptive_avg_backward")(dout, dxa)
        ym = np.empty((N, C) + out, np.float32)
        am = np.empty((N, C) + out, np.int64)
        get("adaptive_max_forward")(x, ym, am)
        dxm = np.empty(shape, np.float32)
        get("argmax_backward")(dout, am, dxm)
        results.append((ya, dxa, ym, am, dxm))
    for a, b in zip(*results):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------- gradient checks
def _grad_layers():
    return [AdaptiveAvgPool2D((3, 4)), AdaptiveAvgPool2D((None, 2)), AdaptiveMaxPool2D((3, 4)),
            AdaptiveMaxPool2D((7, 5)), GlobalAvgPool2D(), GlobalMaxPool2D(),
            SpatialPyramidPool2D((1, 2, 4), "max"), SpatialPyramidPool2D((1, 2, 4), "avg"),
            SpatialPyramidPool2D((3, 1), "max")]


@pytest.mark.parametrize("layer", _grad_layers(), ids=repr)
def test_gradients(layer):
    rng = np.random.default_rng(1)
    x = tie_free((2, 2, 5, 7), rng)
    result = check_gradients(layer, x, seed=2)
    assert result.passed, result.errors


def test_gradcheck_catches_wrong_backward():
    """Negative control: a backward that misroutes one gradient must fail."""
    layer = AdaptiveMaxPool2D(2)
    good = layer.backward
    layer.backward = lambda dout: np.roll(good(dout), 1, axis=-1)
    x = tie_free((1, 1, 4, 4), np.random.default_rng(3))
    assert not check_gradients(layer, x).passed


# --------------------------------------------------------------- spatial pyramid
@pytest.mark.parametrize("hw", [(4, 4), (28, 28), (33, 40), (4, 9)])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_spp_gives_21_features_per_channel(hw, mode):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3) + hw)
    layer = SpatialPyramidPool2D((1, 2, 4), mode)
    y = layer.forward(x)
    assert y.shape == (2, 21 * 3)
    # ordering: level by level, each level flattened channel-major
    pieces = [(ref_max(x, v, v)[0] if mode == "max" else ref_avg(x, v, v)).reshape(2, -1)
              for v in (1, 2, 4)]
    np.testing.assert_allclose(y, np.concatenate(pieces, axis=1), rtol=1e-12, atol=1e-14)
    # backward: the sum of each level's adaptive backward
    dout = rng.standard_normal(y.shape)
    expect = np.zeros(x.shape)
    start = 0
    for v in (1, 2, 4):
        d = dout[:, start:start + 3 * v * v].reshape(2, 3, v, v)
        start += 3 * v * v
        expect += (ref_index_backward(x.shape, d, ref_max(x, v, v)[1]) if mode == "max"
                   else ref_avg_backward(x.shape, d))
    np.testing.assert_allclose(layer.backward(dout), expect, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("hw", [(3, 3), (3, 10), (10, 2)])
def test_spp_rejects_input_below_largest_level(hw):
    with pytest.raises(ValueError) as err:
        SpatialPyramidPool2D((1, 2, 4)).forward(np.zeros((1, 1) + hw))
    msg = str(err.value)
    assert "SpatialPyramidPool2D" in msg and "(1, 2, 4)" in msg and str(hw) in msg


def test_spp_validation():
    with pytest.raises(ValueError, match="mode"):
        SpatialPyramidPool2D(mode="min")
    with pytest.raises(ValueError, match="levels"):
        SpatialPyramidPool2D(levels=(1, 0))
    with pytest.raises(ValueError, match="levels"):
        SpatialPyramidPool2D(levels=())
    with pytest.raises(TypeError, match="levels"):
        SpatialPyramidPool2D(levels=2)
    assert SpatialPyramidPool2D((1, 3)).features_per_channel == 10


# --------------------------------------------------------------- API details
@pytest.mark.parametrize("cls", [AdaptiveAvgPool2D, AdaptiveMaxPool2D])
def test_output_size_validation(cls):
    for bad in (0, -1, (2, 0), (None, -3)):
        with pytest.raises(ValueError, match=f"{cls.__name__}: output_size"):
            cls(bad)
    for bad in (2.0, (1, 2, 3), "3", (1.5, None), True):
        with pytest.raises(TypeError, match=f"{cls.__name__}: output_size"):
            cls(bad)


def test_none_keeps_input_dimension():
    x = np.random.default_rng(5).standard_normal((1, 2, 6, 9))
    assert AdaptiveAvgPool2D((None, 4)).forward(x).shape == (1, 2, 6, 4)
    assert AdaptiveMaxPool2D((3, None)).forward(x).shape == (1, 2, 3, 9)
    np.testing.assert_allclose(AdaptiveAvgPool2D((None, None)).forward(x), x, rtol=0, atol=0)


@pytest.mark.parametrize("layer", _grad_layers(), ids=repr)
def test_config_round_trip_and_dtypes(layer):
    rebuilt = type(layer)(**json.loads(json.dumps(layer.config())))
    assert rebuilt.config() == layer.config()
    x = np.random.default_rng(6).standard_normal((2, 2, 6, 5))
    y32 = rebuilt.forward(x.astype(np.float32))
    assert y32.dtype == np.float32
    assert rebuilt.backward(np.ones_like(y32)).dtype == np.float32
    assert rebuilt.forward((x > 0).astype(np.int64)).dtype == np.float32
    np.testing.assert_allclose(y32, rebuilt.forward(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("layer", _grad_layers()[:6], ids=repr)
def test_empty_plane_rejected(layer):
    with pytest.raises(ValueError, match="non-empty"):
        layer.forward(np.zeros((1, 2, 0, 3)))


def test_backward_checks():
    layer = GlobalAvgPool2D()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((1, 1)))
    layer.forward(np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        layer.backward(np.zeros((2, 3, 1, 1)))
    with pytest.raises(ValueError, match="4-D"):
        layer.forward(np.zeros((3, 4, 4)))


# --------------------------------------------------------------- PyTorch oracle
@pytest.mark.parametrize("shape,size", [
    ((2, 3, 10, 7), (3, 4)), ((1, 2, 13, 13), (5, None)), ((2, 1, 5, 9), (7, 11)),
    ((1, 2, 224, 224), 13), ((3, 2, 8, 8), 1)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_torch(shape, size, dtype):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape).astype(dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    tsize = size if isinstance(size, int) else tuple(size)
    for mode in ("avg", "max"):
        xt = torch.tensor(x, requires_grad=True)
        if mode == "avg":
            layer = AdaptiveAvgPool2D(size)
            y = layer.forward(x)
            yt = F.adaptive_avg_pool2d(xt, tsize)
        else:
            layer = AdaptiveMaxPool2D(size, return_indices=True)
            y, idx = layer.forward(x)
            yt, it = F.adaptive_max_pool2d(xt, tsize, return_indices=True)
            np.testing.assert_array_equal(idx, it.numpy())
        np.testing.assert_allclose(y, yt.detach().numpy(), **tol)
        dout = rng.standard_normal(y.shape).astype(dtype)
        yt.backward(torch.tensor(dout))
        np.testing.assert_allclose(layer.backward(dout), xt.grad.numpy(), **tol)


def test_nan_index_matches_torch():
    torch = pytest.importorskip("torch")
    # bin 0 holds NaNs at flat indices 0, 1 and 5: PyTorch reports the last one
    x = np.array([[[[np.nan, np.nan, 1.0, 2.0], [0.0, np.nan, 1.0, 1.0]]]])
    y, idx = AdaptiveMaxPool2D((1, 2), return_indices=True).forward(x)
    yt, it = torch.nn.functional.adaptive_max_pool2d(torch.tensor(x), (1, 2), return_indices=True)
    np.testing.assert_array_equal(y, yt.numpy())
    np.testing.assert_array_equal(idx, it.numpy())
    assert idx[0, 0, 0, 0] == 5 and idx[0, 0, 0, 1] == 3


# --------------------------------------------------------------- fast-path details
def scan_max(x, oh, ow):
    """The rule written as PyTorch's scan: ``v > best or isnan(v)`` over each bin."""
    N, C, H, W = x.shape
    y = np.zeros((N, C, oh, ow), x.dtype)
    idx = np.zeros((N, C, oh, ow), np.int64)
    for n in range(N):
        for c in range(C):
            for i, (h0, h1) in enumerate(ref_bins(H, oh)):
                for j, (w0, w1) in enumerate(ref_bins(W, ow)):
                    best, k = x[n, c, h0, w0], h0 * W + w0
                    for h in range(h0, h1):
                        for w in range(w0, w1):
                            v = x[n, c, h, w]
                            if v > best or np.isnan(v):
                                best, k = v, h * W + w
                    y[n, c, i, j], idx[n, c, i, j] = best, k
    return y, idx


@SETTINGS
@given(adaptive_case(), st.sampled_from(["nan", "zeros", "inf"]))
def test_max_special_values_match_scan(case, kind):
    """NaN anywhere (first cell of a bin, first column, several per bin), signed
    zeros and infinities: value (bit pattern) and index equal the plain scan."""
    shape, size, seed = case
    rng = np.random.default_rng(seed)
    oh, ow = resolve(size, *shape[2:])
    if kind == "nan":
        x = rng.integers(-2, 3, shape).astype(np.float64)
        x[rng.random(shape) < 0.15] = np.nan
    elif kind == "zeros":
        x = rng.choice([0.0, -0.0, -1.0], shape)
    else:
        x = rng.choice([np.inf, -np.inf, 1.0, -1.0], shape)
    for dtype in (np.float64, np.float32):
        xd = x.astype(dtype)
        y, idx = AdaptiveMaxPool2D(size, return_indices=True).forward(xd)
        ry, ridx = scan_max(xd, oh, ow)
        np.testing.assert_array_equal(idx, ridx)
        np.testing.assert_array_equal(y.view(np.uint8), ry.view(np.uint8))   # same bits
        if (oh, ow) == (1, 1):
            g = GlobalMaxPool2D().forward(xd)
            np.testing.assert_array_equal(g.view(np.uint8), ry.reshape(g.shape).view(np.uint8))


def test_max_nan_in_first_cell_and_negative_zero():
    x = np.array([[[[np.nan, 1.0, 5.0],
                    [2.0, np.nan, 0.0]]]])
    y, idx = AdaptiveMaxPool2D(1, return_indices=True).forward(x)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 4          # the last NaN
    x = np.array([[[[-0.0, -1.0], [0.0, -0.0]]]])
    y, idx = AdaptiveMaxPool2D(1, return_indices=True).forward(x)
    assert idx[0, 0, 0, 0] == 0 and np.signbit(y[0, 0, 0, 0])        # the first zero, -0.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("H,W,out", [(14, 14, (4, 4)), (5, 13, (2, 3)), (3, 10, (3, 2)), (2, 3, (1, 2)),
                                     (1, 5, (1, 1)), (4, 6, (4, 4))])
def test_max_rows_read_past_their_end_do_not_leak(dtype, H, W, out):
    """When 4 does not divide W, pass 1 reads each row up to a multiple of 8
    cells wide, into the next row and plane (kernels/adaptive.py).  Those
    columns never reach a bin: every plane but the first starts with NaN
    or +inf (what would win if they did), and the result must be the
    scan's.  x is a view whose buffer goes on with NaN past x's end (the
    last planes are read with rows W wide)."""
    rng = np.random.default_rng(H * 100 + W)
    P = 7
    buf = rng.standard_normal((P + 1, H * W)).astype(dtype)
    buf[1::2, 0] = np.nan                            # the first cells of planes 1..P-1
    buf[2::2, 0] = np.inf
    buf[P] = np.nan                                  # past x's end
    x = buf[:P].reshape(1, P, H, W)
    y, idx = AdaptiveMaxPool2D(out, return_indices=True).forward(x)
    ry, ridx = scan_max(np.ascontiguousarray(x), *out)
    np.testing.assert_array_equal(idx, ridx)
    np.testing.assert_array_equal(y.view(np.uint8), ry.view(np.uint8))


def _avg_backward_by_the_rule(dout, shape):
    """``dx = 0``, then each bin in row-major order adds ``dout/|bin|`` (in
    float64) to its cells, rounded to dx's dtype after each addition."""
    dtype = dout.dtype
    expect = np.zeros(shape, dtype)
    for i, (h0, h1) in enumerate(ref_bins(shape[2], dout.shape[2])):
        for j, (w0, w1) in enumerate(ref_bins(shape[3], dout.shape[3])):
            g = dout[:, :, i, j].astype(np.float64) / ((h1 - h0) * (w1 - w0))
            for h in range(h0, h1):
                for w in range(w0, w1):
                    expect[:, :, h, w] = (expect[:, :, h, w].astype(np.float64) + g).astype(dtype)
    return expect


@pytest.mark.parametrize("shape,out", [((2, 3, 12, 8), (4, 2)), ((2, 3, 10, 7), (3, 4)),
                                       ((1, 2, 5, 9), (7, 11)), ((2, 2, 14, 14), (4, 4)),
                                       ((3, 23, 14, 14), (4, 4)), ((1, 2, 5, 23), (2, 3)),
                                       ((1, 2, 5, 24), (2, 5)), ((2, 3, 30, 26), (4, 3))])
def test_avg_backward_tiled_and_overlapping_bit_exact(shape, out):
    """Every backward path (bins tiling the plane; overlapping bins on rows
    shorter than ``SHORT_ROW``, across blocks of planes with a partial last
    block (3*23 = 2*32 + 5 planes), and on longer rows, plane by plane)
    gives exactly ``dx = sum over bins, in row-major order, of dout/|bin|``
    rounded after each addition, as the straightforward loop does."""
    from minicnn.kernels.adaptive import PLANE_BLOCK, SHORT_ROW
    assert (PLANE_BLOCK, SHORT_ROW) == (32, 24)          # the cases above straddle both
    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        dout = rng.standard_normal(shape[:2] + out).astype(dtype)
        dout[0, 0, 0, 0] = -0.0
        expect = _avg_backward_by_the_rule(dout, shape)
        dx = np.empty(shape, dtype)
        K.adaptive_avg_backward(dout, dx)
        np.testing.assert_array_equal(dx.view(np.uint8), expect.view(np.uint8))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 15), st.integers(1, 15), st.integers(1, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**16))
def test_avg_backward_bit_exact_any_bins(H, W, oh, ow, dtype, seed):
    """The row templates over any bins: overlapping, tiling, more bins than
    cells, single rows and columns."""
    rng = np.random.default_rng(seed)
    dout = (rng.standard_normal((2, 2, oh, ow)) * 10.0 ** rng.integers(-3, 4, (2, 2, oh, ow))).astype(dtype)
    dx = np.full((2, 2, H, W), np.nan, dtype)
    K.adaptive_avg_backward(dout, dx)
    expect = _avg_backward_by_the_rule(dout, dx.shape)
    np.testing.assert_array_equal(dx.view(np.uint8), expect.view(np.uint8))


def _avg_forward_by_the_rule(x, oh, ow):
    """The forward's documented order, in float64: for each row bin the
    column sums ``x[h0, w] + x[h0 + 1, w] + ...``, then each bin adds its
    columns' sums left to right and divides by its area."""
    N, C, H, W = x.shape
    y = np.empty((N, C, oh, ow), x.dtype)
    for i in range(oh):
        h0, h1 = (i * H) // oh, ((i + 1) * H + oh - 1) // oh
        col = x[:, :, h0, :].astype(np.float64)
        for h in range(h0 + 1, h1):
            col = col + x[:, :, h, :]
        for j in range(ow):
            w0, w1 = (j * W) // ow, ((j + 1) * W + ow - 1) // ow
            s = col[:, :, w0]
            for w in range(w0 + 1, w1):
                s = s + col[:, :, w]
            y[:, :, i, j] = s / ((h1 - h0) * (w1 - w0))
    return y


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 15), st.integers(1, 15), st.integers(2, 9), st.integers(1, 9),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**16))
def test_avg_forward_bit_exact_any_bins(H, W, oh, ow, dtype, seed):
    """The forward adds in the documented order (1x1, the global average,
    has its own order and is not drawn here)."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 3, H, W)) * 10.0 ** rng.integers(-3, 4, (2, 3, H, W))).astype(dtype)
    y = np.full((2, 3, oh, ow), np.nan, dtype)
    K.adaptive_avg_forward(x, y)
    np.testing.assert_array_equal(y.view(np.uint8), _avg_forward_by_the_rule(x, oh, ow).view(np.uint8))


@pytest.mark.parametrize("n", range(1, 12))
def test_avg_forward_bit_exact_every_bin_length(n):
    """Bins of every length 1..11 along each axis (one bin of all the rows
    and two of the columns, and the transpose): the sums go four rows or
    four columns per step plus a remainder, and each step length must keep
    the documented order."""
    rng = np.random.default_rng(n)
    for dtype in (np.float32, np.float64):
        for shape, out in [((2, 3, n, 9), (1, 2)), ((2, 3, 9, n), (2, 1))]:
            x = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(dtype)
            y = np.full(shape[:2] + out, np.nan, dtype)
            K.adaptive_avg_forward(x, y)
            expect = _avg_forward_by_the_rule(x, *out)
            np.testing.assert_array_equal(y.view(np.uint8), expect.view(np.uint8))


@pytest.mark.parametrize("hw", [(8, 8), (14, 14), (9, 7), (13, 10)])
@pytest.mark.parametrize("levels", [(1, 2, 4), (4, 2, 1), (3, 1), (1, 3, 4), (1,)])
@pytest.mark.parametrize("kind", ["normal", "ties", "nan"])
def test_spp_max_equals_level_by_level(hw, levels, kind):
    """SPP max merges coarse levels from the finest and routes every level's
    gradient in one kernel: same values, indices and gradient bits as pooling
    each level on its own and summing the levels' input gradients in order
    (overlapping bins, e.g. 14 -> 4, share argmax cells; ties make that common)."""
    if min(hw) < max(levels):
        return
    rng = np.random.default_rng(9)
    shape = (2, 3) + hw
    if kind == "normal":
        x = rng.standard_normal(shape)
    else:
        x = rng.integers(0, 2, shape).astype(np.float64)
        if kind == "nan":
            x[rng.random(shape) < 0.1] = np.nan
            x[rng.random(shape) < 0.1] = -0.0
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        layer = SpatialPyramidPool2D(levels, "max")
        y = layer.forward(xd)
        dout = rng.standard_normal(y.shape).astype(dtype)
        pieces, expect, start = [], np.zeros(shape, dtype), 0
        for v in levels:
            level = AdaptiveMaxPool2D(v)
            pieces.append(level.forward(xd).reshape(2, -1))
            d = dout[:, start:start + 3 * v * v].reshape(2, 3, v, v)
            start += 3 * v * v
            expect += level.backward(d)
        np.testing.assert_array_equal(y.view(np.uint8),
                                      np.concatenate(pieces, axis=1).view(np.uint8))
        np.testing.assert_array_equal(layer.backward(dout).view(np.uint8), expect.view(np.uint8))


def _merge_input(kind, shape, rng):
    if kind == "normal":
        return rng.standard_normal(shape)
    if kind == "signed_zeros":                      # -0.0 and 0.0 tie: the first one wins
        return rng.choice(np.array([0.0, -0.0, -1.0]), shape)
    x = rng.integers(0, 2, shape) * 1.0
    if kind == "nan":
        x[rng.random(shape) < 0.05] = np.nan
    return x


# (4, 4) -> (2, 2) and (8, 6) -> (4, 3) halve (the written-out path); the rest are general
@pytest.mark.parametrize("fine,coarse", [((4, 4), (2, 2)), ((8, 6), (4, 3)), ((4, 4), (1, 1)),
                                         ((6, 4), (3, 2)), ((6, 6), (2, 3))])
@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "signed_zeros"])
def test_max_merge_equals_direct_pooling(fine, coarse, kind):
    rng = np.random.default_rng(10)
    shape = (2, 3, 13, 11)
    x = _merge_input(kind, shape, rng)
    fy, fa = np.empty(shape[:2] + fine), np.empty(shape[:2] + fine, np.int64)
    K.adaptive_max_forward(x, fy, fa)
    y, a = np.empty(shape[:2] + coarse), np.empty(shape[:2] + coarse, np.int64)
    K.adaptive_max_merge(fy, fa, y, a)
    ry, ra = scan_max(x, *coarse)
    np.testing.assert_array_equal(a, ra)
    np.testing.assert_array_equal(y.view(np.uint8), ry.view(np.uint8))


@pytest.mark.parametrize("kind", ["normal", "ties", "nan", "signed_zeros"])
def test_chained_max_merges_equal_direct_pooling(kind):
    """4 -> 2 -> 1, as the pyramid computes levels (1, 2, 4): the merge rule
    is a total order on (value, index), so a merge of merges is the direct
    pooling too."""
    rng = np.random.default_rng(12)
    shape = (3, 4, 14, 14)
    x = _merge_input(kind, shape, rng).astype(np.float32)
    y, a = np.empty(shape[:2] + (4, 4), np.float32), np.empty(shape[:2] + (4, 4), np.int64)
    K.adaptive_max_forward(x, y, a)
    for v in (2, 1):
        y2, a2 = np.empty(shape[:2] + (v, v), np.float32), np.empty(shape[:2] + (v, v), np.int64)
        K.adaptive_max_merge(y, a, y2, a2)
        ry, ra = scan_max(x, v, v)
        np.testing.assert_array_equal(a2, ra)
        np.testing.assert_array_equal(y2.view(np.uint8), ry.view(np.uint8))
        y, a = y2, a2


SERIAL_NEW = {name: njit(parallel=False)(getattr(K, "_" + name))
              for name in ("adaptive_max_merge", "pyramid_max_backward")}


@pytest.mark.parametrize("shape", [(3, 5, 17, 11), (2, 3, 14, 14)])
def test_parallel_equals_serial_global_and_pyramid(shape):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(shape).astype(np.float32)
    x[0, 0, 2, 3] = np.nan
    N, C, H, W = shape
    dout = rng.standard_normal((N, C * 20)).astype(np.float32)
    results = []
    for get in (lambda name: getattr(K, name),
                lambda name: SERIAL[name] if name in SERIAL else SERIAL_NEW[name]):
        y1 = np.empty((N, C, 1, 1), np.float32)
        get("adaptive_avg_forward")(x, y1)
        dx1 = np.empty(shape, np.float32)
        get("adaptive_avg_backward")(y1, dx1)
        y4, a4 = np.empty((N, C, 4, 4), np.float32), np.empty((N, C, 4, 4), np.int64)
        get("adaptive_max_forward")(x, y4, a4)
        y2, a2 = np.empty((N, C, 2, 2), np.float32), np.empty((N, C, 2, 2), np.int64)
        get("adaptive_max_merge")(y4, a4, y2, a2)
        argmax = np.concatenate([a4.reshape(N, -1), a2.reshape(N, -1)], axis=1)
        dx = np.empty(shape, np.float32)
        get("pyramid_max_backward")(dout, argmax, np.array([4, 2], np.int64), dx)
        results.append((y1, dx1, y2, a2, dx))
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------- global max (1x1) fast path
PALETTE = {
    "normal": None,
    "nan": [np.nan, -np.nan, 1.0, -1.0, 0.0],
    "zeros": [0.0, -0.0, -1.0],
    "inf": [np.inf, -np.inf, 1.0, -1.0],
    "neg_inf": [-np.inf],
    "ties": [2.0, 1.0, -3.0],
    "tiny": [5e-45, -5e-45, 0.0, -0.0, np.finfo(np.float32).max, -np.finfo(np.float32).max],
}


def _plane_values(rng, kind, shape):
    if PALETTE[kind] is None:
        return rng.standard_normal(shape)
    return rng.choice(np.array(PALETTE[kind]), shape)


def _global_max_kernel(x, kernel=None):
    out = np.empty(x.shape[:2] + (1, 1), x.dtype)
    idx = np.empty(out.shape, np.int64)
    (kernel or K.adaptive_max_forward)(np.ascontiguousarray(x), out, idx)
    return out, idx


def _assert_same_bits(y, idx, ry, ridx):
    np.testing.assert_array_equal(idx, ridx)
    assert y.dtype == ry.dtype
    np.testing.assert_array_equal(y.view(np.uint8), ry.view(np.uint8))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 40), st.integers(1, 40),
       st.sampled_from(sorted(PALETTE)), st.integers(0, 2**32 - 1))
def test_global_max_matches_scan_bit_for_bit(N, C, H, W, kind, seed):
    """Pooling to 1x1 (float32: the integer-key path; float64: the general
    path) equals the plain ``v > best or isnan(v)`` scan: index and the bits
    of the value (which NaN, which zero), for planes shorter and longer
    than a vector, NaNs of both signs, signed zeros, infinities, ties."""
    rng = np.random.default_rng(seed)
    x = _plane_values(rng, kind, (N, C, H, W))
    for dtype in (np.float32, np.float64):
        xd = x.astype(dtype)
        ry, ridx = scan_max(xd, 1, 1)
        _assert_same_bits(*_global_max_kernel(xd), ry, ridx)
        y, idx = AdaptiveMaxPool2D(1, return_indices=True).forward(xd)
        _assert_same_bits(y, idx, ry, ridx)
        g = GlobalMaxPool2D().forward(xd)
        np.testing.assert_array_equal(g.view(np.uint8), ry.reshape(N, C).view(np.uint8))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("plane,value,index", [
    ([np.nan, 1.0, 2.0, 3.0], "nan", 0),                 # NaN first
    ([1.0, 2.0, np.nan, 3.0, 0.5], "nan", 2),            # NaN in the middle
    ([1.0, 2.0, 3.0, np.nan], "nan", 3),                 # NaN last
    ([np.nan] * 11, "nan", 10),                          # all NaN: the last one
    ([np.nan, 5.0, np.nan, -np.inf, np.nan, 9.0], "nan", 4),
    ([-0.0, 0.0], -0.0, 0),                              # the first zero, whatever its sign
    ([0.0, -0.0], 0.0, 0),
    ([-1.0, -0.0, 0.0, -2.0], -0.0, 1),
    ([-3.0, 0.0, -0.0, -0.0], 0.0, 1),
    ([1.0, np.inf, 3.0, np.inf], np.inf, 1),
    ([-np.inf] * 5, -np.inf, 0),                         # all -inf: the first
    ([-np.inf, -1e30, -np.inf], -1e30, 1),
    ([7.0], 7.0, 0),                                     # a 1x1 plane
    ([np.nan], "nan", 0),
    ([2.0, 3.0, 3.0, 1.0, 3.0], 3.0, 1),                 # ties: the first
    ([1.0] * 37 + [4.0] + [4.0] * 20, 4.0, 37),          # past the first vectors
])
def test_global_max_edge_planes(dtype, plane, value, index):
    x = np.array(plane, dtype).reshape(1, 1, 1, -1)
    for xs in (x, x.reshape(1, 1, -1, 1)):               # one row or one column
        y, idx = _global_max_kernel(xs)
        assert idx[0, 0, 0, 0] == index
        assert y.view(np.uint8).tobytes() == xs.reshape(-1)[index:index + 1].view(np.uint8).tobytes()
        if value == "nan":
            assert np.isnan(y[0, 0, 0, 0])
        else:
            assert y[0, 0, 0, 0] == value and np.signbit(y[0, 0, 0, 0]) == np.signbit(value)
        _assert_same_bits(y, idx, *scan_max(xs, 1, 1))


def test_global_max_nan_payload_and_sign_kept():
    """The output is the input cell itself: a NaN's sign and payload survive."""
    bits = np.array([0x3F800000, 0xFFC00001, 0x7FC00002, 0xFF800003, 0x40000000], np.uint32)
    x = bits.view(np.float32).reshape(1, 1, 1, 5)
    y, idx = _global_max_kernel(x)
    assert idx[0, 0, 0, 0] == 3 and y.view(np.uint32)[0, 0, 0, 0] == 0xFF800003


@pytest.mark.parametrize("shape", [(3, 5, 17, 11), (4, 8, 28, 28), (2, 3, 1, 1), (2, 2, 1, 5)])
def test_parallel_equals_serial_global_max(shape):
    rng = np.random.default_rng(12)
    for kind in ("normal", "nan", "zeros", "ties"):
        x = _plane_values(rng, kind, shape).astype(np.float32)
        a = _global_max_kernel(x)
        b = _global_max_kernel(x, SERIAL["adaptive_max_forward"])
        _assert_same_bits(*a, *b)
        _assert_same_bits(*a, *scan_max(x, 1, 1))
