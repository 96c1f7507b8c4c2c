"""Stochastic pooling and fractional max pooling against naive references and PyTorch."""
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numba import njit

from minicnn.gradcheck import check_gradients, tie_free
from minicnn.kernels import adaptive as KA
from minicnn.kernels import random_pooling as K
from minicnn.layers.random_pooling import FractionalMaxPool2D, StochasticPool2D

SETTINGS = settings(max_examples=30, deadline=None)


# ===================================================================== references
def windows(H, W, k, s):
    """(i, j, [(h, w) cells in row-major order]) for every pooling window."""
    oh, ow = (H - k[0]) // s[0] + 1, (W - k[1]) // s[1] + 1
    for i in range(oh):
        for j in range(ow):
            yield i, j, [(i * s[0] + a, j * s[1] + b) for a in range(k[0]) for b in range(k[1])]


def ref_stochastic_train(x, u, k, s):
    """Inverse-CDF sampling: the first cell m with u*S < a_0 + ... + a_m."""
    N, C, H, W = x.shape
    y = np.zeros(u.shape)
    idx = np.full(u.shape, -1, np.int64)
    for n in range(N):
        for c in range(C):
            for i, j, cells in windows(H, W, k, s):
                vals = [float(x[n, c, h, w]) for h, w in cells]
                S = 0.0
                for v in vals:
                    S += v
                if S == 0.0:
                    continue
                t, acc = u[n, c, i, j] * S, 0.0
                for (h, w), v in zip(cells, vals):
                    acc += v
                    if t < acc:
                        y[n, c, i, j], idx[n, c, i, j] = v, h * W + w
                        break
    return y, idx


def ref_stochastic_eval(x, dout, k, s):
    """y = sum(a^2)/sum(a) and dx_m += dout * (2 a_m S - Q) / S^2."""
    N, C, H, W = x.shape
    y = np.zeros(dout.shape)
    dx = np.zeros(x.shape)
    for n in range(N):
        for c in range(C):
            for i, j, cells in windows(H, W, k, s):
                a = np.array([x[n, c, h, w] for h, w in cells])
                S, Q = a.sum(), (a * a).sum()
                if S > 0:
                    y[n, c, i, j] = Q / S
                    for (h, w), am in zip(cells, a):
                        dx[n, c, h, w] += dout[n, c, i, j] * (2 * am * S - Q) / S**2
    return y, dx


def ref_intervals(u, L, out, k):
    """PyTorch's generate_intervals, in Python floats (IEEE double)."""
    if out == 1:
        return [L - k]
    alpha = (L - k) / (out - 1)
    return [int((i + u) * alpha) - int(u * alpha) for i in range(out - 1)] + [L - k]


def ref_fractional(x, samples, k, out):
    """Max and first-maximum index over windows built from the samples
    (u[..., 0] for the width, u[..., 1] for the height, PyTorch's layout)."""
    N, C, H, W = x.shape
    y = np.zeros((N, C) + out)
    idx = np.zeros((N, C) + out, np.int64)
    for n in range(N):
        for c in range(C):
            rows = ref_intervals(float(samples[n, c, 1]), H, out[0], k[0])
            cols = ref_intervals(float(samples[n, c, 0]), W, out[1], k[1])
            for i, r in enumerate(rows):
                for j, q in enumerate(cols):
                    win = x[n, c, r:r + k[0], q:q + k[1]]
                    m = int(np.argmax(win))
                    h, w = r + m // k[1], q + m % k[1]
                    y[n, c, i, j], idx[n, c, i, j] = x[n, c, h, w], h * W + w
    return y, idx


def ref_index_backward(x_shape, dout, idx):
    N, C, H, W = x_shape
    dx = np.zeros((N, C, H * W))
    for n, c, i, j in np.ndindex(dout.shape):
        if idx[n, c, i, j] >= 0:
            dx[n, c, idx[n, c, i, j]] += dout[n, c, i, j]
    return dx.reshape(x_shape)


