"""Every layer type and every parameter, proved against finite differences.

The cases live in :mod:`minicnn.gradcheck_cases` (shared with
``minicnn gradcheck``).  float64, random upstream gradient, kink-free
inputs, tolerance 1e-6 on the max relative error.
"""
import numpy as np
import pytest

import minicnn as mc
from minicnn.gradcheck import DEFAULT_TOL, check_gradients
from minicnn.gradcheck_cases import CASES, run_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_backward_matches_numerical_gradient(case):
    result = run_case(case, seed=0)
    assert result.passed, f"{case.name}: relative errors {result.errors} exceed {DEFAULT_TOL}"
    assert result.errors, "nothing was checked"


def test_every_public_layer_has_a_case():
    covered = {c.name.split()[0] for c in CASES}
    missing = sorted(set(mc.LAYERS) - covered)
    assert not missing, f"layers without a gradient check: {missing}"


def test_every_parameter_is_checked():
    for case in CASES:
        built = case.build(np.random.default_rng(0))
        module = built[0]
        result = run_case(case)
        names = [n for n, _ in (module.named_params() if hasattr(module, "named_params")
                                else module.params.items())]
        assert set(names) <= set(result.errors), f"{case.name}: unchecked params {set(names) - set(result.errors)}"


class _AvgForgetsToDivide(mc.AvgPool2D):
    def backward(self, dout):
        return super().backward(dout) * 4.0


class _MaxRoutesToLastTie(mc.MaxPool2D):
    """Routes each gradient to the window's bottom-right cell instead of the argmax."""
    def backward(self, dout):
        dx = np.zeros(self._x_shape)
        dx[:, :, 1::2, 1::2] = dout
        return dx


@pytest.mark.parametrize("wrong, shape", [(_AvgForgetsToDivide(2), (2, 2, 4, 4)),
                                          (_MaxRoutesToLastTie(2), (2, 2, 4, 4))])
def test_negative_control_wrong_backward_fails(wrong, shape):
    x = np.random.default_rng(0).permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape)
    assert not check_gradients(wrong, x, seed=1).passed
