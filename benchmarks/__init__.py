"""minicnn's benchmark suite: ``python -m benchmarks [--quick] [--only ...]``.

Every figure is measured beside, in the same run, the bandwidth roof (a
memory copy of the same number of bytes), a naive numpy reference and
PyTorch CPU when ``import torch`` works.  See ``benchmarks/README.md``.

Modules (one concept each)::

    harness.py     timing (warm-up, inner loops, median/min), subprocess wall
                   time and peak RSS, the environment report, atomic writes
    references.py  naive numpy references (pooling, im2col conv, a numpy CNN)
    pooling.py     every pooling layer: forward, backward, forward+backward
    conv.py        Conv2D forward and backward
    training.py    one training step and one epoch, LeNet and the default model
    compile.py     Numba compile time, cold (empty cache) and warm (cache hit)
    memory.py      peak RSS of ``minicnn train``
    threads.py     the thread-oversubscription study (OpenBLAS x Numba/OpenMP)
    experiments.py candidate kernel changes, measured against the current ones
    report.py      ratios, targets (pass/fail), Markdown and JSON writers
"""

import os as _os
import time as _time

SECTIONS = ("pooling", "conv", "training", "compile", "memory", "threads", "experiments")
"""The sections of a run, in the order they run (``--only`` picks some)."""

RESULTS = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "results")
"""Where reports are written by default (``--out``) and read by
``python -m benchmarks.history``."""

IMPORT_STARTED = _time.perf_counter()
"""``time.perf_counter()`` just before ``import minicnn`` below: the warm-start
child (compile.py) counts its import time from here, as ``python -m
benchmarks.compile`` has imported minicnn by the time the child runs."""

# minicnn first, before anything imports numpy: it sets the thread variables
# OpenBLAS reads when numpy loads it (minicnn/threads.py), as `minicnn train` does.
import minicnn  # noqa: E402,F401
