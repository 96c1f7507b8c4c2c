"""Window geometry shared by the window-pooling kernels.

Conventions of every kernel in ``max_pooling``, ``avg_pooling``,
``lp_pooling`` and ``mixed_pooling`` (written once, here):

Every kernel works on *planes*: the layer reshapes an NCHW array to
``(P, H, W)`` with ``P = N*C`` (C-contiguous) and allocates the outputs.

Geometry::

    window (oh, ow) reads rows  oh*sh - ph + i*dh,  i = 0 .. kh-1
                          cols  ow*sw - pw + j*dw,  j = 0 .. kw-1
    H_out, W_out = minicnn.layers.geometry.output_size(...)   (PyTorch's formula)

The kernels take ``H_out, W_out`` from the shape of the output array the
caller passes in.  Cells outside the input are padding: they are never
read (max treats them as -inf, average counts them only in the divisor).

Parallel contract (all kernels): ``prange`` over the P planes; iteration
``p`` reads plane ``p`` of its inputs and writes only plane ``p`` of its
outputs.  Overlapping windows (e.g. 3x3 stride 2) therefore accumulate
their gradients serially inside one iteration and cannot race.  Outputs are
fully overwritten (backward kernels zero their plane of ``dx`` first), so
buffers can be reused across steps.  (One variation of the iteration
space: kernels that need scratch arrays -- the 3x3 stride-2 ones -- run
prange over *runs* of consecutive planes, :func:`_plane_run`, so that each
run owns one row of scratch, allocated once before the loop; a run still
writes only its own planes.)

Each kernel is a plain function ``_name`` (the readable reference; with
``NUMBA_DISABLE_JIT=1`` it runs as Python and ``prange`` is ``range``),
compiled by name at the bottom of its module:
``name = njit(parallel=True, cache=True)(_name)``.
(To get a serial build, e.g. in a test, use ``njit(_name)`` *without*
``cache=True``: Numba's cache index does not record the ``parallel`` flag,
so a second cached build of the same function would share its entries.)
All kernels accept float32 and float64 arrays; index arrays are int64.
Average pooling computes in the planes' dtype, as PyTorch does; LP powers
and sums are float64 (the LP backward's share sums, like average pooling's,
are in the planes' dtype).  The 2x2 kernels (kernel 2, stride 2, no
padding, every window full) and 3x3 kernels (any stride, padding <= 1) are
the common cases written out tap by tap: the general kernels' tap loops
run only 2 or 3 times per window and cost more than the arithmetic.  They
give the same results as the general kernels (bit for bit, except that the
2x2 backward kernels may keep a -0.0 where the general ones give 0.0).
Helpers called per element are ``inline='always'``: as calls they cost
more than the work they do.
"""
import numpy as np
from numba import njit


