"""2-D convolution as im2col + one BLAS matrix product.

Shapes::

    x : (N, C_in, H, W)      W : (C_out, C_in, kH, kW)      b : (C_out,)
    y : (N, C_out, H_out, W_out),  H_out = floor((H + 2p - kH) / s) + 1
        (geometry.output_size, PyTorch's formula)

Forward (cross-correlation, as in PyTorch)::

    y[n, f, oh, ow] = b[f] + sum_{c,i,j} W[f, c, i, j] * x_pad[n, c, oh*s + i, ow*s + j]

With ``cols = im2col(x)`` of shape (C_in*kH*kW, N*H_out*W_out) and
``Wm = W.reshape(C_out, -1)`` this is ``Y = Wm @ cols + b``.  Backward,
with ``dY`` the upstream gradient laid out as (C_out, N*H_out*W_out)::

    dW = dY @ cols.T          db = dY.sum(axis=1)
    dx = col2im(Wm.T @ dY)    (each column entry added back where it came from)

Both are computed a chunk of samples at a time (``Conv2D.chunk_floats``):
the columns of a chunk, the products and the layout changes, while the
chunk's columns are still in cache; ``dW`` is the sum of the chunks'
``dY_chunk @ cols_chunk.T``.  Only a batch that fits in one chunk keeps
its columns from forward to backward; otherwise backward forms them again.

Two algorithms, the same sums (see benchmarks/README.md for the measurements
behind the rule):

* **im2col + BLAS** (above), the general path;
* **direct** (:mod:`minicnn.kernels.conv_direct`): 3x3 kernels at stride 1
  with ``C_in*9 <= Conv2D.direct_max_taps`` (the first layer of an image
  net), where the GEMM's inner dimension is too short to pay for the
  column matrix.  Forward and ``dW``/``db`` are computed straight from a
  zero-padded copy of the input; ``dx``, when asked for, takes the GEMM
  path's ``col2im(Wm.T @ dY)``, which needs no column matrix.

The two differ only in the order of float additions.

**Sparse backward** (:mod:`minicnn.kernels.conv_sparse`): behind a max
pooling and a ReLU most of a convolution's output gradient is zero (in the
default model about 1-4 % of the second convolution's, once the ReLU cuts).
An im2col-path layer whose output gradient has at most
``sparse_max_density`` non-zero entries, and whose input and weights are
finite, computes dW, db and dx from those entries alone: the same terms as
the GEMMs without the products of zero, in another order.  So the backward
pass's speed (not its result, beyond the last bits) depends on the values:
measured in ``benchmarks/README.md``.

Backward through a following 2x2 max pooling (:meth:`Conv2D.backward_maxpool2x2`,
which the model uses when only the pooling reads the convolution): both
paths take the pooled gradient and the pooling's winners, so the
full-resolution gradient is never stored.  Same gradients, bit for bit,
as the two layers' backward passes.
"""
from __future__ import annotations

import numbers

import numpy as np

from minicnn import seeding
from minicnn.kernels import conv_direct, conv_sparse
from minicnn.kernels.conv import col2im, im2col, nchw_from_rows, rows_from_maxpool2x2, rows_from_nchw
from minicnn.layers.base import Layer
from minicnn.layers.geometry import check_window, pair, window_output_shape
from minicnn.threads import run_kernel


_NO_ARGMAX = np.empty((0, 0, 0, 0), np.int64)   # the kernels' argmax argument when not pooling


def float_bits(x):
    """``(bits, mask, inf)`` for :func:`~minicnn.kernels.conv_sparse.pad_channels_last`'s
    finiteness test: x (N, ...) C-contiguous float32/64 viewed per sample
    as signed integers of its width, all bits but the sign, and the bits of
    +inf (a value is an infinity or a NaN iff ``bits & mask >= inf``)."""
    ints = np.int32 if x.dtype == np.float32 else np.int64
    return (x.reshape(len(x), -1).view(ints), ints(np.iinfo(ints).max),
            np.array(np.inf, x.dtype).view(ints)[()])


