"""Conv2D's backward from the non-zero entries of its output gradient
(``Conv2D.sparse_max_density``, :mod:`minicnn.kernels.conv_sparse`).

The sparse backward must give the convolution's gradients: against the
naive loop reference over every geometry, with gradients from all-zero to
all-non-zero, signed zeros and NaN; close to the GEMM path in float32 on
the default model's shapes; bit for bit the same whether the gradient
comes through the fused conv + 2x2 max-pool step or the two layers; and
never where zero times a non-finite input or weight must give NaN.  The
float64 numerical gradient checks are in ``minicnn.gradcheck_cases``
("sparse backward").
"""
import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import minicnn as m
from minicnn.kernels import conv_sparse as S
from minicnn.layers.conv import Conv2D, float_bits
from tests.test_conv import conv_cases, naive_conv_backward

SETTINGS = settings(max_examples=40, deadline=None)


def _layer(C, F, k, s, p, rng, dtype=np.float64, density=1.0):
    layer = Conv2D(C, F, k, stride=s, padding=p).astype(dtype)
    layer.direct_max_taps = 0                      # the im2col path, whose backward can be sparse
    layer.sparse_max_density = density
    layer.params["W"][...] = rng.standard_normal(layer.params["W"].shape)
    layer.params["b"][...] = rng.standard_normal(F)
    return layer


def _sparse_dout(shape, rng, keep, dtype=np.float64):
    """A random gradient with about ``keep`` of its entries non-zero, the
    rest +0.0 and -0.0."""
    d = rng.standard_normal(shape)
    zero = rng.random(shape) >= keep
    d[zero] = np.where(rng.random(shape) < 0.5, 0.0, -0.0)[zero]
    return d.astype(dtype)


@pytest.fixture
def spy(monkeypatch):
    """Records which backward ran: 'sparse' when the sparse weight-gradient
    kernel is called."""
    calls = []
    real = S.sparse_weight_grad

    def wrapped(*args):
        calls.append("sparse")
        return real(*args)
    monkeypatch.setattr(S, "sparse_weight_grad", wrapped)
    return calls


# ------------------------------------------------------ against the reference
@SETTINGS
@given(conv_cases(), st.sampled_from([0.0, 0.05, 0.3, 1.0]))
def test_sparse_backward_matches_naive(case, keep):
    N, C, F, H, W, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    layer = _layer(C, F, k, s, p, rng)
    x = rng.standard_normal((N, C, H, W))
    y = layer.forward(x)
    dout = _sparse_dout(y.shape, rng, keep)
    dx = layer.backward(dout)
    rdx, rdw, rdb = naive_conv_backward(x, layer.params["W"], dout, s, p)
    np.testing.assert_allclose(dx, rdx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["W"], rdw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], rdb, rtol=1e-12, atol=1e-12)
    layer.grads["W"][...] = np.nan                  # backward_params: the same dW and db
    layer.grads["b"][...] = np.nan
    assert layer.backward_params(dout) is None
    np.testing.assert_allclose(layer.grads["W"], rdw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.grads["b"], rdb, rtol=1e-12, atol=1e-12)


def test_all_zero_gradient_gives_zeros():
    rng = np.random.default_rng(0)
    layer = _layer(6, 4, 3, 1, 1, rng, np.float32)
    y = layer.forward(rng.standard_normal((3, 6, 5, 5)).astype(np.float32))
    layer.grads["W"][...] = np.nan
    layer.grads["b"][...] = np.nan
    dx = layer.backward(np.zeros(y.shape, np.float32))
    assert not dx.any() and not layer.grads["W"].any() and not layer.grads["b"].any()