@njit(cache=True)
def _tap_ranges(n_out, k, s, pad, d, L):
    """Per window ``o < n_out`` of one axis, the taps inside the input.

    Tap ``t`` of window ``o`` sits at ``o*s - pad + t*d``; the taps inside
    ``[0, L)`` are ``t0[o] <= t < t1[o]`` (none when ``t0[o] >= t1[o]``).
    Computed once per call, so the hot loops do no division.
    """
    t0 = np.empty(n_out, np.int64)
    t1 = np.empty(n_out, np.int64)
    for o in range(n_out):
        start = o * s - pad
        t0[o] = 0 if start >= 0 else (d - 1 - start) // d   # first t with start + t*d >= 0
        t1[o] = min(k, (L - start + d - 1) // d)          # first t with start + t*d >= L
    return t0, t1


@njit(cache=True)
def _avg_extents(n_out, k, s, pad, L):
    """Per window ``o < n_out`` of one axis, PyTorch's average-pooling extent.

    Window ``o`` spans ``[start, end)`` with ``start = o*s - pad`` and
    ``end = min(start + k, L + pad)`` (clamped to the padded input).
    Returns arrays ``count = end - start`` (used by count_include_pad) and
    ``[lo, hi) = [max(start, 0), min(end, L))``, the cells inside the input.
    """
    count = np.empty(n_out, np.int64)
    lo = np.empty(n_out, np.int64)
    hi = np.empty(n_out, np.int64)
    for o in range(n_out):
        start = o * s - pad
        end = min(start + k, L + pad)
        count[o], lo[o], hi[o] = end - start, max(start, 0), min(end, L)
    return count, lo, hi


@njit(cache=True)
def _avg_divisor(n_padded, n_inside, count_include_pad, divisor_override):
    """PyTorch's average-pooling divisor: ``divisor_override`` if not 0 (0
    stands for None; a negative override is allowed, as in PyTorch), else
    the window's cells in the padded input if ``count_include_pad``, else
    its cells inside the input."""
    if divisor_override != 0:
        return divisor_override
    return n_padded if count_include_pad else n_inside


@njit(cache=True)
def _inner_windows(n_out, k, s, pad, L):
    """``(o_a, o_b)``: the windows ``o_a <= o < o_b`` of one axis that lie
    wholly inside ``[0, L)`` (start ``o*s - pad >= 0``, end ``<= L``).
    They form one run; ``o_a == o_b`` if there are none."""
    o_a = 0
    while o_a < n_out and o_a * s - pad < 0:
        o_a += 1
    o_b = o_a
    while o_b < n_out and o_b * s - pad + k <= L:
        o_b += 1
    return o_a, o_b


@njit(cache=True, inline='always')
def _zero_uncovered_2x2(dx, p, H_out, W_out):
    """Zero the cells of plane ``p`` of ``dx`` (P, H, W) that no window of a
    2x2 stride-2 pooling covers: the last column and row when W or H is odd
    (columns ``>= 2*W_out``, rows ``>= 2*H_out``).  The 2x2 backward kernels
    write every covered cell once and call this for the rest."""
    H, W = dx.shape[1], dx.shape[2]
    for h in range(2 * H_out):
        for w in range(2 * W_out, W):
            dx[p, h, w] = 0.0
    for h in range(2 * H_out, H):
        for w in range(W):
            dx[p, h, w] = 0.0


@njit(cache=True, inline='always')
def _add9(dx, p, h, w, g):
    """``dx[p, h:h+3, w:w+3] += g``, cell by cell, row-major: a 3x3
    window's share added to its nine cells (the backward kernels' scatter)."""
    dx[p, h, w] += g
    dx[p, h, w + 1] += g
    dx[p, h, w + 2] += g
    dx[p, h + 1, w] += g
    dx[p, h + 1, w + 1] += g
    dx[p, h + 1, w + 2] += g
    dx[p, h + 2, w] += g
    dx[p, h + 2, w + 1] += g
    dx[p, h + 2, w + 2] += g


@njit(cache=True)
def _window_rows_3x3s2(H, H_out, ph, row_len):
    """``lohi`` (H, 2) int64: for each input row r, the offsets ``oh *
    row_len`` in a scratch of window rows of the (at most two) windows of a
    3x3 stride-2 pooling with row padding ``ph`` that hold row r, in order
    (rows ``2*oh - ph .. 2*oh - ph + 2``); a missing one is ``H_out *
    row_len``, the scratch's extra row.  Used by the 3x3/2 backward kernels
    in gather form."""
    lohi = np.empty((H, 2), np.int64)
    for r in range(H):
        lo = hi = H_out
        for oh in range(H_out):
            if 2 * oh - ph <= r <= 2 * oh - ph + 2:
                if lo == H_out:
                    lo = oh
                else:
                    hi = oh
        lohi[r, 0], lohi[r, 1] = lo * row_len, hi * row_len
    return lohi


PLANE_RUNS = 64
"""How many runs of consecutive planes a kernel with per-run scratch cuts
its P planes into (fewer if P < 64): enough runs to balance any thread
count Numba is given, few enough that the scratch rows stay small."""


@njit(cache=True, inline='always')
def _plane_run(c, n_runs, P):
    """Planes ``[lo, hi)`` of run ``c`` of ``n_runs`` (``n_runs = min(P,
    PLANE_RUNS)``): consecutive runs that cover ``0 .. P-1`` once, their
    sizes differing by at most one."""
    return c * P // n_runs, (c + 1) * P // n_runs


@njit(cache=True)
def _output_cells(H_out, W_out, row_len, step, first):
    """``src`` (H_out*W_out,) int64: where output cell ``m = oh*W_out + j``
    sits in a flat scratch of rows ``row_len`` long whose row ``step*oh +
    first`` holds output row oh: ``src[m] = (step*oh + first)*row_len + j``.
    The 3x3 stride-2 kernels keep one value per (row, output column) in such
    a scratch and move every output with one loop over ``src`` (loops over
    output rows of 7-14 cells do not vectorise the work around them)."""
    src = np.empty(H_out * W_out, np.int64)
    for oh in range(H_out):
        for j in range(W_out):
            src[oh * W_out + j] = (step * oh + first) * row_len + j
    return src

