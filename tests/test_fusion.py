"""Backward through Conv2D -> MaxPool2D(2) pairs as one step (``Model.fuse``).

The fused backward must be the two layers' backward passes, bit for bit:
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


def _pair_model(c_in, c_out, hw, seed):
    m.manual_seed(seed)
    return m.Sequential([m.Conv2D(c_in, c_out, 3, padding=1), m.MaxPool2D(2), m.Flatten(),
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
                input_grad=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


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
    fused = _pair_model(case["c_in"], case["c_out"], hw, 7).astype(dt)
    plain = copy.deepcopy(fused)
    plain.fuse = False
    x = x.astype(dt)
    dout = rng.standard_normal((case["N"], 3)).astype(dt)
    a = _run(fused, x, dout, case["input_grad"])
    b = _run(plain, x, dout, case["input_grad"])
    assert len(fused._conv_pool_pairs()) == 1                  # the pair goes back fused
    assert a[0].tobytes() == b[0].tobytes()
    if case["input_grad"]:
        assert a[1].tobytes() == b[1].tobytes()
    else:
        assert a[1] is None and b[1] is None
    for name in a[2]:
        assert a[2][name].tobytes() == b[2][name].tobytes(), name


def test_default_model_runs_fused_and_equal():
    """The default model's two pairs: one training step, fused and not."""
    from minicnn.models import default_model
    m.manual_seed(0)
    fused = default_model()
    plain = copy.deepcopy(fused)
    plain.fuse = False
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    dout = rng.standard_normal((4, 10)).astype(np.float32)
    a, b = _run(fused, x, dout, False), _run(plain, x, dout, False)
    assert len(fused._conv_pool_pairs()) == 2
    assert a[0].tobytes() == b[0].tobytes()
    for name in a[2]:
        assert a[2][name].tobytes() == b[2][name].tobytes(), name


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