def test_nan_in_the_gradient_spreads_as_in_the_gemm_path():
    """A NaN entry is non-zero: it is visited, and it poisons the same
    entries of dW, db and dx as the GEMMs do."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 6, 5))
    sparse, dense = _layer(6, 3, 3, 1, 1, rng), None
    dense = copy.deepcopy(sparse)
    dense.sparse_max_density = 0.0
    y = sparse.forward(x)
    dense.forward(x)
    dout = _sparse_dout(y.shape, rng, 0.05)
    dout[1, 2, 3, 1] = np.nan
    a, b = sparse.backward(dout), dense.backward(dout)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    for k in ("W", "b"):
        np.testing.assert_array_equal(np.isnan(sparse.grads[k]), np.isnan(dense.grads[k]))
    assert np.isnan(a).any() and np.isnan(sparse.grads["W"]).any()


@pytest.mark.parametrize("where", ["x", "W"])
@pytest.mark.parametrize("bad", [np.inf, np.nan])
@pytest.mark.filterwarnings("ignore:invalid value encountered in matmul:RuntimeWarning")
def test_non_finite_input_or_weight_takes_the_gemm_path(spy, where, bad):
    """0 * inf is NaN in the GEMMs; skipping the zeros would hide it, so a
    non-finite input or weight sends the layer down the GEMM path, with its
    exact bits."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    sparse = _layer(6, 3, 3, 1, 1, rng, np.float32)
    if where == "x":
        x[1, 4, 2, 2] = bad
    else:
        sparse.params["W"][2, 1, 0, 0] = bad
    dense = copy.deepcopy(sparse)
    dense.sparse_max_density = 0.0
    y = sparse.forward(x)
    dense.forward(x)
    dout = _sparse_dout(y.shape, rng, 0.05, np.float32)
    a, b = sparse.backward(dout), dense.backward(dout)
    assert spy == []
    assert a.tobytes() == b.tobytes()
    for k in ("W", "b"):
        assert sparse.grads[k].tobytes() == dense.grads[k].tobytes()
    assert np.isnan(sparse.grads["W"] if where == "x" else a).any()   # the NaNs a sparse pass would drop


@pytest.mark.parametrize("nonzero, taken", [(20, True), (21, False)])
def test_the_density_rule(spy, nonzero, taken):
    """At most ``sparse_max_density`` of the output gradient's entries
    non-zero: sparse; one more: GEMMs.  (4*5*5*2 = 200 entries, 0.1.)"""
    rng = np.random.default_rng(3)
    layer = _layer(6, 2, 3, 1, 1, rng, np.float32, density=0.1)
    y = layer.forward(rng.standard_normal((4, 6, 5, 5)).astype(np.float32))
    assert y.size == 200
    dout = np.zeros(y.shape, np.float32)
    dout.flat[rng.choice(y.size, nonzero, replace=False)] = 1.0
    layer.backward(dout)
    assert spy == (["sparse"] if taken else [])


def test_the_direct_path_and_density_zero_never_go_sparse(spy):
    rng = np.random.default_rng(4)
    direct = Conv2D(1, 4, 3, padding=1)                      # C_in*9 <= 36: direct
    direct.sparse_max_density = 1.0
    off = _layer(6, 4, 3, 1, 1, rng, np.float32, density=0.0)
    for layer, c in ((direct, 1), (off, 6)):
        y = layer.forward(rng.standard_normal((2, c, 6, 6)).astype(np.float32))
        layer.backward(_sparse_dout(y.shape, rng, 0.01, np.float32))
    assert spy == []