# ============================================================== stochastic pooling
@st.composite
def stochastic_case(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    H, W = draw(st.integers(k[0], 9)), draw(st.integers(k[1], 9))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    return shape, k, s, draw(st.integers(0, 2**32 - 1))


def nonneg_input(shape, rng):
    """Non-negative values with exact zeros (as after a ReLU): all-zero windows occur."""
    return np.maximum(rng.standard_normal(shape), 0.0)


@SETTINGS
@given(stochastic_case())
def test_stochastic_train_matches_reference(case):
    shape, k, s, seed = case
    rng = np.random.default_rng(seed)
    x = nonneg_input(shape, rng)
    layer = StochasticPool2D(k, s, seed=seed)
    y = layer.forward(x)
    # documented draw: one uniform per output from default_rng(seed).random(y.shape)
    u = np.random.default_rng(seed).random(y.shape)
    ry, ridx = ref_stochastic_train(x, u, k, s)
    np.testing.assert_array_equal(y, ry)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_array_equal(layer.backward(dout), ref_index_backward(shape, dout, ridx))


@SETTINGS
@given(stochastic_case())
def test_stochastic_eval_matches_reference(case):
    shape, k, s, seed = case
    rng = np.random.default_rng(seed)
    x = nonneg_input(shape, rng)
    layer = StochasticPool2D(k, s, seed=seed).eval()
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape)
    ry, rdx = ref_stochastic_eval(x, dout, k, s)
    np.testing.assert_allclose(y, ry, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(layer.backward(dout), rdx, rtol=1e-10, atol=1e-12)


def test_stochastic_eval_is_sum_of_squares_over_sum():
    x = np.array([[[[1.0, 2.0, 0.0, 0.0],
                    [3.0, 4.0, 0.0, 0.0]]]])
    layer = StochasticPool2D(2).eval()
    np.testing.assert_allclose(layer.forward(x), [[[[30.0 / 10.0, 0.0]]]], rtol=1e-15)
    # d/da_m of Q/S = (2 a_m S - Q) / S^2; the all-zero window passes nothing
    dx = layer.backward(np.ones((1, 1, 1, 2)))
    np.testing.assert_allclose(dx[0, 0, :, :2], (2 * x[0, 0, :, :2] * 10 - 30) / 100, rtol=1e-15)
    assert not dx[0, 0, :, 2:].any()


def test_stochastic_all_zero_window_outputs_zero_without_gradient():
    layer = StochasticPool2D(2, seed=0)
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, 0, 0] = 5.0
    y = layer.forward(x)
    assert y[0, 1, 0, 0] == 5.0                      # the only non-zero cell is always sampled
    assert not y[0, 0].any() and not y[0, 1].ravel()[1:].any()
    dx = layer.backward(np.ones_like(y))
    assert dx[0, 1, 0, 0] == 1.0 and dx.sum() == 1.0


def test_stochastic_sampling_frequencies_follow_activations():
    """Each cell's count is Binomial(n, p_m), p_m = a_m / S: require |count - n p| <= 5 sigma."""
    cell = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 0.0]])        # p = 0, .1, .2, .3, .4, 0
    reps = (50, 200)                                           # 50 channels x 200 windows
    x = np.tile(cell, (1, 1, 1, reps[1]))
    x = np.repeat(x, reps[0], axis=1)                          # (1, 50, 2, 600)
    layer = StochasticPool2D((2, 3), seed=123)
    n = reps[0] * reps[1]
    counts = np.zeros((2, 3))
    for _ in range(2):                                         # two draws: n = 20,000 samples
        y = layer.forward(x)
        assert set(np.unique(y).tolist()) <= {1.0, 2.0, 3.0, 4.0}
        dx = layer.backward(np.ones_like(y))                   # 1 at each sampled cell
        counts += dx.reshape(reps[0], 2, reps[1], 3).sum(axis=(0, 2))
    total = 2 * n
    p = cell / cell.sum()
    assert counts.sum() == total
    assert counts[p == 0].sum() == 0                           # zero cells are never sampled
    sigma = np.sqrt(total * p * (1 - p))
    assert np.all(np.abs(counts - total * p) <= 5 * sigma + 1e-9), (counts, total * p)


