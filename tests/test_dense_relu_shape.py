"""Dense, ReLU, Flatten and Concat: values, hand-derived gradients, errors, dtype rule."""
import numpy as np
import pytest

import minicnn
from minicnn.gradcheck import check_gradients, tie_free
from minicnn.layers import Concat, Dense, Flatten, ReLU


def _dense64(i, o, rng):
    layer = Dense(i, o).astype(np.float64)
    layer.params["W"][...] = rng.standard_normal((i, o))
    layer.params["b"][...] = rng.standard_normal(o)
    return layer


# -------------------------------------------------------------------- Dense
def test_dense_forward_backward_hand_formulas():
    rng = np.random.default_rng(0)
    layer = _dense64(4, 3, rng)
    W, b = layer.params["W"], layer.params["b"]
    x = rng.standard_normal((5, 4))
    y = layer.forward(x)
    # y[n, o] = sum_i x[n, i] W[i, o] + b[o], written as loops
    ref = np.array([[sum(x[n, i] * W[i, o] for i in range(4)) + b[o] for o in range(3)] for n in range(5)])
    np.testing.assert_allclose(y, ref, rtol=1e-13, atol=1e-13)

    dout = rng.standard_normal((5, 3))
    dx = layer.backward(dout)
    dx_ref = np.array([[sum(dout[n, o] * W[i, o] for o in range(3)) for i in range(4)] for n in range(5)])
    dW_ref = np.array([[sum(x[n, i] * dout[n, o] for n in range(5)) for o in range(3)] for i in range(4)])
    db_ref = np.array([sum(dout[n, o] for n in range(5)) for o in range(3)])
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.grads["W"], dW_ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(layer.grads["b"], db_ref, rtol=1e-13, atol=1e-13)


def test_dense_backward_overwrites_grads_and_keeps_their_identity():
    """Optimisers hold references to the grad arrays: backward writes into them."""
    rng = np.random.default_rng(1)
    layer = _dense64(3, 2, rng)
    gW, gb = layer.grads["W"], layer.grads["b"]
    x = rng.standard_normal((2, 3))
    layer.forward(x)
    layer.backward(np.ones((2, 2)))
    layer.backward(np.ones((2, 2)))          # overwritten, not accumulated
    assert layer.grads["W"] is gW and layer.grads["b"] is gb
    np.testing.assert_allclose(gW, x.T @ np.ones((2, 2)))
    np.testing.assert_allclose(gb, [2.0, 2.0])


def test_dense_gradcheck():
    minicnn.manual_seed(0)
    result = check_gradients(Dense(6, 4), tie_free((3, 6), np.random.default_rng(0)))
    assert result.passed, result.errors
    assert set(result.errors) == {"x", "W", "b"}


def test_dense_he_init():
    """W ~ N(0, 2 / in_features); chi-square 6-sd band on the variance ratio."""
    minicnn.manual_seed(5)
    layer = Dense(512, 128)
    W = layer.params["W"].astype(np.float64)
    assert W.shape == (512, 128) and layer.params["b"].shape == (128,)
    assert abs(np.mean(W ** 2) / (2 / 512) - 1) < 6 * np.sqrt(2 / W.size)
    np.testing.assert_array_equal(layer.params["b"], 0)


def test_dense_wrong_feature_count_names_expected_and_got():
    with pytest.raises(ValueError, match=r"fc1: expected input of shape \(N, 4\), got \(2, 3\) \(3 features\)"):
        Dense(4, 2, name="fc1").forward(np.zeros((2, 3)))


def test_dense_errors():
    with pytest.raises(ValueError, match=r"Dense.*2-D"):
        Dense(4, 2).forward(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="in_features"):
        Dense(0, 2)
    with pytest.raises(ValueError, match="out_features"):
        Dense(2, -1)
    with pytest.raises(RuntimeError, match="before forward"):
        Dense(2, 2).backward(np.zeros((1, 2)))
    layer = Dense(2, 3)
    layer.forward(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"expected dout of shape \(4, 3\)"):
        layer.backward(np.zeros((4, 2)))


def test_dense_backward_does_not_mutate_dout():
    rng = np.random.default_rng(2)
    layer = _dense64(3, 3, rng)
    layer.forward(rng.standard_normal((2, 3)))
    dout = rng.standard_normal((2, 3))
    keep = dout.copy()
    layer.backward(dout)
    np.testing.assert_array_equal(dout, keep)


