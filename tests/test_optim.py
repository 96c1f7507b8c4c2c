"""SGD / Adam against PyTorch's documented update rules (and torch.optim), OneCycleLR,
optimiser state round trips, hyperparameter validation and reproducibility."""
import io
import math

import numpy as np
import pytest

import minicnn
from minicnn import SGD, Adam, OneCycleLR, SoftmaxCrossEntropy
from minicnn.layers import Conv2D, Dense, Flatten, ReLU
from minicnn.model import Sequential

STEPS = 10
SHAPES = {"w": (3, 4), "b": (4,)}


def _problem(seed=0):
    """Initial params and a fixed sequence of STEPS random gradients, float64."""
    rng = np.random.default_rng(seed)
    params = {k: rng.standard_normal(s) for k, s in SHAPES.items()}
    grads = [{k: rng.standard_normal(s) for k, s in SHAPES.items()} for _ in range(STEPS)]
    return params, grads


# ----------------------------------------------- hand-written reference rules
# From the algorithm boxes in the torch.optim.SGD and torch.optim.Adam docs
# (dampening 0, maximize False, amsgrad False).
def ref_sgd(p, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    p, buf, out = p.copy(), None, []
    for g in grads:
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append(p)
    return out


def ref_adam(p, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    b1, b2 = betas
    p, m, v, out = p.copy(), np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, 1):
        if weight_decay:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        m_hat = m / (1 - b1 ** t)
        v_hat = v / (1 - b2 ** t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(p)
    return out


def run_minicnn(make_opt, params, grads):
    """Trajectory {name: [param after step 1..STEPS]} of a minicnn optimiser."""
    ps = {k: v.copy() for k, v in params.items()}
    gs = {k: np.zeros_like(v) for k, v in params.items()}
    opt = make_opt([(k, ps[k], gs[k]) for k in ps])
    out = {k: [] for k in ps}
    for step in grads:
        for k in ps:
            gs[k][...] = step[k]
        opt.step()
        for k in ps:
            out[k].append(ps[k].copy())
    return out


def run_torch(torch, make_opt, params, grads):
    ps = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in params.items()}
    opt = make_opt(list(ps.values()))
    out = {k: [] for k in ps}
    for step in grads:
        for k in ps:
            ps[k].grad = torch.tensor(step[k])
        opt.step()
        for k in ps:
            out[k].append(ps[k].detach().numpy().copy())
    return out


def assert_trajectories_close(a, b):
    for k in a:
        np.testing.assert_allclose(np.array(a[k]), np.array(b[k]), rtol=1e-12, atol=1e-14, err_msg=k)


SGD_CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.1, weight_decay=0.01),
    dict(lr=0.03, momentum=0.8, nesterov=True, weight_decay=0.05),
]
ADAM_CASES = [
    dict(lr=1e-2),
    dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6),
    dict(lr=1e-2, weight_decay=0.1),
]


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_reference(kw):
    params, grads = _problem()
    got = run_minicnn(lambda ps: SGD(ps, **kw), params, grads)
    for k in params:
        want = ref_sgd(params[k], [g[k] for g in grads], **kw)
        np.testing.assert_allclose(np.array(got[k]), np.array(want), rtol=1e-12, atol=1e-14)
    # the reference really distinguishes the variants (a no-op test would not)
    assert not np.allclose(got["w"][-1], params["w"])


@pytest.mark.parametrize("kw", ADAM_CASES)
def test_adam_matches_reference(kw):
    params, grads = _problem(1)
    got = run_minicnn(lambda ps: Adam(ps, **kw), params, grads)
    for k in params:
        want = ref_adam(params[k], [g[k] for g in grads], **kw)
        np.testing.assert_allclose(np.array(got[k]), np.array(want), rtol=1e-12, atol=1e-14)


def test_reference_variants_differ():
    """Negative control: momentum, Nesterov and weight decay each change the
    trajectory, so matching the reference is a real constraint."""
    params, grads = _problem()
    g = [s["w"] for s in grads]
    finals = [ref_sgd(params["w"], g, **kw)[-1] for kw in SGD_CASES]
    for i in range(len(finals)):
        for j in range(i):
            assert not np.allclose(finals[i], finals[j])