def test_stochastic_train_output_is_one_of_the_window_values():
    rng = np.random.default_rng(8)
    x = nonneg_input((2, 3, 6, 6), rng) + 0.01
    y = StochasticPool2D(3, seed=1).forward(x)
    win = x.reshape(2, 3, 2, 3, 2, 3).transpose(0, 1, 2, 4, 3, 5).reshape(2, 3, 2, 2, 9)
    assert np.all(np.any(win == y[..., None], axis=-1))


def test_stochastic_seeded_reproducibility():
    x = nonneg_input((2, 3, 8, 8), np.random.default_rng(9)) + 0.1
    a, b = StochasticPool2D(2, seed=42), StochasticPool2D(2, seed=42)
    ya = [a.forward(x) for _ in range(3)]
    yb = [b.forward(x) for _ in range(3)]
    for p, q in zip(ya, yb):
        np.testing.assert_array_equal(p, q)
    assert not np.array_equal(ya[0], ya[1])                    # fresh draws each forward
    a.reseed(42)
    np.testing.assert_array_equal(a.forward(x), ya[0])
    assert not np.array_equal(StochasticPool2D(2, seed=43).forward(x), ya[0])


def test_stochastic_rejects_negative_and_nonfinite_input():
    layer = StochasticPool2D(2, seed=0)
    for bad in (-1e-3, np.nan, np.inf):
        x = np.ones((1, 1, 4, 4))
        x[0, 0, 2, 1] = bad
        with pytest.raises(ValueError, match="StochasticPool2D: input must be non-negative"):
            layer.forward(x)
        with pytest.raises(ValueError, match="StochasticPool2D: input must be non-negative"):
            layer.eval().forward(x)
        layer.train()


def test_stochastic_hyperparameter_validation():
    with pytest.raises(ValueError, match="StochasticPool2D: kernel_size"):
        StochasticPool2D(0)
    with pytest.raises(ValueError, match="StochasticPool2D: stride"):
        StochasticPool2D(2, stride=(1, 0))
    with pytest.raises(TypeError, match="StochasticPool2D: kernel_size"):
        StochasticPool2D(2.5)
    with pytest.raises(ValueError, match="StochasticPool2D: seed"):
        StochasticPool2D(2, seed=-1)
    with pytest.raises(TypeError, match="StochasticPool2D: seed"):
        StochasticPool2D(2, seed="x")
    with pytest.raises(ValueError, match="StochasticPool2D: input spatial size"):
        StochasticPool2D(3).forward(np.ones((1, 1, 2, 5)))


@pytest.mark.parametrize("k,s", [(2, None), (2, 1), ((2, 3), (1, 2))])
def test_stochastic_gradients_train(k, s):
    layer = StochasticPool2D(k, s, seed=0)
    x = tie_free((2, 2, 5, 7), np.random.default_rng(10), low=0.05, high=1.0)
    result = check_gradients(layer, x, seed=11, before_forward=lambda: layer.reseed(7))
    assert result.passed, result.errors


@pytest.mark.parametrize("k,s", [(2, None), (2, 1), ((2, 3), (1, 2))])
def test_stochastic_gradients_eval(k, s):
    layer = StochasticPool2D(k, s, seed=0).eval()
    x = tie_free((2, 2, 5, 7), np.random.default_rng(12), low=0.05, high=1.0)
    # Q/S is curved, and (2 a_m S - Q) / S^2 passes near 0 for some cells (e.g. 1.7e-4 for
    # (2, 3)/(1, 2)).  With eps = 1e-6 the round-off of the central difference (~1e-9) alone
    # gives such an entry a relative error of 2e-6; eps = 1e-5 cuts round-off tenfold while
    # the truncation error (~eps^2) stays ~1e-10.  The tolerance stays at the default 1e-6.
    result = check_gradients(layer, x, seed=13, eps=1e-5)
    assert result.passed, result.errors


def test_stochastic_gradcheck_catches_wrong_eval_backward():
    """Negative control: an eval backward with a small extra term must fail."""
    layer = StochasticPool2D(2).eval()
    good = layer.backward

    def wrong(dout):
        x = layer._cache[1]
        return good(dout) + 0.1 * x
    layer.backward = wrong
    x = tie_free((1, 1, 4, 4), np.random.default_rng(14), low=0.05, high=1.0)
    assert not check_gradients(layer, x).passed


