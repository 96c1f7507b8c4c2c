"""Keep freed memory in the process between training steps (glibc only).

A training step allocates its activations and gradients afresh (a few MB
each for the default model) and frees them when the next step replaces
them.  glibc's ``malloc`` serves blocks above ``M_MMAP_THRESHOLD`` with
``mmap`` and gives the top of its heap back to the kernel once more than
``M_TRIM_THRESHOLD`` bytes there are free.  Either way the memory comes
back as fresh pages, and the first write to each 4 KiB page is a page fault
in which the kernel also zeroes the page.  Measured on this project's
2-core VM, 2026-11-23, one training step of the default model at batch 64
(median of 200 steps, after 20 warm-up steps, alternating processes):

    malloc settings                             page faults/step  step
    glibc's defaults                            2943 (1 run: 2688)  26-35 ms
    M_MMAP_THRESHOLD 32 MiB, M_TRIM 64 MiB      0.1                 21-22 ms
    M_MMAP_THRESHOLD 32 MiB, M_TRIM 128 MiB     0.1                 19-25 ms  <- minicnn
    M_MMAP_THRESHOLD 32 MiB, M_TRIM 256 MiB     0.1                 20-25 ms

Either threshold alone does not help (setting one switches off glibc's
own adjustment of the other): 1870 and 8348 faults per step.  The lenet
step (smaller arrays) had no faults either way.

:func:`retain_freed_memory` sets both thresholds with ``mallopt``; it runs
when minicnn is imported.  The cost is that up to ``M_TRIM_THRESHOLD``
bytes of freed memory stay resident instead of going back to the system
(the peak resident memory of a run is unchanged: it is reached during a
step anyway).  It does nothing on a C library other than glibc, or when
the user has tuned malloc themselves (any ``MALLOC_*`` variable or a
``glibc.malloc`` tunable in ``GLIBC_TUNABLES``): then their settings win.
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024 * 1024    # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 128 * 1024 * 1024


def _user_tuned_malloc(environ) -> bool:
    return (any(k.startswith("MALLOC_") for k in environ)
            or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""))


def retain_freed_memory(environ=None) -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring).
    Returns whether the settings were applied."""
    environ = os.environ if environ is None else environ
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if _user_tuned_malloc(environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and ok
