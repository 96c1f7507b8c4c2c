"""The gradient checker itself: its formulas, its inputs, and negative controls
(deliberately wrong backward passes must FAIL)."""
import numpy as np
import pytest

import minicnn
from minicnn.gradcheck import (DEFAULT_TOL, check_gradients, numerical_gradient, rel_error, roundoff_floor,
                               tie_free)
from minicnn.layers import Concat, Conv2D, Dense, Flatten, ReLU
from minicnn.model import Sequential


# ---------------------------------------------------------------- rel_error
def test_rel_error_known_values():
    assert rel_error(1.0, 1.0) == 0.0
    assert rel_error([1.0], [1.1]) == pytest.approx(0.1 / 2.1, rel=1e-14)
    assert rel_error([2.0, 1.0], [2.0, 3.0]) == pytest.approx(2.0 / 4.0, rel=1e-15)   # max over entries
    assert rel_error([1.0, 2.0], [1.0, -2.0]) == 1.0                                 # opposite signs
    assert rel_error([0.0, 0.0], [0.0, 0.0]) == 0.0
    assert rel_error([1e-9], [0.0]) == pytest.approx(0.1, rel=1e-12)                  # floor 1e-8
    assert rel_error([3e-9], [1e-9]) == pytest.approx(0.2, rel=1e-12)
    assert rel_error([], []) == 0.0
    assert rel_error(np.float32(1.0), 1.5) == pytest.approx(0.2, rel=1e-15)
    a, n = np.array([1.0, -3.0, 0.5]), np.array([1.2, -2.9, 0.5])
    assert rel_error(a, n) == rel_error(n, a) == pytest.approx(0.2 / 2.2, rel=1e-14)


def test_rel_error_round_off_floor():
    # entries smaller than floor / tol are measured against floor / tol (here 0.01)
    assert rel_error([1e-4], [1e-4 + 1e-9], floor=1e-8, tol=1e-6) == pytest.approx(1e-7, rel=1e-9)
    assert rel_error([1e-4], [1e-4 + 2e-8], floor=1e-8, tol=1e-6) == pytest.approx(2e-6, rel=1e-9)
    assert rel_error([1.0], [1.0 + 1e-6], floor=1e-8, tol=1e-6) == pytest.approx(1e-6 / (2 + 1e-6), rel=1e-9)
    assert rel_error([1e-4], [1e-4 + 1e-9]) == pytest.approx(1e-9 / (2e-4 + 1e-9), rel=1e-6)   # no floor
    # the floor: 16 units of round-off of sum |out * dout|, divided by the step
    out, dout = np.array([1.0, -2.0]), np.array([3.0, 0.5])
    assert roundoff_floor(out, dout, 1e-6) == pytest.approx(16 * 2.0 ** -53 * 4.0 / 1e-6, rel=1e-15)


@pytest.mark.parametrize("name, seed", [("LPPool2D p=3 overlapping", 7), ("LPPool2D p=3 overlapping", 16),
                                        ("Dense", 8), ("AvgPool2D divisor_override", 14),
                                        ("model: branching max|avg|SPP concat", 18)])
def test_round_off_alone_does_not_fail_a_case(name, seed):
    """These seeds failed before the floor: each on one entry of 4e-6 to 2e-4
    whose |a - n| (1e-10 to 2e-9) is the central difference's round-off."""
    from minicnn.gradcheck_cases import CASES, run_case
    result = run_case(next(c for c in CASES if c.name == name), seed)
    assert result.passed, result.errors


class DenseOffBy(Dense):
    """dx off by a constant absolute amount in every entry."""
    offset = 0.0

    def backward(self, dout):
        return super().backward(dout) + self.offset


def test_the_floor_does_not_hide_absolute_errors_above_it():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 6))
    layer = DenseOffBy(6, 5)
    layer.offset = 0.0
    assert check_gradients(layer, x).passed
    layer.astype(np.float64)
    out = layer.forward(x)
    floor = roundoff_floor(out, np.random.default_rng(0).standard_normal(out.shape), 1e-6)
    assert 1e-9 < floor < 1e-7
    layer.offset = 50 * floor            # relative to the large entries: under 1e-6
    result = check_gradients(layer, x)
    assert not result.passed and result.errors["x"] > 10 * DEFAULT_TOL, result.errors


