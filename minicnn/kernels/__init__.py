"""Pure Numba kernels: arrays and ints in, arrays out; no classes.

Each kernel is written as a plain Python function ``_name`` (the readable
reference, importable and steppable with ``NUMBA_DISABLE_JIT=1``) and
compiled by name: ``name = njit(parallel=True, cache=True)(_name)``.
"""