# --------------------------------------------------------------------- ReLU
def test_relu_forward_backward_values():
    x = np.array([[-2.0, -0.0, 0.0, 1e-300, 0.5, 3.0]])
    relu = ReLU()
    np.testing.assert_array_equal(relu.forward(x), [[0, 0, 0, 1e-300, 0.5, 3.0]])
    dout = np.array([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])
    # dx = dout * [x > 0]: the gradient at exactly 0 (and -0) is 0, as in PyTorch
    np.testing.assert_array_equal(relu.backward(dout), [[0, 0, 0, 4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(dout, [[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])   # not mutated


def test_relu_gradient_at_exactly_zero_is_zero():
    relu = ReLU()
    relu.forward(np.zeros((2, 3)))
    np.testing.assert_array_equal(relu.backward(np.ones((2, 3))), 0)


def test_relu_propagates_nan_like_pytorch():
    """torch.relu(nan) is nan.  Swallowing NaN into 0 would hide a diverged
    layer upstream: its outputs would look finite to the loss."""
    out = ReLU().forward(np.array([[np.nan, -1.0, 2.0]]))
    assert np.isnan(out[0, 0])
    np.testing.assert_array_equal(out[0, 1:], [0.0, 2.0])


def test_relu_gradcheck_any_rank():
    rng = np.random.default_rng(0)
    for shape in ((3, 5), (2, 3, 4), (2, 3, 4, 4), (1, 2, 2, 3, 3)):
        result = check_gradients(ReLU(), tie_free(shape, rng, min_abs=0.05))
        assert result.passed, (shape, result.errors)


@pytest.fixture(scope="module")
def relu_serial():
    """The serial builds of the ReLU kernels, compiled once for the module
    (each ``njit`` of a function compiles anew)."""
    from numba import njit

    from minicnn.kernels import activations as K
    return njit(K._relu_forward), njit(K._relu_backward)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5, 40_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernels_match_numpy_and_serial_at_block_edges(size, dtype, relu_serial):
    """The kernels work in blocks of 4096 elements in parallel; every size
    around a block edge, and above the single-thread cut-off (32768), gives
    numpy's answer (np.maximum; dout * [x > 0]) and the serial build's, bit
    for bit, NaN included."""
    from minicnn.kernels import activations as K

    rng = np.random.default_rng(size)
    x = rng.standard_normal(size).astype(dtype)
    x[::7] = 0.0
    x[::11] = np.nan
    dout = rng.standard_normal(size).astype(dtype)
    y, mask = np.full_like(x, 7.0), np.ones(size, np.bool_)
    K.relu_forward(x, y, mask)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    np.testing.assert_array_equal(mask, x > 0)
    dx = np.full_like(x, 7.0)
    K.relu_backward(dout, mask, dx)
    np.testing.assert_array_equal(dx, np.where(x > 0, dout, 0))
    y2, mask2, dx2 = np.empty_like(x), np.empty(size, np.bool_), np.empty_like(x)
    relu_serial[0](x, y2, mask2)
    relu_serial[1](dout, mask2, dx2)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(dx2, dx)
    layer = ReLU()
    np.testing.assert_array_equal(layer.forward(x.reshape(1, -1)), y.reshape(1, -1))
    np.testing.assert_array_equal(layer.backward(dout.reshape(1, -1)), dx.reshape(1, -1))


def test_relu_accepts_non_contiguous_input_and_integer_dout():
    x = np.arange(-6.0, 6.0).reshape(3, 4).T          # Fortran-ordered view
    relu = ReLU()
    np.testing.assert_array_equal(relu.forward(x), np.maximum(x, 0))
    dx = relu.backward(np.ones((4, 3), np.int64))
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, (x > 0).astype(np.float32))


def test_relu_errors():
    with pytest.raises(ValueError, match="ReLU"):
        ReLU().forward(np.zeros(3))
    with pytest.raises(RuntimeError, match="before forward"):
        ReLU().backward(np.zeros((1, 2)))
    relu = ReLU()
    relu.forward(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"expected dout of shape \(2, 2\)"):
        relu.backward(np.zeros((2, 3)))


# ------------------------------------------------------------------ Flatten
def test_flatten_forward_backward():
    x = np.arange(24.0).reshape(2, 3, 2, 2)
    f = Flatten()
    y = f.forward(x)
    np.testing.assert_array_equal(y, x.reshape(2, 12))
    np.testing.assert_array_equal(y[1], np.arange(12.0, 24.0))    # C-order, batch kept
    dout = np.arange(24.0).reshape(2, 12) * -1
    np.testing.assert_array_equal(f.backward(dout), dout.reshape(2, 3, 2, 2))
    assert check_gradients(Flatten(), tie_free((2, 3, 2, 2), np.random.default_rng(0))).passed
    with pytest.raises(ValueError, match=r"expected dout of shape \(2, 12\)"):
        f.backward(np.zeros((2, 11)))
    with pytest.raises(RuntimeError, match="before forward"):
        Flatten().backward(np.zeros((1, 2)))


# ------------------------------------------------------------------- Concat
def test_concat_forward_backward_axis1():
    rng = np.random.default_rng(0)
    a, b, c = rng.standard_normal((2, 2, 3, 3)), rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((2, 3, 3, 3))
    cat = Concat()
    y = cat.forward(a, b, c)
    assert y.shape == (2, 6, 3, 3)
    np.testing.assert_array_equal(y[:, :2], a)
    np.testing.assert_array_equal(y[:, 2:3], b)
    np.testing.assert_array_equal(y[:, 3:], c)
    dout = rng.standard_normal(y.shape)
    da, db, dc = cat.backward(dout)
    np.testing.assert_array_equal(da, dout[:, :2])
    np.testing.assert_array_equal(db, dout[:, 2:3])
    np.testing.assert_array_equal(dc, dout[:, 3:])


def test_concat_other_axis_and_gradcheck():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((2, 3, 2, 4)), rng.standard_normal((2, 3, 5, 4))
    y = Concat(axis=2).forward(a, b)
    np.testing.assert_array_equal(y, np.concatenate([a, b], axis=2))
    result = check_gradients(Concat(axis=2), [a, b])
    assert result.passed and set(result.errors) == {"x0", "x1"}
    result = check_gradients(Concat(), [tie_free((2, 4), rng), tie_free((2, 3), rng)])
    assert result.passed, result.errors


def test_concat_mismatched_shapes():
    cat = Concat(name="cat")
    with pytest.raises(ValueError, match=r"cat: input 1 has shape \(2, 1, 3, 4\).*input 0 of shape \(2, 2, 3, 3\)"):
        cat.forward(np.zeros((2, 2, 3, 3)), np.zeros((2, 1, 3, 4)))
    with pytest.raises(ValueError, match="cat: input 1"):
        cat.forward(np.zeros((2, 2, 3, 3)), np.zeros((3, 2, 3, 3)))     # batch differs
    with pytest.raises(ValueError, match="cat: input 2"):
        cat.forward(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2, 1)))  # rank differs
    with pytest.raises(ValueError, match="axis 3"):
        Concat(axis=3).forward(np.zeros((2, 2, 2)), np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="at least 2 inputs"):
        cat.forward(np.zeros((2, 2)))
    for bad in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match="axis"):
            Concat(axis=bad)
    with pytest.raises(RuntimeError, match="before forward"):
        Concat().backward(np.zeros((1, 2)))


