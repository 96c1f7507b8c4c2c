"""Numba compile time, cold and warm, measured as subprocess wall time.

    cold: NUMBA_CACHE_DIR = a fresh empty temporary folder  -> every kernel compiles
    warm: the same folder again, ``warm_runs`` times        -> every kernel loads from cache;
          the median wall is the figure (a single start-up on a shared VM
          varies by a quarter from run to run), every run's wall is kept

Workloads (the child, ``python -m benchmarks.compile --child WORKLOAD``)::

    default   import minicnn, build the default model, one training step on a
              random batch of 64: the "warm start" of the targets
    all       the same, then forward+backward of every pooling layer on a small
              input (compiles every kernel minicnn has); full runs only

The child prints a JSON line with its own split (import, first step) and
the number of cache files; the parent records the wall time from spawn to exit.
The child's import time runs from just before ``benchmarks/__init__.py``
imports minicnn (``benchmarks.IMPORT_STARTED``) to the end of its own imports;
the wall time adds the interpreter's start-up and exit.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time


def _layers_workload():
    import numpy as np

    import minicnn as mc

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    pos = np.abs(x)
    layers = [(mc.MaxPool2D(2), x), (mc.MaxPool2D(3, 2, 1), x), (mc.AvgPool2D(2), x),
              (mc.AvgPool2D(3, 2, 1), x), (mc.LPPool2D(2, 2), x), (mc.MixedPool2D(2), x),
              (mc.StochasticPool2D(2, seed=0), pos), (mc.StochasticPool2D(2, seed=0).eval(), pos),
              (mc.FractionalMaxPool2D(2, output_ratio=0.5, seed=0), x),
              (mc.AdaptiveAvgPool2D(3), x), (mc.AdaptiveMaxPool2D(3), x), (mc.GlobalAvgPool2D(), x),
              (mc.GlobalMaxPool2D(), x), (mc.SpatialPyramidPool2D((1, 2)), x)]
    for layer, inp in layers:
        y = layer.forward(inp)
        layer.backward(np.ones_like(y))
    y, idx = mc.MaxPool2D(2, return_indices=True).forward(x)
    un = mc.MaxUnpool2D(2)
    un.backward(np.ones_like(un.forward(y, idx)))


def child(workload: str) -> None:
    from benchmarks import IMPORT_STARTED

    t0 = IMPORT_STARTED
    import numpy as np

    import minicnn  # noqa: F401
    from minicnn.models import build_model
    from minicnn.optim import Adam
    from minicnn.train import Trainer

    t1 = time.perf_counter()
    model = build_model("default")
    tr = Trainer(model, Adam(model.parameters(), lr=1e-3), batch_size=64, progress=False)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    yb = rng.integers(0, 10, 64)
    tr.train_step(xb, yb, "first batch")
    if workload == "all":
        _layers_workload()
    t2 = time.perf_counter()
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    files = sum(len(f) for _, _, f in os.walk(cache_dir)) if cache_dir else None
    print(json.dumps({"import_s": t1 - t0, "first_step_s": t2 - t1, "numba_cache_files": files}))


def warm_summary(runs: list[dict]) -> dict:
    """Several warm runs -> one: the run with the median wall (for an even
    count, the lower of the two middle ones), with ``"walls"``, every run's
    wall in order.  If any run failed, the first failed run's record
    (``returncode``, ``stderr``, ``child``) stands instead, still with the
    median wall, so a failure cannot hide behind the median."""
    if not runs:
        raise ValueError("warm_summary needs at least one run")
    median = sorted(runs, key=lambda r: r["wall"])[(len(runs) - 1) // 2]
    failed = [r for r in runs if r["returncode"] != 0]
    out = dict(failed[0] if failed else median)
    out["wall"] = median["wall"]
    out["walls"] = [r["wall"] for r in runs]
    return out


def measure_workload(workload: str, warm_runs: int = 5, timeout=900.0) -> dict:
    """-> ``{"cold": run, "warm": run}`` for one workload.  A run is ``{"wall",
    "returncode", "child"}`` (``"stderr"`` too if it failed); "warm" sums up
    ``warm_runs`` runs on the same cache (:func:`warm_summary`)."""
    from benchmarks.harness import clean_env, run_child

    if warm_runs < 1:
        raise ValueError(f"warm_runs must be >= 1, got {warm_runs}")
    tmp = tempfile.mkdtemp(prefix="minicnn-numba-cache-")
    try:
        env = clean_env({"NUMBA_CACHE_DIR": tmp}, drop=())   # inherits thread variables
        cmd = [sys.executable, "-m", "benchmarks.compile", "--child", workload]

        def once():
            r = run_child(cmd, env=env, timeout=timeout)
            out = {"wall": r.wall, "returncode": r.returncode, "child": r.json()}
            if r.returncode != 0:
                out["stderr"] = r.stderr[-2000:]
            return out

        cold = once()
        return {"cold": cold, "warm": warm_summary([once() for _ in range(warm_runs)])}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(ctx) -> dict:
    from benchmarks.harness import log

    small = ctx.quick or ctx.tiny
    workloads = ["default"] if small else ["default", "all"]
    warm_runs = 3 if small else 5
    out = {}
    for w in workloads:
        log(f"[compile] {w}: cold, then warm x{warm_runs}")
        out[w] = measure_workload(w, warm_runs)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=["default", "all"], required=True)
    child(p.parse_args().child)