def test_numerical_gradient_restores_input():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    keep = x.copy()
    idx, g = numerical_gradient(lambda: float(np.sum(x ** 3)), x)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_allclose(g, 3 * keep.reshape(-1)[idx] ** 2, rtol=1e-8)
    idx, g = numerical_gradient(lambda: float(np.sum(x ** 3)), x, indices=[3, 0])
    np.testing.assert_array_equal(idx, [3, 0])
    np.testing.assert_allclose(g, [48.0, 3.0], rtol=1e-8)


# ----------------------------------------------------------------- tie_free
@pytest.mark.parametrize("shape, min_gap, min_abs", [((5, 6, 7), 1e-3, 0.0), ((2, 3, 4, 4), 1e-3, 0.05),
                                                     ((1,), 1e-3, 0.1), ((40,), 0.02, 0.0)])
def test_tie_free(shape, min_gap, min_abs):
    rng = np.random.default_rng(0)
    x = tie_free(shape, rng, min_gap=min_gap, min_abs=min_abs)
    assert x.shape == shape and x.dtype == np.float64
    s = np.sort(x.reshape(-1))
    if s.size > 1:
        assert np.diff(s).min() >= min_gap
    assert np.abs(x).min() >= min_abs
    spacing = 2.0 / max(s.size - 1, 1)
    assert s.min() >= -1 - spacing / 4 - min_abs and s.max() <= 1 + spacing / 4 + min_abs
    # shuffled, not sorted (a sorted input would hide layout bugs)
    if s.size > 10:
        assert not np.array_equal(x.reshape(-1), s)


def test_tie_free_is_reproducible_and_validates_gap():
    a = tie_free((3, 4), np.random.default_rng(5))
    b = tie_free((3, 4), np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="gap"):
        tie_free((1000,), np.random.default_rng(0), min_gap=1e-2)
    x = tie_free((10,), np.random.default_rng(0), low=2.0, high=3.0, min_gap=0.05)
    assert x.min() > 1.9 and x.max() < 3.1


# ------------------------------------------------------ correct layers pass
def test_passes_on_correct_layers():
    rng = np.random.default_rng(0)
    minicnn.manual_seed(0)
    cases = [
        (Conv2D(2, 3, 3, stride=2, padding=1), tie_free((2, 2, 5, 5), rng)),
        (Dense(5, 4), tie_free((3, 5), rng)),
        (Sequential([Conv2D(1, 2, 3), ReLU(), Flatten(), Dense(2 * 3 * 3, 3)]), tie_free((2, 1, 5, 5), rng)),
    ]
    for module, x in cases:
        result = check_gradients(module, x)
        assert result.passed, (module, result.errors)
        assert result.tol == DEFAULT_TOL == 1e-6


def test_module_is_left_in_float64():
    layer = Dense(3, 2)
    check_gradients(layer, tie_free((2, 3), np.random.default_rng(0)))
    assert layer.params["W"].dtype == np.float64 and layer.grads["W"].dtype == np.float64


def test_multi_input_keys():
    rng = np.random.default_rng(0)
    result = check_gradients(Concat(), [tie_free((2, 3), rng), tie_free((2, 2), rng)])
    assert result.passed and set(result.errors) == {"x0", "x1"}


# --------------------------------------------------------- negative controls
class TransposedDense(Dense):
    """dx = dout @ W instead of dout @ W.T (type-checks for square W)."""

    def backward(self, dout):
        super().backward(dout)
        return dout @ self.params["W"]


class NoBiasGradDense(Dense):
    """Forgets the bias gradient."""

    def backward(self, dout):
        self.grads["W"][...] = self._x.T @ dout
        return dout @ self.params["W"].T


class HalfDWConv(Conv2D):
    """Weight gradient scaled by 0.5."""

    def backward(self, dout):
        dx = super().backward(dout)
        self.grads["W"] *= 0.5
        return dx


class LeakyGradReLU(ReLU):
    """Passes the gradient through negative inputs too."""

    def backward(self, dout):
        super().backward(dout)
        return np.array(dout, copy=True)


class MutatingReLU(ReLU):
    """The classic bug: ``dout[mask] = 0`` on the caller's array."""

    def backward(self, dout):
        dout[~self._mask] = 0
        return dout


