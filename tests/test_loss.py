"""SoftmaxCrossEntropy against a naive float64 -log(softmax), finite differences and PyTorch."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicnn.gradcheck import numerical_gradient, rel_error
from minicnn.losses import SoftmaxCrossEntropy


def naive_loss(z, y):
    """mean_n -log(exp(z[n, y[n]]) / sum_k exp(z[n, k])), straight from the definition."""
    total = 0.0
    for n in range(z.shape[0]):
        denom = sum(math.exp(v) for v in z[n])
        total += -math.log(math.exp(z[n, y[n]]) / denom)
    return total / z.shape[0]


def naive_grad(z, y):
    """(softmax(z) - onehot(y)) / N."""
    N, K = z.shape
    g = np.zeros((N, K))
    for n in range(N):
        denom = sum(math.exp(v) for v in z[n])
        for k in range(K):
            g[n, k] = (math.exp(z[n, k]) / denom - (k == y[n])) / N
    return g


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 6), K=st.integers(2, 7), scale=st.floats(0.1, 20), seed=st.integers(0, 2**32 - 1))
def test_matches_naive_on_moderate_logits(N, K, scale, seed):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((N, K)) * scale
    y = rng.integers(0, K, N)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(z, y)
    assert isinstance(loss, float)
    assert loss == pytest.approx(naive_loss(z, y), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(loss_fn.backward(), naive_grad(z, y), rtol=1e-10, atol=1e-15)


def test_hand_values():
    # uniform logits: loss = log K, gradient (1/K - onehot) / N
    loss_fn = SoftmaxCrossEntropy()
    assert loss_fn.forward(np.zeros((2, 4)), np.array([0, 3])) == pytest.approx(math.log(4), rel=1e-15)
    np.testing.assert_allclose(loss_fn.backward(), [[-0.375, 0.125, 0.125, 0.125],
                                                    [0.125, 0.125, 0.125, -0.375]], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_are_finite_and_exact(dtype):
    z = np.array([[1e4, -1e4, 0.0]], dtype)
    loss_fn = SoftmaxCrossEntropy()
    assert loss_fn.forward(z, np.array([0])) == 0.0
    np.testing.assert_array_equal(loss_fn.backward(), [[0.0, 0.0, 0.0]])
    assert loss_fn.forward(z, np.array([1])) == 2e4
    np.testing.assert_array_equal(loss_fn.backward(), [[1.0, -1.0, 0.0]])
    assert loss_fn.forward(z, np.array([2])) == 1e4
    # a batch mixing huge and moderate rows
    z2 = np.array([[1e4, -1e4, 0.0], [1.0, 2.0, 3.0], [-1e4, -1e4, -1e4]], dtype)
    loss = loss_fn.forward(z2, np.array([1, 2, 0]))
    want = (2e4 + naive_loss(np.array([[1.0, 2.0, 3.0]]), [2]) + math.log(3)) / 3
    assert math.isfinite(loss)
    assert loss == pytest.approx(want, rel=1e-6 if dtype == np.float32 else 1e-12)
    assert np.isfinite(loss_fn.backward()).all()


def test_backward_is_softmax_minus_onehot_over_n():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5, 4)) * 3
    y = np.array([0, 3, 1, 1, 2])
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(z, y)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(loss_fn.backward(), (p - np.eye(4)[y]) / 5, rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(loss_fn.backward(2.5), 2.5 * (p - np.eye(4)[y]) / 5, rtol=1e-13, atol=1e-16)
    # rows of the gradient sum to zero
    np.testing.assert_allclose(loss_fn.backward().sum(axis=1), 0, atol=1e-16)


def test_numerical_gradient():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 5))
    y = np.array([4, 0, 2, 2])
    loss_fn = SoftmaxCrossEntropy()
    loss_fn.forward(z, y)
    analytic = loss_fn.backward()
    idx, num = numerical_gradient(lambda: loss_fn.forward(z, y), z)
    assert rel_error(analytic.reshape(-1)[idx], num) < 1e-6
    assert len(idx) == z.size


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        SoftmaxCrossEntropy().backward()


@pytest.mark.parametrize("labels, exc, match", [
    (np.array([0, 3]), ValueError, r"\[0, 2\]"),          # out of range (K = 3)
    (np.array([-1, 0]), ValueError, r"\[0, 2\]"),
    (np.array([0.0, 1.0]), TypeError, "integers"),        # float labels
    (np.array([True, False]), TypeError, "integers"),
    (np.array([[0], [1]]), ValueError, r"labels of shape \(2,\)"),   # wrong shape
    (np.array([0, 1, 2]), ValueError, r"labels of shape \(2,\)"),
    (np.array(1), ValueError, r"labels of shape \(2,\)"),
])
def test_label_validation(labels, exc, match):
    with pytest.raises(exc, match=match):
        SoftmaxCrossEntropy().forward(np.zeros((2, 3)), labels)


def test_logits_must_be_2d():
    with pytest.raises(ValueError, match=r"logits of shape \(N, K\)"):
        SoftmaxCrossEntropy().forward(np.zeros(3), np.array([0]))


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e4])
def test_torch_oracle(scale):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    z = rng.standard_normal((6, 5)) * scale
    y = rng.integers(0, 5, 6)
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn.forward(z, y)
    grad = loss_fn.backward()
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y))
    tl.backward()
    assert loss == pytest.approx(tl.item(), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(grad, tz.grad.numpy(), rtol=1e-10, atol=1e-15)


def test_logits_follow_the_layers_dtype_rule_and_an_empty_batch_is_refused():
    from minicnn.losses import SoftmaxCrossEntropy
    loss = SoftmaxCrossEntropy()
    for bad in (np.zeros((2, 3), complex), np.zeros((2, 3), object)):
        with pytest.raises(TypeError, match="SoftmaxCrossEntropy: expected real-valued logits"):
            loss.forward(bad, np.array([0, 1]))
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy: the batch is empty"):
        loss.forward(np.zeros((0, 3)), np.zeros(0, np.int64))
    assert loss.forward(np.zeros((2, 3), np.int32), np.array([0, 1])) == pytest.approx(np.log(3))
