"""Conv2D against a naive loop reference, its kernels' serial compile, and PyTorch."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import minicnn
from minicnn.gradcheck import check_gradients, tie_free
from minicnn.kernels import conv as K
from minicnn.kernels import conv_direct as D
from minicnn.layers.conv import Conv2D

SETTINGS = settings(max_examples=30, deadline=None)


# --------------------------------------------------------------- naive reference
def _pad(x, ph, pw):
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=np.float64)
    xp[:, :, ph:ph + H, pw:pw + W] = x
    return xp


def naive_conv_forward(x, w, b, stride, padding):
    """y[n, f, oh, ow] = b[f] + sum_{c,i,j} w[f, c, i, j] * x_pad[n, c, oh*sh + i, ow*sw + j]."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    xp = _pad(x, ph, pw)
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    y = np.zeros((N, F, Ho, Wo))
    for n in range(N):
        for f in range(F):
            for oh in range(Ho):
                for ow in range(Wo):
                    acc = b[f]
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                acc += w[f, c, i, j] * xp[n, c, oh * sh + i, ow * sw + j]
                    y[n, f, oh, ow] = acc
    return y


def naive_conv_backward(x, w, dout, stride, padding):
    """Each output element's gradient flows back to its window: dx_pad += g * w[f],
    dw[f] += g * window, db[f] += g; then the padding is cropped off dx_pad."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    F, _, kh, kw = w.shape
    xp = _pad(x, ph, pw)
    dxp = np.zeros_like(xp)
    dw = np.zeros(w.shape)
    db = np.zeros(F)
    _, _, Ho, Wo = dout.shape
    for n in range(N):
        for f in range(F):
            for oh in range(Ho):
                for ow in range(Wo):
                    g = dout[n, f, oh, ow]
                    db[f] += g
                    for c in range(C):
                        for i in range(kh):
                            for j in range(kw):
                                h, v = oh * sh + i, ow * sw + j
                                dw[f, c, i, j] += g * xp[n, c, h, v]
                                dxp[n, c, h, v] += g * w[f, c, i, j]
    return dxp[:, :, ph:ph + H, pw:pw + W], dw, db


@st.composite
def conv_cases(draw):
    """(N, C_in, C_out, H, W, (kh, kw), (sh, sw), (ph, pw)) with a valid output size."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, kh - 2 * ph), 7))
    W = draw(st.integers(max(1, kw - 2 * pw), 7))
    N, C, F = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    return N, C, F, H, W, (kh, kw), (sh, sw), (ph, pw), seed


@st.composite
def direct_cases(draw):
    """Cases the direct algorithm can take: 3x3, stride 1, any padding,
    odd and even filter counts, planes down to a single output cell."""
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, 3 - 2 * ph), 9))
    W = draw(st.integers(max(1, 3 - 2 * pw), 9))
    N, C, F = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    return N, C, F, H, W, (3, 3), (1, 1), (ph, pw), seed


# Conv2D.direct_max_taps for each algorithm: 0 turns the direct one off,
# a huge value sends every 3x3 stride-1 layer to it.
ALGORITHMS = {"im2col": 0, "direct": 10**6}


def _layer64(C, F, k, s, p, rng, algorithm="im2col", chunk_floats=Conv2D.chunk_floats):
    layer = Conv2D(C, F, k, stride=s, padding=p).astype(np.float64)
    layer.direct_max_taps = ALGORITHMS[algorithm]
    layer.chunk_floats = chunk_floats
    layer.params["W"][...] = rng.standard_normal(layer.params["W"].shape)
    layer.params["b"][...] = rng.standard_normal(F)
    return layer


