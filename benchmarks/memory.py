"""Peak RSS of ``minicnn train`` (the CLI, default model) for a limited
number of steps: ``--epochs 1 --limit-train 64*steps``.

The CLI loads the training and test sets, trains, then evaluates the test
set (``minicnn.train.evaluate``, batch 1000), so the figure includes all
three.  To say which part sets the peak, the full run adds children that
each do one part (``python -m benchmarks.memory --child PART``)::

    data      load the training (limited) and test sets
    train     data + the same training steps (Trainer.fit, no evaluation)
    evaluate  data + evaluate(test set) at batch 1000 (the CLI's) and at 256

Peak RSS is each child's own ``ru_maxrss`` (``os.wait4`` in a small
launcher process, see ``harness.run_child`` for why not straight from here).  When MNIST is not found, synthetic IDX files of
MNIST's full size are written to a temporary folder first (the report says so).
"""
from __future__ import annotations

import os
import shutil
import struct
import sys
import tempfile

import numpy as np


def write_idx(path, array: np.ndarray) -> None:
    """A raw (not gzipped) IDX file of uint8 values: magic, dims, payload."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">I", 0x0800 | a.ndim))
        f.write(struct.pack(f">{a.ndim}I", *a.shape))
        f.write(a.tobytes())


def synthetic_mnist(folder, n_train=60_000, n_test=10_000) -> str:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte"), rng.integers(0, 256, (n, 28, 28)))
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte"), rng.integers(0, 10, n))
    return folder


def train_command(model, steps, data_dir, batch=64):
    """The CLI with the model's own recipe (batch 64), one epoch of ``steps`` batches."""
    return [sys.executable, "-m", "minicnn", "train", "--model", model, "--epochs", "1",
            "--limit-train", str(steps * batch), "--no-progress",
            "--data-dir", str(data_dir)]


def child(part, data_dir, steps, model="default", eval_batch=1000):
    from minicnn.data import load_mnist
    from minicnn.models import build_model
    from minicnn.optim import Adam
    from minicnn.train import Trainer, evaluate

    x, y = load_mnist(data_dir, "train", limit=steps * 64)
    xt, yt = load_mnist(data_dir, "test")
    m = build_model(model)
    if part == "train":
        Trainer(m, Adam(m.parameters(), lr=1e-3), batch_size=64, progress=False).fit(x, y, 1)
    elif part == "evaluate":
        evaluate(m, xt, yt, batch_size=eval_batch)


def run(ctx) -> dict:
    from benchmarks.harness import clean_env, log, run_child
    from minicnn.data import MNISTNotFoundError, find_data_dir

    tmp = None
    try:
        if ctx.tiny:
            tmp = tempfile.mkdtemp(prefix="minicnn-bench-mnist-")
            folder, source = synthetic_mnist(tmp, 256, 100), "synthetic (tiny test run)"
        else:
            try:
                folder, source = find_data_dir(ctx.data_dir), "real MNIST"
            except MNISTNotFoundError:
                tmp = tempfile.mkdtemp(prefix="minicnn-bench-mnist-")
                folder, source = synthetic_mnist(tmp), "synthetic MNIST-size IDX files (MNIST not found)"
        steps = 2 if ctx.tiny else 50 if ctx.quick else 200
        models = ["default"] if (ctx.quick or ctx.tiny) else ["default", "lenet"]
        out = {}
        for model in models:
            cmd = train_command(model, steps, folder)
            log(f"[memory] {' '.join(cmd[1:])}")
            r = run_child(cmd, env=clean_env(drop=()), timeout=1800, rss=True)
            out[model] = {"max_rss": r.max_rss, "wall": r.wall, "returncode": r.returncode,
                          "steps": steps, "data": source,
                          "command": "python " + " ".join(cmd[1:-2]) + " --data-dir DIR"}
            if r.returncode != 0:
                out[model]["stderr"] = r.stderr[-2000:]
        if not (ctx.tiny or ctx.quick):
            parts = [("data", []), ("train", []), ("evaluate", ["--eval-batch", "1000"]),
                     ("evaluate", ["--eval-batch", "256"])]
            for part, extra in parts:
                cmd = [sys.executable, "-m", "benchmarks.memory", "--child", part, "--data-dir", str(folder),
                       "--steps", str(steps)] + extra
                label = f"default: {part}" + (f" (batch {extra[1]})" if extra else "")
                log(f"[memory] {label}")
                r = run_child(cmd, env=clean_env(drop=()), timeout=1800, rss=True)
                out[label] = {"max_rss": r.max_rss, "wall": r.wall, "returncode": r.returncode, "steps": steps,
                              "data": source, "command": "python -m benchmarks.memory --child "
                                                         + " ".join([part] + extra)}
        return out
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--child", choices=["data", "train", "evaluate"], required=True)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--eval-batch", type=int, default=1000)
    a = p.parse_args()
    child(a.child, a.data_dir, a.steps, eval_batch=a.eval_batch)