def _bad(errors, key):
    """``key`` fails clearly; every other checked array still passes."""
    assert errors[key] > 1e-2, errors
    assert all(e <= DEFAULT_TOL for k, e in errors.items() if k != key), errors


def test_fails_on_transposed_dense():
    minicnn.manual_seed(0)
    layer = TransposedDense(4, 4)
    result = check_gradients(layer, tie_free((3, 4), np.random.default_rng(0)))
    assert not result.passed
    _bad(result.errors, "x")


def test_fails_on_missing_bias_grad():
    minicnn.manual_seed(0)
    result = check_gradients(NoBiasGradDense(4, 3), tie_free((3, 4), np.random.default_rng(0)))
    assert not result.passed
    _bad(result.errors, "b")


def test_fails_on_half_dw_conv():
    minicnn.manual_seed(0)
    result = check_gradients(HalfDWConv(2, 2, 3, padding=1), tie_free((2, 2, 4, 4), np.random.default_rng(0)))
    assert not result.passed
    _bad(result.errors, "W")
    assert result.errors["W"] == pytest.approx(1 / 3, rel=1e-3)   # |a - n| / (|a| + |n|) = 0.5 / 1.5


def test_fails_on_leaky_relu_gradient():
    result = check_gradients(LeakyGradReLU(), tie_free((2, 3, 4), np.random.default_rng(0), min_abs=0.05))
    assert not result.passed
    assert result.errors["x"] == 1.0                               # exactly 0 numerically, nonzero claimed


def test_fails_inside_a_model():
    """A wrong layer deep in a Sequential is caught, and blamed by name."""
    minicnn.manual_seed(0)
    model = Sequential([Conv2D(1, 2, 3), ReLU(), Flatten(), NoBiasGradDense(2 * 3 * 3, 3)])
    result = check_gradients(model, tie_free((2, 1, 5, 5), np.random.default_rng(0)))
    assert not result.passed
    _bad(result.errors, "nobiasgraddense.b")


def test_raises_if_backward_mutates_dout():
    with pytest.raises(AssertionError, match="mutated dout"):
        check_gradients(MutatingReLU(), tie_free((2, 3, 4), np.random.default_rng(0), min_abs=0.05))


# --------------------------------------------------------------- num_samples
class CountingDense(Dense):
    calls = 0
    inputs_seen: set = set()

    def forward(self, x):
        CountingDense.calls += 1
        CountingDense.inputs_seen.add(x.tobytes())
        return super().forward(x)


@pytest.mark.parametrize("num_samples, expected", [(None, 1 + 2 * (12 + 6 + 2)),
                                                   (2, 1 + 2 * (2 + 2 + 2)),
                                                   (5, 1 + 2 * (5 + 5 + 2)),   # b has only 2 entries
                                                   (100, 1 + 2 * (12 + 6 + 2))])
def test_num_samples_checks_a_subset(num_samples, expected):
    CountingDense.calls, CountingDense.inputs_seen = 0, set()
    before = []
    minicnn.manual_seed(0)
    result = check_gradients(CountingDense(3, 2), tie_free((4, 3), np.random.default_rng(0)),
                             num_samples=num_samples, before_forward=lambda: before.append(1))
    assert result.passed
    assert CountingDense.calls == expected
    assert len(before) == expected                      # before_forward runs before every forward
    # distinct entries of x are perturbed (sampling without replacement): the
    # original x plus two perturbed copies per sampled entry
    assert len(CountingDense.inputs_seen) == 1 + 2 * min(num_samples or 12, 12)


def test_num_samples_can_miss_a_single_bad_entry():
    """With a subset, an error confined to one entry is found only if sampled:
    checking everything always finds it."""

    class OneBadEntry(Dense):
        def backward(self, dout):
            dx = super().backward(dout)
            dx = dx.copy()
            dx[0, 0] += 1.0
            return dx

    x = tie_free((6, 5), np.random.default_rng(0))
    minicnn.manual_seed(0)
    assert check_gradients(OneBadEntry(5, 3), x).errors["x"] > 0.1
    found = []
    for seed in range(40):
        minicnn.manual_seed(0)
        found.append(check_gradients(OneBadEntry(5, 3), x, seed=seed, num_samples=3).errors["x"] > 0.1)
    # 3 of 30 entries per check: the bad one is sampled about 1 time in 10
    assert 0 < sum(found) < 40 * 0.3, found