# --------------------------------------------------------- forward and backward
def _check_forward(case, algorithm, chunk_floats=Conv2D.chunk_floats):
    N, C, F, H, W, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    layer = _layer64(C, F, k, s, p, rng, algorithm, chunk_floats)
    x = rng.standard_normal((N, C, H, W))
    y = layer.forward(x)
    assert layer._direct == (algorithm == "direct" and k == (3, 3) and s == (1, 1))
    ref = naive_conv_forward(x, layer.params["W"], layer.params["b"], s, p)
    assert y.dtype == np.float64
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)


def _check_backward(case, algorithm, chunk_floats=Conv2D.chunk_floats):
    N, C, F, H, W, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    layer = _layer64(C, F, k, s, p, rng, algorithm, chunk_floats)
    x = rng.standard_normal((N, C, H, W))
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout)
    rdx, rdw, rdb = naive_conv_backward(x, layer.params["W"], dout, s, p)
    assert dx.shape == x.shape and dx.dtype == np.float64
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], rdw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], rdb, rtol=1e-12, atol=1e-12)
    # backward_params (the first layer's call) gives the same dW and db
    layer.grads["W"][...] = np.nan
    layer.grads["b"][...] = np.nan
    assert layer.backward_params(dout) is None
    np.testing.assert_allclose(layer.grads["W"], rdw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], rdb, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(conv_cases())
def test_forward_matches_naive(case):
    _check_forward(case, "im2col")


@SETTINGS
@given(conv_cases())
def test_backward_matches_naive(case):
    _check_backward(case, "im2col")


@SETTINGS
@given(conv_cases(), st.integers(1, 5000))
def test_forward_in_chunks_of_samples_matches_naive(case, chunk_floats):
    """The im2col path a few samples at a time (1 up to the whole batch,
    with a shorter last chunk) gives the same output."""
    _check_forward(case, "im2col", chunk_floats)


@SETTINGS
@given(conv_cases(), st.integers(1, 5000))
def test_backward_in_chunks_of_samples_matches_naive(case, chunk_floats):
    """dW summed over chunks whose columns are formed again, and dx folded
    chunk by chunk, are the same gradients."""
    _check_backward(case, "im2col", chunk_floats)


