"""The thread-oversubscription study: OpenBLAS (numpy's GEMM) and Numba's
OpenMP pool in one process.

Observed: a training step of a small conv net was ~20x slower under CPU
contention with both pools at 2 threads than with NUMBA_NUM_THREADS=1
OPENBLAS_NUM_THREADS=1.  Suspected cause: both pools spin-wait for work after
each parallel region (libgomp spins before sleeping, OpenBLAS worker threads
busy-poll with sched_yield for a while), so on 2 cores the idle pool steals
the cores the busy one needs, and a parallel region waits for its slowest,
descheduled thread.

Each configuration runs in its own subprocess (thread pools are sized at
start-up) from an environment without any thread variable, then adds its
own.  The child imports minicnn before numpy (``benchmarks/__init__.py``),
so ``default`` is what ``minicnn train`` gets: ``OMP_WAIT_POLICY=PASSIVE``,
``GOMP_SPINCOUNT=10000`` and ``OPENBLAS_THREAD_TIMEOUT=4``
(minicnn/threads.py); every other row changes one thing: OpenMP threads
that sleep at once (``PASSIVE`` set by the user, so no spin count) or
spin (``ACTIVE``), OpenBLAS threads that spin for 2**28 cycles after each
product, or one thread in a pool.  The child (``python -m benchmarks.threads --child MODEL``) warms up,
times single training steps and prints a JSON line.  Scenarios: ``quiet``
(whatever else the machine is doing) and ``contended`` (one busy-loop
process per CPU, started and ended by us).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

CONFIGS = [   # "default" = minicnn's own settings; every other row changes one thing
    ("default", {}),
    ("OMP_WAIT_POLICY=PASSIVE", {"OMP_WAIT_POLICY": "PASSIVE"}),
    ("OMP_WAIT_POLICY=ACTIVE", {"OMP_WAIT_POLICY": "ACTIVE"}),
    ("OPENBLAS_THREAD_TIMEOUT=28", {"OPENBLAS_THREAD_TIMEOUT": "28"}),
    ("NUMBA_NUM_THREADS=1", {"NUMBA_NUM_THREADS": "1"}),
    ("OPENBLAS_NUM_THREADS=1", {"OPENBLAS_NUM_THREADS": "1"}),
    ("NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1", {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}),
]


def child(model: str, steps: int, warmup: int, max_seconds: float = 1e9) -> None:
    import numba
    import numpy as np

    from benchmarks.harness import blas_info, median
    from benchmarks.training import minicnn_trainer

    tr = minicnn_trainer(model)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((64, 1, 28, 28)).astype(np.float32)
    yb = rng.integers(0, 10, 64)
    for _ in range(warmup):
        tr.train_step(xb, yb, "warm-up")
    times = []
    start = time.perf_counter()
    while len(times) < steps and (len(times) < 3 or time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        tr.train_step(xb, yb, "timed")
        times.append(time.perf_counter() - t0)
    print(json.dumps({"median": median(times), "min": min(times), "steps": len(times), "times": times,
                      "numba_threads": numba.get_num_threads(), "blas_threads": blas_info().get("threads"),
                      "threading_layer": numba.threading_layer()}))


def _geomean(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def recommend(runs, tolerance=1.10) -> tuple[str | None, str]:
    """Pick a thread configuration from the measured runs.

    Score = geometric mean over models of (step time / default's step time),
    per scenario.  Rule: among the configurations within ``tolerance`` of
    the best *quiet* score (a quiet machine is where minicnn should be
    fastest), take the one with the best *contended* score (if contention was
    measured).  Returns (config, explanation with the numbers)."""
    scen = sorted({r["scenario"] for r in runs})
    by = {}
    for r in runs:
        if r.get("median") and r.get("baseline"):
            by.setdefault(r["config"], {}).setdefault(r["scenario"], []).append(r["median"] / r["baseline"])
    scores = {cfg: {s: _geomean(v) for s, v in per.items()} for cfg, per in by.items() if set(per) == set(scen)}
    if not scores or "quiet" not in scen:
        return None, "no complete measurements"
    best_quiet = min(v["quiet"] for v in scores.values())
    ok = [c for c in scores if scores[c]["quiet"] <= tolerance * best_quiet]
    other = [s for s in scen if s != "quiet"]
    best = min(ok, key=lambda c: (max(scores[c][s] for s in other) if other else scores[c]["quiet"]))
    lines = [f"{s}: " + ", ".join(f"{c} {scores[c][s]:.2f}x" for c in scores) for s in scen]
    text = (f"`{best}`. Rule: within {tolerance:.2f}x of the best quiet step time, the best under contention. "
            f"Step time relative to the default configuration (geometric mean over models) -- "
            + "; ".join(lines) + ".")
    return best, text


def run(ctx) -> dict:
    from benchmarks.harness import Burners, clean_env, loadavg, log, median, run_child

    models = ["lenet", "default"]
    # at most `steps` timed steps, and no more than `budget` seconds of them
    # (under contention a step can take 100x longer; at least 3 are timed).
    # Rounds: every configuration runs once per round, rounds interleaved, so
    # a burst of outside load hits all configurations alike.
    if ctx.tiny:
        steps, warm, budget, rounds = {"lenet": 2, "default": 2}, 1, 1.0, 1
    elif ctx.quick:
        steps, warm, budget, rounds = {"lenet": 30, "default": 12}, 3, 1.5, 1
    else:
        steps, warm, budget, rounds = {"lenet": 100, "default": 40}, 5, 4.0, 2
    scenarios = [("quiet", 0)]
    if ctx.contend and not ctx.tiny:
        scenarios.append(("contended", os.cpu_count() or 2))
    configs = CONFIGS[:2] if ctx.tiny else CONFIGS
    raw = []
    for scenario, burners in scenarios:
        with Burners(burners):
            for rnd in range(rounds):
                for model in models:
                    for name, extra in configs:
                        la = loadavg()
                        cmd = [sys.executable, "-m", "benchmarks.threads", "--child", model, "--steps",
                               str(steps[model]), "--warmup", str(warm), "--max-seconds", str(budget)]
                        log(f"[threads] {scenario} round {rnd + 1}/{rounds} {model} {name}")
                        r = run_child(cmd, env=clean_env(extra), timeout=900)
                        j = r.json() or {}
                        row = {"model": model, "scenario": scenario, "config": name, "round": rnd, "env": extra,
                               "loadavg": la, "wall": r.wall, "median": j.get("median"), "min": j.get("min"),
                               "steps": j.get("steps"), "numba_threads": j.get("numba_threads"),
                               "blas_threads": j.get("blas_threads"), "burners": burners}
                        if r.returncode != 0:
                            row["error"] = f"exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"
                        raw.append(row)
    runs = []
    for scenario, _ in scenarios:
        for model in models:
            base = None
            for name, extra in configs:
                rs = [r for r in raw if (r["scenario"], r["model"], r["config"]) == (scenario, model, name)]
                meds = [r["median"] for r in rs if r["median"]]
                row = {"model": model, "scenario": scenario, "config": name, "env": extra,
                       "median": median(meds) if meds else None,
                       "min": min((r["min"] for r in rs if r["min"]), default=None),
                       "steps": sum(r["steps"] or 0 for r in rs), "rounds": len(rs),
                       "loadavg": rs[0]["loadavg"] if rs else None,
                       "numba_threads": rs[0]["numba_threads"] if rs else None,
                       "blas_threads": rs[0]["blas_threads"] if rs else None}
                errors = [r["error"] for r in rs if r.get("error")]
                if errors:
                    row["error"] = errors[0]
                if name == "default":
                    base = row["median"]
                row["baseline"] = base
                runs.append(row)
    best, text = recommend(runs)
    return {"runs": runs, "raw": raw, "best": best, "recommendation": text, "rounds": rounds}


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--child", required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-seconds", type=float, default=1e9)
    a = p.parse_args()
    child(a.child, a.steps, a.warmup, a.max_seconds)
