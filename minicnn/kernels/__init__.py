"""Pure Numba kernels: arrays and ints in, arrays out; no classes.

Each kernel is written as a plain Python function ``_name`` (the readable
reference, importable and steppable with ``NUMBA_DISABLE_JIT=1``) and
compiled by name: ``name = njit(parallel=True, cache=True)(_name)``.

Indices read from arrays.  An int64 index may be negative as far as Numba
knows, so each access ``a[k]`` gets a wraparound (``k < 0``: add the
length), a compare and a select per element; so does an index built from
one, such as a loop from a bin's first cell.  Where the index is known to
be in range (an argmax, a bin or table built by the kernel, indices the
forward pass checked) the kernels index with ``np.uint64(k)``, which has
no such check: the same cells, 5-19 % faster where adopted
(benchmarks/README.md).  Behind a test such as ``if k >= 0:`` LLVM drops
the check itself, and the cast gains nothing.  (Only the index is cast:
Numba types uint64 mixed with int64 arithmetic as float64.)

Hidden parallel regions.  Under ``parallel=True`` Numba turns ``np.zeros``,
``np.ones``, ``np.arange``, ``np.linspace`` and ``np.random`` calls (and
whole-array expressions) into parallel loops of their own, outside the
prange: each is one more launch of the thread pool, about 18 µs on the
2-core VM, the cost of an empty prange kernel.  So the kernels allocate
scratch with ``np.empty`` and fill what must be filled inside their prange
loop (``tests/test_benchmarks.py`` checks the source).  The AvgPool2D
3x3/2 forward had four such allocations: 58-100 µs of its time, old and
new timed in alternation (benchmarks/README.md).
"""