def test_stochastic_config_and_dtypes():
    layer = StochasticPool2D((2, 3), (1, 2), seed=5)
    rebuilt = StochasticPool2D(**json.loads(json.dumps(layer.config())))
    assert rebuilt.config() == layer.config() == {"kernel_size": [2, 3], "stride": [1, 2],
                                                   "seed": 5}
    x = nonneg_input((1, 2, 5, 7), np.random.default_rng(15))
    y32 = rebuilt.forward(x.astype(np.float32))
    assert y32.dtype == np.float32 and rebuilt.backward(np.ones_like(y32)).dtype == np.float32
    np.testing.assert_array_equal(y32, layer.forward(x).astype(np.float32))  # same seed, same picks
    assert StochasticPool2D(2).forward(np.ones((1, 1, 2, 2), np.int64)).dtype == np.float32


# ============================================================ fractional max pooling
@settings(max_examples=200, deadline=None)
@given(st.integers(1, 40), st.integers(1, 6), st.integers(1, 40),
       st.floats(0, 1, exclude_max=True))
def test_fractional_intervals_equal_pytorch_formula(L, k, out, u):
    """Bit-exact against generate_intervals evaluated in Python doubles (any u in [0, 1))."""
    assume(k + out - 1 <= L)
    seq = K.fractional_intervals(np.array([u]), L, out, k)[0]
    assert seq.tolist() == ref_intervals(u, L, out, k)


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 60), st.integers(1, 5), st.integers(1, 60), st.integers(0, 2**32 - 1))
def test_fractional_windows_follow_grahams_sequence(L, k, out, seed):
    """seq[-1] = L - k; for out > 1 also seq[0] = 0, steps of floor(alpha) or ceil(alpha) with
    alpha = (L-k)/(out-1) exactly, and when ceil(alpha) <= k the windows cover every cell."""
    assume(k + out - 1 <= L)
    u = np.random.default_rng(seed).random(8)
    for seq in K.fractional_intervals(u, L, out, k):
        assert seq[-1] == L - k          # the last window ends at the input's edge
        if out == 1:
            assert seq.tolist() == [L - k]
        else:
            assert seq[0] == 0
            alpha = Fraction(L - k, out - 1)
            assert set(np.diff(seq).tolist()) <= {math.floor(alpha), math.ceil(alpha)}
            if math.ceil(alpha) <= k:
                covered = np.zeros(L, bool)
                for start in seq:
                    covered[start:start + k] = True
                assert covered.all()


def test_fractional_intervals_keep_float32_arithmetic():
    u = np.float32(0.7)
    seq = K.fractional_intervals(np.array([u], np.float32), 100, 7, 3)[0]
    alpha = np.float32(97) / np.float32(6)
    expect = [int((np.float32(i) + u) * alpha) - int(u * alpha) for i in range(6)] + [97]
    assert seq.tolist() == expect


@st.composite
def fractional_case(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    H, W = draw(st.integers(k[0], 12)), draw(st.integers(k[1], 12))
    out = (draw(st.integers(1, H - k[0] + 1)), draw(st.integers(1, W - k[1] + 1)))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), H, W)
    return shape, k, out, draw(st.integers(0, 2**32 - 1)), draw(st.booleans())


@SETTINGS
@given(fractional_case())
def test_fractional_matches_reference(case):
    shape, k, out, seed, with_ties = case
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 3, shape).astype(np.float64) if with_ties else rng.standard_normal(shape)
    layer = FractionalMaxPool2D(k, output_size=out, seed=seed, return_indices=True)
    y, idx = layer.forward(x)
    assert layer.samples.shape == shape[:2] + (2,) and layer.samples.dtype == np.float64
    ry, ridx = ref_fractional(x, layer.samples, k, out)
    np.testing.assert_array_equal(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), ref_index_backward(shape, dout, ridx),
                               rtol=1e-12, atol=1e-14)


