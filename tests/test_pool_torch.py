"""Window pooling against PyTorch (an optional oracle), forward and backward.

Configurations are drawn by hypothesis within PyTorch's own argument rules
(padding <= kernel_size // 2); float64, except the float32 average
pooling tests, which compare bit for bit.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minicnn.layers.pooling import AvgPool2D, LPPool2D, MaxPool2D, MaxUnpool2D

torch = pytest.importorskip("torch")
F = torch.nn.functional

SETTINGS = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def configs(draw, dilation=True, padding=True, max_hw=10):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)),
             draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw)))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if dilation else (1, 1)
    p = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))) if padding else (0, 0)
    return dict(shape=shape, k=k, s=s, d=d, p=p, ceil=draw(st.booleans()),
                seed=draw(st.integers(0, 2**32 - 1)))


def torch_call(fn, x, *args, **kwargs):
    """(output, x_tensor) or None when PyTorch rejects the configuration."""
    xt = torch.tensor(x, requires_grad=True)
    try:
        return fn(xt, *args, **kwargs), xt
    except (RuntimeError, ValueError):
        return None, xt


def grad_of(out, xt, dout):
    out.backward(torch.tensor(dout))
    return xt.grad.numpy()


@SETTINGS
@given(configs())
def test_max_pool2d_matches_torch(cfg):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.integers(-3, 4, size=cfg["shape"]).astype(np.float64)      # many ties
    if rng.random() < 0.3:
        x[rng.random(x.shape) < 0.1] = np.nan
    layer = MaxPool2D(cfg["k"], cfg["s"], cfg["p"], cfg["d"], cfg["ceil"], return_indices=True)
    res, xt = torch_call(F.max_pool2d, x, cfg["k"], cfg["s"], cfg["p"], cfg["d"],
                         ceil_mode=cfg["ceil"], return_indices=True)
    if res is None:                                   # too small for PyTorch: too small for us
        with pytest.raises(ValueError, match="too small"):
            layer(x)
        return
    yt, it = res
    y, idx = layer(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    inside = idx >= 0          # windows with no tap inside the input: PyTorch's index is out of range
    np.testing.assert_array_equal(idx[inside], it.numpy()[inside])
    if not inside.all():
        assert np.all(y[~inside] == -np.inf)
        return
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), grad_of(yt, xt, dout), rtol=1e-12, atol=1e-15)


@SETTINGS
@given(configs(dilation=False), st.booleans(), st.sampled_from([None, 1, 2, 5, -3]))
def test_avg_pool2d_matches_torch(cfg, count_include_pad, divisor_override):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"])
    layer = AvgPool2D(cfg["k"], cfg["s"], cfg["p"], cfg["ceil"], count_include_pad, divisor_override)
    yt, xt = torch_call(F.avg_pool2d, x, cfg["k"], cfg["s"], cfg["p"], cfg["ceil"],
                        count_include_pad, divisor_override)
    if yt is None:
        with pytest.raises(ValueError, match="too small"):
            layer(x)
        return
    y = layer(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15)
    dout = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dout), grad_of(yt, xt, dout), rtol=1e-12, atol=1e-15)


@SETTINGS
@given(configs(dilation=False, max_hw=16), st.booleans(), st.sampled_from([None, 1, 3, 7, -2]))
def test_avg_pool2d_float32_equals_torch_bit_for_bit(cfg, count_include_pad, divisor_override):
    """float32 planes sum in float32 from +0 in row-major order and divide
    in float32, as PyTorch's CPU kernel does, so the results are equal to
    the last bit (forward, and backward: windows in row-major order)."""
    rng = np.random.default_rng(cfg["seed"])
    x = (rng.standard_normal(cfg["shape"]) * 10.0 ** rng.integers(-3, 4, cfg["shape"])).astype(np.float32)
    layer = AvgPool2D(cfg["k"], cfg["s"], cfg["p"], cfg["ceil"], count_include_pad, divisor_override)
    yt, xt = torch_call(F.avg_pool2d, x, cfg["k"], cfg["s"], cfg["p"], cfg["ceil"],
                        count_include_pad, divisor_override)
    if yt is None:
        return                                            # covered by the float64 test above
    y = layer(x)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dout = rng.standard_normal(y.shape).astype(np.float32) * np.float32(3)
    np.testing.assert_array_equal(layer.backward(dout), grad_of(yt, xt, dout))


@pytest.mark.parametrize("shape, k, s, p", [((4, 8, 28, 28), 3, 2, 1), ((4, 8, 14, 14), 2, 2, 0),
                                            ((2, 4, 24, 24), 3, 1, 1), ((2, 4, 13, 11), 3, 2, 0)])
def test_avg_pool2d_float32_fast_paths_equal_torch_bit_for_bit(shape, k, s, p):
    rng = np.random.default_rng(sum(shape) + k + s + p)
    x = rng.standard_normal(shape).astype(np.float32)
    layer = AvgPool2D(k, s, p)
    yt, xt = torch_call(F.avg_pool2d, x, k, s, p)
    y = layer(x)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    dout = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_array_equal(layer.backward(dout), grad_of(yt, xt, dout))


@SETTINGS
@given(configs(dilation=False, padding=False),
       st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.0, float("inf"), float("-inf")]), st.booleans())
def test_lp_pool2d_matches_torch(cfg, norm, positive):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"])
    if positive:
        x = np.abs(x) + 0.1
    layer = LPPool2D(norm, cfg["k"], cfg["s"], cfg["ceil"])
    yt, xt = torch_call(F.lp_pool2d, x, norm, cfg["k"], cfg["s"], cfg["ceil"])
    if yt is None:
        with pytest.raises(ValueError, match="too small"):
            layer(x)
        return
    y = layer(x)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15)   # NaN pattern too
    if positive or norm in (1.0, 2.0, float("inf"), float("-inf")):
        dout = rng.standard_normal(y.shape)
        np.testing.assert_allclose(layer.backward(dout), grad_of(yt, xt, dout), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("norm", [0.5, 1.0, 1.5, 2.0, 3.0, float("inf"), float("-inf")])
def test_lp_pool2d_forward_matches_torch_on_non_finite_values(norm):
    """Infinities, NaN and signed zeros in the windows: the same values (and
    NaN pattern) as PyTorch, -inf with p = 0.5 included (a square root: NaN,
    where C pow gives +inf).  The backward passes differ on such windows;
    docs/pooling.md lists how."""
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1.0, -1.0, 2.5, -0.5])
    rng = np.random.default_rng(0)
    x = rng.choice(special, (3, 2, 8, 8))
    layer = LPPool2D(norm, 2)
    yt, _ = torch_call(F.lp_pool2d, x, norm, 2)
    np.testing.assert_allclose(layer(x), yt.detach().numpy(), rtol=1e-12, atol=0)   # inf, NaN: exactly
    y32 = LPPool2D(norm, (3, 2), 2)(x.astype(np.float32))
    t32 = F.lp_pool2d(torch.tensor(x, dtype=torch.float32), norm, (3, 2), 2).numpy()
    np.testing.assert_allclose(y32, t32, rtol=1e-6, atol=0)


@SETTINGS
@given(configs(dilation=False, max_hw=8), st.integers(-3, 3), st.integers(-3, 3))
def test_max_unpool2d_matches_torch(cfg, dh, dw):
    rng = np.random.default_rng(cfg["seed"])
    x = rng.standard_normal(cfg["shape"])
    k, s, p = cfg["k"], cfg["s"], cfg["p"]
    try:
        pooled, it = F.max_pool2d(torch.tensor(x), k, s, p, ceil_mode=cfg["ceil"], return_indices=True)
    except RuntimeError:
        return
    idx = it.numpy()
    default = [(L - 1) * ss - 2 * pp + kk for L, kk, ss, pp in zip(pooled.shape[2:], k, s, p)]
    size = (default[0] + dh, default[1] + dw)
    layer = MaxUnpool2D(k, s, p)
    if min(size) < 1:                      # PyTorch returns an empty plane; we refuse
        with pytest.raises(ValueError, match="output.size"):
            layer(pooled.numpy(), idx, output_size=size)
        return
    zt, pt = torch_call(lambda t: F.max_unpool2d(t, it, k, s, p, output_size=size), pooled.numpy())
    if zt is None or not all(dv - ss < v < dv + ss for v, dv, ss in zip(size, default, s)):
        with pytest.raises(ValueError):
            layer(pooled.numpy(), idx, output_size=size)
        return
    z = layer(pooled.numpy(), idx, output_size=size)
    np.testing.assert_array_equal(z, zt.detach().numpy())
    dout = rng.standard_normal(z.shape)
    np.testing.assert_array_equal(layer.backward(dout), grad_of(zt, pt, dout))


def test_torch_worked_examples_agree():
    x = np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(MaxPool2D(2)(x), F.max_pool2d(torch.tensor(x), 2).numpy())
    x = np.arange(49.0).reshape(1, 1, 7, 7)
    np.testing.assert_array_equal(AvgPool2D(2, 3, ceil_mode=True)(x),
                                  F.avg_pool2d(torch.tensor(x), 2, 3, ceil_mode=True).numpy())
