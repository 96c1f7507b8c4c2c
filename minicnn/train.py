"""Training and evaluation: one loop, with tqdm progress and checkpoints.

One step::

    logits = model.forward(xb);  loss = ce.forward(logits, yb)
    model.backward(ce.backward())          # grads land in each layer
    [clip the global gradient norm]        # --grad-clip
    optimizer.step();  scheduler.step()

Safety (never lose work):

* A NaN/Inf loss or gradient stops training *before* the update with a
  :class:`NonFiniteError` naming the epoch and step; the checkpoint on
  disk (the last good one) is left untouched.
* Ctrl-C is caught between steps (never half-way through an update): a
  checkpoint is written and :class:`TrainingInterrupted` says how to resume.
  A second Ctrl-C aborts at once.
* The position (epoch, step, running sums), the optimiser state and the
  stochastic layers' RNG states are saved, so a resumed run reproduces the
  uninterrupted run bit for bit.
"""
from __future__ import annotations

import contextlib
import math
import shlex
import signal
import threading
import time
from itertools import islice

import numpy as np
from tqdm.auto import tqdm

from minicnn import checkpoint
from minicnn.data import batches, num_batches
from minicnn.losses import SoftmaxCrossEntropy


class NonFiniteError(FloatingPointError):
    """Loss or gradient became NaN/Inf; the message names epoch and step."""


class TrainingInterrupted(Exception):
    """Ctrl-C during training; ``checkpoint`` is where the state was saved."""

    def __init__(self, message, checkpoint_path):
        super().__init__(message)
        self.checkpoint = checkpoint_path


def evaluate(model, x, y, batch_size: int = 256):
    """(mean loss, accuracy) of ``model`` on ``(x, y)`` in eval mode.  The
    batch is modest on purpose: it sets the peak memory of a training run."""
    was_training = model.training
    model.eval()
    ce = SoftmaxCrossEntropy()
    loss_sum, correct = 0.0, 0
    try:
        for xb, yb in batches(x, y, batch_size, shuffle=False):
            logits = model.forward(xb)
            loss_sum += ce.forward(logits, yb) * len(yb)
            correct += int((logits.argmax(axis=1) == yb).sum())
    finally:
        if was_training:
            model.train()
    n = max(len(y), 1)
    return loss_sum / n, correct / n


