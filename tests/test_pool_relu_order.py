"""ReLU and max pooling commute, bit for bit, forward and backward.

``max`` over a window of ``relu(v)`` equals ``relu`` of the window's max
(ReLU is monotone and maps every v <= 0, -0.0 included, to +0.0; NaN stays
NaN in both), and the gradient reaches the same cell either way: the
window's first maximum when it is > 0, nowhere otherwise.  The default
model relies on this to run its ReLUs after pooling, on 4x fewer values
(minicnn/models.py); these tests are what makes that safe.

The one exception: a window made of padding alone (possible only with
dilation, e.g. kernel 2, dilation 2, padding 1 on a 1x1 input) pools to
-inf, which ReLU after pooling turns into 0.
"""
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from minicnn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU
from minicnn.model import Sequential
from minicnn.models import build_model
from minicnn.seeding import manual_seed

# values that make ties, signed zeros, all-negative windows, infinities and NaN likely
VALUES = [-2.0, -1.0, -0.0, 0.0, 0.5, 1.0, 1.0, 3.0, np.inf, -np.inf, np.nan]


def same_bits(a, b):
    """Equal shapes, dtypes and bit patterns (so -0.0 != 0.0, NaN == same NaN)."""
    ints = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(ints), b.view(ints))


def both_orders(pool_args, x, dout):
    """(y, dx) of relu -> pool and of pool -> relu on the same input."""
    out = []
    for first_relu in (True, False):
        pool, relu = MaxPool2D(*pool_args), ReLU()
        layers = [relu, pool] if first_relu else [pool, relu]
        y = x
        for layer in layers:
            y = layer.forward(y)
        g = dout
        for layer in reversed(layers):
            g = layer.backward(g)
        out.append((y, g))
    return out


@st.composite
def pooling_case(draw):
    k = draw(st.integers(1, 3))
    s = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    p = draw(st.integers(0, k // 2))
    ceil = draw(st.booleans())
    eff = d * (k - 1) + 1
    H = draw(st.integers(max(eff - 2 * p, 1), 7))
    W = draw(st.integers(max(eff - 2 * p, 1), 7))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    idx = draw(st.lists(st.integers(0, len(VALUES) - 1), min_size=2 * 2 * H * W,
                        max_size=2 * 2 * H * W))
    x = np.array([VALUES[i] for i in idx], dtype).reshape(2, 2, H, W)
    return (k, s, p, d, ceil), x, draw(st.integers(0, 2**32 - 1))


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(pooling_case())
def test_relu_and_max_pooling_commute_bit_for_bit(case):
    pool_args, x, seed = case
    padding_only = MaxPool2D(*pool_args).forward(np.zeros_like(x)) == -np.inf
    assume(not padding_only.any())                # the exception: see the next test
    y_shape = padding_only.shape
    dout = np.random.default_rng(seed).standard_normal(y_shape).astype(x.dtype)
    (y1, dx1), (y2, dx2) = both_orders(pool_args, x, dout)
    assert same_bits(y1, y2)
    assert same_bits(dx1, dx2)


def test_a_window_of_padding_alone_is_the_exception():
    x = np.array([[[[-2.0]]]])
    (y1, _), (y2, _) = both_orders((2, 1, 1, 2), x, np.ones((1, 1, 1, 1)))
    assert y1.tolist() == [[[[-np.inf]]]] and y2.tolist() == [[[[0.0]]]]


def test_all_negative_window_gets_no_gradient_either_way():
    x = np.array([[[[-1.0, -2.0], [-0.0, -3.0]]]])
    (y1, dx1), (y2, dx2) = both_orders((2,), x, np.ones((1, 1, 1, 1)))
    assert y1.tolist() == y2.tolist() == [[[[0.0]]]] and not np.signbit(y2).any()
    assert not dx1.any() and not dx2.any()


def textbook_default():
    """The default model with ReLU before each pooling layer (the usual order)."""
    return Sequential([
        Conv2D(1, 32, 3, padding=1), ReLU(), MaxPool2D(2),
        Conv2D(32, 64, 3, padding=1), ReLU(), MaxPool2D(2),
        Flatten(), Dense(64 * 7 * 7, 128), ReLU(), Dense(128, 10),
    ], input_shape=(1, 28, 28), name="default")


def test_default_model_trains_exactly_as_with_relu_before_pooling():
    import minicnn as mc
    from minicnn.train import Trainer

    fast = build_model("default", seed=3)
    manual_seed(3)
    textbook = textbook_default()
    kinds = [type(layer).__name__ for layer in fast.layers]
    assert kinds[:6] == ["Conv2D", "MaxPool2D", "ReLU", "Conv2D", "MaxPool2D", "ReLU"]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4 * 16, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, len(x))
    trainers = [Trainer(m, mc.Adam(m.parameters(), lr=3e-3), batch_size=16, progress=False)
                for m in (fast, textbook)]
    for i in range(4):
        xb, yb = x[16 * i:16 * (i + 1)], y[16 * i:16 * (i + 1)]
        losses = [t.train_step(xb, yb, f"step {i}")[0] for t in trainers]
        assert losses[0] == losses[1]
    for (name, p, _), (_, q, _) in zip(*(t.optimizer.parameters for t in trainers)):
        assert same_bits(p, q), name
