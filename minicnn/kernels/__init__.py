"""Pure Numba kernels: arrays and ints in, arrays out; no classes.

Each kernel is written as a plain Python function ``_name`` (the readable
reference, importable and steppable with ``NUMBA_DISABLE_JIT=1``) and
compiled by name: ``name = njit(parallel=True, cache=True)(_name)``.

Indices read from arrays.  An int64 index may be negative as far as Numba
knows, so each access ``a[k]`` gets a wraparound (``k < 0``: add the
length), a compare and a select per element.  Where the index is known to
be in range (an argmax, a table built by the kernel, indices the forward
pass checked) the gathers and scatters index with ``np.uint64(k)``, which
has no such check: the same cells, 5-13 % faster on the backward passes
that do it (benchmarks/README.md).  Behind a test such as ``if k >= 0:``
LLVM drops the check itself, and the cast gains nothing.
"""