@pytest.mark.parametrize("kw", SGD_CASES)
def test_sgd_matches_torch(kw):
    torch = pytest.importorskip("torch")
    params, grads = _problem()
    got = run_minicnn(lambda ps: SGD(ps, **kw), params, grads)
    want = run_torch(torch, lambda ps: torch.optim.SGD(ps, **kw), params, grads)
    assert_trajectories_close(got, want)


@pytest.mark.parametrize("kw", ADAM_CASES)
def test_adam_matches_torch(kw):
    torch = pytest.importorskip("torch")
    params, grads = _problem(1)
    got = run_minicnn(lambda ps: Adam(ps, **kw), params, grads)
    want = run_torch(torch, lambda ps: torch.optim.Adam(ps, **kw), params, grads)
    assert_trajectories_close(got, want)


def test_updates_in_place_and_keep_dtype():
    p32 = np.ones(3, np.float32)
    g32 = np.full(3, 0.5, np.float32)
    for opt in (SGD([("p", p32, g32)], lr=0.1, momentum=0.9), Adam([("p", p32, g32)], lr=0.1)):
        before = p32.copy()
        opt.step()
        assert p32.dtype == np.float32 and not np.array_equal(p32, before)
    opt.zero_grad()
    np.testing.assert_array_equal(g32, 0)


# ------------------------------------------------------------------ OneCycleLR
def _schedule(T, **kw):
    opt = SGD([("p", np.zeros(1), np.zeros(1))], lr=1.0)
    sched = OneCycleLR(opt, **kw, total_steps=T)
    lrs = [opt.lr]
    for _ in range(T):
        sched.step()
        lrs.append(opt.lr)
    return sched, lrs


@pytest.mark.parametrize("T, pct", [(20, 0.25), (100, 0.3), (8, 0.5)])
def test_onecycle_shape(T, pct):
    """torch's convention: lrs[t] is the lr of step t; the peak is at step
    pct*T - 1 and the last step (T - 1) runs at the final lr."""
    max_lr, div, fdiv = 0.1, 25.0, 1e4
    _, lrs = _schedule(T, max_lr=max_lr, pct_start=pct, div_factor=div, final_div_factor=fdiv)
    up = int(pct * T) - 1
    assert lrs[0] == pytest.approx(max_lr / div, rel=1e-15)                 # start
    assert lrs[up] == pytest.approx(max_lr, rel=1e-15)                      # peak at end of warm-up
    assert max(lrs) == pytest.approx(max_lr, rel=1e-15)
    assert lrs[T - 1] == pytest.approx(max_lr / (div * fdiv), rel=1e-12)    # last step: final lr
    assert lrs[T] == lrs[T - 1]                                             # stays there
    assert np.all(np.diff(lrs[:up + 1]) > 0)                                # rising
    assert np.all(np.diff(lrs[up:T]) < 0)                                   # annealing


def test_onecycle_cosine_values():
    """Half-cosine interpolation in each phase (T=40, pct 0.25: up = 9, down = 39)."""
    _, lrs = _schedule(40, max_lr=0.2, pct_start=0.25, div_factor=10.0, final_div_factor=100.0)
    cos = lambda a, b, f: b + (a - b) * (1 + math.cos(math.pi * f)) / 2
    assert lrs[3] == pytest.approx(cos(0.02, 0.2, 3 / 9), rel=1e-14)
    assert lrs[24] == pytest.approx((0.2 + 0.0002) / 2, rel=1e-14)          # middle of annealing
    assert lrs[34] == pytest.approx(cos(0.2, 0.0002, 25 / 30), rel=1e-14)


@pytest.mark.parametrize("T, pct", [(20, 0.25), (100, 0.3)])
def test_onecycle_matches_torch(T, pct):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    topt = torch.optim.SGD([p], lr=0.1)
    tsched = torch.optim.lr_scheduler.OneCycleLR(
        topt, max_lr=0.1, total_steps=T, pct_start=pct, anneal_strategy="cos",
        three_phase=False, cycle_momentum=False, div_factor=25.0, final_div_factor=1e4)
    want = [topt.param_groups[0]["lr"]]
    for _ in range(T - 1):          # torch allows T - 1 scheduler steps after the first lr
        topt.step()
        tsched.step()
        want.append(topt.param_groups[0]["lr"])
    _, got = _schedule(T, max_lr=0.1, pct_start=pct, div_factor=25.0, final_div_factor=1e4)
    # the T learning rates used by T optimiser steps
    np.testing.assert_allclose(got[:T], want, rtol=1e-12)


