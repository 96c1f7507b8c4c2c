"""Naive numpy references: what a student writes from the textbook.

Each is plain numpy (stride tricks, fancy indexing, ``np.add.at``), written
independently of minicnn's kernels, and checked against minicnn in
``tests/test_benchmarks.py``.  They are the "numpy" column of the tables.

Shapes are NCHW.  Window geometry (no dilation, floor mode)::

    out = (L + 2p - k) // s + 1
    window (oh, ow) covers rows oh*s - p .. oh*s - p + k - 1 (same for columns)

Max pooling's index is the flat position ``h*W + w`` in the unpadded plane;
ties go to the first maximum in row-major order (``np.argmax``).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided


def out_size(L, k, s, p=0):
    return (L + 2 * p - k) // s + 1


def windows(x, k, s, p=0, fill=0.0):
    """(N, C, H, W) -> read-only view (N, C, Ho, Wo, k, k) of the padded input."""
    if p:
        x = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=fill)
    N, C, H, W = x.shape
    Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
    sn, sc, sh, sw = x.strides
    return as_strided(x, (N, C, Ho, Wo, k, k), (sn, sc, sh * s, sw * s, sh, sw), writeable=False)


def _scatter(dout, idx, x_shape):
    """dx[n, c].flat[idx] += dout (idx < 0 routes nothing): the textbook
    ``np.add.at`` scatter."""
    N, C, H, W = x_shape
    P = N * C
    dx = np.zeros((P, H * W), dout.dtype)
    idx = idx.reshape(P, -1)
    g = dout.reshape(P, -1)
    rows = np.broadcast_to(np.arange(P)[:, None], idx.shape)
    keep = idx >= 0
    np.add.at(dx, (rows[keep], idx[keep]), g[keep])
    return dx.reshape(x_shape)


# ------------------------------------------------------------------- max
def maxpool_forward(x, k, s, p=0):
    """-> (y, idx): y = max over the window (padding is -inf), idx the flat
    in-plane index of the first maximum."""
    N, C, H, W = x.shape
    win = windows(x, k, s, p, fill=-np.inf)
    Ho, Wo = win.shape[2:4]
    flat = win.reshape(N, C, Ho, Wo, k * k)
    a = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, a[..., None], axis=-1)[..., 0]
    h = np.arange(Ho)[:, None] * s - p + a // k
    w = np.arange(Wo)[None, :] * s - p + a % k
    return y, h * W + w


def maxpool_backward(dout, idx, x_shape):
    """dx[argmax] += dout."""
    return _scatter(dout, idx, x_shape)


# --------------------------------------------------------------- average
def avgpool_forward(x, k, s, p=0):
    """Mean over the k*k window, zero padding counted (count_include_pad)."""
    return windows(x, k, s, p).mean(axis=(-2, -1), dtype=np.float64).astype(x.dtype)


def avgpool_backward(dout, x_shape, k, s, p=0):
    """dx[window] += dout / k^2, looping over the k*k kernel offsets."""
    N, C, H, W = x_shape
    Ho, Wo = dout.shape[2:]
    dxp = np.zeros((N, C, H + 2 * p, W + 2 * p), dout.dtype)
    g = dout / (k * k)
    for i in range(k):
        for j in range(k):
            dxp[:, :, i:i + s * (Ho - 1) + 1:s, j:j + s * (Wo - 1) + 1:s] += g
    return dxp[:, :, p:p + H, p:p + W]


# --------------------------------------------------------------- LP (power)
def lppool_forward(x, norm, k, s):
    """-> (y, sums): sums = sum(x**p) over the window, y = sums**(1/p)."""
    sums = (windows(x, k, s) ** norm).sum(axis=(-2, -1))
    return sums ** (1.0 / norm), sums


def lppool_backward(dout, x, y, sums, norm, k, s):
    """dx[window] += dout * y / sums * x**(p-1)  (0 where sums == 0)."""
    Ho, Wo = dout.shape[2:]
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.where(sums != 0, dout * y / sums, 0).astype(x.dtype)
    dx = np.zeros_like(x)
    for i in range(k):
        for j in range(k):
            sl = (slice(None), slice(None), slice(i, i + s * (Ho - 1) + 1, s),
                  slice(j, j + s * (Wo - 1) + 1, s))
            dx[sl] += g * x[sl] ** (norm - 1)
    return dx


# ----------------------------------------------------------------- mixed
def mixedpool_forward(x, k, s, alpha):
    mx, idx = maxpool_forward(x, k, s)
    return alpha * mx + (1 - alpha) * avgpool_forward(x, k, s), idx


def mixedpool_backward(dout, idx, x_shape, k, s, alpha):
    return alpha * maxpool_backward(dout, idx, x_shape) + \
        (1 - alpha) * avgpool_backward(dout, x_shape, k, s)


# ------------------------------------------------------------ stochastic
def stochastic_forward(x, u, k, s):
    """Training mode: in each window pick the first cell with
    ``u * S < cumsum(a)`` (S = sum a, float64); S = 0 -> 0 and index -1."""
    N, C, H, W = x.shape
    win = windows(x, k, s)
    Ho, Wo = win.shape[2:4]
    flat = win.reshape(N, C, Ho, Wo, k * k)
    cs = np.cumsum(flat, axis=-1, dtype=np.float64)
    hit = (u * cs[..., -1])[..., None] < cs
    pick = hit.argmax(axis=-1)
    valid = (cs[..., -1] > 0) & hit.any(axis=-1)
    y = np.where(valid, np.take_along_axis(flat, pick[..., None], axis=-1)[..., 0], 0).astype(x.dtype)
    h = np.arange(Ho)[:, None] * s + pick // k
    w = np.arange(Wo)[None, :] * s + pick % k
    return y, np.where(valid, h * W + w, -1)


# ------------------------------------------------------------ fractional
def fractional_starts(u, in_size, out_size, pool):
    """Window starts, PyTorch's ``generate_intervals``, in the dtype of u."""
    t = u.dtype.type
    alpha = t(in_size - pool) / t(out_size - 1)
    seq = np.empty(u.shape + (out_size,), np.int64)
    for i in range(out_size - 1):
        seq[..., i] = ((t(i) + u) * alpha).astype(np.int64) - (u * alpha).astype(np.int64)
    seq[..., out_size - 1] = in_size - pool
    return seq