def _positive_int(layer, name, v):
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v <= 0:
        raise ValueError(f"{layer}: {name} must be a positive int, got {v!r}")
    return int(v)


class Conv2D(Layer):
    """Conv2D(in_channels, out_channels, kernel_size, stride=1, padding=0).

    He (Kaiming-normal) initialisation: ``W ~ N(0, 2 / fan_in)`` with
    ``fan_in = C_in*kH*kW``; ``b = 0``.  Zero padding.

    ``direct_max_taps`` (class attribute, may be set per layer): a 3x3,
    stride-1 layer with ``C_in*9`` at most this takes the direct algorithm
    (module docstring); 0 turns it off.

    ``sparse_max_density`` (class attribute, may be set per layer): an
    im2col-path layer whose output gradient has at most this fraction of
    non-zero entries (and whose input and weights are finite) computes its
    backward from those entries alone (module docstring); 0 turns it off.
    0.2 is where the two ways cost the same for the default model's
    32->64 layer with the non-zero entries at random places (7.5 against
    7.7 ms; 15.5 against 7.7 at 0.5); behind a 2x2 max pooling (at most
    0.25) the sparse way was faster at every density (7.5 against 8.1 ms
    with every winner non-zero).  benchmarks/README.md has the figures.

    ``chunk_floats`` (class attribute, may be set per layer): the im2col
    path never forms the column matrix of more than about this many floats
    at once.  The batch is cut into the fewest chunks of equal size
    (:meth:`chunk_size`) that respect it, at least one sample each; 0
    takes the whole batch at once.  Forward runs im2col, the product and
    the layout change chunk by chunk while the chunk's columns are in
    cache; so does the GEMM backward (``dW`` summed over the chunks,
    ``Wm.T @ dY`` folded by ``col2im``), which forms each chunk's columns
    again unless the whole batch was one chunk.  2**21 (8 MiB in float32)
    cuts the default model's 32->64 layer at batch 64 into two chunks,
    which was fastest inside its training step (benchmarks/README.md),
    and bounds the column matrix of a large evaluation batch.
    """

    direct_max_taps = 36
    chunk_floats = 1 << 21
    sparse_max_density = 0.2

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, name=None):
        super().__init__(name)
        self.in_channels = _positive_int(self.name, "in_channels", in_channels)
        self.out_channels = _positive_int(self.name, "out_channels", out_channels)
        self.kernel_size = pair(kernel_size, "kernel_size", self.name)
        self.stride = pair(stride, "stride", self.name)
        self.padding = pair(padding, "padding", self.name)
        check_window(self.name, self.kernel_size, self.stride, self.padding, max_padding=None)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        shapes = self.param_shapes(self.in_channels, self.out_channels, self.kernel_size)
        W = seeding.generator().standard_normal(shapes["W"])
        self.params = {"W": (W * np.sqrt(2.0 / fan_in)).astype(np.float32),
                       "b": np.zeros(shapes["b"], np.float32)}
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self._cols = None      # im2col path: a chunk's column matrix (reused buffer)
        self._cols_whole = False   # ... holding the whole last batch's (one chunk)
        self._xp = None        # direct path: cached padded input (reused buffer)
        self._direct = False   # which path the last forward took
        self._x = None         # im2col path: the input (the sparse backward reads it)
        self._x_shape = None

    @staticmethod
    def param_shapes(in_channels, out_channels, kernel_size, **_):
        """The parameters' shapes for these constructor arguments."""
        kh, kw = pair(kernel_size, "kernel_size", "Conv2D")
        return {"W": (out_channels, in_channels, kh, kw), "b": (out_channels,)}

    def config(self):
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": self.kernel_size, "stride": self.stride, "padding": self.padding}

    def _buffer(self, attr, shape, dtype):
        """Reuse a scratch array across steps when shape and dtype match."""
        buf = getattr(self, attr, None)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = np.empty(shape, dtype)
            setattr(self, attr, buf)
        return buf

    def forward(self, x):
        x = self._as_input(x, 4)
        N, C, H, W = x.shape
        if C != self.in_channels:
            raise ValueError(f"{self.name}: expected {self.in_channels} input channels, "
                             f"got input of shape {x.shape} with {C}")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride, self.padding)
        dt = self.dtype
        self._direct = self.uses_direct(C)
        x = np.ascontiguousarray(x)
        self._x_shape = x.shape
        if self._direct:
            y = np.empty((N, self.out_channels, Ho, Wo), dt)
            xp = self._buffer("_xp", (N, C, H + 2 * ph, W + 2 * pw), dt)
            acc = self._buffer("_acc", (N, 2, Ho * xp.shape[3]), dt)
            run_kernel(conv_direct.forward, x, ph, pw, self.params["W"], self.params["b"], xp, acc, y,
                       size=max(xp.size, y.size))
        else:
            F, P = self.out_channels, Ho * Wo
            Wm = self.params["W"].reshape(F, -1)
            y = np.empty((N, F, P), dt)
            for n0, n1, tail, cols in self._chunks(x, Ho, Wo):
                y2d = self._buffer("_y2d" + tail, (F, (n1 - n0) * P), dt)
                np.matmul(Wm, cols, out=y2d)
                run_kernel(nchw_from_rows, y2d, self.params["b"], y[n0:n1])
            self._x = x
        return y.reshape(N, self.out_channels, Ho, Wo)

    def chunk_size(self, N, Ho, Wo):
        """Samples per chunk of the im2col path for a batch of N with output
        planes Ho x Wo: N cut into ``ceil(C_in*kH*kW*Ho*Wo*N / chunk_floats)``
        chunks of equal size (the last one shorter when they do not divide
        N), at least 1; N itself (one chunk) when ``chunk_floats`` is 0."""
        limit = int(self.chunk_floats)
        total = self.in_channels * self.kernel_size[0] * self.kernel_size[1] * Ho * Wo * N
        if limit <= 0 or total <= limit:
            return max(1, N)
        n_chunks = -(-total // limit)
        return max(1, -(-N // n_chunks))

    def _chunks(self, x, Ho, Wo):
        """Yield ``(n0, n1, tail, cols)`` for the chunks of
        :meth:`_chunk_bounds`: ``cols`` (C_in*kH*kW, (n1-n0)*Ho*Wo) is
        im2col of ``x[n0:n1]``, in a buffer reused from chunk to chunk and
        step to step.  A batch that is one chunk leaves its columns in
        ``self._cols`` for the backward (``self._cols_whole``)."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        K = self.in_channels * kh * kw
        bounds = self._chunk_bounds(x.shape[0], Ho, Wo)
        self._cols_whole = len(bounds) == 1
        for n0, n1, tail in bounds:
            cols = self._buffer("_cols" + tail, (K, (n1 - n0) * Ho * Wo), self.dtype)
            run_kernel(im2col, x[n0:n1], kh, kw, sh, sw, ph, pw, Ho, Wo, cols)
            yield n0, n1, tail, cols

    def _chunk_bounds(self, N, Ho, Wo):
        """``[(n0, n1, tail), ...]``: the chunks of :meth:`chunk_size`
        covering N samples (one empty chunk for an empty batch).  ``tail``
        is ``"_tail"`` for a last chunk shorter than the others, else ``""``:
        the suffix of its scratch buffers' names, so that it gets buffers of
        its own and the full-size ones are not reallocated every step."""
        B = self.chunk_size(N, Ho, Wo)
        return [(n0, min(n0 + B, N), "_tail" if 0 < n0 and N - n0 < B else "")
                for n0 in range(0, max(N, 1), B)]

    def uses_direct(self, in_channels):
        """Whether forward takes the direct algorithm for this input."""
        return (self.kernel_size == (3, 3) and self.stride == (1, 1)
                and in_channels * 9 <= self.direct_max_taps)

    def backward(self, dout):
        return self._backward(dout, True, None)

    def backward_params(self, dout):
        """dW and db only: skips ``Wm.T @ dY`` and ``col2im``."""
        self._backward(dout, False, None)

    def backward_maxpool2x2(self, dout, pool, input_grad=True):
        """``self.backward(pool.backward(dout))`` in one step, for ``pool`` a
        :class:`~minicnn.layers.pooling.MaxPool2D` with
        ``pool.is_plain_2x2()`` whose last forward pooled this layer's last
        output: ``dout`` is the gradient of the pooled output (N, C_out,
        Ho//2, Wo//2).  Sets dW and db and returns dx (None when
        ``input_grad`` is False), the same values bit for bit, but the
        full-resolution gradient (N, C_out, Ho, Wo) is never written: the
        winners' gradients go straight into the layout the weight gradient
        reads (the direct kernel's scratch rows, or the GEMM path's
        (C_out, N*Ho*Wo) matrix).  The model's backward takes this path for
        such a pair (``Model.fuse``)."""
        return self._backward(dout, input_grad, pool)

    def _backward(self, dout, input_grad, pool):
        self._need_forward("_x_shape")
        N, C, H, W = self._x_shape
        F = self.out_channels
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        Ho, Wo = window_output_shape(self.name, (H, W), self.kernel_size, self.stride, self.padding)
        P = Ho * Wo
        dt = self.dtype
        if pool is None:
            dout = np.ascontiguousarray(self._check_dout(dout, (N, F, Ho, Wo)), dtype=dt)
            argmax = _NO_ARGMAX
        else:
            pool._need_forward("_x_shape")
            if pool._x_shape != (N, F, Ho, Wo):
                raise RuntimeError(f"{self.name}.backward_maxpool2x2: {pool.name} did not pool "
                                   f"this layer's last output (it holds {pool._x_shape})")
            dout = pool._dout(dout).reshape((N, F) + pool._out_hw)     # checked by the pool
            argmax = pool._argmax.reshape(dout.shape)
        if not self._direct and self._sparse_pays(dout, Ho, Wo, N * F * P):
            dx = self._backward_sparse(dout, argmax, pool is not None, input_grad, Wo)
            if dx is not False:
                return dx
        if self._direct:
            Hp, Wp = self._xp.shape[2:]
            gy = self._buffer("_gy", (F, Ho * Wp), dt)
            xs = self._buffer("_xs", (N, C, 2, Hp * Wp - 2), dt)
            run_kernel(conv_direct.weight_grad, self._xp, dout, argmax, pool is not None, xs, gy,
                       self.grads["W"], self.grads["b"], size=N * F * P)
            if not input_grad:
                return None
        d2 = self._buffer("_d2", (F, N * P), dt)
        if pool is None:
            run_kernel(rows_from_nchw, dout.reshape(N, F, P), d2)
        else:
            run_kernel(rows_from_maxpool2x2, dout, argmax, Ho, Wo, d2)
        if not self._direct:
            np.sum(d2, axis=1, out=self.grads["b"])
            if self._cols_whole:
                np.matmul(d2, self._cols.T, out=self.grads["W"].reshape(F, -1))
                if not input_grad:
                    return None
        return self._backward_chunks(d2, input_grad, Ho, Wo)

    def _backward_chunks(self, d2, input_grad, Ho, Wo):
        """The GEMM backward from ``d2 = dY`` (F, N*Ho*Wo), chunk by chunk
        (:meth:`chunk_size`): ``dW = sum over chunks of dY_chunk @
        cols_chunk.T`` (im2col path, when the forward's columns are not all
        still held) and ``dx = col2im(Wm.T @ dY_chunk)`` (when
        ``input_grad``), each chunk's column matrix used while in cache.
        Returns dx or None."""
        N, C = self._x_shape[:2]
        F, P, dt = self.out_channels, Ho * Wo, self.dtype
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        K = C * kh * kw
        Wm = self.params["W"].reshape(F, -1)
        need_dw = not self._direct and not self._cols_whole
        dx = np.empty(self._x_shape, dt) if input_grad else None
        if need_dw:
            chunks = self._chunks(self._x, Ho, Wo)
            dw = self.grads["W"].reshape(F, K)
            part = self._buffer("_dw_part", (F, K), dt)
        else:
            chunks = ((n0, n1, tail, None) for n0, n1, tail in self._chunk_bounds(N, Ho, Wo))
        for n0, n1, tail, cols in chunks:
            d2c = d2[:, n0 * P:n1 * P]
            if need_dw:
                np.matmul(d2c, cols.T, out=dw if n0 == 0 else part)
                if n0:
                    dw += part
            if input_grad:
                dcols = self._buffer("_dcols" + tail, (K, (n1 - n0) * P), dt)
                np.matmul(Wm.T, d2c, out=dcols)
                run_kernel(col2im, dcols, kh, kw, sh, sw, ph, pw, Ho, Wo, dx[n0:n1])
        return dx

    def _sparse_pays(self, dout, Ho, Wo, size):
        """Whether at most ``sparse_max_density`` of the output gradient's
        ``size`` entries are non-zero (``dout``: the full gradient, or the
        pooled one, which has the same non-zero count)."""
        if self.sparse_max_density <= 0 or size == 0 or max(Ho, Wo) >= 2 ** 15:
            return False                  # (positions are stored as oh << 16 | ow in int32)
        return run_kernel(conv_sparse.count_nonzero, dout, size=dout.size) <= self.sparse_max_density * size

    def _backward_sparse(self, dout, argmax, pooled, input_grad, Wo):
        """The backward of :mod:`minicnn.kernels.conv_sparse`: dW, db and dx
        from the non-zero entries of the output gradient only.  ``dout`` is
        the full gradient (N, F, Ho, Wo), or with ``pooled`` the pooled one
        and ``argmax`` its winners.  Returns dx (None without
        ``input_grad``), or False, computing nothing, when the input or the
        weights hold a non-finite value (the dense path then keeps the
        NaNs that zero times infinity makes)."""
        N, C, H, W = self._x_shape
        F = self.out_channels
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self.padding
        dt = self.dtype
        Wt = self.params["W"]
        if not np.isfinite(Wt).all():
            return False
        xt = self._buffer("_xt", (N, H + 2 * ph, (W + 2 * pw) * C), dt)
        finite = self._buffer("_xt_finite", (N,), np.bool_)
        run_kernel(conv_sparse.pad_channels_last, self._x, *float_bits(self._x), ph, pw, xt, finite)
        if not finite.all():
            return False
        cap = dout.shape[2] * dout.shape[3]
        pos = self._buffer("_nz_pos", (F, N, cap), np.int32)
        val = self._buffer("_nz_val", (F, N, cap), dt)
        cnt = self._buffer("_nz_cnt", (F, N), np.int64)
        if pooled:
            run_kernel(conv_sparse.nonzeros_from_maxpool2x2, dout, argmax, Wo, pos, val, cnt)
        else:
            run_kernel(conv_sparse.nonzeros_from_nchw, dout.reshape(N, F, cap), Wo, pos, val, cnt)
        dwt = self._buffer("_dwt", (F, kh, kw * C), dt)
        run_kernel(conv_sparse.sparse_weight_grad, pos, val, cnt, xt, kh, kw, sh, sw, dwt,
                   self.grads["b"], size=dout.size)
        self.grads["W"][...] = dwt.reshape(F, kh, kw, C).transpose(0, 3, 1, 2)
        if not input_grad:
            return None
        wt = np.ascontiguousarray(Wt.transpose(0, 2, 3, 1)).reshape(F, kh, kw * C)
        dxt = self._buffer("_dxt", xt.shape, dt)
        dx = np.empty(self._x_shape, dt)
        run_kernel(conv_sparse.sparse_input_grad, pos, val, cnt, wt, kh, kw, sh, sw, ph, pw, dxt, dx,
                   size=dout.size)
        return dx
