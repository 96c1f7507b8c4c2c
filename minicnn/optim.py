"""Optimisers (PyTorch's update rules) and the one-cycle schedule.

An optimiser holds ``(name, param, grad)`` triples (``model.parameters()``)
and updates each ``param`` in place.  With weight decay ``wd``, both use
the L2 form ``g = grad + wd * param``, as torch.optim.SGD / Adam do.

SGD (momentum mu, Nesterov)::

    v = mu * v + g;   step = g + mu * v  (Nesterov)  or  v;   p -= lr * step

Adam (beta1, beta2, eps)::

    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2
    p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
"""
from __future__ import annotations

import math

import numpy as np

from minicnn.kernels.optim import adam_update
from minicnn.threads import run_kernel


class Optimizer:
    """Common bookkeeping: parameters, learning rate, state for checkpoints."""

    def __init__(self, parameters, lr: float, weight_decay: float = 0.0):
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError(f"{type(self).__name__}: got no parameters to optimise")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"{type(self).__name__}: lr must be a positive finite number, got {lr!r}")
        if not weight_decay >= 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay!r}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.state: dict[str, dict[str, np.ndarray]] = {}
        self.steps = 0

    def zero_grad(self):
        for _, _, g in self.parameters:
            g[...] = 0

    def _grad(self, p, g):
        return g + self.weight_decay * p if self.weight_decay else g

    def step(self):
        self.steps += 1
        for name, p, g in self.parameters:
            self._update(name, p, self._grad(p, g), self.state.setdefault(name, {}))

    def _update(self, name, p, g, state):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- checkpoints: flat dict of arrays, loadable with allow_pickle=False
    def state_arrays(self) -> dict[str, np.ndarray]:
        out = {"steps": np.array(self.steps, np.int64), "lr": np.array(self.lr)}
        for name, st in self.state.items():
            for k, v in st.items():
                out[f"{name}/{k}"] = v
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.steps = int(arrays["steps"])
        self.lr = float(arrays["lr"])
        shapes = {name: p.shape for name, p, _ in self.parameters}
        self.state = {}
        for key, v in arrays.items():
            if "/" not in key:
                continue
            name, k = key.rsplit("/", 1)
            if name not in shapes:
                raise ValueError(f"{type(self).__name__}: optimiser state names unknown parameter {name!r}")
            if v.shape != shapes[name]:
                raise ValueError(f"{type(self).__name__}: state {key} has shape {v.shape}, "
                                 f"parameter has {shapes[name]}")
            self.state.setdefault(name, {})[k] = np.array(v)


class SGD(Optimizer):
    """SGD(parameters, lr, momentum=0, nesterov=False, weight_decay=0)."""

    def __init__(self, parameters, lr=0.01, momentum=0.0, nesterov=False, weight_decay=0.0):
        super().__init__(parameters, lr, weight_decay)
        if not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, p, g, state):
        if self.momentum:
            v = state.get("velocity")
            if v is None:
                v = state["velocity"] = g.astype(p.dtype, copy=True)
            else:
                v *= self.momentum
                v += g
            g = g + self.momentum * v if self.nesterov else v
        p -= (self.lr * g).astype(p.dtype, copy=False)


class Adam(Optimizer):
    """Adam(parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)."""

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(parameters, lr, weight_decay)
        b1, b2 = betas
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ValueError(f"Adam: betas must be in [0, 1), got {betas!r}")
        if not eps > 0:
            raise ValueError(f"Adam: eps must be > 0, got {eps!r}")
        self.betas = (float(b1), float(b2))
        self.eps = float(eps)

    def _update(self, name, p, g, state):
        """One pass over ``p`` (:func:`minicnn.kernels.optim.adam_update`):
        the arithmetic of the numpy expressions ``m *= b1; m += (1 - b1)*g;
        v *= b2; v += (1 - b2)*(g*g); p -= lr/(1 - b1**t) * m /
        (sqrt(v/(1 - b2**t)) + eps)`` in ``p``'s dtype, bit for bit."""
        b1, b2 = self.betas
        if not p.flags.c_contiguous:
            raise ValueError(f"Adam: parameter {name} must be C-contiguous to be updated in place")
        for k in ("m", "v"):
            if k not in state:
                state[k] = np.zeros_like(p)
            elif state[k].dtype != p.dtype or not state[k].flags.c_contiguous:
                state[k] = np.ascontiguousarray(state[k], dtype=p.dtype)
        g = np.ascontiguousarray(g, dtype=p.dtype)
        t = self.steps
        dt = p.dtype.type
        run_kernel(adam_update, p.reshape(-1), g.reshape(-1), state["m"].reshape(-1), state["v"].reshape(-1),
                   dt(b1), dt(1 - b1), dt(b2), dt(1 - b2), dt(self.lr / (1 - b1 ** t)), dt(1 - b2 ** t),
                   dt(self.eps))


class OneCycleLR:
    """The one-cycle schedule (Smith & Topin), with PyTorch's cosine shape.

    The learning rate rises from ``max_lr / div_factor`` to ``max_lr`` over
    the first ``pct_start`` of ``total_steps``, then anneals to
    ``max_lr / (div_factor * final_div_factor)``.  Call ``step()`` after
    each optimiser step.  Step t (0-based) uses, as torch's OneCycleLR::

        up = pct_start * total_steps - 1;   down = total_steps - 1
        t <= up:  cos_anneal(initial, max_lr, t / up)
        t >  up:  cos_anneal(max_lr, final, (t - up) / (down - up))
        cos_anneal(a, b, f) = b + (a - b) * (1 + cos(pi f)) / 2

    so the last of the ``total_steps`` steps runs at the final lr.  Steps
    past ``total_steps`` stay at the final lr (torch raises instead).
    """

    def __init__(self, optimizer: Optimizer, max_lr: float, total_steps: int,
                 pct_start: float = 0.25, div_factor: float = 25.0, final_div_factor: float = 1e4):
        if total_steps < 1:
            raise ValueError(f"OneCycleLR: total_steps must be >= 1, got {total_steps}")
        if not 0 < pct_start < 1:
            raise ValueError(f"OneCycleLR: pct_start must be in (0, 1), got {pct_start}")
        for name, v in (("max_lr", max_lr), ("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"OneCycleLR: {name} must be a positive finite number, got {v!r}")
        self.optimizer = optimizer
        self.max_lr = float(max_lr)
        self.total_steps = int(total_steps)
        self.initial = max_lr / div_factor
        self.final = self.initial / final_div_factor
        self.end_up = float(pct_start * total_steps) - 1
        self.end_down = float(total_steps - 1)
        self.t = 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, t: int) -> float:
        def cos(a, b, frac):
            return b + (a - b) * (1 + math.cos(math.pi * frac)) / 2
        if t <= self.end_up:
            return cos(self.initial, self.max_lr, t / self.end_up) if self.end_up > 0 else self.initial
        span = self.end_down - self.end_up
        frac = min(1.0, (t - self.end_up) / span) if span > 0 else 1.0
        return cos(self.max_lr, self.final, frac)

    def step(self):
        self.t += 1
        self.optimizer.lr = self.lr_at(self.t)