@pytest.mark.parametrize("kw, name", [
    (dict(total_steps=0), "total_steps"),
    (dict(pct_start=0.0), "pct_start"),
    (dict(pct_start=1.0), "pct_start"),
    (dict(max_lr=0.0), "max_lr"),
    (dict(max_lr=-0.1), "max_lr"),
    (dict(max_lr=float("nan")), "max_lr"),
    (dict(max_lr=float("inf")), "max_lr"),
    (dict(div_factor=0.0), "div_factor"),
    (dict(div_factor=-25.0), "div_factor"),
    (dict(final_div_factor=0.0), "final_div_factor"),
    (dict(final_div_factor=-1.0), "final_div_factor"),
])
def test_onecycle_invalid(kw, name):
    opt = SGD([("p", np.zeros(1), np.zeros(1))], lr=1.0)
    args = dict(max_lr=0.1, total_steps=10) | kw
    with pytest.raises(ValueError, match=name):
        OneCycleLR(opt, **args)


# ------------------------------------------------------------ invalid optimisers
def _ps():
    return [("p", np.zeros(2), np.zeros(2))]


@pytest.mark.parametrize("make, name", [
    (lambda: SGD(_ps(), lr=0.0), "lr"),
    (lambda: SGD(_ps(), lr=-0.1), "lr"),
    (lambda: SGD(_ps(), lr=float("nan")), "lr"),
    (lambda: SGD(_ps(), lr=float("inf")), "lr"),
    (lambda: SGD(_ps(), momentum=1.0), "momentum"),
    (lambda: SGD(_ps(), momentum=-0.1), "momentum"),
    (lambda: SGD(_ps(), momentum=float("nan")), "momentum"),
    (lambda: SGD(_ps(), nesterov=True), "nesterov"),
    (lambda: SGD(_ps(), weight_decay=-1e-4), "weight_decay"),
    (lambda: SGD(_ps(), weight_decay=float("nan")), "weight_decay"),
    (lambda: SGD([], lr=0.1), "no parameters"),
    (lambda: Adam(_ps(), lr=0.0), "lr"),
    (lambda: Adam(_ps(), betas=(1.0, 0.999)), "betas"),
    (lambda: Adam(_ps(), betas=(0.9, -0.1)), "betas"),
    (lambda: Adam(_ps(), eps=0.0), "eps"),
    (lambda: Adam(_ps(), eps=-1e-8), "eps"),
    (lambda: Adam(_ps(), weight_decay=-0.1), "weight_decay"),
])
def test_invalid_hyperparameters(make, name):
    with pytest.raises(ValueError, match=name):
        make()