# --------------------------------------------------------- dtype rule (base.py)
SMALL_DTYPES = [np.int8, np.uint8, np.bool_, np.float16, np.int64]


@pytest.mark.parametrize("dtype", SMALL_DTYPES)
def test_parameter_free_layers_cast_other_reals_to_float32(dtype):
    x = (np.arange(12).reshape(2, 2, 3) % 3).astype(dtype)
    assert ReLU().forward(x).dtype == np.float32
    assert Flatten().forward(x).dtype == np.float32
    assert Concat().forward(x, x).dtype == np.float32
    np.testing.assert_array_equal(ReLU().forward(x), np.maximum(x.astype(np.float32), 0))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameter_free_layers_keep_float32_and_float64(dtype):
    x = np.ones((2, 3), dtype)
    assert ReLU().forward(x).dtype == dtype
    assert Flatten().forward(x).dtype == dtype
    assert Concat().forward(x, x).dtype == dtype


@pytest.mark.parametrize("dtype", SMALL_DTYPES + [np.float64, np.float32])
def test_dense_casts_to_param_dtype(dtype):
    x = np.ones((2, 3), dtype)
    assert Dense(3, 2).forward(x).dtype == np.float32
    assert Dense(3, 2).astype(np.float64).forward(x).dtype == np.float64


@pytest.mark.parametrize("make", [lambda: ReLU(), lambda: Flatten(), lambda: Dense(3, 2)])
@pytest.mark.parametrize("bad", [np.ones((2, 3), np.complex128), np.ones((2, 3), np.complex64),
                                 np.full((2, 3), "a"), np.empty((2, 3), object)])
def test_non_real_input_raises_type_error(make, bad):
    with pytest.raises(TypeError, match="real-valued"):
        make().forward(bad)


def test_concat_complex_raises_type_error():
    with pytest.raises(TypeError, match="input 1"):
        Concat().forward(np.ones((2, 3)), np.ones((2, 3), np.complex128))


def test_non_array_input():
    with pytest.raises(TypeError, match="numpy array"):
        ReLU().forward({"a": 1})
    assert ReLU().forward([[-1, 2]]).dtype == np.float32          # lists become arrays


def test_dense_gradients_keep_the_layer_dtype_whatever_dout_is():
    import minicnn as mc
    layer = mc.Dense(4, 3)                               # float32
    layer.forward(np.ones((2, 4), np.float32))
    dx = layer.backward(np.ones((2, 3), np.float64))
    assert dx.dtype == np.float32 and layer.grads["W"].dtype == np.float32