def test_fractional_output_shapes():
    x = np.zeros((2, 3, 10, 9))
    assert FractionalMaxPool2D(2, output_size=(3, 4), seed=0).forward(x).shape == (2, 3, 3, 4)
    assert FractionalMaxPool2D(3, output_size=5, seed=0).forward(x).shape == (2, 3, 5, 5)
    # output_ratio: oH = int(H * r_h), oW = int(W * r_w)
    assert FractionalMaxPool2D(2, output_ratio=(0.5, 0.7), seed=0).forward(x).shape == (2, 3, 5, 6)
    assert FractionalMaxPool2D((2, 3), output_ratio=0.5, seed=0).forward(x).shape == (2, 3, 5, 4)


def test_fractional_validation_rules():
    with pytest.raises(ValueError, match="either an output_size or an output_ratio"):
        FractionalMaxPool2D(2)
    with pytest.raises(ValueError, match="only one of output_size and output_ratio"):
        FractionalMaxPool2D(2, output_size=3, output_ratio=0.5)
    for bad in (0.0, 1.0, 1.5, -0.2, (0.5, 1.0), (0.0, 0.5)):
        with pytest.raises(ValueError, match="output_ratio must be between 0 and 1"):
            FractionalMaxPool2D(2, output_ratio=bad)
    with pytest.raises(TypeError, match="output_ratio"):
        FractionalMaxPool2D(2, output_ratio="half")
    with pytest.raises(ValueError, match="FractionalMaxPool2D: kernel_size must be > 0"):
        FractionalMaxPool2D((0, 2), output_size=2)
    with pytest.raises(ValueError, match="FractionalMaxPool2D: output_size must be > 0"):
        FractionalMaxPool2D(2, output_size=(2, 0))
    # PyTorch's "output_size + kernel_size - 1 <= input size", checked at forward
    layer = FractionalMaxPool2D(3, output_size=(4, 2), seed=0)
    with pytest.raises(ValueError) as err:
        layer.forward(np.zeros((1, 1, 5, 5)))
    msg = str(err.value)
    assert "FractionalMaxPool2D" in msg and "kernel_size + output_size - 1 <= input size" in msg
    assert "pool height 3 + output height 4 - 1 = 6 > input height 5" in msg
    layer.forward(np.zeros((1, 1, 6, 5)))                    # 3 + 4 - 1 = 6 fits
    with pytest.raises(ValueError, match="width"):
        FractionalMaxPool2D((1, 4), output_size=(1, 3), seed=0).forward(np.zeros((1, 1, 3, 5)))
    with pytest.raises(ValueError, match="output_ratio"):
        FractionalMaxPool2D(2, output_ratio=0.1, seed=0).forward(np.zeros((1, 1, 5, 5)))


def test_fractional_seeded_reproducibility():
    x = np.random.default_rng(16).standard_normal((2, 3, 11, 11))
    a = FractionalMaxPool2D(2, output_size=6, seed=3)
    b = FractionalMaxPool2D(2, output_size=6, seed=3)
    first = a.forward(x)
    np.testing.assert_array_equal(first, b.forward(x))
    np.testing.assert_array_equal(a.samples, b.samples)
    a.forward(x)
    assert not np.array_equal(a.samples, b.samples)         # fresh samples each forward
    a.reseed(3)
    np.testing.assert_array_equal(a.forward(x), first)


@pytest.mark.parametrize("k,out", [(2, (4, 5)), ((2, 3), (6, 3)), (3, (1, 2))])
def test_fractional_gradients(k, out):
    layer = FractionalMaxPool2D(k, output_size=out, seed=0)
    x = tie_free((2, 2, 7, 8), np.random.default_rng(17))
    result = check_gradients(layer, x, seed=18, before_forward=lambda: layer.reseed(4))
    assert result.passed, result.errors


def test_fractional_config_round_trip():
    for layer in (FractionalMaxPool2D((2, 3), output_size=(4, 5), seed=1),
                  FractionalMaxPool2D(2, output_ratio=(0.5, 0.75), return_indices=True)):
        rebuilt = FractionalMaxPool2D(**json.loads(json.dumps(layer.config())))
        assert rebuilt.config() == layer.config()


# ============================================================= parallel == serial
def serial(name):
    return njit(parallel=False)(getattr(K, "_" + name))