# ------------------------------------------------------- state round trips
def _savez_roundtrip(arrays):
    """Through an .npz file, as checkpoints do (allow_pickle=False)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: Adam(ps, lr=1e-2, weight_decay=1e-3),
])
def test_state_roundtrip_gives_identical_updates(make):
    params, grads = _problem(2)
    ps = {k: v.copy() for k, v in params.items()}
    gs = {k: np.zeros_like(v) for k, v in params.items()}
    a = make([(k, ps[k], gs[k]) for k in ps])
    for step in grads[:5]:
        for k in ps:
            gs[k][...] = step[k]
        a.step()
    a.lr *= 0.5                                  # a scheduler moved the lr: it must travel too
    saved = _savez_roundtrip(a.state_arrays())

    qs = {k: v.copy() for k, v in ps.items()}
    hs = {k: np.zeros_like(v) for k, v in ps.items()}
    b = make([(k, qs[k], hs[k]) for k in qs])
    b.load_state_arrays(saved)
    assert b.steps == a.steps == 5 and b.lr == a.lr
    for step in grads[5:]:
        for k in ps:
            gs[k][...] = step[k]
            hs[k][...] = step[k]
        a.step()
        b.step()
        for k in ps:
            np.testing.assert_array_equal(ps[k], qs[k])

    # negative control: a fresh optimiser (no state) does not reproduce the updates
    rs = {k: v.copy() for k, v in qs.items()}
    c = make([(k, rs[k], hs[k]) for k in rs])
    c.step()
    b.step()
    assert not np.array_equal(rs["w"], qs["w"])


def test_load_state_rejects_unknown_or_misshapen():
    opt = SGD([("w", np.zeros((2, 2)), np.zeros((2, 2)))], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="'v'"):
        opt.load_state_arrays({"steps": np.array(1), "lr": np.array(0.1), "v/velocity": np.zeros(2)})
    with pytest.raises(ValueError, match=r"w/velocity.*\(3,\)"):
        opt.load_state_arrays({"steps": np.array(1), "lr": np.array(0.1), "w/velocity": np.zeros(3)})


# ------------------------------------------------------------ reproducibility
def _train_run(seed):
    minicnn.manual_seed(seed)
    model = Sequential([Conv2D(1, 4, 3, padding=1), ReLU(), Flatten(), Dense(4 * 6 * 6, 3)],
                       input_shape=(1, 6, 6))
    opt = Adam(model.parameters(), lr=1e-2)
    sched = OneCycleLR(opt, max_lr=1e-2, total_steps=5)
    loss_fn = SoftmaxCrossEntropy()
    rng = np.random.default_rng(123)
    x = rng.standard_normal((8, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    losses = []
    for _ in range(5):
        losses.append(loss_fn.forward(model.forward(x), y))
        model.backward(loss_fn.backward())
        opt.step()
        sched.step()
    return losses, [p.copy() for _, p in model.named_params()]


def test_training_is_bit_reproducible_from_manual_seed():
    l1, p1 = _train_run(3)
    l2, p2 = _train_run(3)
    l3, p3 = _train_run(4)
    assert l1 == l2
    assert all(np.array_equal(a, b) for a, b in zip(p1, p2))
    assert l1[-1] < l1[0]                           # it did train
    assert not np.array_equal(p1[0], p3[0])         # and the seed matters


def _numpy_adam_steps(p, grads, lr, betas, eps, weight_decay):
    """Adam written as numpy expressions (the form the one-pass kernel
    replaces), in the parameter's dtype."""
    p = p.copy()
    m, v = np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        if weight_decay:
            g = g + weight_decay * p
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        p -= lr / (1 - b1 ** t) * m / (np.sqrt(v / (1 - b2 ** t)) + eps)
    return p, m, v


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kw", [dict(lr=3e-3), dict(lr=0.1, betas=(0.5, 0.9), eps=1e-3, weight_decay=0.01)])
def test_adam_kernel_equals_numpy_expressions_bit_for_bit(dtype, kw):
    """The one-pass kernel rounds every operation as the numpy expressions
    do; 70,000 elements so the kernel runs threaded, 5 steps."""
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal((70, 1000)).astype(dtype)
    grads = [(rng.standard_normal(p0.shape) * 10.0 ** rng.integers(-6, 2)).astype(dtype) for _ in range(5)]
    p, g = p0.copy(), np.zeros_like(p0)
    opt = Adam([("w", p, g)], **kw)
    for gi in grads:
        g[...] = gi
        opt.step()
    full = dict(dict(betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0), **kw)
    want_p, want_m, want_v = _numpy_adam_steps(p0, grads, **full)
    assert p.dtype == dtype and all(gi.dtype == dtype for gi in grads)
    assert not np.array_equal(p, p0)
    np.testing.assert_array_equal(p, want_p)
    np.testing.assert_array_equal(opt.state["w"]["m"], want_m)
    np.testing.assert_array_equal(opt.state["w"]["v"], want_v)


def test_adam_rejects_non_contiguous_parameter():
    p = np.ones((4, 4), np.float32)[:, ::2]
    opt = Adam([("w", p, np.ones_like(p))])
    with pytest.raises(ValueError, match="Adam: parameter w must be C-contiguous"):
        opt.step()
