"""Window pooling layers: MaxPool2D, MaxUnpool2D, AvgPool2D, LPPool2D, MixedPool2D.

All work on NCHW arrays and follow PyTorch's documented semantics, option
for option (see docs/pooling.md).  Shapes::

    x : (N, C, H, W)  ->  y : (N, C, H_out, W_out)
    H_out = floor((H + 2p - d*(k-1) - 1 + (s-1 if ceil_mode else 0)) / s) + 1
            (ceil mode drops a window that would start at or beyond H + p)

The formula lives once, in :func:`minicnn.layers.geometry.output_size`.
The loops live in :mod:`minicnn.kernels.pooling` (one module per pooling
type behind it); a layer validates its
arguments, reshapes to (N*C, H, W) planes, allocates the outputs, calls the
kernels and caches only what its backward pass needs.

Backward rules: max sends the whole gradient to the argmax recorded in
forward (``dx[argmax] += dout``); average spreads it over the window
(``dx[window] += dout / divisor``).
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from minicnn.kernels import pooling as K
from minicnn.layers.base import Layer, flag
from minicnn.layers.geometry import check_window, pair, window_output_shape
from minicnn.threads import run_kernel

__all__ = ["MaxPool2D", "MaxUnpool2D", "AvgPool2D", "LPPool2D", "MixedPool2D"]


# ---------------------------------------------------------------- helpers
def _window(layer, kernel_size, stride, padding, dilation=1, max_padding="half"):
    """Parse and validate (kernel, stride, padding, dilation) as (h, w) pairs;
    ``stride=None`` means ``stride = kernel_size`` (PyTorch's default)."""
    k = pair(kernel_size, "kernel_size", layer)
    s = k if stride is None else pair(stride, "stride", layer)
    p = pair(padding, "padding", layer)
    d = pair(dilation, "dilation", layer)
    check_window(layer, k, s, p, d, max_padding=max_padding)
    return k, s, p, d


def _planes(x):
    """(N, C, H, W) -> C-contiguous (N*C, H, W) view (copies only if ``x``
    is not C-contiguous)."""
    N, C, H, W = x.shape
    return np.ascontiguousarray(x).reshape(N * C, H, W)


def _dout_planes(layer, dout, shape, dtype):
    """Check ``dout`` against the forward output shape and return it as
    C-contiguous (N*C, H_out, W_out) planes of ``dtype``.  Never mutates
    ``dout`` (a copy is made only to change dtype or layout)."""
    dout = layer._check_dout(dout, shape)
    N, C, H, W = shape
    return np.ascontiguousarray(dout, dtype=dtype).reshape(N * C, H, W)


class _Pool(Layer):
    """Shared bookkeeping: the forward input's shape and dtype, the output size."""

    _x_shape = _x_dtype = _out_hw = None

    def _remember(self, x, out_hw):
        self._x_shape, self._x_dtype, self._out_hw = x.shape, x.dtype, out_hw

    def _dout(self, dout):
        """Upstream gradient as (N*C, H_out, W_out) planes in the forward dtype."""
        self._need_forward("_x_shape")
        N, C = self._x_shape[:2]
        return _dout_planes(self, dout, (N, C) + self._out_hw, self._x_dtype)

    def _new_dx(self):
        N, C, H, W = self._x_shape
        return np.empty((N * C, H, W), self._x_dtype)


def _plain_2x2(k, s, p, d) -> bool:
    """Kernel 2, stride 2, no padding or dilation."""
    return k == (2, 2) and s == (2, 2) and p == (0, 0) and d == (1, 1)


def _common_2x2(k, s, p, d, x_hw, out_hw) -> bool:
    """:func:`_plain_2x2` with every window full: the written-out 2x2
    kernels apply (same results as the general ones)."""
    return _plain_2x2(k, s, p, d) and 2 * out_hw[0] <= x_hw[0] and 2 * out_hw[1] <= x_hw[1]


def _overlapping_3x3s2(k, s, p, d, x_hw, out_hw) -> bool:
    """Kernel 3, stride 2, column padding 1, row padding 0 or 1, no
    dilation, even width and the floor-mode output size (``W_out = W/2``):
    the 3x3 stride-2 average kernels apply (sums over the split even/odd
    columns; same results as the general ones)."""
    return (k == (3, 3) and s == (2, 2) and p[1] == 1 and p[0] in (0, 1) and d == (1, 1)
            and x_hw[1] % 2 == 0 and 2 * out_hw[1] == x_hw[1]
            and out_hw[0] == (x_hw[0] + 2 * p[0] - 3) // 2 + 1)


def _lp_3x3s2(k, s, x_hw, out_hw) -> bool:
    """Kernel 3, stride 2 (LP pooling has no padding), even width and the
    floor-mode output size, so every window is full (``W_out = W/2 - 1``):
    the 3x3 stride-2 LP kernels apply (same results as the general ones)."""
    return (k == (3, 3) and s == (2, 2) and x_hw[1] % 2 == 0
            and out_hw[1] == x_hw[1] // 2 - 1 and out_hw[0] == (x_hw[0] - 3) // 2 + 1)


def _max_3x3s2(k, s, p, d, x_hw, out_hw) -> bool:
    """:func:`_overlapping_3x3s2` on planes of fewer than 2**31 cells: the
    separable 3x3 stride-2 max kernel applies (it keeps in-plane indices
    as int32; same results as the general one)."""
    return _overlapping_3x3s2(k, s, p, d, x_hw, out_hw) and x_hw[0] * x_hw[1] < 2**31


def _maxpool(xp, k, s, p, d, out, argmax):
    """Max pooling of planes (N*C, H, W) into ``out``, ``argmax``."""
    if _common_2x2(k, s, p, d, xp.shape[1:], out.shape[1:]):
        run_kernel(K.maxpool2d_2x2_forward, xp, out, argmax)
    elif _max_3x3s2(k, s, p, d, xp.shape[1:], out.shape[1:]):
        run_kernel(K.maxpool2d_3x3s2_forward, xp, p[0], out, argmax)
    elif k == (3, 3) and d == (1, 1):          # padding <= 1: check_window's rule
        run_kernel(K.maxpool2d_3x3_forward, xp, s[0], s[1], p[0], p[1], out, argmax)
    else:
        run_kernel(K.maxpool2d_forward, xp, k[0], k[1], s[0], s[1], p[0], p[1], d[0], d[1], out, argmax)


def _avgpool(xp, k, s, p, count_include_pad, divisor_override, out):
    """Average pooling of planes; ``divisor_override`` 0 means none."""
    if _common_2x2(k, s, p, (1, 1), xp.shape[1:], out.shape[1:]):
        run_kernel(K.avgpool2d_2x2_forward, xp, divisor_override or 4, out)
    elif _overlapping_3x3s2(k, s, p, (1, 1), xp.shape[1:], out.shape[1:]):
        run_kernel(K.avgpool2d_3x3s2_forward, xp, p[0], count_include_pad, divisor_override, out)
    elif k == (3, 3):
        run_kernel(K.avgpool2d_3x3_forward, xp, s[0], s[1], p[0], p[1], count_include_pad,
                   divisor_override, out)
    else:
        run_kernel(K.avgpool2d_forward, xp, k[0], k[1], s[0], s[1], p[0], p[1],
                   count_include_pad, divisor_override, out)


def _avgpool_backward(dout, k, s, p, count_include_pad, divisor_override, dx):
    """Backward of :func:`_avgpool` into ``dx`` (overwritten)."""
    if _common_2x2(k, s, p, (1, 1), dx.shape[1:], dout.shape[1:]):
        run_kernel(K.avgpool2d_2x2_backward, dout, divisor_override or 4, dx)
    elif _overlapping_3x3s2(k, s, p, (1, 1), dx.shape[1:], dout.shape[1:]):
        run_kernel(K.avgpool2d_3x3s2_backward, dout, p[0], count_include_pad, divisor_override, dx)
    elif k == (3, 3):
        run_kernel(K.avgpool2d_3x3_backward, dout, s[0], s[1], p[0], p[1], count_include_pad,
                   divisor_override, dx)
    else:
        run_kernel(K.avgpool2d_backward, dout, k[0], k[1], s[0], s[1], p[0], p[1],
                   count_include_pad, divisor_override, dx)


# -------------------------------------------------------------------- max
class MaxPool2D(_Pool):
    """Max pooling, ``torch.nn.MaxPool2d`` semantics.

    ``y[n, c, oh, ow] = max_{i,j} x[n, c, oh*s - p + i*d, ow*s - p + j*d]``
    over the taps inside the input (padding is -inf, never 0).  Ties: the
    first maximum in row-major scan order wins and alone gets the gradient.
    NaN propagates: a window containing NaN gives NaN.  ``padding`` may be
    at most half the effective kernel ``d*(k-1) + 1``.

    ``return_indices=True``: ``forward`` returns ``(y, indices)`` with
    int64 flat indices ``h*W + w`` into each H*W plane, as PyTorch (the
    input of :class:`MaxUnpool2D`).  A window with no tap inside the input
    (possible only with dilation) gives -inf and index -1, where PyTorch
    returns an out-of-range index.

    Backward: ``dx[argmax] += dout``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 ceil_mode=False, return_indices=False, name=None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding, self.dilation = _window(
            self.name, kernel_size, stride, padding, dilation)
        self.ceil_mode = flag(self.name, "ceil_mode", ceil_mode)
        self.return_indices = flag(self.name, "return_indices", return_indices)
        self._argmax = None

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "dilation": self.dilation, "ceil_mode": self.ceil_mode,
                "return_indices": self.return_indices}

    def forward(self, x):
        """x: (N, C, H, W) -> y: (N, C, H_out, W_out) [, indices int64, same shape]."""
        x = self._as_input(x, 4)
        N, C, H, W = x.shape
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride,
                                     self.padding, self.dilation, self.ceil_mode)
        y = np.empty((N * C, Ho, Wo), x.dtype)
        argmax = np.empty((N * C, Ho, Wo), np.int64)
        _maxpool(_planes(x), self.kernel_size, self.stride, self.padding, self.dilation, y, argmax)
        self._argmax = argmax
        self._remember(x, (Ho, Wo))
        y = y.reshape(N, C, Ho, Wo)
        return (y, argmax.reshape(N, C, Ho, Wo).copy()) if self.return_indices else y

    def backward(self, dout):
        """dout: (N, C, H_out, W_out) -> dx: (N, C, H, W); ``dx[argmax] += dout``."""
        d = self._dout(dout)
        dx = self._new_dx()
        run_kernel(K.maxpool2d_backward, d, self._argmax, dx)
        return dx.reshape(self._x_shape)

    def is_plain_2x2(self) -> bool:
        """Kernel 2, stride 2, no padding or dilation, floor mode, no indices
        returned: the pooling whose backward a :class:`~minicnn.layers.conv.Conv2D`
        can take over (``Conv2D.backward_maxpool2x2``)."""
        return (_plain_2x2(self.kernel_size, self.stride, self.padding, self.dilation)
                and not self.ceil_mode and not self.return_indices)


class MaxUnpool2D(_Pool):
    """Partial inverse of :class:`MaxPool2D`, ``torch.nn.MaxUnpool2d`` semantics.

    ``forward(x, indices, output_size=None)``: every value of ``x`` is put at
    its flat index in a zero (H_out, W_out) plane; all other cells are 0.
    Default size ``H_out = (H_in - 1)*s - 2p + k`` (same for W).
    ``output_size`` may be (H, W) or a full (N, C, H, W) shape (only the last
    two are used); each entry must lie strictly between default - s and
    default + s, as in PyTorch.  Indices outside [0, H_out*W_out) raise
    ValueError.  If two entries share an index, the later one in row-major
    order wins the forward pass.

    Backward (gather): ``dx = dout.flat[indices]`` per plane, as PyTorch.
    """

    def __init__(self, kernel_size, stride=None, padding=0, name=None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding, _ = _window(
            self.name, kernel_size, stride, padding, max_padding=None)
        self._indices = None

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def _output_hw(self, hw, output_size):
        default = tuple((L - 1) * s - 2 * p + k for L, k, s, p in
                        zip(hw, self.kernel_size, self.stride, self.padding))
        if output_size is None:
            size = default
        else:
            size = tuple(output_size)
            if len(size) == 4:
                size = size[2:]
            if len(size) != 2 or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool)
                                         for v in size):
                raise ValueError(f"{self.name}: output_size must be (H, W) or (N, C, H, W) ints, "
                                 f"got {output_size!r}")
            for dim, (v, dv, s) in enumerate(zip(size, default, self.stride)):
                if not dv - s < v < dv + s:
                    raise ValueError(f"{self.name}: invalid output_size {tuple(output_size)}: dim {dim} "
                                     f"must be strictly between {dv - s} and {dv + s}, got {v}")
            size = tuple(int(v) for v in size)
        if min(size) < 1:
            raise ValueError(f"{self.name}: output size {size} for input size {tuple(hw)} "
                             f"(kernel_size={self.kernel_size}, stride={self.stride}, "
                             f"padding={self.padding}) must be >= 1")
        return size

    def _index_error(self, hw, bad):
        Ho, Wo = hw
        return ValueError(f"{self.name}: indices must lie in [0, {Ho * Wo}) for output size "
                          f"({Ho}, {Wo}), found index {bad}")

    def forward(self, x, indices, output_size=None):
        """x, indices: (N, C, H_in, W_in) -> y: (N, C, H_out, W_out)."""
        x = self._as_input(x, 4)
        indices = np.asarray(indices)
        if indices.shape != x.shape:
            raise ValueError(f"{self.name}: indices must have the shape of x {x.shape}, got {indices.shape}")
        if indices.dtype.kind not in "iu":
            raise TypeError(f"{self.name}: indices must be integers, got dtype {indices.dtype}")
        N, C, H, W = x.shape
        Ho, Wo = self._output_hw((H, W), output_size)
        if indices.dtype == np.uint64 and indices.size and indices.max() > np.iinfo(np.int64).max:
            raise self._index_error((Ho, Wo), indices.max())       # (int64 would wrap it)
        idx = np.ascontiguousarray(indices, dtype=np.int64).reshape(N * C, H, W)
        y = np.empty((N * C, Ho, Wo), x.dtype)
        ok = np.empty(N * C, bool)
        run_kernel(K.maxunpool2d_forward, _planes(x), idx, y, ok, size=y.size)
        if not ok.all():                      # the kernel checked each plane's indices
            in_bad_planes = idx[~ok]
            lo, hi = in_bad_planes.min(), in_bad_planes.max()
            raise self._index_error((Ho, Wo), lo if lo < 0 else hi)
        self._indices = idx
        self._remember(x, (Ho, Wo))
        return y.reshape(N, C, Ho, Wo)

    def backward(self, dout):
        """dout: (N, C, H_out, W_out) -> dx: (N, C, H_in, W_in); ``dx = dout.flat[indices]``."""
        d = self._dout(dout)
        dx = self._new_dx()
        run_kernel(K.maxunpool2d_backward, d, self._indices, dx)
        return dx.reshape(self._x_shape)


# ---------------------------------------------------------------- average
class AvgPool2D(_Pool):
    """Average pooling, ``torch.nn.AvgPool2d`` semantics.

    Per axis, window ``o`` spans ``[start, end)`` with ``start = o*s - p``
    and ``end = min(start + k, L + p)`` (clamped to the padded input); the
    cells summed are those of ``[max(start, 0), min(end, L))``.

    ``y = sum(x[window inside the input]) / divisor`` where ``divisor`` is
    ``divisor_override`` if given (any non-zero int, as in PyTorch), else the clamped area
    ``(end_h - start_h) * (end_w - start_w)`` if ``count_include_pad``,
    else the number of cells inside the input.

    Backward: ``dx[window inside the input] += dout / divisor``.
    """

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True, divisor_override=None, name=None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding, _ = _window(
            self.name, kernel_size, stride, padding)
        self.ceil_mode = flag(self.name, "ceil_mode", ceil_mode)
        self.count_include_pad = flag(self.name, "count_include_pad", count_include_pad)
        if divisor_override is not None and (
                isinstance(divisor_override, bool) or not isinstance(divisor_override, numbers.Integral)
                or divisor_override == 0):
            raise ValueError(f"{self.name}: divisor_override must be None or a non-zero int "
                             f"(negative allowed, as in PyTorch), got {divisor_override!r}")
        self.divisor_override = None if divisor_override is None else int(divisor_override)

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "ceil_mode": self.ceil_mode, "count_include_pad": self.count_include_pad,
                "divisor_override": self.divisor_override}

    def _args(self):
        return (self.kernel_size, self.stride, self.padding, self.count_include_pad,
                self.divisor_override or 0)

    def forward(self, x):
        """x: (N, C, H, W) -> y: (N, C, H_out, W_out)."""
        x = self._as_input(x, 4)
        N, C, H, W = x.shape
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride,
                                     self.padding, ceil_mode=self.ceil_mode)
        y = np.empty((N * C, Ho, Wo), x.dtype)
        _avgpool(_planes(x), *self._args(), y)
        self._remember(x, (Ho, Wo))
        return y.reshape(N, C, Ho, Wo)

    def backward(self, dout):
        """dout: (N, C, H_out, W_out) -> dx: (N, C, H, W); ``dx[window] += dout / divisor``."""
        d = self._dout(dout)
        dx = self._new_dx()
        _avgpool_backward(d, *self._args(), dx)
        return dx.reshape(self._x_shape)


# ------------------------------------------------------------- power (LP)
class LPPool2D(_Pool):
    """Power-average pooling, ``torch.nn.LPPool2d`` semantics (no padding).

    ``y = (sum_{window} x**p) ** (1/p)``; p = 2 is L2-norm pooling, p = 1
    sum pooling.  Computed as PyTorch does: ``(kh*kw * avg_pool(x**p)) **
    (1/p)``, which equals the formula for full windows; a partial window at
    the edge in ceil mode (n < kh*kw cells) gives
    ``(kh*kw/n * sum x**p) ** (1/p)``, like PyTorch.  Negative inputs follow
    C ``pow`` as in PyTorch: a negative base with a non-integer exponent is
    NaN, so an odd p with a negative window sum gives NaN, except p = 1,
    which gives the (signed) sum.

    ``norm_type`` = inf gives ``max |x|`` and -inf ``min |x|`` (PyTorch's
    special cases, computed through max pooling).

    Backward: each window's share ``g = dout * c * y / s``, with ``s = c *
    sum x**p`` and ``c = kh*kw/n``, is summed per cell into ``S``, and ``dx
    = S * x**(p-1)`` (PyTorch's order); a window with ``s == 0`` sends
    nothing (its gradient is 0, as PyTorch
    documents).  For p = +-inf: ``dx[argmax] += dout * sign(x[argmax])``.
    """

    def __init__(self, norm_type, kernel_size, stride=None, ceil_mode=False, name=None):
        super().__init__(name)
        if isinstance(norm_type, bool) or not isinstance(norm_type, numbers.Real) or \
                math.isnan(norm_type) or (math.isfinite(norm_type) and norm_type <= 0):
            raise ValueError(f"{self.name}: norm_type must be a number > 0 (or +-inf), got {norm_type!r}")
        self.norm_type = float(norm_type)
        self.kernel_size, self.stride, self.padding, _ = _window(
            self.name, kernel_size, stride, 0)
        self.ceil_mode = flag(self.name, "ceil_mode", ceil_mode)
        self._cache = None

    def config(self):
        return {"norm_type": self.norm_type, "kernel_size": self.kernel_size,
                "stride": self.stride, "ceil_mode": self.ceil_mode}

    def forward(self, x):
        """x: (N, C, H, W) -> y: (N, C, H_out, W_out)."""
        x = self._as_input(x, 4)
        N, C, H, W = x.shape
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride,
                                     self.padding, ceil_mode=self.ceil_mode)
        xp = _planes(x)
        y = np.empty((N * C, Ho, Wo), x.dtype)
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if math.isfinite(self.norm_type):
            sums = np.empty_like(y)
            if _common_2x2(self.kernel_size, self.stride, (0, 0), (1, 1), (H, W), (Ho, Wo)):
                run_kernel(K.lppool2d_2x2_forward, xp, self.norm_type, y, sums)
            elif _lp_3x3s2(self.kernel_size, self.stride, (H, W), (Ho, Wo)):
                run_kernel(K.lppool2d_3x3s2_forward, xp, self.norm_type, y, sums)
            elif self.kernel_size == (3, 3):
                run_kernel(K.lppool2d_3x3_forward, xp, self.norm_type, sh, sw, y, sums)
            else:
                run_kernel(K.lppool2d_forward, xp, self.norm_type, kh, kw, sh, sw, y, sums)
            self._cache = (xp, y, sums)
        else:                         # +inf: max |x|;  -inf: -max(-|x|) = min |x|
            sign = 1.0 if self.norm_type > 0 else -1.0
            argmax = np.empty((N * C, Ho, Wo), np.int64)
            _maxpool(sign * np.abs(xp), self.kernel_size, self.stride, (0, 0), (1, 1), y, argmax)
            if sign < 0:
                np.negative(y, out=y)
            self._cache = (xp, argmax)
        self._remember(x, (Ho, Wo))
        return y.reshape(N, C, Ho, Wo)

    def backward(self, dout):
        """dout: (N, C, H_out, W_out) -> dx: (N, C, H, W)."""
        d = self._dout(dout)
        dx = self._new_dx()
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        if math.isfinite(self.norm_type):
            xp, y, sums = self._cache
            if _common_2x2(self.kernel_size, self.stride, (0, 0), (1, 1), xp.shape[1:], y.shape[1:]):
                run_kernel(K.lppool2d_2x2_backward, d, xp, y, sums, self.norm_type, dx)
            elif _lp_3x3s2(self.kernel_size, self.stride, xp.shape[1:], y.shape[1:]):
                run_kernel(K.lppool2d_3x3s2_backward, d, xp, y, sums, self.norm_type, dx)
            elif self.kernel_size == (3, 3):
                run_kernel(K.lppool2d_3x3_backward, d, xp, y, sums, self.norm_type, sh, sw, dx)
            else:
                run_kernel(K.lppool2d_backward, d, xp, y, sums, self.norm_type, kh, kw, sh, sw, dx)
        else:
            xp, argmax = self._cache
            run_kernel(K.maxpool2d_backward, d, argmax, dx)
            dx *= np.sign(xp)
        return dx.reshape(self._x_shape)


# ------------------------------------------------------------------ mixed
class MixedPool2D(_Pool):
    """Mixed pooling: ``y = alpha * max_pool(x) + (1 - alpha) * avg_pool(x)``.

    Same window for both (no padding, floor mode, divisor kh*kw).  With
    ``learnable=True``, ``params = {"alpha": [alpha]}`` (float32 like other
    parameters) and ``grads["alpha"] = sum(dout * (max - avg))``; alpha is
    not clipped during training.  Otherwise alpha is a fixed constant and
    the layer has no parameters.

    Backward: ``dx = alpha * (max rule) + (1 - alpha) * (avg rule)``, i.e.
    ``dx[argmax] += alpha * dout`` and ``dx[window] += (1 - alpha) * dout / (kh*kw)``.
    """

    def __init__(self, kernel_size, stride=None, alpha=0.5, learnable=False, name=None):
        super().__init__(name)
        self.kernel_size, self.stride, self.padding, _ = _window(
            self.name, kernel_size, stride, 0)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{self.name}: alpha must be a number in [0, 1], got {alpha!r}")
        self.alpha = float(alpha)
        self.learnable = flag(self.name, "learnable", learnable)
        if self.learnable:
            self.params = {"alpha": np.array([self.alpha], np.float32)}
            self.grads = {"alpha": np.zeros(1, np.float32)}
        self._argmax = self._diff = self._alpha_used = None

    @staticmethod
    def param_shapes(learnable=False, **_):
        """The parameters' shapes for these constructor arguments."""
        return {"alpha": (1,)} if isinstance(learnable, (bool, np.bool_)) and learnable else {}

    def config(self):
        return {"kernel_size": self.kernel_size, "stride": self.stride,
                "alpha": self.alpha, "learnable": self.learnable}

    def _avg_args(self):
        return self.kernel_size, self.stride, (0, 0), True, 0

    def forward(self, x):
        """x: (N, C, H, W) -> y: (N, C, H_out, W_out)."""
        x = self._as_input(x, 4)
        N, C, H, W = x.shape
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride, self.padding)
        xp = _planes(x)
        y = np.empty((N * C, Ho, Wo), x.dtype)
        av = np.empty_like(y)                          # the average, then max - average
        argmax = np.empty(y.shape, np.int64)
        a = self.params["alpha"][0] if self.learnable else self.alpha
        dt = x.dtype.type              # a*mx + (1-a)*av as numpy computes it for this dtype
        if self.kernel_size == (3, 3):                 # one pass for max, average and y
            run_kernel(K.mixedpool2d_3x3_forward, xp, *self.stride, dt(a), dt(1 - a), y, argmax, av)
        else:
            mx = np.empty_like(y)
            _maxpool(xp, self.kernel_size, self.stride, (0, 0), (1, 1), mx, argmax)
            _avgpool(xp, *self._avg_args(), av)
            run_kernel(K.mixedpool2d_combine, mx, av, dt(a), dt(1 - a), y)
        self._argmax, self._alpha_used = argmax, a
        self._diff = av if self.learnable else None
        self._remember(x, (Ho, Wo))
        return y.reshape(N, C, Ho, Wo)

    def backward(self, dout):
        """dout: (N, C, H_out, W_out) -> dx: (N, C, H, W); sets grads["alpha"] if learnable."""
        d = self._dout(dout)
        dx, davg = self._new_dx(), self._new_dx()
        run_kernel(K.maxpool2d_backward, d, self._argmax, dx)
        _avgpool_backward(d, *self._avg_args(), davg)
        a = self._alpha_used
        dt = self._x_dtype.type
        run_kernel(K.mixedpool2d_backward_combine, dx, davg, dt(a), dt(1 - a))    # dx = a*dx + (1-a)*davg
        if self.learnable:
            self.grads["alpha"][0] = np.sum(d * self._diff, dtype=np.float64)
        return dx.reshape(self._x_shape)