def predict(model, x, batch_size: int = 256) -> np.ndarray:
    """Predicted class per example, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        return np.concatenate([model.forward(x[i:i + batch_size]).argmax(axis=1)
                               for i in range(0, len(x), batch_size)])
    finally:
        if was_training:
            model.train()


def _rng_layers(model):
    """Layers that draw random numbers keep their generator in ``layer.rng``
    (StochasticPool2D, FractionalMaxPool2D); its state goes into checkpoints."""
    return [l for l in model.layers if isinstance(getattr(l, "rng", None), np.random.Generator)]


class Trainer:
    """Holds what a run needs to continue: model, optimiser, schedule,
    position and history.  ``fit`` trains; ``save`` / ``restore`` make the
    run resumable."""

    def __init__(self, model, optimizer, *, batch_size: int, seed: int = 0, scheduler=None,
                 grad_clip: float | None = None, checkpoint_path: str | None = None,
                 progress: bool = True, model_name: str | None = None, run: dict | None = None,
                 resume_flags: str = ""):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0, got {grad_clip}")
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.batch_size, self.seed, self.grad_clip = batch_size, seed, grad_clip
        self.checkpoint_path = checkpoint_path
        self.progress = progress
        self.model_name = model_name or model.name
        self.run = run                        # the CLI's run settings, saved for --resume
        self.resume_flags = resume_flags      # flags the resume hint must repeat (--data-dir)
        self.loss = SoftmaxCrossEntropy()
        self.epoch, self.step = 0, 0          # position: next step to run
        self.running = [0.0, 0, 0]            # loss sum, correct, seen in this epoch
        self.epoch_seconds = 0.0
        self.history: list[dict] = []
        self._stop_requested = False

    # ----------------------------------------------------------- one step
    def train_step(self, xb, yb, where: str):
        logits = self.model.forward(xb)
        loss = self.loss.forward(logits, yb)
        if not math.isfinite(loss):
            raise NonFiniteError(f"loss is {loss} at {where}; training stopped before the update")
        self.model.backward(self.loss.backward(), input_grad=False)
        grads = [g for _, _, g in self.optimizer.parameters]
        norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads))
        if not math.isfinite(norm):
            bad = [n for n, _, g in self.optimizer.parameters if not np.all(np.isfinite(g))]
            raise NonFiniteError(f"non-finite gradient in {', '.join(bad)} at {where}; "
                                 "training stopped before the update")
        if self.grad_clip is not None and norm > self.grad_clip:
            for g in grads:
                g *= self.grad_clip / norm
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss, int((logits.argmax(axis=1) == yb).sum())

    # ---------------------------------------------------------------- fit
    def fit(self, x, y, epochs: int, x_test=None, y_test=None):
        """Train until ``epochs`` epochs are complete (continuing from the
        current position after ``restore``).  Returns the history."""
        if epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {epochs}")
        steps_per_epoch = num_batches(len(x), self.batch_size)
        self.model.train()
        with self._sigint_guard():
            while self.epoch < epochs:
                self._run_epoch(x, y, steps_per_epoch, epochs)
                record = {"epoch": self.epoch + 1,
                          "train_loss": self.running[0] / max(self.running[2], 1),
                          "train_accuracy": self.running[1] / max(self.running[2], 1),
                          "seconds": self.epoch_seconds}
                if x_test is not None:
                    record["test_loss"], record["test_accuracy"] = evaluate(self.model, x_test, y_test)
                self.history.append(record)
                self.epoch, self.step, self.running, self.epoch_seconds = self.epoch + 1, 0, [0.0, 0, 0], 0.0
                if self.checkpoint_path:
                    self.save(self.checkpoint_path)
        return self.history

    def _run_epoch(self, x, y, steps_per_epoch, epochs):
        it = islice(batches(x, y, self.batch_size, shuffle=True, seed=self.seed, epoch=self.epoch),
                    self.step, None)
        bar = tqdm(total=steps_per_epoch, initial=self.step, disable=not self.progress,
                   desc=f"epoch {self.epoch + 1}/{epochs}", unit="batch", leave=True,
                   dynamic_ncols=True, mininterval=0.5)
        t0 = time.perf_counter() - self.epoch_seconds
        try:
            for xb, yb in it:
                if self._stop_requested:
                    self.epoch_seconds = time.perf_counter() - t0    # saved with the checkpoint
                    self._interrupt()
                where = f"epoch {self.epoch + 1}, step {self.step + 1}"
                loss, correct = self.train_step(xb, yb, where)
                self.running[0] += loss * len(yb)
                self.running[1] += correct
                self.running[2] += len(yb)
                self.step += 1
                bar.update(1)
                if self.step % 20 == 0 or self.step == steps_per_epoch:
                    bar.set_postfix(loss=f"{self.running[0] / self.running[2]:.4f}",
                                    acc=f"{self.running[1] / self.running[2]:.4f}", refresh=False)
        finally:
            self.epoch_seconds = time.perf_counter() - t0
            bar.close()

    # ---------------------------------------------------- Ctrl-C handling
    @contextlib.contextmanager
    def _sigint_guard(self):
        """First Ctrl-C: finish the current step, then checkpoint and stop.
        Second Ctrl-C: KeyboardInterrupt at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        old = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, old)
            self._stop_requested = False

    def _interrupt(self):
        path = self.checkpoint_path or "minicnn-interrupted.npz"
        self.save(path)
        raise TrainingInterrupted(
            f"interrupted at epoch {self.epoch + 1}, step {self.step}; checkpoint saved to {path}; "
            f"resume with: minicnn train --resume {shlex.quote(path)}{self.resume_flags}", path)

    # -------------------------------------------------------- checkpoints
    def save(self, path: str):
        extra = {"model_name": self.model_name, "epoch": self.epoch, "step": self.step,
                 "running": self.running, "epoch_seconds": self.epoch_seconds,
                 "history": self.history, "seed": self.seed, "batch_size": self.batch_size,
                 "optimizer": type(self.optimizer).__name__,
                 "scheduler_t": getattr(self.scheduler, "t", None),
                 "rng": {l.name: l.rng.bit_generator.state for l in _rng_layers(self.model)}}
        if self.run is not None:
            extra["run"] = self.run
        checkpoint.save(path, self.model, self.optimizer, extra)

    def restore(self, extra: dict, optim_arrays: dict):
        """Continue from a checkpoint's ``extra`` and optimiser arrays."""
        self.optimizer.load_state_arrays(optim_arrays)
        self.epoch, self.step = int(extra["epoch"]), int(extra["step"])
        self.running = list(extra["running"])
        self.epoch_seconds = float(extra.get("epoch_seconds", 0.0))
        self.history = list(extra["history"])
        if self.scheduler is not None and extra.get("scheduler_t") is not None:
            self.scheduler.t = int(extra["scheduler_t"])
            self.optimizer.lr = self.scheduler.lr_at(self.scheduler.t)
        for layer in _rng_layers(self.model):
            if layer.name in extra.get("rng", {}):
                layer.rng.bit_generator.state = extra["rng"][layer.name]
