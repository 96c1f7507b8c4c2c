"""The model's two exact rewrites (``Model.fuse``): a ReLU that only a
MaxPool2D reads runs after the pooling, and backward goes through
Conv2D -> MaxPool2D(2) pairs as one step.

Both must give the graph's own values and gradients, bit for bit:
the same gradients (dx, dW, db), in both dtypes, on both convolution
algorithms (direct: ``C_in*9 <= 36``; im2col + GEMM: more), with ties,
NaN, signed zeros and odd planes whose last row or column no window
covers.  The numerical gradient check of a fused model is in
``minicnn.gradcheck_cases`` ("model: conv+pool backward as one step", both paths).
"""
import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit

import minicnn as m
from minicnn.kernels import conv as K


def _pair_model(c_in, c_out, hw, seed, relu=False):
    """conv -> pool -> dense, or conv -> ReLU -> pool -> dense (``relu``)."""
    m.manual_seed(seed)
    act = [m.ReLU()] if relu else []
    return m.Sequential([m.Conv2D(c_in, c_out, 3, padding=1)] + act + [m.MaxPool2D(2), m.Flatten(),
                         m.Dense(c_out * (hw[0] // 2) * (hw[1] // 2), 3)], input_shape=(c_in,) + hw)


def _run(model, x, dout, input_grad):
    out = model.forward(x)
    dx = model.backward(dout, input_grad=input_grad)
    grads = {n: g.copy() for n, g in model.named_grads()}
    return out, dx, grads


@st.composite
def pair_cases(draw):
    c_in = draw(st.sampled_from([1, 2, 5, 8]))          # 1, 2: direct; 5, 8: GEMM
    return dict(c_in=c_in, c_out=draw(st.integers(1, 5)), N=draw(st.integers(1, 3)),
                hw=(draw(st.integers(2, 9)), draw(st.integers(2, 9))),
                dtype=draw(st.sampled_from([np.float32, np.float64])),
                special=draw(st.sampled_from(["none", "ties", "nan", "zeros"])),
                input_grad=draw(st.booleans()), relu=draw(st.booleans()),
                chunk_floats=draw(st.sampled_from([m.Conv2D.chunk_floats, 1])),   # 1: a sample a chunk
                seed=draw(st.integers(0, 2**16)))


@settings(max_examples=40, deadline=None)
@given(pair_cases())
def test_fused_pair_equals_the_two_layers(case):
    rng = np.random.default_rng(case["seed"])
    hw, dt = case["hw"], case["dtype"]
    x = rng.standard_normal((case["N"], case["c_in"]) + hw)
    if case["special"] == "ties":          # few distinct values: equal taps in many windows
        x = np.round(x)
    elif case["special"] == "nan":
        x.flat[rng.integers(x.size)] = np.nan
    elif case["special"] == "zeros":       # conv outputs of +0.0 and -0.0 where the input is 0
        x[..., ::2] = 0.0
        x[..., 1::2] = -0.0
    fused = _pair_model(case["c_in"], case["c_out"], hw, 7, case["relu"]).astype(dt)
    fused.layers[0].chunk_floats = case["chunk_floats"]
    plain = copy.deepcopy(fused)
    plain.fuse = False
    x = x.astype(dt)
    dout = rng.standard_normal((case["N"], 3)).astype(dt)
    a = _run(fused, x, dout, case["input_grad"])
    b = _run(plain, x, dout, case["input_grad"])
    assert len(fused._conv_pool_pairs()) == 1                  # the pair goes back fused
    assert len(fused._relu_pool_swaps()) == case["relu"]       # the ReLU runs after the pooling
    assert a[0].tobytes() == b[0].tobytes()
    if case["input_grad"]:
        assert a[1].tobytes() == b[1].tobytes()
    else:
        assert a[1] is None and b[1] is None
    for name in a[2]:
        assert a[2][name].tobytes() == b[2][name].tobytes(), name


@pytest.mark.parametrize("name, swaps", [("default", 0), ("lenet", 2)])
def test_named_models_run_rewritten_and_equal(name, swaps):
    """The default model (conv -> pool -> ReLU, twice) and the LeNet (conv
    -> ReLU -> pool, twice: both ReLUs run after their pooling): both
    convolutions go back with their pooling, and one step equals the graph
    run layer by layer in the written order, values and gradients bit for bit."""
    from minicnn.models import build_model
    fused = build_model(name, seed=0)
    plain = copy.deepcopy(fused)
    plain.fuse = False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((4, 10)).astype(np.float32)
    a, b = _run(fused, x, dout, True), _run(plain, x, dout, True)
    assert len(fused._relu_pool_swaps()) == swaps and len(fused._conv_pool_pairs()) == 2
    if swaps:
        assert plain.layers[1]._mask.shape == (4, 8, 28, 28)     # written order: the full map
        assert fused.layers[1]._mask.shape == (4, 8, 14, 14)     # swapped: the pooled map
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    for name in a[2]:
        assert a[2][name].tobytes() == b[2][name].tobytes(), name


SPECIAL = np.array([-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 3.0, np.inf, -np.inf, np.nan])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("pool_args", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1),
                                       dict(kernel_size=3, stride=2, ceil_mode=True),
                                       dict(kernel_size=2, stride=1, dilation=2)])
def test_relu_before_any_max_pooling_runs_after_it_bit_for_bit(dtype, pool_args):
    """ReLU -> MaxPool2D (overlapping, padded, ceil mode, dilated without
    padding) inside a model equals the two layers in order: forward values
    and input gradient, bit for bit, on ties, signed zeros, infinities and
    NaN."""
    rng = np.random.default_rng(len(str(pool_args)) + int(dtype == np.float64))
    model = m.Sequential([m.ReLU(), m.MaxPool2D(**pool_args), m.Flatten()], input_shape=(3, 7, 8))
    plain = copy.deepcopy(model)
    plain.fuse = False
    assert len(model._relu_pool_swaps()) == 1
    x = rng.choice(SPECIAL, (2, 3, 7, 8)).astype(dtype)
    y = model.forward(x)
    dout = rng.standard_normal(y.shape).astype(dtype)
    a = (y, model.backward(dout))
    b = (plain.forward(x), plain.backward(dout))
    assert a[0].tobytes() == b[0].tobytes()
    assert a[1].tobytes() == b[1].tobytes()


def test_relu_swap_only_where_exact():
    """No swap where the result could differ or another layer needs the
    ReLU's own output: pooling that returns indices (ties among zeroed
    cells), a possible window of padding alone (dilation with padding),
    average pooling, a ReLU read twice or that is the model's output."""
    def swaps(*layers):
        return m.Sequential(list(layers), input_shape=(1, 6, 6))._relu_pool_swaps()
    assert len(swaps(m.ReLU(), m.MaxPool2D(3, 2, 1))) == 1
    assert swaps(m.ReLU(), m.MaxPool2D(2, return_indices=True)) == {}
    assert swaps(m.ReLU(), m.MaxPool2D(2, padding=1, dilation=2)) == {}
    assert swaps(m.ReLU(), m.AvgPool2D(2)) == {}
    assert swaps(m.MaxPool2D(2), m.ReLU()) == {}
    assert swaps(m.ReLU()) == {}
    inp = m.Input((1, 6, 6))
    h = m.ReLU()(inp)
    branching = m.Model(inp, m.Concat()(m.MaxPool2D(2)(h), m.AvgPool2D(2)(h)))
    assert branching._relu_pool_swaps() == {}
    model = m.Sequential([m.ReLU(), m.MaxPool2D(2)], input_shape=(1, 6, 6))
    model.fuse = False
    model.forward(np.ones((1, 1, 6, 6), np.float32))
    assert model.layers[0]._mask.shape == (1, 1, 6, 6)      # fuse off: in the written order


def test_only_a_conv_read_by_the_pool_alone_is_fused():
    """A conv whose output also feeds another layer, or that is the model's
    output, keeps its full-resolution map: no fusion."""
    inp = m.Input((1, 6, 6))
    h = m.Conv2D(1, 2, 3, padding=1)(inp)
    out = m.Concat()(m.MaxPool2D(2)(h), m.AvgPool2D(2)(h))
    branching = m.Model(inp, out)
    branching.forward(np.ones((1, 1, 6, 6), np.float32))
    assert branching._conv_pool_pairs() == {}
    last = m.Sequential([m.Conv2D(1, 2, 3, padding=1)], input_shape=(1, 6, 6))
    assert last._conv_pool_pairs() == {}
    for pool in (m.MaxPool2D(2, ceil_mode=True), m.MaxPool2D(3, 2), m.MaxPool2D(2, return_indices=True),
                 m.MaxPool2D(2, padding=1), m.MaxPool2D(2, stride=1)):
        assert not pool.is_plain_2x2()
    seq = m.Sequential([m.Conv2D(1, 2, 3, padding=1), m.MaxPool2D(2, 1)], input_shape=(1, 6, 6))
    assert seq._conv_pool_pairs() == {}


def test_fused_errors_name_the_layer():
    conv, pool = m.Conv2D(5, 2, 3, name="c"), m.MaxPool2D(2, name="p")
    with pytest.raises(RuntimeError, match="c.backward called before forward"):
        conv.backward_maxpool2x2(np.zeros((1, 2, 1, 1), np.float32), pool)
    pool.forward(conv.forward(np.zeros((1, 5, 6, 6), np.float32)))
    with pytest.raises(ValueError, match=r"p.backward: expected dout of shape \(1, 2, 2, 2\)"):
        conv.backward_maxpool2x2(np.zeros((1, 2, 3, 3), np.float32), pool)
    pool.forward(np.zeros((1, 2, 8, 8), np.float32))       # the pool now holds another input
    with pytest.raises(RuntimeError, match="p did not pool this layer's last output"):
        conv.backward_maxpool2x2(np.zeros((1, 2, 4, 4), np.float32), pool)
    with pytest.raises(RuntimeError, match="q.backward called before forward"):
        conv.backward_maxpool2x2(np.zeros((1, 2, 2, 2), np.float32), m.MaxPool2D(2, name="q"))


# ------------------------------------------ the GEMM path's kernel, by definition
@pytest.mark.parametrize("Ho,Wo", [(4, 6), (5, 7), (2, 3), (3, 2)])
def test_rows_from_maxpool2x2_against_its_definition(Ho, Wo):
    """rows_from_maxpool2x2 = 2x2 max-pool backward + the (F, N*P) layout
    of rows_from_nchw.  Threaded and serially compiled agree bit for bit
    with the two steps; the output starts as NaN so an entry the kernel
    forgets stays NaN and fails, and a -0.0 gradient must stay -0.0 + 0."""
    rng = np.random.default_rng(Ho * 10 + Wo)
    N, F, P = 3, 4, Ho * Wo
    H2, W2 = Ho // 2, Wo // 2
    planes = np.round(rng.standard_normal((N, F, Ho, Wo)) * 2).astype(np.float32)   # ties
    planes[0, 0, 0, 1] = np.nan
    pool = m.MaxPool2D(2)
    pool.forward(planes)
    winners = pool._argmax.reshape(N, F, H2, W2)
    dout = rng.standard_normal((N, F, H2, W2)).astype(np.float32)
    dout[0, 0, 0, 0] = -0.0
    want = pool.backward(dout).transpose(1, 0, 2, 3).reshape(F, N * P)
    serial = njit(parallel=False)(K._rows_from_maxpool2x2)
    for kernel in (K.rows_from_maxpool2x2, serial):
        rows = np.full((F, N * P), np.nan, np.float32)
        kernel(dout, winners, Ho, Wo, rows)
        assert rows.tobytes() == want.tobytes()


def test_backward_follows_the_rewrites_of_its_forward():
    """The backward uses the plan its forward recorded: turning ``fuse`` off
    in between changes nothing until the next forward, and a copy made
    between them (whose nodes are new) plans again and gets the same
    gradients."""
    m.manual_seed(0)
    model = m.Sequential([m.Conv2D(1, 2, 3, padding=1), m.ReLU(), m.MaxPool2D(2), m.Flatten(),
                          m.Dense(2 * 3 * 3, 3)], input_shape=(1, 6, 6))
    x = np.random.default_rng(0).standard_normal((2, 1, 6, 6)).astype(np.float32)
    dout = np.random.default_rng(1).standard_normal((2, 3)).astype(np.float32)
    model.forward(x)
    copied = copy.deepcopy(model)
    assert copied._last_plan is None and len(model._last_plan[0]) == 1
    want = model.backward(dout)
    np.testing.assert_array_equal(copied.backward(dout), want)
    model.forward(x)
    model.fuse = False
    np.testing.assert_array_equal(model.backward(dout), want)
    model.forward(x)                                  # now unfused, layer by layer
    assert model._last_plan == ({}, {}) and model.layers[1]._mask.shape == (2, 2, 6, 6)
    np.testing.assert_array_equal(model.backward(dout), want)
