"""Every window-pooling backward pass against finite differences.

One checker (minicnn.gradcheck.check_gradients), float64, tie-free inputs,
default eps and tolerance (1e-6); plus negative controls: deliberately wrong
backward passes must fail the same check.

Input scale: every layer here is positively homogeneous (y(c*x) = c*y(x)),
so its input gradient does not depend on the scale of x, while the
round-off of the finite differences grows with |f| = |sum(y * dout)|.
Inputs in [-0.1, 0.1] keep that round-off far below the tolerance even for
the few entries whose gradient nearly cancels (overlapping windows with
random dout); with inputs in [-1, 1] such entries sit at ~1e-6 for some
seeds.  LP inputs also stay away from 0 (the gradient scales with
x**(p-1)), and are positive where x**p needs it.
"""
import numpy as np
import pytest

from minicnn.gradcheck import check_gradients, tie_free
from minicnn.layers.pooling import AvgPool2D, LPPool2D, MaxPool2D, MaxUnpool2D, MixedPool2D

SHAPE = (2, 3, 7, 8)
INF = float("inf")

# (layer factory, input range (low, high)); ranges keep LP powers real, LP
# inputs away from 0, and |x| tie-free for the +-inf norms
CASES = {
    "max 2x2": (lambda: MaxPool2D(2), (-0.1, 0.1)),
    "max 3x3 s2 p1 (overlapping)": (lambda: MaxPool2D(3, 2, 1), (-0.1, 0.1)),
    "max 3x3 s2 ceil": (lambda: MaxPool2D(3, 2, ceil_mode=True), (-0.1, 0.1)),
    "max dilated padded ceil": (lambda: MaxPool2D((2, 3), (2, 1), 1, dilation=(2, 1), ceil_mode=True),
                                (-0.1, 0.1)),
    "avg 2x2": (lambda: AvgPool2D(2), (-0.1, 0.1)),
    "avg 3x3 s2 p1 (overlapping)": (lambda: AvgPool2D(3, 2, 1), (-0.1, 0.1)),
    "avg ceil, count_include_pad=False": (
        lambda: AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False), (-0.1, 0.1)),
    "avg divisor_override": (lambda: AvgPool2D((2, 3), (1, 2), 1, divisor_override=5), (-0.1, 0.1)),
    "lp p=2 3x3 s2, signed": (lambda: LPPool2D(2, 3, 2), (-0.08, 0.08)),
    "lp p=3 ceil": (lambda: LPPool2D(3, 3, 2, ceil_mode=True), (0.05, 0.15)),
    "lp p=1.5 (2,3)": (lambda: LPPool2D(1.5, (2, 3), (1, 2)), (0.05, 0.15)),
    "lp p=1": (lambda: LPPool2D(1, 2), (-0.1, 0.1)),
    "lp p=inf, positive": (lambda: LPPool2D(INF, 3, 2), (0.01, 0.1)),
    "lp p=inf, negative": (lambda: LPPool2D(INF, 2), (-0.1, -0.01)),
    "lp p=-inf, negative": (lambda: LPPool2D(-INF, 2), (-0.1, -0.01)),
    "mixed 2x2": (lambda: MixedPool2D(2, alpha=0.3), (-0.1, 0.1)),
    "mixed 3x3 s2 (overlapping)": (lambda: MixedPool2D(3, 2, alpha=0.7), (-0.1, 0.1)),
    "mixed learnable alpha": (lambda: MixedPool2D(2, alpha=0.4, learnable=True), (-0.1, 0.1)),
    "mixed learnable alpha, overlapping": (lambda: MixedPool2D(3, 2, alpha=0.6, learnable=True),
                                           (-0.1, 0.1)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_gradients(name):
    make, (low, high) = CASES[name]
    layer = make()
    away_from_0 = 0.02 if isinstance(layer, LPPool2D) and low < 0 < high else 0.0
    x = tie_free(SHAPE, np.random.default_rng(0), low=low, high=high, min_gap=1e-4,
                 min_abs=away_from_0)
    result = check_gradients(layer, x)
    assert result.passed, result.errors
    if getattr(layer, "learnable", False):
        assert set(result.errors) == {"x", "alpha"}


@pytest.mark.parametrize("output_size", [None, (7, 8)])
def test_maxunpool_gradients(output_size):
    x = tie_free(SHAPE, np.random.default_rng(1), low=-0.1, high=0.1, min_gap=1e-4)
    pooled, idx = MaxPool2D(2, return_indices=True)(x)          # unique indices
    kwargs = {"indices": idx} if output_size is None else {"indices": idx, "output_size": output_size}
    result = check_gradients(MaxUnpool2D(2), pooled, forward_kwargs=kwargs)
    assert result.passed, result.errors


# ---------------------------------------------------------------- negative controls
class MaxToWrongCell(MaxPool2D):
    """Routes each gradient one column to the right of the argmax."""

    def backward(self, dout):
        return np.roll(super().backward(dout), 1, axis=-1)


class AvgForgetsDivisor(AvgPool2D):
    """Spreads dout over the window without dividing by the window size."""

    def backward(self, dout):
        return super().backward(dout) * 9


class MaxToEveryTap(MaxPool2D):
    """Sends the gradient to every tap (an average-like rule) instead of the argmax."""

    def backward(self, dout):
        spread = AvgPool2D(self.kernel_size, self.stride, self.padding)
        spread.forward(np.zeros(self._x_shape))
        return spread.backward(dout) * 9


class LPSlightlyOff(LPPool2D):
    """A 0.1% error: still caught at tolerance 1e-6."""

    def backward(self, dout):
        return super().backward(dout) * 1.001


class MixedWrongAlphaGrad(MixedPool2D):
    """Correct dx, but the alpha gradient has the wrong sign."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["alpha"] *= -1
        return dx


@pytest.mark.parametrize("layer, bad_key", [
    (MaxToWrongCell(2), "x"),
    (MaxToWrongCell(3, 2, 1), "x"),
    (MaxToEveryTap(3, 2, 1), "x"),
    (AvgForgetsDivisor(3, 2, 1), "x"),
    (LPSlightlyOff(2, 3, 2), "x"),
    (MixedWrongAlphaGrad(2, alpha=0.4, learnable=True), "alpha"),
])
def test_negative_control_wrong_backward_fails(layer, bad_key):
    x = tie_free(SHAPE, np.random.default_rng(0), low=0.05, high=0.15, min_gap=1e-4)
    result = check_gradients(layer, x)
    assert not result.passed
    assert result.errors[bad_key] > 1e-4, result.errors
    if bad_key == "alpha":
        assert result.errors["x"] <= result.tol            # only the alpha gradient is wrong