def test_parallel_equals_serial_float32():
    rng = np.random.default_rng(19)
    x = nonneg_input((3, 5, 13, 11), rng).astype(np.float32)
    k, s = (3, 2), (2, 1)
    oh, ow = (13 - 3) // 2 + 1, (11 - 2) // 1 + 1
    u = rng.random((3, 5, oh, ow))
    dout = rng.standard_normal((3, 5, oh, ow)).astype(np.float32)
    rows = K.fractional_intervals(rng.random((3, 5)).astype(np.float32), 13, 6, 3)
    cols = K.fractional_intervals(rng.random((3, 5)).astype(np.float32), 11, 5, 2)
    outs = []
    for get in (lambda name: getattr(K, name), serial):
        y = np.empty((3, 5, oh, ow), np.float32)
        idx = np.empty(y.shape, np.int64)
        get("stochastic_pool_forward")(x, u, *k, *s, y, idx)
        ye = np.empty_like(y)
        get("stochastic_pool_eval_forward")(x, *k, *s, ye)
        dxe = np.empty_like(x)
        get("stochastic_pool_eval_backward")(x, dout, *k, *s, dxe)
        yf = np.empty((3, 5, 6, 5), np.float32)
        idf = np.empty(yf.shape, np.int64)
        get("fractional_max_forward")(x, rows, cols, 3, 2, yf, idf)
        outs.append((y, idx, ye, dxe, yf, idf))
    # the shared routing backward, parallel vs serial
    dx_p = np.empty_like(x)
    KA.argmax_backward(dout, outs[0][1], dx_p)
    dx_s = np.empty_like(x)
    njit(parallel=False)(KA._argmax_backward)(dout, outs[0][1], dx_s)
    outs[0] += (dx_p,)
    outs[1] += (dx_s,)
    for a, b in zip(*outs):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


# ================================================================ PyTorch oracle
@pytest.mark.parametrize("shape,k,size,ratio", [
    ((2, 3, 10, 9), 2, (5, 4), None),
    ((1, 2, 25, 31), (3, 2), (8, 13), None),
    ((2, 2, 12, 12), 2, None, (0.5, 0.7)),
    ((3, 1, 32, 32), 3, None, 0.5),
    ((1, 2, 7, 6), 3, (1, 4), None),
])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_fractional_matches_torch(shape, k, size, ratio, dtype):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(20)
    x = rng.standard_normal(shape).astype(dtype)
    layer = FractionalMaxPool2D(k, output_size=size, output_ratio=ratio, seed=21,
                                return_indices=True)
    y, idx = layer.forward(x)
    assert layer.samples.dtype == dtype
    xt = torch.tensor(x, requires_grad=True)
    yt, it = torch.nn.functional.fractional_max_pool2d(
        xt, k, output_size=size, return_indices=True,
        output_ratio=(ratio, ratio) if isinstance(ratio, float) else ratio,   # F needs a pair
        _random_samples=torch.tensor(layer.samples))   # (N, C, 2): [..., 0] width, [..., 1] height
    np.testing.assert_array_equal(idx, it.numpy())
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dout = rng.standard_normal(y.shape).astype(dtype)
    yt.backward(torch.tensor(dout))
    np.testing.assert_array_equal(layer.backward(dout), xt.grad.numpy())


def test_fractional_nan_propagates_like_torch():
    torch = pytest.importorskip("torch")
    x = np.arange(36, dtype=np.float64).reshape(1, 1, 6, 6)
    x[0, 0, 1, 1] = x[0, 0, 2, 3] = np.nan
    layer = FractionalMaxPool2D(3, output_size=(3, 3), seed=22, return_indices=True)
    y, idx = layer.forward(x)
    assert np.isnan(y).any()
    yt, it = torch.nn.functional.fractional_max_pool2d(
        torch.tensor(x), 3, output_size=(3, 3), return_indices=True,
        _random_samples=torch.tensor(layer.samples))
    np.testing.assert_array_equal(y, yt.numpy())          # NaN positions equal too
    np.testing.assert_array_equal(idx, it.numpy())


PLANE_SERIAL = njit(getattr(K._fractional_plane, "py_func", K._fractional_plane))
FRACTIONAL_SERIAL = njit(K._fractional_max_forward)


