"""One numerical gradient checker for every layer, model and test.

Method (cs231n-style, made strict):

* everything is cast to float64;
* a *random* upstream gradient ``dout`` is drawn (an all-ones ``dout``
  hides transpose and averaging bugs), and the scalar checked is
  ``f(x) = sum(forward(x) * dout)``, whose exact gradient is what
  ``backward(dout)`` must return;
* central differences ``(f(x + eps) - f(x - eps)) / (2 eps)`` per entry;
* relative error ``|a - n| / max(1e-8, |a| + |n|, floor / tol)``, the
  maximum over the entries checked, for the input and for every parameter;
* ``floor`` is the round-off of the central difference itself.  Each
  ``f`` is a sum of terms ``out_i * dout_i`` and is computed to within a
  few units of ``u * A`` (``u = 2**-53``, ``A = sum |out * dout|``), so the
  difference quotient carries an error of about ``u * A / eps`` whatever
  the backward pass does: measured on every ``minicnn gradcheck`` case
  over seeds 0-11, ``|a - n|`` never exceeded 2.9 times that.  ``floor =
  16 u A / eps``.  Without it, an entry whose true gradient is small (a
  cancellation among the random ``dout``) fails on round-off alone: 20
  of the 660 checks of those cases over seeds 0-19 did, every one on an
  entry of 4e-6 to 2e-4 with ``|a - n|`` of 1e-10 to 2e-9 (floors of
  1e-8 to 9e-8).  An entry is thus held to ``tol`` relative to its size,
  or, if it is smaller than ``floor / tol``, to the floor in absolute
  terms;
* ``num_samples`` checks a random subset of entries for speed.

Inputs must avoid kinks (ties in max windows, ReLU inputs near zero);
:func:`tie_free` makes such inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

DEFAULT_EPS = 1e-6
DEFAULT_TOL = 1e-6
ROUNDOFF_FACTOR = 16      # floor = ROUNDOFF_FACTOR * 2**-53 * sum|out * dout| / eps (module docstring)


def rel_error(a, n, floor: float = 0.0, tol: float = DEFAULT_TOL) -> float:
    """max |a - n| / max(1e-8, |a| + |n|, floor / tol) over all entries: an
    absolute difference within the round-off ``floor`` scores at most ``tol``."""
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    scale = np.maximum(max(1e-8, floor / tol), np.abs(a) + np.abs(n))
    return float(np.max(np.abs(a - n) / scale, initial=0.0))


def roundoff_floor(out, dout, eps: float) -> float:
    """The round-off of a central difference of ``sum(out * dout)`` with
    step ``eps``: ``ROUNDOFF_FACTOR * 2**-53 * sum|out * dout| / eps``."""
    return ROUNDOFF_FACTOR * 2.0 ** -53 * float(np.sum(np.abs(out * dout))) / eps


def tie_free(shape, rng: np.random.Generator, low: float = -1.0, high: float = 1.0,
             min_gap: float = 1e-3, min_abs: float = 0.0) -> np.ndarray:
    """A float64 array of ``shape`` with no ties and no values near zero.

    Evenly spaced values in [low, high], jittered by a quarter of their
    spacing and shuffled, so any two entries differ by at least half the
    spacing (which must be >= ``min_gap``; no ties in any max window).  With
    ``min_abs > 0`` every value is moved ``min_abs`` away from zero, so ReLU
    is never probed at its kink.
    """
    size = int(np.prod(shape))
    spacing = (high - low) / max(size - 1, 1)
    if spacing / 2 < min_gap:
        raise ValueError(f"tie_free: {size} values in [{low}, {high}] cannot keep a gap of {min_gap}")
    vals = np.linspace(low, high, size) + rng.uniform(-spacing / 4, spacing / 4, size)
    if min_abs > 0:
        vals = vals + np.where(vals >= 0, min_abs, -min_abs)
    return rng.permutation(vals).reshape(shape)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = DEFAULT_EPS,
                       indices=None) -> tuple[np.ndarray, np.ndarray]:
    """Central-difference gradient of the scalar ``f()`` w.r.t. ``x`` (mutated
    in place and restored).  Returns ``(flat_indices, grad_at_those)``."""
    flat = x.reshape(-1)
    if indices is None:
        indices = np.arange(flat.size)
    grad = np.empty(len(indices), dtype=np.float64)
    for j, i in enumerate(indices):
        old = flat[i]
        flat[i] = old + eps
        fp = f()
        flat[i] = old - eps
        fm = f()
        flat[i] = old
        grad[j] = (fp - fm) / (2 * eps)
    return np.asarray(indices), grad


@dataclass
class CheckResult:
    """Max relative error per checked array (``"x"`` / ``"x0"``... for inputs,
    parameter names otherwise) and whether all are within ``tol``."""
    errors: dict
    tol: float

    @property
    def max_error(self) -> float:
        return max(self.errors.values(), default=0.0)

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.max_error) and self.max_error <= self.tol)


def _sample(size: int, num_samples, rng):
    if num_samples is None or num_samples >= size:
        return np.arange(size)
    return rng.choice(size, size=num_samples, replace=False)


def check_gradients(module, inputs, *, seed: int = 0, eps: float = DEFAULT_EPS,
                    tol: float = DEFAULT_TOL, num_samples: int | None = None,
                    before_forward: Callable[[], None] | None = None,
                    forward_kwargs: dict | None = None) -> CheckResult:
    """Check ``module.backward`` (a layer or a model) against finite differences.

    ``inputs``: one array or a list of arrays (for multi-input layers such
    as Concat).  Parameters are cast to float64 in place (the module is
    left in float64).  ``before_forward`` is called before every forward,
    e.g. to re-seed a stochastic layer so the function being differentiated
    is fixed.  Returns a :class:`CheckResult`.
    """
    rng = np.random.default_rng(seed)
    multi = isinstance(inputs, (list, tuple))
    xs = [np.array(a, dtype=np.float64) for a in (inputs if multi else [inputs])]
    if hasattr(module, "astype"):
        module.astype(np.float64)
    kwargs = forward_kwargs or {}

    def run():
        if before_forward is not None:
            before_forward()
        return module.forward(*xs, **kwargs) if multi else module.forward(xs[0], **kwargs)

    out = run()
    dout = rng.standard_normal(np.shape(out))
    floor = roundoff_floor(out, dout, eps)
    dout_copy = dout.copy()
    analytic = module.backward(dout)
    if not np.array_equal(dout, dout_copy):
        raise AssertionError(f"{getattr(module, 'name', module)}.backward mutated dout")
    analytic = list(analytic) if multi else [analytic]
    param_grads = {k: np.array(g, dtype=np.float64) for k, g in _named(module, "grads")}

    def f():
        return float(np.sum(run() * dout))

    errors = {}
    for j, (x, a) in enumerate(zip(xs, analytic)):
        idx, num = numerical_gradient(f, x, eps, _sample(x.size, num_samples, rng))
        errors["x" if not multi else f"x{j}"] = rel_error(np.asarray(a).reshape(-1)[idx], num, floor, tol)
    for name, p in _named(module, "params"):
        idx, num = numerical_gradient(f, p, eps, _sample(p.size, num_samples, rng))
        errors[name] = rel_error(param_grads[name].reshape(-1)[idx], num, floor, tol)
    return CheckResult(errors, tol)


def _named(module, attr):
    """(name, array) pairs of a layer's or a model's params/grads."""
    if hasattr(module, "named_" + attr):
        return list(getattr(module, "named_" + attr)())
    return list(getattr(module, attr).items())
