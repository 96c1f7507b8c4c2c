"""The gradient-check cases behind ``minicnn gradcheck`` and the tests.

One case per layer type (and per important configuration), plus small
full models.  Every case builds its layer and a kink-free float64 input
(no ties in any max window, no ReLU input near 0), then
:func:`minicnn.gradcheck.check_gradients` compares backward against
central differences with a random upstream gradient.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

import minicnn as m
from minicnn.gradcheck import DEFAULT_EPS, DEFAULT_TOL, check_gradients, tie_free


class Case(NamedTuple):
    name: str
    build: Callable[[np.random.Generator], tuple]   # rng -> (module, inputs, before_forward)
    eps: float = DEFAULT_EPS                          # the finite-difference step


def _x(rng, *shape, positive=False, min_abs=0.0):
    x = tie_free(shape, rng, min_abs=min_abs)
    return np.abs(x) + 0.1 if positive else x


def _stochastic(rng, training):
    layer = m.StochasticPool2D(2)
    layer.training = training
    return layer, _x(rng, 2, 2, 6, 6, positive=True), (lambda: layer.reseed(3))


def _fractional(rng):
    layer = m.FractionalMaxPool2D(2, output_size=(4, 5), seed=1)
    return layer, _x(rng, 2, 2, 8, 9), (lambda: layer.reseed(5))


def _small_model(rng):
    """conv -> ReLU -> pool: with ``Model.fuse`` the ReLU runs after the
    pooling and the conv and pooling go back as one step (direct path)."""
    m.manual_seed(1)
    model = m.Sequential([m.Conv2D(1, 3, 3, padding=1), m.ReLU(), m.MaxPool2D(2),
                          m.Conv2D(3, 4, 3, stride=2, padding=1), m.ReLU(),
                          m.Flatten(), m.Dense(4 * 2 * 2, 5)], input_shape=(1, 8, 8))
    return model, _x(rng, 2, 1, 8, 8), None


def _fused_pair(c_in, c_out):
    """Conv2D -> MaxPool2D(2) as a model, so its backward goes through both
    as one step (``Model.fuse``): ``c_in*9 <= 36`` takes the direct path,
    more the GEMM path.  Odd planes (7x9 -> 3x4) leave cells no window
    covers."""
    def build(rng):
        m.manual_seed(3)
        model = m.Sequential([m.Conv2D(c_in, c_out, 3, padding=1), m.MaxPool2D(2)],
                             input_shape=(c_in, 7, 9))
        return model, _x(rng, 2, c_in, 7, 9), None
    return build


def _sparse(build):
    """The same case with its convolutions' backward from the non-zero
    output-gradient entries (``Conv2D.sparse_max_density = 1``: the sparse
    kernels for any gradient, here the checker's dense random one)."""
    def sparse_build(rng):
        built = build(rng)
        module = built[0]
        for layer in getattr(module, "layers", [module]):
            if isinstance(layer, m.Conv2D):
                layer.sparse_max_density = 1.0
        return built
    return sparse_build


# The step of the conv + pool cases.  Convolution and max pooling are piecewise
# linear, so away from a kink (a tie in a window; the nearest is 0.007 away in
# these cases at seed 0) central differences have no truncation error, and
# their round-off, about 1e-16 * |f| / eps, is all that is left.  At the
# default 1e-6 that round-off reached 1.7e-6 relative on an input entry whose
# gradient is 1.2e-4 (f = 12.3), fused or not; at 1e-5 it is ten times less.
# The Conv2D cases alone, over 30 weight seeds (2026-11-25): at 1e-6, 1 and 3
# of 30 draws went past 1e-6 (worst 2.0e-6 and 4.6e-6, the stride-2 sparse
# case); at 1e-5 none did (worst 1.2e-7 and 3.3e-7).
PIECEWISE_LINEAR_EPS = 1e-5


def _branching_model(rng):
    m.manual_seed(2)
    inp = m.Input((2, 8, 8))
    h = m.Conv2D(2, 3, 3, padding=1)(inp)
    a = m.MaxPool2D(2)(h)
    b = m.AvgPool2D(2)(h)
    c = m.Concat()(a, b)
    out = m.Dense(6 * 4 * 4 + 3 * 21, 4)(m.Concat()(m.Flatten()(c), m.SpatialPyramidPool2D((1, 2, 4))(h)))
    return m.Model(inp, out, name="branching"), _x(rng, 2, 2, 8, 8), None


CASES: list[Case] = [
    # a convolution is linear in x and in W: the piecewise-linear step (above)
    Case("Conv2D", lambda r: (m.Conv2D(2, 3, 3, stride=1, padding=1), _x(r, 2, 2, 5, 6), None),
         PIECEWISE_LINEAR_EPS),
    Case("Conv2D stride 2, 2x3 kernel", lambda r: (m.Conv2D(2, 3, (2, 3), stride=2, padding=(1, 0)),
                                                    _x(r, 2, 2, 7, 6), None), PIECEWISE_LINEAR_EPS),
    Case("Conv2D sparse backward, stride 2, 2x3 kernel", _sparse(lambda r: (
        m.Conv2D(5, 3, (2, 3), stride=2, padding=(1, 0)), _x(r, 2, 5, 7, 6), None)), PIECEWISE_LINEAR_EPS),
    Case("Dense", lambda r: (m.Dense(6, 4), _x(r, 3, 6), None)),
    Case("ReLU", lambda r: (m.ReLU(), _x(r, 2, 3, 4, 4, min_abs=0.05), None)),
    Case("Flatten", lambda r: (m.Flatten(), _x(r, 2, 3, 2, 2), None)),
    Case("Concat", lambda r: (m.Concat(), [_x(r, 2, 2, 3, 3), _x(r, 2, 1, 3, 3)], None)),
    Case("MaxPool2D 2x2", lambda r: (m.MaxPool2D(2), _x(r, 2, 2, 6, 6), None)),
    Case("MaxPool2D 3x3 s2 p1 (overlapping)", lambda r: (m.MaxPool2D(3, 2, 1), _x(r, 2, 2, 7, 7), None)),
    Case("MaxPool2D dilation 2, ceil_mode", lambda r: (m.MaxPool2D(2, 2, 1, dilation=2, ceil_mode=True),
                                                       _x(r, 2, 2, 7, 8), None)),
    Case("AvgPool2D 2x2", lambda r: (m.AvgPool2D(2), _x(r, 2, 2, 6, 6), None)),
    Case("AvgPool2D 3x3 s2 p1 exclude pad, ceil", lambda r: (
        m.AvgPool2D(3, 2, 1, ceil_mode=True, count_include_pad=False), _x(r, 2, 2, 6, 7), None)),
    Case("AvgPool2D divisor_override", lambda r: (m.AvgPool2D(2, 1, divisor_override=3), _x(r, 2, 2, 5, 5), None)),
    Case("LPPool2D p=2", lambda r: (m.LPPool2D(2, 2), _x(r, 2, 2, 6, 6, positive=True), None)),
    Case("LPPool2D p=3 overlapping", lambda r: (m.LPPool2D(3, 3, 2), _x(r, 2, 2, 7, 7, positive=True), None)),
    Case("LPPool2D p=2 3x3 s2, even width", lambda r: (m.LPPool2D(2, 3, 2), _x(r, 2, 2, 7, 8, positive=True),
                                                      None)),
    Case("MixedPool2D", lambda r: (m.MixedPool2D(2, alpha=0.3), _x(r, 2, 2, 6, 6), None)),
    Case("MixedPool2D learnable alpha", lambda r: (m.MixedPool2D(3, 2, alpha=0.6, learnable=True),
                                                   _x(r, 2, 2, 7, 7), None)),
    Case("StochasticPool2D train", lambda r: _stochastic(r, True)),
    Case("StochasticPool2D eval", lambda r: _stochastic(r, False)),
    Case("FractionalMaxPool2D", _fractional),
    Case("AdaptiveAvgPool2D 7x5->3x2", lambda r: (m.AdaptiveAvgPool2D((3, 2)), _x(r, 2, 2, 7, 5), None)),
    Case("AdaptiveMaxPool2D 10x7->3x3", lambda r: (m.AdaptiveMaxPool2D(3), _x(r, 2, 2, 10, 7), None)),
    Case("GlobalAvgPool2D", lambda r: (m.GlobalAvgPool2D(), _x(r, 2, 3, 4, 5), None)),
    Case("GlobalMaxPool2D", lambda r: (m.GlobalMaxPool2D(), _x(r, 2, 3, 4, 5), None)),
    Case("SpatialPyramidPool2D max", lambda r: (m.SpatialPyramidPool2D((1, 2, 4), "max"), _x(r, 2, 2, 9, 7), None)),
    Case("SpatialPyramidPool2D avg", lambda r: (m.SpatialPyramidPool2D((1, 2, 4), "avg"), _x(r, 2, 2, 9, 7), None)),
    Case("MaxUnpool2D", lambda r: _unpool(r)),
    Case("model: conv-relu-pool-conv-dense", _small_model),
    Case("model: branching max|avg|SPP concat", _branching_model),
    Case("model: conv+pool backward as one step, direct path", _fused_pair(2, 3), PIECEWISE_LINEAR_EPS),
    Case("model: conv+pool backward as one step, GEMM path", _fused_pair(5, 4), PIECEWISE_LINEAR_EPS),
    Case("model: conv+pool backward as one step, sparse", _sparse(_fused_pair(5, 4)), PIECEWISE_LINEAR_EPS),
]


def _unpool(rng):
    pool = m.MaxPool2D(2, return_indices=True)
    _, idx = pool.forward(_x(rng, 2, 2, 6, 6))
    layer = m.MaxUnpool2D(2)
    return layer, _x(rng, 2, 2, 3, 3), None, {"indices": idx}


def run_case(case: Case, seed: int = 0):
    """Build and check one case; returns a CheckResult.  The weights are
    initialised from ``seed`` too (``manual_seed``), so a case checks the same
    numbers whatever ran before it."""
    m.manual_seed(seed)
    rng = np.random.default_rng(seed)
    built = case.build(rng)
    module, inputs, before = built[:3]
    kwargs = built[3] if len(built) > 3 else None
    return check_gradients(module, inputs, seed=seed, eps=case.eps, before_forward=before,
                           forward_kwargs=kwargs)


def run_cases(names=None, seed: int = 0, out=print) -> bool:
    """Run the cases (all, or those whose name starts with one of ``names``)
    and print a table: case, max relative error, pass/FAIL.  True if all pass."""
    chosen = [c for c in CASES if not names or any(c.name.lower().startswith(n.lower()) for n in names)]
    if not chosen:
        out(f"no gradcheck case matches {names}; cases: {', '.join(c.name for c in CASES)}")
        return False
    width = max(len(c.name) for c in chosen) + 2
    out(f"{'case'.ljust(width)}{'max rel error':>14}  result   (float64, tol {DEFAULT_TOL:g})")
    ok = True
    for case in chosen:
        result = run_case(case, seed)
        ok &= result.passed
        worst = max(result.errors, key=result.errors.get)
        out(f"{case.name.ljust(width)}{result.max_error:>14.2e}  {'pass' if result.passed else 'FAIL'}"
            f"   (worst: {worst})")
    out(f"{sum(1 for _ in chosen)} cases: {'all passed' if ok else 'FAILURES above'}")
    return ok