def _fractional_by_windows(x, rows, cols, k, out, argmax):
    """The general window-by-window kernel on every plane (the reference for
    the written-out 2x2 and 3x3 paths)."""
    N, C, H, W = x.shape
    T = k[0] * k[1]
    taps = np.array([(t // k[1]) * W + t % k[1] for t in range(T)], np.int64)
    P = N * C
    plane = PLANE_SERIAL
    for p in range(P):
        plane(x.reshape(P, H * W), p, rows.reshape(P, -1), cols.reshape(P, -1), W, taps,
              out.reshape((P,) + out.shape[2:]), argmax.reshape((P,) + out.shape[2:]))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fractional_written_out_paths_equal_general_kernel(k, dtype):
    """Kernels 2x2 and 3x3 take written-out taps with branch-free selects;
    values, indices and NaN handling (a plane with a NaN goes the general
    way) equal the general kernel's bit for bit, on ties, signed zeros,
    infinities and NaNs, threaded and serial."""
    rng = np.random.default_rng(23 + k)
    N, C, H, W = 3, 4, 11, 9
    x = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, 2.5], dtype), (N, C, H, W))
    x[0, 1, 3, 4] = np.nan
    x[1, 2, 0, 0] = x[1, 2, 5, 5] = np.nan
    x[2] = rng.standard_normal((C, H, W))
    oh, ow = 6, 5
    rows = K.fractional_intervals(rng.random((N, C)), H, oh, k)
    cols = K.fractional_intervals(rng.random((N, C)), W, ow, k)
    want_y = np.empty((N, C, oh, ow), dtype)
    want_i = np.empty((N, C, oh, ow), np.int64)
    _fractional_by_windows(x, rows, cols, (k, k), want_y, want_i)
    for kernel in (K.fractional_max_forward, FRACTIONAL_SERIAL):
        y = np.empty_like(want_y)
        idx = np.empty_like(want_i)
        kernel(x, rows, cols, k, k, y, idx)
        np.testing.assert_array_equal(idx, want_i)
        np.testing.assert_array_equal(y.view(np.uint8), want_y.view(np.uint8))
    assert np.isnan(want_y[0, 1]).any() and np.isnan(want_y[1, 2]).any()


@pytest.mark.parametrize("scale", [1e-300, 1e-160, 1e150, 1e300])
def test_stochastic_eval_mode_is_exact_at_any_scale(scale):
    """Q/S is homogeneous of degree 1 and its gradient of degree 0, so
    scaling the input by ``scale`` scales the output and leaves dx alone.
    Computed as Q/S and dout/S**2 they overflowed or underflowed far from
    1 (an audit found inf/NaN gradients at 1e-160 and NaN outputs near the
    largest float)."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0.1, 1.0, (2, 3, 6, 6))
    x[0, 0, :2, :2] = 0.0                                   # a window with S = 0
    dout = rng.standard_normal((2, 3, 3, 3))
    ref = StochasticPool2D(2, seed=0).eval()
    y_ref = ref.forward(x)
    dx_ref = ref.backward(dout)
    layer = StochasticPool2D(2, seed=0).eval()
    y = layer.forward(x * scale)
    np.testing.assert_allclose(y, y_ref * scale, rtol=1e-13, atol=0)
    np.testing.assert_allclose(layer.backward(dout), dx_ref, rtol=1e-12, atol=1e-15)
    assert y[0, 0, 0, 0] == 0.0 and np.all(layer.backward(dout)[0, 0, :2, :2] == 0.0)


def test_stochastic_training_mode_samples_where_the_sum_overflows():
    """Cells near the largest float: S = inf, so every a/S was 0 and no cell
    could be drawn (output 0, no gradient).  Now the draw runs on the cells
    divided by the window's largest one."""
    x = np.full((1, 2, 4, 4), 1.5e308)
    layer = StochasticPool2D(2, seed=3)
    y = layer.forward(x)
    assert np.all(y == 1.5e308)
    dx = layer.backward(np.ones_like(y))
    assert dx.sum() == y.size and np.all(dx.reshape(2, 2, 2, 2, 2).sum(axis=(2, 4)) == 1)