@pytest.mark.parametrize("keep", [0.01, 0.1])
def test_float32_close_to_the_gemm_path(keep):
    """The default model's second convolution in float32: the same terms
    as the GEMMs, added in another order."""
    rng = np.random.default_rng(5)
    m.manual_seed(5)
    sparse = Conv2D(32, 64, 3, padding=1)
    sparse.sparse_max_density = 1.0
    dense = copy.deepcopy(sparse)
    dense.sparse_max_density = 0.0
    x = np.maximum(rng.standard_normal((16, 32, 14, 14)), 0).astype(np.float32)
    y = sparse.forward(x)
    dense.forward(x)
    dout = _sparse_dout(y.shape, rng, keep, np.float32)
    np.testing.assert_allclose(sparse.backward(dout), dense.backward(dout), rtol=1e-5, atol=1e-6)
    for k in ("W", "b"):
        ref = dense.grads[k]
        np.testing.assert_allclose(sparse.grads[k], ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


# ------------------------------------------- through a 2x2 max pooling, fused
@st.composite
def pooled_cases(draw):
    return dict(c_in=draw(st.sampled_from([5, 8])), c_out=draw(st.integers(1, 5)), N=draw(st.integers(1, 3)),
                hw=(draw(st.integers(2, 9)), draw(st.integers(2, 9))),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                ties=draw(st.booleans()), input_grad=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


@SETTINGS
@given(pooled_cases())
def test_fused_sparse_equals_the_two_layers(case):
    """conv -> MaxPool2D(2) -> ReLU: the fused step builds the non-zero
    lists from the pooled gradient and the winners, the two layers from the
    full gradient; the lists, so the gradients, are the same bit for bit."""
    rng = np.random.default_rng(case["seed"])
    hw, dt, c_in, c_out = case["hw"], case["dtype"], case["c_in"], case["c_out"]
    m.manual_seed(case["seed"])
    fused = m.Sequential([m.Conv2D(c_in, c_out, 3, padding=1), m.MaxPool2D(2), m.ReLU(), m.Flatten(),
                          m.Dense(c_out * (hw[0] // 2) * (hw[1] // 2), 3)], input_shape=(c_in,) + hw).astype(dt)
    fused.layers[0].sparse_max_density = 1.0
    plain = copy.deepcopy(fused)
    plain.fuse = False
    x = rng.standard_normal((case["N"], c_in) + hw)
    if case["ties"]:
        x = np.round(x)
    x = x.astype(dt)
    dout = rng.standard_normal((case["N"], 3)).astype(dt)
    outs = []
    for model in (fused, plain):
        model.forward(x)
        dx = model.backward(dout, input_grad=case["input_grad"])
        outs.append((dx, {n: g.copy() for n, g in model.named_grads()}))
    assert len(fused._conv_pool_pairs()) == 1
    if case["input_grad"]:
        assert outs[0][0].tobytes() == outs[1][0].tobytes()
    for name in outs[0][1]:
        assert outs[0][1][name].tobytes() == outs[1][1][name].tobytes(), name


def test_default_model_step_takes_the_sparse_path(spy):
    """Behind its pool and ReLU the default model's second convolution
    gets a mostly-zero gradient once the ReLU cuts; with all-negative
    pooled maps it has none, and the sparse backward runs."""
    from minicnn.models import default_model
    m.manual_seed(0)
    model = default_model()
    conv2 = model.layers[3]
    conv2.params["b"][...] = -100.0                 # every pooled value < 0: ReLU passes nothing
    x = np.random.default_rng(0).standard_normal((4, 1, 28, 28)).astype(np.float32)
    model.forward(x)
    model.backward(np.ones((4, 10), np.float32), input_grad=False)
    assert spy == ["sparse"]
    assert not conv2.grads["W"].any() and not conv2.grads["b"].any()


# --------------------------------------------------------------- the kernels
@pytest.fixture(scope="module")
def serial():
    return {name: njit(parallel=False)(getattr(S, "_" + name))
            for name in ("pad_channels_last", "nonzeros_from_nchw", "nonzeros_from_maxpool2x2",
                         "sparse_weight_grad", "sparse_input_grad", "count_nonzero")}


@settings(max_examples=20, deadline=None)
@given(conv_cases(), st.sampled_from([0.0, 0.1, 1.0]))
def test_parallel_kernels_equal_serial(serial, case, keep):
    N, C, F, H, W, (kh, kw), (sh, sw), (ph, pw), seed = case
    rng = np.random.default_rng(seed)
    Ho = (H + 2 * ph - kh) // sh + 1
    Wo = (W + 2 * pw - kw) // sw + 1
    P = Ho * Wo
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    res = {}
    for mode, kern in (("par", S), ("ser", None)):
        k = (lambda name: getattr(S, name)) if kern else (lambda name: serial[name])
        xt = np.full((N, H + 2 * ph, (W + 2 * pw) * C), np.nan, np.float32)
        fin = np.zeros(N, bool)
        k("pad_channels_last")(x, *float_bits(x), ph, pw, xt, fin)
        d = _sparse_dout((N, F, P), np.random.default_rng(seed), keep, np.float32)
        pos = np.full((F, N, P), -1, np.int32)
        val = np.full((F, N, P), np.nan, np.float32)
        cnt = np.full((F, N), -1, np.int64)
        k("nonzeros_from_nchw")(d, Wo, pos, val, cnt)
        dwt = np.full((F, kh, kw * C), np.nan, np.float32)
        db = np.full(F, np.nan, np.float32)
        k("sparse_weight_grad")(pos, val, cnt, xt, kh, kw, sh, sw, dwt, db)
        wt = rng.standard_normal((F, kh, kw * C)).astype(np.float32) if mode == "par" else res["par"][-1]
        dxt = np.full(xt.shape, np.nan, np.float32)
        dx = np.full(x.shape, np.nan, np.float32)
        k("sparse_input_grad")(pos, val, cnt, wt, kh, kw, sh, sw, ph, pw, dxt, dx)
        res[mode] = (xt, fin, cnt, dwt, db, dx, k("count_nonzero")(d), wt)
    for a, b in zip(res["par"][:-1], res["ser"][:-1]):
        assert np.array_equal(a, b)
    xt, fin, cnt, dwt, db, dx, count, _ = res["par"]
    assert fin.all() and np.isfinite(xt).all() and np.isfinite(dwt).all() and np.isfinite(dx).all()
    assert count == cnt.sum() == np.count_nonzero(d)
    # the padded channels-last copy, by its definition
    ref = np.zeros((N, H + 2 * ph, W + 2 * pw, C), np.float32)
    ref[:, ph:ph + H, pw:pw + W, :] = x.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(xt, ref.reshape(xt.shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pad_channels_last_flags_each_non_finite_sample(dtype):
    x = -np.ones((6, 2, 3, 3), dtype)
    x[0, 0, 0, 0] = np.finfo(dtype).max
    x[1, 1, 2, 2] = np.inf
    x[2, 0, 0, 0] = -np.finfo(dtype).max
    x[3, 0, 0, 1] = np.nan
    x[4, 1, 1, 1] = -np.inf
    x[5, 1, 0, 2] = -np.nan
    xt = np.empty((6, 5, 5 * 2), dtype)
    fin = np.empty(6, bool)
    S.pad_channels_last(x, *float_bits(x), 1, 1, xt, fin)
    assert fin.tolist() == [True, False, True, False, False, False]


@pytest.mark.parametrize("Ho,Wo", [(4, 6), (5, 7), (2, 3), (3, 2)])
def test_nonzeros_from_maxpool2x2_equal_those_of_the_full_gradient(serial, Ho, Wo):
    """The pooled lists against :func:`nonzeros_from_nchw` of the gradient
    the 2x2 max-pool backward makes (ties, NaN in the input; a -0.0, a
    0.0 and a NaN gradient)."""
    rng = np.random.default_rng(Ho * 10 + Wo)
    N, F = 3, 4
    H2, W2 = Ho // 2, Wo // 2
    planes = np.round(rng.standard_normal((N, F, Ho, Wo)) * 2).astype(np.float32)
    planes[0, 0, 0, 1] = np.nan
    pool = m.MaxPool2D(2)
    pool.forward(planes)
    g = _sparse_dout((N, F, H2, W2), rng, 0.5, np.float32)
    g[0, 0, 0, 0], g[1, 1, 0, 0] = -0.0, np.nan
    full = pool.backward(g).reshape(N, F, Ho * Wo)
    want = [np.full((F, N, Ho * Wo), -1, np.int32), np.full((F, N, Ho * Wo), np.nan, np.float32),
            np.full((F, N), -1, np.int64)]
    got = [np.full((F, N, H2 * W2), -1, np.int32), np.full((F, N, H2 * W2), np.nan, np.float32),
           np.full((F, N), -1, np.int64)]
    S.nonzeros_from_nchw(np.ascontiguousarray(full), Wo, *want)
    S.nonzeros_from_maxpool2x2(g, pool._argmax.reshape(N, F, H2, W2), Wo, *got)
    assert np.array_equal(got[2], want[2])
    for f in range(F):
        for n in range(N):
            c = got[2][f, n]
            assert np.array_equal(got[0][f, n, :c], want[0][f, n, :c])
            assert np.array_equal(got[1][f, n, :c], want[1][f, n, :c], equal_nan=True)
    assert got[2].sum() == np.count_nonzero(g)
    ser = [np.full((F, N, H2 * W2), -1, np.int32), np.full((F, N, H2 * W2), np.nan, np.float32),
           np.full((F, N), -1, np.int64)]
    serial["nonzeros_from_maxpool2x2"](g, pool._argmax.reshape(N, F, H2, W2), Wo, *ser)
    for a, b in zip(got, ser):                     # parallel == serial, the slots after the counts too
        assert np.array_equal(a, b, equal_nan=True)


def test_outputs_wider_than_the_packed_positions_take_the_gemm_path(spy):
    """Positions are packed as ``oh << 16 | ow`` in int32, so an output
    2**15 wide or tall goes the GEMM way, with the right gradients."""
    rng = np.random.default_rng(6)
    layer = _layer(1, 1, 1, 1, 0, rng, np.float64)
    x = rng.standard_normal((1, 1, 1, 2 ** 15))
    y = layer.forward(x)
    dout = np.zeros(y.shape)
    dout[0, 0, 0, -1] = 2.0
    dx = layer.backward(dout)
    assert spy == []
    assert dx[0, 0, 0, -1] == 2.0 * layer.params["W"][0, 0, 0, 0] and np.count_nonzero(dx) == 1
    assert layer.grads["W"][0, 0, 0, 0] == 2.0 * x[0, 0, 0, -1]