@pytest.mark.parametrize("N, chunk_floats, sizes", [
    (5, 0, [5]),                     # 0: the whole batch
    (5, 5 * 2 * 9 * 16, [5]),        # room for all (C*kh*kw*P = 2*9*16 a sample)
    (5, 2 * 2 * 9 * 16, [2, 2, 1]),  # 3 chunks of ceil(5/3) = 2
    (6, 4 * 2 * 9 * 16, [3, 3]),     # 2 equal chunks, not 4 + 2
    (3, 1, [1, 1, 1]),               # fewer floats than one sample: one sample a chunk
    (3, 288.0, [1, 1, 1]),           # a float limit counts as its integer part
])
def test_chunks_of_samples(monkeypatch, N, chunk_floats, sizes):
    """Which chunks forward, backward and backward_params cut the batch
    into, and that each chunk's columns are formed once in forward and
    once more in backward only when the batch was cut; the gradients and
    output equal those of the whole batch at once."""
    import minicnn.layers.conv as conv_module
    calls = {"im2col": [], "col2im": []}

    def spy(name):
        def f(*args):
            calls[name].append(args[-1].shape[0] if name == "col2im" else args[0].shape[0])
            return getattr(K, name)(*args)
        return f
    monkeypatch.setattr(conv_module, "im2col", spy("im2col"))
    monkeypatch.setattr(conv_module, "col2im", spy("col2im"))
    x = np.random.default_rng(0).standard_normal((N, 2, 4, 4))
    out = {}
    for chunk in (0, chunk_floats):
        want = sizes if chunk else [N]
        layer = _layer64(2, 3, 3, 1, 1, np.random.default_rng(1), chunk_floats=chunk)
        assert layer.chunk_size(N, 4, 4) == want[0]
        y = layer.forward(x)
        assert calls["im2col"] == want
        dout = np.random.default_rng(2).standard_normal(y.shape)
        calls["im2col"].clear()
        dx = layer.backward(dout)
        again = [] if len(want) == 1 else want
        assert calls == {"im2col": again, "col2im": want}
        dw = layer.grads["W"].copy()
        calls["im2col"].clear(), calls["col2im"].clear()
        layer.grads["W"][...] = np.nan
        assert layer.backward_params(dout) is None
        assert calls == {"im2col": again, "col2im": []}
        np.testing.assert_array_equal(layer.grads["W"], dw)
        calls["im2col"].clear()
        out[chunk] = (y, dx, dw, layer.grads["b"].copy())
    for a, b in zip(out[0], out[chunk_floats]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


def test_backward_of_an_empty_batch():
    for chunk in (Conv2D.chunk_floats, 1, 0):
        layer = Conv2D(2, 3, 3, padding=1)
        layer.chunk_floats = chunk
        y = layer.forward(np.zeros((0, 2, 4, 4), np.float32))
        assert y.shape == (0, 3, 4, 4)
        assert layer.backward(np.zeros(y.shape, np.float32)).shape == (0, 2, 4, 4)
        assert not layer.grads["W"].any() and not layer.grads["b"].any()


@SETTINGS
@given(direct_cases())
def test_direct_forward_matches_naive(case):
    _check_forward(case, "direct")


@SETTINGS
@given(direct_cases())
def test_direct_backward_matches_naive(case):
    _check_backward(case, "direct")


def test_direct_rule():
    """The default rule: 3x3, stride 1, C_in*9 <= 36 (1 to 4 input channels)."""
    assert Conv2D(1, 32, 3, padding=1).uses_direct(1)
    assert Conv2D(4, 8, 3).uses_direct(4)
    assert not Conv2D(5, 8, 3, padding=1).uses_direct(5)
    assert not Conv2D(1, 8, 3, stride=2, padding=1).uses_direct(1)
    assert not Conv2D(1, 8, 5, padding=2).uses_direct(1)
    assert not Conv2D(1, 8, (3, 1)).uses_direct(1)


@pytest.mark.parametrize("C, F, H", [(1, 8, 28), (1, 32, 28), (3, 5, 17)])
def test_direct_float32_close_to_im2col(C, F, H):
    """The training shapes in float32: the two algorithms differ only in
    the order of the additions."""
    rng = np.random.default_rng(5)
    minicnn.manual_seed(5)
    a = Conv2D(C, F, 3, padding=1)
    b = Conv2D(C, F, 3, padding=1)
    b.params["W"][...] = a.params["W"]
    b.params["b"][...] = rng.standard_normal(F)
    a.params["b"][...] = b.params["b"]
    a.direct_max_taps, b.direct_max_taps = ALGORITHMS["direct"], ALGORITHMS["im2col"]
    x = rng.standard_normal((16, C, H, H)).astype(np.float32)
    ya, yb = a.forward(x), b.forward(x)
    assert a._direct and not b._direct and ya.dtype == np.float32
    np.testing.assert_allclose(ya, yb, rtol=1e-5, atol=1e-5)
    g = rng.standard_normal(ya.shape).astype(np.float32)
    np.testing.assert_allclose(a.backward(g), b.backward(g), rtol=1e-5, atol=1e-5)
    for k in ("W", "b"):
        ref = b.grads[k]
        np.testing.assert_allclose(a.grads[k], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_naive_reference_sanity():
    """The reference itself on a hand-computed case: 1x1 input channel,
    2x2 kernel of ones, padding 1 -> every output is the sum of its window."""
    x = np.arange(4.0).reshape(1, 1, 2, 2)          # [[0, 1], [2, 3]]
    w = np.ones((1, 1, 2, 2))
    y = naive_conv_forward(x, w, np.array([0.5]), (1, 1), (1, 1))
    np.testing.assert_array_equal(y[0, 0], [[0.5, 1.5, 1.5], [2.5, 6.5, 4.5], [2.5, 5.5, 3.5]])


@pytest.mark.parametrize("chunk_floats", [Conv2D.chunk_floats, 1])   # whole batch; 1 sample a chunk
@pytest.mark.parametrize("algorithm", ["im2col", "direct"])
@pytest.mark.parametrize("k, s, p, hw", [
    (3, 1, 1, (5, 6)),
    (3, 1, (0, 2), (4, 3)),
    ((2, 3), 2, (1, 0), (7, 6)),
    (3, 3, 2, (4, 4)),          # stride == kernel: every input pixel in exactly one window
    (1, 2, 0, (5, 5)),          # stride > kernel: some pixels in no window -> dx exactly 0 there
])
def test_check_gradients(k, s, p, hw, algorithm, chunk_floats):
    rng = np.random.default_rng(0)
    minicnn.manual_seed(0)
    layer = Conv2D(2, 3, k, stride=s, padding=p)
    layer.direct_max_taps = ALGORITHMS[algorithm]
    layer.chunk_floats = chunk_floats
    result = check_gradients(layer, tie_free((2, 2) + hw, rng))
    assert result.passed, result.errors
    assert set(result.errors) == {"x", "W", "b"}
    assert layer._direct == (algorithm == "direct" and k == 3 and s == 1)


# ------------------------------------------------- parallel == serial, bit for bit
@pytest.fixture(scope="module")
def serial():
    return {name: njit(parallel=False)(getattr(K, "_" + name))
            for name in ("im2col", "col2im", "nchw_from_rows", "rows_from_nchw")}


@settings(max_examples=20, deadline=None)
@given(conv_cases())
def test_parallel_kernels_equal_serial(serial, case):
    N, C, F, H, W, (kh, kw), (sh, sw), (ph, pw), seed = case
    rng = np.random.default_rng(seed)
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    rows, cols_n = C * kh * kw, N * Ho * Wo

    # NaN-filled outputs: an entry a kernel forgets to write stays NaN and fails.
    a, b = np.full((rows, cols_n), np.nan, np.float32), np.full((rows, cols_n), np.nan, np.float32)
    K.im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, a)
    serial["im2col"](x, kh, kw, sh, sw, ph, pw, Ho, Wo, b)
    assert np.isfinite(a).all()
    assert np.array_equal(a, b)

    dcols = rng.standard_normal((rows, cols_n)).astype(np.float32)
    a, b = np.full(x.shape, np.nan, np.float32), np.full(x.shape, np.nan, np.float32)
    K.col2im(dcols, kh, kw, sh, sw, ph, pw, Ho, Wo, a)
    serial["col2im"](dcols, kh, kw, sh, sw, ph, pw, Ho, Wo, b)
    assert np.isfinite(a).all()
    assert np.array_equal(a, b)

    P = Ho * Wo
    y2d = rng.standard_normal((F, N * P)).astype(np.float32)
    bias = rng.standard_normal(F).astype(np.float32)
    a, b = np.full((N, F, P), np.nan, np.float32), np.full((N, F, P), np.nan, np.float32)
    K.nchw_from_rows(y2d, bias, a)
    serial["nchw_from_rows"](y2d, bias, b)
    assert np.array_equal(a, b)
    np.testing.assert_array_equal(a, y2d.reshape(F, N, P).transpose(1, 0, 2) + bias[None, :, None])

    d = rng.standard_normal((N, F, P)).astype(np.float32)
    a, b = np.full((F, N * P), np.nan, np.float32), np.full((F, N * P), np.nan, np.float32)
    K.rows_from_nchw(d, a)
    serial["rows_from_nchw"](d, b)
    assert np.array_equal(a, b)
    np.testing.assert_array_equal(a, d.transpose(1, 0, 2).reshape(F, N * P))


DIRECT_KERNELS = (("forward", {}), ("weight_grad", {"fastmath": {"reassoc"}}))
NO_ARGMAX = np.empty((0, 0, 0, 0), np.int64)   # weight_grad's argmax argument when not pooled


@pytest.fixture(scope="module")
def serial_direct():
    """The direct kernels compiled serially, once per module (a build takes
    seconds; inside each example it cost the suite ~100 s)."""
    return {name: njit(parallel=False, **opts)(getattr(D, "_" + name)) for name, opts in DIRECT_KERNELS}


@settings(max_examples=20, deadline=None)
@given(direct_cases())
def test_direct_kernels_parallel_equal_serial(serial_direct, case):
    """The direct kernels, threaded and compiled serially, agree bit for bit
    (the weight gradient's reassociated sums included).  NaN-filled outputs
    and scratch: an entry a kernel forgets to write stays NaN and fails."""
    N, C, F, H, W, _, _, (ph, pw), seed = case
    rng = np.random.default_rng(seed)
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Ho, Wo = Hp - 2, Wp - 2
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((F, C, 3, 3)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    g = rng.standard_normal((N, F, Ho, Wo)).astype(np.float32)

    def run(k):
        xp = np.full((N, C, Hp, Wp), np.nan, np.float32)
        y = np.full((N, F, Ho, Wo), np.nan, np.float32)
        k["forward"](x, ph, pw, w, b, xp, np.full((N, 2, Ho * Wp), np.nan, np.float32), y)
        dw, db = np.full(w.shape, np.nan, np.float32), np.full(F, np.nan, np.float32)
        k["weight_grad"](xp, g, NO_ARGMAX, False, np.full((N, C, 2, Hp * Wp - 2), np.nan, np.float32),
                         np.full((F, Ho * Wp), np.nan, np.float32), dw, db)
        return xp, y, dw, db

    threaded = run({name: getattr(D, name) for name, _ in DIRECT_KERNELS})
    serial = run(serial_direct)
    want_xp = np.zeros((N, C, Hp, Wp), np.float32)
    want_xp[:, :, ph:ph + H, pw:pw + W] = x
    np.testing.assert_array_equal(threaded[0], want_xp)
    for a, s in zip(threaded, serial):
        assert np.isfinite(a).all()
        assert np.array_equal(a, s)


def test_im2col_layout_against_definition():
    """cols[(c*kh + i)*kw + j, (n*Ho + oh)*Wo + ow] = x[n, c, oh*sh - ph + i, ow*sw - pw + j]."""
    rng = np.random.default_rng(3)
    N, C, H, W, kh, kw, sh, sw, ph, pw = 2, 2, 5, 4, 3, 2, 2, 1, 1, 1
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    x = rng.standard_normal((N, C, H, W))
    cols = np.empty((C * kh * kw, N * Ho * Wo))
    K.im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, cols)
    for n in range(N):
        for c in range(C):
            for i in range(kh):
                for j in range(kw):
                    for oh in range(Ho):
                        for ow in range(Wo):
                            h, w = oh * sh - ph + i, ow * sw - pw + j
                            want = x[n, c, h, w] if 0 <= h < H and 0 <= w < W else 0.0
                            assert cols[(c * kh + i) * kw + j, (n * Ho + oh) * Wo + ow] == want


# Both loop shapes of im2col/col2im: stride 1 with W_out == W takes the flat
# "shifted plane" path (including H_out != H and offsets wider than the plane),
# everything else the row-by-row path.
KERNEL_PATHS = [
    # (N, C, H, W, kh, kw, sh, sw, ph, pw)
    (2, 2, 5, 4, 3, 3, 1, 1, 1, 1),    # flat: 3x3 "same"
    (1, 3, 6, 5, 3, 3, 1, 1, 0, 1),    # flat: H_out = H - 2
    (2, 1, 3, 2, 5, 5, 1, 1, 2, 2),    # flat: kernel wider than the plane
    (1, 2, 1, 1, 3, 3, 1, 1, 1, 1),    # flat: 1x1 plane, only the centre tap is inside
    (2, 2, 4, 4, 1, 1, 1, 1, 0, 0),    # flat: 1x1 kernel
    (2, 2, 5, 4, 3, 2, 2, 1, 1, 1),    # rows: stride 2 in H
    (1, 2, 7, 7, 3, 3, 2, 2, 1, 1),    # rows: stride 2
    (1, 1, 4, 3, 1, 3, 1, 1, 2, 0),    # rows: W_out != W
]


@pytest.mark.parametrize("case", KERNEL_PATHS)
def test_im2col_and_col2im_against_definition(case):
    """cols[(c*kh + i)*kw + j, (n*Ho + oh)*Wo + ow] = x[n, c, oh*sh - ph + i, ow*sw - pw + j]
    (0 in the padding), and col2im adds every entry back to that cell, dropping
    the padding entries even when they are nonzero."""
    _check_im2col_col2im(case, seed=7)


@st.composite
def three_wide_cases(draw):
    """Geometry of the one-pass path for kernels 3 wide (stride 1, column
    padding 1, so W_out == W): any kernel height and row padding, planes
    down to one row or one column, H_out above, equal to or below H."""
    kh, ph = draw(st.integers(1, 5)), draw(st.integers(0, 3))
    H = draw(st.integers(max(1, kh - 2 * ph), 7))
    W = draw(st.integers(1, 7))
    N, C = draw(st.integers(0, 2)), draw(st.integers(1, 3))
    return (N, C, H, W, kh, 3, 1, 1, ph, 1)


@settings(max_examples=60, deadline=None)
@given(three_wide_cases(), st.integers(0, 2**32 - 1), st.sampled_from([np.float32, np.float64]))
def test_im2col_and_col2im_three_wide_against_definition(case, seed, dtype):
    """The one-pass kernels for 3-wide kernels (three taps of a kernel row
    written, or added back, in one loop) against the definition, bit for bit,
    with zeros of both signs in the data."""
    _check_im2col_col2im(case, seed, dtype)


def _check_im2col_col2im(case, seed, dtype=np.float64):
    N, C, H, W, kh, kw, sh, sw, ph, pw = case
    rng = np.random.default_rng(seed)
    Ho, Wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    x[rng.random(x.shape) < 0.2] = -0.0
    cols = np.full((C * kh * kw, N * Ho * Wo), np.nan, dtype)
    K.im2col(x, kh, kw, sh, sw, ph, pw, Ho, Wo, cols)
    dcols = rng.standard_normal(cols.shape).astype(dtype)
    dcols[rng.random(dcols.shape) < 0.2] = -0.0
    want_cols = np.zeros_like(cols)
    want_dx = np.zeros_like(x)
    for n, c, i, j, oh, ow in np.ndindex(N, C, kh, kw, Ho, Wo):
        h, w = oh * sh - ph + i, ow * sw - pw + j
        r, q = (c * kh + i) * kw + j, (n * Ho + oh) * Wo + ow
        if 0 <= h < H and 0 <= w < W:
            want_cols[r, q] = x[n, c, h, w]
            want_dx[n, c, h, w] += dcols[r, q]
    assert cols.tobytes() == want_cols.tobytes()          # bit for bit: -0.0 stays -0.0
    dx = np.full_like(x, np.nan)
    K.col2im(dcols.copy(), kh, kw, sh, sw, ph, pw, Ho, Wo, dx)
    # same taps in the same (i, j) order per cell, each sum started at +0:
    # equal to the last bit
    assert dx.tobytes() == want_dx.tobytes()


# ------------------------------------------------------------------- dtypes
def test_float32_by_default():
    layer = Conv2D(2, 3, 3, padding=1)
    assert layer.params["W"].dtype == np.float32 and layer.params["b"].dtype == np.float32
    assert layer.grads["W"].dtype == np.float32 and layer.grads["b"].dtype == np.float32
    for x in (np.ones((1, 2, 4, 4), np.float32), np.ones((1, 2, 4, 4), np.float64),
              np.ones((1, 2, 4, 4), np.uint8)):
        y = layer.forward(x)
        assert y.dtype == np.float32
        dx = layer.backward(np.ones(y.shape))
        assert dx.dtype == np.float32


def test_float64_after_astype():
    rng = np.random.default_rng(0)
    layer = Conv2D(2, 3, 3, padding=1)
    W32 = layer.params["W"].copy()
    assert layer.astype(np.float64) is layer
    assert layer.params["W"].dtype == np.float64 and layer.params["b"].dtype == np.float64
    assert layer.grads["W"].dtype == np.float64 and layer.grads["b"].dtype == np.float64
    np.testing.assert_array_equal(layer.params["W"], W32)
    x = rng.standard_normal((2, 2, 5, 5)).astype(np.float32)
    y = layer.forward(x)
    assert y.dtype == np.float64
    # computed in float64 from the float32 input (not rounded through float32)
    np.testing.assert_allclose(y, naive_conv_forward(x.astype(np.float64), layer.params["W"],
                                                     layer.params["b"], (1, 1), (1, 1)), rtol=1e-12, atol=1e-12)
    assert layer.backward(rng.standard_normal(y.shape)).dtype == np.float64
    with pytest.raises(TypeError, match="float32 or float64"):
        layer.astype(np.int32)


# -------------------------------------------------------------- initialisation
def test_he_init_std():
    """W ~ N(0, 2/fan_in).  With n i.i.d. normal weights of known mean 0,
    n * mean(W^2) / sigma^2 ~ chi^2(n): mean n, sd sqrt(2n).  A 6-sd band
    (false-failure probability ~1e-9) on the variance ratio, and a 6-sd band
    on the mean (sd sigma / sqrt(n))."""
    minicnn.manual_seed(1234)
    layer = Conv2D(32, 128, 3)                # n = 36,864 weights, fan_in = 32*3*3 = 288
    W = layer.params["W"].astype(np.float64)
    n, sigma2 = W.size, 2.0 / (32 * 9)
    ratio = np.mean(W ** 2) / sigma2
    assert abs(ratio - 1) < 6 * np.sqrt(2.0 / n), ratio
    assert abs(W.mean()) < 6 * np.sqrt(sigma2 / n)
    # C_in != C_out, so a fan-out init (C_out*kh*kw) would be 4x off, far outside the band
    assert 6 * np.sqrt(2.0 / n) < 0.05
    np.testing.assert_array_equal(layer.params["b"], 0)


def test_init_reproducible_from_manual_seed():
    minicnn.manual_seed(7)
    a = Conv2D(3, 4, 3)
    minicnn.manual_seed(7)
    b = Conv2D(3, 4, 3)
    minicnn.manual_seed(8)
    c = Conv2D(3, 4, 3)
    np.testing.assert_array_equal(a.params["W"], b.params["W"])
    assert not np.array_equal(a.params["W"], c.params["W"])


# ------------------------------------------------------------------- errors
def test_wrong_channel_count_names_layer_and_both_numbers():
    layer = Conv2D(3, 4, 3, name="conv_in")
    with pytest.raises(ValueError, match=r"conv_in.*expected 3 input channels.*with 2") as e:
        layer.forward(np.zeros((1, 2, 5, 5)))
    assert "(1, 2, 5, 5)" in str(e.value)


@pytest.mark.parametrize("shape", [(2, 5, 5), (1, 1, 2, 5, 5), (5,)])
def test_non_4d_input(shape):
    with pytest.raises(ValueError, match=r"Conv2D.*4-D"):
        Conv2D(1, 1, 3).forward(np.zeros(shape))


def test_kernel_bigger_than_padded_input():
    # 3 + 2*1 = 5: a 5x5 kernel fits exactly once, a 6x6 kernel does not.
    assert Conv2D(1, 1, 5, padding=1).forward(np.zeros((1, 1, 3, 3))).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"Conv2D.*too small"):
        Conv2D(1, 1, 6, padding=1).forward(np.zeros((1, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"Conv2D.*too small"):
        Conv2D(1, 1, (1, 4)).forward(np.zeros((1, 1, 5, 3)))


@pytest.mark.parametrize("kwargs, exc, name", [
    (dict(in_channels=0, out_channels=1, kernel_size=3), ValueError, "in_channels"),
    (dict(in_channels=1, out_channels=0, kernel_size=3), ValueError, "out_channels"),
    (dict(in_channels=-1, out_channels=1, kernel_size=3), ValueError, "in_channels"),
    (dict(in_channels=1.0, out_channels=1, kernel_size=3), ValueError, "in_channels"),
    (dict(in_channels=1, out_channels=1, kernel_size=0), ValueError, "kernel_size"),
    (dict(in_channels=1, out_channels=1, kernel_size=(3, 0)), ValueError, "kernel_size"),
    (dict(in_channels=1, out_channels=1, kernel_size=3, stride=0), ValueError, "stride"),
    (dict(in_channels=1, out_channels=1, kernel_size=3, padding=-1), ValueError, "padding"),
    (dict(in_channels=1, out_channels=1, kernel_size="3"), TypeError, "kernel_size"),
    (dict(in_channels=1, out_channels=1, kernel_size=(3, 3, 3)), TypeError, "kernel_size"),
    (dict(in_channels=1, out_channels=1, kernel_size=3, stride=1.5), TypeError, "stride"),
    (dict(in_channels=1, out_channels=1, kernel_size=True), TypeError, "kernel_size"),
])
def test_bad_constructor_args(kwargs, exc, name):
    with pytest.raises(exc, match=name):
        Conv2D(**kwargs)


def test_backward_does_not_mutate_dout():
    rng = np.random.default_rng(0)
    layer = Conv2D(2, 3, 3, stride=2, padding=1)
    y = layer.forward(rng.standard_normal((2, 2, 6, 6)))
    for dout in (rng.standard_normal(y.shape).astype(np.float32), rng.standard_normal(y.shape)):
        keep = dout.copy()
        layer.backward(dout)
        np.testing.assert_array_equal(dout, keep)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        Conv2D(1, 1, 3).backward(np.zeros((1, 1, 1, 1)))


def test_backward_wrong_dout_shape():
    layer = Conv2D(1, 2, 3)
    layer.forward(np.zeros((1, 1, 5, 5)))
    with pytest.raises(ValueError, match=r"\(1, 2, 3, 3\)"):
        layer.backward(np.zeros((1, 2, 3, 4)))


# --------------------------------------------------------------- PyTorch oracle
@pytest.mark.parametrize("N, C, F, H, W, k, s, p", [
    (2, 3, 4, 7, 6, 3, 1, 1),
    (2, 2, 3, 8, 9, (2, 3), (2, 1), (1, 0)),
    (1, 1, 2, 5, 5, 5, 2, 2),
    (3, 4, 2, 6, 6, 1, 3, 0),
])
def test_torch_oracle(N, C, F, H, W, k, s, p):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(42)
    layer = _layer64(C, F, k, s, p, rng)
    x = rng.standard_normal((N, C, H, W))
    y = layer.forward(x)
    dout = rng.standard_normal(y.shape)
    dx = layer.backward(dout)

    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(layer.params["W"], requires_grad=True)
    tb = torch.tensor(layer.params["b"], requires_grad=True)
    ty = torch.nn.functional.conv2d(tx, tw, tb, stride=s, padding=p)
    ty.backward(torch.tensor(dout))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(layer.grads["W"], tw.grad.numpy(), rtol=0, atol=1e-10)
    np.testing.assert_allclose(layer.grads["b"], tb.grad.numpy(), rtol=0, atol=1e-10)
