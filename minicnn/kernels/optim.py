"""The Adam update as one pass over each parameter.

Written as numpy expressions, one Adam step makes about ten passes over
memory (``m *= b1``, ``(1 - b1) * g``, ``m += ...``, ``g * g``, ...), each
allocating a temporary; for the default model's 421,642 parameters that is
most of the optimiser's time.  This kernel does the same float arithmetic,
element by element, in one pass.

Per element, in the parameter's dtype (every constant is rounded to that
dtype first, as numpy does when a Python float meets a float32 array)::

    m = m * b1;   m = m + (1 - b1) * g
    v = v * b2;   v = v + (1 - b2) * (g * g)
    p = p - (step * m) / (sqrt(v / bc2) + eps)

with ``step = lr / (1 - b1**t)`` and ``bc2 = 1 - b2**t``.  Each operation
is rounded on its own (no fused multiply-add, no reordering), so the
result equals the numpy expressions bit for bit.
"""
import numpy as np
from numba import njit, prange


def _adam_update(p, g, m, v, b1, c1, b2, c2, step, bc2, eps):
    """Update ``p``, ``m`` and ``v`` in place; all arrays 1-D, the same
    length and dtype; the scalars already in that dtype.  Parallel
    contract: prange over elements, each independent."""
    for i in prange(p.shape[0]):
        gi = g[i]
        mi = m[i] * b1
        mi = mi + c1 * gi
        m[i] = mi
        vi = v[i] * b2
        vi = vi + c2 * (gi * gi)
        v[i] = vi
        p[i] = p[i] - (step * mi) / (np.sqrt(vi / bc2) + eps)


adam_update = njit(parallel=True, cache=True)(_adam_update)
