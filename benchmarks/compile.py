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

The child prints a JSON line with its own split (import, first step), the
number of cache files and whether SciPy got imported; the parent records the
wall time from spawn to exit.  The child's import time runs from just before
``benchmarks/__init__.py`` imports minicnn (``benchmarks.IMPORT_STARTED``) to
the end of its own imports; the wall time adds the interpreter's start-up and
exit.

warm, SciPy hidden: with SciPy installed, Numba imports ``scipy.linalg`` when
it loads its first kernel (``numba.np.arraymath`` looks for SciPy's BLAS),
inside the first step: 192 ms of ``python -X importtime`` on the 2-core AMD
EPYC VM (2026-11-25).  A fresh ``pip install minicnn`` does not bring SciPy, so
when it is installed each warm run of ``default`` is followed by one with
``import scipy`` made to fail (:data:`_HIDE_SCIPY`), on the same cache.  The
target is judged on the plain warm runs; the other row says how much of them
is that import.
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
    print(json.dumps({"import_s": t1 - t0, "first_step_s": t2 - t1, "numba_cache_files": files,
                      "scipy_loaded": "scipy" in sys.modules}))


_NO_SCIPY_FINDER = '''
import sys
class HideSciPy:
    """A meta-path finder that makes `import scipy` (and its submodules) fail."""
    def find_spec(self, name, path=None, target=None):
        if name == "scipy" or name.startswith("scipy."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the benchmark)", name=name)
        return None
sys.meta_path.insert(0, HideSciPy())
'''
"""Source that installs a finder making every ``import scipy...`` fail."""

_HIDE_SCIPY = _NO_SCIPY_FINDER + '''
import runpy
runpy.run_module("benchmarks.compile", run_name="__main__", alter_sys=True)
'''
"""``python -c _HIDE_SCIPY --child WORKLOAD``: the child with SciPy hidden
from every import, the finder installed before the first import
(``benchmarks``'s ``__init__`` imports minicnn and so Numba)."""


def scipy_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


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


def measure_workload(workload: str, warm_runs: int = 5, timeout=900.0, hide_scipy=False) -> dict:
    """-> ``{"cold": run, "warm": run}`` for one workload.  A run is ``{"wall",
    "returncode", "child"}`` (``"stderr"`` too if it failed); "warm" sums up
    ``warm_runs`` runs on the same cache (:func:`warm_summary`).
    ``hide_scipy``: each warm run is followed by one with SciPy hidden, on
    the same cache, summed up as ``"warm_without_scipy"``."""
    from benchmarks.harness import clean_env, run_child

    if warm_runs < 1:
        raise ValueError(f"warm_runs must be >= 1, got {warm_runs}")
    tmp = tempfile.mkdtemp(prefix="minicnn-numba-cache-")
    try:
        env = clean_env({"NUMBA_CACHE_DIR": tmp}, drop=())   # inherits thread variables
        plain = [sys.executable, "-m", "benchmarks.compile", "--child", workload]
        hidden = [sys.executable, "-c", _HIDE_SCIPY, "--child", workload]

        def once(cmd=plain):
            r = run_child(cmd, env=env, timeout=timeout)
            out = {"wall": r.wall, "returncode": r.returncode, "child": r.json()}
            if r.returncode != 0:
                out["stderr"] = r.stderr[-2000:]
            return out

        res = {"cold": once()}
        if not hide_scipy:
            res["warm"] = warm_summary([once() for _ in range(warm_runs)])
            return res
        pairs = [(once(), once(hidden)) for _ in range(warm_runs)]   # alternated: a slow spell hits both
        res["warm"] = warm_summary([a for a, _ in pairs])
        res["warm_without_scipy"] = warm_summary([b for _, b in pairs])
        return res
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(ctx) -> dict:
    from benchmarks.harness import log

    small = ctx.quick or ctx.tiny
    workloads = ["default"] if small else ["default", "all"]
    warm_runs = 3 if small else 5
    out = {}
    hide = scipy_installed()
    for w in workloads:
        also = w == "default" and hide
        log(f"[compile] {w}: cold, then warm x{warm_runs}"
            + (", each followed by one with SciPy hidden" if also else ""))
        out[w] = measure_workload(w, warm_runs, hide_scipy=also)
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=["default", "all"], required=True)
    child(p.parse_args().child)