def fractional_forward(x, samples, k, out_hw):
    """``samples`` (N, C, 2): [..., 0] for the width, [..., 1] for the height."""
    N, C, H, W = x.shape
    oH, oW = out_hw
    rows = fractional_starts(samples[..., 1], H, oH, k)            # (N, C, oH)
    cols = fractional_starts(samples[..., 0], W, oW, k)            # (N, C, oW)
    R = rows[:, :, :, None, None, None] + np.arange(k)[:, None]   # (N, C, oH, 1, k, 1)
    Q = cols[:, :, None, :, None, None] + np.arange(k)[None, :]   # (N, C, 1, oW, 1, k)
    n = np.arange(N)[:, None, None, None, None, None]
    c = np.arange(C)[None, :, None, None, None, None]
    flat = x[n, c, R, Q].reshape(N, C, oH, oW, k * k)
    a = flat.argmax(axis=-1)
    y = np.take_along_axis(flat, a[..., None], axis=-1)[..., 0]
    idx = (rows[:, :, :, None] + a // k) * W + cols[:, :, None, :] + a % k
    return y, idx


# -------------------------------------------------------------- adaptive
def adaptive_bins(L, out):
    return [((i * L) // out, ((i + 1) * L + out - 1) // out) for i in range(out)]


def adaptive_avg_forward(x, oh, ow):
    N, C, H, W = x.shape
    y = np.empty((N, C, oh, ow), x.dtype)
    for i, (h0, h1) in enumerate(adaptive_bins(H, oh)):
        for j, (w0, w1) in enumerate(adaptive_bins(W, ow)):
            y[:, :, i, j] = x[:, :, h0:h1, w0:w1].mean(axis=(2, 3), dtype=np.float64)
    return y


def adaptive_avg_backward(dout, x_shape):
    N, C, H, W = x_shape
    oh, ow = dout.shape[2:]
    dx = np.zeros(x_shape, dout.dtype)
    for i, (h0, h1) in enumerate(adaptive_bins(H, oh)):
        for j, (w0, w1) in enumerate(adaptive_bins(W, ow)):
            dx[:, :, h0:h1, w0:w1] += dout[:, :, i, j, None, None] / ((h1 - h0) * (w1 - w0))
    return dx


def adaptive_max_forward(x, oh, ow):
    N, C, H, W = x.shape
    y = np.empty((N, C, oh, ow), x.dtype)
    idx = np.empty((N, C, oh, ow), np.int64)
    for i, (h0, h1) in enumerate(adaptive_bins(H, oh)):
        for j, (w0, w1) in enumerate(adaptive_bins(W, ow)):
            win = x[:, :, h0:h1, w0:w1].reshape(N, C, -1)
            a = win.argmax(axis=-1)
            y[:, :, i, j] = np.take_along_axis(win, a[..., None], axis=-1)[..., 0]
            idx[:, :, i, j] = (h0 + a // (w1 - w0)) * W + w0 + a % (w1 - w0)
    return y, idx


def adaptive_max_backward(dout, idx, x_shape):
    return _scatter(dout, idx, x_shape)


def global_avg_forward(x):
    return x.mean(axis=(2, 3), dtype=np.float64).astype(x.dtype)


def global_avg_backward(dout, x_shape):
    N, C, H, W = x_shape
    return np.broadcast_to((dout / (H * W))[:, :, None, None], x_shape).copy()


def global_max_forward(x):
    N, C = x.shape[:2]
    flat = x.reshape(N, C, -1)
    a = flat.argmax(axis=-1)
    return np.take_along_axis(flat, a[..., None], axis=-1)[..., 0], a


def global_max_backward(dout, idx, x_shape):
    return _scatter(dout, idx, x_shape)


def spp_forward(x, levels):
    N, C = x.shape[:2]
    pieces, idxs = [], []
    for v in levels:
        y, idx = adaptive_max_forward(x, v, v)
        pieces.append(y.reshape(N, C * v * v))
        idxs.append(idx)
    return np.concatenate(pieces, axis=1), idxs


def spp_backward(dout, idxs, x_shape, levels):
    N, C = x_shape[:2]
    dx = np.zeros(x_shape, dout.dtype)
    start = 0
    for v, idx in zip(levels, idxs):
        d = dout[:, start:start + C * v * v].reshape(N, C, v, v)
        start += C * v * v
        dx += _scatter(d, idx, x_shape)
    return dx


# ----------------------------------------------------------------- unpool
def maxunpool_forward(x, idx, out_hw):
    N, C = x.shape[:2]
    P = N * C
    out = np.zeros((P, out_hw[0] * out_hw[1]), x.dtype)
    out[np.arange(P)[:, None], idx.reshape(P, -1)] = x.reshape(P, -1)
    return out.reshape(N, C, *out_hw)


def maxunpool_backward(dout, idx):
    N, C = dout.shape[:2]
    flat = dout.reshape(N * C, -1)
    return np.take_along_axis(flat, idx.reshape(N * C, -1), axis=1).reshape(idx.shape)


# ------------------------------------------------------------- convolution
def im2col_indices(x_shape, kh, kw, p, s):
    """The classic fancy-indexing im2col (cs231n ``get_im2col_indices``)."""
    N, C, H, W = x_shape
    Ho, Wo = (H + 2 * p - kh) // s + 1, (W + 2 * p - kw) // s + 1
    i0 = np.tile(np.repeat(np.arange(kh), kw), C)
    i1 = s * np.repeat(np.arange(Ho), Wo)
    j0 = np.tile(np.arange(kw), kh * C)
    j1 = s * np.tile(np.arange(Wo), Ho)
    i = i0.reshape(-1, 1) + i1.reshape(1, -1)
    j = j0.reshape(-1, 1) + j1.reshape(1, -1)
    k = np.repeat(np.arange(C), kh * kw).reshape(-1, 1)
    return k, i, j, Ho, Wo


def conv_forward(x, Wt, b, s=1, p=0):
    """-> (y, cache).  y = Wm @ im2col(x) + b, cols of shape (C*kh*kw, Ho*Wo*N)."""
    N, C, H, W = x.shape
    F, _, kh, kw = Wt.shape
    k, i, j, Ho, Wo = im2col_indices(x.shape, kh, kw, p, s)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    cols = xp[:, k, i, j].transpose(1, 2, 0).reshape(C * kh * kw, -1)
    y = Wt.reshape(F, -1) @ cols + b.reshape(-1, 1)
    y = y.reshape(F, Ho, Wo, N).transpose(3, 0, 1, 2)
    return y, (x.shape, Wt, cols, (k, i, j), s, p)


def conv_backward(dout, cache):
    """-> (dx, dW, db); col2im with ``np.add.at``."""
    x_shape, Wt, cols, (k, i, j), s, p = cache
    N, C, H, W = x_shape
    F = Wt.shape[0]
    db = dout.sum(axis=(0, 2, 3))
    d = dout.transpose(1, 2, 3, 0).reshape(F, -1)
    dW = (d @ cols.T).reshape(Wt.shape)
    dcols = Wt.reshape(F, -1).T @ d
    dxp = np.zeros((N, C, H + 2 * p, W + 2 * p), dout.dtype)
    np.add.at(dxp, (slice(None), k, i, j), dcols.reshape(len(k), -1, N).transpose(2, 0, 1))
    return dxp[:, :, p:p + H, p:p + W], dW, db


# ------------------------------------------------------- a numpy CNN step
def softmax_ce(logits, labels):
    """-> (mean loss, dlogits) with log-sum-exp."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    probs = e / s
    n = len(labels)
    loss = -(z[np.arange(n), labels] - np.log(s[:, 0])).mean()
    d = probs.copy()
    d[np.arange(n), labels] -= 1
    return float(loss), d / n


class NumpyNet:
    """A textbook numpy CNN (conv via im2col, ReLU, 2x2 max pooling, flatten,
    dense, softmax cross-entropy) with SGD (momentum, Nesterov) or Adam,
    following torch.optim's update rules.

    ``from_minicnn(model)`` copies the architecture and weights of a minicnn
    ``Sequential`` made of Conv2D / ReLU / MaxPool2D / Flatten / Dense.
    """

    def __init__(self, layers, optimizer="sgd", lr=0.01, momentum=0.9, nesterov=True,
                 betas=(0.9, 0.999), eps=1e-8):
        self.layers = layers          # [(kind, dict of params/options)]
        self.opt, self.lr, self.momentum, self.nesterov = optimizer, lr, momentum, nesterov
        self.betas, self.eps = betas, eps
        self.state, self.t = {}, 0

    @classmethod
    def from_minicnn(cls, model, **opt):
        layers = []
        for layer in model.layers:
            kind = type(layer).__name__
            if kind == "Conv2D":
                assert layer.stride[0] == layer.stride[1] and layer.padding[0] == layer.padding[1]
                layers.append(("conv", {"W": layer.params["W"].copy(), "b": layer.params["b"].copy(),
                                        "s": layer.stride[0], "p": layer.padding[0]}))
            elif kind == "Dense":
                layers.append(("dense", {"W": layer.params["W"].copy(), "b": layer.params["b"].copy()}))
            elif kind == "MaxPool2D":
                assert layer.padding == (0, 0) and layer.kernel_size[0] == layer.kernel_size[1]
                layers.append(("maxpool", {"k": layer.kernel_size[0], "s": layer.stride[0]}))
            elif kind in ("ReLU", "Flatten"):
                layers.append((kind.lower(), {}))
            else:
                raise ValueError(f"NumpyNet: no numpy reference for {kind}")
        return cls(layers, **opt)

    def params(self):
        """(key, param dict, name) of every trainable array."""
        return [((n, k), spec, k) for n, (kind, spec) in enumerate(self.layers)
                if kind in ("conv", "dense") for k in ("W", "b")]

    def step(self, x, y):
        """One forward + backward + update; returns the loss."""
        caches, h = [], x
        for kind, spec in self.layers:
            if kind == "conv":
                h, c = conv_forward(h, spec["W"], spec["b"], spec["s"], spec["p"])
            elif kind == "relu":
                c = h > 0
                h = h * c
            elif kind == "maxpool":
                shape = h.shape
                h, idx = maxpool_forward(h, spec["k"], spec["s"])
                c = (idx, shape)
            elif kind == "flatten":
                c = h.shape
                h = h.reshape(h.shape[0], -1)
            else:
                c = h
                h = h @ spec["W"] + spec["b"]
            caches.append(c)
        loss, d = softmax_ce(h, y)
        grads = {}
        for n in reversed(range(len(self.layers))):
            kind, spec = self.layers[n]
            c = caches[n]
            if kind == "conv":
                d, grads[(n, "W")], grads[(n, "b")] = conv_backward(d, c)
            elif kind == "relu":
                d = d * c
            elif kind == "maxpool":
                d = maxpool_backward(d, *c)
            elif kind == "flatten":
                d = d.reshape(c)
            else:
                grads[(n, "W")] = c.T @ d
                grads[(n, "b")] = d.sum(axis=0)
                d = d @ spec["W"].T
        self.t += 1
        for key, spec, k in self.params():
            self._update(key, spec, k, grads[key])
        return loss

    def _update(self, key, spec, k, g):
        p = spec[k]
        st = self.state.setdefault(key, {})
        if self.opt == "sgd":
            if self.momentum:
                v = st["v"] = g.copy() if "v" not in st else self.momentum * st["v"] + g
                g = g + self.momentum * v if self.nesterov else v
            spec[k] = (p - self.lr * g).astype(p.dtype)
        else:
            b1, b2 = self.betas
            m = st["m"] = b1 * st.get("m", 0) + (1 - b1) * g
            v = st["v"] = b2 * st.get("v", 0) + (1 - b2) * g * g
            mhat = m / (1 - b1 ** self.t)
            vhat = v / (1 - b2 ** self.t)
            spec[k] = (p - self.lr * mhat / (np.sqrt(vhat) + self.eps)).astype(p.dtype)
