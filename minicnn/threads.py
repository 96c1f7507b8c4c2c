"""Thread configuration: idle OpenMP threads spin briefly, then sleep.

minicnn runs two kinds of parallel code: Numba's ``prange`` kernels (an
OpenMP pool, ``NUMBA_NUM_THREADS`` threads) and numpy's BLAS matrix
products (OpenBLAS's own pool).  By default the OpenMP threads spin for a
while after every kernel, so on a 2-core machine the BLAS call that comes
next competes with them for the cores.  Setting ``OMP_WAIT_POLICY=PASSIVE``
removes that fight.  Measured on this project's first machine (a 2-core AMD
EPYC VM), 2026-11-23, idle, one training step at batch 64 (median of 150):

    configuration                         lenet      default model
    OpenMP default wait, BLAS 2 threads   39.9 ms    95.0 ms
    OMP_WAIT_POLICY=PASSIVE, BLAS 2       10.5 ms    50.0 ms   <- minicnn's policy
    PASSIVE, OPENBLAS_NUM_THREADS=1       10.0 ms    60.9 ms
    NUMBA_NUM_THREADS=1                   10.5 ms    62.5 ms

(On a machine already loaded by other processes, ``OPENBLAS_NUM_THREADS=1``
helps further; see benchmarks/README.md.)  The variable must be set before
the OpenMP runtime starts, so :func:`configure` runs when minicnn is
imported.  An ``OMP_WAIT_POLICY`` the user set always wins; numpy's BLAS
and ``NUMBA_NUM_THREADS`` are left as the user has them.

OpenBLAS's worker threads also busy-wait after every matrix product, and
a training step alternates products with Numba kernels many times, so
:func:`configure` also sets ``OPENBLAS_THREAD_TIMEOUT=4`` (the shortest
spin OpenBLAS allows, 2**4 cycles) unless the user set it.  Measured on
the same machine, idle, 2026-11-23, one training step at batch 64 (five
medians of 100 steps each, two runs of each, alternated):

    OPENBLAS_THREAD_TIMEOUT               lenet          default model
    OpenBLAS's default                    4.0-4.2 ms     24.0-26.8 ms
    4 (what minicnn sets)                 3.2-3.5 ms     20.5-22.3 ms *

    * two of the ten medians were 28.5 and 28.8 ms, at the start of one run

OpenBLAS reads it once, when numpy loads it: it takes effect when
minicnn is imported before numpy (``python -m minicnn``, the ``minicnn``
command, ``python -m benchmarks``); a program that imports numpy first
can set the variable itself.

Sleeping at once has its own price: waking a sleeping OpenMP thread is a
futex call, and on a virtual machine each costs tens of microseconds.
On the 2-core Intel Xeon VM with AVX-512 (2026-11-25), a ReLU over
100,352 floats took 68-79 us on 2 threads with ``OMP_WAIT_POLICY=PASSIVE``
against 11 us on one thread, and 9 us on 2 threads whose OpenMP pool
spun first (``GOMP_SPINCOUNT=1000``).  A training step runs some 20-40
kernels, so :func:`configure` also sets ``GOMP_SPINCOUNT=10000`` (libgomp,
which Numba's ``omp`` layer uses on Linux, spins that many times before it
sleeps; it takes precedence over the wait policy), unless the user set
``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``.  Milliseconds per training
step at batch 64 on real MNIST batches, 08:30 UTC: three processes of
each setting, alternated, each giving the median of five blocks of 150
(lenet) or 40 (default model) steps:

    GOMP_SPINCOUNT                      lenet          default model
    0 (OMP_WAIT_POLICY=PASSIVE alone)   2.86-2.91      9.40-10.63
    3000                                1.80-1.92      7.93-9.04
    10000 (what minicnn sets)           1.80-1.84      7.69-9.07
    30000                               1.65-1.73      8.28-8.92
    100000                              1.70-1.72      9.78-9.99
    300000 (libgomp's default)          1.72-1.81      11.62-11.94

Longer spins start to take the cores from OpenBLAS's threads in the
default model's matrix products.  (On the earlier 2-core AMD EPYC VM,
spins of 300-10000 made no difference its noise let us see, and 100000
was slower; benchmarks/README.md.)
"""
from __future__ import annotations

import os


#: libgomp's spin count before an idle OpenMP thread sleeps (module docstring).
GOMP_SPINCOUNT = "10000"


def configure() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE``, ``GOMP_SPINCOUNT=10000`` and
    ``OPENBLAS_THREAD_TIMEOUT=4``.  A value the user set always wins, and a
    user who set either OpenMP variable gets no spin count from us (it
    would override their wait policy)."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


# Waking the thread pool costs tens of microseconds on an idle machine and
# milliseconds when the cores are busy; below this many elements a kernel
# runs on the calling thread alone (same code, same result bit for bit).
PARALLEL_MIN_SIZE = 1 << 15


def run_kernel(kernel, *args, size: int | None = None):
    """Call a ``prange`` kernel; on the calling thread alone when the work
    touches fewer than :data:`PARALLEL_MIN_SIZE` elements.  ``size``
    defaults to the larger of the first and last arguments' sizes (the
    kernels take their main input first and their output last)."""
    if size is None:
        size = max(args[0].size, args[-1].size)
    if size >= PARALLEL_MIN_SIZE:
        return kernel(*args)
    import numba  # local: keep ``import minicnn.threads`` free of numba

    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        return kernel(*args)
    finally:
        numba.set_num_threads(threads)
